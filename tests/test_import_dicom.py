"""DICOM import: synthetic DICOM (dataset_conversion.synthetic_dicom) -> multirec_import_dicom -> cohort folder.

Tiny synthetic patients (T2 32 x 32 x 6 at 0.7 x 0.7 x 3 mm; DWI 19 x 21 x 8 at 1.6 x 1.6 x 4.5 mm).

Accuracy (:func:`test_fitted_maps_match_the_generator`), compared voxel-wise on the DWI grid, per tissue (the
generator's tissue label at the DWI voxel centre; tumour and muscle), medians over the voxels of 2 patients:

- Dapp: |median error| < 2 % and median |error| < 4 % of the generator's Dapp at SNR 200; < 3 % and < 12 % at
  SNR 40;
- Kapp: |median error| < 0.02 and median |error| < 0.04 at SNR 200; < 0.03 and < 0.16 at SNR 40 (63 tumour voxels only);
- ADC: against the ADC the kurtosis signal implies at the fitter's ADC b-values (0, 50, 800; the
  log-linear slope of the noise-free signal): |median error| < 2 % and median |error| < 3 % at SNR 200,
  < 3 % and < 8 % at SNR 40.  The generator's own ADC map is NOT what the DWI signal encodes (the signal
  is made from Dapp and Kapp); the fitted ADC lies above it (about +90 in tumour, +60 in muscle, x 1e-6
  mm^2/s), which the test states but does not bound.

Run as a script for the benchmark numbers (larger images, more patients)::

    .venv/bin/python tests/test_import_dicom.py --patients 3 --shape 80 80 16 --snr 40
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dataset_conversion import synthetic_larc as sl
from dataset_conversion.import_dicom import (FIT_FOLDER, MAPPING_FILE, DicomImportError, ImportOptions,
                                             import_patient, main, read_b_value, t2_files_from_mapping)
from dataset_conversion.synthetic_dicom import GE_B_OFFSET, write_patient_dicom

REPO = Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 6)
PROG_ERROR = "multirec_import_dicom: error:"


# ---------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3-patient synthetic cohort (NIfTI) at a tiny shape."""
    root = tmp_path_factory.mktemp("source")
    sl.generate_cohort(root / "cohort", 3, seed=0, shape=SHAPE)
    return root / "cohort"


def dicom_of(source, tmp_path, patient="P0001", **options):
    """Write one patient as DICOM under tmp_path/dicom; returns the writer's record."""
    return write_patient_dicom(source, patient, tmp_path / "dicom", **options)


def run_import(dicom_dir, out, *extra):
    return main(["--dicom", str(dicom_dir), "--out", str(out), *map(str, extra)])


