"""Write predictions back as DICOM: the tumour segmentation (DICOM-SEG) and the risk values (SR).

Both objects reference the patient's T2 series (the classic single-frame MR files the cohort's T2 came
from; :func:`dataset_conversion.import_dicom.t2_files_from_mapping` finds them through
``COHORT_DIR/dicom_mapping.csv``) and copy its patient and study attributes, so a PACS files them with
the study.  Both carry a research-use statement: the SR :data:`RESEARCH_USE_STATEMENT` as a TEXT item, the
SEG :data:`RESEARCH_USE_SHORT` as ContentDescription and "(research use only)" in its SeriesDescription.

:func:`write_dicom_seg`
    A binary DICOM Segmentation (highdicom) with one segment "Tumour": category SNOMED CT 49755003
    "Morphologically altered structure", type SNOMED CT 108369006 "Neoplasm", anatomic region SNOMED CT
    34402009 "Rectum"; algorithm type AUTOMATIC.  The mask (on the T2 grid, as the predictor writes it) is
    put onto the T2 slices by physical position: each T2 file's ImagePositionPatient decides which mask
    plane is its frame (nearest-neighbour resampling onto the grid the T2 files define, exact when the
    mask is on that grid), never the files' order.  Frames without tumour are left out (highdicom's
    default), each frame keeps the position of its T2 slice.
:func:`write_risk_report`
    A Comprehensive SR whose root container ("MultiRecNet recurrence risk report") holds a TEXT item with
    the research-use statement and one NUM item per value (``risk_score``, ``p_recurrence_<H>m``,
    ``surv_prob_<T>m``, their ``*_sd`` ...; codes of the private scheme ``99MULTIREC``, unit UCUM "1" no
    units).
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.coding import Code

from clinical.errors import MultitaskError

__all__ = ["DicomExportError", "RESEARCH_USE_STATEMENT", "RESEARCH_USE_SHORT", "TUMOUR_CATEGORY", "TUMOUR_TYPE",
           "RECTUM", "CODING_SCHEME", "read_t2_series", "t2_reference_grid", "write_dicom_seg", "write_risk_report"]

#: the short form (ContentDescription of the SEG, LO: at most 64 characters)
RESEARCH_USE_SHORT = "RESEARCH USE ONLY - NOT FOR CLINICAL DECISIONS"
RESEARCH_USE_STATEMENT = ("RESEARCH USE ONLY - NOT FOR CLINICAL DECISIONS. Produced by a research model "
                          "(MultiRecNet, nnU-Net v2 multitask) that is not a medical device; not validated for "
                          "diagnosis, prognosis or treatment.")
TUMOUR_CATEGORY = Code("49755003", "SCT", "Morphologically Altered Structure")
TUMOUR_TYPE = Code("108369006", "SCT", "Neoplasm")
RECTUM = Code("34402009", "SCT", "Rectum")
CODING_SCHEME = "99MULTIREC"
MANUFACTURER = "nnunet-multitask (research)"
MODEL_NAME = "MultiRecNet"
ORIENTATION_ATOL = 1e-4
_CLASSIC_MR = "1.2.840.10008.5.1.4.1.1.4"
_REPORT_TITLE = hd.sr.CodedConcept("RISKREPORT", CODING_SCHEME, "MultiRecNet recurrence risk report")
_DISCLAIMER = hd.sr.CodedConcept("DISCLAIMER", CODING_SCHEME, "Intended use")
_NO_UNITS = Code("1", "UCUM", "no units")


class DicomExportError(MultitaskError, ValueError):
    """The inputs cannot be written as DICOM; the message names the file and the problem."""


def read_t2_series(t2_dicom_files: Sequence) -> List[pydicom.Dataset]:
    """Read the T2 files (complete, with pixels) and return them sorted along the slice normal.

    Checks: at least two files, one SeriesInstanceUID, classic MR Image Storage, one orientation, no two
    files at one position.
    """
    paths = [Path(p) for p in t2_dicom_files]
    if len(paths) < 2:
        raise DicomExportError(f"T2 series: {len(paths)} file(s); a volume needs at least 2")
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as error:   # noqa: BLE001 - any read failure names the file
            raise DicomExportError(f"{path}: cannot read as DICOM ({error})") from None
    first = datasets[0]
    for path, ds in zip(paths, datasets):
        if str(ds.get("SOPClassUID", "")) != _CLASSIC_MR:
            raise DicomExportError(f"{path}: SOP class {ds.get('SOPClassUID')} is not MR Image Storage")
        if ds.SeriesInstanceUID != first.SeriesInstanceUID:
            raise DicomExportError(f"{path}: another series than {paths[0]} (one T2 series expected)")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float),
                           np.asarray(first.ImageOrientationPatient, float), atol=ORIENTATION_ATOL):
            raise DicomExportError(f"{path}: ImageOrientationPatient differs from {paths[0]}")
    normal = _normal(first)
    along = [float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)) for ds in datasets]
    order = np.argsort(along, kind="stable")
    if np.any(np.diff(np.asarray(along)[order]) < 1e-3):
        raise DicomExportError(f"{paths[0].parent}: two T2 files at one slice position")
    return [datasets[i] for i in order]


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    o = np.asarray(ds.ImageOrientationPatient, float)
    n = np.cross(o[:3], o[3:])
    return n / np.linalg.norm(n)


def t2_reference_grid(datasets: Sequence[pydicom.Dataset]) -> sitk.Image:
    """An empty uint8 image on the grid the sorted T2 files define (slice k = ``datasets[k]``)."""
    first = datasets[0]
    o = np.asarray(first.ImageOrientationPatient, float)
    normal = _normal(first)
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    gaps = np.diff(positions @ normal)
    spacing_z = float(np.median(gaps))
    if np.any(np.abs(gaps - spacing_z) > 0.05 * spacing_z):
        raise DicomExportError(f"T2 series: irregular slice spacing (gaps {np.round(gaps, 2).tolist()} mm): missing "
                               "slices")
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    grid = sitk.Image(int(first.Columns), int(first.Rows), len(datasets), sitk.sitkUInt8)
    grid.SetSpacing((column_spacing, row_spacing, spacing_z))
    grid.SetOrigin(tuple(positions[0]))
    grid.SetDirection(tuple(np.column_stack([o[:3], o[3:], normal]).ravel()))
    return grid


def _mask_on_t2(mask: sitk.Image, datasets: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The mask on the T2 slices, shape (slices, rows, columns), frame k for ``datasets[k]``."""
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise DicomExportError("mask: not a scalar 3-D image")
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    if not set(values.tolist()) <= {0, 1}:
        raise DicomExportError(f"mask: labels {values[:10].tolist()} other than {{0, 1}}")
    grid = t2_reference_grid(datasets)
    on_grid = sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                            sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(on_grid)
    if array.sum() == 0 and values.max(initial=0) > 0:
        raise DicomExportError("mask: no tumour voxel falls inside the T2 series' volume (another patient or frame "
                               "of reference?)")
    return array


