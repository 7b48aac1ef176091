"""Issue 13 / BENCHMARKS.md row c.9: one model for every subset of series, and what a missing series costs.

Trains ``MultiRecTrainer_ModalityDropout_quality`` ("All" with channel availability and modality
dropout 0.5, the same budget as row c) on the quality cohort (dataset 503, ``bench_quality.py``)
for each seed, and predicts the internal and external test sets four times with
``nnUNetv2_predict_multitask --allow-missing-series``: with all four series, without Dapp and Kapp
(a centre without diffusion kurtosis imaging), without ADC, and with T2 only. The series are taken
away from the input folder, as a user's folder would lack them. Beside it, the row-c trainings of
the same seeds: ``MultiRecTrainer_quality`` (all four series, no availability) and
``MultiRecTrainer_T2_quality`` (trained on T2 alone), and the oracles. Each C-index has its
bootstrap CI; the summary gives mean +- sd over seeds.

    python benchmarks/bench_missing_series.py [--seeds 0,1,2] [--train-only] [--out FILE]

Reuses bench_run/quality/ (trainings and predictions of row c are not repeated).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import (DATASET, DATASET_ID, _summary_over_seeds, evaluate_seed,  # noqa: E402
                                      evaluation_inputs, prepare, seed_record, train_and_predict)
from benchmarks.common import (BENCH_RUN, bin_of, command_line, load_average, machine_info,  # noqa: E402
                               run_command, write_result)

DROPOUT = "MultiRecTrainer_ModalityDropout_quality"
REFERENCES = ("MultiRecTrainer_quality", "MultiRecTrainer_T2_quality")
SERIES = ("T2", "ADC", "Dapp", "Kapp")
#: prediction conditions: the series taken away from the input folder
CONDITIONS = {"all": (), "no_dki": ("Dapp", "Kapp"), "no_adc": ("ADC",), "t2_only": ("ADC", "Dapp", "Kapp")}


def log(msg):
    print(f"[missing-series] {msg}", flush=True)


def input_folder(images_ts: Path, dst: Path, drop) -> Path:
    """imagesTs as symlinks, without the channel files of the series in ``drop``."""
    if dst.is_dir():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in sorted(images_ts.glob("*.nii.gz")):
        channel = int(f.name[-len("0000.nii.gz"):-len(".nii.gz")])
        if SERIES[channel] not in drop:
            (tmp / f.name).symlink_to(f.resolve())
    tmp.rename(dst)
    return dst


def predict_condition(ds: dict, seed: int, condition: str) -> Path:
    results = ds["root"] / f"nnUNet_results_seed{seed}"
    out = ds["root"] / f"predictions_seed{seed}" / f"{DROPOUT}__{condition}"
    if not (out / "predictions.csv").is_file():
        inp = input_folder(ds["raw"] / "imagesTs", ds["root"] / "missing_series_inputs" / condition,
                           CONDITIONS[condition])
        log(f"predicting {condition} with {DROPOUT} (seed {seed})")
        run_command([bin_of("nnUNetv2_predict_multitask"), "-i", inp, "-o", out, "-d", DATASET_ID, "-c", "3d_fullres",
                     "-tr", DROPOUT, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
                     "--allow-missing-series"], dict(ds["env"], nnUNet_results=str(results)), timeout=3600)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="training seeds (MULTIREC_SEED), comma-separated")
    p.add_argument("--train-only", action="store_true", help="train and predict, no evaluation")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    root = BENCH_RUN / "quality"
    started, load_start = time.time(), load_average()
    ds = prepare(root / "dataset", 200, 11, ["48", "48", "12"])
    seeds = [int(x) for x in a.seeds.split(",") if x != ""]
    preds: dict = {}
    for s in seeds:
        run = train_and_predict(ds, DROPOUT, True, s)
        preds[s] = {f"{DROPOUT}__all": run["predictions"]}
        for condition in CONDITIONS:
            if condition != "all":
                preds[s][f"{DROPOUT}__{condition}"] = predict_condition(ds, s, condition)
        for ref in REFERENCES:
            preds[s][ref] = train_and_predict(ds, ref, True, s)["predictions"]
    if a.train_only:
        log("trainings and predictions done (--train-only)")
        return 0

    mt, _, oracles = evaluation_inputs(ds, root)
    per_seed: dict = {}
    for s in seeds:
        names = list(preds[s]) + list(oracles)
        files = [v / "predictions.csv" for v in preds[s].values()] + list(oracles.values())
        segs = list(preds[s].values()) + ["none"] * len(oracles)
        metrics = evaluate_seed(ds, names, files, segs, root / f"report_missing_series_seed{s}", a.bootstrap)
        for name, sets in metrics["models"].items():
            per_seed.setdefault(name, {})[s] = seed_record(sets)
    summary = _summary_over_seeds(per_seed)
    timing = {s: (ds["root"] / f"nnUNet_results_seed{s}" / DATASET / f"{DROPOUT}__nnUNetPlans__3d_fullres" / "fold_0" /
                  "bench_train_seconds.txt") for s in seeds}
    result = {"benchmark": "missing_series", "command": command_line(), "machine": machine_info("cpu"),
              "load_average_start": load_start, "load_average_end": load_average(),
              "dataset": {"id": DATASET_ID, "internal_test": len(mt["internal_test"]),
                          "external_test": len(mt["external_test"])},
              "conditions": {k: list(v) for k, v in CONDITIONS.items()}, "seeds": seeds,
              "training_seconds": {s: float(t.read_text()) if t.is_file() else None for s, t in timing.items()},
              "per_seed": per_seed, "summary": summary, "wall_seconds": round(time.time() - started, 1)}
    out = write_result(a.out, result, "missing_series")
    log(f"wrote {out}")
    for name, sets in summary.items():
        log(f"{name}: " + "; ".join(
            f"{st} C={_fmt(v['c_index'])} Dice={_fmt(v['dice_mean'])}" for st, v in sets.items()))
    return 0


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f}" + (f"+-{stat['sd']:.3f}" if stat["sd"] is not None else "")


if __name__ == "__main__":
    sys.exit(main())
