"""Missing MRI series (issue 13) end to end with the real nnU-Net commands: a tiny cohort where some
patients lack Dapp and Kapp is converted with --allow-missing-series, planned and preprocessed,
trained with MultiRecTrainer_ModalityDropout_smoke, and predicted on a folder in which one case
lacks Dapp and Kapp and another ADC. Plus the unit-level pieces (availability in the heads, the
dropout draw, the standardisation over real series).

The cohort is converted with a non-integer horizon (18.5 months), so the same run is the end-to-end
test of issue 11.1's column naming: training, prediction and evaluation all name it ``18.5m``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, bin_of, nnunet_env, run, train_env
from nnunet_multitask.trainer import MultiRecTrainerBase, quantity_statistics

DATASET_ID = "504"
HORIZON = "18.5"
DATASET_NAME = "Dataset504_LARCGAPS"
TRAINER = "MultiRecTrainer_ModalityDropout_smoke"
SERIES = ("T2", "ADC", "Dapp", "Kapp")


# ---------------------------------------------------------------------------- unit level
def _tiny_network(channel_availability: bool):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_multitask.network import MultiTaskUNet
    base = PlainConvUNet(4, 2, (4, 8), torch.nn.Conv3d, 3, (1, 2), (1, 1), 2, (1,), False,
                         torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU)
    return MultiTaskUNet(base, None, 0, 0, survival_head="discrete", n_time_bins=3, hidden=8,
                         channel_availability=channel_availability)


def test_heads_read_availability_and_ignore_a_missing_series_value():
    torch.manual_seed(0)
    net = _tiny_network(True).eval()
    assert net.image_embedding[0].in_features == 1 + 4 + 4  # volume, 4 tumour means, 4 flags
    q = torch.tensor([[0.3, 1.0, -2.0, 5.0, 7.0]])
    both = torch.ones(1, 4)
    no_dki = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    feats = net.image_feature_vector(q, None, no_dki)
    # the tumour means of the missing series are the fold mean (0), the flags say they are missing
    torch.testing.assert_close(feats, torch.tensor([[0.3, 1.0, -2.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]]))
    # whatever the filler measured, a missing series contributes nothing but its flag
    q_other = q.clone()
    q_other[0, 3:] = torch.tensor([-40.0, 99.0])
    torch.testing.assert_close(net.heads(net.image_feature_vector(q_other, None, no_dki), None)["cls_logit"],
                               net.heads(feats, None)["cls_logit"])
    assert not torch.allclose(net.image_feature_vector(q, None, both), feats)
    # no availability given = every series real
    torch.testing.assert_close(net.image_feature_vector(q, None, None), net.image_feature_vector(q, None, both))
    # a model without availability keeps the earlier input width
    assert _tiny_network(False).image_embedding[0].in_features == 1 + 4


def test_quantity_statistics_skip_filled_series():
    q = np.array([[1.0, 2.0, 10.0], [3.0, 4.0, 0.0], [5.0, 6.0, 20.0]])
    avail = np.array([[1, 1], [1, 0], [1, 1]])
    mean, std = quantity_statistics(q, avail)
    np.testing.assert_allclose(mean, [3.0, 4.0, 15.0])
    np.testing.assert_allclose(std, [np.std([1, 3, 5]), np.std([2, 4, 6]), 5.0])
    mean, std = quantity_statistics(q, np.array([[1, 0], [1, 0], [1, 0]]))
    assert mean[2] == 0 and std[2] == 1  # a series no training case has


def test_modality_dropout_never_drops_t2_and_draws_every_subset():
    keys = [f"c{i}" for i in range(4000)]
    real = {k: np.ones(4, np.float32) for k in keys}
    real["c0"] = np.array([1, 1, 0, 0], np.float32)  # a case that really lacks Dapp and Kapp
    fake = SimpleNamespace(_case_data={k: {"availability": a} for k, a in real.items()},
                           droppable_channels=[1, 2, 3], modality_dropout_rate=0.5)
    torch.manual_seed(0)
    drawn = MultiRecTrainerBase.batch_availability(fake, keys, drop=True)
    assert (drawn[:, 0] == 1).all(), "T2 was dropped"
    assert (drawn[0, 2:] == 0).all(), "a real gap was filled in"
    dropped = (drawn[1:, 1:] == 0).any(1)
    assert abs(dropped.mean() - 0.5) < 0.03
    patterns = {tuple(r) for r in drawn[1:, 1:][dropped].astype(int)}
    assert len(patterns) == 7 and (1, 1, 1) not in patterns
    # validation and prediction use the true availability
    assert (MultiRecTrainerBase.batch_availability(fake, keys[:3], drop=False) == np.stack(
        [real[k] for k in keys[:3]])).all()
    fake.modality_dropout_rate = 0.0
    assert (MultiRecTrainerBase.batch_availability(fake, keys[1:50], drop=True) == 1).all()


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def gaps_dataset(tmp_path_factory):
    """12 synthetic patients, 40% of them without Dapp and Kapp, converted with --allow-missing-series
    and preprocessed by the real nnU-Net command."""
    root = tmp_path_factory.mktemp("gaps")
    env = dict(nnunet_env(root))
    cohort = root / "cohort"
    run([sys.executable, "-m", "dataset_conversion.synthetic_larc", "--out", str(cohort), "--patients", "12",
         "--seed", "3", "--shape", "32", "32", "8", "--missing-series", "Dapp,Kapp:0.4"], env, cwd=REPO)
    refused = subprocess.run([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", str(cohort),
                              "--dataset-id", DATASET_ID, "--name", "LARCGAPS"], env=env, cwd=REPO,
                             capture_output=True, text=True)
    run([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", str(cohort), "--dataset-id",
         DATASET_ID, "--name", "LARCGAPS", "--allow-missing-series", "--horizon", HORIZON], env, cwd=REPO)
    run([bin_of("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", "1", "-npfp", "1",
         "--verify_dataset_integrity"], env, cwd=REPO)
    raw = root / "nnUNet_raw" / DATASET_NAME
    return dict(root=root, env=env, cohort=cohort, raw=raw, refused=refused,
                preprocessed=root / "nnUNet_preprocessed" / DATASET_NAME,
                availability=pd.read_csv(raw / "series_availability.csv", dtype={"case_id": str}).set_index("case_id"))


def test_conversion_without_the_flag_names_the_patient(gaps_dataset):
    refused = gaps_dataset["refused"]
    assert refused.returncode != 0
    assert "Dapp" in refused.stderr and "--allow-missing-series" in refused.stderr


def test_filler_is_zero_after_nnunet_preprocessing(gaps_dataset):
    avail = gaps_dataset["availability"]
    splits = json.loads((gaps_dataset["preprocessed"] / "splits_final.json").read_text())
    train_cases = set(splits[0]["train"]) | set(splits[0]["val"])
    lacking = [c for c in avail.index if c in train_cases and avail.loc[c, "Dapp"] == 0]
    having = [c for c in avail.index if c in train_cases and avail.loc[c, "Dapp"] == 1]
    assert lacking and having, avail
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    pre = gaps_dataset["preprocessed"] / "nnUNetPlans_3d_fullres"
    ds = infer_dataset_class(str(pre))(str(pre), lacking + having[:1])
    for c in lacking:
        data = np.asarray(ds.load_case(c)[0][:])
        assert np.all(data[2] == 0) and np.all(data[3] == 0), c
        assert np.abs(data[0]).max() > 0 and np.abs(data[1]).max() > 0
    data = np.asarray(ds.load_case(having[0])[0][:])
    assert np.abs(data[2]).max() > 0
    # z-score per image for every channel: the dataset fingerprint's intensity statistics (which
    # include the filler) do not enter the preprocessing
    plans = json.loads((gaps_dataset["preprocessed"] / "nnUNetPlans.json").read_text())
    assert set(plans["configurations"]["3d_fullres"]["normalization_schemes"]) == {"ZScoreNormalization"}


@pytest.fixture(scope="module")
def dropout_model(gaps_dataset):
    env = dict(train_env(gaps_dataset["env"]), MULTIREC_SEED="2")
    run([bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env, cwd=REPO)
    return dict(gaps_dataset, folder=gaps_dataset["root"] / "nnUNet_results" / DATASET_NAME /
                f"{TRAINER}__nnUNetPlans__3d_fullres")


def test_model_without_availability_refuses_a_dataset_with_gaps(gaps_dataset, tmp_path):
    env = dict(train_env(gaps_dataset["env"]), nnUNet_results=str(tmp_path))
    proc = subprocess.run([bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", "MultiRecTrainer_smoke",
                           "-device", "cpu"], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "MultiRecTrainer_ModalityDropout" in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("checkpoint_final.pth"))


def _input_folder(raw: Path, dst: Path, drop: dict) -> list:
    """The test cases of imagesTs (symlinks), with the series of ``drop[case]`` left out."""
    dst.mkdir(parents=True)
    cases = sorted({p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesTs").glob("*_0000.nii.gz")})
    for case in cases:
        for i, name in enumerate(SERIES):
            src = raw / "imagesTs" / f"{case}_{i:04d}.nii.gz"
            if src.is_file() and name not in drop.get(case, ()):
                (dst / src.name).symlink_to(src)
    return cases


def test_predict_with_missing_series(dropout_model, tmp_path):
    raw, env = dropout_model["raw"], dropout_model["env"]
    ckpt = torch.load(dropout_model["folder"] / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)
    assert ckpt["init_args"]["plans"]["multitask_model"]["channel_availability"] is True
    cases = sorted({p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesTs").glob("*_0000.nii.gz")})
    assert len(cases) >= 3
    drop = {cases[0]: ("Dapp", "Kapp"), cases[1]: ("ADC",)}
    inp = tmp_path / "in"
    _input_folder(raw, inp, drop)
    common = ["-d", DATASET_ID, "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu",
              "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0"]
    # without the flag: refused before anything is predicted, naming the case and what to do
    out_refused = tmp_path / "refused"
    proc = subprocess.run([bin_of("nnUNetv2_predict_multitask"), "-i", str(inp), "-o", str(out_refused), *common],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr
    assert cases[0] in proc.stderr and "--allow-missing-series" in proc.stderr
    assert not out_refused.exists()

    out = tmp_path / "out"
    run([bin_of("nnUNetv2_predict_multitask"), "-i", str(inp), "-o", str(out), *common, "--allow-missing-series"],
        env, timeout=900)
    table = pd.read_csv(out / "predictions.csv", dtype={"case_id": str}).set_index("case_id")
    assert sorted(table.index) == cases
    real = dropout_model["availability"]
    for case in cases:
        expected = [s for s in SERIES if real.loc[case, s] == 1 and s not in drop.get(case, ())]
        assert table.loc[case, "series_available"] == ";".join(expected), case
        assert (out / f"{case}.nii.gz").is_file()
    assert np.isfinite(table["risk_score"]).all()
    assert not [p for p in out.iterdir() if p.name.startswith(".nnunet_multitask")], "temporary input left"
    meta = json.loads((out / "predictions.json").read_text())
    assert meta["allow_missing_series"] is True and meta["channel_availability"] is True
    assert meta["horizon_months"] == 18.5 and f"p_recurrence_{HORIZON}m" in table.columns
    assert f"surv_prob_{HORIZON}m" in table.columns
    # the training's own head validation and the evaluation name the same non-integer horizon
    summary = json.loads((dropout_model["folder"] / "fold_0" / "validation" / "head_summary.json").read_text())
    assert f"auc_{HORIZON}m" in summary
    report = tmp_path / "report"
    run([sys.executable, "evaluation/survival_eval.py", "--predictions", str(out / "predictions.csv"),
         "--dataset", DATASET_ID, "--bootstrap", "20", "-o", str(report)], env, cwd=REPO)
    metrics = json.loads((report / "metrics.json").read_text())
    counts = metrics["counts"]["models"]["predictions"]
    assert counts["p_recurrence_column"] == f"p_recurrence_{HORIZON}m"  # not a fallback on risk_score
    assert counts["surv_prob_horizon_column"] == f"surv_prob_{HORIZON}m"
    assert metrics["settings"]["horizon_months"] == 18.5

    # the availability reaches the heads: the same case with all its series, and with Dapp/Kapp
    # taken away, gets different risks
    full = tmp_path / "full"
    _input_folder(raw, full, {})
    out_full = tmp_path / "out_full"
    run([bin_of("nnUNetv2_predict_multitask"), "-i", str(full), "-o", str(out_full), *common,
         "--allow-missing-series"], env, timeout=900)
    full_table = pd.read_csv(out_full / "predictions.csv", dtype={"case_id": str}).set_index("case_id")
    if real.loc[cases[0], "Dapp"] == 1:
        assert full_table.loc[cases[0], "risk_score"] != pytest.approx(table.loc[cases[0], "risk_score"], abs=1e-7)
    np.testing.assert_allclose(full_table.loc[cases[2:], "risk_score"], table.loc[cases[2:], "risk_score"],
                               rtol=1e-5, atol=1e-6)


def test_model_without_availability_refuses_cases_with_gaps(smoke_model, tmp_path):
    """The shared smoke model (MultiRecTrainer_smoke, all four series, no availability flags)."""
    raw = Path(smoke_model["raw"])
    case = sorted({p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesTs").glob("*_0000.nii.gz")})[0]
    inp = tmp_path / "in"
    inp.mkdir()
    for i in (0, 1):
        (inp / f"{case}_{i:04d}.nii.gz").symlink_to(raw / "imagesTs" / f"{case}_{i:04d}.nii.gz")
    proc = subprocess.run([bin_of("nnUNetv2_predict_multitask"), "-i", str(inp), "-o", str(tmp_path / "out"),
                           "-d", "501", "-c", "3d_fullres", "-tr", "MultiRecTrainer_smoke", "-f", "0", "-device", "cpu",
                           "--allow-missing-series", "-npp", "0", "-nps", "0"], env=smoke_model["env"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr
    assert case in proc.stderr and "Dapp" in proc.stderr and "MultiRecTrainer_ModalityDropout" in proc.stderr
    # T2 stays required
    (inp / f"{case}_0000.nii.gz").unlink()
    (inp / f"{case}_0002.nii.gz").symlink_to(raw / "imagesTs" / f"{case}_0002.nii.gz")
    proc = subprocess.run([bin_of("nnUNetv2_predict_multitask"), "-i", str(inp), "-o", str(tmp_path / "out2"),
                           "-d", "501", "-c", "3d_fullres", "-tr", "MultiRecTrainer_smoke", "-f", "0", "-device", "cpu",
                           "--allow-missing-series"], env=smoke_model["env"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 2 and "T2 is required" in proc.stderr, proc.stderr
