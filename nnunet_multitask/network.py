"""The multitask network: nnU-Net's planned U-Net plus recurrence and survival heads.

The planned network (PlainConvUNet or a ResEnc preset) is wrapped, not copied: its encoder runs
once per forward, its decoder is unchanged and never sees clinical data, and the heads read
image features of the tumour fused with an embedding of the clinical vector.

What the heads see (``image_features``, chosen by measurement: BENCHMARKS.md row c):

* ``"tumour_quantities"`` (default): what radiomics measures by hand, computed inside the network
  from its own soft segmentation ``p`` (foreground probability, detached) and its own input ``x``:
  the tumour volume ``log(1 + sum(p) * voxel volume in mm^3)`` and, per input channel ``c``, the
  mean inside the tumour ``sum(p * x_c) / sum(p)``. Standardised with the training fold's
  statistics (buffers). Because ``p`` is detached, the head losses cannot move the segmentation.
* ``"tumour_quantities+tumour_pool"``: the same plus the bottleneck features pooled with the
  predicted tumour probability as weights (gradients reach the encoder through the features).
* ``"global_pool"``: the first design, average- and max-pooled bottleneck features. Kept for the
  ablation: the encoder's last InstanceNorm sets every channel's spatial mean per sample, so a
  global pool carries almost nothing about how much tumour there is (diagnosis, BENCHMARKS.md).
* ``"tumour_roi"``: the learned image pathway (:mod:`nnunet_multitask.roi`). The heads read a box
  of the configuration's patch size around the tumour, cut from the *un-augmented* preprocessed
  image, in training as in prediction: the tumour quantities measured inside the box, and a small
  3-D CNN (:class:`~nnunet_multitask.roi.RoiEncoder`) on the box's channels and the detached tumour
  probability, pooled inside the tumour, in a border shell and in a mesorectal shell. The head
  losses update the CNN, the embeddings and the heads (their own AdamW); the probability is
  computed without gradient, so the U-Net learns from the segmentation loss alone. The plain
  forward computes no heads in this mode: the trainer calls :meth:`MultiTaskUNet.roi_heads` on
  the boxes, the predictor :meth:`MultiTaskUNet.patient_heads`.

With ``channel_availability`` (models trained for missing series, issue 13) the heads also get a
0/1 vector saying which of the model's input channels are real series; the standardised tumour
mean of a missing channel is set to 0 (the training fold's mean), so the zero filler that stands
in for the series never reaches the heads as a measurement. The vector comes with the step's
inputs (below) or is passed to :meth:`MultiTaskUNet.patient_heads`.

Called as nnU-Net's predictor calls it (``network(x)``), the module returns the segmentation
only. Head outputs leave the module in three ways:

* ``network(x, clinical=c, return_heads=True)`` returns ``(segmentation, heads)``;
* inside ``with network.capture("heads", clinical=c, availability=a) as sink:`` every plain call
  ``network(x)`` (nnU-Net's own training and validation steps) reads ``c`` and ``a`` and appends the
  heads of that patch to ``sink``;
* inside ``with network.capture("tiles") as sink:`` every plain call appends the per-tile partial
  sums the patient-level definition needs (:func:`nnunet_multitask.aggregation.patient_head_outputs`,
  used by the predictor after nnU-Net's sliding window has stitched the whole image).

``capture`` sets, for the block only, the attributes ``head_sink``, ``sink_kind``, ``clinical_input``
and ``availability_input`` and restores them afterwards; the trainer and the predictor reach them only
through it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_multitask.losses import RiskSetMemory
from nnunet_multitask.roi import RoiEncoder, crop_box, largest_component_centre, roi_start, tumour_probability

SURVIVAL_HEADS = ("cox", "discrete")
IMAGE_FEATURES = ("tumour_quantities", "tumour_quantities+tumour_pool", "global_pool", "tumour_roi")
SINK_KINDS = ("heads", "tiles")
_EPS_MASS = 1e-3


def foreground_probability(seg_logits: torch.Tensor) -> torch.Tensor:
    """Tumour (every non-background label) probability from segmentation logits [B, L, *sp] -> [B, *sp]."""
    return torch.softmax(seg_logits.float(), 1)[:, 1:].sum(1)


def tumour_quantities(prob: torch.Tensor, image: torch.Tensor, voxel_volume_mm3: float) -> torch.Tensor:
    """Soft tumour volume and the mean of every image channel inside the tumour.

    Parameters
    ----------
    prob : Tensor [B, *sp]
        Tumour probability (soft segmentation) or a binary mask.
    image : Tensor [B, C, *sp]
        The network's input channels, as preprocessed by nnU-Net.
    voxel_volume_mm3 : float
        Volume of one voxel at the configuration's spacing.

    Returns
    -------
    Tensor [B, 1 + C]
        ``log(1 + sum(p) * voxel_volume_mm3)`` then ``sum(p * x_c) / max(sum(p), 1e-3)`` per channel.
    """
    if image.ndim != prob.ndim + 1 or image.shape[0] != prob.shape[0] or image.shape[2:] != prob.shape[1:]:
        raise ValueError(f"prob {tuple(prob.shape)} and image {tuple(image.shape)} do not match "
                         f"([B,*sp] and [B,C,*sp])")
    p = prob.float().flatten(1)
    x = image.float().flatten(2)
    mass = p.sum(1)
    volume = torch.log1p(mass * float(voxel_volume_mm3))
    means = (x * p[:, None]).sum(2) / mass.clamp_min(_EPS_MASS)[:, None]
    return torch.cat([volume[:, None], means], 1)


def global_pool(features: torch.Tensor) -> torch.Tensor:
    """Average- and max-pooled features over all voxels, [B, F, *sp] -> [B, 2F] (the first design)."""
    dims = tuple(range(2, features.ndim))
    return torch.cat([features.mean(dim=dims), features.amax(dim=dims)], dim=1)


def weighted_pool_sums(features: torch.Tensor, prob: torch.Tensor):
    """(sum of w * f over voxels [B, F], sum of w [B]) with ``w`` the tumour probability averaged
    down to the feature map's resolution (so the weights of a tile add up over tiles)."""
    w = F.adaptive_avg_pool3d(prob[:, None].float(), features.shape[2:]) if features.ndim == 5 else \
        F.adaptive_avg_pool2d(prob[:, None].float(), features.shape[2:])
    w = w.flatten(1)
    return (features.float().flatten(2) * w[:, None]).sum(2), w.sum(1)


