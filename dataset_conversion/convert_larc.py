"""Convert a LARC cohort folder into an nnU-Net v2 raw dataset with a multitask block.

Input (a hospital export, or what ``dataset_conversion.synthetic_larc`` writes)::

    cohort/clinical.csv                      patient_id, centre, <schema feature columns>, dfs_months, dfs_event
    cohort/images/<patient_id>/T2.nii.gz     anisotropic T2 (defines the grid of the case)
    cohort/images/<patient_id>/ADC.nii.gz    diffusion maps, each on its own grid
    cohort/images/<patient_id>/Dapp.nii.gz
    cohort/images/<patient_id>/Kapp.nii.gz
    cohort/images/<patient_id>/mask.nii.gz   tumour mask on the T2 grid, labels {0, 1}

Any other file in the cohort folder (e.g. a synthetic cohort's ``ground_truth.csv``) is never read.

Output ``$nnUNet_raw/Dataset{id:03d}_{name}``::

    imagesTr/{case}_{0000..0003}.nii.gz  labelsTr/{case}.nii.gz   development cohort
    imagesTs/{case}_{0000..0003}.nii.gz  labelsTs/{case}.nii.gz   internal + external test
    dataset.json                 nnU-Net keys + "multitask" block (see :func:`build_multitask_block`)
    clinical.csv                 case_id, centre, features of EVERY case; no outcomes
    series_availability.csv      case_id, T2, ADC, Dapp, Kapp of EVERY case: 1 real series, 0 missing
    outcomes.csv                 case_id, dfs_months, dfs_event of the development cohort only
    outcomes_test.csv            case_id, dfs_months, dfs_event, set of the test cases (evaluation only)
    splits_final.json            stratified folds over the development cohort
    patient_mapping.csv          case_id, patient_id: the only file holding patient ids

and, when ``nnUNet_preprocessed`` is set, ``$nnUNet_preprocessed/Dataset{id}_{name}/splits_final.json``
(``nnUNetv2_plan_and_preprocess`` keeps an existing split file there, so training uses these folds).

Everything is built in a hidden temporary folder beside the target and moved into place at the
end; on any error the temporary folder is removed, so a failed conversion leaves nothing behind.

Usage::

    python -m dataset_conversion.convert_larc --cohort DIR --dataset-id 501 --name LARC \
        [--schema clinical/larc_schema.json] [--external-centres 3] [--internal-test-fraction 0.2] \
        [--folds 5] [--seed 0] [--horizon 36] [--overwrite] [--allow-constant-series] \
        [--allow-missing-series]

or the same flags after the console script ``nnUNetv2_convert_larc``. Bad input exits with status 2 and an
``error:`` line (as ``nnUNetv2_predict_multitask`` and the evaluation).

Every image is read completely, and compared with the size its header promises before ITK reads it (a
``.nii.gz`` cut short, or a header declaring far more voxels than the file holds, is refused, see
:mod:`nnunet_multitask.nifti_integrity`), and a constant series (e.g. an all-zero T2 or ADC from
a failed export) is refused unless ``--allow-constant-series`` is given. A patient folder holds one
file per series: a second file for a series under another ending or capitalisation (``T2.nii`` or
``t2.nii.gz`` beside ``T2.nii.gz``) is refused before any image is read (:func:`series_file`, the one
resolver every check and the conversion read through).

A patient lacking ADC, Dapp or Kapp is refused unless ``--allow-missing-series`` is given (T2 and the
mask are always required). With it, a missing channel of a development case (``imagesTr``) is written as
an all-zero float32 image on the T2 grid; a missing channel of a test case (``imagesTs``) is not written
at all (``nnUNetv2_predict_multitask --allow-missing-series`` fills it at prediction time).
``series_availability.csv`` records which series each case really has.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import SimpleITK as sitk
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets
from tqdm import tqdm

from clinical.errors import MultitaskError
from clinical.schema import GROUPS, ClinicalSchema
from clinical.tables import CASE_ID_COLUMN, read_clinical_table, write_case_table
# IMAGE_ENDINGS: a patient folder holds one file per series; a second one under another of these endings or
# another capitalisation (T2.nii or t2.nii.gz beside T2.nii.gz) is refused (ITK reads T2.nii when asked for T2.nii.gz)
from nnunet_multitask.nifti_integrity import (IMAGE_ENDINGS, IncompleteImageError, check_nifti_geometry,
                                                find_series_files, is_nifti, itk_error_reason, read_nifti_completely)
from nnunet_multitask.publish import publish_folder
from nnunet_multitask.contract import MULTITASK_VERSION, DatasetContract, missing_series_filler, resample_onto

__all__ = [
    "CHANNELS", "OPTIONAL_CHANNELS", "MASK_FILE", "LABELS", "MIN_FOV_COVERAGE", "SERIES_AVAILABILITY_FILE",
    "IMAGE_ENDINGS", "ConversionError", "EXIT_BAD_INPUT", "convert_cohort", "series_file", "split_internal_test",
    "make_folds", "build_parser", "main",
]

#: nnU-Net channel index -> series name; also the file stem in the cohort folder.
CHANNELS: Tuple[str, ...] = ("T2", "ADC", "Dapp", "Kapp")
#: The series a patient may lack with ``--allow-missing-series``; T2 (the grid) and the mask never.
OPTIONAL_CHANNELS: Tuple[str, ...] = CHANNELS[1:]
#: Per-case record of which series are real (1) and which are missing (0), at the dataset root.
SERIES_AVAILABILITY_FILE = "series_availability.csv"
MASK_FILE = "mask.nii.gz"
LABELS = {"background": 0, "tumour": 1}
FILE_ENDING = ".nii.gz"
#: A diffusion map must physically cover at least this fraction of the T2 volume.
MIN_FOV_COVERAGE = 0.95
# Tolerances for "same grid": spacing relative, origin in voxels of the T2 grid, direction cosines.
# NIfTI stores geometry in float32, so two files written from one grid can differ by ~1e-6.
SPACING_RTOL = 1e-3
ORIGIN_TOL_VOXELS = 0.01
DIRECTION_ATOL = 1e-4
#: Exit status of the command line on bad input (as the predictor and the evaluation, and argparse's own
#: usage errors).
EXIT_BAD_INPUT = 2
CONSOLE_SCRIPT = "nnUNetv2_convert_larc"
#: dataset.json's "licence" and "converted_by" (generate_dataset_json writes both, with placeholders otherwise)
DATASET_LICENCE = "the data-use terms of the source cohort"
CONVERTED_BY = "dataset_conversion.convert_larc (nnunet-multitask)"


class ConversionError(MultitaskError, ValueError):
    """The cohort cannot be converted; the message names the patient, the file and the problem."""


# ---------------------------------------------------------------------------- images
def series_file(patient_dir: Path, file_name: str, patient_id: str) -> Tuple[Path, bool, str]:
    """Which file of a patient folder holds one series: the one resolver of the converter.

    Every check and the conversion read the path returned here, so the file checked is the file
    converted. A folder may hold one file per series: two or more files whose names differ from
    ``file_name`` only in their ending (``T2.nii``, ``T2.mha``, ... beside ``T2.nii.gz``: any of
    :data:`~nnunet_multitask.nifti_integrity.IMAGE_ENDINGS`) or capitalisation (``t2.nii.gz`` beside
    ``T2.nii.gz``) are refused, naming the patient and every file; ITK's NIfTI reader asked for
    ``T2.nii.gz`` reads ``T2.nii`` when both exist. Other files (``T2.json``, a report) are ignored.

    Parameters
    ----------
    patient_dir : Path
        ``images/<patient_id>`` of the cohort.
    file_name : str
        The expected name (``T2.nii.gz``, ``mask.nii.gz``); names are case-sensitive.
    patient_id : str
        Named in errors.

    Returns
    -------
    path : Path
        ``patient_dir / file_name``.
    present : bool
        Whether exactly that file exists.
    hint : str
        When it does not exist but one file of the series exists under another name, a hint
        naming it (empty otherwise).

    Raises
    ------
    ConversionError
        Two or more files for the series.
    """
    path = patient_dir / file_name
    stem = file_name[:-len(FILE_ENDING)] if file_name.endswith(FILE_ENDING) else file_name
    try:
        found = [p.name for p in find_series_files(patient_dir, stem)]
    except OSError as e:  # no permission to list the folder
        raise ConversionError(f"patient {patient_id}: cannot list {patient_dir}: {e}") from None
    if len(found) > 1:
        raise ConversionError(
            f"patient {patient_id}: {len(found)} files for series {stem} in {patient_dir}: {', '.join(found)}: one "
            f"file per series; keep {file_name} and move the other(s) out of the folder (a reader could otherwise "
            f"take another file than the one checked)")
    if found == [file_name]:
        return path, True, ""
    if not found:
        return path, False, ""
    other = found[0]
    if other.lower() == file_name.lower():
        return path, False, f" (found {other}: file names are case-sensitive; rename it to {file_name})"
    return path, False, (f" (found {other}: the cohort layout expects {file_name}, a gzip-compressed NIfTI file; "
                         f"convert it to that name)")


def _read_image(path: Path, patient_id: str) -> sitk.Image:
    """Read a 3D scalar image completely, with errors that name the patient, the file and the problem.

    A NIfTI file is first decompressed completely (:func:`nnunet_multitask.nifti_integrity.read_nifti_completely`)
    and compared with the size its header promises, before ITK reads it: ITK zero-fills a ``.nii.gz`` cut
    short, and allocates whatever the header declares (10000^3 voxels in a file of a few hundred bytes: terabytes).
    ITK's own reason is kept in the message (its text starts with a C++ source line). NaN and infinite
    voxels are refused, counted in the stored values: ITK before version 6 silently replaces every
    non-finite voxel of a NIfTI file by 0 on read (ITK pull request #6683), so for NIfTI they are counted
    in the complete nibabel read; other formats keep them in SimpleITK.
    """
    nifti = None
    if is_nifti(path):
        try:
            nifti = read_nifti_completely(path)
            check_nifti_geometry(path)
        except IncompleteImageError as e:
            raise ConversionError(f"patient {patient_id}: cannot read {path}: {e}") from None
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = itk_error_reason(e)
        if "orthonormal" in reason:
            reason += (" (the file's orientation, its sform/qform affine, is sheared or degenerate: re-export the "
                       "series or repair its header)")
        raise ConversionError(f"patient {patient_id}: cannot read {path}: {reason}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"patient {patient_id}: {path} is not a 3D single-channel image "
                              f"(dimension {image.GetDimension()}, "
                              f"{image.GetNumberOfComponentsPerPixel()} components)")
    geometry = (*image.GetSpacing(), *image.GetOrigin(), *image.GetDirection())
    if not (np.isfinite(geometry).all() and min(image.GetSpacing()) > 0):
        raise ConversionError(f"patient {patient_id}: {path} has an undefined geometry (spacing {image.GetSpacing()}, "
                              f"origin {image.GetOrigin()}, direction {image.GetDirection()})")
    if nifti is not None:
        voxels = np.asanyarray(nifti.dataobj) if nifti.get_data_dtype().kind in "fc" else None
    else:
        voxels = sitk.GetArrayViewFromImage(image)
    if voxels is not None and np.issubdtype(voxels.dtype, np.inexact):  # integer voxels cannot be NaN or inf
        n_bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        if n_bad:
            raise ConversionError(f"patient {patient_id}: {path} has {n_bad} NaN or infinite voxel(s)")
    return image


def _check_not_constant(image: sitk.Image, path: Path, patient_id: str, series: str,
                        allow_constant: bool) -> None:
    """Refuse a series whose voxels all hold one value (a blank series from a failed export);
    with ``allow_constant`` a loud warning instead."""
    voxels = sitk.GetArrayViewFromImage(image)
    low, high = float(voxels.min()), float(voxels.max())
    if low != high:
        return
    what = "every voxel is 0" if low == 0 else f"every voxel holds {low:g}"
    message = (f"patient {patient_id}: series {series} ({path}) is constant ({what}): a blank series from a "
               f"failed export?")
    if not allow_constant:
        raise ConversionError(f"{message} Replace it, or pass --allow-constant-series to convert it anyway")
    print(f"WARNING: {message} Converted anyway (--allow-constant-series)", file=sys.stderr)


def _grid_mismatch(image: sitk.Image, reference: sitk.Image) -> Optional[str]:
    """Why ``image`` is not on the grid of ``reference`` (None if it is, within tolerance)."""
    if image.GetSize() != reference.GetSize():
        return f"size {image.GetSize()} != T2 size {reference.GetSize()}"
    ref_spacing = np.array(reference.GetSpacing())
    if not np.allclose(image.GetSpacing(), ref_spacing, rtol=SPACING_RTOL, atol=0):
        return f"spacing {image.GetSpacing()} != T2 spacing {reference.GetSpacing()}"
    if np.max(np.abs(np.subtract(image.GetOrigin(), reference.GetOrigin()))) > ORIGIN_TOL_VOXELS * ref_spacing.min():
        return f"origin {image.GetOrigin()} != T2 origin {reference.GetOrigin()}"
    if not np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return f"direction {image.GetDirection()} != T2 direction {reference.GetDirection()}"
    return None


def physical_coverage(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference's voxel centres that lie inside the physical extent of ``moving``.

    Computed by resampling an all-ones image on the moving grid onto the reference grid (nearest
    neighbour, 0 outside), so SimpleITK's own notion of "inside the buffer" decides, for any
    direction matrices. Voxels of one grid have equal volume, so this is the physical fraction.
    """
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    covered = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(covered).mean())


