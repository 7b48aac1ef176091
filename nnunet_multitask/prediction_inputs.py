"""The inputs of a prediction, checked before any checkpoint is loaded, and prepared for nnU-Net.

* :func:`check_inputs`: an nnU-Net input folder against the model's channels: names, channels,
  stray files with another ending, readable complete 3-D headers, one voxel grid per case
  (within :data:`GEOMETRY_TOLERANCE`, or allowed with ``--resample-to-first``).
* :func:`input_availability` / :func:`check_missing_series_support`: which series each case has,
  and whether the model can predict a case lacking one.
* :func:`misaligned_channels` and :func:`prepare_input_folder`: the channels to resample, and a
  folder in which every case has every channel on one grid (missing series filled as at
  conversion, misaligned channels resampled onto the first channel's grid).
* :func:`is_cohort_folder`: new patients in the cohort layout rather than nnU-Net's flat folder.
"""
from __future__ import annotations

import os
import re
from os.path import basename, isdir, isfile, join
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_multitask.nifti_integrity import (IncompleteImageError, check_nifti_size, is_nifti, itk_error_reason,
                                               read_nifti_completely, split_image_name)
from nnunet_multitask.contract import REQUIRED_SERIES, HeadConfig, missing_series_filler, resample_onto
from nnunet_multitask.prediction_artifact import MultitaskPredictionError

#: File endings SimpleITK reads, checked for stray files and headers.
ITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Largest difference between the channels' grids still taken as one grid (mm; direction cosines):
#: NIfTI stores the geometry in float32, so equal grids written by two programs differ by ~1e-5.
GEOMETRY_TOLERANCE = {"spacing_mm": 1e-3, "origin_mm": 1e-3, "direction": 1e-4}


def check_inputs(input_folder: str, dataset_json: dict, allow_missing_series: bool = False,
                  resample_to_first: bool = False) -> List[str]:
    """Check an nnU-Net input folder against the model's channels before anything is predicted.

    Every file must be named ``<case>_<XXXX><file_ending>`` with a channel the model was trained
    with, every case must have all channels (with ``allow_missing_series``: its required series,
    T2; :func:`input_availability` says which others it has), and (for formats SimpleITK reads)
    each case's channel images must be readable headers of one 3-D grid: size, spacing, origin and
    direction within :data:`GEOMETRY_TOLERANCE` of the first channel's (with ``resample_to_first``
    a channel on another grid is allowed: the prediction resamples it onto the first channel's).
    Image files with another ending than the model's are refused.

    Returns
    -------
    list of str
        The case ids, sorted.
    """
    ending = dataset_json["file_ending"]
    channel_names = dataset_json["channel_names"]
    n_ch = len(channel_names)
    if not isdir(input_folder):
        raise MultitaskPredictionError(f"input folder not found: {input_folder}")
    _refuse_other_image_endings(input_folder, ending)
    files = sorted(f for f in os.listdir(input_folder) if f.endswith(ending))
    if not files:
        raise MultitaskPredictionError(f"{input_folder}: no images ending in {ending}")
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    channels: Dict[str, set] = {}
    misnamed, beyond = [], []
    for f in files:
        m = pattern.fullmatch(f)
        if m is None:
            misnamed.append(f)
            continue
        case, ch = m.group(1), int(m.group(2))
        channels.setdefault(case, set()).add(ch)
        if ch >= n_ch:
            beyond.append(f)
    if misnamed:
        raise MultitaskPredictionError(f"{input_folder}: file(s) {misnamed[:5]} are not named <case>_<XXXX>{ending}")
    if beyond:
        raise MultitaskPredictionError(
            f"{input_folder}: file(s) {beyond[:5]} have a channel index the model was not trained with (it "
            f"expects {n_ch} channels 0..{n_ch - 1}: {channel_names})")
    cases = sorted(channels)
    required = [i for i in range(n_ch) if channel_names[str(i)] in REQUIRED_SERIES]
    for c in cases:
        missing = [f"{c}_{i:04d}{ending}" for i in range(n_ch) if i not in channels[c]]
        if not missing:
            continue
        if not allow_missing_series:
            raise MultitaskPredictionError(
                f"case {c}: missing channel file(s) {missing} in {input_folder} (the model expects {n_ch} channels: "
                f"{channel_names}); a model trained for missing series (MultiRecTrainer_ModalityDropout) predicts "
                f"such cases with --allow-missing-series")
        lacking = [f"{c}_{i:04d}{ending}" for i in required if i not in channels[c]]
        if lacking:
            raise MultitaskPredictionError(
                f"case {c}: missing channel file(s) {lacking} in {input_folder}: "
                f"{', '.join(channel_names[str(i)] for i in required)} is required even with --allow-missing-series")
    if ending in ITK_ENDINGS:
        _check_image_headers(input_folder, cases, n_ch, ending, present=channels,
                             allow_misaligned=resample_to_first)
    return cases