class MultiTaskUNet(nn.Module):
    """Segmentation U-Net with classification and survival heads on tumour-level image features.

    Parameters
    ----------
    base : nn.Module
        The planned nnU-Net network; must expose ``encoder`` (returning all skips) and ``decoder``.
    input_channels : sequence of int or None
        Channels of the preprocessed image that this model uses (``None``: all). Selecting here
        rather than in the data loader keeps nnU-Net's predictor unchanged for channel subsets.
    n_input_channels : int, optional
        Number of channels the model uses (after selection); default: the encoder's input width.
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
    image_features : str
        One of :data:`IMAGE_FEATURES` (module docstring).
    voxel_volume_mm3 : float
        Voxel volume at the configuration's spacing (for the tumour volume in mm^3).
    channel_availability : bool
        The heads also read which input channels are real series (module docstring).
    roi_box : sequence of int, optional
        Box of the ``"tumour_roi"`` pathway in voxels (the configuration's patch size).
    spacing_mm : sequence of float, optional
        Voxel spacing of the configuration (``"tumour_roi"``: the shells' radii in mm).
    roi_width : int
        Feature channels of the ROI encoder.
    """

    def __init__(self, base: nn.Module, input_channels: Optional[Sequence[int]], n_clinical_features: int,
                 clinical_state_size: int, survival_head: str = "cox", n_time_bins: int = 10,
                 hidden: int = 64, risk_memory_size: int = 0, dropout: float = 0.2,
                 image_features: str = "tumour_quantities", n_input_channels: Optional[int] = None,
                 voxel_volume_mm3: float = 1.0, channel_availability: bool = False,
                 roi_box: Optional[Sequence[int]] = None, spacing_mm: Optional[Sequence[float]] = None,
                 roi_width: int = 16):
        super().__init__()
        if survival_head not in SURVIVAL_HEADS:
            raise ValueError(f"survival_head must be one of {SURVIVAL_HEADS}, got {survival_head!r}")
        if image_features not in IMAGE_FEATURES:
            raise ValueError(f"image_features must be one of {IMAGE_FEATURES}, got {image_features!r}")
        if not (hasattr(base, "encoder") and hasattr(base, "decoder")):
            raise TypeError(f"{type(base).__name__} has no encoder/decoder pair; the multitask heads need a "
                            f"U-Net whose encoder returns its skips (PlainConvUNet, ResidualEncoderUNet)")
        self.encoder = base.encoder
        self.decoder = base.decoder
        self.input_channels = None if input_channels is None else [int(c) for c in input_channels]
        self.survival_head = survival_head
        self.image_features = image_features
        self.n_clinical_features = int(n_clinical_features)
        self.n_time_bins = int(n_time_bins)
        if n_input_channels is None:  # the planned network's first convolution says it
            n_input_channels = next(m for m in self.encoder.modules()
                                    if isinstance(m, nn.modules.conv._ConvNd)).in_channels
        self.n_input_channels = int(n_input_channels)
        self.voxel_volume_mm3 = float(voxel_volume_mm3)
        self.channel_availability = bool(channel_availability)

        bottleneck = int(self.encoder.output_channels[-1])
        self.n_quantities = 1 + self.n_input_channels
        self.roi_encoder: Optional[RoiEncoder] = None
        self.roi_box: Optional[tuple] = None
        if image_features == "global_pool":
            image_in = 2 * bottleneck
        elif image_features == "tumour_quantities":
            image_in = self.n_quantities
        elif image_features == "tumour_roi":
            if roi_box is None or spacing_mm is None or len(roi_box) != len(spacing_mm):
                raise ValueError(f"image_features='tumour_roi' needs roi_box and spacing_mm of one length, got "
                                 f"{roi_box} and {spacing_mm}")
            self.roi_box = tuple(int(b) for b in roi_box)
            self.roi_encoder = RoiEncoder(self.n_input_channels, spacing_mm, int(roi_width))
            image_in = self.n_quantities + self.roi_encoder.out_features
        else:
            image_in = self.n_quantities + bottleneck
        if self.channel_availability:
            image_in += self.n_input_channels
        self.image_embedding = nn.Sequential(nn.Linear(image_in, hidden), nn.LeakyReLU(0.01))
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
        self.register_buffer("quantity_mean", torch.zeros(self.n_quantities, dtype=torch.float32))
        self.register_buffer("quantity_std", torch.ones(self.n_quantities, dtype=torch.float32))
        self.register_buffer("fold_state_fitted", torch.zeros((), dtype=torch.bool))
        self.risk_memory = RiskSetMemory(int(risk_memory_size))

        # not part of the state: the per-step inputs of plain calls, set for a block by capture()
        self.clinical_input: Optional[torch.Tensor] = None
        self.availability_input: Optional[torch.Tensor] = None
        self.head_sink: Optional[List[Dict[str, torch.Tensor]]] = None
        self.sink_kind: str = "heads"

    @contextmanager
    def capture(self, kind: str = "heads", clinical: Optional[torch.Tensor] = None,
                availability: Optional[torch.Tensor] = None) -> Iterator[list]:
        """Per-step inputs of the plain calls ``network(x)`` made inside the block (nnU-Net's steps
        and sliding window call the network with the image alone); yields the list those calls
        append to: each patch's heads (``kind="heads"``; ``clinical [B, F]`` and ``availability
        [B, C]`` over the dataset's channels are read by them) or each tile's record
        (``kind="tiles"``). The previous inputs are restored on leaving."""
        if kind not in SINK_KINDS:
            raise ValueError(f"kind must be one of {SINK_KINDS}, got {kind!r}")
        saved = (self.head_sink, self.sink_kind, self.clinical_input, self.availability_input)
        sink: list = []
        self.head_sink, self.sink_kind, self.clinical_input, self.availability_input = \
            sink, kind, clinical, availability
        try:
            yield sink
        finally:
            self.head_sink, self.sink_kind, self.clinical_input, self.availability_input = saved

    # ------------------------------------------------------------------ parameter groups
    def segmentation_parameters(self):
        """Encoder and decoder, each parameter once (nnU-Net's decoder holds a reference to the
        encoder): optimised by nnU-Net's SGD."""
        seen, params = set(), []
        for p in list(self.encoder.parameters()) + list(self.decoder.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        return params

    def head_parameters(self):
        """Everything else (embeddings, fusion, heads): may get an optimiser of its own."""
        seg = {id(p) for p in self.segmentation_parameters()}
        return [p for p in self.parameters() if id(p) not in seg]

    # ------------------------------------------------------------------ image features
    def select_channels(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_channels is None else x[:, self.input_channels]

    def standardised_quantities(self, prob: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        q = tumour_quantities(prob, image, self.voxel_volume_mm3)
        return (q - self.quantity_mean.to(q.device)) / self.quantity_std.to(q.device)

    def used_availability(self, availability: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
        """Availability of the model's own input channels, ``[B, n_input_channels]`` (all ones when
        none is given: every series present). ``availability`` is over the dataset's channels."""
        if availability is None:
            return torch.ones(batch, self.n_input_channels, device=device)
        a = availability.to(device=device, dtype=torch.float32)
        if a.ndim == 1:
            a = a[None]
        a = a if self.input_channels is None else a[:, self.input_channels]
        if a.shape[0] == 1 and batch > 1:
            a = a.expand(batch, -1)
        if a.shape != (batch, self.n_input_channels):
            raise ValueError(f"availability has shape {tuple(a.shape)} after channel selection, expected "
                             f"({batch}, {self.n_input_channels})")
        return a

    def image_feature_vector(self, quantities: Optional[torch.Tensor], pooled: Optional[torch.Tensor],
                             availability: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The heads' image input from the standardised quantities and/or pooled features (and, for
        a model with ``channel_availability``, the availability of its channels)."""
        if not self.channel_availability:
            if self.image_features == "global_pool":
                return pooled
            if self.image_features == "tumour_quantities":
                return quantities
            return torch.cat([quantities, pooled], 1)  # pooled: bottleneck pool or ROI encoder features
        ref = pooled if quantities is None else quantities
        avail = self.used_availability(availability, ref.shape[0], ref.device)
        parts = []
        if quantities is not None:
            # a missing series' tumour mean is the filler's, not a measurement: set it to the fold mean
            parts.append(torch.cat([quantities[:, :1], quantities[:, 1:] * avail], 1))
        if pooled is not None:
            parts.append(pooled)
        return torch.cat(parts + [avail], 1)

    def patch_image_features(self, x: torch.Tensor, seg_full: torch.Tensor, bottleneck: torch.Tensor) -> torch.Tensor:
        """Image features of one patch (a patch that shows the whole image is one patient)."""
        quantities = pooled = None
        if self.image_features == "global_pool":
            pooled = global_pool(bottleneck)
        else:
            prob = foreground_probability(seg_full.detach())
            quantities = self.standardised_quantities(prob, x)
            if self.image_features != "tumour_quantities":
                num, den = weighted_pool_sums(bottleneck, prob)
                pooled = num / den.clamp_min(_EPS_MASS)[:, None]
        return self.image_feature_vector(quantities, pooled, self.availability_input)

    # ------------------------------------------------------------------ heads
    def heads(self, image_features: torch.Tensor, clinical: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        feats = self.image_embedding(image_features)
        if self.clinical_embedding is not None:
            if clinical is None:
                raise RuntimeError("this model fuses clinical data: pass clinical=... or use "
                                   "network.capture(clinical=...)")
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

    def tile_record(self, seg_full: torch.Tensor, bottleneck: torch.Tensor) -> Dict[str, torch.Tensor]:
        """What one sliding-window tile contributes to the patient-level features (detached)."""
        prob = foreground_probability(seg_full)
        rec = {"tumour_mass": prob.flatten(1).sum(1)}
        if self.image_features == "global_pool":
            rec["pooled"] = global_pool(bottleneck).float()
        elif self.image_features == "tumour_quantities+tumour_pool":
            rec["pool_num"], rec["pool_den"] = weighted_pool_sums(bottleneck, prob)
        return {k: v.detach() for k, v in rec.items()}

    def forward(self, x: torch.Tensor, clinical: Optional[torch.Tensor] = None, return_heads: bool = False):
        x = self.select_channels(x)
        skips = self.encoder(x)
        seg = self.decoder(skips)
        if not return_heads and self.head_sink is None:
            return seg
        seg_full = seg[0] if isinstance(seg, (list, tuple)) else seg
        if not return_heads and self.sink_kind == "tiles":
            self.head_sink.append(self.tile_record(seg_full, skips[-1]))
            return seg
        if self.image_features == "tumour_roi":
            # the heads read the tumour box of the un-augmented image (roi_heads), never this patch
            if return_heads:
                raise RuntimeError("image_features='tumour_roi': the heads read the tumour box; call roi_heads "
                                   "(training) or patient_heads (prediction)")
            return seg
        heads = self.heads(self.patch_image_features(x, seg_full, skips[-1]),
                           clinical if clinical is not None else self.clinical_input)
        if return_heads:
            return seg, heads
        if not self.training:
            # predicted tumour mass of this patch: its weight when several patches of a case are averaged
            heads["tumour_mass"] = foreground_probability(seg_full).flatten(1).sum(1)
            heads = {k: v.detach() for k, v in heads.items()}
        # in training the heads keep their graph: the trainer's loss reads them from the sink
        self.head_sink.append(heads)
        return seg

    # ------------------------------------------------------------------ tumour box
    def box_probability(self, image_box: torch.Tensor) -> torch.Tensor:
        """Tumour probability ``[B, *box]`` of boxes ``[B, C_all, *box]`` (all dataset channels) by the
        U-Net, without gradient: what the heads read in training (in prediction the stitched
        sliding-window segmentation is cut instead)."""
        with torch.no_grad():
            seg = self.decoder(self.encoder(self.select_channels(image_box)))
            seg = seg[0] if isinstance(seg, (list, tuple)) else seg
            return foreground_probability(seg)

    def roi_heads(self, image_box: torch.Tensor, prob_box: torch.Tensor, clinical: Optional[torch.Tensor],
                  availability: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Heads of the ``"tumour_roi"`` pathway on tumour boxes: ``image_box [B, C_all, *box]`` (every
        dataset channel; the model selects its own), ``prob_box [B, *box]`` (detached here)."""
        if self.roi_encoder is None:
            raise RuntimeError(f"roi_heads needs image_features='tumour_roi', this model has {self.image_features!r}")
        image = self.select_channels(image_box.float())
        prob = tumour_probability(prob_box.detach().float(), self.roi_encoder.spacing_mm)
        quantities = self.standardised_quantities(prob, image)
        feats = self.image_feature_vector(quantities, self.roi_encoder(image, prob), availability)
        return self.heads(feats, clinical)

    def _patient_roi_heads(self, prob: torch.Tensor, image: torch.Tensor, clinical, availability) -> tuple:
        """Patient-level heads of the ``"tumour_roi"`` pathway: the box around the predicted tumour's
        largest component, cut from the whole image and its stitched probability; (heads, mass in box)."""
        centre = largest_component_centre((prob[0] > 0.5).cpu().numpy())
        start = roi_start(centre, prob.shape[1:], self.roi_box)
        prob_box = crop_box(prob, start, self.roi_box)
        image_box = crop_box(image, start, self.roi_box)
        heads = self.roi_heads(image_box, prob_box, clinical, availability)
        return heads, float(tumour_probability(prob_box, self.roi_encoder.spacing_mm).sum())

    # ------------------------------------------------------------------ patient level
    def patient_heads(self, seg_logits: torch.Tensor, image: torch.Tensor,
                      tile_records: List[Mapping[str, torch.Tensor]], clinical: Optional[torch.Tensor],
                      availability: Optional[torch.Tensor] = None) -> tuple:
        """Head outputs of one patient from the stitched whole-image segmentation logits [L, *sp],
        the whole preprocessed image [C_all, *sp] and the tiles' records; returns (heads, tumour mass).
        ``availability``: [C_all] 0/1, which series are real (models with ``channel_availability``)."""
        dev = self.quantity_mean.device
        prob = foreground_probability(seg_logits[None].to(device=dev, dtype=torch.float32))
        if clinical is not None:
            clinical = None if clinical.numel() == 0 else clinical.to(dev)
        if self.image_features == "tumour_roi":
            heads, mass = self._patient_roi_heads(prob, image[None].to(device=dev, dtype=torch.float32), clinical,
                                                  availability)
            return {k: v.detach() for k, v in heads.items()}, mass
        mass = float(prob.sum())
        quantities = pooled = None
        if self.image_features != "global_pool":
            img = self.select_channels(image[None].to(device=dev, dtype=torch.float32))
            quantities = self.standardised_quantities(prob, img)
        if self.image_features == "global_pool":
            m = torch.cat([r["tumour_mass"].reshape(-1) for r in tile_records]).double()
            feats = torch.cat([r["pooled"].reshape(r["tumour_mass"].numel(), -1) for r in tile_records]).double()
            w = m / m.sum() if float(m.sum()) >= 1.0 else torch.full_like(m, 1.0 / m.shape[0])
            pooled = (w[:, None] * feats).sum(0, keepdim=True).float()
        elif self.image_features != "tumour_quantities":
            num = sum(r["pool_num"].double().sum(0) for r in tile_records)
            den = sum(r["pool_den"].double().sum() for r in tile_records)
            pooled = (num / max(float(den), _EPS_MASS))[None].float()
        if pooled is not None:
            pooled = pooled.to(dev)
        feats = self.image_feature_vector(quantities, pooled, availability)
        heads = self.heads(feats, clinical)
        return {k: v.detach() for k, v in heads.items()}, mass


def build_multitask_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                            enable_deep_supervision: bool = True) -> MultiTaskUNet:
    """The planned U-Net wrapped with the heads the plans' ``multitask_model`` block describes
    (:class:`nnunet_multitask.contract.HeadConfig`): what the trainer trains and the predictor
    rebuilds from a model folder (without looking up the trainer class)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunet_multitask.contract import HeadConfig
    cfg = HeadConfig.from_plans(plans_manager.plans)
    channels = cfg.input_channels
    n_in = len(channels) if channels is not None else num_input_channels
    base = get_network_from_plans(configuration_manager.network_arch_class_name,
                                  configuration_manager.network_arch_init_kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import,
                                  n_in, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
    roi = cfg.image_features == "tumour_roi"
    return MultiTaskUNet(base, channels, cfg.n_clinical_features, cfg.clinical_state_size,
                         survival_head=cfg.survival_head, n_time_bins=cfg.n_time_bins, hidden=cfg.head_hidden,
                         risk_memory_size=cfg.risk_memory_size, image_features=cfg.image_features,
                         n_input_channels=cfg.n_input_channels if cfg.n_input_channels is not None else n_in,
                         voxel_volume_mm3=cfg.voxel_volume_mm3, channel_availability=cfg.channel_availability,
                         roi_box=tuple(configuration_manager.patch_size) if roi else None,
                         spacing_mm=tuple(configuration_manager.spacing) if roi else None)
