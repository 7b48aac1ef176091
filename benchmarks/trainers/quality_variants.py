"""Equal-budget trainers for the quality benchmark (``benchmarks/bench_quality.py``): every model
combination, both survival losses, the ablations of the image pathway and plain nnU-Net train for
the same number of iterations, so their C-index, AUC and Dice compare at the same budget.

Not for users (the product trainers are in ``trainers/``). Each variant is a product class of
``trainers.multirec`` plus :class:`_QualityLength`, so it cannot drift from what users train; an ablation
without a product counterpart derives from the closest product class and overrides only what it
ablates, an attribute or one method through a small override class below (its docstring says which;
the product trainer has no switch for it). ``tests/test_trainer_layout.py`` checks both.

The budget is sized for a 2-core CPU; on a GPU use the full-length trainers instead. The final
sliding-window validation is skipped (the benchmark predicts the test sets itself).
nnU-Net finds these classes through ``nnUNet_extTrainer=<repo>/trainers:<repo>/benchmarks/trainers``
(``os.pathsep``-separated, product folder first). Inside an ``nnUNet_extTrainer`` folder modules are
imported as top-level names, so the bases come from the installed packages. This folder has no
``__init__.py`` on purpose: as a regular package it would shadow the installed ``trainers`` package for
scripts run from ``benchmarks/``.
"""
import torch

from nnunet_multitask import losses as L
from nnunet_multitask.trainer import MultiTaskLoss, cap_batch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from trainers.multirec import (MultiRecTrainer, MultiRecTrainer_Cox, MultiRecTrainer_ModalityDropout,
                               MultiRecTrainer_MRI, MultiRecTrainer_MRI_ROI, MultiRecTrainer_Pre, MultiRecTrainer_ROI,
                               MultiRecTrainer_T2)

QUALITY_EPOCHS = 25
QUALITY_ITERATIONS = 16
QUALITY_VAL_ITERATIONS = 6
QUALITY_BATCH = 2
LAMBDA_CONSISTENCY = 0.5
_CUDA = torch.device("cuda")  # nnUNetTrainer's default device


class _QualityLength:
    """The quality budget: 25 epochs x 16 iterations at batch size 2, no final validation."""
    epochs = QUALITY_EPOCHS
    iterations_per_epoch = QUALITY_ITERATIONS
    val_iterations_per_epoch = QUALITY_VAL_ITERATIONS

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        cap_batch_size(self, QUALITY_BATCH)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (quality benchmark budget)")


# ---------------------------------------------------------------------------------------------
# ablation overrides: each replaces one method of the product trainer

class _ConsistencyTerm:
    """Override ``_build_loss``: adds ``LAMBDA_CONSISTENCY`` x the squared disagreement of the two heads'
    horizon risks on the supervised patches (``losses.head_consistency``; discrete-time head only)."""

    def _build_loss(self):
        return MultiTaskLoss(nnUNetTrainer._build_loss(self), self.head_losses, self.lambda_cls, self.lambda_surv,
                             consistency=self.consistency_loss, lambda_consistency=LAMBDA_CONSISTENCY)

    def consistency_loss(self, ctx: dict) -> torch.Tensor:
        net = self.mt_network()
        if net.survival_head != "discrete":
            raise ValueError("the consistency term needs the discrete-time survival head")
        heads, w = ctx["heads"], ctx["head_weights"]  # left in the context by head_losses
        return L.head_consistency(heads["cls_logit"].float(), heads["hazard_logits"].float(),
                                  net.time_bin_edges.to(w.device, torch.float32), self.horizon, weights=w)


class _EarlierCoxMemory:
    """Override ``cox_loss``: the Cox memory before issue 10 (loss averaged over the events of batch +
    memory, plain FIFO memory)."""

    def cox_loss(self, net, log_risk, time_, event, weights, case_ids, normalise="batch"):
        return super().cox_loss(net, log_risk, time_, event, weights, None, normalise="all")


class _HeadsOnNnunetSGD:
    """Override ``configure_optimizers`` and ``_optimisation_step``: the heads share nnU-Net's SGD and
    nnU-Net's own ``train_step`` runs (the first design), instead of the heads' own AdamW."""

    def configure_optimizers(self):
        self.head_optimizer_instance = None
        return nnUNetTrainer.configure_optimizers(self)

    def _optimisation_step(self, batch: dict) -> dict:
        out = nnUNetTrainer.train_step(self, batch)
        parts = self.loss.last
        out.update({k: parts[k].cpu().numpy() for k in ("seg", "cls", "surv")})
        return out


class _NoBiasStart:
    """Override ``_initialise_output_biases``: the output biases keep PyTorch's initialisation instead of
    starting at the training fold's baseline hazard and event rate."""

    def _initialise_output_biases(self, net, times, events):
        pass


class MultiRecTrainer_quality(_QualityLength, MultiRecTrainer):
    """``MultiRecTrainer`` ("All") at the quality budget."""


class MultiRecTrainer_Pre_quality(_QualityLength, MultiRecTrainer_Pre):
    """``MultiRecTrainer_Pre`` at the quality budget."""


