"""Issue 12: bad inputs fed to the real commands (converter, predictor, evaluation).

Each test checks the exit code, the message (patient / case, file and problem named) and that
nothing is left half-written. Everything here uses tiny inputs; no model is trained: the
predictor's refusals happen before any checkpoint is loaded, against a model folder that holds
only its ``dataset.json`` (what the predictor reads to know the channels).
"""
from __future__ import annotations

import fcntl
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from dataset_conversion import convert_larc
from evaluation import survival_eval as SE

try:
    from cohort_factory import T2_ORIGIN, T2_SPACING, write_cohort, write_image
except ImportError:  # tests/ imported as a package
    from tests.cohort_factory import T2_ORIGIN, T2_SPACING, write_cohort, write_image

REPO = Path(__file__).resolve().parents[1]
FOLDER = "Dataset501_LARC"
T2_SHAPE = (20, 18, 6)


# ============================================================================ helpers
def truncate_gzip(path: Path, fraction: float) -> None:
    """An interrupted copy: keep the first ``fraction`` of the compressed bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def truncate_inside_gzip(path: Path, fraction: float) -> None:
    """An interrupted export that still closed its gzip stream: a complete gzip of too few bytes."""
    raw = gzip.decompress(path.read_bytes())
    header_and_some = raw[:352 + int((len(raw) - 352) * fraction)]
    path.write_bytes(gzip.compress(header_and_some))


def rewrite_as(path: Path, dtype, change=None) -> None:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(dtype)
    if change is not None:
        change(array)
    write_image(array, path, image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def tree(folder: Path) -> dict:
    """Relative path -> bytes of every file under ``folder`` (what 'unchanged' means)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ============================================================================ converter
@pytest.fixture
def roots(tmp_path, monkeypatch):
    out = {}
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        out[sub] = tmp_path / sub
        out[sub].mkdir()
        monkeypatch.setenv(var, str(out[sub]))
    return out


@pytest.fixture
def cohort(tmp_path):
    path = tmp_path / "cohort"
    write_cohort(path, 10, t2_shape_xyz=T2_SHAPE)
    return path


def convert_cli(cohort_dir, capsys, *extra):
    rc = convert_larc.main(["--cohort", str(cohort_dir), "--dataset-id", "501", "--name", "LARC", "--folds", "2",
                            *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_converter_refused(cohort_dir, roots, capsys, expected, *extra):
    rc, out, err = convert_cli(cohort_dir, capsys, *extra)
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"
    assert not (roots["raw"] / FOLDER).exists()
    assert not [p for p in roots["raw"].iterdir() if p.name.startswith(".")], "temporary folder left behind"
    assert not (roots["preprocessed"] / FOLDER).exists()
    return err


def image_path(cohort_dir, patient, series):
    return cohort_dir / "images" / patient / f"{series}.nii.gz"


# ---- item 5: the horizon
@pytest.mark.parametrize("horizon", ["0", "-6", "nan", "inf"])
def test_convert_refuses_a_horizon_that_is_not_positive(cohort, roots, capsys, horizon):
    assert_converter_refused(cohort, roots, capsys, ["--horizon must be a finite number of months > 0", horizon],
                             "--horizon", horizon)


# ---- item 1: files cut short
def test_convert_refuses_a_truncated_uint8_mask(cohort, roots, capsys):
    mask = image_path(cohort, "HX002", "mask")
    truncate_gzip(mask, 0.9)
    labelled = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))).sum()  # SimpleITK reads it without complaint
    assert labelled >= 0
    assert_converter_refused(cohort, roots, capsys, ["patient HX002", "mask.nii.gz", "cut short"])


def test_convert_refuses_an_int16_t2_cut_to_70_percent(cohort, roots, capsys):
    t2 = image_path(cohort, "HX003", "T2")
    rewrite_as(t2, np.int16)
    truncate_inside_gzip(t2, 0.7)
    zeros = (sitk.GetArrayFromImage(sitk.ReadImage(str(t2))) == 0).mean()
    assert zeros > 0.25  # what the converter used to convert: 30% of the T2 silently 0
    err = assert_converter_refused(cohort, roots, capsys, ["patient HX003", "T2.nii.gz", "cut short",
                                                           "70% of the voxel data"])
    assert "promises" in err