def _required_file(patient_dir: Path, file_name: str, patient_id: str, allow_missing_series: bool) -> Path:
    """The T2 or mask file of a patient (:func:`series_file`); a missing one is refused, also with
    ``--allow-missing-series`` (saying that they stay required)."""
    path, present, hint = series_file(patient_dir, file_name, patient_id)
    if present:
        return path
    tail = ": T2 and the mask are required even with --allow-missing-series" if allow_missing_series else ""
    raise ConversionError(f"patient {patient_id}: missing file {path}{hint}{tail}")


def _optional_file(patient_dir: Path, file_name: str, patient_id: str, allow_missing_series: bool) -> Optional[Path]:
    """The file of a diffusion series (:func:`series_file`), or None when it is missing (allowed only with
    ``allow_missing_series``).

    A file present under another name (``adc.nii.gz``, ``ADC.nii``) is not "missing": it is refused
    with a rename hint, so a misnamed series is never silently replaced by a filler.
    """
    path, present, hint = series_file(patient_dir, file_name, patient_id)
    if present:
        return path
    if hint:
        raise ConversionError(f"patient {patient_id}: missing file {path}{hint}")
    if not allow_missing_series:
        lacking = f"{', '.join(OPTIONAL_CHANNELS[:-1])} or {OPTIONAL_CHANNELS[-1]}"
        raise ConversionError(f"patient {patient_id}: missing file {path}. Pass --allow-missing-series to convert "
                              f"patients lacking {lacking} (T2 and the mask stay required)")
    return None


