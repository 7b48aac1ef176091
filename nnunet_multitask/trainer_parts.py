"""The trainer's parts that are not the trainer: its logger, its loss, the SGD that carries the heads'
optimiser, the best-checkpoint rule, batch-size cap, statistics and seeding
(:mod:`nnunet_multitask.trainer` puts them together)."""
from __future__ import annotations

import random
from contextlib import contextmanager
from os.path import join
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from nnunetv2.training.logging.nnunet_logger import LocalLogger
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

EXTRA_LOG_KEYS = ("train_seg_losses", "train_cls_losses", "train_surv_losses", "val_c_index", "val_auc",
                  "val_head_cases", "ema_selection_score")


class MultiTaskLocalLogger(LocalLogger):
    """nnU-Net's local logger with the head metrics added to its lists and to progress.png."""

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        for k in EXTRA_LOG_KEYS:
            self.my_fantastic_logging[k] = []

    def load_checkpoint(self, checkpoint: dict) -> None:
        super().load_checkpoint(checkpoint)
        # a checkpoint from before a key existed: fill that key's epochs with NaN so logging goes on
        n = len(self.my_fantastic_logging.get("epoch_end_timestamps", []))
        for k in EXTRA_LOG_KEYS:
            self.my_fantastic_logging.setdefault(k, [float("nan")] * n)

    def plot_progress_png(self, output_folder: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        log = self.my_fantastic_logging
        epoch = min(len(v) for v in log.values()) - 1
        if epoch < 0:
            return
        x = list(range(epoch + 1))
        fig, axs = plt.subplots(4, 1, figsize=(12, 22))
        ax = axs[0]
        ax.plot(x, log["train_losses"][:epoch + 1], "b-", label="loss_tr (total)")
        ax.plot(x, log["val_losses"][:epoch + 1], "r-", label="loss_val (total)")
        ax.plot(x, log["train_seg_losses"][:epoch + 1], "b:", label="loss_tr (segmentation)")
        ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.legend(loc="upper left")
        ax2 = ax.twinx()
        ax2.plot(x, log["mean_fg_dice"][:epoch + 1], "g:", label="pseudo dice")
        ax2.plot(x, log["ema_fg_dice"][:epoch + 1], "g-", label="pseudo dice (mov. avg.)")
        ax2.set_ylabel("pseudo dice"), ax2.legend(loc="upper right")
        ax = axs[1]
        ax.plot(x, log["val_c_index"][:epoch + 1], "m-o",
                label="val C-index (patient level, every validation case; repeated between whole-fold runs)")
        ax.plot(x, log["val_auc"][:epoch + 1], "c-o", label="val AUC at horizon (idem)")
        ax.plot(x, log["ema_selection_score"][:epoch + 1], "k-", label="checkpoint selection score (EMA)")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_ylim(0, 1), ax.set_xlabel("epoch"), ax.legend(loc="lower right")
        ax = axs[2]
        ax.plot(x, log["train_cls_losses"][:epoch + 1], "c-", label="loss_tr classification (BCE)")
        ax.plot(x, log["train_surv_losses"][:epoch + 1], "m-", label="loss_tr survival")
        ax.set_xlabel("epoch"), ax.legend(loc="upper right")
        ax = axs[3]
        ax.plot(x, [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])][:epoch + 1],
                "b-", label="epoch duration [s]")
        ax.plot([], [])
        ax.set_xlabel("epoch"), ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close(fig)


class MultiTaskLoss(torch.nn.Module):
    """nnU-Net's segmentation loss plus the head losses of the same forward pass.

    nnU-Net's steps call ``loss(output, target)`` with the segmentation output only; the step's
    context (the batch's clinical vectors, outcomes and the heads the network captured) is passed
    as ``loss(output, target, context)`` or bound for nnU-Net's own calls with ``with
    loss.bind(context):``, so nnU-Net's own step (AMP, GradScaler, clipping) is reused unchanged.

    ``head_losses(target, context) -> (classification, survival)`` computes the head terms (the
    trainer's method); an optional ``consistency(context)`` term (an ablation in
    ``benchmarks/trainers``) is added with weight ``lambda_consistency``.
    """

    def __init__(self, seg_loss: torch.nn.Module, head_losses: Callable, lambda_cls: float, lambda_surv: float,
                 consistency: Optional[Callable] = None, lambda_consistency: float = 0.0):
        super().__init__()
        self.seg_loss = seg_loss
        self._head_losses, self._consistency = head_losses, consistency
        self.lambda_cls, self.lambda_surv, self.lambda_consistency = lambda_cls, lambda_surv, lambda_consistency
        self._bound: Optional[dict] = None
        self.last = {}

    @contextmanager
    def bind(self, context: dict) -> Iterator[None]:
        """``context`` is the one of every ``loss(output, target)`` call inside the block."""
        previous, self._bound = self._bound, context
        try:
            yield
        finally:
            self._bound = previous

    def forward(self, output, target, context: Optional[dict] = None) -> torch.Tensor:
        seg = self.seg_loss(output, target)
        ctx = context if context is not None else self._bound
        if ctx is None:
            return seg
        cls_loss, surv_loss = self._head_losses(target, ctx)
        self.last = {"seg": seg.detach(), "cls": cls_loss.detach(), "surv": surv_loss.detach()}
        total = seg + self.lambda_cls * cls_loss + self.lambda_surv * surv_loss
        if self._consistency is not None and self.lambda_consistency > 0:
            cons = self._consistency(ctx)
            self.last["cons"] = cons.detach()
            total = total + self.lambda_consistency * cons
        return total


