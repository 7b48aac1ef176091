"""The tumour region of interest: one box, found and cut the same way in training and prediction.

The learned image pathway (``image_features="tumour_roi"``, :mod:`nnunet_multitask.network`) reads a
box of the *un-augmented* preprocessed image around the tumour, never nnU-Net's augmented training
patch, so the heads see the same kind of input when they learn and when they predict:

* the box has the configuration's patch size (so the planned U-Net runs on it unchanged, and a
  tumour up to a patch in size lies whole inside it: in training every case supervises the heads,
  the largest included, instead of only the patches that happen to hold the whole tumour);
* it is centred on the tumour's largest connected component (:func:`roi_start`): the reference
  mask's in training (with a small random shift, the size of a segmentation's centring error), the
  predicted segmentation's (probability > 0.5) in prediction; where the image is larger than the box
  the box stays inside the image, where it is smaller the image is padded with zeros, as nnU-Net's
  sliding window pads it;
* everything the heads read is measured inside the box, on the tumour's own probability
  (:func:`tumour_probability`: the largest component of ``p > 0.5`` and a 3 mm margin), so tumour
  probability elsewhere (diffuse background at a clinical field of view, a false-positive island)
  enters neither the tumour volume and means nor the shells.

:class:`RoiEncoder` is the learned part: a small 3-D CNN on the box's image channels and the
(detached) tumour probability, pooled over three regions defined by that probability: inside the
tumour (heterogeneity), a thin shell at its border (margin, extramural extension) and a wider
shell in the mesorectum around it (vessels, nodes), each by mean, standard deviation
(heterogeneity is a second moment) and max (a node is small: a mean over the shell would dilute
it). It has no normalisation layer: instance normalisation would take away each case's signal
level, which is part of what the heads must compare across patients.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: shells around the tumour (mm): border shell up to the first radius, mesorectal shell up to the second
SHELL_RADII_MM = (3.0, 12.0)
#: training-time shift of the box centre (voxels, per axis, uniform in [-s, s]): a segmentation's centring error
CENTRE_JITTER_VOXELS = 2


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected (fully connected, any dimension) component of a non-empty bool mask."""
    from scipy import ndimage
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return mask if n <= 1 else labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)


