"""`make demo`: the whole flow on a synthetic cohort, on the CPU, in one command.

generate cohort -> convert_larc -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train (MultiRecTrainer_demo,
fold 0) -> recalibration fitted on fold 0's out-of-sample validation patients -> nnUNetv2_predict_multitask
--report (internal + external test, with the per-patient report) and --recalibrated ->
evaluation/survival_eval.py --model-card (model, recalibrated model and oracle side by side: discrimination,
calibration and decision curves at 36 months, per centre) -> results table.

Everything lands in $DEMO_DIR (default demo_run/); the evaluation is $DEMO_DIR/report/metrics.json, the
per-patient report $DEMO_DIR/predictions/report/index.html (one PNG per test patient, the cohort sorted by
risk; open it in a browser, no server needed). DEMO_SALIENCY (1: occlusion saliency of the risk in the
per-patient report; 0, the default: without) and DEMO_SALIENCY_BLOCKS (4: occluded blocks per patient, each one more
prediction of the patient).
Sizes: DEMO_PATIENTS (default 120), DEMO_SHAPE (T2 voxels x y z, default "48 48 12": a small field of view
keeps a 3D U-Net iteration around a second on 2 CPU cores), DEMO_SEED (0: the cohort's seed), DEMO_TRAIN_SEED
(0: MULTIREC_SEED of the training), DEMO_TRAINER (MultiRecTrainer_demo; MultiRecTrainer_Pre_demo,
MultiRecTrainer_MRI_demo and MultiRecTrainer_T2_demo train the other combinations at the same budget).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = Path(os.environ.get("DEMO_DIR", "demo_run")).resolve()
PATIENTS = os.environ.get("DEMO_PATIENTS", "120")
SEED = os.environ.get("DEMO_SEED", "0")
SHAPE = os.environ.get("DEMO_SHAPE", "48 48 12").split()
TRAINER = os.environ.get("DEMO_TRAINER", "MultiRecTrainer_demo")
TRAIN_SEED = os.environ.get("DEMO_TRAIN_SEED", "0")
# off by default: 4 blocks add about 4.5 min for the 43 test patients, which would bring the demo
# close to its 15-minute budget on 2 cores
SALIENCY = os.environ.get("DEMO_SALIENCY", "0") not in ("0", "", "false", "no")
SALIENCY_BLOCKS = os.environ.get("DEMO_SALIENCY_BLOCKS", "4")
DATASET = "Dataset501_LARC"
BIN = Path(sys.executable).parent


def step(title: str):
    print(f"\n=== {title} ===", flush=True)


def run(cmd, env):
    t0 = time.time()
    print("$ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), env=env, cwd=REPO, check=True)
    print(f"[{time.time() - t0:.0f} s]", flush=True)


def main() -> int:
    t_start = time.time()
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({"nnUNet_raw": str(DEMO_DIR / "nnUNet_raw"),
                "nnUNet_preprocessed": str(DEMO_DIR / "nnUNet_preprocessed"),
                "nnUNet_results": str(DEMO_DIR / "nnUNet_results"),
                "nnUNet_extTrainer": os.pathsep.join([str(REPO / "trainers"), str(REPO / "benchmarks" / "trainers")]),
                "nnUNet_compile": "f", "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "2")})
    env.pop("nnUNet_n_proc_DA", None)  # planning must not see 0 (see tests/conftest.py)
    for d in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "predictions_recalibrated",
              "report"):
        shutil.rmtree(DEMO_DIR / d, ignore_errors=True)
    cohort, raw = DEMO_DIR / "cohort", DEMO_DIR / "nnUNet_raw" / DATASET
    py = sys.executable

    step(f"1/6 synthetic cohort: {PATIENTS} patients, T2 shape {' x '.join(SHAPE)}, seed {SEED}")
    run([py, "-m", "dataset_conversion.synthetic_larc", "--out", cohort, "--patients", PATIENTS, "--seed", SEED,
         "--shape", *SHAPE, "--overwrite"], env)
    step("2/6 cohort -> nnU-Net raw dataset (Dataset501_LARC)")
    run([py, "-m", "dataset_conversion.convert_larc", "--cohort", cohort, "--dataset-id", "501", "--name", "LARC"], env)
    step("3/6 nnUNetv2_plan_and_preprocess")
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", "501", "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity"], env)
    step(f"4/6 nnUNetv2_train 501 3d_fullres 0 -tr {TRAINER} -device cpu (MULTIREC_SEED={TRAIN_SEED})")
    run([BIN / "nnUNetv2_train", "501", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
        dict(env, nnUNet_n_proc_DA=env.get("DEMO_N_PROC_DA", "1"), MULTIREC_SEED=TRAIN_SEED))
    model_folder = DEMO_DIR / "nnUNet_results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres"
    step("5/6 recalibration on fold 0's validation patients (out of sample), then nnUNetv2_predict_multitask on the "
         "internal and external test sets (imagesTs), with the per-patient report, and --recalibrated")
    # the demo trains fold 0 only: 16 out-of-sample patients, too few events for a trustworthy fit; the
    # flow is shown anyway, and every report that uses the fit says so
    run([py, "-m", "nnunet_multitask.recalibration", "--model-folder", model_folder, "--dataset-folder", raw,
         "-f", "0", "--allow-few-events"], env)
    pred = DEMO_DIR / "predictions"
    # test-time mirroring off: 8x fewer forward passes, which the CPU budget spends on training instead
    saliency = ["--saliency", "--saliency-blocks", SALIENCY_BLOCKS] if SALIENCY else []
    run([BIN / "nnUNetv2_predict_multitask", "-i", raw / "imagesTs", "-o", pred, "-d", "501", "-c", "3d_fullres",
         "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
         "--report", "--seg-gt", raw / "labelsTs", *saliency], env)
    pred_recal = DEMO_DIR / "predictions_recalibrated"
    run([BIN / "nnUNetv2_predict_multitask", "-i", raw / "imagesTs", "-o", pred_recal, "-d", "501", "-c",
         "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
         "--recalibrated"], env)
    step("6/6 evaluation: model and oracle (the true linear predictor)")
    run([py, "-m", "dataset_conversion.oracle", "--cohort", cohort, "--raw-dataset", raw, "--test-only",
         "-o", DEMO_DIR / "oracle.csv"],
        env)
    report = DEMO_DIR / "report"
    run([py, "evaluation/survival_eval.py", "--predictions", pred / "predictions.csv",
         pred_recal / "predictions.csv", DEMO_DIR / "oracle.csv", "--names", TRAINER, f"{TRAINER}_recalibrated",
         "oracle", "--dataset", "501", "--seg-pred", pred, "none", "none", "--seg-gt", raw / "labelsTs",
         "--bootstrap", "1000", "--seed", "0", "--model-card", "-o", report], env)

    metrics = json.loads((report / "metrics.json").read_text())
    print(f"\nResults ({report / 'metrics.json'}; full table in {report / 'report.md'})")
    print(f"{'model':<36}{'set':<15}{'n':>4}{'events':>8}  {'C-index (95% CI)':<22}{'AUC@36m':>9}{'Dice':>7}"
          f"{'slope cls / surv':>20}{'ICI cls':>9}")
    for name, sets in metrics["models"].items():
        for set_name, m in sets.items():
            ci = m.get("c_index_ci") or [float("nan")] * 2
            c = m.get("c_index")
            auc, dice = m.get("auc_36m"), m.get("dice_mean")
            cal = m.get("calibration_36m") or {}
            slopes = [(cal.get(h) or {}).get("slope") for h in ("classification_head", "survival_head")]
            ici = (cal.get("classification_head") or {}).get("ici")
            print(f"{name:<36}{set_name:<15}{m.get('n', 0):>4}{m.get('events', 0):>8}  "
                  f"{'n/a' if c is None else f'{c:.3f} ({ci[0]:.2f}-{ci[1]:.2f})':<22}"
                  f"{'n/a' if auc is None else f'{auc:.3f}':>9}{'' if dice is None else f'{dice:.3f}':>7}"
                  f"{' / '.join('n/a' if s is None else f'{s:.2f}' for s in slopes):>20}"
                  f"{'n/a' if ici is None else f'{ici:.3f}':>9}")
    print(f"\nCalibration and decision curves: {report}/calibration_smoothed_36m_*.png, "
          f"{report}/decision_curve_36m_*.png; model card: {report / 'MODEL_CARD.md'}")
    page = pred / "report" / "index.html"
    print(f"\nPer-patient report ({len(list((pred / 'report').glob('*.png')))} test patients, sorted by risk): open "
          f"{page.as_uri()}")
    print(f"\nDemo finished in {(time.time() - t_start) / 60:.1f} min; outputs in {DEMO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
