"""Which checkpoint should the predictor use by default: ``checkpoint_final.pth`` or ``checkpoint_best.pth``?

For finished ``make demo`` runs (one folder per training seed, ``DEMO_DIR=...``), predicts the
internal and external test sets again with ``-chk checkpoint_best.pth`` (the checkpoint of the best
EMA of (pseudo-Dice + whole-fold C-index + AUC) / 3) and evaluates both checkpoints side by side with
``evaluation/survival_eval.py`` (paired bootstrap difference of the C-index included).

    python benchmarks/bench_checkpoint_choice.py bench_run/demo_seed0 bench_run/demo_seed1 ... [--out FILE]

Writes ``bench_run/checkpoint_choice.json`` (default) and prints one line per run and the mean
difference best - final over runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bin_of, command_line, machine_info, run_command, write_result  # noqa: E402

TRAINER = "MultiRecTrainer_demo"
DATASET = "Dataset501_LARC"


def evaluate_run(demo_dir: Path, trainer: str) -> dict:
    import os
    env = dict(os.environ, nnUNet_raw=str(demo_dir / "nnUNet_raw"),
               nnUNet_preprocessed=str(demo_dir / "nnUNet_preprocessed"),
               nnUNet_results=str(demo_dir / "nnUNet_results"), nnUNet_compile="f")
    raw = demo_dir / "nnUNet_raw" / DATASET
    best = demo_dir / "predictions_checkpoint_best"
    if not (best / "predictions.csv").is_file():
        run_command([bin_of("nnUNetv2_predict_multitask"), "-i", raw / "imagesTs", "-o", best, "-d", "501",
                     "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                     "--disable_tta", "-chk", "checkpoint_best.pth"], env, timeout=3600)
    report = demo_dir / "report_checkpoints"
    run_command([sys.executable, "evaluation/survival_eval.py", "--predictions",
                 demo_dir / "predictions" / "predictions.csv", best / "predictions.csv", demo_dir / "oracle.csv",
                 "--names", "final", "best", "oracle", "--dataset", "501",
                 "--seg-pred", demo_dir / "predictions", best, "none", "--seg-gt", raw / "labelsTs",
                 "--bootstrap", "1000", "--seed", "0", "-o", report], env, timeout=3600)
    metrics = json.loads((report / "metrics.json").read_text())["models"]
    out = {}
    for name in ("final", "best", "oracle"):
        out[name] = {st: {k: m.get(k) for k in ("n", "events", "c_index", "c_index_ci", "auc_36m", "dice_mean")}
                     for st, m in metrics[name].items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_dirs", nargs="+", help="finished make demo folders (DEMO_DIR), one per training seed")
    p.add_argument("--trainer", default=TRAINER)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    runs = {str(d): evaluate_run(Path(d).resolve(), a.trainer) for d in a.demo_dirs}
    summary = {}
    for st in ("internal_test", "external_test"):
        for key in ("c_index", "auc_36m", "dice_mean"):
            diffs = [r["best"][st][key] - r["final"][st][key] for r in runs.values()
                     if r["best"][st].get(key) is not None and r["final"][st].get(key) is not None]
            summary[f"{st}.{key}.best_minus_final"] = {
                "mean": float(np.mean(diffs)) if diffs else None,
                "sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None, "values": diffs}
    result = {"benchmark": "checkpoint choice (final vs best)", "command": command_line(),
              "machine": machine_info("cpu"), "runs": runs, "summary": summary}
    path = write_result(a.out, result, "checkpoint_choice")
    for d, r in runs.items():
        print(f"{d}: " + "; ".join(f"{st} C final {r['final'][st]['c_index']:.3f} best {r['best'][st]['c_index']:.3f}"
                                   for st in ("internal_test", "external_test")))
    for k, v in summary.items():
        if v["mean"] is not None:
            sd = f" +- {v['sd']:.3f}" if v["sd"] is not None else ""
            print(f"{k}: {v['mean']:+.3f}" + sd + f" (n={len(v['values'])})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
