"""Issue 23 on the predictor's side: misaligned channels, stray files, ``-o`` equal to ``-i`` and
the report's inputs refused before anything is predicted; ``--resample-to-first``; resumable runs
(``--continue`` after a SIGKILL), per-case isolation (``--keep-going``, ``failures.csv``, exit
status 3) and the parts' table digests that ``--merge`` checks.

The refusals run the real CLI against a model folder that holds only its ``dataset.json``
(``fake_model`` of ``tests/test_bad_inputs.py``): they all happen before a checkpoint is loaded.
The runs that predict use the smoke model (``tests/test_predictor.py``'s fixtures).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import test_bad_inputs
import test_predictor
from conftest import bin_of
from test_bad_inputs import input_folder, predict_cli, tree
from test_predictor import CLI_COMMON, VALUE_COLUMNS, _case_folder, _predictor, _test_cases
from nnunet_multitask.contract import resample_onto
from nnunet_multitask.prediction_parts import PartMergeError, merge_parts
from nnunet_multitask.prediction_artifact import EXIT_FINISHED_WITH_FAILURES, FAILURES_CSV, MultitaskPredictionError
from nnunet_multitask.prediction_engine import MultiTaskPredictor
from nnunet_multitask.prediction_run import predict_folder
from nnunet_multitask.predictor import predict_entry_point

fake_model = test_bad_inputs.fake_model
model, api_env, batch_run = test_predictor.model, test_predictor.api_env, test_predictor.batch_run


def _refused(proc, *expected):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, (text, proc.stderr)


def _move(path: Path, origin=None, direction=None, spacing=None) -> None:
    image = sitk.ReadImage(str(path))
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=True)


# ---------------------------------------------------------------------------- refusals before any checkpoint
@pytest.mark.parametrize("change, named", [
    ("origin", "origin"),        # shifted 30 mm: same voxel grid size, another place
    ("direction", "direction"),  # rotated 90 degrees in plane
    ("spacing", "spacing"),      # same size, other voxel size (a RuntimeError traceback before)
])
def test_predict_refuses_channels_off_the_first_channels_grid(fake_model, tmp_path, change, named):
    inp = input_folder(tmp_path / "in")
    bad = inp / "LARC_0002_0001.nii.gz"
    image = sitk.ReadImage(str(bad))
    if change == "origin":
        _move(bad, origin=tuple(np.add(image.GetOrigin(), (30.0, 0.0, 0.0))))
    elif change == "direction":
        _move(bad, direction=(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    else:
        _move(bad, spacing=tuple(np.multiply(image.GetSpacing(), 1.5)))
    out = tmp_path / "out"
    proc = predict_cli(fake_model["env"], inp, out, "-f", "0")
    _refused(proc, "case LARC_0002", "LARC_0002_0001.nii.gz", "LARC_0002_0000.nii.gz", named,
             "--resample-to-first")
    assert not out.exists()


def test_predict_within_tolerance_is_one_grid(fake_model, tmp_path):
    """A float32 rounding of the origin is not a misalignment: the run goes on to the model (and
    fails there on the fake model's missing plans.json)."""
    inp = input_folder(tmp_path / "in")
    bad = inp / "LARC_0002_0001.nii.gz"
    _move(bad, origin=tuple(np.add(sitk.ReadImage(str(bad)).GetOrigin(), (2e-4, 0.0, 0.0))))
    proc = predict_cli(fake_model["env"], inp, tmp_path / "out", "-f", "0")
    assert proc.returncode == 2 and "plans.json" in proc.stderr, proc.stderr


@pytest.mark.parametrize("stray", ["LARC_0001_0002.nii", "LARC_0001_0002.mha"])
def test_predict_refuses_a_second_file_for_one_case_and_channel(fake_model, tmp_path, stray):
    inp = input_folder(tmp_path / "in")
    sitk.WriteImage(sitk.ReadImage(str(inp / "LARC_0001_0002.nii.gz")), str(inp / stray))
    proc = predict_cli(fake_model["env"], inp, tmp_path / "out", "-f", "0")
    _refused(proc, stray, "beside LARC_0001_0002.nii.gz", "one file per case and channel")
    assert not (tmp_path / "out").exists()


def test_predict_refuses_an_output_folder_equal_to_the_input(fake_model, tmp_path):
    inp = input_folder(tmp_path / "in")
    before = tree(inp)
    proc = predict_cli(fake_model["env"], inp, inp, "-f", "0")
    _refused(proc, "is the input folder -i")
    assert tree(inp) == before


def test_predict_refuses_an_empty_reference_mask_folder_before_predicting(fake_model, tmp_path):
    inp, gt, out = input_folder(tmp_path / "in"), tmp_path / "gt", tmp_path / "out"
    gt.mkdir()
    proc = predict_cli(fake_model["env"], inp, out, "-f", "0", "--report", "--seg-gt", str(gt))
    # refused before the model is read (the fake model would fail on its missing plans.json)
    _refused(proc, f"--seg-gt {gt}", "no reference mask", "LARC_0001.nii.gz")
    assert "plans.json" not in proc.stderr and not out.exists()


# ---------------------------------------------------------------------------- --resample-to-first
def test_resample_to_first_equals_a_folder_resampled_beforehand(api_env, tmp_path):
    """A case whose ADC lies on its own grid, predicted with --resample-to-first, gets the numbers of
    the same case with that ADC resampled onto T2 beforehand (the converter's resampling)."""
    case = _test_cases(api_env["images_ts"])[0]
    src = api_env["images_ts"]
    shifted, aligned = tmp_path / "shifted", tmp_path / "aligned"
    for folder in (shifted, aligned):
        folder.mkdir()
        for ch in (0, 2, 3):
            (folder / f"{case}_{ch:04d}.nii.gz").symlink_to(src / f"{case}_{ch:04d}.nii.gz")
    t2 = sitk.ReadImage(str(src / f"{case}_0000.nii.gz"))
    adc = sitk.ReadImage(str(src / f"{case}_0001.nii.gz"))
    adc.SetOrigin(tuple(np.add(adc.GetOrigin(), (1.3, -0.7, 0.0))))  # the ADC series of a slightly moved patient
    sitk.WriteImage(adc, str(shifted / f"{case}_0001.nii.gz"))
    sitk.WriteImage(resample_onto(adc, t2), str(aligned / f"{case}_0001.nii.gz"))
    predictor = _predictor(api_env["folder"])
    with pytest.raises(MultitaskPredictionError, match="--resample-to-first"):
        predict_folder(predictor, str(shifted), str(tmp_path / "refused"))
    moved = predict_folder(predictor, str(shifted), str(tmp_path / "out_shifted"), resample_to_first=True)
    reference = predict_folder(_predictor(api_env["folder"]), str(aligned), str(tmp_path / "out_aligned"))
    for c in VALUE_COLUMNS:
        assert moved[c].iloc[0] == pytest.approx(reference[c].iloc[0], rel=1e-6, abs=1e-8), c
    meta = json.loads((tmp_path / "out_shifted" / "predictions.json").read_text())
    assert meta["resampled_to_first_channel"] == {case: ["ADC"]}


# ---------------------------------------------------------------------------- --keep-going
class _FailsOnOneCase(MultiTaskPredictor):
    """Our predictor with a fault injected into one case (a stand-in for a crash while predicting)."""
    failing = None

    def predict_case_with_current_weights(self, data, clinical, availability=None):
        if self.current_case == type(self).failing:
            raise RuntimeError("injected failure")
        return super().predict_case_with_current_weights(data, clinical, availability)


def test_keep_going_records_the_failed_case_and_publishes_the_others(api_env, batch_run, tmp_path, monkeypatch,
                                                                    capsys):
    cases = _test_cases(api_env["images_ts"])[:3]
    inp = _case_folder(api_env["images_ts"], cases, tmp_path / "in")
    out = tmp_path / "out"
    monkeypatch.setattr(_FailsOnOneCase, "failing", cases[1])
    monkeypatch.setattr("nnunet_multitask.predictor.MultiTaskPredictor", _FailsOnOneCase)
    with pytest.raises(SystemExit) as exit_info:
        predict_entry_point(["-i", str(inp), "-o", str(out), *CLI_COMMON, "-npp", "0", "-nps", "0", "--keep-going"])
    err = capsys.readouterr().err
    assert exit_info.value.code == EXIT_FINISHED_WITH_FAILURES, err
    assert f"case {cases[1]} failed, going on" in err and "finished with failures: 1 case(s)" in err
    failures = pd.read_csv(out / FAILURES_CSV, dtype=str)
    assert list(failures["case_id"]) == [cases[1]] and "injected failure" in failures["reason"].iloc[0]
    table = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    assert list(table["case_id"]) == [cases[0], cases[2]]
    reference = batch_run["table"].set_index("case_id")
    for c in VALUE_COLUMNS:  # the cases that were predicted are what a run of every case gives them
        np.testing.assert_allclose(table[c], reference.loc[table["case_id"], c], rtol=1e-5, atol=1e-7)
    assert not (out / f"{cases[1]}.nii.gz").exists() and (out / f"{cases[2]}.nii.gz").exists()
    meta = json.loads((out / "predictions.json").read_text())
    assert meta["complete"] is False and meta["failed_cases"] == [cases[1]]
    assert not [n for n in os.listdir(out) if n.startswith(".nnunet_multitask_partial")]


def test_without_keep_going_a_failure_leaves_nothing(api_env, tmp_path, monkeypatch, capsys):
    cases = _test_cases(api_env["images_ts"])[:2]
    inp = _case_folder(api_env["images_ts"], cases, tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    monkeypatch.setattr(_FailsOnOneCase, "failing", cases[1])
    monkeypatch.setattr("nnunet_multitask.predictor.MultiTaskPredictor", _FailsOnOneCase)
    with pytest.raises(SystemExit) as exit_info:
        predict_entry_point(["-i", str(inp), "-o", str(out), *CLI_COMMON, "-npp", "0", "-nps", "0"])
    assert exit_info.value.code == 2
    assert f"case {cases[1]}: prediction failed" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["earlier.txt"]


# ---------------------------------------------------------------------------- --continue after SIGKILL
def test_continue_after_sigkill_equals_an_uninterrupted_run(model, batch_run, tmp_path):
    cases = _test_cases(model["images_ts"])
    out = tmp_path / "out"
    cmd = [bin_of("nnUNetv2_predict_multitask"), "-i", str(model["images_ts"]), "-o", str(out), *CLI_COMMON,
           "-npp", "0", "-nps", "0"]
    records = out / ".nnunet_multitask_partial_run" / "case_records"
    proc = subprocess.Popen(cmd, env=model["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (records.is_dir() and any(records.iterdir())):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = sorted(p.stem for p in records.glob("*.json"))
    assert 1 <= len(finished_before) < len(cases)
    assert not (out / "predictions.csv").exists()

    resumed = subprocess.run(cmd + ["--continue"], env=model["env"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    # a record can land before its case's segmentation was exported: that case is predicted again
    import re
    resumed_count = re.search(rf"(\d+) of {len(cases)} cases were finished by the interrupted run", resumed.stderr)
    assert resumed_count is not None, resumed.stderr
    assert int(resumed_count.group(1)) <= len(finished_before)
    table = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    reference = batch_run["table"]
    assert list(table["case_id"]) == list(reference["case_id"])
    for c in VALUE_COLUMNS:
        np.testing.assert_allclose(table[c], reference[c], rtol=1e-5, atol=1e-7)
    assert list(table.columns) == list(reference.columns)
    assert not (out / ".nnunet_multitask_partial_run").exists()


def test_continue_refuses_a_run_started_with_other_settings(model, tmp_path):
    """A killed run's staging folder is only picked up by a run with the same settings."""
    out = tmp_path / "out"
    staging = out / ".nnunet_multitask_partial_run"
    (staging / "case_records").mkdir(parents=True)
    (staging / "run.json").write_text(json.dumps({"folds": ["1"]}))
    case = _test_cases(model["images_ts"])[0]
    inp = _case_folder(model["images_ts"], [case], tmp_path / "in")
    proc = subprocess.run([bin_of("nnUNetv2_predict_multitask"), "-i", str(inp), "-o", str(out), *CLI_COMMON,
                           "-npp", "0", "-nps", "0", "--continue"], env=model["env"], capture_output=True, text=True,
                          timeout=900)
    _refused(proc, "--continue", "other inputs or settings", "folds")
    assert staging.is_dir()


# ---------------------------------------------------------------------------- --merge checks the digests
def _part(folder: Path, part_id: int, cases, failed=()) -> Path:
    from test_split_merge import _fake_part
    folder = _fake_part(folder, part_id, 2, cases)
    if failed:
        table = pd.read_csv(folder / "predictions.csv", dtype=str, keep_default_na=False)
        table = table[~table["case_id"].isin(failed)]
        table.to_csv(folder / "predictions.csv", index=False)
        pd.DataFrame({"case_id": list(failed), "reason": ["RuntimeError: x"] * len(failed)}).to_csv(
            folder / FAILURES_CSV, index=False)
        for c in failed:
            (folder / f"{c}.nii.gz").unlink()
    meta = json.loads((folder / "predictions.json").read_text())
    meta["tables_sha256"] = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                             for n in ("predictions.csv", FAILURES_CSV) if (folder / n).exists()}
    meta["failed_cases"] = sorted(failed)
    (folder / "predictions.json").write_text(json.dumps(meta))
    return folder


CASES = [f"LARC_{i:04d}" for i in (3, 1, 8, 5, 10)]


def test_merge_refuses_a_part_edited_after_prediction(tmp_path):
    a, b = _part(tmp_path / "a", 0, CASES), _part(tmp_path / "b", 1, CASES)
    text = (b / "predictions.csv").read_text()
    (b / "predictions.csv").write_text(text.replace(text.splitlines()[1].split(",")[1], "9.99", 1))
    with pytest.raises(PartMergeError, match=r"predictions.csv was changed after it was predicted"):
        merge_parts([str(a), str(b)], str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def test_merge_carries_failures_and_is_not_complete(tmp_path):
    share1 = sorted(CASES)[1::2]
    a, b = _part(tmp_path / "a", 0, CASES), _part(tmp_path / "b", 1, CASES, failed=[share1[0]])
    table = merge_parts([str(a), str(b)], str(tmp_path / "merged"))
    assert share1[0] not in set(table["case_id"]) and len(table) == len(CASES) - 1
    meta = json.loads((tmp_path / "merged" / "predictions.json").read_text())
    assert meta["complete"] is False and meta["failed_cases"] == [share1[0]]
    assert list(pd.read_csv(tmp_path / "merged" / FAILURES_CSV)["case_id"]) == [share1[0]]
    # the merged tables carry their own digests, as a run's
    assert meta["tables_sha256"]["predictions.csv"] == hashlib.sha256(
        (tmp_path / "merged" / "predictions.csv").read_bytes()).hexdigest()


def test_merge_refuses_a_part_missing_a_case_it_does_not_list_as_failed(tmp_path):
    share1 = sorted(CASES)[1::2]
    a, b = _part(tmp_path / "a", 0, CASES), _part(tmp_path / "b", 1, CASES, failed=[share1[0]])
    (b / FAILURES_CSV).write_text("case_id,reason\n")
    meta = json.loads((b / "predictions.json").read_text())
    meta["tables_sha256"][FAILURES_CSV] = hashlib.sha256((b / FAILURES_CSV).read_bytes()).hexdigest()
    meta["failed_cases"] = []
    (b / "predictions.json").write_text(json.dumps(meta))
    with pytest.raises(PartMergeError, match="does not hold its share"):
        merge_parts([str(a), str(b)], str(tmp_path / "merged"))


def test_cli_help_names_the_new_options():
    proc = subprocess.run([str(Path(sys.executable).with_name("nnUNetv2_predict_multitask")), "--help"],
                          capture_output=True, text=True, timeout=120)
    for option in ("--continue", "--keep-going", "--resample-to-first"):
        assert option in proc.stdout


# ---------------------------------------------------------------------------- new patients in the cohort layout
def test_cohort_folder_of_new_patients_equals_the_converted_test_cases(model, batch_run, tmp_path):
    """Issue 20 item 4: the test patients given as a cohort folder (T2 and maps on their own grids,
    no mask, no follow-up) get the predictions they got through the converter's imagesTs."""
    raw = Path(model["raw"])
    mapping = pd.read_csv(raw / "patient_mapping.csv", dtype=str)
    test_cases = set(_test_cases(model["images_ts"]))
    patients = mapping[mapping["case_id"].isin(test_cases)]
    cohort, new = Path(model["cohort"]), tmp_path / "new"
    for pid in patients["patient_id"]:
        (new / "images" / pid).mkdir(parents=True)
        for series in ("T2", "ADC", "Dapp", "Kapp"):  # no mask.nii.gz
            (new / "images" / pid / f"{series}.nii.gz").symlink_to(cohort / "images" / pid / f"{series}.nii.gz")
    clinical = pd.read_csv(cohort / "clinical.csv", dtype=str, keep_default_na=False)
    clinical = clinical[clinical["patient_id"].isin(set(patients["patient_id"]))]
    clinical.drop(columns=["dfs_months", "dfs_event"]).to_csv(new / "clinical.csv", index=False)
    out = tmp_path / "out"
    proc = subprocess.run([bin_of("nnUNetv2_predict_multitask"), "-i", str(new), "-o", str(out), *CLI_COMMON,
                           "-npp", "0", "-nps", "0"], env=model["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    new_mapping = pd.read_csv(out / "patient_mapping.csv", dtype=str)
    assert sorted(new_mapping["patient_id"]) == sorted(patients["patient_id"])
    assert set(table["case_id"]) == set(new_mapping["case_id"])
    # no patient id in what the prediction wrote, but the mapping file
    written = "".join(p.read_text() for p in out.glob("*.json")) + (out / "predictions.csv").read_text()
    assert not [pid for pid in patients["patient_id"] if pid in written]
    # the records name the user's cohort folder and table, not the temporary folder they were prepared in
    meta = json.loads((out / "predictions.json").read_text())
    assert meta["clinical_table"] == str((new / "clinical.csv").resolve())
    assert str(new.resolve()) in (out / "predict_from_raw_data_args.json").read_text()
    converted_case = dict(zip(patients["patient_id"], patients["case_id"]))
    new_case = dict(zip(new_mapping["case_id"], new_mapping["patient_id"]))
    reference = batch_run["table"].set_index("case_id")
    for _, row in table.iterrows():
        ref = reference.loc[converted_case[new_case[row["case_id"]]]]
        for c in VALUE_COLUMNS:
            assert row[c] == pytest.approx(ref[c], rel=1e-5, abs=1e-7), (row["case_id"], c)
    first = table["case_id"].iloc[0]
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{first}.nii.gz"))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(batch_run["out"] / f"{converted_case[new_case[first]]}.nii.gz"))))


def test_cohort_folder_with_a_bad_map_is_refused_naming_the_patient(fake_model, tmp_path):
    """The converter's checks, on a cohort folder: a diffusion map that does not cover the T2."""
    from test_bad_inputs import write_cohort
    cohort = tmp_path / "new"
    write_cohort(cohort, n_patients=2)
    patient = sorted(p.name for p in (cohort / "images").iterdir())[0]
    adc = cohort / "images" / patient / "ADC.nii.gz"
    _move(adc, origin=tuple(np.add(sitk.ReadImage(str(adc)).GetOrigin(), (200.0, 0.0, 0.0))))
    (fake_model["folder"] / "dataset.json").write_text(json.dumps(
        dict(json.loads((fake_model["folder"] / "dataset.json").read_text()), multitask={})))
    proc = predict_cli(fake_model["env"], cohort, tmp_path / "out", "-f", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"patient {patient}" in proc.stderr and "ADC.nii.gz" in proc.stderr and "covers only" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_dicom_in_to_dicom_seg_and_report_out(model, tmp_path):
    """Issue 20 end to end on the smoke model: a synthetic patient written as DICOM (T2 and one
    multi-b DWI series), imported (maps fitted on the DWI grid), predicted from the cohort folder
    with --dicom-out; the DICOM-SEG re-read matches the NIfTI prediction and references the T2."""
    import highdicom as hd
    import pydicom
    from conftest import REPO, TINY_SHAPE
    env = model["env"]
    nifti, dicom, cohort, out = tmp_path / "nifti", tmp_path / "dicom", tmp_path / "cohort", tmp_path / "out"
    subprocess.run([sys.executable, "-m", "dataset_conversion.synthetic_larc", "--out", str(nifti), "--patients", "1",
                    "--seed", "5", "--shape", *TINY_SHAPE, "--dicom-out", str(dicom)], env=env, cwd=REPO, check=True,
                   capture_output=True)
    patient_dir = next(p for p in dicom.iterdir() if p.is_dir())
    imported = subprocess.run([bin_of("multirec_import_dicom"), "--dicom", str(patient_dir), "--out", str(cohort)],
                              env=env, capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    proc = subprocess.run([bin_of("nnUNetv2_predict_multitask"), "-i", str(cohort), "-o", str(out), *CLI_COMMON,
                           "-npp", "0", "-nps", "0", "--impute-missing-clinical", "--dicom-out"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    case = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})["case_id"].iloc[0]
    seg = hd.seg.segread(out / "dicom" / f"{case}_seg.dcm")
    t2_uid = pd.read_csv(cohort / "dicom_mapping.csv", dtype=str)["t2_series_instance_uid"].iloc[0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t2_uid
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
    frames = seg.get_volume(combine_segments=True) if hasattr(seg, "get_volume") else None
    n_seg = int(np.count_nonzero(frames.array)) if frames is not None else int(np.count_nonzero(seg.pixel_array))
    assert n_seg == int(np.count_nonzero(predicted))
    sr = pydicom.dcmread(out / "dicom" / f"{case}_sr.dcm")

    def texts(items):
        for item in items:
            if "TextValue" in item:
                yield str(item.TextValue)
            if "ContentSequence" in item:
                yield from texts(item.ContentSequence)
    assert any("RESEARCH USE ONLY" in t.upper() for t in texts(sr.ContentSequence))
    risk = pd.read_csv(out / "predictions.csv")["risk_score"].iloc[0]
    assert any(float(v.MeasuredValueSequence[0].NumericValue) == pytest.approx(risk, rel=1e-6)
               for v in sr.ContentSequence if "MeasuredValueSequence" in v)


# ---------------------------------------------------------------------------- --recalibrated (issue 21 item 6)
def test_recalibrated_prediction_applies_the_model_folders_fit(api_env, batch_run, tmp_path):
    """The predictor's side of --recalibrated: a recalibration.json in the model folder (fitted here on
    made-up out-of-sample predictions: the tiny cohort's fold 0 has too few validation events to fit one;
    the fit itself is tested in tests/test_recalibration.py) is applied to the table it writes."""
    from nnunet_multitask.contract import HeadConfig
    from nnunet_multitask.recalibration import fit_recalibration, load_recalibration, save_recalibration
    folder = Path(api_env["folder"])
    rng = np.random.default_rng(0)
    n = 60
    lp = rng.normal(size=n)
    time = rng.exponential(40 * np.exp(-lp))
    event = (time < 60).astype(float)
    time = np.minimum(time, 60) + 0.1
    table = pd.DataFrame({"case_id": [f"X{i:03d}" for i in range(n)], "risk_score": np.exp(lp) * 0.3,
                          "p_recurrence_36m": 1 / (1 + np.exp(-2.5 * lp))})
    plans = json.loads((folder / "plans.json").read_text())
    recal = fit_recalibration({"table": table, "time": time, "event": event, "folds": ["0"], "inputs": {},
                               "head_config": HeadConfig.from_plans(plans), "column": "p_recurrence_36m"})
    save_recalibration(str(folder), recal)
    recal = load_recalibration(str(folder))
    case = _test_cases(api_env["images_ts"])[0]
    inp = _case_folder(api_env["images_ts"], [case], tmp_path / "in")
    predictor = _predictor(folder)
    predictor.recalibration = recal
    table = predict_folder(predictor, str(inp), str(tmp_path / "out"))
    raw = batch_run["table"].set_index("case_id").loc[case]
    assert bool(table["recalibrated"].iloc[0])
    assert table["p_recurrence_36m_uncalibrated"].iloc[0] == pytest.approx(raw["p_recurrence_36m"], rel=1e-5)
    cls = recal["classification"]
    logit = np.log(raw["p_recurrence_36m"] / (1 - raw["p_recurrence_36m"]))
    expected = 1 / (1 + np.exp(-(cls["intercept"] + cls["slope"] * logit)))
    assert table["p_recurrence_36m"].iloc[0] == pytest.approx(expected, rel=1e-4)
    assert table["risk_score"].iloc[0] == pytest.approx(raw["risk_score"], rel=1e-5)
    meta = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert meta["recalibration"]["sha256"] == hashlib.sha256((folder / "recalibration.json").read_bytes()).hexdigest()
    assert "recalibrated" in meta["column_sources"]["p_recurrence_36m"]
    assert meta["column_sources"]["p_recurrence_36m_uncalibrated"].startswith("before --recalibrated")
    (folder / "recalibration.json").unlink()


def test_recalibrated_without_a_fit_is_refused_before_predicting(fake_model, tmp_path):
    inp, out = input_folder(tmp_path / "in"), tmp_path / "out"
    proc = predict_cli(fake_model["env"], inp, out, "-f", "0", "--recalibrated")
    _refused(proc, "--recalibrated", "recalibration.json not found", "python -m nnunet_multitask.recalibration")
    assert not out.exists()


class _InterruptedOnOneCase(MultiTaskPredictor):
    """Our predictor interrupted (KeyboardInterrupt, as a kill: not an error) at one case."""
    interrupt = None

    def _predict_case(self, case_id, data):
        if case_id == type(self).interrupt:
            raise KeyboardInterrupt
        return super()._predict_case(case_id, data)


def test_continue_resumes_an_interrupted_part(api_env, batch_run, tmp_path, capsys, monkeypatch):
    """A part of a -num_parts run predicts from a temporary share folder; its --continue must still
    find its own interrupted run (the README's Slurm recipe requeues parts with --continue)."""
    cases = _test_cases(api_env["images_ts"])[:4]
    inp = _case_folder(api_env["images_ts"], cases, tmp_path / "in")
    out = tmp_path / "part0"
    share = sorted(cases)[0::2]
    monkeypatch.setattr(_InterruptedOnOneCase, "interrupt", share[1])
    interrupted = _InterruptedOnOneCase(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                        perform_everything_on_device=False, device=__import__("torch").device("cpu"),
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    interrupted.initialize_from_trained_model_folder(str(api_env["folder"]), [0], "checkpoint_final.pth")
    with pytest.raises(KeyboardInterrupt):
        predict_folder(interrupted, str(inp), str(out), part_id=0, num_parts=2)
    assert (out / ".nnunet_multitask_partial_run" / "case_records" / f"{share[0]}.json").is_file()
    capsys.readouterr()
    table = predict_folder(_predictor(api_env["folder"]), str(inp), str(out), part_id=0, num_parts=2, resume=True)
    assert "1 of 2 cases were finished by the interrupted run" in capsys.readouterr().err
    assert list(table["case_id"]) == share
    reference = batch_run["table"].set_index("case_id")
    for c in VALUE_COLUMNS:
        np.testing.assert_allclose(table[c], reference.loc[share, c], rtol=1e-5, atol=1e-7)
