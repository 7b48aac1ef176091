"""Row c of BENCHMARKS.md: quality on a synthetic cohort with known ground truth.

Trains each model combination at the same budget (``benchmarks/trainers/quality_variants.py``) on
fold 0, predicts the internal and external test sets with ``nnUNetv2_predict_multitask``, and evaluates
them with ``evaluation/survival_eval.py`` beside:

* ``oracle``: the true linear predictor (the ceiling);
* ``coxph_clinical``: scikit-survival's CoxPH on the clinical variables only (pretreatment +
  postoperative, the same ClinicalPreprocessor), fitted on the development cohort;
* ``coxph_radiomics``: CoxPH on the clinical variables plus log tumour volume and mean tumour ADC,
  measured on the reference masks of the development cohort and on the *predicted* segmentation
  (of the first MultiRec model of the same seed) of the test cases; ``coxph_image_radiomics``:
  the same without the clinical variables (the comparator of the image-only models);
* ``nnUNetTrainer_quality``: plain nnU-Net at the same budget, for the Dice reference.

* ``oracle_image`` / ``oracle_volume``: the generator's image terms alone (log volume and tumour
  ADC) and its volume term alone: what an image-only (``_MRI``) and a T2-only (``_T2``) model can
  reach.

Every training is repeated for each seed of ``--seeds`` (``MULTIREC_SEED``, see README "Seeds"):
the summary gives each model's mean +- sd over seeds, and every C-index its bootstrap CI.

    python benchmarks/bench_quality.py [--patients 200] [--seed 11] [--shape 48 48 12] [--models A,B,...]
        [--seeds 0,1,2] [--train-only] [--out FILE]

Everything lives under bench_run/quality/ (dataset 503; results of seed s in
``nnUNet_results_seed<s>``, predictions in ``predictions_seed<s>``); finished trainings and
predictions are reused, so ``--train-only`` runs can fill the queue before the evaluation.
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

DATASET_ID, LABEL = 503, "LARCQUALITY"
DATASET = f"Dataset{DATASET_ID}_{LABEL}"
ALL_MODELS = ["MultiRecTrainer_quality", "MultiRecTrainer_MRI_quality", "MultiRecTrainer_T2_quality",
              "MultiRecTrainer_MRI_quality_firstdesign"]
#: which oracle each model is compared with (what its inputs can reach)
ORACLE_OF = {"MRI": "oracle_image", "T2": "oracle_volume"}
HORIZON = 36


def log(msg):
    print(f"[quality] {msg}", flush=True)


def prepare(root: Path, patients: int, seed: int, shape) -> dict:
    env = nnunet_env(root)
    raw, pre = root / "nnUNet_raw" / DATASET, root / "nnUNet_preprocessed" / DATASET
    stamp = root / "prepared.json"
    key = {"patients": patients, "seed": seed, "shape": list(shape)}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key and (pre / "nnUNetPlans.json").is_file()):
        import shutil
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        log(f"preparing {DATASET}: {patients} patients, shape {shape}, seed {seed}")
        run_command([sys.executable, "-m", "dataset_conversion.synthetic_larc", "--out", root / "cohort",
                     "--patients", patients, "--seed", seed, "--shape", *shape, "--no-progress"], env)
        run_command([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", root / "cohort",
                     "--dataset-id", DATASET_ID, "--name", LABEL], env)
        run_command([bin_of("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2",
                     "--verify_dataset_integrity"], env)
        stamp.write_text(json.dumps(key))
    return {"env": env, "raw": raw, "pre": pre, "cohort": root / "cohort", "root": root, "id": DATASET_ID,
            "name": DATASET}


def train_and_predict(ds: dict, trainer: str, multitask: bool, seed: int, device: str = "cpu",
                      checkpoint: str = "checkpoint_final.pth") -> dict:
    results = ds["root"] / f"nnUNet_results_seed{seed}"
    folder = results / ds["name"] / f"{trainer}__nnUNetPlans__3d_fullres"
    best = checkpoint != "checkpoint_final.pth"
    out = ds["root"] / f"predictions_seed{seed}" / (trainer + ("__" + checkpoint.replace(".pth", "") if best else ""))
    env = dict(ds["env"], nnUNet_results=str(results), MULTIREC_SEED=str(seed))
    timing = folder / "fold_0" / "bench_train_seconds.txt"
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        log(f"training {trainer} (fold 0, seed {seed})")
        t0 = time.perf_counter()
        run_command([bin_of("nnUNetv2_train"), ds["id"], "3d_fullres", "0", "-tr", trainer, "-device", device],
                    training_env(env, 1 if device == "cpu" else 2), timeout=4 * 3600)
        timing.write_text(f"{time.perf_counter() - t0:.1f}\n")
    # a reused training reports the time measured when it ran (None if it predates this record)
    train_s = float(timing.read_text()) if timing.is_file() else None
    tool = "nnUNetv2_predict_multitask" if multitask else "nnUNetv2_predict"
    if not (out / ("predictions.csv" if multitask else "plans.json")).is_file():
        log(f"predicting the test sets with {trainer} (seed {seed})")
        # mirroring off for every model alike: 8x fewer forward passes on the CPU
        run_command([bin_of(tool), "-i", ds["raw"] / "imagesTs", "-o", out, "-d", ds["id"], "-c", "3d_fullres",
                     "-tr", trainer, "-f", "0", "-device", device, "-npp", "1", "-nps", "1", "--disable_tta",
                     "-chk", checkpoint], env, timeout=3600)
    name = trainer + ("@" + checkpoint.replace("checkpoint_", "").replace(".pth", "") if best else "")
    return {"trainer": name, "seed": seed, "train_seconds": train_s, "predictions": out}


def _clinical_design(ds: dict):
    """Clinical features of every case with the ClinicalPreprocessor fitted on the development cohort."""
    from clinical.preprocessing import ClinicalPreprocessor
    from nnunet_multitask.contract import DatasetContract
    from nnunet_multitask.dataset_tables import read_features, read_outcomes
    dj = json.loads((ds["raw"] / "dataset.json").read_text())
    mt = dj["multitask"]
    schema = DatasetContract.from_block(mt).schema()
    feats = read_features(ds["raw"] / mt["clinical_table"], schema)
    dev = read_outcomes(ds["raw"] / mt["outcomes_table"], schema)
    prep = ClinicalPreprocessor(schema).fit(feats.loc[dev.index].reset_index())
    x = pd.DataFrame(prep.transform(feats.reset_index()), index=feats.index, columns=prep.feature_names)
    return x, dev, mt


def _tumour_measures(image_dir: Path, seg_dir: Path, case_ids) -> pd.DataFrame:
    """log tumour volume (mL) and mean ADC (channel 1, on the T2 grid) inside a segmentation."""
    import SimpleITK as sitk
    rows = {}
    for c in case_ids:
        seg = sitk.ReadImage(str(seg_dir / f"{c}.nii.gz"))
        adc = sitk.GetArrayFromImage(sitk.ReadImage(str(image_dir / f"{c}_0001.nii.gz")))
        m = sitk.GetArrayFromImage(seg) > 0
        vol_ml = m.sum() * float(np.prod(seg.GetSpacing())) / 1000.0
        rows[c] = {"log_volume_ml": np.log1p(vol_ml), "mean_adc": float(adc[m].mean()) if m.any() else np.nan}
    return pd.DataFrame.from_dict(rows, orient="index")


def coxph_baselines(ds: dict, seg_dir_for_test: Path, work: Path) -> dict:
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from clinical.outcomes import survival_array
    work.mkdir(parents=True, exist_ok=True)
    x, dev, mt = _clinical_design(ds)
    test_ids = list(mt["internal_test"]) + list(mt["external_test"])
    y = survival_array(dev[mt["time_column"]], dev[mt["event_column"]])
    paths = {}
    radiomics_dev = _tumour_measures(ds["raw"] / "imagesTr", ds["raw"] / "labelsTr", dev.index)
    radiomics_test = _tumour_measures(ds["raw"] / "imagesTs", seg_dir_for_test, test_ids)
    fill = radiomics_dev.median()
    designs = {"coxph_clinical": (x.loc[dev.index], x.loc[test_ids]),
               # the image-only counterpart: what hand-made radiomics reaches from the same images
               "coxph_image_radiomics": (radiomics_dev.fillna(fill), radiomics_test.fillna(fill)),
               "coxph_radiomics": (pd.concat([x.loc[dev.index], radiomics_dev.fillna(fill)], axis=1),
                                   pd.concat([x.loc[test_ids], radiomics_test.fillna(fill)], axis=1))}
    for name, (x_dev, x_test) in designs.items():
        mu, sd = x_dev.mean(), x_dev.std().replace(0, 1)
        # a small ridge penalty: one-hot columns of rare categories make the plain fit diverge
        model = CoxPHSurvivalAnalysis(alpha=0.1, ties="efron").fit(((x_dev - mu) / sd).to_numpy(), y)
        xt = ((x_test - mu) / sd).to_numpy()
        surv = model.predict_survival_function(xt)
        pred = pd.DataFrame({"case_id": test_ids, "risk_score": model.predict(xt),
                             f"p_recurrence_{HORIZON}m": [1.0 - float(s(min(HORIZON, s.x[-1]))) for s in surv]})
        paths[name] = work / f"{name}.csv"
        pred.to_csv(paths[name], index=False)
    return paths


def _oracles(ds: dict, work: Path, mt: dict) -> dict:
    """The full oracle and the image-only / volume-only ones, on the held-out cases."""
    from dataset_conversion.oracle import oracle_predictions
    from nnunet_multitask.contract import DatasetContract
    paths = {}
    for name, terms in (("oracle", "all"), ("oracle_image", "image"), ("oracle_volume", "volume")):
        pred = oracle_predictions(ds["cohort"], ds["raw"], HORIZON, terms=terms)
        pred = pred[pred.case_id.isin(DatasetContract.from_block(mt).held_out_cases)]
        paths[name] = work / f"{name}.csv"
        pred.to_csv(paths[name], index=False)
    return paths


def evaluation_inputs(ds: dict, root: Path) -> tuple:
    """(multitask block, work folder, oracle prediction files) shared by every seed's evaluation."""
    mt = json.loads((ds["raw"] / "dataset.json").read_text())["multitask"]
    work = root / "eval_inputs"
    work.mkdir(parents=True, exist_ok=True)
    return mt, work, _oracles(ds, work, mt)


