"""Hand-made tumour features for the radiomics baselines: the network's quantities and IBSI-style radiomics.

Two feature sets, computed on numpy arrays (image channels ``[C, z, y, x]`` on one grid, a binary
tumour mask ``[z, y, x]``, the voxel spacing in mm in the same ``(z, y, x)`` order):

* :func:`quantity_features`: exactly what ``nnunet_multitask.network.tumour_quantities`` computes on
  a binary mask: ``log(1 + voxels * voxel_mm3)`` and each channel's mean inside the mask. The
  baseline that sees what the network's default heads see.
* :func:`texture_features`: IBSI-style first-order, texture (GLCM), shape and peritumoural features
  (listed in :data:`FIRST_ORDER`, :data:`GLCM`, :data:`RING`, :data:`SHAPE`), the hand-made
  reference a learned image pathway must beat (issue 19, item 5).

:func:`extract_dataset_features` applies either set to every case of an nnU-Net raw dataset, with
the tumour masks from any folder (the reference ``labelsTr`` / ``labelsTs`` or the ``<case>.nii.gz``
segmentations that ``nnUNetv2_predict`` writes).

Why scikit-image and not PyRadiomics
------------------------------------
``pip install pyradiomics`` fails in the project's environment (Python 3.11, numpy 2.4): the
latest release, 3.1.0, is published only as a source archive whose ``setup.py`` imports numpy in
pip's isolated build environment (``ModuleNotFoundError: No module named 'numpy'`` while getting the
build requirements), so it does not install cleanly. The features are therefore written here on
scikit-image (grey-level co-occurrence matrices: ``skimage.feature.graycomatrix`` /
``graycoprops``; the tumour surface: ``skimage.measure.marching_cubes`` / ``mesh_surface_area``),
scipy (distance transform, convex hull) and numpy (first-order statistics), following the
definitions of the Image Biomarker Standardisation Initiative (IBSI, Zwanenburg et al., Radiology
295(2), 328-338, 2020) where they are stated below.

Empty masks
-----------
A predicted segmentation may be empty. Its volume features are then 0 (the true value) and every
other feature is NaN (undefined: there is no tumour to measure); nothing is dropped. The baseline
(:mod:`evaluation.radiomics_baseline`) imputes such NaNs with the development cases' medians and
reports the cases. :func:`extract_dataset_features` lists them in ``frame.attrs["empty_masks"]``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from clinical.errors import MultitaskError

__all__ = ["FEATURE_SETS", "FIRST_ORDER", "GLCM", "RING", "SHAPE", "RadiomicsInputError", "feature_names",
           "quantity_features", "texture_features", "extract_dataset_features", "empty_mask_cases"]

PathLike = str | os.PathLike

#: The feature sets :func:`extract_dataset_features` knows.
FEATURE_SETS = ("quantities", "texture")

#: Per-channel first-order statistics of the intensities inside the mask (column ``<channel>_<name>``).
FIRST_ORDER = ("mean", "sd", "skewness", "kurtosis", "p10", "p90", "entropy")
#: Per-channel GLCM texture (column ``<channel>_glcm_<name>``).
GLCM = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
#: Per-channel peritumoural ring statistics (column ``<channel>_ring_<name>``).
RING = ("mean", "sd")
#: Shape of the mask (column ``shape_<name>``).
SHAPE = ("volume_mm3", "log1p_volume", "surface_mm2", "sphericity", "max_diameter_mm", "major_axis_mm",
         "minor_axis_mm", "least_axis_mm")

#: Grey levels of the fixed-bin-number discretisation (GLCM and histogram entropy).
DEFAULT_N_LEVELS = 32
#: Width of the peritumoural ring, in mm.
DEFAULT_RING_MM = 3.0
#: In-plane GLCM offsets: distance 1 voxel at 0, 45, 90 and 135 degrees.
_GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: Tolerances of "the mask lies on the image grid" (NIfTI stores geometry in float32).
_SPACING_RTOL = 1e-3
_ORIGIN_ATOL_MM = 1e-2


class RadiomicsInputError(MultitaskError, ValueError):
    """Bad image, mask or dataset; the message names the case and the file where there is one."""


# --------------------------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------------------------
def _check_image(image) -> np.ndarray:
    """``image`` as a float64 array ``[C, z, y, x]`` of finite values."""
    image = np.asarray(image, dtype=float)
    if image.ndim != 4 or image.shape[0] < 1:
        raise RadiomicsInputError(f"image must be [C, z, y, x] with C >= 1, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise RadiomicsInputError(f"image has {int((~np.isfinite(image)).sum())} NaN or infinite voxel(s)")
    return image


def _check_mask(mask, spatial_shape: Tuple[int, ...]) -> np.ndarray:
    """``mask`` as a bool array of ``spatial_shape`` holding only 0 and 1."""
    mask = np.asarray(mask)
    if mask.shape != tuple(spatial_shape):
        raise RadiomicsInputError(f"mask shape {mask.shape} differs from the image's spatial shape "
                                  f"{tuple(spatial_shape)}")
    values = np.unique(mask)
    if not np.isin(values, [0, 1]).all():
        raise RadiomicsInputError(f"mask must hold only 0 and 1, found {[v.item() for v in values][:10]}")
    return mask.astype(bool)


def _check_spacing(spacing) -> np.ndarray:
    """Three finite spacings > 0 (mm), ``(z, y, x)``."""
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise RadiomicsInputError(f"spacing must be three finite values > 0 in mm, (z, y, x); got {spacing}")
    return spacing


def _check_channel_names(channel_names: Optional[Sequence[str]], n_channels: int) -> List[str]:
    """One unique name per channel (default ``"0"``, ``"1"``, ...)."""
    if channel_names is None:
        return [str(c) for c in range(n_channels)]
    names = [str(n) for n in channel_names]
    if len(names) != n_channels or len(set(names)) != n_channels:
        raise RadiomicsInputError(f"channel_names must be {n_channels} unique names, got {names}")
    return names


def _check_feature_set(features: str) -> str:
    if features not in FEATURE_SETS:
        raise RadiomicsInputError(f"features must be one of {FEATURE_SETS}, got {features!r}")
    return features


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
def feature_names(features: str, channel_names: Sequence[str]) -> List[str]:
    """The columns of a feature set, in the order the extractor writes them.

    ``quantities``: ``log1p_volume_mm3``, then ``mean_<channel>``. ``texture``: the
    ``shape_<name>`` columns, then per channel ``<channel>_<first-order>``,
    ``<channel>_glcm_<name>`` and ``<channel>_ring_<name>``.
    """
    if _check_feature_set(features) == "quantities":
        return ["log1p_volume_mm3"] + [f"mean_{c}" for c in channel_names]
    names = [f"shape_{s}" for s in SHAPE]
    for c in channel_names:
        names += [f"{c}_{f}" for f in FIRST_ORDER] + [f"{c}_glcm_{g}" for g in GLCM] + [f"{c}_ring_{r}" for r in RING]
    return names


# --------------------------------------------------------------------------------------------
# Quantities (the network's)
# --------------------------------------------------------------------------------------------
def quantity_features(image, mask, spacing, channel_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """The network's hand-made tumour quantities on a binary mask.

    The same formula as ``nnunet_multitask.network.tumour_quantities`` with the probability replaced
    by a binary mask: ``log1p_volume_mm3 = log(1 + n_voxels * voxel_mm3)`` and ``mean_<channel>``
    the mean of the channel over the mask's voxels. The network applies it to nnU-Net's normalised
    input; here it reads whatever intensities ``image`` holds.

    Parameters
    ----------
    image : array-like, shape (C, z, y, x)
        Image channels on one grid.
    mask : array-like of {0, 1}, shape (z, y, x)
        Tumour mask on the same grid.
    spacing : sequence of 3 float
        Voxel spacing in mm, ``(z, y, x)``.
    channel_names : sequence of str, optional
        Names of the channels in the column names (default ``"0"``, ``"1"``, ...).

    Returns
    -------
    dict
        ``log1p_volume_mm3`` then ``mean_<channel>``. For an empty mask the volume is 0 and the
        means are NaN (the network writes 0 there, an arbitrary value: see the module docstring).
    """
    image = _check_image(image)
    mask = _check_mask(mask, image.shape[1:])
    spacing = _check_spacing(spacing)
    names = _check_channel_names(channel_names, image.shape[0])
    n_voxels = int(mask.sum())
    out = {"log1p_volume_mm3": float(np.log1p(n_voxels * float(np.prod(spacing))))}
    for name, channel in zip(names, image):
        out[f"mean_{name}"] = float(channel[mask].mean()) if n_voxels else float("nan")
    return out


# --------------------------------------------------------------------------------------------
# Texture features
# --------------------------------------------------------------------------------------------
def _discretise(values: np.ndarray, low: float, high: float, n_levels: int) -> np.ndarray:
    """IBSI fixed-bin-number discretisation of ``values`` into levels 1..n_levels over [low, high].

    ``level = floor(n_levels * (x - low) / (high - low)) + 1``, the maximum mapped to ``n_levels``;
    a constant region (``high == low``) is level 1 everywhere.
    """
    if high <= low:
        return np.ones(values.shape, dtype=np.int64)
    levels = np.floor(n_levels * (values - low) / (high - low)).astype(np.int64) + 1
    return np.clip(levels, 1, n_levels)


def _first_order(values: np.ndarray, n_levels: int) -> Dict[str, float]:
    """IBSI first-order statistics of the intensities inside the mask.

    ``mean``; ``sd`` (population, ddof 0); ``skewness`` (third standardised moment) and
    ``kurtosis`` (fourth standardised moment minus 3, IBSI's excess kurtosis), both 0 for a
    constant region (a degenerate distribution counts as symmetric with no excess tail);
    ``p10`` / ``p90`` (10th and 90th percentiles, linear interpolation); ``entropy``: Shannon
    entropy in bits of the histogram of the fixed-bin-number discretisation (``n_levels`` bins over
    the region's range), 0 for a constant region.
    """
    mean = float(values.mean())
    centred = values - mean
    sd = float(np.sqrt(np.mean(centred ** 2)))
    if sd > 0:
        skewness = float(np.mean(centred ** 3) / sd ** 3)
        kurtosis = float(np.mean(centred ** 4) / sd ** 4 - 3.0)
    else:
        skewness = kurtosis = 0.0
    counts = np.bincount(_discretise(values, values.min(), values.max(), n_levels), minlength=n_levels + 1)[1:]
    p = counts[counts > 0] / values.size
    p10, p90 = np.percentile(values, [10, 90])
    return {"mean": mean, "sd": sd, "skewness": skewness, "kurtosis": kurtosis, "p10": float(p10),
            "p90": float(p90), "entropy": float(-(p * np.log2(p)).sum()) + 0.0}


def _bounding_box(mask: np.ndarray) -> Tuple[slice, ...]:
    """The smallest box (slices per axis) holding every voxel of a non-empty mask."""
    return tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(mask))


def _glcm(channel: np.ndarray, mask: np.ndarray, n_levels: int) -> Dict[str, float]:
    """GLCM texture over the tumour's bounding-box slices (IBSI "2.5-D, merged").

    The channel's intensities inside the mask are discretised into ``n_levels`` grey levels (fixed
    bin number over the mask's range); voxels outside the mask get level 0. In every axial slice of
    the bounding box a symmetric co-occurrence matrix is counted at distance 1 voxel in four in-plane
    directions (0, 45, 90, 135 degrees: the slices are 3 mm apart, the in-plane voxels 0.7 mm, so
    through-plane neighbours would mix two scales); the matrices of all slices and directions are
    summed, pairs with a voxel outside the mask (level 0) are dropped, and the sum is normalised to
    one matrix P. From it (scikit-image's ``graycoprops`` definitions, i, j the grey levels):
    ``contrast`` = sum P (i-j)^2, ``dissimilarity`` = sum P |i-j|, ``homogeneity`` =
    sum P / (1 + (i-j)^2) (IBSI's inverse difference moment), ``energy`` = sqrt(sum P^2),
    ``correlation`` = sum P (i-mu_i)(j-mu_j) / (sd_i sd_j) (1 when the spread is 0). All NaN when no
    pair of in-plane neighbours lies inside the mask.
    """
    from skimage.feature import graycomatrix, graycoprops

    box = _bounding_box(mask)
    inside = mask[box]
    region = channel[box]
    levels = np.zeros(region.shape, dtype=np.uint8)
    levels[inside] = _discretise(region[inside], region[inside].min(), region[inside].max(), n_levels)
    counts = np.zeros((n_levels + 1, n_levels + 1))
    for z in range(levels.shape[0]):
        if inside[z].any():
            counts += graycomatrix(levels[z], distances=[1], angles=list(_GLCM_ANGLES), levels=n_levels + 1,
                                   symmetric=True, normed=False).sum(axis=(2, 3))
    counts = counts[1:, 1:]
    if counts.sum() == 0:
        return {name: float("nan") for name in GLCM}
    return {name: float(graycoprops(counts[:, :, None, None], name)[0, 0]) for name in GLCM}


def _mesh(mask: np.ndarray, spacing: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface (iso-level 0.5) of the zero-padded mask, vertices in mm."""
    from skimage.measure import marching_cubes

    padded = np.pad(mask.astype(np.float32), 1)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(spacing))
    return vertices, faces


def _max_diameter(vertices: np.ndarray) -> float:
    """Largest distance between two mesh vertices (searched among the convex hull's vertices)."""
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    try:
        points = vertices[ConvexHull(vertices).vertices]
    except QhullError:  # a flat or degenerate mesh: every vertex
        points = vertices
    return float(pdist(points).max()) if len(points) > 1 else 0.0


def _shape(mask: np.ndarray, spacing: np.ndarray) -> Dict[str, float]:
    """Shape of a non-empty mask.

    ``volume_mm3``: voxel count times voxel volume; ``log1p_volume``: log(1 + volume_mm3);
    ``surface_mm2``: area of the marching-cubes mesh; ``sphericity``: (36 pi V^2)^(1/3) / A with V
    the volume enclosed by the mesh and A its area (IBSI; 1 for a sphere, lower for irregular
    margins); ``max_diameter_mm``: IBSI's maximum 3-D diameter (largest distance between mesh
    vertices); ``major_axis_mm``, ``minor_axis_mm``, ``least_axis_mm``: 4 sqrt(lambda) for the
    eigenvalues lambda of the covariance of the voxel centres' positions in mm (IBSI; for a solid
    ellipsoid of semi-axis a this is 4 a / sqrt(5)).
    """
    from skimage.measure import mesh_surface_area

    n_voxels = int(mask.sum())
    volume = n_voxels * float(np.prod(spacing))
    vertices, faces = _mesh(mask, spacing)
    area = float(mesh_surface_area(vertices, faces))
    triangles = vertices[faces]  # volume enclosed by the mesh: sum of signed tetrahedra (divergence theorem)
    mesh_volume = abs(float(np.einsum("ij,ij->i", triangles[:, 0],
                                      np.cross(triangles[:, 1], triangles[:, 2])).sum()) / 6.0)
    sphericity = (36.0 * math.pi * mesh_volume ** 2) ** (1.0 / 3.0) / area if area > 0 else float("nan")
    positions = np.argwhere(mask) * spacing
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(positions.T))) if n_voxels > 1 else np.zeros(3)
    axes = 4.0 * np.sqrt(np.clip(eigenvalues, 0.0, None))
    return {"volume_mm3": volume, "log1p_volume": float(np.log1p(volume)), "surface_mm2": area,
            "sphericity": float(sphericity), "max_diameter_mm": _max_diameter(vertices),
            "major_axis_mm": float(axes[2]), "minor_axis_mm": float(axes[1]), "least_axis_mm": float(axes[0])}


def _ring(mask: np.ndarray, spacing: np.ndarray, ring_mm: float) -> np.ndarray:
    """Voxels outside the mask whose centre lies within ``ring_mm`` (Euclidean, in mm) of a mask voxel."""
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(~mask, sampling=spacing)
    return (distance <= ring_mm) & ~mask


def texture_features(image, mask, spacing, channel_names: Optional[Sequence[str]] = None,
                     n_levels: int = DEFAULT_N_LEVELS, ring_mm: float = DEFAULT_RING_MM) -> Dict[str, float]:
    """IBSI-style first-order, GLCM, shape and peritumoural-ring features of one tumour.

    Parameters
    ----------
    image : array-like, shape (C, z, y, x)
        Image channels on one grid (slices along z).
    mask : array-like of {0, 1}, shape (z, y, x)
        Tumour mask on the same grid.
    spacing : sequence of 3 float
        Voxel spacing in mm, ``(z, y, x)``.
    channel_names : sequence of str, optional
        Names of the channels in the column names (default ``"0"``, ``"1"``, ...).
    n_levels : int
        Grey levels of the fixed-bin-number discretisation (GLCM and histogram entropy).
    ring_mm : float
        Width of the peritumoural ring.

    Returns
    -------
    dict
        In :func:`feature_names` order (``texture``):

        * ``shape_<name>`` for each of :data:`SHAPE` (see ``_shape``);
        * ``<channel>_<name>`` for each of :data:`FIRST_ORDER`: intensities inside the mask (see
          ``_first_order``);
        * ``<channel>_glcm_<name>`` for each of :data:`GLCM`: in-plane co-occurrence texture over the
          tumour's bounding-box slices, grey levels quantised inside the mask (see ``_glcm``);
        * ``<channel>_ring_mean`` / ``<channel>_ring_sd``: mean and population sd of the channel in
          the ring of voxels outside the mask within ``ring_mm`` of it (the peritumoural signal:
          mesorectal fat, spread beyond the border); NaN when the ring is empty.

        For an empty mask ``shape_volume_mm3`` and ``shape_log1p_volume`` are 0 and every other
        value is NaN.
    """
    image = _check_image(image)
    mask = _check_mask(mask, image.shape[1:])
    spacing = _check_spacing(spacing)
    names = _check_channel_names(channel_names, image.shape[0])
    if not 2 <= int(n_levels) <= 255:  # the GLCM's grey levels are uint8
        raise RadiomicsInputError(f"n_levels must be in 2..255, got {n_levels}")
    if not (math.isfinite(ring_mm) and ring_mm > 0):
        raise RadiomicsInputError(f"ring_mm must be a finite number > 0, got {ring_mm}")
    out = dict.fromkeys(feature_names("texture", names), float("nan"))
    if not mask.any():
        out["shape_volume_mm3"] = out["shape_log1p_volume"] = 0.0
        return out
    # Every feature reads the tumour and the ring only: crop to them (identical values, a fraction of the
    # work at a clinical field of view).
    margin = np.ceil(float(ring_mm) / spacing).astype(int) + 1
    crop = tuple(slice(max(b.start - m, 0), b.stop + m) for b, m in zip(_bounding_box(mask), margin))
    image, mask = image[(slice(None),) + crop], mask[crop]
    out.update({f"shape_{k}": v for k, v in _shape(mask, spacing).items()})
    ring = _ring(mask, spacing, float(ring_mm))
    for name, channel in zip(names, image):
        out.update({f"{name}_{k}": v for k, v in _first_order(channel[mask], int(n_levels)).items()})
        out.update({f"{name}_glcm_{k}": v for k, v in _glcm(channel, mask, int(n_levels)).items()})
        if ring.any():
            values = channel[ring]
            out[f"{name}_ring_mean"], out[f"{name}_ring_sd"] = float(values.mean()), float(values.std())
    return out


# --------------------------------------------------------------------------------------------
# Dataset level
# --------------------------------------------------------------------------------------------
def _read_dataset_json(raw_dataset: Path) -> dict:
    path = raw_dataset / "dataset.json"
    if not path.is_file():
        raise RadiomicsInputError(f"{raw_dataset}: no dataset.json (not an nnU-Net raw dataset folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RadiomicsInputError(f"{path}: not valid JSON: {error}") from None


def _channel_files(raw_dataset: Path, case: str, n_channels: int, file_ending: str) -> List[Optional[Path]]:
    """The case's channel files (``imagesTr`` or ``imagesTs``), None for a channel that is absent."""
    for folder in ("imagesTr", "imagesTs"):
        files = [raw_dataset / folder / f"{case}_{c:04d}{file_ending}" for c in range(n_channels)]
        if files[0].is_file():
            return [f if f.is_file() else None for f in files]
    raise RadiomicsInputError(f"case {case}: no image {case}_0000{file_ending} in imagesTr or imagesTs of "
                              f"{raw_dataset}")


def _same_grid(image, reference) -> bool:
    return (image.GetSize() == reference.GetSize()
            and np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=_SPACING_RTOL, atol=0)
            and np.allclose(image.GetOrigin(), reference.GetOrigin(), rtol=0, atol=_ORIGIN_ATOL_MM))


def _read_image(case: str, path: Path):
    """One image, or an error naming the case, the file and ITK's reason (its last line, where ITK says
    why; the first names its own source file)."""
    import SimpleITK as sitk
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        raise RadiomicsInputError(f"case {case}: cannot read {path}: {lines[-1] if lines else 'unreadable'}") \
            from None


def _read_case(raw_dataset: Path, mask_path: Path, case: str, n_channels: int, file_ending: str):
    """(channels [C', z, y, x], indices of the channels present, mask, spacing (z, y, x)) of one case."""
    import SimpleITK as sitk

    files = _channel_files(raw_dataset, case, n_channels, file_ending)
    reference = _read_image(case, files[0])
    mask_image = _read_image(case, mask_path)
    if not _same_grid(mask_image, reference):
        raise RadiomicsInputError(f"case {case}: mask {mask_path} is not on the grid of {files[0]} (size "
                                  f"{mask_image.GetSize()} vs {reference.GetSize()}, spacing {mask_image.GetSpacing()} "
                                  f"vs {reference.GetSpacing()}, origin {mask_image.GetOrigin()} vs "
                                  f"{reference.GetOrigin()})")
    mask = sitk.GetArrayFromImage(mask_image)
    found = np.unique(mask)
    if not np.isin(found, [0, 1]).all():
        raise RadiomicsInputError(f"case {case}: mask {mask_path} holds labels {[v.item() for v in found][:10]}; "
                                  "expected only 0 (background) and 1 (tumour)")
    present = [c for c, f in enumerate(files) if f is not None]
    arrays = [sitk.GetArrayFromImage(reference)]
    for c in present[1:]:
        image = _read_image(case, files[c])
        if not _same_grid(image, reference):
            raise RadiomicsInputError(f"case {case}: {files[c]} is not on the grid of {files[0]}")
        arrays.append(sitk.GetArrayFromImage(image))
    return np.stack(arrays).astype(float), present, mask, tuple(reversed(reference.GetSpacing()))


def _mask_files(mask_dir: Path, file_ending: str, cases: Optional[Iterable[str]]) -> Dict[str, Path]:
    """``case -> mask file`` of the requested cases (every ``*<file_ending>`` in ``mask_dir`` by default)."""
    if not mask_dir.is_dir():
        raise RadiomicsInputError(f"mask folder {mask_dir} does not exist")
    found = {p.name[:-len(file_ending)]: p for p in sorted(mask_dir.glob(f"*{file_ending}")) if p.is_file()}
    if cases is None:
        if not found:
            raise RadiomicsInputError(f"mask folder {mask_dir} holds no *{file_ending} file")
        return found
    cases = [str(c) for c in cases]
    missing = [c for c in cases if c not in found]
    if missing:
        raise RadiomicsInputError(f"mask folder {mask_dir} has no mask for case(s) {missing[:10]} "
                                  f"({len(missing)} in all; expected <case>{file_ending})")
    return {c: found[c] for c in cases}


def extract_dataset_features(raw_dataset: PathLike, mask_dir: PathLike, features: str = "texture",
                             cases: Optional[Iterable[str]] = None, n_levels: int = DEFAULT_N_LEVELS,
                             ring_mm: float = DEFAULT_RING_MM) -> pd.DataFrame:
    """One feature row per case of an nnU-Net raw dataset, tumours from a mask folder.

    Parameters
    ----------
    raw_dataset : path
        ``$nnUNet_raw/DatasetXXX_Name``: ``dataset.json`` (its ``channel_names`` name the channels,
        its ``file_ending`` the files) and the channels ``<case>_0000<ending>`` ... in ``imagesTr``
        or ``imagesTs``.
    mask_dir : path
        ``<case><ending>`` masks on each case's image grid, labels {0, 1}: ``labelsTr`` / ``labelsTs``
        or the output folder of ``nnUNetv2_predict`` (other files there are ignored).
    features : {"quantities", "texture"}
        :func:`quantity_features` or :func:`texture_features`.
    cases : iterable of str, optional
        The cases to extract (each must have a mask); default every mask in ``mask_dir``.
    n_levels, ring_mm
        Passed to :func:`texture_features`.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``case_id`` (in ``cases`` order, else sorted), columns :func:`feature_names`. An
        empty mask gives its row with NaN features (see the module docstring); a channel file
        absent for a case (a test case converted with ``--allow-missing-series``) gives NaN in that
        channel's columns. ``attrs["empty_masks"]`` lists the cases with an empty mask,
        ``attrs["missing_channels"]`` maps cases to the channel names they lack.

    Raises
    ------
    RadiomicsInputError
        Naming the case and the file: no image for a case, a mask off the image grid or with labels
        other than 0 and 1, a requested case without a mask.
    """
    raw_dataset, mask_dir = Path(raw_dataset), Path(mask_dir)
    _check_feature_set(features)
    info = _read_dataset_json(raw_dataset)
    channel_map = info.get("channel_names") or info.get("modality")
    if not isinstance(channel_map, dict) or not channel_map:
        raise RadiomicsInputError(f"{raw_dataset / 'dataset.json'}: no channel_names")
    channel_names = [str(channel_map[k]) for k in sorted(channel_map, key=int)]
    file_ending = info.get("file_ending", ".nii.gz")
    rows, empty, missing_channels = {}, [], {}
    for case, mask_path in _mask_files(mask_dir, file_ending, cases).items():
        image, present, mask, spacing = _read_case(raw_dataset, mask_path, case, len(channel_names), file_ending)
        names = [channel_names[c] for c in present]
        try:
            if features == "quantities":
                rows[case] = quantity_features(image, mask, spacing, names)
            else:
                rows[case] = texture_features(image, mask, spacing, names, n_levels, ring_mm)
        except RadiomicsInputError as error:
            raise RadiomicsInputError(f"case {case} ({mask_path}): {error}") from None
        if not mask.any():
            empty.append(case)
        if len(present) < len(channel_names):
            missing_channels[case] = [n for n in channel_names if n not in names]
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=feature_names(features, channel_names))
    frame.index.name = "case_id"
    frame.attrs["empty_masks"] = empty
    frame.attrs["missing_channels"] = missing_channels
    return frame


def empty_mask_cases(frame: pd.DataFrame) -> List[str]:
    """Cases of a feature frame whose mask was empty (volume 0), whatever the feature set."""
    column = "log1p_volume_mm3" if "log1p_volume_mm3" in frame.columns else "shape_volume_mm3"
    return frame.index[frame[column].to_numpy() == 0].tolist()
