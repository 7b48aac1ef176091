"""nnUNetv2_predict_multitask: the real CLI on the tiny cohort with the MultiRecTrainer_smoke
model (session fixture ``smoke_model``), fold ensembling, bad inputs and safe checkpoint loading.

CLI runs are expensive on a loaded 2-core machine, so there are four (our CLI on the test cases,
our CLI on one case alone, nnU-Net's own ``nnUNetv2_predict`` on that case, our CLI failing on a
bad clinical table); everything else goes through the Python API, with test-time mirroring off
and one case where a prediction is needed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, bin_of, run
from clinical.tables import ClinicalTableError
from nnunet_multitask.checkpoints import CheckpointError, UnsafeCheckpointError, load_checkpoint_safely
from nnunet_multitask.contract import SURVIVAL_TIMES
from nnunet_multitask.prediction_artifact import MultitaskPredictionError
from nnunet_multitask.prediction_engine import MultiTaskPredictor
from nnunet_multitask.prediction_inputs import check_inputs
from nnunet_multitask.prediction_run import predict_folder
from nnunet_multitask.publish import check_output_folder

TRAINER = "MultiRecTrainer_smoke"
MODEL_DIR = f"{TRAINER}__nnUNetPlans__3d_fullres"
HORIZON = 36
VALUE_COLUMNS = ["risk_score", f"p_recurrence_{HORIZON}m"] + [f"surv_prob_{t}m" for t in SURVIVAL_TIMES]
EXPECTED_COLUMNS = (["case_id"] + VALUE_COLUMNS + [f"{c}_sd" for c in VALUE_COLUMNS]
                    + ["n_folds", "tumour_found", "clinical_imputed", "n_clinical_values_imputed", "series_available"])
# what nnUNetv2_predict would pass as flags; mirroring off keeps each CLI run short
CLI_COMMON = ["-d", DATASET_ID, "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu",
              "--disable_tta", "--disable_progress_bar"]


# ---------------------------------------------------------------------------- fixtures
def _copy_model_folder(src: Path, dst: Path, folds=(0,)) -> Path:
    """The files a prediction needs (not the 40 MB best checkpoint, logs or validation)."""
    dst.mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        shutil.copy(src / name, dst / name)
    for f in folds:
        (dst / f"fold_{f}").mkdir()
        shutil.copy(src / "fold_0" / "checkpoint_final.pth", dst / f"fold_{f}" / "checkpoint_final.pth")
    return dst


@pytest.fixture(scope="module")
def model(smoke_model, tmp_path_factory):
    """A private copy of the smoke model under its own nnUNet_results (other test files may go on
    training the shared one), and the environment that points nnU-Net at it."""
    results = tmp_path_factory.mktemp("predictor_results") / "nnUNet_results"
    folder = _copy_model_folder(Path(smoke_model["model_folder"]), results / "Dataset501_LARC" / MODEL_DIR)
    env = dict(smoke_model["env"], nnUNet_results=str(results))
    return dict(smoke_model, env=env, folder=folder, images_ts=Path(smoke_model["raw"]) / "imagesTs")


@pytest.fixture(scope="module")
def api_env(model):
    """nnU-Net's variables in this process (the trainer lookup and the dataset's clinical table)."""
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_compile"):
            mp.setenv(k, model["env"][k])
        yield model


def _test_cases(images: Path) -> list:
    return sorted({p.name[:-len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz")})


def _case_folder(images: Path, cases, dst: Path, channels=(0, 1, 2, 3)) -> Path:
    """An input folder holding (symlinks to) the given cases' channel files."""
    dst.mkdir(parents=True, exist_ok=True)
    for c in cases:
        for ch in channels:
            (dst / f"{c}_{ch:04d}.nii.gz").symlink_to(images / f"{c}_{ch:04d}.nii.gz")
    return dst


@pytest.fixture(scope="module")
def batch_run(model, tmp_path_factory):
    """Our CLI on every test case of imagesTs (worker processes: -npp 1 -nps 1)."""
    out = tmp_path_factory.mktemp("pred_batch") / "out"
    run([bin_of("nnUNetv2_predict_multitask"), "-i", str(model["images_ts"]), "-o", str(out), *CLI_COMMON,
         "-npp", "1", "-nps", "1"], model["env"], timeout=900)
    return dict(out=out, table=pd.read_csv(out / "predictions.csv", dtype={"case_id": str}))