def _refuse_other_image_endings(input_folder: str, ending: str) -> None:
    """An image file in the input folder with another ending than the model's is refused: beside
    ``<case>_0001.nii.gz`` a ``<case>_0001.nii`` would leave it to chance which one is the
    channel, and on its own it would be silently ignored (nnU-Net lists the model's ending only)."""
    stray = []
    for name in sorted(os.listdir(input_folder)):
        split = split_image_name(name)
        if split is None or name.endswith(ending):
            continue
        twin = split[0] + ending
        stray.append(f"{name} (beside {twin})" if isfile(join(input_folder, twin)) else name)
    if stray:
        raise MultitaskPredictionError(
            f"{input_folder}: image file(s) {stray[:5]} do not end in {ending}, the model's file ending: one file per "
            f"case and channel, named <case>_<XXXX>{ending}; remove the stray file(s) or convert them")


def input_availability(input_folder: str, dataset_json: dict, cases: Sequence[str]) -> Dict[str, np.ndarray]:
    """0/1 per channel of every case: does ``<case>_<XXXX><ending>`` exist in the input folder."""
    ending, n_ch = dataset_json["file_ending"], len(dataset_json["channel_names"])
    return {c: np.array([isfile(join(input_folder, f"{c}_{i:04d}{ending}")) for i in range(n_ch)], dtype=np.float32)
            for c in cases}


def check_missing_series_support(cfg: HeadConfig, dataset_json: dict,
                                 availability: Mapping[str, np.ndarray]) -> None:
    """Refuse cases lacking a series the model (its heads' configuration ``cfg`` and ``dataset_json``)
    uses when it was not trained for missing series (``channel_availability``): it would read the
    filler as an image."""
    if cfg.channel_availability:
        return
    names = dataset_json["channel_names"]
    used = cfg.used_channels(len(names))
    for case in sorted(availability):
        lacking = [names[str(c)] for c in used if availability[case][c] == 0]
        if lacking:
            raise MultitaskPredictionError(
                f"case {case} lacks {', '.join(lacking)}, which {cfg.trainer} uses, and the model "
                f"was trained without channel availability: it cannot tell a missing series from an image. Predict "
                f"it with a model trained for missing series (MultiRecTrainer_ModalityDropout) or one that does not "
                f"use {', '.join(lacking)} (MultiRecTrainer_T2)")


def prepare_input_folder(input_folder: str, prepared_folder: str, dataset_json: dict,
                          availability: Mapping[str, np.ndarray],
                          misaligned: Optional[Mapping[str, Sequence[int]]] = None) -> None:
    """An input folder for nnU-Net in which every case has every channel file on one grid: links
    to the real files; for a missing series the converter's filler (zeros on the T2 grid: after
    nnU-Net's z-score normalisation the same zeros as the training data's filler); for a channel
    on another grid (``--resample-to-first``) the channel resampled onto the first channel's grid
    (linear, as the converter resamples the diffusion maps onto T2)."""
    ending, n_ch = dataset_json["file_ending"], len(dataset_json["channel_names"])
    misaligned = misaligned or {}
    for case, avail in availability.items():
        reference = None
        for i in range(n_ch):
            name = f"{case}_{i:04d}{ending}"
            if avail[i] > 0 and i not in misaligned.get(case, ()):
                os.symlink(os.path.abspath(join(input_folder, name)), join(prepared_folder, name))
                continue
            if reference is None:
                reference = sitk.ReadImage(join(input_folder, f"{case}_0000{ending}"))
            image = (resample_onto(sitk.ReadImage(join(input_folder, name)), reference) if avail[i] > 0
                     else missing_series_filler(reference))
            sitk.WriteImage(image, join(prepared_folder, name))