def evaluate_seed(ds: dict, names, prediction_files, seg_folders, report: Path, bootstrap: int) -> dict:
    """One ``evaluation/survival_eval.py`` run over every model of a seed; its metrics.json."""
    run_command([sys.executable, "evaluation/survival_eval.py", "--predictions", *prediction_files, "--names", *names,
                 "--dataset", ds["id"], "--seg-pred", *seg_folders, "--seg-gt", ds["raw"] / "labelsTs",
                 "--bootstrap", bootstrap, "--seed", "0", "-o", report], ds["env"], timeout=3600)
    return json.loads((report / "metrics.json").read_text())


def seed_record(sets: dict) -> dict:
    """What the summary keeps of one model's metrics per set."""
    return {st: {k: v.get(k) for k in ("n", "events", "c_index", "c_index_ci", f"auc_{HORIZON}m",
                                       f"auc_{HORIZON}m_ci", "dice_mean")} for st, v in sets.items()}


def _summary_over_seeds(per_seed: dict) -> dict:
    """mean, sd (ddof 1) and the per-seed values of C, AUC and Dice per model and set."""
    out = {}
    for name, seeds in per_seed.items():
        out[name] = {}
        sets = sorted({s for m in seeds.values() for s in m})
        for st in sets:
            row = {}
            for key in ("c_index", f"auc_{HORIZON}m", "dice_mean"):
                vals = [seeds[sd][st].get(key) for sd in sorted(seeds) if st in seeds[sd]]
                vals = [v for v in vals if v is not None]
                row[key] = {"mean": float(np.mean(vals)) if vals else None,
                            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                            "values": vals}
            row["c_index_ci_per_seed"] = [seeds[sd][st].get("c_index_ci") for sd in sorted(seeds) if st in seeds[sd]]
            out[name][st] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--seed", type=int, default=11, help="the synthetic cohort's seed")
    p.add_argument("--shape", nargs=3, default=["48", "48", "12"], help="T2 voxels x y z (as make demo)")
    p.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated MultiRec quality trainers")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (MULTIREC_SEED), comma-separated")
    p.add_argument("--no-nnunet", action="store_true", help="skip the plain nnUNetTrainer Dice reference")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="nnUNetv2_train / predict -device")
    p.add_argument("--also-best", action="store_true",
                   help="also predict with checkpoint_best.pth (model name suffix @best)")
    p.add_argument("--train-only", action="store_true", help="train and predict, no evaluation")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    root = BENCH_RUN / "quality"
    started, load_start = time.time(), load_average()
    ds = prepare(root / "dataset", a.patients, a.seed, a.shape)
    seeds = [int(x) for x in a.seeds.split(",") if x != ""]
    models = [m for m in a.models.split(",") if m]

    runs = {s: [train_and_predict(ds, m, True, s, a.device) for m in models] for s in seeds}
    if a.also_best:  # the same trainings predicted with the best checkpoint (issue 10.4's choice of -chk)
        for s in seeds:
            runs[s] += [train_and_predict(ds, m, True, s, a.device, "checkpoint_best.pth") for m in models]
    nnunet = None if a.no_nnunet else train_and_predict(ds, "nnUNetTrainer_quality", False, seeds[0], a.device)
    if a.train_only:
        log("trainings and predictions done (--train-only)")
        return 0

    mt, work, oracles = evaluation_inputs(ds, root)
    per_seed: dict = {}
    metrics_of_seed = {}
    for s in seeds:
        # the radiomics baseline measures volume and ADC on the first model's predicted mask of this seed
        baselines = coxph_baselines(ds, runs[s][0]["predictions"], work / f"seed{s}")
        names = [r["trainer"] for r in runs[s]] + list(oracles) + list(baselines)
        preds = ([r["predictions"] / "predictions.csv" for r in runs[s]] + list(oracles.values())
                 + list(baselines.values()))
        segs = [r["predictions"] for r in runs[s]] + ["none"] * (len(oracles) + len(baselines))
        metrics_of_seed[s] = evaluate_seed(ds, names, preds, segs, root / f"report_seed{s}", a.bootstrap)
        for name, sets in metrics_of_seed[s]["models"].items():
            per_seed.setdefault(name, {})[s] = seed_record(sets)

    nnunet_dice = None
    if nnunet is not None:
        from evaluation.survival_eval import dice_per_case
        test_ids = list(mt["internal_test"]) + list(mt["external_test"])
        dice, _ = dice_per_case(test_ids, nnunet["predictions"], ds["raw"] / "labelsTs")
        vals = {st: [dice[c] for c in mt[st] if c in dice and np.isfinite(dice[c])]
                for st in ("internal_test", "external_test")}
        nnunet_dice = {st: (float(np.mean(v)) if v else None) for st, v in vals.items()}

    summary = _summary_over_seeds(per_seed)
    result = {"benchmark": "quality", "command": command_line(), "machine": machine_info(a.device),
              "load_average_start": load_start, "load_average_end": load_average(),
              "dataset": {"id": DATASET_ID, "patients": a.patients, "seed": a.seed, "shape": a.shape,
                          "internal_test": len(mt["internal_test"]), "external_test": len(mt["external_test"])},
              "budget": ("benchmarks/trainers/quality_variants.py: QUALITY_EPOCHS x QUALITY_ITERATIONS iterations, "
                         "fold 0"),
              "seeds": seeds,
              "training_seconds": {f"{r['trainer']}@seed{s}": r["train_seconds"] for s in seeds for r in runs[s]},
              "per_seed": per_seed, "summary": summary, "nnUNetTrainer_quality_dice": nnunet_dice,
              "oracle_of": ORACLE_OF, "wall_seconds": round(time.time() - started, 1)}
    out = write_result(a.out, result, "quality")
    log(f"wrote {out}")
    for name, sets in summary.items():
        log(f"{name}: " + "; ".join(
            f"{st} C={_fmt(v['c_index'])} AUC={_fmt(v[f'auc_{HORIZON}m'])} Dice={_fmt(v['dice_mean'])}"
            for st, v in sets.items()))
    if nnunet_dice:
        log(f"nnUNetTrainer_quality Dice: {nnunet_dice}")
    return 0


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    return (f"{stat['mean']:.3f}" + (f"+-{stat['sd']:.3f}" if stat["sd"] is not None else "")
            + f" (n={len(stat['values'])})")


if __name__ == "__main__":
    sys.exit(main())
