"""Import one patient's DICOM folder (T2 + multi-b diffusion) into a cohort folder.

Usage::

    multirec_import_dicom --dicom DIR --out COHORT_DIR [--patient-id ID]
        [--t2-series-description REGEX | --t2-series-uid UID] [--dwi-series-uid UID ...]
        [--adc-b-values B ...] [--max-b 2000] [--no-refine] [--allow-adc-only] [--max-lowest-b 100]
        [--register none|rigid] [--overwrite]

(or ``python -m dataset_conversion.import_dicom``).  One patient per call.

What it does
------------
1. Reads every file under ``DIR`` (recursively) with ``pydicom.dcmread(stop_before_pixels=True)``; files
   that are not DICOM images (a DICOMDIR, a text file, a structured report) are skipped and counted.
   Every image must belong to one patient (one PatientID).
2. Groups the images by SeriesInstanceUID.  **T2**: the series given by ``--t2-series-uid``, else the one
   whose SeriesDescription matches ``--t2-series-description`` (default ``(?i)t2``; exactly one must
   match).  **Diffusion**: the series given by ``--dwi-series-uid`` (repeatable, for b-values split over
   several series), else the one series holding original images with b-values.
3. b-value of an image: the standard tag (0018,9087) first, then Siemens (0019,100C), GE (0043,1039)
   (first value, less the 1e9 offset when present), Philips (2001,1003); tags that disagree are refused.
   Scanner-derived images (ImageType DERIVED, or ADC / FA / EXP / EADC / CALC_BVALUE ...) are left out
   of the fit and reported.  Per b-value: the scanner's trace-weighted images when present, else the
   directional images (one volume per gradient direction) averaged geometrically (their trace), said in
   the record.
4. Checks: the T2 series holds no diffusion images; every b-group on one geometry; slices stacked along
   the normal at a regular spacing (no missing slice); a lowest b-value of at most ``--max-lowest-b``;
   at least 3 distinct b-values up to ``--max-b`` (else, with ``--allow-adc-only``, ADC only); classic
   single-frame MR only (enhanced multi-frame MR is refused, with a hint).
5. Fits ADC, Dapp and Kapp (:func:`dataset_conversion.diffusion_fit.fit_diffusion_images`) on the
   diffusion grid.  ``--register rigid`` registers the lowest-b image to T2
   (:func:`dataset_conversion.registration.register_rigid`) and moves every map's header by that transform
   (no resampling); by default the physical coordinates of the headers are used as they are.

Writes (staged in a hidden folder in ``COHORT_DIR`` and moved into place only when everything passed)::

    COHORT_DIR/images/<patient_id>/T2.nii.gz, ADC.nii.gz, Dapp.nii.gz, Kapp.nii.gz   (maps on the DWI grid)
    COHORT_DIR/diffusion_fit/<patient_id>/ADC_quality.nii.gz, DKI_quality.nii.gz, DKI_clipped.nii.gz,
                                         fit_record.json  (b-values, series used and ignored, fit, registration)
    COHORT_DIR/dicom_mapping.csv   one row per patient: patient_id, dicom_patient_id, study_instance_uid,
                                   t2_series_instance_uid, dwi_series_instance_uids, dicom_dir, imported_on

``dicom_mapping.csv`` is the only file with DICOM identifiers (patient id, UIDs, dates, the DICOM folder);
the images are written from pixel arrays and geometry only, the record names series by description and
number.  ``convert_larc`` reads only ``clinical.csv`` and ``images/``: the mask (``mask.nii.gz``) and the
clinical row are still to be added before converting.

Bad input: ``multirec_import_dicom: error: <series/file>: <problem>`` on stderr, exit status 2, nothing
written: no b=0 / low-b image, fewer than 3 distinct b-values (without ``--allow-adc-only``), b-groups on
different geometries, missing slices, a series that is not what its label says, images of several patients,
no T2 (the series descriptions found are listed), enhanced multi-frame MR, an existing patient (without
``--overwrite``), a T2 series already imported under another id, a ``--patient-id`` equal to the DICOM
PatientID, a failed fit or registration.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from clinical.errors import MultitaskError

__all__ = ["DicomImportError", "EXIT_BAD_INPUT", "MAPPING_FILE", "FIT_FOLDER", "MAPPING_COLUMNS",
           "B_VALUE_SOURCES", "read_b_value", "is_derived", "scan_dicom_folder", "import_patient",
           "t2_files_from_mapping", "build_parser", "main"]

EXIT_BAD_INPUT = 2
PROG = "multirec_import_dicom"
MAPPING_FILE = "dicom_mapping.csv"
FIT_FOLDER = "diffusion_fit"
RECORD_FILE = "fit_record.json"
MAPPING_COLUMNS = ("patient_id", "dicom_patient_id", "study_instance_uid", "t2_series_instance_uid",
                   "dwi_series_instance_uids", "dicom_dir", "imported_on")
DEFAULT_T2_REGEX = r"(?i)t2"
DEFAULT_MAX_LOWEST_B = 200.0   # as diffusion_fit.LOW_B_MAX
B_VALUE_SOURCES = ("standard (0018,9087)", "Siemens (0019,100C)", "GE (0043,1039)", "Philips (2001,1003)")
GE_B_OFFSET = 1_000_000_000
#: ImageType values that mark a scanner-derived diffusion map (not a b-image).
DERIVED_TYPES = frozenset({"DERIVED", "ADC", "EADC", "FA", "EXP", "CALC_BVALUE", "TRACE_ADC", "DWI_ADC",
                           "COLFA", "MD", "TENSOR", "EXP_ADC"})
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
CLASSIC_MR = "1.2.840.10008.5.1.4.1.1.4"
MAPS = ("ADC", "Dapp", "Kapp")
QUALITY_MAPS = ("ADC_quality", "DKI_quality", "DKI_clipped")
ORIENTATION_ATOL = 1e-4
SPACING_RTOL = 1e-3
ORIGIN_TOL_VOXELS = 0.01
#: Slice gaps may differ from the median gap by this fraction before a slice counts as missing.
SLICE_GAP_RTOL = 0.05
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DicomImportError(MultitaskError, ValueError):
    """The DICOM folder cannot be imported; the message names the series or file and the problem."""


# ---------------------------------------------------------------------------- headers
@dataclass
class _Header:
    path: Path
    series_uid: str
    sop_class: str
    image_type: Tuple[str, ...]
    description: str
    series_number: str
    patient_id: Optional[str]
    study_uid: str
    position: Optional[np.ndarray]
    orientation: Optional[np.ndarray]
    b_value: Optional[float]
    b_source: Optional[str]
    gradient: Optional[Tuple[float, ...]]
    directionality: str
    instance_number: int


@dataclass
class _Series:
    uid: str
    headers: List[_Header] = field(default_factory=list)

    @property
    def description(self) -> str:
        return self.headers[0].description

    @property
    def number(self) -> str:
        return self.headers[0].series_number

    @property
    def label(self) -> str:
        """How messages and the record name a series (description and number, no UID)."""
        return f"series {self.number or '?'} '{self.description}'"


def _values(raw) -> List[str]:
    """The values of a (possibly raw, implicit-VR) private element as strings."""
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace").strip("\x00 ").split("\\")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


def _private_value(ds: pydicom.Dataset, group: int, creator: str, offset: int):
    try:
        return ds.private_block(group, creator)[offset]
    except (KeyError, ValueError):
        return None


def _philips_b(raw) -> float:
    value = raw.value
    if isinstance(value, bytes) and len(value) == 4:
        return float(np.frombuffer(value, "<f4")[0])
    return float(_values(raw)[0])


def read_b_value(ds: pydicom.Dataset) -> Tuple[Optional[float], Optional[str]]:
    """The b-value (s/mm^2) of a classic MR image and the tag it came from, or (None, None).

    Looks at the standard tag (0018,9087), then Siemens (0019,100C), GE (0043,1039) (first value; 1e9
    subtracted when the value carries GE's offset) and Philips (2001,1003).  When several are present they
    must agree (within 1 s/mm^2); otherwise :class:`DicomImportError`.
    """
    found: List[Tuple[float, str]] = []
    if "DiffusionBValue" in ds and ds.DiffusionBValue not in (None, ""):
        found.append((float(ds.DiffusionBValue), B_VALUE_SOURCES[0]))
    raw = _private_value(ds, 0x0019, "SIEMENS MR HEADER", 0x0C)
    if raw is not None and raw.value not in (None, b"", ""):
        found.append((float(_values(raw)[0]), B_VALUE_SOURCES[1]))
    raw = _private_value(ds, 0x0043, "GEMS_PARM_01", 0x39)
    if raw is not None and raw.value not in (None, b"", ""):
        first = float(_values(raw)[0])
        found.append((first - GE_B_OFFSET if first >= GE_B_OFFSET else first, B_VALUE_SOURCES[2]))
    raw = _private_value(ds, 0x2001, "Philips Imaging DD 001", 0x03)
    if raw is not None and raw.value not in (None, b"", ""):
        found.append((_philips_b(raw), B_VALUE_SOURCES[3]))
    if not found:
        return None, None
    disagree = [f"{src} = {b:g}" for b, src in found if abs(b - found[0][0]) > 1.0]
    if disagree:
        raise DicomImportError(f"b-value tags disagree: {found[0][1]} = {found[0][0]:g}, {', '.join(disagree)}")
    if not np.isfinite(found[0][0]) or found[0][0] < 0:
        raise DicomImportError(f"b-value {found[0][0]} in {found[0][1]} is not a finite number >= 0")
    return found[0]


def is_derived(image_type: Sequence[str]) -> bool:
    """True for a scanner-derived map (ImageType DERIVED, ADC, FA, EXP, ...), False for an acquired image."""
    return any(str(v).upper() in DERIVED_TYPES for v in image_type)


def _floats(value, n: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.size == n and np.all(np.isfinite(out)) else None


def _header(path: Path, ds: pydicom.Dataset) -> _Header:
    try:
        b, source = read_b_value(ds)
    except DicomImportError as error:
        raise DicomImportError(f"{path}: {error}") from None
    gradient = _floats(ds.get("DiffusionGradientOrientation"), 3)
    try:
        instance = int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        instance = 0
    return _Header(
        path=path, series_uid=str(ds.SeriesInstanceUID), sop_class=str(ds.get("SOPClassUID", "")),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        description=str(ds.get("SeriesDescription", "") or ""), series_number=str(ds.get("SeriesNumber", "") or ""),
        patient_id=None if ds.get("PatientID") is None else str(ds.PatientID),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        position=_floats(ds.get("ImagePositionPatient"), 3), orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        b_value=b, b_source=source, gradient=None if gradient is None else tuple(np.round(gradient, 3)),
        directionality=str(ds.get("DiffusionDirectionality", "") or "").upper(), instance_number=instance)


def scan_dicom_folder(dicom_dir) -> Tuple[Dict[str, _Series], int]:
    """Read the headers of every DICOM image under ``dicom_dir``; series by SeriesInstanceUID and the
    number of files skipped (not DICOM, or not an image)."""
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise DicomImportError(f"{dicom_dir}: not a folder")
    series: Dict[str, _Series] = {}
    skipped = 0
    for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
            skipped += 1
            continue
        if "SeriesInstanceUID" not in ds or "Rows" not in ds:
            skipped += 1          # DICOMDIR, SR, presentation state ...: not an image
            continue
        header = _header(path, ds)
        series.setdefault(header.series_uid, _Series(header.series_uid)).headers.append(header)
    if not series:
        raise DicomImportError(f"{dicom_dir}: no DICOM images found ({skipped} other files)")
    return series, skipped


# ---------------------------------------------------------------------------- choosing series
def _check_one_patient(series: Dict[str, _Series], dicom_dir: Path) -> str:
    ids = defaultdict(list)
    for s in series.values():
        for h in s.headers:
            ids[h.patient_id].append(h.path)
    if len(ids) != 1:
        examples = "; ".join(f"{paths[0]} ({len(paths)} files)" for paths in ids.values())
        raise DicomImportError(f"{dicom_dir}: images of {len(ids)} patients (PatientID differs), one patient per "
                               f"call: {examples}")
    (patient,) = ids
    if not patient:
        raise DicomImportError(f"{dicom_dir}: the images have no PatientID")
    return patient


def _descriptions(series: Dict[str, _Series]) -> str:
    return "; ".join(f"{s.label} ({len(s.headers)} images)" for s in
                     sorted(series.values(), key=lambda s: (s.number.zfill(6), s.description)))


def _check_classic(s: _Series, role: str) -> None:
    sop = {h.sop_class for h in s.headers}
    if ENHANCED_MR in sop:
        raise DicomImportError(
            f"{s.label} ({s.uid}): enhanced multi-frame MR (SOP class {ENHANCED_MR}) is not supported for {role}; "
            "export the series as classic single-frame MR Image Storage (most scanners and PACS offer it, e.g. "
            "'classic DICOM' / 'single-frame' export), or convert it with a tool such as dcm2niix and build the "
            "cohort folder directly")
    other = sorted(sop - {CLASSIC_MR})
    if other:
        raise DicomImportError(f"{s.label} ({s.uid}): SOP class {other} is not MR Image Storage ({CLASSIC_MR}); "
                               f"cannot use it as {role}")


def _select_t2(series: Dict[str, _Series], regex: str, uid: Optional[str]) -> _Series:
    if uid is not None:
        if uid not in series:
            raise DicomImportError(f"--t2-series-uid {uid}: no such series; found: {_descriptions(series)}")
        chosen = series[uid]
    else:
        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise DicomImportError(f"--t2-series-description {regex!r}: not a regular expression ({error})") from None
        matches = [s for s in series.values() if pattern.search(s.description)]
        if not matches:
            raise DicomImportError(f"no T2 series found: no SeriesDescription matches {regex!r}; series found: "
                                   f"{_descriptions(series)} (pass --t2-series-description REGEX or --t2-series-uid)")
        if len(matches) > 1:
            listed = "; ".join(f"{s.label}: {s.uid}" for s in matches)
            raise DicomImportError(f"several series match the T2 rule {regex!r}: {listed} (pass a narrower "
                                   "--t2-series-description or --t2-series-uid)")
        chosen = matches[0]
    _check_classic(chosen, "T2")
    diffusion = [h for h in chosen.headers if (h.b_value is not None and h.b_value > 0) or "DIFFUSION" in h.image_type
                 or is_derived(h.image_type) and "ADC" in h.image_type]
    if diffusion:
        b = sorted({h.b_value for h in diffusion if h.b_value is not None})
        raise DicomImportError(f"{chosen.label} ({diffusion[0].path}): chosen as T2 but holds diffusion images "
                               f"({len(diffusion)} of {len(chosen.headers)}; b-values {b}, ImageType "
                               f"{'/'.join(diffusion[0].image_type)}): the series is not what its label says")
    return chosen


def _select_dwi(series: Dict[str, _Series], t2: _Series, uids: Sequence[str]) -> List[_Series]:
    if uids:
        missing = [u for u in uids if u not in series]
        if missing:
            raise DicomImportError(f"--dwi-series-uid {missing[0]}: no such series; found: {_descriptions(series)}")
        chosen = [series[u] for u in dict.fromkeys(uids)]
        for s in chosen:
            if s.uid == t2.uid:
                raise DicomImportError(f"{s.label}: chosen as both T2 and diffusion series")
            if not any(h.b_value is not None and not is_derived(h.image_type) for h in s.headers):
                raise DicomImportError(f"{s.label} ({s.headers[0].path}): chosen as diffusion series but none of its "
                                       "original images carries a b-value (0018,9087 / Siemens / GE / Philips): the "
                                       "series is not what its label says")
    else:
        chosen = [s for s in series.values() if s.uid != t2.uid
                  and any(h.b_value is not None and not is_derived(h.image_type) for h in s.headers)]
        if not chosen:
            enhanced = [s.label for s in series.values() if any(h.sop_class == ENHANCED_MR for h in s.headers)]
            hint = (f"; the enhanced multi-frame series {enhanced} may hold them, which is not supported (export "
                    "classic single-frame MR)" if enhanced else "")
            raise DicomImportError(f"no diffusion series found: no original image carries a b-value; series found: "
                                   f"{_descriptions(series)}{hint}")
        if len(chosen) > 1:
            listed = "; ".join(f"{s.label}: {s.uid}" for s in chosen)
            raise DicomImportError(f"several series hold diffusion b-images: {listed} (pass --dwi-series-uid, "
                                   "repeated to combine series split by b-value)")
    for s in chosen:
        _check_classic(s, "diffusion")
    return chosen


# ---------------------------------------------------------------------------- volumes
def _normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


def _sorted_stack(headers: List[_Header], what: str) -> Tuple[List[Path], float]:
    """The files of one volume sorted along the slice normal; checks one orientation, slices stacked along
    the normal and a regular spacing (no missing slice).  Returns the paths and the slice spacing."""
    first = headers[0]
    if any(h.position is None or h.orientation is None for h in headers):
        bad = next(h for h in headers if h.position is None or h.orientation is None)
        raise DicomImportError(f"{what} ({bad.path}): no ImagePositionPatient / ImageOrientationPatient")
    for h in headers:
        if not np.allclose(h.orientation, first.orientation, atol=ORIENTATION_ATOL):
            raise DicomImportError(f"{what} ({h.path}): ImageOrientationPatient differs from {first.path}")
    normal = _normal(first.orientation)
    along = np.array([float(np.dot(h.position, normal)) for h in headers])
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    along = along[order]
    if len(headers) < 2:
        raise DicomImportError(f"{what} ({first.path}): a single slice, not a volume")
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        i = int(np.argmax(gaps < 1e-3))
        raise DicomImportError(f"{what}: {headers[i].path} and {headers[i + 1].path} lie at the same slice position "
                               f"({along[i]:.2f} mm): duplicate or mixed images")
    for h, a in zip(headers, along):
        offset = h.position - headers[0].position - (a - along[0]) * normal
        if np.linalg.norm(offset) > 0.01:
            raise DicomImportError(f"{what} ({h.path}): slice not stacked along the normal of the first "
                                   f"(in-plane offset {np.linalg.norm(offset):.2f} mm)")
    spacing = float(np.median(gaps))
    irregular = np.abs(gaps - spacing) > SLICE_GAP_RTOL * spacing
    if np.any(irregular):
        i = int(np.argmax(irregular))
        raise DicomImportError(f"{what}: missing slices or irregular slice spacing: gap of {gaps[i]:.2f} mm between "
                               f"{headers[i].path.name} and {headers[i + 1].path.name} where the spacing is "
                               f"{spacing:.2f} mm ({len(headers)} slices)")
    return [h.path for h in headers], spacing


def _read_volume(paths: List[Path], what: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    reader.SetOutputPixelType(sitk.sitkFloat64)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown"
        raise DicomImportError(f"{what} ({paths[0]}): SimpleITK cannot read the images: {reason}") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise DicomImportError(f"{what} ({paths[0]}): not a scalar 3-D volume")
    clean = sitk.GetImageFromArray(sitk.GetArrayFromImage(image))   # pixels and geometry only, no metadata
    clean.CopyInformation(image)
    return clean


def _geometry_difference(image: sitk.Image, reference: sitk.Image) -> Optional[str]:
    if image.GetSize() != reference.GetSize():
        return f"size {image.GetSize()} vs {reference.GetSize()}"
    if not np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=SPACING_RTOL):
        return f"spacing {np.round(image.GetSpacing(), 3).tolist()} vs {np.round(reference.GetSpacing(), 3).tolist()}"
    if not np.allclose(image.GetDirection(), reference.GetDirection(), atol=ORIENTATION_ATOL):
        return "orientation differs"
    shift = np.abs(np.asarray(image.GetOrigin()) - np.asarray(reference.GetOrigin()))
    if np.any(shift > ORIGIN_TOL_VOXELS * np.asarray(reference.GetSpacing())):
        return f"origin differs by {np.round(shift, 3).tolist()} mm"
    return None


def _is_trace(h: _Header) -> bool:
    return "TRACEW" in h.image_type or "TRACE" in h.image_type or h.directionality == "ISOTROPIC"


def _b_group_volume(b: float, headers: List[_Header], label: str, notes: List[str]) -> sitk.Image:
    """One volume for the b-value ``b``: the trace-weighted images, or the geometric mean of the
    directional volumes (one per gradient direction, or per repetition at each slice position)."""
    what = f"{label}, b={b:g}"
    trace = [h for h in headers if _is_trace(h)]
    if trace and len(trace) < len(headers):
        notes.append(f"b={b:g}: used the scanner's {len(trace)} trace-weighted images, left out "
                     f"{len(headers) - len(trace)} directional images")
        headers = trace
    normal = _normal(headers[0].orientation) if headers[0].orientation is not None else np.array([0.0, 0.0, 1.0])
    by_position: Dict[float, List[_Header]] = defaultdict(list)
    for h in headers:
        key = round(float(np.dot(h.position, normal)), 2) if h.position is not None else 0.0
        by_position[key].append(h)
    per_position = {len(v) for v in by_position.values()}
    if len(per_position) != 1:
        counts = sorted(per_position)
        raise DicomImportError(f"{what}: {counts[0]} to {counts[-1]} images per slice position: missing or extra "
                               f"images (e.g. {headers[0].path})")
    n_volumes = per_position.pop()
    if n_volumes == 1:
        paths, _ = _sorted_stack(headers, what)
        return _read_volume(paths, what)
    subgroups: Dict[object, List[_Header]] = defaultdict(list)
    if all(h.gradient is not None for h in headers) and len({h.gradient for h in headers}) == n_volumes:
        for h in headers:
            subgroups[h.gradient].append(h)
        how = "gradient directions"
    else:
        for group in by_position.values():
            for rank, h in enumerate(sorted(group, key=lambda h: (h.instance_number, str(h.path)))):
                subgroups[rank].append(h)
        how = "images per slice position (by InstanceNumber)"
    volumes = []
    for key, group in subgroups.items():
        paths, _ = _sorted_stack(group, f"{what} ({key})")
        volumes.append(_read_volume(paths, what))
    for v in volumes[1:]:
        problem = _geometry_difference(v, volumes[0])
        if problem:
            raise DicomImportError(f"{what}: the directional volumes are on different geometries ({problem})")
    logs = [np.log(np.maximum(sitk.GetArrayFromImage(v), 1e-6)) for v in volumes]
    mean = sitk.GetImageFromArray(np.exp(np.mean(logs, axis=0)))
    mean.CopyInformation(volumes[0])
    notes.append(f"b={b:g}: geometric mean (trace) of {n_volumes} {how}")
    return mean


def _ignored_reason(s: _Series) -> str:
    derived = sorted({"/".join(h.image_type) for h in s.headers if is_derived(h.image_type)})
    if derived and all(is_derived(h.image_type) for h in s.headers):
        return f"scanner-derived map ({', '.join(derived)}), not a b-image: left out of the fit"
    return "neither the T2 nor the diffusion series"


def _dwi_groups(dwi: List[_Series], notes: List[str], ignored: List[dict]) -> Dict[float, List[_Header]]:
    groups: Dict[float, List[_Header]] = defaultdict(list)
    for s in dwi:
        derived = [h for h in s.headers if is_derived(h.image_type)]
        if derived:
            types = sorted({"/".join(h.image_type) for h in derived})
            ignored.append({"series": s.label, "images": len(derived),
                            "reason": f"scanner-derived ({', '.join(types)}) images in the diffusion series: "
                                      "left out of the fit"})
        no_b = [h for h in s.headers if not is_derived(h.image_type) and h.b_value is None]
        if no_b:
            raise DicomImportError(f"{s.label} ({no_b[0].path}): {len(no_b)} original images without a b-value in a "
                                   "diffusion series: the series is not what its label says")
        for h in s.headers:
            if not is_derived(h.image_type):
                groups[round(float(h.b_value), 1)].append(h)
    sources = sorted({h.b_source for g in groups.values() for h in g})
    notes.append(f"b-values read from {', '.join(sources)}")
    return dict(sorted(groups.items()))


# ---------------------------------------------------------------------------- the import
def _fit(images: List[sitk.Image], b_values: List[float], adc_b_values, max_b: float, refine: bool, label: str):
    from dataset_conversion.diffusion_fit import DiffusionFitError, fit_diffusion_images
    try:
        return fit_diffusion_images(images, b_values, adc_b_values=adc_b_values, max_b=max_b, refine=refine)
    except DiffusionFitError as error:
        raise DicomImportError(f"{label}: diffusion fit: {error}") from None


def _register(t2: sitk.Image, low_b: sitk.Image, maps: Dict[str, sitk.Image]) -> Tuple[Dict[str, sitk.Image], dict]:
    from dataset_conversion.registration import RegistrationError, apply_rigid_to_geometry, register_rigid
    try:
        registration = register_rigid(t2, low_b)
        moved = {name: apply_rigid_to_geometry(image, registration.transform) for name, image in maps.items()}
    except RegistrationError as error:
        raise DicomImportError(f"--register rigid: {error}") from None
    record = registration.record()
    record.setdefault("metric_before", registration.metric_before)
    record.setdefault("metric_after", registration.metric_after)
    return moved, record


def _next_patient_id(out_dir: Path, avoid: Sequence[str]) -> str:
    taken = set(avoid)
    for folder in (out_dir / "images", out_dir / FIT_FOLDER):
        if folder.is_dir():
            taken.update(p.name for p in folder.iterdir())
    taken.update(row["patient_id"] for row in _read_mapping(out_dir / MAPPING_FILE))
    numbers = [int(m.group(1)) for t in taken if (m := re.fullmatch(r"P(\d{4,})", t))]
    n = max(numbers, default=0) + 1
    while f"P{n:04d}" in taken:
        n += 1
    return f"P{n:04d}"


def _read_mapping(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "patient_id" not in reader.fieldnames:
            raise DicomImportError(f"{path}: not a dicom mapping file (no patient_id column)")
        return list(reader)


def _check_patient_id(patient_id: str, dicom_patient_id: str) -> None:
    if not _ID_PATTERN.match(patient_id):
        raise DicomImportError(f"--patient-id {patient_id!r}: use letters, digits, '_', '-', '.' only")
    if patient_id == dicom_patient_id:
        raise DicomImportError("--patient-id: equals the DICOM PatientID; the cohort id must not be the hospital "
                               "identifier (dicom_mapping.csv links the two)")


@dataclass
class ImportOptions:
    """Options of :func:`import_patient` (the command line's flags)."""

    patient_id: Optional[str] = None
    t2_series_description: str = DEFAULT_T2_REGEX
    t2_series_uid: Optional[str] = None
    dwi_series_uids: Sequence[str] = ()
    adc_b_values: Optional[Sequence[float]] = None
    max_b: float = 2000.0
    refine: bool = True
    allow_adc_only: bool = False
    max_lowest_b: float = DEFAULT_MAX_LOWEST_B
    register: str = "none"
    overwrite: bool = False


def import_patient(dicom_dir, out_dir, options: Optional[ImportOptions] = None, log=print) -> dict:
    """Import one patient's DICOM folder into the cohort folder ``out_dir`` (see the module docstring).

    Returns a summary: ``patient_id``, the written paths, ``b_values``, ``adc_only``, ``notes``,
    ``ignored``.  Raises :class:`DicomImportError` on bad input, with nothing written.
    """
    options = options or ImportOptions()
    dicom_dir, out_dir = Path(dicom_dir).resolve(), Path(out_dir).resolve()
    if options.register not in ("none", "rigid"):
        raise DicomImportError(f"--register {options.register!r}: choose none or rigid")
    series, skipped = scan_dicom_folder(dicom_dir)
    dicom_patient = _check_one_patient(series, dicom_dir)
    patient_id = options.patient_id or _next_patient_id(out_dir, [dicom_patient])
    _check_patient_id(patient_id, dicom_patient)
    image_target, fit_target = out_dir / "images" / patient_id, out_dir / FIT_FOLDER / patient_id
    existing = [p for p in (image_target, fit_target) if p.exists()]
    if existing and not options.overwrite:
        raise DicomImportError(f"{existing[0]}: patient {patient_id} exists in the cohort; pass --overwrite to "
                               "replace it")

    t2_series = _select_t2(series, options.t2_series_description, options.t2_series_uid)
    dwi_series = _select_dwi(series, t2_series, options.dwi_series_uids)
    earlier = [r["patient_id"] for r in _read_mapping(out_dir / MAPPING_FILE)
               if r.get("t2_series_instance_uid") == t2_series.uid and r["patient_id"] != patient_id]
    if earlier:
        raise DicomImportError(f"{t2_series.label}: already imported as patient {earlier[0]} "
                               f"({out_dir / MAPPING_FILE}); to redo it pass --patient-id {earlier[0]} --overwrite")
    notes: List[str] = []
    ignored = [{"series": s.label, "images": len(s.headers), "reason": _ignored_reason(s)}
               for s in series.values() if s.uid != t2_series.uid and s not in dwi_series]
    t2_paths, _ = _sorted_stack(t2_series.headers, f"{t2_series.label} (T2)")
    t2 = sitk.Cast(_read_volume(t2_paths, f"{t2_series.label} (T2)"), sitk.sitkFloat32)

    dwi_label = " + ".join(s.label for s in dwi_series)
    groups = _dwi_groups(dwi_series, notes, ignored)
    b_values = list(groups)
    if b_values[0] > options.max_lowest_b:
        raise DicomImportError(f"{dwi_label}: no b=0 (or low-b <= {options.max_lowest_b:g} s/mm^2) images: lowest "
                               f"b-value {b_values[0]:g} (b-values {b_values})")
    volumes = [_b_group_volume(b, groups[b], dwi_label, notes) for b in b_values]
    for b, v in zip(b_values[1:], volumes[1:]):
        problem = _geometry_difference(v, volumes[0])
        if problem:
            raise DicomImportError(f"{dwi_label}: b={b:g} is on another geometry than b={b_values[0]:g} "
                                   f"({problem}): the b-groups must share one grid")
    fitted_b = [b for b in b_values if b <= options.max_b]
    adc_only = len(fitted_b) < 3
    if adc_only and not options.allow_adc_only:
        raise DicomImportError(f"{dwi_label}: {len(fitted_b)} distinct b-values <= {options.max_b:g} ({fitted_b}); "
                               "Dapp and Kapp need 3; pass --allow-adc-only to import ADC only")
    maps, fit_record = _fit(volumes, b_values, options.adc_b_values, options.max_b, options.refine, dwi_label)
    if adc_only:
        log(f"{PROG}: WARNING: ADC ONLY for patient {patient_id}: {len(fitted_b)} distinct b-values ({fitted_b}); "
            "no Dapp or Kapp written (convert with --allow-missing-series)", file=sys.stderr)
        notes.append("ADC only: fewer than 3 distinct b-values")
    registration = None
    if options.register == "rigid":
        maps, registration = _register(t2, volumes[0], maps)
        notes.append(f"rigid registration of b={b_values[0]:g} to T2 applied to every map's header")

    written_maps = [m for m in MAPS if m in maps]
    quality = [m for m in QUALITY_MAPS if m in maps]
    record = {
        "patient_id": patient_id,
        "software": "dataset_conversion.import_dicom (nnunet-multitask)",
        "t2_series": {"series": t2_series.label, "images": len(t2_paths), "size": list(t2.GetSize()),
                      "spacing_mm": list(t2.GetSpacing())},
        "dwi_series": [s.label for s in dwi_series],
        "b_values": b_values, "images_per_b": {f"{b:g}": len(groups[b]) for b in b_values},
        "dwi_grid": {"size": list(volumes[0].GetSize()), "spacing_mm": list(volumes[0].GetSpacing())},
        "adc_only": adc_only, "maps": written_maps, "quality_maps": quality,
        "ignored": ignored, "notes": notes, "skipped_files": skipped,
        "options": {"adc_b_values": options.adc_b_values, "max_b": options.max_b, "refine": options.refine,
                    "max_lowest_b": options.max_lowest_b, "register": options.register},
        "fit": fit_record, "registration": registration,
    }
    mapping_row = {
        "patient_id": patient_id, "dicom_patient_id": dicom_patient,
        "study_instance_uid": ";".join(dict.fromkeys([t2_series.headers[0].study_uid]
                                                     + [s.headers[0].study_uid for s in dwi_series])),
        "t2_series_instance_uid": t2_series.uid,
        "dwi_series_instance_uids": ";".join(s.uid for s in dwi_series),
        "dicom_dir": str(dicom_dir), "imported_on": datetime.date.today().isoformat(),
    }
    images = {"T2": t2, **{m: maps[m] for m in written_maps}}
    _write(out_dir, patient_id, images, {m: maps[m] for m in quality}, record, mapping_row, options.overwrite)
    for line in notes:
        log(f"{PROG}: {line}")
    for item in ignored:
        log(f"{PROG}: ignored {item['series']} ({item['images']} images): {item['reason']}")
    return {"patient_id": patient_id, "images": out_dir / "images" / patient_id,
            "fit": out_dir / FIT_FOLDER / patient_id, "mapping": out_dir / MAPPING_FILE, "b_values": b_values,
            "adc_only": adc_only, "notes": notes,
            "ignored": ignored, "record": record}


def _float32(image: sitk.Image) -> sitk.Image:
    """A copy with pixels and geometry only (no metadata); floating point as float32, integers kept."""
    array = sitk.GetArrayFromImage(image)
    clean = sitk.GetImageFromArray(array.astype(np.float32) if array.dtype.kind == "f" else array)
    clean.CopyInformation(image)
    return clean


def _write(out_dir: Path, patient_id: str, images: Dict[str, sitk.Image], quality: Dict[str, sitk.Image],
           record: dict, mapping_row: dict, overwrite: bool) -> None:
    """Write everything into a hidden staging folder in ``out_dir``, then move it into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".import_dicom-{patient_id}-", dir=out_dir))
    moved: List[Tuple[Path, Path]] = []     # (target, retired old folder or None-path)
    try:
        image_dir, fit_dir = staging / "images" / patient_id, staging / FIT_FOLDER / patient_id
        image_dir.mkdir(parents=True)
        fit_dir.mkdir(parents=True)
        for name, image in images.items():
            sitk.WriteImage(_float32(image), str(image_dir / f"{name}.nii.gz"), True)
        for name, image in quality.items():
            sitk.WriteImage(_float32(image), str(fit_dir / f"{name}.nii.gz"), True)
        (fit_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        rows = [r for r in _read_mapping(out_dir / MAPPING_FILE) if r.get("patient_id") != patient_id]
        rows.append(mapping_row)
        mapping_tmp = staging / MAPPING_FILE
        with open(mapping_tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(MAPPING_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        for source, target in ((image_dir, out_dir / "images" / patient_id),
                               (fit_dir, out_dir / FIT_FOLDER / patient_id)):
            target.parent.mkdir(parents=True, exist_ok=True)
            retired = None
            if target.exists():
                if not overwrite:
                    raise DicomImportError(f"{target}: exists; pass --overwrite to replace it")
                retired = staging / f"old-{uuid.uuid4().hex[:8]}"
                os.rename(target, retired)
            os.rename(source, target)
            moved.append((target, retired))
        os.replace(mapping_tmp, out_dir / MAPPING_FILE)
    except BaseException:
        for target, retired in reversed(moved):
            shutil.rmtree(target, ignore_errors=True)
            if retired is not None:
                os.rename(retired, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.name
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def t2_files_from_mapping(cohort_dir, patient_id: str, dicom_dir=None) -> List[Path]:
    """The T2 DICOM files of a cohort patient, found through ``dicom_mapping.csv``.

    Reads the patient's row (``t2_series_instance_uid``, ``dicom_dir``) and returns the files under
    ``dicom_dir`` (the row's, unless given: the folder may have moved) whose SeriesInstanceUID is the
    T2 series', sorted by path.  For :func:`dataset_conversion.dicom_export.write_dicom_seg` and
    :func:`~dataset_conversion.dicom_export.write_risk_report`.
    """
    mapping = Path(cohort_dir) / MAPPING_FILE
    rows = [r for r in _read_mapping(mapping) if r.get("patient_id") == patient_id]
    if not rows:
        raise DicomImportError(f"{mapping}: no row for patient {patient_id}")
    row = rows[-1]
    folder = Path(dicom_dir or row["dicom_dir"])
    uid = row["t2_series_instance_uid"]
    series, _ = scan_dicom_folder(folder)
    if uid not in series:
        raise DicomImportError(f"{folder}: T2 series of patient {patient_id} ({uid}) not found")
    return sorted(h.path for h in series[uid].headers)


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The command line (``multirec_import_dicom`` or ``python -m dataset_conversion.import_dicom``)."""
    parser = argparse.ArgumentParser(
        prog=PROG if Path(sys.argv[0]).name == PROG else "python -m dataset_conversion.import_dicom",
        description="Import one patient's DICOM folder (T2 + multi-b diffusion) into a cohort folder: T2, and "
                    "ADC / Dapp / Kapp fitted on the diffusion grid; dicom_mapping.csv links the cohort id to the "
                    f"DICOM identifiers. Exit status {EXIT_BAD_INPUT} on bad input, nothing written.")
    parser.add_argument("--dicom", required=True, help="folder with the patient's DICOM files (searched recursively)")
    parser.add_argument("--out", required=True, help="cohort folder (created if missing)")
    parser.add_argument("--patient-id", default=None,
                        help="cohort patient id (default: the next free P#### in the cohort; never the DICOM "
                             "PatientID)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--t2-series-description", default=DEFAULT_T2_REGEX, metavar="REGEX",
                       help="T2 series: the one whose SeriesDescription matches (default %(default)s)")
    group.add_argument("--t2-series-uid", default=None, metavar="UID", help="T2 series by SeriesInstanceUID")
    parser.add_argument("--dwi-series-uid", action="append", default=[], metavar="UID",
                        help="diffusion series by SeriesInstanceUID (repeatable; default: the one series with "
                             "b-values)")
    parser.add_argument("--adc-b-values", type=float, nargs="+", default=None, metavar="B",
                        help="b-values of the ADC fit (default: the fitter's choice)")
    parser.add_argument("--max-b", type=float, default=2000.0,
                        help="highest b-value used by the fit (default %(default)s)")
    parser.add_argument("--no-refine", action="store_true", help="no non-linear refinement of the kurtosis fit")
    parser.add_argument("--allow-adc-only", action="store_true",
                        help="with fewer than 3 distinct b-values import ADC only (Dapp and Kapp not written)")
    parser.add_argument("--max-lowest-b", type=float, default=DEFAULT_MAX_LOWEST_B,
                        help="the lowest b-value must be at most this (s/mm^2, default %(default)s)")
    parser.add_argument("--register", choices=("none", "rigid"), default="none",
                        help="rigid: register the lowest-b image to T2 and move every map's header by the "
                             "transform (default none: physical coordinates as they are)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing patient of the cohort")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Import as the command line says; 0 on success, :data:`EXIT_BAD_INPUT` on bad input."""
    args = build_parser().parse_args(argv)
    options = ImportOptions(patient_id=args.patient_id, t2_series_description=args.t2_series_description,
                            t2_series_uid=args.t2_series_uid, dwi_series_uids=args.dwi_series_uid,
                            adc_b_values=args.adc_b_values, max_b=args.max_b, refine=not args.no_refine,
                            allow_adc_only=args.allow_adc_only, max_lowest_b=args.max_lowest_b,
                            register=args.register, overwrite=args.overwrite)
    try:
        summary = import_patient(args.dicom, args.out, options)
    except MultitaskError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{PROG}: imported patient {summary['patient_id']} into {Path(args.out).resolve()} "
          f"(b-values {summary['b_values']}; maps: {', '.join(summary['record']['maps'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