class SGDWithHeadOptimizer(torch.optim.SGD):
    """nnU-Net's SGD over the U-Net that carries the heads' own optimiser in its state dict.

    nnU-Net's checkpoint stores ``optimizer.state_dict()`` and restores it with
    ``load_state_dict``; nesting the head optimiser's state there keeps ``--c`` exact without
    copying nnU-Net's save/load code. ``param_groups`` are the U-Net's only, so nnU-Net's poly
    schedule and its learning-rate log act on the U-Net as before.
    """

    def __init__(self, params, head_optimizer: torch.optim.Optimizer, **kwargs):
        super().__init__(params, **kwargs)
        self.head_optimizer = head_optimizer

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["head_optimizer"] = self.head_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        head = state_dict.pop("head_optimizer", None)
        super().load_state_dict(state_dict)
        if head is not None:
            self.head_optimizer.load_state_dict(head)


def cap_batch_size(trainer: nnUNetTrainer, cap: int) -> None:
    """Cap nnU-Net's planned batch size at ``cap`` (call after nnU-Net's ``_set_batch_size_and_oversample``;
    not under DDP, where nnU-Net splits the global batch). For CPU budgets (the demo, benchmarks):
    nnU-Net raises the batch size for small patches, which keeps the cost of an iteration about
    constant, and on a 2-core CPU the iteration count is what the budget buys."""
    if not trainer.is_ddp and trainer.batch_size > cap:
        trainer.print_to_log_file(f"Batch size capped at {cap} (plan: {trainer.batch_size})")
        trainer.batch_size = int(cap)


def is_new_best(score: float, best: Optional[float]) -> bool:
    """The best-checkpoint rule: the first score, then any score above the best so far."""
    return best is None or score > best


def best_score_from_log(scores: Sequence[float], legacy: Optional[float] = None) -> Optional[float]:
    """The best checkpoint's score after the logged epochs' ``scores`` (by :func:`is_new_best`, as the
    epochs chose it); ``legacy`` (a checkpoint's ``_best_ema`` from before the score had its own
    attribute) when no logged score is finite."""
    best = None
    for score in scores:
        best = score if is_new_best(score, best) else best
    if (best is None or not np.isfinite(best)) and legacy is not None:
        best = float(legacy)
    return best


def quantity_statistics(quantities: np.ndarray, availability: np.ndarray) -> tuple:
    """Mean and sd (floored at 1e-6) of the training fold's tumour quantities ``[N, 1 + C]``
    (volume, then the tumour mean of each of the model's channels), a channel's over the cases
    whose series is real (``availability [N, C]``): a filler is not a measurement. A channel no
    case has keeps mean 0, sd 1."""
    q = np.asarray(quantities, dtype=np.float64)
    present = np.concatenate([np.ones((q.shape[0], 1), dtype=bool), np.asarray(availability) > 0], 1)
    mean, std = np.zeros(q.shape[1]), np.ones(q.shape[1])
    for j in range(q.shape[1]):
        col = q[present[:, j], j]
        if col.size:
            mean[j], std[j] = col.mean(), max(col.std(), 1e-6)
    return mean, std


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator (nnU-Net's data loader samples cases and patches with
    it) and ``random``. A run is then repeatable with ``nnUNet_n_proc_DA=0`` on the CPU (up to the
    float rounding of multi-threaded kernels, about 1e-4 on the weights after a few steps); with
    augmentation worker processes the workers' own generators are not seeded (nnU-Net passes no
    seeds to them), so runs differ in augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