@pytest.fixture(scope="module")
def single_case(model, tmp_path_factory):
    """One test case alone in its input folder, predicted by our CLI on nnU-Net's sequential path."""
    root = tmp_path_factory.mktemp("pred_single")
    case = _test_cases(model["images_ts"])[0]
    inp = _case_folder(model["images_ts"], [case], root / "in")
    out = root / "out"
    run([bin_of("nnUNetv2_predict_multitask"), "-i", str(inp), "-o", str(out), *CLI_COMMON,
         "-npp", "0", "-nps", "0"], model["env"], timeout=900)
    return dict(case=case, inp=inp, out=out, table=pd.read_csv(out / "predictions.csv", dtype={"case_id": str}))


def _predictor(model_folder, folds=(0,)) -> MultiTaskPredictor:
    p = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(model_folder), list(folds), "checkpoint_final.pth")
    return p


@pytest.fixture(scope="module")
def predictor(api_env):
    return _predictor(api_env["folder"])


def _read_seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ---------------------------------------------------------------------------- end to end (CLI)
def test_cli_writes_segmentations_and_patient_predictions(model, batch_run):
    out, table = batch_run["out"], batch_run["table"]
    cases = _test_cases(model["images_ts"])
    assert len(cases) >= 2
    for c in cases:  # one segmentation per test case, on the input grid, labels {0, 1}
        seg = sitk.ReadImage(str(out / f"{c}.nii.gz"))
        ref = sitk.ReadImage(str(model["images_ts"] / f"{c}_0000.nii.gz"))
        assert seg.GetSize() == ref.GetSize()
        assert np.allclose(seg.GetSpacing(), ref.GetSpacing()) and np.allclose(seg.GetOrigin(), ref.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}
    assert list(table["case_id"]) == cases
    assert table[["risk_score", f"p_recurrence_{HORIZON}m"]].notna().all().all()
    # nothing left from the staging folder
    assert not [p for p in os.listdir(out) if p.startswith(".")]

    meta = json.loads((out / "predictions.json").read_text())
    assert meta["trainer"] == TRAINER and meta["plans"] == "nnUNetPlans" and meta["configuration"] == "3d_fullres"
    assert meta["folds"] == ["0"] and meta["checkpoint"] == "checkpoint_final.pth"
    assert len(meta["checkpoint_sha256"]["0"]) == 64
    # the installed nnunetv2 is recorded, whichever 2.8.x setup.cfg let pip choose
    from importlib.metadata import version as installed_version
    assert meta["nnunetv2_version"] == installed_version("nnunetv2")
    assert meta["nnunet_multitask_version"] == installed_version("nnunet-multitask")
    assert meta["n_cases"] == len(cases) and meta["columns"] == list(table.columns)
    assert meta["clinical_table"].endswith("clinical.csv") and meta["horizon_months"] == HORIZON
    args = json.loads((out / "predict_from_raw_data_args.json").read_text())
    assert args["output_folder_or_list_of_truncated_output_files"] == str(out)