def _check_one_file_per_series(cohort_dir: Path, patients: Sequence[str]) -> None:
    """Before any image is read: no patient folder holds two files for one series (:func:`series_file`)."""
    for patient_id in patients:
        for file_name in (*(f"{series}{FILE_ENDING}" for series in CHANNELS), MASK_FILE):
            series_file(cohort_dir / "images" / patient_id, file_name, patient_id)


def _convert_case(patient_dir: Path, patient_id: str, case_id: str, images_dir: Path,
                  labels_dir: Optional[Path], allow_constant_series: bool = False, allow_missing_series: bool = False,
                  write_missing_as_zeros: bool = True) -> Tuple[int, ...]:
    """Read, check, resample and write one patient's four channels and label as ``case_id``.

    Parameters
    ----------
    patient_dir : Path
        ``images/<patient_id>`` of the cohort.
    patient_id, case_id : str
        The patient (named in errors) and the case id the files are written as.
    images_dir, labels_dir : Path
        Where the channels and the label go (``imagesTr``/``labelsTr`` or ``imagesTs``/``labelsTs``);
        ``labels_dir`` None: no mask is read or written (new patients to predict).
    allow_constant_series : bool
        Convert a constant series with a warning instead of refusing it.
    allow_missing_series : bool
        Let the patient lack any of :data:`OPTIONAL_CHANNELS` instead of refusing it.
    write_missing_as_zeros : bool
        For a missing series, write an all-zero float32 channel on the T2 grid (development cases);
        when False no file is written for it (test cases: the predictor fills it).

    Returns
    -------
    tuple of int
        Availability per channel in :data:`CHANNELS` order: 1 the real series, 0 missing.
    """
    t2_path = _required_file(patient_dir, f"{CHANNELS[0]}{FILE_ENDING}", patient_id, allow_missing_series)
    t2 = _read_image(t2_path, patient_id)
    _check_not_constant(t2, t2_path, patient_id, CHANNELS[0], allow_constant_series)
    # Cast, Resample and GetImageFromArray start from an empty metadata dictionary, so header
    # text of the export (NIfTI descrip, often a patient name or id) is not carried over.
    t2 = sitk.Cast(t2, sitk.sitkFloat32)

    # new patients (labels_dir None: dataset_conversion.new_patients) have no mask to read
    label = None if labels_dir is None else _read_label(patient_dir, patient_id, t2, t2_path, allow_missing_series)

    channels: List[Optional[sitk.Image]] = [t2]
    available = [1]
    for series in CHANNELS[1:]:
        path = _optional_file(patient_dir, f"{series}{FILE_ENDING}", patient_id, allow_missing_series)
        if path is None:
            # zeros on the T2 grid, the same filler the predictor writes (why zero: its docstring); the
            # constant and coverage checks below are for real series only, never for this filler
            channels.append(missing_series_filler(t2) if write_missing_as_zeros else None)
            available.append(0)
            continue
        diffusion = _read_image(path, patient_id)
        _check_not_constant(diffusion, path, patient_id, series, allow_constant_series)
        # Diffusion FOVs are often smaller than the T2 FOV (fewer slices); voxels outside the map
        # become 0 after resampling. A small uncovered rim is normal, more means a wrong series or
        # wrong geometry, so it is an error rather than a silent block of zeros.
        coverage = physical_coverage(diffusion, t2)
        if coverage < MIN_FOV_COVERAGE:
            raise ConversionError(
                f"patient {patient_id}: {path} covers only {coverage:.1%} of the T2 volume of {t2_path} "
                f"(at least {MIN_FOV_COVERAGE:.0%} required): check its origin/spacing/direction")
        channels.append(resample_onto(diffusion, t2))
        available.append(1)

    written = []
    for index, image in enumerate(channels):
        if image is None:  # a test case's missing series: no file, the predictor fills it
            continue
        out = images_dir / f"{case_id}_{index:04d}{FILE_ENDING}"
        sitk.WriteImage(image, str(out), useCompression=True)
        written.append(out)
    if label is not None:
        label_out = labels_dir / f"{case_id}{FILE_ENDING}"
        sitk.WriteImage(label, str(label_out), useCompression=True)
        written.append(label_out)
    _verify_written_geometry(written, case_id)
    return tuple(available)