def tree(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None


def by_b(record, b):
    """The DWI files of b-value ``b`` (the standard tag; tests that edit files write it)."""
    return [p for p in record["dwi_files"]
            if p.exists() and read_b_value(pydicom.dcmread(p, stop_before_pixels=True))[0] == b]


def edit(paths, change):
    for p in paths:
        ds = pydicom.dcmread(p)
        change(ds)
        ds.save_as(p)


def fails_cleanly(capsys, dicom_dir, out, parts, *extra):
    """The import exits 2 with one error line naming every part, and the cohort folder is unchanged."""
    before = tree(out)
    assert run_import(dicom_dir, out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith(PROG_ERROR), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, f"{part!r} not in {err!r}"
    assert tree(out) == before, "something was written"
    return err


def tissue_on_dwi_grid(source, index: int, shape=SHAPE) -> np.ndarray:
    """The generator's tissue label (index into TISSUES) at each DWI voxel centre (-1 outside T2)."""
    pid = sl.patient_id(index)
    labels = sl.simulate_patient(0, index, 3, shape, sl.DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                                 sl.DEFAULT_ADMIN_CENSORING_MONTHS)["tissue_labels"]
    t2 = sitk.ReadImage(str(source / "images" / pid / "T2.nii.gz"))
    adc = sitk.ReadImage(str(source / "images" / pid / "ADC.nii.gz"))
    image = sitk.GetImageFromArray(labels.astype(np.int16) + 1)
    image.CopyInformation(t2)
    return sitk.GetArrayFromImage(sitk.Resample(image, adc, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) - 1


def model_adc(dapp: np.ndarray, kapp: np.ndarray, b=(0.0, 50.0, 800.0)) -> np.ndarray:
    """The ADC (1e-6 mm^2/s) a noise-free kurtosis signal gives to a log-linear fit over ``b``."""
    b = np.asarray(b, float).reshape(-1, *([1] * dapp.ndim))
    d = np.maximum(dapp, 0.0) * 1e-6
    log_s = -b * d + (b * d) ** 2 * kapp / 6.0
    centred = b - b.mean()
    return -np.sum(centred * log_s, axis=0) / np.sum(centred ** 2) * 1e6


def accuracy(source, out, patients, shape=SHAPE, tissues=("tumour", "muscle")) -> dict:
    """tissue -> map -> (n voxels, median truth, median error, median |error|) on the DWI grid."""
    errors: dict = {}
    for pid in patients:
        index = int(pid[1:]) - 1
        labels = tissue_on_dwi_grid(source, index, shape)
        truth = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(source / "images" / pid / f"{m}.nii.gz"))).astype(float)
                 for m in ("ADC", "Dapp", "Kapp")}
        truth["ADC_model"] = model_adc(truth["Dapp"], truth["Kapp"])
        fitted = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(out / "images" / pid / f"{m}.nii.gz"))).astype(float)
                  for m in ("ADC", "Dapp", "Kapp")}
        fitted["ADC_model"] = fitted["ADC"]
        for tissue in tissues:
            where = labels == sl.TISSUES.index(tissue)
            for m in fitted:
                errors.setdefault(tissue, {}).setdefault(m, []).append(
                    np.stack([truth[m][where], fitted[m][where] - truth[m][where]]))
    table = {}
    for tissue, maps in errors.items():
        for m, parts in maps.items():
            truth, error = np.concatenate(parts, axis=1)
            table.setdefault(tissue, {})[m] = (int(truth.size), float(np.median(truth)), float(np.median(error)),
                                               float(np.median(np.abs(error))))
    return table


# ---------------------------------------------------------------------------- b-value tags and series roles
@pytest.mark.parametrize("tags,ge_offset,source_name", [
    (("standard",), True, "standard (0018,9087)"),
    (("siemens",), True, "Siemens (0019,100C)"),
    (("ge",), True, "GE (0043,1039)"),
    (("ge",), False, "GE (0043,1039)"),
    (("philips",), True, "Philips (2001,1003)"),
])
def test_each_b_value_tag_path(source, tmp_path, capsys, tags, ge_offset, source_name):
    written = dicom_of(source, tmp_path, b_value_tags=tags, ge_offset=ge_offset, scanner_adc="none")
    first = pydicom.dcmread(written["dwi_files"][-1], stop_before_pixels=True)
    assert ("DiffusionBValue" in first) == ("standard" in tags)
    if tags == ("ge",):
        raw = first.private_block(0x0043, "GEMS_PARM_01")[0x39].value
        assert int(raw[0]) == 2000 + (GE_B_OFFSET if ge_offset else 0)
    assert read_b_value(first) == (2000.0, source_name)
    assert run_import(written["folder"], tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / FIT_FOLDER / "P0001" / "fit_record.json").read_text())
    assert record["b_values"] == [0.0, 50.0, 800.0, 1500.0, 2000.0]
    assert f"b-values read from {source_name}" in record["notes"]
    assert sorted(p.name for p in (tmp_path / "out" / "images" / "P0001").iterdir()) == [
        "ADC.nii.gz", "Dapp.nii.gz", "Kapp.nii.gz", "T2.nii.gz"]


def test_disagreeing_b_value_tags_are_refused(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path, b_value_tags=("standard", "siemens"))
    bad = by_b(written, 800.0)[0]
    edit([bad], lambda ds: setattr(ds, "DiffusionBValue", 1000.0))
    fails_cleanly(capsys, written["folder"], tmp_path / "out",
                  [str(bad), "b-value tags disagree", "standard (0018,9087) = 1000", "Siemens (0019,100C) = 800"])