def write_dicom_seg(mask: sitk.Image, t2_dicom_files: Sequence, out_path, *, series_number: int = 901,
                    segment_label: str = "Tumour", software_version: str = "1.0",
                    series_description: str = "MultiRecNet tumour segmentation (research use only)") -> Path:
    """Write the predicted tumour as a binary DICOM Segmentation referencing the T2 series.

    Parameters
    ----------
    mask : SimpleITK.Image
        Predicted tumour, labels {0, 1}, on the T2 grid (any grid in the same physical space is resampled
        by nearest neighbour onto the T2 slices).
    t2_dicom_files : sequence of path
        The T2 series' files (any order; see :func:`dataset_conversion.import_dicom.t2_files_from_mapping`).
    out_path : path
        The ``.dcm`` file to write (parent folders created).
    series_number, segment_label, software_version, series_description
        Written into the Segmentation.

    Returns
    -------
    Path
        ``out_path``.
    """
    datasets = read_t2_series(t2_dicom_files)
    frames = _mask_on_t2(mask, datasets).astype(np.uint8)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=segment_label, segmented_property_category=TUMOUR_CATEGORY,
        segmented_property_type=TUMOUR_TYPE, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=MODEL_NAME, family=Code("123110", "DCM", "Artificial Intelligence"), version=software_version),
        anatomic_regions=[RECTUM])
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=software_version, device_serial_number="none",
        content_description=RESEARCH_USE_SHORT, content_label="TUMOUR",
        omit_empty_frames=bool(frames.any()))
    seg.SeriesDescription = series_description
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path)
    return out_path