# ---- item 6: a truncated float file, also with --overwrite (the old dataset survives)
def test_convert_truncated_float_file_is_a_message_and_overwrite_keeps_the_old_dataset(cohort, roots, capsys):
    rc, out, err = convert_cli(cohort, capsys)
    assert rc == 0, err
    before = tree(roots["raw"] / FOLDER)
    truncate_gzip(image_path(cohort, "HX004", "ADC"), 0.6)  # float32
    rc, out, err = convert_cli(cohort, capsys, "--overwrite")
    assert rc == 2
    assert "Traceback" not in err and "EOFError" not in err
    assert "patient HX004" in err and "ADC.nii.gz" in err and "cut short" in err
    assert tree(roots["raw"] / FOLDER) == before
    assert not [p for p in roots["raw"].iterdir() if p.name.startswith(".")]


# ---- item 2: blank series
@pytest.mark.parametrize("series,value", [("T2", 0.0), ("ADC", 0.0), ("ADC", 700.0), ("Kapp", 0.0)])
def test_convert_refuses_a_constant_series(cohort, roots, capsys, series, value):
    rewrite_as(image_path(cohort, "HX005", series), np.float32, lambda a: a.fill(value))
    assert_converter_refused(cohort, roots, capsys, ["patient HX005", f"series {series}", f"{series}.nii.gz",
                                                     "constant", "--allow-constant-series"])


def test_convert_constant_series_with_opt_in_flag_warns(cohort, roots, capsys):
    rewrite_as(image_path(cohort, "HX005", "T2"), np.float32, lambda a: a.fill(0.0))
    rc, out, err = convert_cli(cohort, capsys, "--allow-constant-series")
    assert rc == 0, err
    assert "WARNING: patient HX005: series T2" in err and "constant" in err
    assert (roots["raw"] / FOLDER / "dataset.json").is_file()


# ---- item 8: misleading messages
def test_convert_decimal_comma_is_named_as_such(cohort, roots, capsys):
    path = cohort / "clinical.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    age = header.index("age")
    cells[age] = cells[age].replace(".", ",") if "." in cells[age] else cells[age] + ",5"
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    err = assert_converter_refused(cohort, roots, capsys, ["clinical.csv", "line 2", "HX001", "decimal comma"])
    assert "duplicate" not in err


def test_convert_semicolon_delimited_table_gets_a_hint(cohort, roots, capsys):
    path = cohort / "clinical.csv"
    pd.read_csv(path, dtype=str).to_csv(path, sep=";", index=False)
    assert_converter_refused(cohort, roots, capsys, ["clinical.csv", "semicolon", "comma-separated"])


def test_convert_lower_case_file_name_gets_a_hint(cohort, roots, capsys):
    t2 = image_path(cohort, "HX002", "T2")
    t2.rename(t2.with_name("t2.nii.gz"))
    assert_converter_refused(cohort, roots, capsys, ["patient HX002", "missing file", "T2.nii.gz",
                                                     "found t2.nii.gz", "case-sensitive"])


# ============================================================================ predictor
CHANNEL_NAMES = {"0": "T2", "1": "ADC", "2": "Dapp", "3": "Kapp"}


@pytest.fixture
def fake_model(tmp_path):
    """A model folder holding only dataset.json: enough for every refusal that comes before the
    checkpoints are loaded (a run that gets past them fails on the missing plans.json)."""
    results = tmp_path / "results"
    folder = results / FOLDER / "MultiRecTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": CHANNEL_NAMES, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "tumour": 1}}))
    env = dict(os.environ, nnUNet_results=str(results), nnUNet_raw=str(tmp_path / "raw"),
               nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_extTrainer=os.pathsep.join([str(REPO / "trainers"), str(REPO / "benchmarks" / "trainers")]),
               PYTHONPATH=str(REPO), nnUNet_compile="f")
    return {"folder": folder, "env": env}