def _read_label(patient_dir: Path, patient_id: str, t2: sitk.Image, t2_path: Path,
                allow_missing_series: bool) -> sitk.Image:
    """The patient's tumour mask, checked (on the T2 grid, labels {0, 1}, not empty), as uint8 with
    the exact T2 geometry."""
    mask_path = _required_file(patient_dir, MASK_FILE, patient_id, allow_missing_series)
    mask = _read_image(mask_path, patient_id)
    why = _grid_mismatch(mask, t2)
    if why is not None:
        raise ConversionError(f"patient {patient_id}: {mask_path} is not on the T2 grid of {t2_path}: {why}")
    mask_voxels = sitk.GetArrayFromImage(mask)
    found = np.unique(mask_voxels)
    if not np.isin(found, [0, 1]).all():  # also catches NaN in a float mask
        unexpected = [v.item() for v in found if v not in (0, 1)][:10]
        raise ConversionError(f"patient {patient_id}: {mask_path} has labels {unexpected} other than {{0, 1}}")
    if not (mask_voxels == 1).any():
        raise ConversionError(f"patient {patient_id}: {mask_path} is empty (no tumour voxel labelled 1)")
    label = sitk.GetImageFromArray(mask_voxels.astype(np.uint8))
    label.CopyInformation(t2)  # equal within tolerance: write the exact T2 geometry
    return label


