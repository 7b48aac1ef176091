#!/usr/bin/env python
"""Benchmark b: inference wall time of ``nnUNetv2_predict_multitask`` against ``nnUNetv2_predict``.

Two short models are trained on the bench dataset (Dataset502, 3d_fullres, fold 0) with the real
``nnUNetv2_train`` (``benchmarks/trainers/bench_variants.py``: one epoch of a few iterations, same
length for both): ``MultiRecTrainer_bench`` (the default MultiRec configuration) and ``nnUNetTrainer_bench``.
Then, on the same test cases (the first ``--cases`` of ``imagesTs``), the same fold and the same
``-npp/-nps``, three commands are timed as subprocesses, in rotating order, ``--repeats`` times
(the reference command 3. ``--reference-repeats`` times):

1. ``nnUNetv2_predict_multitask`` on the MultiRec model (segmentations + heads + predictions.csv);
2. ``nnUNetv2_predict`` on the same MultiRec model folder (nnU-Net's predictor calls the network
   the way that returns the segmentation only), which isolates the overhead of the heads and the
   patient-level table;
3. ``nnUNetv2_predict`` on the plain nnU-Net model, for reference.

Target: (1) / (2) <= 1.10 on median wall time.

Test-time mirroring is off by default (``--disable_tta`` for every command; ``--tta`` turns it on):
on 2 shared CPU cores a mirrored 16x80x80 case takes about 20 s, which would make nine timed runs
of ten cases half an hour. The heads run on every forward pass, mirrored or not, so their share of
the work per forward is the same either way; without mirroring the fixed per-run costs (start-up,
model loading, writing predictions.csv) weigh more, which makes the ratio a conservative one.

Usage::

    python benchmarks/bench_inference_speed.py [--out bench_run/inference_speed.json] [--cases 5]
        [--repeats 3] [--reference-repeats 1] [-npp 1] [-nps 1] [--tta] [--device cpu]

The defaults take 6-9 minutes on 2 shared CPU cores (a run starts up in 30-40 s there, then about
9 s per case without mirroring); BENCHMARKS.md's recorded run used ``--cases 10 --reference-repeats 3``
(16 minutes).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MULTIREC_TRAINER = "MultiRecTrainer_bench"
NNUNET_TRAINER = "nnUNetTrainer_bench"
TARGET_RATIO = 1.10
FOLD = "0"


def ensure_model(trainer: str, data: dict, env: dict, device: str, log=print) -> Path:
    """Train ``trainer`` on fold 0 with ``nnUNetv2_train`` unless its final checkpoint exists."""
    folder = data["root"] / "nnUNet_results" / data["dataset_name"] / f"{trainer}__nnUNetPlans__{common.CONFIGURATION}"
    if not (folder / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():
        log(f"[bench] training {trainer} (fold {FOLD}) for the inference benchmark")
        start = time.perf_counter()
        common.run_command([common.bin_of("nnUNetv2_train"), str(data["dataset_id"]), common.CONFIGURATION, FOLD,
                            "-tr", trainer, "-device", device], common.training_env(env, n_proc_da=0), timeout=3600)
        log(f"[bench] {trainer} trained in {time.perf_counter() - start:.0f} s")
    return folder


def input_cases(raw: Path, n_cases: int, folder: Path) -> list:
    """Copy the first ``n_cases`` test cases (all their channels) of ``imagesTs`` into ``folder``."""
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    cases = [p.name[:-len("_0000.nii.gz")] for p in images][:n_cases]
    if len(cases) < n_cases:
        raise RuntimeError(f"{raw / 'imagesTs'} holds {len(cases)} test cases, fewer than --cases {n_cases}; "
                           f"prepare a bigger bench dataset or lower --cases")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for case in cases:
        for f in (raw / "imagesTs").glob(f"{case}_*.nii.gz"):
            shutil.copy2(f, folder / f.name)
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result JSON (default bench_run/inference_speed.json)")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=1,
                        help="runs of the plain nnU-Net model (reference only, not in the target ratio)")
    parser.add_argument("-npp", type=int, default=1, help="preprocessing processes (both commands)")
    parser.add_argument("-nps", type=int, default=1, help="export processes (both commands)")
    parser.add_argument("--tta", action="store_true", help="test-time mirroring on (off by default, see above)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="bench", choices=sorted(common.BENCH_SIZES),
                        help="bench: 80x80x16 images; demo: make demo's 48x48x12 images")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.reference_repeats < 1 or args.cases < 1:
        parser.error("--cases, --repeats and --reference-repeats must be at least 1")

    started = time.perf_counter()
    data = common.prepare_bench_dataset(size=args.size)
    env = common.nnunet_env(data["root"])
    train_start = time.perf_counter()
    ensure_model(MULTIREC_TRAINER, data, env, args.device)
    ensure_model(NNUNET_TRAINER, data, env, args.device)
    train_seconds = time.perf_counter() - train_start

    work = common.BENCH_RUN / ("inference_speed" + ("" if args.size == "bench" else f"_{args.size}"))
    cases = input_cases(data["raw"], args.cases, work / "input")
    common_flags = ["-i", str(work / "input"), "-d", str(data["dataset_id"]), "-c", common.CONFIGURATION,
                    "-f", FOLD, "-device", args.device, "-npp", str(args.npp), "-nps", str(args.nps),
                    "--disable_progress_bar"] + ([] if args.tta else ["--disable_tta"])
    commands = {
        "multitask_on_multirec_model": [common.bin_of("nnUNetv2_predict_multitask"), "-tr", MULTIREC_TRAINER],
        "nnunet_predict_on_multirec_model": [common.bin_of("nnUNetv2_predict"), "-tr", MULTIREC_TRAINER],
        "nnunet_predict_on_nnunet_model": [common.bin_of("nnUNetv2_predict"), "-tr", NNUNET_TRAINER],
    }
    names = list(commands)
    load_start = common.load_average()
    runs = {n: [] for n in names}
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate: no command always goes first
        for name in order:
            if name == "nnunet_predict_on_nnunet_model" and repeat >= args.reference_repeats:
                continue
            out = work / "out" / name
            if out.exists():
                shutil.rmtree(out)
            runs[name].append(common.timed_command(commands[name] + common_flags + ["-o", str(out)], env,
                                                   timeout=1800))
            written = sorted(p.name for p in out.glob("*.nii.gz"))
            if len(written) != len(cases):
                raise RuntimeError(f"{name}: wrote {len(written)} segmentations for {len(cases)} cases in {out}")
    load_end = common.load_average()
    table_rows = sum(1 for _ in open(work / "out" / "multitask_on_multirec_model" / "predictions.csv")) - 1
    if table_rows != len(cases):
        raise RuntimeError(f"predictions.csv has {table_rows} rows for {len(cases)} cases")

    stats = {n: {"wall_s_runs": [round(r["wall"], 3) for r in runs[n]],
                 "wall_s_median": round(common.median([r["wall"] for r in runs[n]]), 3),
                 "cpu_s_runs": [round(r["cpu"], 3) for r in runs[n]],
                 "cpu_s_median": round(common.median([r["cpu"] for r in runs[n]]), 3)} for n in names}
    mt, ref, plain = names
    ratios = {"wall_multitask_over_predict_same_model": round(common.ratio(stats[mt]["wall_s_median"],
                                                                           stats[ref]["wall_s_median"]), 4),
              "cpu_multitask_over_predict_same_model": round(common.ratio(stats[mt]["cpu_s_median"],
                                                                          stats[ref]["cpu_s_median"]), 4),
              "wall_multitask_over_predict_nnunet_model": round(common.ratio(stats[mt]["wall_s_median"],
                                                                             stats[plain]["wall_s_median"]), 4)}
    result = {
        "benchmark": "b. inference, nnUNetv2_predict_multitask vs nnUNetv2_predict",
        "command": common.command_line(),
        "timed_commands": {n: " ".join(commands[n] + common_flags + ["-o", f"OUT/{n}"]) for n in names},
        "machine": common.machine_info(args.device),
        "load_average_start": load_start, "load_average_end": load_end,
        "dataset": {"name": data["dataset_name"], "size": args.size, "patients": data["patients"], "seed": data["seed"],
                    **common.plan_summary(data["preprocessed"])},
        "cases": cases, "repeats": args.repeats, "reference_repeats": args.reference_repeats, "fold": FOLD,
        "npp": args.npp, "nps": args.nps, "tta": bool(args.tta),
        "models": {"multirec": MULTIREC_TRAINER, "nnunet": NNUNET_TRAINER},
        "model_training_seconds": round(train_seconds, 1),
        "timing": stats,
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
        "target_met": ratios["wall_multitask_over_predict_same_model"] <= TARGET_RATIO,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    path = common.write_result(args.out, result, "inference_speed" + ("" if args.size == "bench" else f"_{args.size}"))
    print(f"[b] inference, {len(cases)} cases, median of {args.repeats} runs: "
          f"multitask {stats[mt]['wall_s_median']:.1f} s, "
          f"nnUNetv2_predict same model {stats[ref]['wall_s_median']:.1f} s "
          f"(x{ratios['wall_multitask_over_predict_same_model']:.3f}), "
          f"plain nnU-Net model {stats[plain]['wall_s_median']:.1f} s; target <= {TARGET_RATIO}: "
          f"{'met' if result['target_met'] else 'MISSED'}; load {load_start[0]}->{load_end[0]}; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