def input_folder(path: Path, cases=("LARC_0001", "LARC_0002")) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in cases:
        for ch in range(4):
            array = (rng.normal(size=(6, 18, 20)) * 100 + 500).astype(np.int16)
            write_image(array, path / f"{case}_{ch:04d}.nii.gz", T2_SPACING, T2_ORIGIN)
    return path


def predict_cli(env, inp, out, *extra):
    cmd = [str(Path(sys.executable).with_name("nnUNetv2_predict_multitask")), "-i", str(inp), "-o", str(out),
           "-d", FOLDER, "-c", "3d_fullres", "-device", "cpu", "-npp", "0", "-nps", "0", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


# ---- item 4: a fold named twice
def test_predict_refuses_a_fold_given_twice(fake_model, tmp_path):
    inp, out = input_folder(tmp_path / "in"), tmp_path / "out"
    proc = predict_cli(fake_model["env"], inp, out, "-f", "0", "0")
    assert proc.returncode == 2, proc.stderr
    assert "fold(s) 0 given more than once" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_predictor_api_refuses_duplicate_folds(fake_model):
    from nnunet_multitask.prediction_artifact import MultitaskPredictionError
    from nnunet_multitask.prediction_engine import MultiTaskPredictor
    predictor = MultiTaskPredictor(device=__import__("torch").device("cpu"), allow_tqdm=False)
    with pytest.raises(MultitaskPredictionError, match=r"fold\(s\) 1 given more than once"):
        predictor.initialize_from_trained_model_folder(str(fake_model["folder"]), ["1", 0, 1])


# ---- item 1: a channel cut short, refused before anything is loaded or written
@pytest.mark.parametrize("damage", ["gzip stream", "inside gzip"])
def test_predict_refuses_a_truncated_channel(fake_model, tmp_path, damage):
    inp = input_folder(tmp_path / "in")
    bad = inp / "LARC_0002_0001.nii.gz"
    (truncate_gzip if damage == "gzip stream" else truncate_inside_gzip)(bad, 0.7)
    sitk.ReadImage(str(bad))  # SimpleITK still reads it
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.csv").write_text("kept")
    proc = predict_cli(fake_model["env"], inp, out, "-f", "0")
    assert proc.returncode == 2, proc.stderr
    assert "case LARC_0002" in proc.stderr and "LARC_0002_0001.nii.gz" in proc.stderr
    assert "cut short" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(out) == {"earlier.csv": b"kept"}


# ---- item 9: staging folder of a killed run; two runs at once
def test_predict_removes_the_staging_folder_of_a_killed_run(fake_model, tmp_path):
    inp, out = input_folder(tmp_path / "in"), tmp_path / "out"
    stale = out / ".nnunet_multitask_partial_k1ll3d"
    stale.mkdir(parents=True)
    (stale / "LARC_0001.nii.gz").write_bytes(b"half")
    (out / "earlier.csv").write_text("kept")
    proc = predict_cli(fake_model["env"], inp, out, "-f", "0")
    # the fake model has no plans.json: the run fails after taking the folder, as a real run would go on
    assert proc.returncode == 2 and "plans.json missing" in proc.stderr, proc.stderr
    assert f"removed {stale}" in proc.stderr and "interrupted" in proc.stderr
    assert tree(out) == {"earlier.csv": b"kept"}
    assert sorted(os.listdir(out)) == ["earlier.csv"]


def test_predict_refuses_a_second_run_into_the_same_folder(fake_model, tmp_path):
    inp, out = input_folder(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "earlier.csv").write_text("kept")
    staging = out / ".nnunet_multitask_partial_running"  # the running prediction's own staging folder
    staging.mkdir()
    lock = out / ".nnunet_multitask.lock"
    with open(lock, "w") as held:  # stands in for the run in progress
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on somehost, started 2025-01-01T00:00:00+00:00\n")
        held.flush()
        proc = predict_cli(fake_model["env"], inp, out, "-f", "0")
    assert proc.returncode == 2, proc.stderr
    assert "another nnUNetv2_predict_multitask run (pid 4242" in proc.stderr and str(out) in proc.stderr
    assert staging.is_dir(), "the running prediction's staging folder must not be touched"
    assert (out / "earlier.csv").read_text() == "kept"


# ============================================================================ evaluation
OUTCOMES = {"case_id": ["a", "b", "c", "d", "e", "f"], "dfs_months": [10, 20, 30, 40, 50, 60],
            "dfs_event": [1, 0, 1, 0, 1, 0]}
PREDICTIONS = {"case_id": ["a", "b", "c", "d", "e", "f"], "risk_score": [3.0, 0.5, 2.0, 0.1, 1.0, 0.2],
               "p_recurrence_36m": [0.9, 0.2, 0.7, 0.1, 0.5, 0.3]}


def eval_cli(capsys, *argv):
    rc = SE.main(["--bootstrap", "20", "--no-figures", *map(str, argv)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err


@pytest.fixture
def eval_inputs(tmp_path):
    outcomes, predictions = tmp_path / "outcomes.csv", tmp_path / "model.csv"
    pd.DataFrame(OUTCOMES).to_csv(outcomes, index=False)
    pd.DataFrame(PREDICTIONS).to_csv(predictions, index=False)
    return outcomes, predictions


# ---- item 5
@pytest.mark.parametrize("horizon", ["0", "-12", "nan"])
def test_evaluate_refuses_a_horizon_that_is_not_positive(eval_inputs, tmp_path, capsys, horizon):
    outcomes, predictions = eval_inputs
    rc, out, err = eval_cli(capsys, "--predictions", predictions, "--outcomes", outcomes, "--horizon", horizon,
                            "-o", tmp_path / "report")
    assert rc == 2 and "--horizon must be a finite number of months > 0" in err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("stored", [0, -36])
def test_evaluate_refuses_a_bad_horizon_in_dataset_json(tmp_path, monkeypatch, capsys, stored):
    raw = tmp_path / "raw"
    dataset = raw / "Dataset777_X"
    dataset.mkdir(parents=True)
    pd.DataFrame({**OUTCOMES, "set": ["internal_test"] * 6}).to_csv(dataset / "outcomes_test.csv", index=False)
    (dataset / "dataset.json").write_text(json.dumps({"multitask": {
        "test_outcomes_table": "outcomes_test.csv", "internal_test": OUTCOMES["case_id"], "external_test": [],
        "horizon_months": stored, "time_column": "dfs_months", "event_column": "dfs_event",
        "clinical_columns": {}}}))
    predictions = tmp_path / "model.csv"
    pd.DataFrame(PREDICTIONS).to_csv(predictions, index=False)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    rc, out, err = eval_cli(capsys, "--predictions", predictions, "--dataset", "777", "-o", tmp_path / "report")
    assert rc == 2 and "dataset.json: multitask.horizon_months must be a finite number of months > 0" in err
    assert str(dataset / "dataset.json") in err
    assert not (tmp_path / "report").exists()


# ---- item 3
def test_evaluate_refuses_a_predictions_file_without_rows(eval_inputs, tmp_path, capsys):
    outcomes, _ = eval_inputs
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("case_id,risk_score,p_recurrence_36m\n")
    rc, out, err = eval_cli(capsys, "--predictions", header_only, "--outcomes", outcomes, "-o", tmp_path / "report")
    assert rc == 2 and "header_only.csv: a header and no rows" in err
    assert not (tmp_path / "report").exists()


def test_evaluate_refuses_no_case_in_common_even_with_allow_unmatched(eval_inputs, tmp_path, capsys):
    outcomes, _ = eval_inputs
    other = tmp_path / "other.csv"
    pd.DataFrame({**PREDICTIONS, "case_id": [f"z{i}" for i in range(6)]}).to_csv(other, index=False)
    rc, out, err = eval_cli(capsys, "--predictions", other, "--outcomes", outcomes, "--allow-unmatched",
                            "-o", tmp_path / "report")
    assert rc == 2 and "other.csv: none of its 6 case(s)" in err and "has an outcome" in err
    assert not (tmp_path / "report").exists()


def test_evaluate_prints_excluded_cases_on_the_console(eval_inputs, tmp_path, capsys):
    outcomes, _ = eval_inputs
    fewer = tmp_path / "fewer.csv"
    pd.DataFrame(PREDICTIONS).iloc[:5].to_csv(fewer, index=False)
    rc, out, err = eval_cli(capsys, "--predictions", fewer, "--outcomes", outcomes, "-o", tmp_path / "report")
    assert rc == 0, err
    assert "Excluded cases" in out and "outcome case without a prediction" in out and ": f" in out
    assert "Excluded cases: none" not in out


@pytest.mark.parametrize("which", ["--seg-pred", "--seg-gt"])
def test_evaluate_refuses_segmentation_folders_that_do_not_exist(eval_inputs, tmp_path, capsys, which):
    outcomes, predictions = eval_inputs
    (tmp_path / "segs").mkdir()
    folders = {"--seg-pred": tmp_path / "segs", "--seg-gt": tmp_path / "segs"}
    folders[which] = tmp_path / "no_such_folder"
    rc, out, err = eval_cli(capsys, "--predictions", predictions, "--outcomes", outcomes,
                            "--seg-pred", folders["--seg-pred"], "--seg-gt", folders["--seg-gt"],
                            "-o", tmp_path / "report")
    assert rc == 2 and f"{which} {tmp_path / 'no_such_folder'}" in err and "folder not found" in err
    assert not (tmp_path / "report").exists()


# ---- item 7
def test_evaluate_empty_csv_is_a_message(eval_inputs, tmp_path, capsys):
    outcomes, _ = eval_inputs
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    rc, out, err = eval_cli(capsys, "--predictions", empty, "--outcomes", outcomes, "-o", tmp_path / "report")
    assert rc == 2 and "empty.csv: the file is empty" in err
    rc, out, err = eval_cli(capsys, "--predictions", eval_inputs[1], "--outcomes", empty, "-o", tmp_path / "report")
    assert rc == 2 and "empty.csv: the file is empty" in err
    assert not (tmp_path / "report").exists()


def test_evaluate_output_that_is_a_file_is_a_message(eval_inputs, tmp_path, capsys):
    outcomes, predictions = eval_inputs
    blocker = tmp_path / "report"
    blocker.write_text("x")
    rc, out, err = eval_cli(capsys, "--predictions", predictions, "--outcomes", outcomes, "-o", blocker)
    assert rc == 2 and f"-o {blocker}: exists and is not a folder" in err
    assert blocker.read_text() == "x"


def test_evaluate_all_events_at_one_time_gives_reasons_not_a_crash(tmp_path, capsys):
    outcomes = tmp_path / "outcomes.csv"
    pd.DataFrame({"case_id": list("abcdef"), "dfs_months": [20.0] * 6, "dfs_event": [1] * 6}).to_csv(outcomes,
                                                                                                  index=False)
    predictions = tmp_path / "model.csv"
    pd.DataFrame(PREDICTIONS).to_csv(predictions, index=False)
    rc, out, err = eval_cli(capsys, "--predictions", predictions, predictions, "--names", "A", "B",
                            "--outcomes", outcomes, "-o", tmp_path / "report")
    assert rc == 0, err
    result = json.loads((tmp_path / "report" / "metrics.json").read_text())["models"]["A"]["all"]
    assert result["logrank_p"] is None and "Singular matrix" in result["logrank_p_reason"]
    assert result["c_index"] is None and "no comparable pairs" in result["c_index_reason"]
    assert result["uno_c"] is None and result["uno_c_reason"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "`logrank_p` n/a" in report and "| nan" not in report
