"""Equal-budget trainers for the quality benchmark (``benchmarks/bench_quality.py``): every model
combination, both survival losses, the ablations of the image pathway and plain nnU-Net train for
the same number of iterations, so their C-index, AUC and Dice compare at the same budget.

The budget is sized for a 2-core CPU; on a GPU use the full-length trainers instead. The final
sliding-window validation is skipped (the benchmark predicts the test sets itself).
Inside the ``nnUNet_extTrainer`` folder modules are imported as top-level names, so the bases come
from the installed packages.
"""
import torch

from nnunet_multitask.trainer import MultiRecTrainerBase
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

QUALITY_EPOCHS = 25
QUALITY_ITERATIONS = 16
QUALITY_VAL_ITERATIONS = 6
QUALITY_BATCH = 2


class _QualityLength:
    epochs = QUALITY_EPOCHS
    iterations_per_epoch = QUALITY_ITERATIONS
    val_iterations_per_epoch = QUALITY_VAL_ITERATIONS
    max_batch_size = QUALITY_BATCH
    skip_final_validation = True


class MultiRecTrainer_quality(_QualityLength, MultiRecTrainerBase):
    clinical_groups = ("pretreatment", "postoperative")


class MultiRecTrainer_Pre_quality(_QualityLength, MultiRecTrainerBase):
    clinical_groups = ("pretreatment",)


class MultiRecTrainer_MRI_quality(_QualityLength, MultiRecTrainerBase):
    clinical_groups = ()


class MultiRecTrainer_T2_quality(_QualityLength, MultiRecTrainerBase):
    clinical_groups = ()
    input_channels = (0,)


class MultiRecTrainer_Cox_quality(_QualityLength, MultiRecTrainerBase):
    clinical_groups = ("pretreatment", "postoperative")
    survival_head = "cox"


class MultiRecTrainer_quality_consistency(MultiRecTrainer_quality):
    """"All" plus the consistency term between the two horizon risks (issue 10.2)."""
    lambda_consistency = 0.5


class MultiRecTrainer_Cox_quality_oldmemory(MultiRecTrainer_Cox_quality):
    """The Cox memory before issue 10: loss averaged over batch + memory events, plain FIFO."""
    cox_normalise = "all"
    cox_memory_one_entry_per_case = False


# ---------------------------------------------------------------------------------------------
# ablations of the image pathway (image-only, so nothing but the images can carry the risk)

class MultiRecTrainer_MRI_quality_firstdesign(MultiRecTrainer_MRI_quality):
    """The first design: globally pooled bottleneck, heads on nnU-Net's SGD, no bias start,
    heads supervised on any patch with tumour."""
    image_features = "global_pool"
    head_optimizer = "sgd"
    init_output_biases = False
    min_tumour_fraction = 0.0


class MultiRecTrainer_MRI_quality_globalpool(MultiRecTrainer_MRI_quality):
    """Only the optimisation changed: globally pooled bottleneck with the heads' own AdamW."""
    image_features = "global_pool"


class MultiRecTrainer_MRI_quality_quantities_sgd(MultiRecTrainer_MRI_quality):
    """Only the features changed: tumour quantities, heads on nnU-Net's SGD."""
    head_optimizer = "sgd"


class MultiRecTrainer_MRI_quality_quantities_pool(MultiRecTrainer_MRI_quality):
    """Tumour quantities plus tumour-weighted pooled bottleneck features, own AdamW."""
    image_features = "tumour_quantities+tumour_pool"


# ---------------------------------------------------------------------------------------------
# budget: is the image-only model's gap to its oracle a matter of training length? (GPU check)

class MultiRecTrainer_MRI_quality_x4(MultiRecTrainer_MRI_quality):
    """Four times the quality budget (100 epochs), everything else as ``MultiRecTrainer_MRI_quality``."""
    epochs = 4 * QUALITY_EPOCHS


class MultiRecTrainer_quality_x4(MultiRecTrainer_quality):
    """Four times the quality budget (100 epochs), everything else as ``MultiRecTrainer_quality``."""
    epochs = 4 * QUALITY_EPOCHS


class nnUNetTrainer_quality(nnUNetTrainer):
    """Plain nnU-Net (segmentation only) at the same budget: the Dice reference."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = QUALITY_EPOCHS
        self.num_iterations_per_epoch = QUALITY_ITERATIONS
        self.num_val_iterations_per_epoch = QUALITY_VAL_ITERATIONS

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, QUALITY_BATCH)  # the same cap as the MultiRec variants

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("quality benchmark trainer: final validation skipped")


class MultiRecTrainer_ModalityDropout_quality(MultiRecTrainer_quality):
    """"All" trained for missing series (issue 13): availability flags + modality dropout 0.5."""
    channel_availability = True
    modality_dropout_rate = 0.5