def _grid_difference(reader, reference) -> Optional[str]:
    """How the grid read by ``reader`` differs from ``reference``'s (both ``ImageFileReader``
    after ``ReadImageInformation``), beyond :data:`GEOMETRY_TOLERANCE`; None when it does not."""
    if tuple(reader.GetSize()) != tuple(reference.GetSize()):
        return f"size {tuple(reader.GetSize())} vs {tuple(reference.GetSize())}"
    for what, key in (("spacing", "spacing_mm"), ("origin", "origin_mm"), ("direction", "direction")):
        a = np.asarray(getattr(reader, f"Get{what.capitalize()}")(), dtype=float)
        b = np.asarray(getattr(reference, f"Get{what.capitalize()}")(), dtype=float)
        if np.max(np.abs(a - b)) > GEOMETRY_TOLERANCE[key]:
            unit = "" if what == "direction" else " mm"
            return f"{what} {tuple(np.round(a, 4).tolist())} vs {tuple(np.round(b, 4).tolist())}{unit}"
    return None


def misaligned_channels(input_folder: str, dataset_json: dict, cases: Sequence[str]) -> Dict[str, List[int]]:
    """Per case, the channels (indices) whose grid differs from its first channel's (headers only)."""
    ending, n_ch = dataset_json["file_ending"], len(dataset_json["channel_names"])
    result: Dict[str, List[int]] = {}
    for c in cases:
        reference = None
        for i in range(n_ch):
            path = join(input_folder, f"{c}_{i:04d}{ending}")
            if not isfile(path):
                continue
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            if reference is None:
                reference = reader
            elif _grid_difference(reader, reference) is not None:
                result.setdefault(c, []).append(i)
    return result


def _read_header(path: str, case: str):
    if is_nifti(path):
        try:  # before ITK reads it: a header promising terabytes in a small file would make ITK allocate them
            check_nifti_size(path)
        except IncompleteImageError as e:
            raise MultitaskPredictionError(f"case {case}: {path}: {e}") from None
        except OSError as e:
            raise MultitaskPredictionError(f"case {case}: {path} cannot be read: {e}") from None
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise MultitaskPredictionError(f"case {case}: {path} cannot be read as an image: "
                                       f"{itk_error_reason(e)}") from None
    if reader.GetDimension() != 3:
        raise MultitaskPredictionError(f"case {case}: {path} is {reader.GetDimension()}-D, expected 3-D")
    return reader


def _check_image_headers(input_folder: str, cases: Sequence[str], n_ch: int, ending: str,
                         present: Optional[Mapping[str, set]] = None, allow_misaligned: bool = False):
    """Readable headers, 3-D, one grid per case across channels (nnU-Net would otherwise fail in a
    preprocessing worker after other cases were predicted, or, for a shifted origin or another
    direction, only warn and read a diffusion map that does not lie on the tumour), and every NIfTI
    file complete: decompressed once in full and compared with the size its header promises (a file
    cut short would otherwise be read with its missing voxels as zeros)."""
    for c in cases:
        reference = None
        for i in range(n_ch):
            if present is not None and i not in present[c]:
                continue
            path = join(input_folder, f"{c}_{i:04d}{ending}")
            reader = _read_header(path, c)
            if is_nifti(path):
                # SimpleITK zero-fills a .nii.gz cut short; decompress it completely once to be sure
                try:
                    read_nifti_completely(path)
                except IncompleteImageError as e:
                    raise MultitaskPredictionError(f"case {c}: {path}: {e}") from None
            if reference is None:
                reference = (reader, path)
                continue
            why = _grid_difference(reader, reference[0])
            if why is not None and not allow_misaligned:
                raise MultitaskPredictionError(
                    f"case {c}: {basename(path)} is not on the grid of {basename(reference[1])} ({why}): every channel "
                    f"of a case must lie on one voxel grid, or the heads read a diffusion map that does not lie on "
                    f"the tumour; convert the case with nnUNetv2_convert_larc (it resamples the maps onto T2), give "
                    f"a cohort folder as -i, or pass --resample-to-first to resample it onto the first channel's grid")



def is_cohort_folder(folder: str) -> bool:
    """A folder in the cohort layout (``images/<patient_id>/``) rather than nnU-Net's flat one."""
    return isdir(join(folder, "images")) and not any(
        f.endswith(e) for f in os.listdir(folder) for e in ITK_ENDINGS)