class MultiRecTrainer_MRI_quality(_QualityLength, MultiRecTrainer_MRI):
    """``MultiRecTrainer_MRI`` at the quality budget."""


class MultiRecTrainer_T2_quality(_QualityLength, MultiRecTrainer_T2):
    """``MultiRecTrainer_T2`` at the quality budget."""


class MultiRecTrainer_Cox_quality(_QualityLength, MultiRecTrainer_Cox):
    """``MultiRecTrainer_Cox`` at the quality budget."""


class MultiRecTrainer_ModalityDropout_quality(_QualityLength, MultiRecTrainer_ModalityDropout):
    """``MultiRecTrainer_ModalityDropout`` ("All" trained for missing series, issue 13: availability flags +
    modality dropout 0.5) at the quality budget."""


class MultiRecTrainer_ROI_quality(_QualityLength, MultiRecTrainer_ROI):
    """``MultiRecTrainer_ROI`` ("All" with the learned image pathway) at the quality budget."""


class MultiRecTrainer_MRI_ROI_quality(_QualityLength, MultiRecTrainer_MRI_ROI):
    """``MultiRecTrainer_MRI_ROI`` (images only, learned image pathway) at the quality budget."""


# ---------------------------------------------------------------------------------------------
# ablations without a product counterpart: the closest product class at the quality budget, plus
# the overrides named in the docstring

class MultiRecTrainer_quality_consistency(_ConsistencyTerm, MultiRecTrainer_quality):
    """Ablation, no product counterpart: ``MultiRecTrainer`` ("All") plus the consistency term between
    the two horizon risks (issue 10.2). Overrides ``_build_loss`` (:class:`_ConsistencyTerm`)."""


class MultiRecTrainer_Cox_quality_oldmemory(_EarlierCoxMemory, MultiRecTrainer_Cox_quality):
    """Ablation, no product counterpart: ``MultiRecTrainer_Cox`` with the Cox memory before issue 10 (loss
    averaged over batch + memory events, plain FIFO). Overrides ``cox_loss`` (:class:`_EarlierCoxMemory`)."""


# ablations of the image pathway (image-only, so nothing but the images can carry the risk)

class MultiRecTrainer_MRI_quality_firstdesign(_HeadsOnNnunetSGD, _NoBiasStart, MultiRecTrainer_MRI_quality):
    """Ablation, no product counterpart: ``MultiRecTrainer_MRI`` in the first design: globally pooled
    bottleneck, heads on nnU-Net's SGD, no bias start, heads supervised on any patch with tumour.
    Overrides ``image_features``, ``min_tumour_fraction``, the optimiser (:class:`_HeadsOnNnunetSGD`) and
    the bias start (:class:`_NoBiasStart`)."""
    image_features = "global_pool"
    min_tumour_fraction = 0.0


class MultiRecTrainer_MRI_quality_globalpool(MultiRecTrainer_MRI_quality):
    """Ablation, no product counterpart: ``MultiRecTrainer_MRI`` with only the optimisation changed from
    the first design: globally pooled bottleneck with the heads' own AdamW. Overrides ``image_features``."""
    image_features = "global_pool"


class MultiRecTrainer_MRI_quality_quantities_sgd(_HeadsOnNnunetSGD, MultiRecTrainer_MRI_quality):
    """Ablation, no product counterpart: ``MultiRecTrainer_MRI`` with only the features changed from the
    first design: tumour quantities, heads on nnU-Net's SGD. Overrides the optimiser
    (:class:`_HeadsOnNnunetSGD`)."""


class MultiRecTrainer_MRI_quality_quantities_pool(MultiRecTrainer_MRI_quality):
    """Ablation, no product counterpart: ``MultiRecTrainer_MRI`` with tumour quantities plus
    tumour-weighted pooled bottleneck features, own AdamW. Overrides ``image_features``."""
    image_features = "tumour_quantities+tumour_pool"


# ---------------------------------------------------------------------------------------------
# budget: is the image-only model's gap to its oracle a matter of training length? (GPU check)

class MultiRecTrainer_MRI_quality_x4(MultiRecTrainer_MRI_quality):
    """No product counterpart: ``MultiRecTrainer_MRI`` at four times the quality budget (100 epochs).
    Overrides ``epochs``."""
    epochs = 4 * QUALITY_EPOCHS


class MultiRecTrainer_quality_x4(MultiRecTrainer_quality):
    """No product counterpart: ``MultiRecTrainer`` ("All") at four times the quality budget (100 epochs).
    Overrides ``epochs``."""
    epochs = 4 * QUALITY_EPOCHS


class nnUNetTrainer_quality(nnUNetTrainer):
    """Plain nnU-Net (segmentation only) at the same budget: the Dice reference."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = QUALITY_EPOCHS
        self.num_iterations_per_epoch = QUALITY_ITERATIONS
        self.num_val_iterations_per_epoch = QUALITY_VAL_ITERATIONS

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, QUALITY_BATCH)  # the same cap as the MultiRec variants

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("quality benchmark trainer: final validation skipped")
