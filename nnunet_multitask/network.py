"""The multitask network: nnU-Net's planned U-Net plus recurrence and survival heads.

The planned network (PlainConvUNet or a ResEnc preset) is wrapped, not copied: its encoder runs
once per forward, its decoder is unchanged and never sees clinical data, and the heads read the
pooled bottleneck features fused with an embedding of the clinical vector.

Called as nnU-Net's predictor calls it (``network(x)``), the module returns the segmentation
only. Head outputs leave the module in one of two ways:

* ``network(x, clinical=c, return_heads=True)`` returns ``(segmentation, heads)``;
* when ``network.head_sink`` is a list, every plain ``network(x)`` call appends its heads to it
  (this is how patch-wise sliding-window inference collects them without copying nnU-Net's
  predictor); the clinical vector then comes from ``network.clinical_input``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from nnunet_multitask.losses import RiskSetMemory

SURVIVAL_HEADS = ("cox", "discrete")


class MultiTaskUNet(nn.Module):
    """Segmentation U-Net with bottleneck classification and survival heads.

    Parameters
    ----------
    base : nn.Module
        The planned nnU-Net network; must expose ``encoder`` (returning all skips) and ``decoder``.
    input_channels : sequence of int or None
        Channels of the preprocessed image that this model uses (``None``: all). Selecting here
        rather than in the data loader keeps nnU-Net's predictor unchanged for channel subsets.
    n_clinical_features : int
        Width of the preprocessed clinical vector (0: image-only model).
    clinical_state_size : int
        Length of the fitted clinical transform's state vector, kept as a buffer so it travels
        in every checkpoint (per fold) and strict loading works at inference.
    survival_head : {"cox", "discrete"}
        ``cox`` outputs one log-risk; ``discrete`` outputs ``n_time_bins`` hazard logits.
    n_time_bins : int
        Number of discrete-time intervals (bin edges are a fitted buffer).
    hidden : int
        Width of the fused feature vector.
    risk_memory_size : int
        Size of the Cox risk-set memory (a buffer, so ``--c`` resumes it intact).
    dropout : float
        Dropout in the head branch.
    """

    def __init__(self, base: nn.Module, input_channels: Optional[Sequence[int]], n_clinical_features: int,
                 clinical_state_size: int, survival_head: str = "cox", n_time_bins: int = 10,
                 hidden: int = 64, risk_memory_size: int = 0, dropout: float = 0.2):
        super().__init__()
        if survival_head not in SURVIVAL_HEADS:
            raise ValueError(f"survival_head must be one of {SURVIVAL_HEADS}, got {survival_head!r}")
        if not (hasattr(base, "encoder") and hasattr(base, "decoder")):
            raise TypeError(f"{type(base).__name__} has no encoder/decoder pair; the multitask heads need a "
                            f"U-Net whose encoder returns its skips (PlainConvUNet, ResidualEncoderUNet)")
        self.encoder = base.encoder
        self.decoder = base.decoder
        self.input_channels = None if input_channels is None else [int(c) for c in input_channels]
        self.survival_head = survival_head
        self.n_clinical_features = int(n_clinical_features)
        self.n_time_bins = int(n_time_bins)

        bottleneck = int(self.encoder.output_channels[-1])
        # average and max pooling: the mean describes the tumour's texture, the max its strongest response
        self.image_embedding = nn.Sequential(nn.Linear(2 * bottleneck, hidden), nn.LeakyReLU(0.01))
        if self.n_clinical_features > 0:
            self.clinical_embedding = nn.Sequential(nn.Linear(self.n_clinical_features, hidden), nn.LeakyReLU(0.01),
                                                    nn.Linear(hidden, hidden), nn.LeakyReLU(0.01))
            fused_in = 2 * hidden
        else:
            self.clinical_embedding = None
            fused_in = hidden
        self.fusion = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_in, hidden), nn.LeakyReLU(0.01),
                                    nn.Dropout(dropout))
        self.classification_head = nn.Linear(hidden, 1)
        self.survival_output = nn.Linear(hidden, 1 if survival_head == "cox" else self.n_time_bins)

        # fitted per fold, saved in nnU-Net's checkpoint as buffers
        self.register_buffer("clinical_state", torch.zeros(int(clinical_state_size), dtype=torch.float64))
        self.register_buffer("time_bin_edges", torch.zeros(self.n_time_bins + 1, dtype=torch.float64))
        self.register_buffer("fold_state_fitted", torch.zeros((), dtype=torch.bool))
        self.risk_memory = RiskSetMemory(int(risk_memory_size))

        # not part of the state: set by the trainer / predictor around each forward
        self.clinical_input: Optional[torch.Tensor] = None
        self.head_sink: Optional[List[Dict[str, torch.Tensor]]] = None

    # ------------------------------------------------------------------ heads
    def heads(self, bottleneck: torch.Tensor, clinical: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        pooled = torch.cat([bottleneck.mean(dim=tuple(range(2, bottleneck.ndim))),
                            bottleneck.amax(dim=tuple(range(2, bottleneck.ndim)))], dim=1)
        feats = self.image_embedding(pooled)
        if self.clinical_embedding is not None:
            if clinical is None:
                raise RuntimeError("this model fuses clinical data: pass clinical=... or set network.clinical_input")
            clinical = clinical.to(device=feats.device, dtype=feats.dtype)
            if clinical.ndim == 1:
                clinical = clinical[None]
            if clinical.shape[0] == 1 and feats.shape[0] > 1:
                clinical = clinical.expand(feats.shape[0], -1)
            if clinical.shape != (feats.shape[0], self.n_clinical_features):
                raise ValueError(f"clinical input has shape {tuple(clinical.shape)}, expected "
                                 f"({feats.shape[0]}, {self.n_clinical_features})")
            feats = torch.cat([feats, self.clinical_embedding(clinical)], dim=1)
        fused = self.fusion(feats)
        out = {"cls_logit": self.classification_head(fused)[:, 0]}
        surv = self.survival_output(fused)
        out["log_risk" if self.survival_head == "cox" else "hazard_logits"] = \
            surv[:, 0] if self.survival_head == "cox" else surv
        return out

    def forward(self, x: torch.Tensor, clinical: Optional[torch.Tensor] = None, return_heads: bool = False):
        if self.input_channels is not None:
            x = x[:, self.input_channels]
        skips = self.encoder(x)
        seg = self.decoder(skips)
        if not return_heads and self.head_sink is None:
            return seg
        heads = self.heads(skips[-1], clinical if clinical is not None else self.clinical_input)
        if return_heads:
            return seg, heads
        if not self.training:
            seg_full = seg[0] if isinstance(seg, (list, tuple)) else seg
            # predicted tumour mass of this patch: the weight of its head outputs in the patient-level mean
            heads["tumour_mass"] = torch.softmax(seg_full.float(), 1)[:, 1:].sum(dim=tuple(range(1, seg_full.ndim)))
            heads = {k: v.detach() for k, v in heads.items()}
        # in training the heads keep their graph: the trainer's loss reads them from the sink
        self.head_sink.append(heads)
        return seg


def head_config_from_plans(plans: dict) -> dict:
    """The ``multitask_model`` block the trainer writes into the plans (and so into plans.json)."""
    if "multitask_model" not in plans:
        raise KeyError("plans have no 'multitask_model' block: this model was not trained with a MultiRec trainer")
    return plans["multitask_model"]