def _read_geometry(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _verify_written_geometry(paths: Sequence[Path], case_id: str) -> None:
    """Every written file of a case must share the T2 (first file's) size/spacing/origin/direction."""
    reference = _read_geometry(paths[0])
    for path in paths[1:]:
        info = _read_geometry(path)
        same = (info.GetSize() == reference.GetSize()
                and np.allclose(info.GetSpacing(), reference.GetSpacing(), rtol=1e-6, atol=0)
                and np.allclose(info.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-4)
                and np.allclose(info.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-6))
        if not same:  # would be a bug in this converter, not in the input
            raise ConversionError(f"case {case_id}: written {path.name} does not share the geometry of "
                                  f"{paths[0].name}")


# ---------------------------------------------------------------------------- splits
def _stratum_labels(events: np.ndarray, centres: np.ndarray, min_count: int) -> np.ndarray:
    """Event x centre strata, with strata smaller than ``min_count`` merged.

    scikit-learn's stratified splitters need every stratum to hold enough members (2 for a
    train/test split, ``n_splits`` for k-fold); they do not merge small strata themselves. A tiny
    event x centre stratum falls back to its event-only stratum; what is still too small is
    pooled, and a pool that is itself too small joins the largest stratum.
    """
    labels = np.array([f"event={e}|centre={c}" for e, c in zip(events, centres)], dtype=object)
    for relabel in (lambda i: f"event={events[i]}", lambda i: "pooled"):
        values, counts = np.unique(labels, return_counts=True)
        small = set(values[counts < min_count])
        labels = np.array([relabel(i) if lab in small else lab for i, lab in enumerate(labels)], dtype=object)
    values, counts = np.unique(labels, return_counts=True)
    if len(values) > 1 and counts.min() < min_count:
        largest = values[np.argmax(counts)]
        labels = np.array([largest if lab in set(values[counts < min_count]) else lab for lab in labels],
                          dtype=object)
    return labels


def split_internal_test(ids: Sequence[str], events: Sequence[int], centres: Sequence[str],
                        fraction: float, seed: int) -> Tuple[List[str], List[str], str]:
    """Seeded internal-test subset, stratified by event and centre where the strata allow it.

    Returns
    -------
    development_ids, internal_test_ids, stratification
        Sorted id lists and a word on the stratification used ("event+centre", "event", "none").
    """
    ids = np.asarray(ids, dtype=object)
    n_test = max(1, int(round(fraction * len(ids))))
    if n_test >= len(ids):
        raise ConversionError(f"internal test fraction {fraction} leaves no development patient out of "
                              f"{len(ids)} internal-centre patients")
    events, centres = np.asarray(events), np.asarray(centres, dtype=object)
    attempts = [("event+centre", _stratum_labels(events, centres, 2)),
                ("event", _stratum_labels(events, np.full(len(ids), "any", dtype=object), 2)), ("none", None)]
    for stratification, labels in attempts:
        if labels is not None and len(np.unique(labels)) < 2:
            continue  # everything pooled into one stratum: not a stratification worth the name
        try:
            dev, test = train_test_split(ids, test_size=n_test, random_state=seed, shuffle=True, stratify=labels)
        except ValueError:  # e.g. fewer test places than strata
            continue
        return sorted(dev), sorted(test), stratification
    raise AssertionError("unreachable: an unstratified split always succeeds")


def make_folds(ids: Sequence[str], events: Sequence[int], centres: Sequence[str], n_folds: int,
               seed: int) -> Tuple[List[Dict[str, List[str]]], str]:
    """nnU-Net ``splits_final.json`` content: ``n_folds`` seeded folds stratified by event and centre.

    Returns
    -------
    splits, stratification
        ``[{"train": [...], "val": [...]}, ...]`` (sorted ids) and the stratification used.
    """
    # Sorted input order, so the folds do not depend on the order the caller listed the cases in.
    order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
    ids = np.asarray(ids, dtype=object)[order]
    events, centres = np.asarray(events)[order], np.asarray(centres, dtype=object)[order]
    if n_folds < 2:
        raise ConversionError(f"--folds must be at least 2, got {n_folds}")
    if len(ids) < n_folds:
        raise ConversionError(f"the development cohort has {len(ids)} patients, fewer than the {n_folds} "
                              f"folds requested; lower --folds or --internal-test-fraction")
    stratification, folds = "none", None
    for candidate, labels in (("event+centre", _stratum_labels(events, centres, n_folds)),
                              ("event", _stratum_labels(events, np.full(len(ids), "any", dtype=object), n_folds))):
        if len(np.unique(labels)) < 2 or np.unique(labels, return_counts=True)[1].min() < n_folds:
            continue
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        stratification, folds = candidate, list(splitter.split(ids, labels))
        break
    if folds is None:
        folds = list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(ids))
    return [{"train": sorted(ids[tr]), "val": sorted(ids[va])} for tr, va in folds], stratification


