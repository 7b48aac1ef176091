"""Row c, patch smaller than the image: does the patient-level prediction still track the whole tumour?

A synthetic cohort with a field of view twice the demo's in every direction (T2 96 x 96 x 24
voxels) is planned with nnU-Net, then a configuration ``3d_fullres_halfpatch`` is added to the
plans (``inherits_from: 3d_fullres``, the same preprocessed data) whose patch covers about half the
field of view in-plane, so every case is seen by several sliding-window tiles and most training
patches cut the tumour. An image-only model (``MultiRecTrainer_MRI_quality``, the quality budget)
is trained on it; its test-set predictions are compared with the image-only and volume-only
oracles, and the tumour volume of its predicted segmentation and its risk score with the true
tumour volume (Spearman).

    python benchmarks/bench_patch_tiles.py [--patients 160] [--seed 12] [--seeds 0] [--out FILE]

Everything lives under bench_run/patch_tiles/ (dataset 504); finished runs are reused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (BENCH_RUN, bin_of, command_line, load_average, machine_info, nnunet_env,  # noqa: E402
                               run_command, training_env, write_result)

DATASET_ID, LABEL = 504, "LARCTILES"
DATASET = f"Dataset{DATASET_ID}_{LABEL}"
CONFIG = "3d_fullres_halfpatch"
TRAINER = "MultiRecTrainer_MRI_quality"
HORIZON = 36


def log(msg):
    print(f"[patch_tiles] {msg}", flush=True)


def half_patch(plans: dict) -> list:
    """The 3d_fullres patch with its in-plane sides halved and rounded down to a multiple of the
    network's total stride on that axis (so the planned U-Net still fits); the slice axis is kept."""
    cfg = plans["configurations"]["3d_fullres"]
    total = np.array(cfg["architecture"]["arch_kwargs"]["strides"]).prod(0)
    patch = [int(v) for v in cfg["patch_size"]]
    return [patch[0]] + [int(max(s, (p // 2) // s * s)) for p, s in zip(patch[1:], total[1:])]


def prepare(root: Path, patients: int, seed: int) -> dict:
    env = nnunet_env(root)
    raw, pre = root / "nnUNet_raw" / DATASET, root / "nnUNet_preprocessed" / DATASET
    stamp = root / "prepared.json"
    key = {"patients": patients, "seed": seed, "shape": [96, 96, 24]}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key):
        import shutil
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        log(f"preparing {DATASET}: {patients} patients, shape 96 x 96 x 24, seed {seed}")
        run_command([sys.executable, "-m", "dataset_conversion.synthetic_larc", "--out", root / "cohort",
                     "--patients", patients, "--seed", seed, "--shape", 96, 96, 24, "--no-progress"], env)
        run_command([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", root / "cohort",
                     "--dataset-id", DATASET_ID, "--name", LABEL], env)
        run_command([bin_of("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2",
                     "--verify_dataset_integrity"], env)
        plans_path = pre / "nnUNetPlans.json"
        plans = json.loads(plans_path.read_text())
        plans["configurations"][CONFIG] = {"inherits_from": "3d_fullres", "patch_size": half_patch(plans)}
        plans_path.write_text(json.dumps(plans, indent=2))
        stamp.write_text(json.dumps(key))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    return {"env": env, "raw": raw, "pre": pre, "cohort": root / "cohort", "root": root,
            "patch": plans["configurations"][CONFIG]["patch_size"],
            "image_patch": plans["configurations"]["3d_fullres"]["patch_size"]}


def train_and_predict(ds: dict, seed: int) -> dict:
    results = ds["root"] / f"nnUNet_results_seed{seed}"
    env = dict(ds["env"], nnUNet_results=str(results), MULTIREC_SEED=str(seed))
    folder = results / DATASET / f"{TRAINER}__nnUNetPlans__{CONFIG}"
    out = ds["root"] / f"predictions_seed{seed}"
    timing = folder / "fold_0" / "bench_train_seconds.txt"
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        log(f"training {TRAINER} on {CONFIG} (patch {ds['patch']}), seed {seed}")
        t0 = time.perf_counter()
        run_command([bin_of("nnUNetv2_train"), DATASET_ID, CONFIG, "0", "-tr", TRAINER, "-device", "cpu"],
                    training_env(env, 1), timeout=4 * 3600)
        timing.write_text(f"{time.perf_counter() - t0:.1f}\n")
    if not (out / "predictions.csv").is_file():
        log("predicting the test sets")
        run_command([bin_of("nnUNetv2_predict_multitask"), "-i", ds["raw"] / "imagesTs", "-o", out, "-d", DATASET_ID,
                     "-c", CONFIG, "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                     "--disable_tta"], env, timeout=3600)
    return {"seed": seed, "predictions": out, "train_seconds": float(timing.read_text())}


def volume_tracking(ds: dict, pred_dir: Path) -> dict:
    """Spearman of the predicted-mask volume and of the risk score with the true tumour volume."""
    import SimpleITK as sitk
    from scipy.stats import spearmanr
    mapping = pd.read_csv(ds["raw"] / "patient_mapping.csv", dtype=str).set_index("case_id")
    truth = pd.read_csv(ds["cohort"] / "ground_truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    pred = pd.read_csv(pred_dir / "predictions.csv").set_index("case_id")
    rows = []
    for c in pred.index:
        seg = sitk.ReadImage(str(pred_dir / f"{c}.nii.gz"))
        vol = float((sitk.GetArrayFromImage(seg) > 0).sum() * np.prod(seg.GetSpacing()) / 1000.0)
        t = truth.loc[mapping.loc[c, "patient_id"]]
        rows.append({"predicted_volume_ml": vol, "true_volume_ml": t.tumour_volume_ml, "true_adc": t.tumour_mean_adc,
                     "risk": pred.loc[c, "risk_score"]})
    df = pd.DataFrame(rows)
    return {"n": len(df),
            "spearman_predicted_volume_vs_true": round(
                float(spearmanr(df.predicted_volume_ml, df.true_volume_ml)[0]), 3),
            "spearman_risk_vs_true_volume": round(float(spearmanr(df.risk, df.true_volume_ml)[0]), 3),
            "spearman_risk_vs_true_adc": round(float(spearmanr(df.risk, df.true_adc)[0]), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=160)
    p.add_argument("--seed", type=int, default=12, help="the synthetic cohort's seed")
    p.add_argument("--seeds", default="0", help="training seeds (MULTIREC_SEED)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    root = BENCH_RUN / "patch_tiles"
    started, load_start = time.time(), load_average()
    ds = prepare(root / "dataset", a.patients, a.seed)
    log(f"{CONFIG}: patch {ds['patch']} (3d_fullres plans the whole image: {ds['image_patch']})")
    mt = json.loads((ds["raw"] / "dataset.json").read_text())["multitask"]
    from benchmarks.bench_quality import _oracles
    work = root / "eval_inputs"
    work.mkdir(parents=True, exist_ok=True)
    oracle_paths = _oracles(ds, work, mt)
    per_seed = {}
    for s in [int(x) for x in a.seeds.split(",") if x != ""]:
        r = train_and_predict(ds, s)
        report = root / f"report_seed{s}"
        run_command([sys.executable, "evaluation/survival_eval.py",
                     "--predictions", r["predictions"] / "predictions.csv",
                     *oracle_paths.values(), "--names", TRAINER, *oracle_paths, "--dataset", DATASET_ID,
                     "--seg-pred", r["predictions"], *(["none"] * len(oracle_paths)),
                     "--seg-gt", ds["raw"] / "labelsTs",
                     "--bootstrap", a.bootstrap, "--seed", "0", "-o", report], ds["env"], timeout=3600)
        metrics = json.loads((report / "metrics.json").read_text())["models"]
        per_seed[s] = {"train_seconds": r["train_seconds"], "volume_tracking": volume_tracking(ds, r["predictions"]),
                       "models": {n: {st: {k: v.get(k) for k in ("n", "events", "c_index", "c_index_ci",
                                                                   f"auc_{HORIZON}m", "dice_mean")}
                                      for st, v in sets.items()} for n, sets in metrics.items()}}
        log(f"seed {s}: {json.dumps(per_seed[s]['volume_tracking'])}")
        for n, sets in per_seed[s]["models"].items():
            log(f"  {n}: " + "; ".join(f"{st} C={v['c_index']} Dice={v['dice_mean']}" for st, v in sets.items()))
    result = {"benchmark": "patch_tiles", "command": command_line(), "machine": machine_info("cpu"),
              "load_average_start": load_start, "load_average_end": load_average(),
              "dataset": {"id": DATASET_ID, "patients": a.patients, "seed": a.seed, "shape": [96, 96, 24],
                          "configuration": CONFIG, "patch": ds["patch"], "whole_image_patch": ds["image_patch"]},
              "trainer": TRAINER, "per_seed": per_seed, "wall_seconds": round(time.time() - started, 1)}
    out = write_result(a.out, result, "patch_tiles")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