@pytest.mark.parametrize("where", ["series", "within"])
def test_scanner_derived_adc_is_left_out(source, tmp_path, capsys, where):
    written = dicom_of(source, tmp_path, scanner_adc=where)
    assert run_import(written["folder"], tmp_path / "out") == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "out" / FIT_FOLDER / "P0001" / "fit_record.json").read_text())
    (ignored,) = record["ignored"]
    assert "DERIVED/PRIMARY/DIFFUSION/ADC" in ignored["reason"] and "left out of the fit" in ignored["reason"]
    assert ignored["images"] == 8
    assert record["images_per_b"] == {"0": 8, "50": 8, "800": 8, "1500": 8, "2000": 8}
    assert "ignored series" in out and "ADC" in out


def test_directional_images_are_averaged_geometrically(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path, directions=3, snr=float("inf"), scanner_adc="none")
    assert run_import(written["folder"], tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / FIT_FOLDER / "P0001" / "fit_record.json").read_text())
    assert record["images_per_b"]["800"] == 24 and record["images_per_b"]["0"] == 8
    assert "b=800: geometric mean (trace) of 3 gradient directions" in record["notes"]
    table = accuracy(source, tmp_path / "out", ["P0001"])
    for tissue in ("tumour", "muscle"):
        n, truth, _, mae = table[tissue]["Dapp"]
        assert n > 0 and mae < 0.01 * truth, table


def test_fitted_maps_match_the_generator(source, tmp_path, capsys):
    bounds = {200.0: {"Dapp": (0.02, 0.04), "ADC_model": (0.02, 0.03), "Kapp": (0.02, 0.04)},
              40.0: {"Dapp": (0.03, 0.12), "ADC_model": (0.03, 0.08), "Kapp": (0.03, 0.16)}}
    for snr, bound in bounds.items():
        out = tmp_path / f"out{snr:g}"
        for pid in ("P0001", "P0002"):
            written = write_patient_dicom(source, pid, tmp_path / f"dicom{snr:g}", snr=snr, seed=3)
            assert run_import(written["folder"], out, "--patient-id", pid) == 0
        table = accuracy(source, out, ["P0001", "P0002"])
        print(f"SNR {snr:g}:", json.dumps(table))
        for tissue in ("tumour", "muscle"):
            for m, (bias_bound, mae_bound) in bound.items():
                n, truth, bias, mae = table[tissue][m]
                assert n >= 10, (tissue, n)
                scale = 1.0 if m == "Kapp" else truth     # Kapp: absolute, the others relative
                assert abs(bias) < bias_bound * scale, (snr, tissue, m, table[tissue][m])
                assert mae < mae_bound * scale, (snr, tissue, m, table[tissue][m])
            # the generator's own ADC map is not what the signal encodes: stated, not bounded
            assert table[tissue]["ADC"][2] > 0