# ---------------------------------------------------------------------------- dataset folder
def _dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ConversionError(f"dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ConversionError(f"dataset name {name!r} must be letters, digits, '_' or '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def _check_dataset_id_free(dataset_id: int, folder_name: str, raw_root: Path) -> None:
    """nnU-Net resolves a dataset id by folder prefix in its three roots: the id must be unambiguous.

    The lookup is nnU-Net's own (``find_candidate_datasets``, what ``-d ID`` resolves against). It reads
    the roots from the environment, so ``nnUNet_raw`` is pointed at the root the dataset is written to
    (``--raw-root`` may differ from ``$nnUNet_raw``) for the duration of the call.
    """
    env = {"nnUNet_raw": str(raw_root)}
    with _environment(env):
        candidates = [str(c) for c in find_candidate_datasets(int(dataset_id))]
    roots = [raw_root] + [p for p in (_env_path("nnUNet_preprocessed"), _env_path("nnUNet_results")) if p]
    for other in candidates:
        if other == folder_name:
            continue
        where = next((root / other for root in roots if (root / other).is_dir()), Path(other))
        raise ConversionError(f"{where} already uses dataset id {int(dataset_id):03d} with another name; "
                              f"nnU-Net resolves ids by prefix, so {folder_name} would be ambiguous. "
                              f"Choose another --dataset-id or remove that folder")


@contextmanager
def _environment(values: Dict[str, str]):
    """Set environment variables for the duration of a ``with`` block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _env_path(variable: str) -> Optional[Path]:
    value = os.environ.get(variable)
    return Path(value) if value else None


def _images_by_patient(images_root: Path) -> Dict[str, Path]:
    if not images_root.is_dir():
        raise ConversionError(f"{images_root}: images folder missing (expected images/<patient_id>/...)")
    return {p.name: p for p in sorted(images_root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def build_multitask_block(schema: ClinicalSchema, horizon_months: float, internal_test: List[str],
                          external_test: List[str], source_cohort: str,
                          stratification: Dict[str, str]) -> dict:
    """The ``"multitask"`` block of ``dataset.json`` (the data contract read by trainer and predictor).

    Besides the keys of the contract it records ``split_stratification`` (what the internal-test
    selection and the folds could be stratified by: "event+centre", "event" or "none").
    """
    # the dataclass the trainer, predictor and evaluation read it back into (one set of keys and defaults)
    return DatasetContract(
        version=MULTITASK_VERSION, case_id_column=CASE_ID_COLUMN, clinical_table="clinical.csv",
        outcomes_table="outcomes.csv", test_outcomes_table="outcomes_test.csv",
        series_availability_table=SERIES_AVAILABILITY_FILE, time_column=schema.time_column,
        event_column=schema.event_column, time_unit=schema.time_unit, horizon_months=horizon_months,
        centre_column=schema.centre_column, clinical_columns=schema.to_dict()["columns"],
        clinical_groups={group: schema.group_columns([group]) for group in GROUPS},
        internal_test=tuple(internal_test), external_test=tuple(external_test), splits_file="splits_final.json",
        split_stratification=stratification, patient_mapping="patient_mapping.csv", source_cohort=source_cohort,
    ).to_dict()


def _write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


@dataclass
class _Plan:
    """Who goes where, decided from the clinical table alone (before any image is read)."""
    table: pd.DataFrame                 # indexed by patient_id
    case_of: Dict[str, str]             # patient_id -> case_id
    development: List[str]              # case ids
    internal_test: List[str]
    external_test: List[str]
    splits: List[Dict[str, List[str]]]
    stratification: Dict[str, str]


def _plan(cohort_dir: Path, schema: ClinicalSchema, name: str, external_centres: Sequence,
          internal_test_fraction: float, n_folds: int, seed: int) -> _Plan:
    table_path = cohort_dir / "clinical.csv"
    table = read_clinical_table(table_path, schema, require_outcomes=True)
    images = _images_by_patient(cohort_dir / "images")
    no_row = sorted(set(images) - set(table.index))
    no_images = sorted(set(table.index) - set(images))
    if no_row:
        raise ConversionError(f"patient(s) {no_row} have images in {cohort_dir / 'images'} but no row in {table_path}")
    if no_images:
        raise ConversionError(f"patient(s) {no_images} have a row in {table_path} but no folder in "
                              f"{cohort_dir / 'images'}")

    centre_col, event_col = schema.centre_column, schema.event_column
    known_centres = sorted(table[centre_col].unique())
    if isinstance(external_centres, (str, int)):  # a single centre given bare
        external_centres = [external_centres]
    external = [str(c) for c in external_centres]
    unknown = [c for c in external if c not in known_centres]
    if unknown:
        raise ConversionError(f"external centre(s) {unknown} not found in column '{centre_col}' of {table_path}; "
                              f"centres there: {known_centres}")
    if not 0 < internal_test_fraction < 1:
        raise ConversionError(f"--internal-test-fraction must be in (0, 1), got {internal_test_fraction}")

    patients = sorted(table.index)
    case_of = {pid: f"{name}_{i:04d}" for i, pid in enumerate(patients, start=1)}
    is_external = table[centre_col].isin(external)
    internal_patients = [p for p in patients if not is_external[p]]
    if not internal_patients:
        raise ConversionError(f"every patient of {table_path} is in an external centre {external}: "
                              f"no development cohort")
    internal = table.loc[internal_patients]
    dev_patients, test_patients, test_strat = split_internal_test(
        internal_patients, internal[event_col].to_numpy(), internal[centre_col].to_numpy(),
        internal_test_fraction, seed)
    dev = table.loc[dev_patients]
    dev_cases = [case_of[p] for p in dev_patients]
    splits, fold_strat = make_folds(dev_cases, dev[event_col].to_numpy(), dev[centre_col].to_numpy(), n_folds, seed)
    return _Plan(table=table, case_of=case_of, development=sorted(dev_cases),
                 internal_test=sorted(case_of[p] for p in test_patients),
                 external_test=sorted(case_of[p] for p in patients if is_external[p]),
                 splits=splits, stratification={"internal_test": test_strat, "folds": fold_strat})


def convert_cohort(cohort_dir: str | Path, dataset_id: int, name: str, raw_root: str | Path | None = None,
                   schema_path: str | Path | None = None, external_centres: Sequence = (3,),
                   internal_test_fraction: float = 0.2, n_folds: int = 5, seed: int = 0,
                   horizon_months: float = 36, overwrite: bool = False, progress: bool = False,
                   allow_constant_series: bool = False, allow_missing_series: bool = False) -> Path:
    """Convert a cohort folder into ``{raw_root}/Dataset{dataset_id:03d}_{name}``.

    Parameters
    ----------
    cohort_dir : str or Path
        The cohort folder (layout in the module docstring).
    dataset_id, name : int, str
        nnU-Net dataset id (1..999) and name; case ids are ``{name}_{i:04d}`` in sorted patient order.
    raw_root : str or Path, optional
        Defaults to ``$nnUNet_raw``.
    schema_path : str or Path, optional
        Clinical schema JSON; defaults to ``clinical/larc_schema.json``.
    external_centres : sequence
        Centre values (compared as text) whose patients form the external test set; may be empty.
    internal_test_fraction : float
        Fraction (0 < f < 1) of the other centres' patients held out as internal test (at least 1),
        stratified by event and centre.
    n_folds : int
        Cross-validation folds over the development cohort, stratified by event and centre.
    seed : int
        Seed of the internal-test selection and the folds.
    horizon_months : float
        Recurrence horizon recorded in the multitask block.
    overwrite : bool
        Replace an existing target folder and a differing preprocessed ``splits_final.json``.
    progress : bool
        Show a tqdm progress bar over patients.
    allow_constant_series : bool
        Convert a constant (e.g. all-zero) image series with a warning instead of refusing it.
    allow_missing_series : bool
        Convert patients lacking any of ADC, Dapp, Kapp (T2 and the mask stay required): a missing
        channel of a development case is written as zeros on the T2 grid, one of a test case is not
        written; ``series_availability.csv`` (written in every case) records which series are real.

    Returns
    -------
    Path
        The dataset folder.

    Raises
    ------
    ConversionError, clinical.tables.ClinicalTableError
        On bad input, naming the patient, the file and the problem; nothing is left written.
    """
    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise ConversionError(f"cohort folder {cohort_dir} does not exist")
    if raw_root is None:
        raw_root = _env_path("nnUNet_raw")
        if raw_root is None:
            raise ConversionError("no raw_root given and the environment variable nnUNet_raw is not set")
    raw_root = Path(raw_root)
    horizon_months = _checked_horizon(horizon_months)
    folder_name = _dataset_folder_name(dataset_id, name)
    target = raw_root / folder_name
    preprocessed_root = _env_path("nnUNet_preprocessed")
    _check_dataset_id_free(dataset_id, folder_name, raw_root)
    if target.exists() and not overwrite:
        raise ConversionError(f"{target} already exists; pass --overwrite to replace it")

    schema = ClinicalSchema.load(schema_path)
    plan = _plan(cohort_dir, schema, name, external_centres, internal_test_fraction, n_folds, seed)
    _check_one_file_per_series(cohort_dir, sorted(plan.case_of))

    preprocessed_splits = preprocessed_root / folder_name / "splits_final.json" if preprocessed_root else None
    if preprocessed_splits is not None and not overwrite:
        _check_preprocessed_splits(preprocessed_splits, plan.splits)

    raw_root.mkdir(parents=True, exist_ok=True)
    # A leading dot keeps the half-built folder invisible to nnU-Net's "Dataset###" prefix lookup.
    tmp = raw_root / f".tmp_{folder_name}_{uuid.uuid4().hex[:8]}"
    try:
        availability = _write_dataset(tmp, plan, schema, cohort_dir, folder_name, name, horizon_months,
                                      progress, allow_constant_series, allow_missing_series)
        publish_folder(str(tmp), str(target))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if preprocessed_splits is not None:
        if overwrite and (preprocessed_splits.parent / "dataset_fingerprint.json").is_file():
            print(f"note: {preprocessed_splits.parent} holds preprocessed data of the previous conversion; "
                  f"rerun nnUNetv2_plan_and_preprocess with --clean", file=sys.stderr)
        preprocessed_splits.parent.mkdir(parents=True, exist_ok=True)
        staging = preprocessed_splits.with_name(f".splits_final.{uuid.uuid4().hex[:8]}.json")
        _write_json(plan.splits, staging)
        staging.replace(preprocessed_splits)
    summary = _missing_series_summary(availability, set(plan.internal_test) | set(plan.external_test))
    if summary:
        print(summary, file=sys.stderr)
    return target


def _checked_horizon(horizon_months) -> float:
    """``horizon_months`` as a finite number > 0 (an int when whole), else a ConversionError."""
    try:
        horizon_ok = math.isfinite(float(horizon_months)) and float(horizon_months) > 0
    except (TypeError, ValueError):
        horizon_ok = False
    if not horizon_ok:
        raise ConversionError(f"--horizon must be a finite number of months > 0, got {horizon_months}")
    return int(horizon_months) if float(horizon_months).is_integer() else horizon_months


def _check_preprocessed_splits(preprocessed_splits: Path, splits: List[Dict[str, List[str]]]) -> None:
    """Without --overwrite, an existing preprocessed ``splits_final.json`` must hold the same folds."""
    if not preprocessed_splits.is_file():
        return
    try:
        existing = json.loads(preprocessed_splits.read_text())
    except json.JSONDecodeError:
        existing = None
    if existing != splits:
        raise ConversionError(f"{preprocessed_splits} exists with different folds; pass --overwrite to "
                              f"replace it (and rerun nnUNetv2_plan_and_preprocess with --clean)")


def _missing_series_summary(availability: pd.DataFrame, test_cases: set) -> Optional[str]:
    """One line: how many patients lack which series, development and test apart (None if none lack any)."""
    present = availability[list(CHANNELS)]
    if present.to_numpy().all():
        return None
    parts = []
    for label, is_test in (("training", False), ("test", True)):
        rows = present[[(case in test_cases) == is_test for case in present.index]]
        lacking = int((rows == 0).any(axis=1).sum())
        per_series = ", ".join(f"{series} {int((rows[series] == 0).sum())}" for series in OPTIONAL_CHANNELS
                               if (rows[series] == 0).any())
        parts.append(f"{label}: {lacking} of {len(rows)} patient(s)" + (f" ({per_series})" if per_series else ""))
    return (f"note: missing series (--allow-missing-series): {'; '.join(parts)}. Training cases got all-zero "
            f"filler channels, test cases have no file for them; see {SERIES_AVAILABILITY_FILE}")


def _write_dataset(out: Path, plan: _Plan, schema: ClinicalSchema, cohort_dir: Path, folder_name: str,
                   name: str, horizon_months: float, progress: bool, allow_constant_series: bool = False,
                   allow_missing_series: bool = False) -> pd.DataFrame:
    """Write the whole dataset into ``out`` (the temporary folder).

    Returns
    -------
    pandas.DataFrame
        The series availability table as written (indexed by case id, one 0/1 column per channel).
    """
    test_cases = set(plan.internal_test) | set(plan.external_test)
    folders = {sub: out / sub for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    patients = sorted(plan.case_of)
    availability = {}
    for patient_id in tqdm(patients, desc=f"converting {cohort_dir.name}", unit="patient", disable=not progress):
        case_id = plan.case_of[patient_id]
        split = "Ts" if case_id in test_cases else "Tr"
        # Training cases need every channel file (nnU-Net's planning and training read them all);
        # a test case's missing channel is left out and filled by the predictor.
        availability[case_id] = _convert_case(
            cohort_dir / "images" / patient_id, patient_id, case_id, folders[f"images{split}"],
            folders[f"labels{split}"], allow_constant_series, allow_missing_series,
            write_missing_as_zeros=split == "Tr")

    table = plan.table.copy()
    table.index = [plan.case_of[p] for p in table.index]
    table.index.name = CASE_ID_COLUMN
    table = table.sort_index()
    outcome_columns = [schema.time_column, schema.event_column]
    write_case_table(table[[schema.centre_column, *schema.columns]], out / "clinical.csv", schema)
    write_case_table(table.loc[plan.development, outcome_columns], out / "outcomes.csv", schema)
    test_outcomes = table.loc[sorted(test_cases), outcome_columns].copy()
    test_outcomes["set"] = ["internal_test" if c in plan.internal_test else "external_test"
                            for c in test_outcomes.index]
    write_case_table(test_outcomes, out / "outcomes_test.csv", schema)
    pd.DataFrame({CASE_ID_COLUMN: [plan.case_of[p] for p in patients], schema.id_column: patients}).to_csv(
        out / "patient_mapping.csv", index=False)
    _write_json(plan.splits, out / "splits_final.json")
    # Column names are dataset.json's channel_names values, so readers can key by either.
    availability_table = pd.DataFrame.from_dict(availability, orient="index", columns=list(CHANNELS)).sort_index()
    availability_table.index.name = CASE_ID_COLUMN
    availability_table.to_csv(out / SERIES_AVAILABILITY_FILE)

    # nnU-Net's own writer (it normalises channel keys to str and label values to int); the multitask
    # block travels as an extra key
    generate_dataset_json(
        str(out), channel_names={str(i): series for i, series in enumerate(CHANNELS)}, labels=dict(LABELS),
        num_training_cases=len(plan.development), file_ending=FILE_ENDING, dataset_name=name,
        description=(f"LARC multitask dataset converted from cohort '{cohort_dir.name}': T2 with ADC, Dapp "
                     f"and Kapp resampled onto the T2 grid, tumour labels; {len(plan.development)} development, "
                     f"{len(plan.internal_test)} internal test, {len(plan.external_test)} external test cases"),
        license=DATASET_LICENCE, converted_by=CONVERTED_BY,
        multitask=build_multitask_block(schema, horizon_months, plan.internal_test, plan.external_test,
                                        cohort_dir.resolve().name, plan.stratification))
    return availability_table


# ---------------------------------------------------------------------------- CLI
def _prog(console_script: str, module_form: str) -> str:
    """The program name for usage lines: the console script when called as one, else ``python -m ...``."""
    return console_script if Path(sys.argv[0]).name == console_script else module_form


def build_parser() -> argparse.ArgumentParser:
    """The command line (``python -m dataset_conversion.convert_larc`` or ``nnUNetv2_convert_larc``)."""
    parser = argparse.ArgumentParser(
        prog=_prog(CONSOLE_SCRIPT, "python -m dataset_conversion.convert_larc"),
        description="Convert a LARC cohort folder into an nnU-Net v2 raw dataset with a multitask block. "
                    f"Exit status {EXIT_BAD_INPUT} on bad input, with an 'error:' line naming the patient, the file "
                    "and the problem; nothing is left written.")
    parser.add_argument("--cohort", required=True, help="cohort folder (clinical.csv + images/<patient_id>/)")
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, e.g. 501")
    parser.add_argument("--name", required=True, help="dataset name, e.g. LARC (case ids are NAME_0001, ...)")
    parser.add_argument("--schema", default=None, help="clinical schema JSON (default clinical/larc_schema.json)")
    parser.add_argument("--raw-root", default=None,
                        help="nnU-Net raw root the dataset folder is written into (default: $nnUNet_raw)")
    parser.add_argument("--external-centres", nargs="*", default=["3"],
                        help="centre values forming the external test set (default 3; give none for no external set)")
    parser.add_argument("--internal-test-fraction", type=float, default=0.2,
                        help="fraction (0 < f < 1) of the non-external patients held out as internal test, "
                             "stratified by event and centre (default %(default)s)")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds over the development cohort, stratified by event and centre "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the internal-test selection and the folds (default %(default)s)")
    parser.add_argument("--horizon", type=float, default=36, help="recurrence horizon in months (default 36)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset folder and a differing preprocessed splits_final.json "
                             "(the old folder stays as it was if the conversion fails)")
    parser.add_argument("--allow-constant-series", action="store_true",
                        help="convert an image series whose voxels are all one value (e.g. all 0) with a warning "
                             "instead of refusing it")
    parser.add_argument("--allow-missing-series", action="store_true",
                        help="convert patients lacking ADC, Dapp or Kapp (T2 and the mask stay required): a missing "
                             "channel is written as zeros on the T2 grid for training cases and left out for test "
                             "cases; series_availability.csv records which series are real")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Convert as the command line says; 0 on success, :data:`EXIT_BAD_INPUT` on bad input."""
    args = build_parser().parse_args(argv)
    try:
        target = convert_cohort(args.cohort, args.dataset_id, args.name, raw_root=args.raw_root,
                                schema_path=args.schema, external_centres=args.external_centres,
                                internal_test_fraction=args.internal_test_fraction, n_folds=args.folds,
                                seed=args.seed, horizon_months=args.horizon, overwrite=args.overwrite,
                                progress=True, allow_constant_series=args.allow_constant_series,
                                allow_missing_series=args.allow_missing_series)
    except MultitaskError as e:  # ConversionError, ClinicalTableError, SchemaError, ...
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    block = json.loads((target / "dataset.json").read_text())
    print(f"wrote {target}: {block['numTraining']} development, {len(block['multitask']['internal_test'])} "
          f"internal test, {len(block['multitask']['external_test'])} external test cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