def test_csv_schema_dtypes_and_ranges(batch_run):
    table = batch_run["table"]
    assert list(table.columns) == EXPECTED_COLUMNS
    assert table["case_id"].map(type).eq(str).all() and table["case_id"].is_unique
    for c in VALUE_COLUMNS:
        assert table[c].dtype == np.float64 and np.isfinite(table[c]).all(), c
        # one fold: the spread over folds is undefined, written as an empty cell
        assert table[f"{c}_sd"].isna().all(), c
    assert table["n_folds"].dtype == np.int64 and (table["n_folds"] == 1).all()
    for c in ("tumour_found", "clinical_imputed"):
        assert table[c].dtype == bool, c
    assert not table["clinical_imputed"].any() and (table["n_clinical_values_imputed"] == 0).all()
    assert (table["series_available"] == "T2;ADC;Dapp;Kapp").all()
    probs = table[[f"p_recurrence_{HORIZON}m"] + [f"surv_prob_{t}m" for t in SURVIVAL_TIMES]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    surv = table[[f"surv_prob_{t}m" for t in SURVIVAL_TIMES]].to_numpy()
    assert (np.diff(surv, axis=1) <= 1e-12).all()
    # discrete-time head: the risk score is the cumulative hazard at the horizon, -log S(36)
    np.testing.assert_allclose(table["risk_score"], -np.log(table[f"surv_prob_{HORIZON}m"]), rtol=1e-6)


def test_case_alone_equals_case_in_batch(batch_run, single_case):
    case = single_case["case"]
    alone = single_case["table"]
    assert list(alone["case_id"]) == [case]
    in_batch = batch_run["table"].set_index("case_id").loc[case]
    for c in VALUE_COLUMNS:
        assert alone[c].iloc[0] == pytest.approx(in_batch[c], rel=1e-5, abs=1e-7), c
    assert bool(alone["tumour_found"].iloc[0]) == bool(in_batch["tumour_found"])
    np.testing.assert_array_equal(_read_seg(single_case["out"] / f"{case}.nii.gz"),
                                  _read_seg(batch_run["out"] / f"{case}.nii.gz"))


def test_nnunet_own_predict_gives_the_same_segmentation(model, single_case, tmp_path):
    """The model folder stays an ordinary nnU-Net model: nnUNetv2_predict runs on it unchanged."""
    out = tmp_path / "nnunet_out"
    run([bin_of("nnUNetv2_predict"), "-i", str(single_case["inp"]), "-o", str(out), *CLI_COMMON,
         "-npp", "0", "-nps", "0"], model["env"], timeout=900)
    case = single_case["case"]
    np.testing.assert_array_equal(_read_seg(out / f"{case}.nii.gz"), _read_seg(single_case["out"] / f"{case}.nii.gz"))


def test_cli_bad_clinical_table_fails_before_predicting(model, tmp_path):
    """A clinical CSV lacking a column the model was trained with: a clear message naming the file
    and the column, exit status 2, and no output written."""
    clinical = pd.read_csv(Path(model["raw"]) / "clinical.csv", dtype=str).drop(columns=["cea"])
    bad_csv = tmp_path / "clinical_no_cea.csv"
    clinical.to_csv(bad_csv, index=False)
    out = tmp_path / "out"
    proc = subprocess.run([bin_of("nnUNetv2_predict_multitask"), "-i", str(model["images_ts"]), "-o", str(out),
                           *CLI_COMMON, "-npp", "0", "-nps", "0", "--clinical", str(bad_csv)],
                          env=model["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(bad_csv) in proc.stderr and "'cea'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "predictions.csv").exists() and not out.exists()


# ---------------------------------------------------------------------------- fold ensembling (API)
def two_fold_model(src: Path, dst: Path, shifts: dict) -> Path:
    """A model folder whose fold_1 is fold_0 with some weights shifted by a constant."""
    folder = _copy_model_folder(src, dst, folds=(0,))
    ckpt = load_checkpoint_safely(str(folder / "fold_0" / "checkpoint_final.pth"))
    weights = {k: v.clone() for k, v in ckpt["network_weights"].items()}
    for name, shift in shifts.items():
        weights[name] += shift
    (folder / "fold_1").mkdir()
    torch.save({k: ckpt[k] for k in ("trainer_name", "init_args", "inference_allowed_mirroring_axes")}
               | {"network_weights": weights}, folder / "fold_1" / "checkpoint_final.pth")
    return folder


def test_fold_ensemble_means_and_spread(api_env, batch_run, tmp_path):
    """Two folds: fold_1 is fold_0 with perturbed head weights. The ensemble row is the mean of the
    per-fold values and *_sd their sample sd; fold 0 alone reproduces the CLI's row."""
    folder = two_fold_model(api_env["folder"], tmp_path / MODEL_DIR, {"classification_head.bias": 0.7,
                                                                      "survival_output.bias": -0.4})

    case = _test_cases(api_env["images_ts"])[0]
    inp = _case_folder(api_env["images_ts"], [case], tmp_path / "in")
    ensemble = _predictor(folder, folds=(0, 1))
    table = predict_folder(ensemble, str(inp), str(tmp_path / "out"))
    row = table.set_index("case_id").loc[case]
    assert row["n_folds"] == 2
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["folds"] == ["0", "1"]

    per_fold = ensemble.head_results[case]["folds"]
    values = {"risk_score": [f["risk_score"] for f in per_fold],
              f"p_recurrence_{HORIZON}m": [f["p_recurrence"] for f in per_fold]}
    values.update({f"surv_prob_{t}m": [f["survival"][t] for f in per_fold] for t in SURVIVAL_TIMES})
    batch_row = batch_run["table"].set_index("case_id").loc[case]
    for c, (v0, v1) in values.items():
        assert v0 == pytest.approx(batch_row[c], rel=1e-5, abs=1e-7), c  # fold 0 as in the single-fold CLI run
        assert row[c] == pytest.approx((v0 + v1) / 2, rel=1e-9), c
        assert row[f"{c}_sd"] == pytest.approx(abs(v0 - v1) / math.sqrt(2), rel=1e-9), c
        assert row[f"{c}_sd"] > 0, c
    # fold 1 on its own gives the values the ensemble used for it
    alone = predict_folder(_predictor(folder, folds=(1,)), str(inp), str(tmp_path / "out1")).set_index("case_id")
    for c, (_, v1) in values.items():
        assert alone.loc[case, c] == pytest.approx(v1, rel=1e-5, abs=1e-7), c
    # the perturbation moved the recurrence logit up: p rises in fold 1
    assert values[f"p_recurrence_{HORIZON}m"][1] > values[f"p_recurrence_{HORIZON}m"][0]


# ---------------------------------------------------------------------------- bad input (API)
def test_input_folder_checks(api_env, predictor, tmp_path):
    images, dj = api_env["images_ts"], predictor.dataset_json
    cases = _test_cases(images)
    assert check_inputs(str(_case_folder(images, cases[:2], tmp_path / "ok")), dj) == cases[:2]

    three = _case_folder(images, cases[:1], tmp_path / "three", channels=(0, 1, 2))
    with pytest.raises(MultitaskPredictionError, match=rf"case {cases[0]}: missing channel file\(s\) "
                                                       rf"\['{cases[0]}_0003.nii.gz'\]"):
        check_inputs(str(three), dj)

    five = _case_folder(images, cases[:1], tmp_path / "five")
    shutil.copy(images / f"{cases[0]}_0000.nii.gz", five / f"{cases[0]}_0004.nii.gz")
    with pytest.raises(MultitaskPredictionError, match=rf"{cases[0]}_0004.nii.gz.*channel index"):
        check_inputs(str(five), dj)

    misnamed = _case_folder(images, cases[:1], tmp_path / "misnamed")
    shutil.copy(images / f"{cases[0]}_0000.nii.gz", misnamed / "T2.nii.gz")
    with pytest.raises(MultitaskPredictionError, match=r"T2.nii.gz.*not named"):
        check_inputs(str(misnamed), dj)

    other_grid = _case_folder(images, cases[:1], tmp_path / "grid", channels=(0, 1, 2))
    sitk.WriteImage(sitk.Image([7, 7, 3], sitk.sitkFloat32), str(other_grid / f"{cases[0]}_0003.nii.gz"))
    with pytest.raises(MultitaskPredictionError,
                       match=rf"case {cases[0]}: {cases[0]}_0003.nii.gz is not on the grid of "
                             rf"{cases[0]}_0000.nii.gz \(size"):
        check_inputs(str(other_grid), dj)

    broken = _case_folder(images, cases[:1], tmp_path / "broken", channels=(0, 1, 2))
    (broken / f"{cases[0]}_0003.nii.gz").write_bytes(b"not an image")
    # damaged as a gzip stream: refused by the header-promise check before ITK would read it
    with pytest.raises(MultitaskPredictionError,
                       match=rf"case {cases[0]}: .*_0003.nii.gz(: the gzip stream is damaged| cannot be read)"):
        check_inputs(str(broken), dj)

    with pytest.raises(MultitaskPredictionError, match="input folder not found"):
        check_inputs(str(tmp_path / "absent"), dj)


def test_clinical_table_checks(api_env, predictor, tmp_path):
    clinical = pd.read_csv(Path(api_env["raw"]) / "clinical.csv", dtype=str)
    case = _test_cases(api_env["images_ts"])[0]

    lacking = tmp_path / "lacking.csv"
    clinical.drop(columns=["trg"]).to_csv(lacking, index=False)
    with pytest.raises(MultitaskPredictionError, match=r"lacking.csv: lacks clinical column\(s\) \['trg'\]"):
        predictor.set_clinical_table(str(lacking))

    undeclared = tmp_path / "undeclared.csv"
    bad = clinical.copy()
    bad.loc[bad["case_id"] == case, "ct"] = "T9"
    bad.to_csv(undeclared, index=False)
    with pytest.raises(ClinicalTableError, match=rf"(?s)undeclared.csv.*case_id {case}: column 'ct': value 'T9' is not "
                                                 rf"one of the declared categories"):
        predictor.set_clinical_table(str(undeclared))

    unknown = tmp_path / "unknown.csv"
    clinical.assign(smoker="1").to_csv(unknown, index=False)
    with pytest.raises(ClinicalTableError, match=r"unknown column\(s\) \['smoker'\]"):
        predictor.set_clinical_table(str(unknown))

    no_row = tmp_path / "no_row.csv"
    clinical[clinical["case_id"] != case].to_csv(no_row, index=False)
    predictor.set_clinical_table(str(no_row))
    with pytest.raises(MultitaskPredictionError, match=rf"case\(s\) \['{case}'\] have no row in the clinical "
                                                       rf"table .*no_row.csv.*--impute-missing-clinical"):
        predictor.check_clinical_rows([case])
    predictor.set_clinical_table(str(no_row), impute_missing=True)
    assert predictor.check_clinical_rows([case]) == [case]
    # a table with only the model's columns (and the id and centre) is enough
    minimal = tmp_path / "minimal.csv"
    clinical[["case_id", "centre", *predictor.model_clinical_columns()]].to_csv(minimal, index=False)
    predictor.set_clinical_table(str(minimal))
    assert predictor.check_clinical_rows([case]) == []
    predictor.set_clinical_table(None)


def test_missing_clinical_row_imputed_and_flagged(api_env, tmp_path):
    """--impute-missing-clinical: the case is predicted with every clinical value imputed by the
    fold's fitted transform, and flagged in the CSV."""
    clinical = pd.read_csv(Path(api_env["raw"]) / "clinical.csv", dtype=str)
    case = _test_cases(api_env["images_ts"])[0]
    no_row = tmp_path / "no_row.csv"
    clinical[clinical["case_id"] != case].to_csv(no_row, index=False)
    inp = _case_folder(api_env["images_ts"], [case], tmp_path / "in")
    p = _predictor(api_env["folder"])
    with pytest.raises(MultitaskPredictionError, match=rf"\['{case}'\] have no row"):
        predict_folder(p, str(inp), str(tmp_path / "refused"), clinical=str(no_row))
    assert not (tmp_path / "refused").exists()
    table = predict_folder(p, str(inp), str(tmp_path / "out"), clinical=str(no_row), impute_missing_clinical=True)
    row = table.set_index("case_id").loc[case]
    assert bool(row["clinical_imputed"]) and row["n_clinical_values_imputed"] == len(p.model_clinical_columns())
    assert np.isfinite(row["risk_score"]) and 0 <= row[f"p_recurrence_{HORIZON}m"] <= 1
    # the vector used is the fitted transform of an all-missing row (medians / modes)
    vec, imputed, n = p.clinical_vector(case, p.network.clinical_state)
    assert imputed and n == len(p.model_clinical_columns()) and vec.shape == (p.head_config.n_clinical_features,)


def test_model_folder_without_heads_is_refused(api_env, tmp_path):
    folder = _copy_model_folder(api_env["folder"], tmp_path / "plain")
    plans = json.loads((folder / "plans.json").read_text())
    del plans["multitask_model"]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(MultitaskPredictionError, match=r"plans.json has no 'multitask_model' block.*nnUNetv2_predict"):
        _predictor(folder)
    with pytest.raises(MultitaskPredictionError, match=r"checkpoint\(s\) not found.*fold_3"):
        _predictor(api_env["folder"], folds=(0, 3))


def test_checkpoint_not_matching_the_model_is_refused(api_env, tmp_path):
    """A checkpoint whose first convolution takes 3 channels, and one whose fitted clinical
    transform belongs to other clinical columns than the plans declare."""
    folder = _copy_model_folder(api_env["folder"], tmp_path / "channels")
    path = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint_safely(str(path))
    first_conv = next(k for k, v in ckpt["network_weights"].items() if k.endswith("conv.weight") and v.ndim == 5)
    assert ckpt["network_weights"][first_conv].shape[1] == 4
    ckpt["network_weights"][first_conv] = ckpt["network_weights"][first_conv][:, :3].clone()
    torch.save(ckpt, path)
    with pytest.raises(MultitaskPredictionError, match=rf"{path}: the weights do not fit.*{first_conv}"):
        _predictor(folder)

    folder = _copy_model_folder(api_env["folder"], tmp_path / "categories")
    plans = json.loads((folder / "plans.json").read_text())
    # same width (3 categories), other values: the fitted layout fingerprint no longer matches
    plans["multitask_model"]["clinical_columns"]["ct"]["categories"] = ["T1", "T2", "T3"]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(MultitaskPredictionError, match=r"checkpoint_final.pth: its fitted clinical transform does not "
                                                       r"match the clinical columns"):
        _predictor(folder)


def test_output_folder_that_cannot_be_written(api_env, predictor, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(MultitaskPredictionError, match=r"output folder .*a_file/out cannot be written"):
        check_output_folder(str(blocker / "out"))
    case = _test_cases(api_env["images_ts"])[0]
    inp = _case_folder(api_env["images_ts"], [case], tmp_path / "in")
    with pytest.raises(MultitaskPredictionError, match="cannot be written"):
        predict_folder(predictor, str(inp), str(blocker / "out"))
    assert blocker.read_text() == "x"


class _FailsOnSecondCase(MultiTaskPredictor):
    """Our predictor with a fault injected after the first case (a stand-in for a crash mid-run)."""
    calls = 0

    def predict_case_with_current_weights(self, data, clinical, availability=None):
        type(self).calls += 1
        if type(self).calls == 2:
            raise RuntimeError("injected failure")
        return super().predict_case_with_current_weights(data, clinical, availability)


def test_failure_mid_run_leaves_output_folder_untouched(api_env, tmp_path):
    cases = _test_cases(api_env["images_ts"])[:2]
    inp = _case_folder(api_env["images_ts"], cases, tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier_result.txt").write_text("kept")
    p = _FailsOnSecondCase(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(api_env["folder"]), [0], "checkpoint_final.pth")
    with pytest.raises(MultitaskPredictionError, match=rf"case {cases[1]}: prediction failed: RuntimeError: "
                                                       rf"injected failure"):
        predict_folder(p, str(inp), str(out))
    assert _FailsOnSecondCase.calls == 2  # the first case was predicted before the failure
    assert sorted(os.listdir(out)) == ["earlier_result.txt"]  # no CSV, no segmentation, no staging folder


# ---------------------------------------------------------------------------- safe loading
class _RunsACommandWhenUnpickled:
    """Pickles as a call to os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_pickled_callable_is_refused(api_env, tmp_path):
    marker = tmp_path / "code_was_executed"
    real = load_checkpoint_safely(str(api_env["folder"] / "fold_0" / "checkpoint_final.pth"))
    assert real["trainer_name"] == TRAINER  # nnU-Net's own checkpoint passes the allow-list
    evil = dict(real, extra=_RunsACommandWhenUnpickled(marker))
    folder = _copy_model_folder(api_env["folder"], tmp_path / "evil")
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(evil, path)
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: refused.*system"):
        load_checkpoint_safely(str(path))
    with pytest.raises(UnsafeCheckpointError):
        _predictor(folder)
    assert not marker.exists()

    # the payload is live: an unrestricted load does run the command (so the check above can fail)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint"):
        load_checkpoint_safely(str(path))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint_safely(str(tmp_path / "absent.pth"))

