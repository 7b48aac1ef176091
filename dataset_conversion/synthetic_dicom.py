"""Write a synthetic cohort as DICOM: a T2 series and one multi-b diffusion series per patient.

Input: a cohort folder written by ``python -m dataset_conversion.synthetic_larc`` (README, "Your
cohort"): ``COHORT/images/<patient_id>/{T2,ADC,Dapp,Kapp}.nii.gz``.  Output::

    OUT/<patient_id>/T2/IM_0001.dcm ...      T2, MR Image Storage, one file per slice
    OUT/<patient_id>/DWI/IM_0001.dcm ...     every b-value (and direction) of ONE diffusion series
    OUT/<patient_id>/ADC/IM_0001.dcm ...     a scanner-derived ADC series (``scanner_adc="series"``)

The folder names are for the reader's convenience; an importer must go by the headers.

Signal model (diffusion kurtosis, per voxel of the generator's diffusion grid)::

    S(b) = S0 * exp(-b * D + b^2 * D^2 * K / 6),   D = Dapp * 1e-6 mm^2/s,  K = Kapp

with ``S0 = 400 + 0.8 * Dapp`` (arbitrary units; a tissue model in which the fat-suppressed, slowly
diffusing tissue is dark at b = 0 and free water bright: fat about 1000, tumour about 1500, muscle
about 1800, lumen about 2600).  Rician noise: every b-image is ``|S + n1 + i n2|`` with ``n1, n2``
normal of SD ``sigma = median(S0) / snr`` (``snr`` is the SNR of the b = 0 image at the median S0).
Pixel values are stored as unsigned 16-bit integers (rounded, no rescale), as scanners store DWI.

The generator's ADC map is NOT an input of the signal: with the model above the ADC a scanner fits
(log-linear over its b-values) follows from Dapp, Kapp and the b-values.  The ADC map is only written,
as it is, into the optional scanner-derived ADC series (``ImageType DERIVED\\PRIMARY\\DIFFUSION\\ADC``)
that an importer must leave out of its fit.

T2 is stored as signed 16-bit integers with RescaleSlope chosen so the largest value uses most of the
range (``RescaleIntercept`` 0).  Geometry: ITK's physical space is DICOM's patient space (LPS), so
``ImagePositionPatient`` of slice ``k`` is the physical point of voxel (0, 0, k),
``ImageOrientationPatient`` the first two columns of the direction matrix, ``PixelSpacing`` (row
spacing, column spacing) = (spacing y, spacing x); ``SliceThickness`` and ``SpacingBetweenSlices`` the
z spacing.

b-values are written in the tags named by ``b_value_tags`` (any of :data:`B_VALUE_TAGS`):

``standard``  (0018,9087) Diffusion b-value, FD
``siemens``   (0019,100C) in the private block "SIEMENS MR HEADER", IS
``ge``        (0043,1039) in the private block "GEMS_PARM_01", IS x 4, first value b + 1e9 (``ge_offset``)
``philips``   (2001,1003) in the private block "Philips Imaging DD 001", FL

Identifiers (patient name and id, birth date, study date, accession number, every UID) are synthetic and
reproducible from ``seed`` and the patient id.

Command line::

    python -m dataset_conversion.synthetic_dicom --cohort COHORT --out DICOM_DIR [--patients P0001 ...]
        [--snr 40] [--seed 0] [--b-values 0 50 800 1500 2000] [--b-value-tags standard siemens]
        [--directions 0|3] [--scanner-adc series|within|none] [--overwrite]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from nnunet_multitask.publish import publish_folder

__all__ = ["DEFAULT_B_VALUES", "DEFAULT_SNR", "B_VALUE_TAGS", "GE_B_OFFSET", "signal_model", "s0_model",
           "write_patient_dicom", "write_cohort_dicom", "build_parser", "main"]

DEFAULT_B_VALUES: Tuple[float, ...] = (0.0, 50.0, 800.0, 1500.0, 2000.0)
DEFAULT_SNR = 40.0
B_VALUE_TAGS = ("standard", "siemens", "ge", "philips")
DEFAULT_B_VALUE_TAGS = ("standard", "siemens")
#: GE stores the b-value as the first value of (0043,1039) plus 1e9 on many software versions.
GE_B_OFFSET = 1_000_000_000
SCANNER_ADC_CHOICES = ("series", "within", "none")
SIEMENS_CREATOR = "SIEMENS MR HEADER"
GE_CREATOR = "GEMS_PARM_01"
PHILIPS_CREATOR = "Philips Imaging DD 001"
T2_DESCRIPTION = "t2_tse_tra"
DWI_DESCRIPTION = "ep2d_diff_b0_50_800_1500_2000_tra"
ADC_DESCRIPTION = "ep2d_diff_tra_ADC"
EXIT_BAD_INPUT = 2
_DIRECTIONS_3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def s0_model(dapp: np.ndarray) -> np.ndarray:
    """Signal at b = 0 (arbitrary units) of the tissue model: ``400 + 0.8 * Dapp`` (Dapp in 1e-6 mm^2/s)."""
    return 400.0 + 0.8 * np.maximum(np.asarray(dapp, dtype=np.float64), 0.0)


def signal_model(s0: np.ndarray, dapp: np.ndarray, kapp: np.ndarray, b: float) -> np.ndarray:
    """Noise-free kurtosis signal ``S0 exp(-b D + b^2 D^2 K / 6)``, D = Dapp * 1e-6 mm^2/s, b in s/mm^2."""
    d = np.maximum(np.asarray(dapp, dtype=np.float64), 0.0) * 1e-6
    return np.asarray(s0, dtype=np.float64) * np.exp(-b * d + (b * d) ** 2 * np.asarray(kapp, np.float64) / 6.0)


# ---------------------------------------------------------------------------- identifiers
def _stable_int(*parts) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _uid(seed: int, *parts) -> str:
    return generate_uid(entropy_srcs=["multirec-synthetic-dicom", str(seed), *map(str, parts)])


def _identifiers(patient_id: str, seed: int) -> Dict[str, str]:
    """Synthetic, reproducible patient and study identifiers (none of them is the cohort's patient id)."""
    rng = np.random.default_rng([seed, _stable_int(patient_id)])
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    surname = "".join(rng.choice(list(letters), size=7))
    given = "".join(rng.choice(list(letters), size=5))
    study_day = np.datetime64("2015-01-01") + int(rng.integers(0, 8 * 365))
    birth_day = study_day - int(rng.integers(40 * 365, 85 * 365))
    return {
        "PatientName": f"SYN{surname}^{given}",
        "PatientID": f"SYN{int(rng.integers(10**7, 10**8))}",
        "PatientBirthDate": str(birth_day).replace("-", ""),
        "PatientSex": str(rng.choice(["F", "M"])),
        "StudyDate": str(study_day).replace("-", ""),
        "StudyTime": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        "AccessionNumber": f"ACC{int(rng.integers(10**6, 10**7))}",
        "StudyID": str(int(rng.integers(1, 9999))),
        "StudyInstanceUID": _uid(seed, patient_id, "study"),
        "FrameOfReferenceUID": _uid(seed, patient_id, "frame-of-reference"),
    }


def _ds(value: float) -> str:
    """A DS string of at most 16 characters keeping as many decimals as fit."""
    for decimals in range(8, -1, -1):
        text = f"{float(value):.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if len(text) <= 16:
            return "0" if text in ("-0", "") else text
    raise ValueError(f"{value} does not fit a DS value")


# ---------------------------------------------------------------------------- datasets
def _base_dataset(ids: Dict[str, str], series: Dict[str, object], sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.Manufacturer = "MultiRec synthetic"
    ds.ManufacturerModelName = "synthetic_dicom"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.BodyPartExamined = "RECTUM"
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "AccessionNumber", "StudyID", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, key, ids[key])
    ds.SeriesDate, ds.SeriesTime = ids["StudyDate"], ids["StudyTime"]
    ds.ContentDate, ds.ContentTime = ids["StudyDate"], ids["StudyTime"]
    ds.PositionReferenceIndicator = ""
    ds.SeriesInstanceUID = series["uid"]
    ds.SeriesNumber = series["number"]
    ds.SeriesDescription = series["description"]
    ds.ProtocolName = series["description"]
    ds.MagneticFieldStrength = "3"
    ds.MRAcquisitionType = "2D"
    ds.PatientPosition = "FFS"
    return ds


def _set_geometry(ds: Dataset, image: sitk.Image, k: int) -> None:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    position = image.TransformIndexToPhysicalPoint((0, 0, int(k)))
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    ds.SliceThickness = _ds(spacing[2])
    ds.SpacingBetweenSlices = _ds(spacing[2])
    normal = direction[:, 2]
    ds.SliceLocation = _ds(float(np.dot(normal, position)))
    ds.Rows, ds.Columns = image.GetSize()[1], image.GetSize()[0]


def _set_pixels(ds: Dataset, plane: np.ndarray, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(plane.astype("<i2" if signed else "<u2")).tobytes()


def _set_b_value(ds: Dataset, b: float, tags: Sequence[str], ge_offset: bool) -> None:
    if "standard" in tags:
        ds.DiffusionBValue = float(b)
    if "siemens" in tags:
        ds.private_block(0x0019, SIEMENS_CREATOR, create=True).add_new(0x0C, "IS", str(int(round(b))))
    if "ge" in tags:
        first = int(round(b)) + (GE_B_OFFSET if ge_offset else 0)
        ds.private_block(0x0043, GE_CREATOR, create=True).add_new(0x39, "IS", [str(first), "0", "0", "0"])
    if "philips" in tags:
        ds.private_block(0x2001, PHILIPS_CREATOR, create=True).add_new(0x03, "FL", float(b))


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _check_tags(tags: Sequence[str]) -> Tuple[str, ...]:
    tags = tuple(tags)
    unknown = sorted(set(tags) - set(B_VALUE_TAGS))
    if unknown or not tags:
        raise ValueError(f"b_value_tags: unknown or none {unknown or list(tags)} (choose from {list(B_VALUE_TAGS)})")
    return tags


def _check_b_values(b_values: Sequence[float]) -> Tuple[float, ...]:
    values = tuple(float(b) for b in b_values)
    if len(values) < 1 or any(not np.isfinite(b) or b < 0 for b in values) or len(set(values)) != len(values):
        raise ValueError(f"b_values must be distinct finite numbers >= 0, got {list(b_values)}")
    return tuple(sorted(values))


def _read_map(folder: Path, name: str, patient_id: str) -> sitk.Image:
    path = folder / f"{name}.nii.gz"
    if not path.is_file():
        raise ValueError(f"patient {patient_id}: {path}: missing (the DICOM writer needs T2, Dapp, Kapp"
                         f"{' and ADC for the scanner ADC series' if name == 'ADC' else ''})")
    return sitk.ReadImage(str(path), sitk.sitkFloat64)


# ---------------------------------------------------------------------------- writers
def write_patient_dicom(cohort_dir, patient_id: str, out_dir, *, b_values: Sequence[float] = DEFAULT_B_VALUES,
                        snr: float = DEFAULT_SNR, seed: int = 0,
                        b_value_tags: Sequence[str] = DEFAULT_B_VALUE_TAGS, ge_offset: bool = True,
                        directions: int = 0, scanner_adc: str = "series",
                        dwi_shift_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> dict:
    """Write one patient of a synthetic cohort as DICOM files under ``out_dir/<patient_id>/``.

    Parameters
    ----------
    cohort_dir : str or Path
        Cohort folder written by ``dataset_conversion.synthetic_larc``.
    patient_id : str
        The cohort's patient id (folder name under ``images/``); it is NOT written into any DICOM
        header (the DICOM identifiers are synthetic, see the module docstring).
    out_dir : str or Path
        The patient's files go to ``out_dir/<patient_id>/{T2,DWI,ADC}/``; an existing patient folder is
        replaced.
    b_values : sequence of float
        Distinct b-values in s/mm^2 (default :data:`DEFAULT_B_VALUES`).
    snr : float
        SNR of the b = 0 image at the median S0 (Rician noise of SD median(S0) / snr); ``inf`` for none.
    seed : int
        Seed of the noise and the synthetic identifiers.
    b_value_tags : sequence of str
        Where the b-value is written (any of :data:`B_VALUE_TAGS`).
    ge_offset : bool
        With ``"ge"``: add :data:`GE_B_OFFSET` to the first value of (0043,1039), as GE files do.
    directions : int
        0: one trace-weighted image per b and slice (``ImageType ...\\DIFFUSION\\TRACEW``); 3: three
        directional images (x, y, z gradient; isotropic tissue, independent noise) per b > 0 and slice.
    scanner_adc : str
        ``"series"``: also a scanner-derived ADC series (the generator's ADC map, ``ImageType
        DERIVED\\PRIMARY\\DIFFUSION\\ADC``); ``"within"``: the same images inside the DWI series;
        ``"none"``.
    dwi_shift_mm : sequence of 3 float
        Added to the diffusion series' ``ImagePositionPatient`` (the content stays): a misregistration
        of the DWI against T2, for testing ``--register rigid``.

    Returns
    -------
    dict
        ``folder`` (the patient's DICOM folder), ``t2_files``, ``dwi_files``, ``adc_files`` (lists of
        paths), ``identifiers`` (PatientName, PatientID, dates, StudyInstanceUID, FrameOfReferenceUID,
        T2/DWI/ADC SeriesInstanceUID), ``b_values``, ``sigma`` (the Rician noise SD).
    """
    b_values = _check_b_values(b_values)
    tags = _check_tags(b_value_tags)
    if scanner_adc not in SCANNER_ADC_CHOICES:
        raise ValueError(f"scanner_adc must be one of {SCANNER_ADC_CHOICES}, got {scanner_adc!r}")
    if directions not in (0, 3):
        raise ValueError(f"directions must be 0 (trace) or 3, got {directions}")
    if not (snr > 0):
        raise ValueError(f"snr must be > 0 (inf for no noise), got {snr}")
    source = Path(cohort_dir) / "images" / patient_id
    t2 = _read_map(source, "T2", patient_id)
    dapp = _read_map(source, "Dapp", patient_id)
    kapp = _read_map(source, "Kapp", patient_id)
    adc = _read_map(source, "ADC", patient_id) if scanner_adc != "none" else None

    ids = _identifiers(patient_id, seed)
    series = {
        "T2": {"uid": _uid(seed, patient_id, "T2"), "number": 3, "description": T2_DESCRIPTION},
        "DWI": {"uid": _uid(seed, patient_id, "DWI"), "number": 7, "description": DWI_DESCRIPTION},
        "ADC": {"uid": _uid(seed, patient_id, "ADC"), "number": 8, "description": ADC_DESCRIPTION},
    }
    if scanner_adc == "within":
        series["ADC"] = series["DWI"]
    target = Path(out_dir) / patient_id
    files: Dict[str, list] = {"T2": [], "DWI": [], "ADC": []}

    # T2: int16 with a rescale slope
    t2_array = sitk.GetArrayFromImage(t2)
    top = float(np.max(np.abs(t2_array))) or 1.0
    slope = top / 30000.0
    stored = np.round(t2_array / slope)
    for k in range(t2_array.shape[0]):
        ds = _base_dataset(ids, series["T2"], _uid(seed, patient_id, "T2", k))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", ""
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "100", "4000", "16"
        ds.InstanceNumber = k + 1
        _set_geometry(ds, t2, k)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", _ds(slope), "US"
        _set_pixels(ds, stored[k], signed=True)
        path = target / "T2" / f"IM_{k + 1:04d}.dcm"
        files["T2"].append(path)
        _save(ds, path)

    # DWI: kurtosis signal + Rician noise on the diffusion grid
    dapp_array, kapp_array = sitk.GetArrayFromImage(dapp), sitk.GetArrayFromImage(kapp)
    s0 = s0_model(dapp_array)
    sigma = 0.0 if np.isinf(snr) else float(np.median(s0)) / float(snr)
    rng = np.random.default_rng([seed, _stable_int(patient_id), 7])
    geometry = sitk.Image(dapp)
    geometry.SetOrigin(tuple(np.asarray(dapp.GetOrigin()) + np.asarray(dwi_shift_mm, dtype=float)))
    instance = 0
    for b in b_values:
        clean = signal_model(s0, dapp_array, kapp_array, b)
        gradients = [None] if (b == 0 or directions == 0) else list(_DIRECTIONS_3[:directions])
        for gradient in gradients:
            noisy = np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape)) \
                if sigma > 0 else clean
            stored = np.clip(np.round(noisy), 0, 65535)
            for k in range(stored.shape[0]):
                instance += 1
                ds = _base_dataset(ids, series["DWI"], _uid(seed, patient_id, "DWI", instance))
                if b == 0:
                    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
                    ds.DiffusionDirectionality = "NONE"
                elif gradient is None:
                    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
                    ds.DiffusionDirectionality = "ISOTROPIC"
                else:
                    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
                    ds.DiffusionDirectionality = "DIRECTIONAL"
                    ds.DiffusionGradientOrientation = list(gradient)
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "EP", "SK\\SP", "FS"
                ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "70", "5000", "1"
                ds.InstanceNumber = instance
                _set_geometry(ds, geometry, k)
                _set_b_value(ds, b, tags, ge_offset)
                _set_pixels(ds, stored[k], signed=False)
                path = target / "DWI" / f"IM_{instance:04d}.dcm"
                files["DWI"].append(path)
                _save(ds, path)

    if adc is not None:
        adc_array = np.clip(np.round(sitk.GetArrayFromImage(adc)), 0, 65535)
        folder, number = ("ADC", 0) if scanner_adc == "series" else ("DWI", instance)
        for k in range(adc_array.shape[0]):
            number += 1
            ds = _base_dataset(ids, series["ADC"], _uid(seed, patient_id, "ADC", k))
            ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "EP", "SK\\SP", "FS"
            ds.InstanceNumber = number
            _set_geometry(ds, geometry, k)
            _set_pixels(ds, adc_array[k], signed=False)
            path = target / folder / f"IM_{number:04d}.dcm"
            files[folder].append(path)
            _save(ds, path)

    identifiers = dict(ids)
    identifiers.update({f"{name}SeriesInstanceUID": s["uid"] for name, s in series.items()
                        if name != "ADC" or scanner_adc != "none"})
    return {"folder": target, "t2_files": files["T2"], "dwi_files": files["DWI"], "adc_files": files["ADC"],
            "identifiers": identifiers, "b_values": list(b_values), "sigma": sigma}


def write_cohort_dicom(cohort_dir, out_dir, patients: Optional[Sequence[str]] = None, *,
                       overwrite: bool = False, **options) -> Dict[str, dict]:
    """Write several patients (default: every folder under ``cohort_dir/images``) with
    :func:`write_patient_dicom`; staged in a hidden sibling folder and moved into place at the end.

    ``options`` go to :func:`write_patient_dicom`.  An existing non-empty ``out_dir`` is refused unless
    ``overwrite``.  Returns patient id -> the writer's record (paths point into the final folder).
    """
    cohort_dir, out_dir = Path(cohort_dir), Path(out_dir).resolve()
    images = cohort_dir / "images"
    if not images.is_dir():
        raise ValueError(f"{images}: not a folder (expected a cohort from dataset_conversion.synthetic_larc)")
    available = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    patients = list(patients) if patients else available
    unknown = [p for p in patients if p not in available]
    if unknown:
        raise ValueError(f"{images}: no patient folder for {unknown}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        records = {pid: write_patient_dicom(cohort_dir, pid, staging, **options) for pid in patients}
        publish_folder(str(staging), str(out_dir))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for record in records.values():
        record["folder"] = out_dir / record["folder"].name
        for key in ("t2_files", "dwi_files", "adc_files"):
            record[key] = [out_dir / p.relative_to(staging) for p in record[key]]
    return records


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The command line (``python -m dataset_conversion.synthetic_dicom``)."""
    parser = argparse.ArgumentParser(
        prog="python -m dataset_conversion.synthetic_dicom",
        description="Write a synthetic cohort (dataset_conversion.synthetic_larc) as DICOM: per patient a T2 "
                    "series and one multi-b diffusion series computed from Dapp and Kapp (kurtosis signal, "
                    "Rician noise), optionally a scanner-derived ADC series. Identifiers are synthetic.")
    parser.add_argument("--cohort", required=True, help="cohort folder (images/<patient_id>/T2,Dapp,Kapp,ADC.nii.gz)")
    parser.add_argument("--out", required=True, help="DICOM folder to create (one sub-folder per patient)")
    parser.add_argument("--patients", nargs="*", default=None, help="patient ids (default: all)")
    parser.add_argument("--snr", type=float, default=DEFAULT_SNR,
                        help="SNR of the b=0 image at the median S0 (default %(default)s; inf: no noise)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and identifiers (default 0)")
    parser.add_argument("--b-values", type=float, nargs="+", default=list(DEFAULT_B_VALUES),
                        help="b-values in s/mm^2 (default %(default)s)")
    parser.add_argument("--b-value-tags", nargs="+", default=list(DEFAULT_B_VALUE_TAGS), choices=B_VALUE_TAGS,
                        help="where the b-value is written (default %(default)s)")
    parser.add_argument("--no-ge-offset", action="store_true", help="GE tag without the 1e9 offset")
    parser.add_argument("--directions", type=int, default=0, choices=(0, 3),
                        help="0: trace-weighted images; 3: three directional images per b > 0")
    parser.add_argument("--scanner-adc", default="series", choices=SCANNER_ADC_CHOICES,
                        help="scanner-derived ADC: its own series, within the DWI series, or none (default series)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the DICOM cohort as the command line says; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        records = write_cohort_dicom(args.cohort, args.out, args.patients, overwrite=args.overwrite,
                                     b_values=args.b_values, snr=args.snr, seed=args.seed,
                                     b_value_tags=args.b_value_tags, ge_offset=not args.no_ge_offset,
                                     directions=args.directions, scanner_adc=args.scanner_adc)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {len(records)} patients as DICOM to {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
