"""MultiRecTrainerBase: nnU-Net's trainer with recurrence and survival heads and clinical fusion.

Everything nnU-Net already does (planning, preprocessing, sampling, augmentation, the training
loop, AMP, gradient clipping, checkpointing, sliding-window validation) is nnU-Net's own code;
this class adds, per step, the clinical vector and follow-up of the sampled cases (through
``MultiTaskUNet.capture`` and ``MultiTaskLoss.bind``, :meth:`MultiRecTrainerBase.step_inputs`), and the
head losses. The per-fold data is :class:`nnunet_multitask.fold_data.FoldData`, the logger, loss and
optimiser are in :mod:`nnunet_multitask.trainer_parts`. The variants in ``trainers/`` set the class
attributes below (the demo's budget also caps the batch size: ``cap_batch_size``).

Choices stated once:

* Head supervision: heads are supervised only on patches whose target contains tumour (the
  head loss of a patch without tumour is multiplied by 0, so DDP still sees every parameter);
  nnU-Net's sampling and augmentation are untouched.
* Clinical preprocessing is fitted on the training fold only (``ClinicalPreprocessor``), at the
  start of training; its state is a buffer of the network, so every checkpoint carries its own
  fold's transform and ``--c`` / inference apply exactly it.
* Head optimisation: the heads (embeddings, fusion, outputs) have their own AdamW optimiser
  (``head_lr``); nnU-Net's SGD (lr 0.01, Nesterov momentum 0.99,
  poly decay) keeps the U-Net. Their output biases start at the training fold's baseline hazard
  and event rate. Measured in BENCHMARKS.md row c (ablations).
* Whole tumour: heads are supervised on patches that show at least ``min_tumour_fraction`` of
  the case's reference tumour voxels, so the tumour-level features they learn from describe the
  whole tumour, as they do at inference (computed on the stitched whole image). With
  ``image_features = "tumour_roi"`` the heads read instead, for every case of the batch, a box of
  the patch size around its tumour cut from the un-augmented preprocessed image (centred on the
  reference mask's largest component with a shift of up to two voxels, randomly mirrored), and the
  U-Net's own probability on that box: the same input as in prediction, every case supervised.
* Censoring before the horizon: the classification head's BCE weights each known 36-month status
  by the inverse probability of censoring (Kaplan-Meier of the training fold's censoring), so
  patients censored early are accounted for instead of silently dropped (``classification_censoring``;
  ``"complete_case"`` is the earlier behaviour).
* Ablations and benchmark budgets (heads on nnU-Net's SGD, no bias start, the consistency term,
  the earlier Cox memory, a capped batch size, no final validation) are overrides of single methods
  in ``benchmarks/trainers/``, not switches of this class.
* Best checkpoint: the EMA (0.9) of ``(pseudo-Dice + validation C-index + validation AUC) / 3``
  computed each epoch on patient-level predictions over the validation fold; an undefined
  C-index or AUC (too few cases or events) counts as chance (0.5).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from os.path import join
from time import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context

from clinical.outcomes import MIN_CENSORING_SURVIVAL
from clinical.preprocessing import ClinicalPreprocessor
from nnunet_multitask import losses as L
from nnunet_multitask.contract import REQUIRED_SERIES, DatasetContract, HeadConfig, horizon_tag, recurrence_column
from nnunet_multitask.fold_data import FoldData
from nnunet_multitask.metrics import harrell_c, roc_auc_or_nan
from nnunet_multitask.network import MultiTaskUNet, build_multitask_network
from nnunet_multitask.validation_heads import predict_heads_for_preprocessed_cases
# the trainer's parts, also importable from here (trainers/, benchmarks/ and tests import them so)
from nnunet_multitask.trainer_parts import (EXTRA_LOG_KEYS, MultiTaskLocalLogger, MultiTaskLoss,  # noqa: F401
                                            SGDWithHeadOptimizer, best_score_from_log, cap_batch_size, is_new_best,
                                            quantity_statistics, seed_everything)

#: environment variable that seeds a training run (torch, numpy, random; see README "Seeds")
SEED_ENV = "MULTIREC_SEED"

#: values of ``MultiRecTrainerBase.classification_censoring``
CLASSIFICATION_CENSORING = ("complete_case", "ipcw")

#: SHA-256 of ``inspect.getsource`` of the nnU-Net 2.8.1 methods this module mirrors (``_optimisation_step``
#: copies ``nnUNetTrainer.train_step``, ``on_epoch_end`` its namesake): tests/test_nnunet_copies.py fails when
#: the installed nnU-Net's source differs, so the copy is compared with the new original before the pin moves
NNUNET_COPIES = {
    "train_step": "c8993de84c8c419f6471f619f82839931c8e7d1bae0b0eddca42951fcab90819",
    "on_epoch_end": "988deef2bd79d339a745eec8828c6a7b66330a029ceaef601af23c2a5270cfe7",
}

class MultiRecTrainerBase(FoldData, nnUNetTrainer):
    """Segmentation + recurrence-within-horizon + disease-free survival in one nnU-Net trainer.

    Class attributes (what a variant in ``trainers/`` overrides):

    input_channels : tuple of int or None
        Image channels used (``None``: all four; ``(0,)``: T2 only).
    clinical_groups : tuple of str
        Clinical groups fused at the bottleneck (``()``: images only).
    survival_head : {"cox", "discrete"}
    lambda_cls, lambda_surv : float
        Weights of the head losses relative to nnU-Net's DC+CE.
    classification_censoring : {"complete_case", "ipcw"}
        How the classification head's loss treats patients censored before the horizon (status
        unknown): ``"complete_case"`` leaves them out and averages the BCE over the known labels;
        ``"ipcw"`` also leaves them out but weights each known label by the inverse probability that
        it was observed, ``1 / G(min(T, H)-)`` with G the Kaplan-Meier censoring distribution of the
        training fold (``clinical.outcomes.ipcw_weights``, G floored at ``min_censoring_survival``),
        and averages over every supervised sample (``losses.masked_bce_with_logits``); the output
        bias then starts at the IPCW event rate. ``"ipcw"`` is the default: with short follow-up the
        complete-case head overestimates the 36-month risk, IPCW does not, at no measured cost in
        discrimination (BENCHMARKS.md, benchmarks/bench_ipcw.py); with nobody censored before the
        horizon the two are the same loss.
    min_censoring_survival : float
        Floor on G for the IPCW weights (a weight never exceeds its inverse).
    cox_ties : {"efron", "breslow"}
    risk_memory_size : int
        Cox risk-set memory of recent detached predictions (0 disables it).
    n_time_bins : int
        Intervals of the discrete-time head (edges: quantiles of the training fold's event times).
    head_hidden : int
    image_features : str
        What the heads see: ``"tumour_quantities"`` (soft tumour volume and tumour means of each
        channel from the network's own segmentation), ``"tumour_quantities+tumour_pool"``, or
        ``"global_pool"`` (the first design); see :mod:`nnunet_multitask.network`.
    head_lr, head_weight_decay : float
        The heads' own AdamW.
    min_tumour_fraction : float
        Heads are supervised on a patch only when it holds at least this fraction of the case's
        reference tumour voxels (0: any tumour voxel). Not used by ``"tumour_roi"`` (every case).
    roi_cache_bytes : int
        ``"tumour_roi"``: the fold's un-augmented preprocessed images kept in memory up to this size
        (the rest is read from the preprocessed folder at every step).
    whole_fold_validation_budget : float
        The per-epoch head metrics (val C-index and AUC, part of the best-checkpoint score) come from
        one patient-level prediction of every validation case, by the predictor's definition (sliding
        window without mirroring, then ``patient_level_prediction``). This whole-fold validation costs
        at most this fraction of an epoch's training time on average: when one run costs more, the
        next runs are spaced out (values carried forward).
    epochs, iterations_per_epoch, val_iterations_per_epoch, save_every_epochs : int or None
        Training length (``None`` keeps nnU-Net's default).
    channel_availability : bool
        The heads also read which series are real (``network`` module docstring), so one model serves
        cases with missing diffusion series; cases of a dataset converted with
        ``--allow-missing-series`` train with their true availability (a model without it refuses
        such a dataset when it uses a series some case lacks).
    modality_dropout_rate : float
        Fraction of training samples whose diffusion series are dropped at random (a non-empty
        subset of the model's channels other than T2, each subset equally likely): the channel is
        zeroed as the converter's filler and flagged missing. Needs ``channel_availability``.
    """

    input_channels: Optional[Sequence[int]] = None
    clinical_groups: Sequence[str] = ("pretreatment", "postoperative")
    survival_head: str = "discrete"
    lambda_cls: float = 0.5
    lambda_surv: float = 0.5
    classification_censoring: str = "ipcw"
    min_censoring_survival: float = MIN_CENSORING_SURVIVAL
    cox_ties: str = "efron"
    risk_memory_size: int = 128
    n_time_bins: int = 10
    head_hidden: int = 64
    image_features: str = "tumour_quantities"
    head_lr: float = 2e-3
    head_weight_decay: float = 1e-4
    min_tumour_fraction: float = 0.9
    roi_cache_bytes: int = 2 ** 31
    whole_fold_validation_budget: float = 0.25
    channel_availability: bool = False
    modality_dropout_rate: float = 0.0
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    val_iterations_per_epoch: Optional[int] = None
    save_every_epochs: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008  (nnU-Net's trainer signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attr, name in (("epochs", "num_epochs"), ("iterations_per_epoch", "num_iterations_per_epoch"),
                           ("val_iterations_per_epoch", "num_val_iterations_per_epoch"),
                           ("save_every_epochs", "save_every")):
            if getattr(self, attr) is not None:
                setattr(self, name, int(getattr(self, attr)))

        self.contract = DatasetContract.from_dataset_json(dataset_json)
        self.horizon = self.contract.horizon_months
        self.schema = self.contract.schema()
        n_channels = len(dataset_json["channel_names"])
        if self.input_channels is not None and not all(0 <= c < n_channels for c in self.input_channels):
            raise ValueError(f"{type(self).__name__}: input_channels {self.input_channels} not in the dataset's "
                             f"{n_channels} channels {dataset_json['channel_names']}")
        if not 0.0 <= float(self.modality_dropout_rate) < 1.0:
            raise ValueError(f"{type(self).__name__}: modality_dropout_rate must be in [0, 1), got "
                             f"{self.modality_dropout_rate}")
        if self.image_features == "tumour_roi" and (len(self.configuration_manager.patch_size) != 3
                                                    or self.is_cascaded):
            raise ValueError(f"{type(self).__name__}: image_features='tumour_roi' needs a 3-D configuration without "
                             f"a previous stage (3d_fullres or 3d_lowres), got {configuration!r}: its tumour box is "
                             f"cut from the 3-D image alone")
        if self.classification_censoring not in CLASSIFICATION_CENSORING:
            raise ValueError(f"{type(self).__name__}: classification_censoring must be one of "
                             f"{CLASSIFICATION_CENSORING}, got {self.classification_censoring!r}")
        if self.modality_dropout_rate > 0 and not self.channel_availability:
            raise ValueError(f"{type(self).__name__}: modality_dropout_rate needs channel_availability = True (the "
                             f"heads must be told which series were dropped)")
        self.channel_names = [dataset_json["channel_names"][str(i)] for i in range(n_channels)]
        #: the dataset's channels this model reads
        self.used_channels = list(range(n_channels)) if self.input_channels is None else \
            [int(c) for c in self.input_channels]
        #: channels that may be dropped in training: the model's own, except the required series (T2)
        self.droppable_channels = [c for c in self.used_channels if self.channel_names[c] not in REQUIRED_SERIES]
        prep = ClinicalPreprocessor(self.schema, tuple(self.clinical_groups))
        # the head configuration travels in the plans (plans.json of the results folder), which is what
        # build_network_architecture receives at training and at inference time
        self.plans_manager.plans["multitask_model"] = HeadConfig(
            trainer=type(self).__name__,
            input_channels=None if self.input_channels is None else tuple(int(c) for c in self.input_channels),
            channel_names=dataset_json["channel_names"],
            clinical_groups=tuple(self.clinical_groups),
            clinical_columns={n: self.schema.columns[n].to_dict()
                              for n in self.schema.group_columns(self.clinical_groups)},
            clinical_feature_names=tuple(prep.feature_names),
            n_clinical_features=int(prep.n_features),
            clinical_state_size=int(prep.state_size),
            survival_head=self.survival_head,
            n_time_bins=int(self.n_time_bins),
            head_hidden=int(self.head_hidden),
            image_features=self.image_features,
            n_input_channels=len(self.input_channels) if self.input_channels is not None else n_channels,
            voxel_volume_mm3=float(np.prod(self.configuration_manager.spacing)),
            risk_memory_size=int(self.risk_memory_size) if self.survival_head == "cox" else 0,
            horizon_months=self.horizon,
            time_unit=self.contract.time_unit,
            channel_availability=bool(self.channel_availability),
            modality_dropout_rate=float(self.modality_dropout_rate),
        ).to_dict()
        self.logger.local_logger = MultiTaskLocalLogger()
        self._case_data: Optional[Dict[str, dict]] = None
        self._case_index: Dict[str, int] = {}
        self._val_image_cache: Dict[str, torch.Tensor] = {}
        self._next_whole_fold_epoch: Optional[int] = None
        self._last_whole_fold = (float("nan"), float("nan"), 0, -1)
        self._val_patch_seconds = 0.0
        self._val_head_note = ""
        self._case_tumour_voxels: Dict[str, float] = {}
        self._roi_centres: Dict[str, Optional[np.ndarray]] = {}
        self._roi_images: Dict[str, torch.Tensor] = {}
        self._roi_dataset = None
        self.head_optimizer_instance: Optional[torch.optim.Optimizer] = None
        #: the best ``ema_selection_score`` so far (the best checkpoint's); nnU-Net's ``_best_ema`` (best EMA
        #: pseudo-Dice) is not used by this trainer and stays None
        self.best_selection_score: Optional[float] = None

    # ------------------------------------------------------------------ network
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        return build_multitask_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                       enable_deep_supervision)

    def mt_network(self) -> MultiTaskUNet:
        """The MultiTaskUNet under DDP and torch.compile wrappers."""
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def configure_optimizers(self) -> tuple:
        """nnU-Net's SGD and poly schedule for the U-Net; the heads get their own AdamW, carried inside
        the SGD's state dict (:class:`SGDWithHeadOptimizer`)."""
        net = self.mt_network()
        heads = torch.optim.AdamW(net.head_parameters(), lr=self.head_lr, weight_decay=self.head_weight_decay)
        optimizer = SGDWithHeadOptimizer(net.segmentation_parameters(), heads, lr=self.initial_lr,
                                         weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        self.head_optimizer_instance = heads
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self):
        return MultiTaskLoss(super()._build_loss(), self.head_losses, self.lambda_cls, self.lambda_surv)

    # ------------------------------------------------------------------ per-fold data
    # ------------------------------------------------------------------ losses
    def head_supervision_weights(self, target: torch.Tensor, keys: Sequence[str],
                                 tumour_voxels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """1 for a patch that shows the case's tumour (at least ``min_tumour_fraction`` of its
        reference voxels; any tumour voxel when that is 0 or the count is unknown), else 0.
        ``tumour_voxels``: the cases' reference voxel counts, already on the device (else looked up)."""
        voxels = (target > 0).flatten(1).sum(1).float()
        if tumour_voxels is None:
            tumour_voxels = torch.tensor([self._case_tumour_voxels.get(str(k), 0.0) for k in keys],
                                         device=voxels.device)
        need = torch.clamp(self.min_tumour_fraction * tumour_voxels.to(voxels.device, torch.float32), min=1.0)
        return (voxels >= need).float()

    def head_losses(self, target, ctx: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """(classification loss, survival loss) of this step's heads (``ctx``: :meth:`step_inputs`; the
        heads the network captured are in ``ctx["sink"]``); leaves the heads and their weights in
        ``ctx`` (for a consistency term, ``benchmarks/trainers``)."""
        net = self.mt_network()
        if net.image_features == "tumour_roi":
            boxes, prob = self.roi_batch(ctx["keys"], ctx["availability"], augment=self.network.training)
            heads = net.roi_heads(boxes, prob, ctx["clinical"],
                                  ctx["availability"] if net.channel_availability else None)
            has_tumour = torch.ones(len(ctx["keys"]), device=prob.device)  # every box holds its tumour
        else:
            heads = ctx["sink"][-1]
            t0 = target[0] if isinstance(target, (list, tuple)) else target
            has_tumour = self.head_supervision_weights(t0, ctx["keys"], ctx.get("tumour_voxels"))
        ctx["heads"] = heads
        ctx["head_weights"] = has_tumour  # the consistency term weighs the same patches
        cls_loss = L.masked_bce_with_logits(
            heads["cls_logit"].float(), ctx["label"], weights=has_tumour,
            censoring_weights=ctx["cls_weight"] if self.classification_censoring == "ipcw" else None)
        time_, event = ctx["time"], ctx["event"]
        if net.survival_head == "cox":
            log_risk, w, ids = heads["log_risk"].float(), has_tumour, ctx["case_index"]
            if self.is_ddp:
                log_risk, time_, event, w, ids = L.gather_across_ranks(log_risk, time_, event, w, case_ids=ids)
            surv_loss = self.cox_loss(net, log_risk, time_, event, w, ids)
        else:
            surv_loss = L.discrete_time_nll(heads["hazard_logits"].float(), time_, event,
                                            net.time_bin_edges.to(time_.device, torch.float32), weights=has_tumour)
        return cls_loss, surv_loss

    def cox_loss(self, net: MultiTaskUNet, log_risk, time_, event, weights, case_ids,
                 normalise: str = "batch") -> torch.Tensor:
        """Cox partial likelihood of the (gathered) batch with the risk-set memory: divided by the batch's
        events (``normalise="batch"``: the memory enlarges risk sets without diluting the batch's
        gradient; see :func:`nnunet_multitask.losses.cox_partial_likelihood`); with ``case_ids`` the memory
        keeps each training case's newest prediction only and leaves the batch's own cases out while
        the batch's loss is computed (``None``: plain FIFO). Updates the memory in training."""
        use_memory = net.risk_memory.size > 0
        mem = net.risk_memory.get(exclude_case_ids=case_ids) if use_memory else (None, None, None)
        loss = L.cox_partial_likelihood(log_risk, time_, event, weights=weights, ties=self.cox_ties,
                                        extra_log_risk=mem[0], extra_time=mem[1], extra_event=mem[2],
                                        normalise=normalise)
        if self.network.training and use_memory:
            net.risk_memory.update(log_risk.detach(), time_, event, weights=weights, case_ids=case_ids)
        return loss

    # ------------------------------------------------------------------ steps
    @contextmanager
    def step_inputs(self, batch, training: bool) -> Iterator[dict]:
        """The step's context (:meth:`_batch_context` plus ``"sink"``, the heads the network captures)
        for the block: the network reads the batch's clinical vectors and availability
        (``MultiTaskUNet.capture``) and the loss gets the context (``MultiTaskLoss.bind``)."""
        availability = self.batch_availability(batch["keys"], drop=training)
        if (availability == 0).any():
            # a missing or dropped series looks as the converter's filler does after preprocessing:
            # zero (nnU-Net's z-score maps a constant image to 0); this also undoes what the intensity
            # augmentation added to a real filler
            data = batch["data"]
            b_idx, c_idx = np.nonzero(availability == 0)
            data[torch.as_tensor(b_idx), torch.as_tensor(c_idx)] = 0
        ctx = self._batch_context(batch["keys"], availability)
        net = self.mt_network()
        with net.capture("heads", clinical=ctx["clinical"],
                         availability=ctx["availability"] if net.channel_availability else None) as sink, \
                self.loss.bind(ctx):
            ctx["sink"] = sink
            yield ctx

    def on_train_start(self) -> None:
        seed = os.environ.get(SEED_ENV)
        if seed not in (None, ""):
            seed_everything(int(seed))
            self.print_to_log_file(f"Seeded torch, numpy and random with {SEED_ENV}={seed}")
        super().on_train_start()
        self.prepare_fold_data()

    def train_step(self, batch: dict) -> dict:
        with self.step_inputs(batch, training=True):
            return self._optimisation_step(batch)

    def _optimisation_step(self, batch: dict) -> dict:
        """nnU-Net 2.8.1's ``nnUNetTrainer.train_step`` (autocast on CUDA, GradScaler, clipping at 12;
        NNUNET_COPIES records its source hash) with the heads' own optimiser stepped beside nnU-Net's
        SGD. Copied because nnU-Net's step knows one optimiser: under AMP both must be unscaled before
        clipping (PyTorch's multi-optimiser recipe)."""
        heads = self.head_optimizer_instance
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        heads.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss = self.loss(output, target)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self.grad_scaler.unscale_(heads)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.step(heads)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
            heads.step()
        parts = self.loss.last
        # one device-to-host copy for the four logged numbers (each .cpu() is a synchronisation)
        values = torch.stack([loss.detach().float()] + [parts[k].float() for k in ("seg", "cls", "surv")]).cpu().numpy()
        return {"loss": values[0], "seg": values[1], "cls": values[2], "surv": values[3]}

    def on_train_epoch_end(self, train_outputs: List[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        for part, key in (("seg", "train_seg_losses"), ("cls", "train_cls_losses"), ("surv", "train_surv_losses")):
            vals = np.array([o[part] for o in train_outputs], dtype=float)
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, vals)
                vals = np.concatenate(gathered)
            self.logger.log(key, float(np.mean(vals)), self.current_epoch)

    def _head_predictions(self, table) -> Dict[str, dict]:
        """``{case: {risk_score, p_recurrence}}`` from a predictor table, as ``validation_metrics`` reads it."""
        col = recurrence_column(self.horizon)
        return {c: {"risk_score": float(r), "p_recurrence": float(p)}
                for c, r, p in zip(table["case_id"], table["risk_score"], table[col])}

    def validation_metrics(self, preds: Dict[str, dict]) -> Tuple[float, float]:
        keys = sorted(preds)
        if not keys:
            return float("nan"), float("nan")
        risk = np.array([preds[k]["risk_score"] for k in keys])
        p = np.array([preds[k]["p_recurrence"] for k in keys])
        time_ = np.array([self._case_data[k]["time"] for k in keys])
        event = np.array([self._case_data[k]["event"] for k in keys])
        label = np.array([self._case_data[k]["label"] for k in keys])
        return harrell_c(time_, event, risk), roc_auc_or_nan(label, p)

    def on_validation_epoch_end(self, val_outputs: List[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        c, auc, n_cases, note = self._whole_fold_head_metrics()
        self.logger.log("val_c_index", c, self.current_epoch)
        self.logger.log("val_auc", auc, self.current_epoch)
        self.logger.log("val_head_cases", n_cases, self.current_epoch)
        self._val_head_note = note
        score = (self.logger.get_value("mean_fg_dice", step=-1)
                 + (0.5 if np.isnan(c) else c) + (0.5 if np.isnan(auc) else auc)) / 3
        prev = self.logger.get_value("ema_selection_score", step=None)
        ema = score if len(prev) == 0 else 0.9 * prev[-1] + 0.1 * score
        self.logger.log("ema_selection_score", ema, self.current_epoch)

    def _whole_fold_head_metrics(self):
        """(C-index, AUC, number of cases, note) of the heads' patient-level predictions of *every*
        validation case of the fold, by the predictor's definition without test-time mirroring.

        It runs when due: its cost is kept to ``whole_fold_validation_budget`` x the epoch's
        training time on average by spacing the runs (the interval follows the last run's measured
        cost); on the epochs between, the last values are carried forward and the log says from
        which epoch they are. Under DDP each rank predicts a share of the cases.
        """
        due = self._next_whole_fold_epoch is None or self.current_epoch >= self._next_whole_fold_epoch \
            or self.current_epoch == self.num_epochs - 1
        if not due:
            c, auc, n, epoch = self._last_whole_fold
            return c, auc, n, f"whole fold, from epoch {epoch}"
        keys = list(self._val_keys)
        if self.is_ddp:
            keys = keys[dist.get_rank()::dist.get_world_size()]
        t0 = time()
        self.set_deep_supervision_enabled(False)
        try:
            with torch.no_grad():
                table = predict_heads_for_preprocessed_cases(self, {k: self._case_data[k] for k in keys},
                                                             use_mirroring=False,
                                                             cache=self._val_image_cache) if keys else None
        finally:
            self.set_deep_supervision_enabled(True)
        preds = {} if table is None else self._head_predictions(table)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, preds)
            preds = {k: v for g in gathered for k, v in g.items()}
        seconds = time() - t0
        c, auc = self.validation_metrics(preds)
        train_seconds = max(t0 - self.logger.get_value("epoch_start_timestamps", step=-1) - self._val_patch_seconds,
                            1e-3)
        every = max(1, int(np.ceil(seconds / (self.whole_fold_validation_budget * train_seconds))))
        if self.is_ddp:  # every rank must take the same decision
            every_all = [None] * dist.get_world_size()
            dist.all_gather_object(every_all, every)
            every = max(every_all)
        self._next_whole_fold_epoch = self.current_epoch + every
        self._last_whole_fold = (c, auc, len(preds), self.current_epoch)
        return c, auc, len(preds), f"whole fold, this epoch, {seconds:.1f} s; next in {every} epoch(s)"

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_patch_t0 = time()

    def validation_step(self, batch: dict) -> dict:
        with self.step_inputs(batch, training=False):
            out = super().validation_step(batch)
        self._val_patch_seconds = time() - self._val_patch_t0
        return out

    def on_epoch_end(self) -> None:
        """nnU-Net 2.8.1's ``nnUNetTrainer.on_epoch_end`` (NNUNET_COPIES records its source hash; a test fails
        when nnU-Net's changes) with the head losses and metrics in the log and the best checkpoint chosen
        on the selection score (module docstring) instead of the EMA pseudo-Dice."""
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        lg = self.logger.get_value
        self.print_to_log_file("train_loss", np.round(lg("train_losses", step=-1), 4),
                               "(seg", np.round(lg("train_seg_losses", step=-1), 4),
                               "cls", np.round(lg("train_cls_losses", step=-1), 4),
                               "surv", np.round(lg("train_surv_losses", step=-1), 4), ")")
        self.print_to_log_file("val_loss", np.round(lg("val_losses", step=-1), 4))
        self.print_to_log_file("Pseudo dice", [np.round(i, 4) for i in lg("dice_per_class_or_region", step=-1)])
        self.print_to_log_file(f"val C-index {np.round(lg('val_c_index', step=-1), 4)}, "
                               f"val AUC@{self.horizon:g}m {np.round(lg('val_auc', step=-1), 4)} (patient level, "
                               f"{lg('val_head_cases', step=-1)} of {len(self._val_keys)} validation cases; "
                               f"{self._val_head_note})")
        epoch_seconds = lg("epoch_end_timestamps", -1) - lg("epoch_start_timestamps", -1)
        self.print_to_log_file(f"Epoch time: {np.round(epoch_seconds, 2)} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        score = lg("ema_selection_score", step=-1)
        if is_new_best(score, self.best_selection_score):
            self.best_selection_score = score
            self.print_to_log_file(f"New best selection score (EMA of (Dice + C-index + AUC)/3): {np.round(score, 4)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's load, then the best selection score so far from the restored log (a checkpoint
        written before the score had its own attribute also stored it as ``_best_ema``: used when its
        log has no finite score)."""
        super().load_checkpoint(filename_or_checkpoint)
        scores = self.logger.get_value("ema_selection_score", step=None)[:self.current_epoch]
        self.best_selection_score = best_score_from_log(scores, legacy=self._best_ema)
        self._best_ema = None

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's validation (segmentations + summary.json), then the patient-level head predictions
        of the validation cases, written beside it as ``validation/head_predictions.csv`` and
        ``validation/head_summary.json``."""
        super().perform_actual_validation(save_probabilities)
        if self.local_rank != 0:
            return
        self.prepare_fold_data()
        _, val_keys = self.do_split()
        # nnU-Net's validation switches deep supervision back on when it is done
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        try:
            table = predict_heads_for_preprocessed_cases(self, {k: self._case_data[k] for k in val_keys})
        finally:
            self.set_deep_supervision_enabled(True)
        out_dir = join(self.output_folder, "validation")
        table.to_csv(join(out_dir, "head_predictions.csv"), index=False)
        preds = self._head_predictions(table)
        c, auc = self.validation_metrics(preds)
        summary = {"n_cases": len(table), "c_index": None if np.isnan(c) else c,
                   f"auc_{horizon_tag(self.horizon)}m": None if np.isnan(auc) else auc,
                   "note": "patient-level predictions (aggregation.patient_level_prediction: heads once on the "
                           "tumour-level features of the stitched sliding-window segmentation, with mirroring); "
                           "validation fold only"}
        with open(join(out_dir, "head_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        self.print_to_log_file(f"Head validation: C-index {summary['c_index']}, "
                               f"AUC {summary[f'auc_{horizon_tag(self.horizon)}m']}")
