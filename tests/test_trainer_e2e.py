"""End to end: the real nnUNetv2_train with MultiRec trainers on a tiny converted synthetic cohort."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch

from clinical.preprocessing import ClinicalPreprocessor
from nnunet_multitask.contract import DatasetContract
from nnunet_multitask.dataset_tables import read_features
from conftest import DATASET_ID, SMOKE_SEED, bin_of, run, train_env

HEAD_KEYS = ("classification_head.weight", "survival_output.weight", "clinical_embedding.0.weight",
             "image_embedding.0.weight", "clinical_state", "time_bin_edges", "fold_state_fitted",
             "quantity_mean", "quantity_std")


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_smoke_training_has_heads_metrics_and_fold_fitted_transform(smoke_model):
    fold = smoke_model["model_folder"] / "fold_0"
    ckpt = _ckpt(fold / "checkpoint_final.pth")
    w = ckpt["network_weights"]
    for k in HEAD_KEYS:
        assert k in w, f"checkpoint lacks {k}"
    assert bool(w["fold_state_fitted"])
    assert ckpt["trainer_name"] == "MultiRecTrainer_smoke"
    log = ckpt["logging"]
    assert len(log["val_c_index"]) == 3 and len(log["val_auc"]) == 3 and len(log["ema_selection_score"]) == 3
    assert (fold / "progress.png").is_file()
    text = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "val C-index" in text and "val AUC@36m" in text
    # issue 10.4: each epoch's head metrics cover every validation case of the fold, and say so
    import re
    splits0 = json.loads((smoke_model["root"] / "nnUNet_preprocessed" / smoke_model["raw"].name /
                          "splits_final.json").read_text())[0]
    covered = re.findall(r"patient level, (\d+) of (\d+) validation cases; whole fold", text)
    assert len(covered) == 3, text[-2000:]
    assert all(int(a) == int(b) == len(splits0["val"]) for a, b in covered)
    assert log["val_head_cases"] == [len(splits0["val"])] * 3

    # the clinical transform in the checkpoint is the one fitted on fold 0's TRAINING cases only
    raw = smoke_model["raw"]
    dj = json.loads((raw / "dataset.json").read_text())
    mt = dj["multitask"]
    splits = json.loads((smoke_model["root"] / "nnUNet_preprocessed" / raw.name / "splits_final.json").read_text())
    schema = DatasetContract.from_block(mt).schema()
    feats = read_features(raw / mt["clinical_table"], schema)
    expected = ClinicalPreprocessor(schema, ("pretreatment", "postoperative")).fit(
        feats.loc[splits[0]["train"]].reset_index())
    np.testing.assert_allclose(w["clinical_state"].numpy(), expected.state_vector())
    leaky = ClinicalPreprocessor(schema, ("pretreatment", "postoperative")).fit(feats.reset_index())
    assert not np.allclose(leaky.state_vector(), w["clinical_state"].numpy())

    # the tumour-quantity standardisation: reference masks of the TRAINING cases only, recomputed here
    # with numpy (log1p of volume in mm^3, mean of every channel inside the mask)
    plans = json.loads((smoke_model["model_folder"] / "plans.json").read_text())
    spacing = plans["configurations"]["3d_fullres"]["spacing"]
    assert plans["multitask_model"]["image_features"] == "tumour_quantities"
    assert plans["multitask_model"]["voxel_volume_mm3"] == pytest.approx(float(np.prod(spacing)))
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    pre = smoke_model["preprocessed"] / "nnUNetPlans_3d_fullres"
    ds = infer_dataset_class(str(pre))(str(pre), splits[0]["train"])
    q = []
    for k in splits[0]["train"]:
        data, seg, _, _ = ds.load_case(k)
        m = np.asarray(seg[:])[0] > 0
        d = np.asarray(data[:])
        q.append([np.log1p(m.sum() * np.prod(spacing))] + [d[c][m].mean() for c in range(d.shape[0])])
    np.testing.assert_allclose(w["quantity_mean"].numpy(), np.mean(q, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(w["quantity_std"].numpy(), np.std(q, 0), rtol=1e-3, atol=1e-4)

    # the heads' own optimiser travels inside nnU-Net's optimizer state (for --c)
    head_state = ckpt["optimizer_state"]["head_optimizer"]
    assert head_state["state"], "the head optimiser never stepped"
    assert head_state["param_groups"][0]["lr"] == pytest.approx(2e-3)
    assert ckpt["optimizer_state"]["param_groups"][0]["momentum"] == pytest.approx(0.99)
    assert f"MULTIREC_SEED={SMOKE_SEED}" in text

    # final validation wrote per-case head predictions beside nnU-Net's summary
    val = fold / "validation"
    assert (val / "summary.json").is_file()
    heads = pd.read_csv(val / "head_predictions.csv")
    assert sorted(heads.case_id) == sorted(splits[0]["val"])
    assert {"risk_score", "p_recurrence_36m", "surv_prob_36m", "tumour_found"} <= set(heads.columns)
    assert np.isfinite(heads.risk_score).all()
    assert (heads.p_recurrence_36m.between(0, 1)).all()
    assert (val / "head_summary.json").is_file()
    # no patient identifiers anywhere in what training wrote
    for p in smoke_model["model_folder"].rglob("*"):
        if p.is_file() and p.suffix in (".json", ".csv", ".txt"):
            assert "P00" not in p.read_text(errors="ignore"), f"patient id in {p}"


def test_seeded_training_is_repeatable(smoke_model, tmp_path):
    """MULTIREC_SEED with the single-threaded augmenter: a second run gives the same weights, up to
    the float rounding of multi-threaded CPU kernels (seen: < 1e-4 after nine steps). Unseeded runs
    differ from the first step on (different initialisations, O(0.1) per weight)."""
    env = dict(train_env(smoke_model["env"]), MULTIREC_SEED=SMOKE_SEED, nnUNet_results=str(tmp_path))
    run([bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", "MultiRecTrainer_smoke", "-device", "cpu"],
        env)
    first = _ckpt(smoke_model["model_folder"] / "fold_0" / "checkpoint_final.pth")["network_weights"]
    second = _ckpt(next(tmp_path.rglob("checkpoint_final.pth")))["network_weights"]
    assert first.keys() == second.keys()
    for k in first:
        if first[k].is_floating_point():
            torch.testing.assert_close(first[k], second[k], rtol=0, atol=2e-3, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(first[k], second[k]), k


def test_continue_after_final_keeps_heads(smoke_model):
    env = train_env(smoke_model["env"])
    fold = smoke_model["model_folder"] / "fold_0"
    before = _ckpt(fold / "checkpoint_final.pth")["network_weights"]
    run([bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", "MultiRecTrainer_smoke", "-device", "cpu",
         "--c"], env)
    after = _ckpt(fold / "checkpoint_final.pth")["network_weights"]
    for k in HEAD_KEYS:
        torch.testing.assert_close(after[k], before[k])


def test_training_killed_mid_run_resumes_with_heads_transform_and_memory(preprocessed_dataset):
    """A Cox-head training is killed (SIGKILL) after its first checkpoint and finished with --c."""
    env = train_env(preprocessed_dataset["env"])
    folder = (preprocessed_dataset["root"] / "nnUNet_results" / "Dataset501_LARC" /
              "MultiRecTrainer_Cox_smoke__nnUNetPlans__3d_fullres" / "fold_1")
    cmd = [bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "1", "-tr", "MultiRecTrainer_Cox_smoke",
           "-device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = folder / "checkpoint_latest.pth"
    deadline = time.time() + 600
    while not latest.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let torch.save finish writing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.is_file(), "no checkpoint was written before the kill"
    assert not (folder / "checkpoint_final.pth").exists(), "training finished before it could be killed"
    killed = _ckpt(latest)
    mem_valid = killed["network_weights"]["risk_memory.valid"]
    assert mem_valid.any(), "the risk memory was empty at the checkpoint"

    run(cmd + ["--c"], env)
    final = _ckpt(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == 3
    w = final["network_weights"]
    torch.testing.assert_close(w["clinical_state"], killed["network_weights"]["clinical_state"])
    torch.testing.assert_close(w["time_bin_edges"], killed["network_weights"]["time_bin_edges"])
    # the memory resumed: every case held at the kill is still held (one entry per case, none
    # evicted below capacity), each case once; an entry unchanged since the kill kept its value
    def held(c):
        w_ = c["network_weights"]
        return {int(i): float(r) for i, r, v in zip(w_["risk_memory.case_id"], w_["risk_memory.log_risk"],
                                                    w_["risk_memory.valid"]) if v}
    before, after = held(killed), held(final)
    assert before and set(before) <= set(after)
    ids = [int(i) for i, v in zip(w["risk_memory.case_id"], w["risk_memory.valid"]) if v]
    assert len(ids) == len(set(ids)) and min(ids) >= 0
    for k in ("classification_head.weight", "survival_output.weight"):
        assert k in w
    # the heads' AdamW resumed with its moments: more steps recorded after --c than at the kill
    def steps(c):
        return max(float(s["step"]) for s in c["optimizer_state"]["head_optimizer"]["state"].values())
    assert steps(final) > steps(killed) > 0