# ---------------------------------------------------------------------------- the cohort it writes
def test_written_cohort_converts_and_holds_no_identifiers(source, tmp_path, capsys):
    cohort = tmp_path / "cohort"
    identifiers = []
    for pid in ("P0001", "P0002", "P0003"):
        written = dicom_of(source, tmp_path, patient=pid)
        ids = written["identifiers"]
        identifiers += [ids["PatientID"], ids["PatientBirthDate"], ids["StudyDate"], ids["AccessionNumber"],
                        ids["StudyInstanceUID"], ids["FrameOfReferenceUID"], ids["T2SeriesInstanceUID"],
                        ids["DWISeriesInstanceUID"], ids["ADCSeriesInstanceUID"], *ids["PatientName"].split("^")]
        identifiers += [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in written["t2_files"][:2]]
        assert run_import(written["folder"], cohort) == 0      # default ids: the next free P####
    assert sorted(p.name for p in (cohort / "images").iterdir()) == ["P0001", "P0002", "P0003"]
    with open(cohort / MAPPING_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patient_id"] for r in rows] == ["P0001", "P0002", "P0003"]
    assert all(r["dicom_patient_id"].startswith("SYN") for r in rows)
    mapping_text = (cohort / MAPPING_FILE).read_text()
    assert all(str(i) in mapping_text for i in identifiers[:1])

    for path in cohort.rglob("*"):
        if path.is_file() and path.name != MAPPING_FILE:
            data = path.read_bytes()
            data = gzip.decompress(data) if path.suffix == ".gz" else data
            for identifier in identifiers:
                assert str(identifier).encode() not in data, f"{identifier} in {path}"
        assert not any(str(i) in path.name for i in identifiers)

    # the T2 files of a patient, found through the mapping
    files = t2_files_from_mapping(cohort, "P0002")
    assert len(files) == SHAPE[2] and all("P0002" in str(f) for f in files)

    # with the generator's mask and clinical rows the cohort converts
    for pid in ("P0001", "P0002", "P0003"):
        shutil.copy(source / "images" / pid / "mask.nii.gz", cohort / "images" / pid / "mask.nii.gz")
    rows = (source / "clinical.csv").read_text().splitlines()
    (cohort / "clinical.csv").write_text("\n".join(rows) + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("nnUNet_preprocessed", None)
    raw = tmp_path / "raw"
    raw.mkdir()
    proc = subprocess.run([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", str(cohort),
                           "--dataset-id", "591", "--name", "DICOMTEST", "--raw-root", str(raw), "--folds", "2",
                           "--external-centres", "--internal-test-fraction", "0.3"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (raw / "Dataset591_DICOMTEST" / "dataset.json").is_file()


def test_fit_options_reach_the_fit(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path, scanner_adc="none")
    out = tmp_path / "out"
    assert run_import(written["folder"], out, "--adc-b-values", "0", "800", "--max-b", "1500", "--no-refine") == 0
    fit = json.loads((out / FIT_FOLDER / "P0001" / "fit_record.json").read_text())["fit"]
    assert fit["adc"]["b_values"] == [0.0, 800.0]
    assert fit["dki"]["b_values"] == [0.0, 50.0, 800.0, 1500.0] and fit["dki"]["refine"] is False
    fails_cleanly(capsys, written["folder"], tmp_path / "out2", ["ep2d_diff", "diffusion fit", "1000"],
                  "--adc-b-values", "0", "1000")


def test_existing_patient_needs_overwrite(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    out = tmp_path / "out"
    assert run_import(written["folder"], out, "--patient-id", "P0007") == 0
    before = (out / "images" / "P0007" / "ADC.nii.gz").read_bytes()
    fails_cleanly(capsys, written["folder"], out, ["P0007", "exists", "--overwrite"], "--patient-id", "P0007")
    fails_cleanly(capsys, written["folder"], out, ["t2_tse_tra", "already imported as patient P0007",
                                                  "--patient-id P0007 --overwrite"])
    assert run_import(written["folder"], out, "--patient-id", "P0007", "--overwrite", "--max-b", "1500") == 0
    assert (out / "images" / "P0007" / "ADC.nii.gz").read_bytes() == before     # same ADC b-values
    record = json.loads((out / FIT_FOLDER / "P0007" / "fit_record.json").read_text())
    assert record["options"]["max_b"] == 1500.0
    with open(out / MAPPING_FILE, newline="") as f:
        assert [r["patient_id"] for r in csv.DictReader(f)] == ["P0007"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------- bad input
def test_no_low_b_image(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    for b in (0.0, 50.0):
        for p in by_b(written, b):
            p.unlink()
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["ep2d_diff", "no b=0", "lowest b-value 800"])


def test_fewer_than_three_b_values(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path, b_values=(0.0, 800.0))
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["ep2d_diff", "2 distinct b-values", "--allow-adc-only"])
    assert run_import(written["folder"], tmp_path / "out", "--allow-adc-only") == 0
    captured = capsys.readouterr()
    assert "WARNING: ADC ONLY" in captured.err
    assert sorted(p.name for p in (tmp_path / "out" / "images" / "P0001").iterdir()) == ["ADC.nii.gz", "T2.nii.gz"]
    record = json.loads((tmp_path / "out" / FIT_FOLDER / "P0001" / "fit_record.json").read_text())
    assert record["adc_only"] is True and record["maps"] == ["ADC"]


def test_b_groups_on_different_geometries(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)

    def shift(ds):
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 2.0, *ds.ImagePositionPatient[1:]]
    edit(by_b(written, 800.0), shift)
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["ep2d_diff", "b=800 is on another geometry",
                                                              "origin differs"])


def test_missing_slices(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    middle = 4      # slice index of the 8-slice DWI grid
    for b in (0.0, 50.0, 800.0, 1500.0, 2000.0):
        files = sorted(by_b(written, b), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
        files[middle].unlink()
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["b=0", "missing slices", "gap of 9.00 mm",
                                                              "spacing is 4.50 mm"])


def test_missing_t2_slice(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    written["t2_files"][2].unlink()
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["t2_tse_tra", "missing slices"])


def test_series_not_what_its_label_says(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)

    def diffusion(ds):
        ds.DiffusionBValue = 800.0
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
    edit(written["t2_files"][:1], diffusion)
    fails_cleanly(capsys, written["folder"], tmp_path / "out",
                  ["t2_tse_tra", "chosen as T2 but holds diffusion images", "not what its label says"])


def test_chosen_dwi_series_without_b_values(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    adc_uid = written["identifiers"]["ADCSeriesInstanceUID"]
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["ep2d_diff_tra_ADC", "not what its label says"],
                  "--dwi-series-uid", adc_uid)


def test_several_patients(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    edit(written["dwi_files"][:1], lambda ds: setattr(ds, "PatientID", "SOMEONEELSE"))
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["images of 2 patients", "one patient per call"])


def test_no_t2_lists_the_series(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    edit(written["t2_files"], lambda ds: setattr(ds, "SeriesDescription", "ax_tse_hr"))
    err = fails_cleanly(capsys, written["folder"], tmp_path / "out",
                        ["no T2 series found", "(?i)t2", "'ax_tse_hr'", "'ep2d_diff_b0_50_800_1500_2000_tra'",
                         "'ep2d_diff_tra_ADC'", "--t2-series-uid"])
    assert "ax_tse_hr" in err
    # the user's rule finds it
    assert run_import(written["folder"], tmp_path / "out", "--t2-series-description", "(?i)ax_tse") == 0
    uid = written["identifiers"]["T2SeriesInstanceUID"]
    assert run_import(written["folder"], tmp_path / "out2", "--t2-series-uid", uid) == 0


def test_enhanced_multiframe_is_refused(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)

    def enhanced(ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    edit(written["t2_files"], enhanced)
    fails_cleanly(capsys, written["folder"], tmp_path / "out",
                  ["t2_tse_tra", "enhanced multi-frame MR", "not supported", "classic single-frame"])


def test_patient_id_must_not_be_the_dicom_id(source, tmp_path, capsys):
    written = dicom_of(source, tmp_path)
    fails_cleanly(capsys, written["folder"], tmp_path / "out", ["equals the DICOM PatientID"],
                  "--patient-id", written["identifiers"]["PatientID"])


def test_command_line_exits_2_without_traceback(source, tmp_path):
    written = dicom_of(source, tmp_path)
    edit(written["t2_files"], lambda ds: setattr(ds, "SeriesDescription", "ax_tse_hr"))
    proc = subprocess.run([sys.executable, "-m", "dataset_conversion.import_dicom", "--dicom",
                           str(written["folder"]), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(PROG_ERROR) and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_synthetic_larc_dicom_out(tmp_path, capsys):
    """--dicom-out writes the DICOM cohort beside the NIfTI one, which stays byte-identical."""
    base = ["--patients", "1", "--seed", "4", "--shape", *map(str, SHAPE), "--no-progress"]
    assert sl.main(["--out", str(tmp_path / "plain"), *base]) == 0
    assert sl.main(["--out", str(tmp_path / "cohort"), *base, "--dicom-out", str(tmp_path / "dicom")]) == 0
    for path in (tmp_path / "plain").rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "cohort" / path.relative_to(tmp_path / "plain")).read_bytes()
    assert sorted(p.name for p in (tmp_path / "dicom" / "P0001").iterdir()) == ["ADC", "DWI", "T2"]
    assert run_import(tmp_path / "dicom" / "P0001", tmp_path / "out") == 0
    with pytest.raises(SystemExit):
        sl.main(["--out", str(tmp_path / "x"), *base, "--dicom-out", str(tmp_path / "d2"), "--missing-series",
                 "Dapp:1.0"])
    assert "--dicom-out needs every series" in capsys.readouterr().err


def test_import_patient_raises_named_error(source, tmp_path):
    with pytest.raises(DicomImportError, match="no DICOM images found"):
        (tmp_path / "empty").mkdir()
        import_patient(tmp_path / "empty", tmp_path / "out", ImportOptions())


# ---------------------------------------------------------------------------- registration
def test_register_rigid_on_shifted_dwi(tmp_path, capsys):
    """The DWI header is shifted 3 mm in x (its content is not): --register rigid moves every map back.

    A patient of its own at 64 x 64 x 12 (the registration's coarsest level shrinks by 4; the tiny shape
    leaves it too little to work with)."""
    pytest.importorskip("dataset_conversion.registration")
    sl.generate_cohort(tmp_path / "cohort", 1, seed=0, shape=(64, 64, 12))
    shift = np.array([3.0, 0.0, 0.0])
    written = write_patient_dicom(tmp_path / "cohort", "P0001", tmp_path / "dicom", dwi_shift_mm=shift, snr=200.0,
                                  scanner_adc="none")
    out = tmp_path / "out"
    assert run_import(written["folder"], out, "--register", "rigid") == 0
    record = json.loads((out / FIT_FOLDER / "P0001" / "fit_record.json").read_text())
    registration = record["registration"]
    assert registration["metric_after"] < registration["metric_before"]
    assert abs(registration["translation_mm"][0] - shift[0]) < 1.0, registration
    assert "rigid registration of b=0 to T2 applied to every map's header" in record["notes"]
    truth = sitk.ReadImage(str(tmp_path / "cohort" / "images" / "P0001" / "ADC.nii.gz"))
    centre = [int(n // 2) for n in truth.GetSize()]
    for name in ("ADC", "Dapp", "Kapp"):
        moved = sitk.ReadImage(str(out / "images" / "P0001" / f"{name}.nii.gz"))
        residual = np.subtract(moved.TransformIndexToPhysicalPoint(centre), truth.TransformIndexToPhysicalPoint(centre))
        assert np.linalg.norm(residual) < 1.5, (name, residual)     # 3 mm before
    # without --register the header stays where the DICOM put it
    assert run_import(written["folder"], tmp_path / "plain") == 0
    plain = sitk.ReadImage(str(tmp_path / "plain" / "images" / "P0001" / "ADC.nii.gz"))
    assert np.allclose(np.subtract(plain.GetOrigin(), truth.GetOrigin()), shift, atol=1e-3)


# ---------------------------------------------------------------------------- benchmark numbers
def _benchmark(argv=None) -> None:
    parser = argparse.ArgumentParser(description="fitted-map accuracy on synthetic DICOM, per tissue")
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[80, 80, 16])
    parser.add_argument("--snr", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    import tempfile
    work = Path(args.work or tempfile.mkdtemp(prefix="dicom_accuracy_"))
    shape = tuple(args.shape)
    sl.generate_cohort(work / "cohort", args.patients, seed=args.seed, shape=shape, overwrite=True)
    patients = [sl.patient_id(i) for i in range(args.patients)]
    for pid in patients:
        written = write_patient_dicom(work / "cohort", pid, work / "dicom", snr=args.snr, seed=args.seed)
        import_patient(written["folder"], work / "out", ImportOptions(patient_id=pid, overwrite=True),
                       log=lambda *a, **k: None)
    table = accuracy(work / "cohort", work / "out", patients, shape, tissues=("tumour", "muscle", "wall", "fat"))
    print(f"{args.patients} patients, shape {shape}, SNR {args.snr:g}, b-values 0 50 800 1500 2000, seed {args.seed}")
    print(f"{'tissue':8s} {'map':10s} {'voxels':>7s} {'truth':>9s} {'median err':>11s} {'median |err|':>13s} "
          f"{'rel':>6s}")
    for tissue, maps in table.items():
        for m, (n, truth, bias, mae) in maps.items():
            print(f"{tissue:8s} {m:10s} {n:7d} {truth:9.3f} {bias:11.3f} {mae:13.3f} {mae / abs(truth):6.3f}")


if __name__ == "__main__":
    _benchmark()