def largest_component_centre(mask: np.ndarray) -> Optional[np.ndarray]:
    """Centre (index space, float) of the bounding box of the largest 26-connected component of
    ``mask`` (bool, any dimension); None for an empty mask. The largest component, so scattered
    false-positive voxels far from the tumour do not pull the box away."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    idx = np.nonzero(largest_component(mask))
    return np.array([(int(i.min()) + int(i.max())) / 2.0 for i in idx])


def roi_start(centre: Optional[Sequence[float]], shape: Sequence[int], box: Sequence[int]) -> Tuple[int, ...]:
    """First index of the box per axis: centred on ``centre`` and kept inside the image where the
    image is larger than the box; centred on the image where it is smaller (padding both sides) or
    where there is no centre (no tumour found)."""
    start = []
    for d, (n, b) in enumerate(zip(shape, box)):
        n, b = int(n), int(b)
        if n <= b or centre is None:
            start.append((n - b) // 2)
        else:
            start.append(int(np.clip(int(np.floor(float(centre[d]) - b / 2.0 + 0.5)), 0, n - b)))
    return tuple(start)


def crop_box(array: torch.Tensor, start: Sequence[int], box: Sequence[int], fill: float = 0.0) -> torch.Tensor:
    """``array[..., start:start+box]`` over the last ``len(box)`` axes, padded with ``fill`` where the
    box leaves the array."""
    nd = len(box)
    spatial = array.shape[-nd:]
    src, dst, pad = [], [], False
    for s, b, n in zip(start, box, spatial):
        lo, hi = max(int(s), 0), min(int(s) + int(b), int(n))
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
        pad = pad or lo != int(s) or hi != int(s) + int(b)
    if not pad:
        return array[(...,) + tuple(src)]
    out = torch.full(tuple(array.shape[:-nd]) + tuple(int(b) for b in box), float(fill),
                     dtype=array.dtype, device=array.device)
    out[(...,) + tuple(dst)] = array[(...,) + tuple(src)]
    return out


def box_max(p: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Maximum over a centred box of ``kernel`` voxels (odd sizes) of ``p [B, C, *sp]``, as one 1-D
    max-pool per axis: a dilation by a box, on ``p``'s device, at the cost of the kernel's sides rather
    than its volume (the mesorectal shell's kernel spans 9 x 35 x 35 voxels at 3 x 0.7 x 0.7 mm)."""
    pool = F.max_pool3d if p.ndim == 5 else F.max_pool2d
    nd = p.ndim - 2
    for axis, k in enumerate(kernel):
        if int(k) > 1:
            size = [1] * nd
            size[axis] = int(k)
            p = pool(p, kernel_size=size, stride=1, padding=[s // 2 for s in size])
    return p


def _radius_voxels(radius_mm: float, spacing_mm: Sequence[float]) -> list:
    return [2 * max(int(round(float(radius_mm) / float(s))), 0) + 1 for s in spacing_mm]


def tumour_probability(prob: torch.Tensor, spacing_mm: Sequence[float], margin_mm: float = SHELL_RADII_MM[0]
                       ) -> torch.Tensor:
    """The tumour's own probability in boxes ``[B, *box]``: ``prob`` kept within ``margin_mm`` of the
    largest connected component of ``prob > 0.5``, zero elsewhere (all of it where no voxel passes
    0.5). Diffuse or scattered probability elsewhere in the box (background at a clinical field of view,
    a false-positive island) then enters neither the soft volume and means nor the shells."""
    cores = []
    for p in prob:
        core = (p > 0.5).cpu().numpy()
        # nothing passes 0.5: keep all of it
        cores.append(torch.from_numpy(largest_component(core) if core.any() else np.ones(core.shape, dtype=bool)))
    core = torch.stack(cores).to(device=prob.device, dtype=prob.dtype)[:, None]
    keep = box_max(core, _radius_voxels(margin_mm, spacing_mm))[:, 0]
    return prob * keep


def training_box(image: torch.Tensor, centre: Optional[np.ndarray], box: Sequence[int],
                 jitter: int = CENTRE_JITTER_VOXELS) -> torch.Tensor:
    """The box of one case as the heads see it in training: centred on ``centre`` shifted by up to
    ``jitter`` voxels per axis (torch's generator, so a seeded run repeats it)."""
    if centre is not None and jitter:
        centre = np.asarray(centre) + torch.randint(-int(jitter), int(jitter) + 1, (len(centre),)).numpy()
    return crop_box(image, roi_start(centre, image.shape[1:], box), box)


def random_flips(boxes: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Each box of ``[B, C, *box]`` mirrored along each of the spatial ``axes`` with probability 1/2
    (nnU-Net's mirroring axes: label-preserving for the heads, as for the segmentation)."""
    if not axes:
        return boxes
    flips = (torch.rand(boxes.shape[0], len(axes)) < 0.5).tolist()
    return torch.stack([torch.flip(b, [1 + int(a) for a, f in zip(axes, fl) if f]) for b, fl in zip(boxes, flips)])


def shell_weights(prob: torch.Tensor, spacing_mm: Sequence[float],
                  radii_mm: Sequence[float] = SHELL_RADII_MM) -> torch.Tensor:
    """Region weights ``[B, 3, *sp]`` from the tumour probability ``[B, *sp]``: inside (``p``), the
    border shell (dilation of ``p`` by the first radius, minus ``p``) and the outer shell (dilation
    by the second radius minus the first), dilation as a max-pool whose kernel spans the radius in
    each axis at that axis' spacing (anisotropic voxels)."""
    p = prob.float()[:, None]
    dilated = [box_max(p, _radius_voxels(r, spacing_mm)) for r in radii_mm]
    inner = p
    border = (dilated[0] - p).clamp_min(0)
    outer = (dilated[1] - dilated[0]).clamp_min(0)
    return torch.cat([inner, border, outer], 1)


class RoiEncoder(nn.Module):
    """Small 3-D (or 2-D) CNN on the tumour box: image channels + tumour probability in, region-pooled
    features out, ``[B, 9 * width]`` (mean, standard deviation and max over inside / border shell /
    outer shell).

    Parameters
    ----------
    n_channels : int
        Image channels (the model's input channels); the probability is one more.
    spacing_mm : sequence of float
        Voxel spacing of the box (the configuration's), for the shells' radii.
    width : int
        Feature channels.
    """

    def __init__(self, n_channels: int, spacing_mm: Sequence[float], width: int = 16):
        super().__init__()
        self.spacing_mm = tuple(float(s) for s in spacing_mm)
        nd = len(self.spacing_mm)
        conv = nn.Conv3d if nd == 3 else nn.Conv2d
        # the first two convolutions look within a slice where the slices are much thicker than the
        # in-plane spacing (rectal T2: 3 mm against 0.7 mm), then across slices
        thick = [s > 2.0 * min(self.spacing_mm) for s in self.spacing_mm]
        k_plane = tuple(1 if t else 3 for t in thick)
        pad_plane = tuple(k // 2 for k in k_plane)
        # the second convolution halves the in-plane resolution (0.7 mm -> 1.4 mm still resolves a node)
        self.stride = tuple(1 if t else 2 for t in thick)
        self.features = nn.Sequential(
            conv(n_channels + 1, width, k_plane, padding=pad_plane), nn.LeakyReLU(0.01),
            conv(width, width, k_plane, stride=self.stride, padding=pad_plane), nn.LeakyReLU(0.01),
            conv(width, width, 3, padding=1), nn.LeakyReLU(0.01),
            conv(width, width, 3, padding=1), nn.LeakyReLU(0.01))
        self.width = int(width)
        self.out_features = 9 * self.width

    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """``image [B, C, *box]``, ``prob [B, *box]`` (detached by the caller) -> ``[B, 9 * width]``.
        Always in float32 (autocast off): the region sums run over tens of thousands of voxels, which
        would overflow float16, and prediction runs in float32 too."""
        with torch.autocast(image.device.type, enabled=False):
            return self._forward(image.float(), prob.float())

    def _forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        f = self.features(torch.cat([image.float(), prob.float()[:, None]], 1))
        pool = F.adaptive_avg_pool3d if f.ndim == 5 else F.adaptive_avg_pool2d
        # region weights at full resolution, averaged down to the feature grid
        w = pool(shell_weights(prob, self.spacing_mm), f.shape[2:]).flatten(2)       # [B, 3, V]
        f = f.flatten(2)                                                             # [B, W, V]
        return self.pool(f, w)

    @staticmethod
    def pool(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Region statistics of features ``f [B, W, V]`` under region weights ``w [B, R, V]``: the
        weighted mean, the weighted standard deviation (heterogeneity is a second moment) and the max
        over the voxels mostly in the region (0 where a region has none) -> ``[B, 3 * R * W]``."""
        f, w = f.float(), w.float()
        wn = w / w.sum(2, keepdim=True).clamp_min(1e-3)                             # weights summing to 1
        means = torch.einsum("bwv,brv->brw", f, wn)                                  # [B, R, W]
        centred = f[:, None] - means[..., None]                                      # [B, R, W, V]
        sds = ((centred * centred * wn[:, :, None]).sum(3)).clamp_min(1e-6).sqrt()
        maxes = []
        for r in range(w.shape[1]):
            inside = w[:, r:r + 1] > 0.5                                             # [B, 1, V]
            m = torch.where(inside, f, torch.full_like(f, -1e4)).amax(2)            # [B, W]
            maxes.append(torch.where(inside.any(2), m, torch.zeros_like(m)))
        maxes = torch.stack(maxes, 1)                                                # [B, R, W]
        return torch.cat([means.flatten(1), sds.flatten(1), maxes.flatten(1)], 1)