def _code_value(key: str) -> str:
    """The item's CodeValue (SH, at most 16 characters): the name, or a short stable digest of a longer one."""
    return key if len(key) <= 16 else f"{key[:7]}{zlib.crc32(key.encode()):08X}"[:16]


def _meaning(key: str) -> str:
    if key.endswith("_sd"):
        return f"{_meaning(key[:-3])} (SD over folds)"[:64]
    m = re.fullmatch(r"p_recurrence_(\d+(?:\.\d+)?)m", key)
    if m:
        return f"Probability of recurrence within {m.group(1)} months"
    m = re.fullmatch(r"surv_prob_(\d+(?:\.\d+)?)m?", key)
    if m:
        return f"Probability of disease-free survival at {m.group(1)} months"
    if key == "risk_score":
        return "Risk score (log relative hazard)"
    return key.replace("_", " ")


def _checked_values(values: Mapping[str, float]) -> List[Tuple[str, float]]:
    if not values:
        raise DicomExportError("risk report: no values")
    out = []
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_.]{1,64}", str(key)):
            raise DicomExportError(f"risk report: name {key!r} must be 1-64 letters, digits, '_' or '.'")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DicomExportError(f"risk report: {key} = {value!r} is not a number") from None
        if not np.isfinite(number):
            raise DicomExportError(f"risk report: {key} = {value!r} is not finite")
        if (key.startswith("p_") or key.startswith("surv_prob")) and not key.endswith("_sd") \
                and not 0.0 <= number <= 1.0:
            raise DicomExportError(f"risk report: {key} = {number} is a probability outside [0, 1]")
        out.append((str(key), number))
    return out


def write_risk_report(values: Mapping[str, float], t2_dicom_files: Sequence, out_path, *, series_number: int = 902,
                      software_version: str = "1.0", model_description: Optional[str] = None) -> Path:
    """Write the patient's risk values as a Comprehensive SR referencing the T2 series.

    Parameters
    ----------
    values : mapping of str to float
        E.g. ``{"risk_score": 0.42, "p_recurrence_36m": 0.31, "surv_prob_36m": 0.69}`` (a row of the
        predictor's ``predictions.csv``: its numeric columns, ``*_sd`` included); names of 1-64 letters,
        digits, '_' or '.' (the CodeValue is the name, or for a name over 16 characters its first 7
        characters and a CRC-32 digest; the CodeMeaning says what it is), probabilities in [0, 1].
    t2_dicom_files : sequence of path
        The T2 series' files (evidence; patient and study attributes are copied from them).
    out_path : path
        The ``.dcm`` file to write.
    series_number, software_version
        Written into the SR.
    model_description : str, optional
        A further TEXT item (e.g. the trainer, folds and horizon).

    Returns
    -------
    Path
        ``out_path``.
    """
    items = _checked_values(values)
    datasets = read_t2_series(t2_dicom_files)
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    content = [hd.sr.TextContentItem(name=_DISCLAIMER, value=RESEARCH_USE_STATEMENT, relationship_type=contains)]
    if model_description:
        content.append(hd.sr.TextContentItem(
            name=hd.sr.CodedConcept("MODEL", CODING_SCHEME, "Model"), value=str(model_description),
            relationship_type=contains))
    for key, number in items:
        name = hd.sr.CodedConcept(_code_value(key), CODING_SCHEME, _meaning(key))
        content.append(hd.sr.NumContentItem(name=name, value=number, unit=_NO_UNITS, relationship_type=contains))
    root = hd.sr.ContainerContentItem(name=_REPORT_TITLE)
    root.ContentSequence = hd.sr.ContentSequence(content)
    report = hd.sr.ComprehensiveSR(
        evidence=datasets, content=root, series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        is_final=False, is_verified=False)
    report.SeriesDescription = "MultiRecNet risk report (research use only)"
    report.SoftwareVersions = software_version
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report.save_as(out_path)
    return out_path
