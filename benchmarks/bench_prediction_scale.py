#!/usr/bin/env python
"""Prediction at scale: 1,000 small synthetic cases in 4 parts, then ``--merge`` (issue 23).

A tiny cohort (the tests' 14 patients, 40 x 40 x 10 T2) is converted, planned and preprocessed,
and ``MultiRecTrainer_smoke`` is trained on fold 0 with the real nnU-Net commands. The input folder
holds ``--cases`` cases: links named ``SCALE_0001_0000.nii.gz`` ... to the converted test cases, in
turn (so every case is a real image; the model predicts each one anew). The cases are predicted
as ``-num_parts 4 -part_id K`` runs one after the other (each its own process and output folder,
nnU-Net's sequential path, no test-time mirroring, ``--impute-missing-clinical`` since the case
ids have no clinical row), while this script samples each run's resident memory (``VmRSS`` of the
process, from ``/proc``) whenever another case has finished (the run's case records). Then the
parts are merged.

Reports seconds per case (wall time of the 4 runs over the number of cases, start-up included,
and the median time between consecutive finished cases) and the resident memory at the 25th, 100th
and last case of each part, and at the 100th and the 1,000th case overall.

Usage::

    python benchmarks/bench_prediction_scale.py [--cases 1000] [--parts 4] [--out bench_run/prediction_scale.json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (bench_root, bin_of, machine_info, median, nnunet_env, run_command, training_env,  # noqa: E402
                    write_result)

REPO = Path(__file__).resolve().parents[1]
DATASET_ID, DATASET = "503", "Dataset503_LARC"


def prepare_model(root: Path) -> dict:
    env = nnunet_env(root)
    results = root / "nnUNet_results" / DATASET / "MultiRecTrainer_smoke__nnUNetPlans__3d_fullres"
    if not (results / "fold_0" / "checkpoint_final.pth").is_file():
        cohort = root / "cohort"
        if not cohort.is_dir():
            run_command([sys.executable, "-m", "dataset_conversion.synthetic_larc", "--out", str(cohort),
                         "--patients", "14", "--seed", "1", "--shape", "40", "40", "10"], env)
        if not (root / "nnUNet_raw" / DATASET).is_dir():
            run_command([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", str(cohort),
                         "--dataset-id", DATASET_ID, "--name", "LARC"], env)
            run_command([bin_of("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", "1",
                         "-npfp", "1"], env)
        run_command([bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", "MultiRecTrainer_smoke",
                     "-device", "cpu"], dict(training_env(env), MULTIREC_SEED="0"))
    return env


def make_inputs(root: Path, n_cases: int) -> Path:
    images_ts = root / "nnUNet_raw" / DATASET / "imagesTs"
    sources = sorted({p.name[:-len("_0000.nii.gz")] for p in images_ts.glob("*_0000.nii.gz")})
    folder = root / f"inputs_{n_cases}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i in range(n_cases):
        src = sources[i % len(sources)]
        for ch in range(4):
            (folder / f"SCALE_{i + 1:04d}_{ch:04d}.nii.gz").symlink_to(images_ts / f"{src}_{ch:04d}.nii.gz")
    return folder


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_part(cmd, env, records: Path) -> dict:
    """Run one part, sampling its resident memory each time another case has finished."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done, samples, finished_at = 0, {}, []
    while proc.poll() is None:
        n = len(list(records.glob("*.json"))) if records.is_dir() else 0
        if n > done:
            try:
                samples[n] = rss_mib(proc.pid)
            except OSError:
                pass
            finished_at += [time.time()] * (n - done)
            done = n
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    gaps = [b - a for a, b in zip(finished_at, finished_at[1:])]
    return {"wall_s": time.time() - start, "rss_mib_by_case": samples, "finished": done,
            "median_s_between_cases": median(gaps) if gaps else None}


def _at_or_before(samples: dict, n: int) -> float:
    """The sample at case ``n``, or at the last case before it that was sampled."""
    earlier = [k for k in samples if k <= n]
    return samples[max(earlier)] if earlier else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    root = bench_root().parent / "prediction_scale"
    root.mkdir(parents=True, exist_ok=True)
    env = prepare_model(root)
    inputs = make_inputs(root, args.cases)
    parts, global_rss, offset = [], {}, 0
    t0 = time.time()
    for k in range(args.parts):
        out = root / f"part{k}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [bin_of("nnUNetv2_predict_multitask"), "-i", str(inputs), "-o", str(out), "-d", DATASET_ID, "-c",
               "3d_fullres", "-tr", "MultiRecTrainer_smoke", "-f", "0", "-device", "cpu", "--disable_tta",
               "--disable_progress_bar", "-npp", "0", "-nps", "0", "--impute-missing-clinical",
               "-num_parts", str(args.parts), "-part_id", str(k)]
        result = run_part(cmd, env, out / ".nnunet_multitask_partial_run" / "case_records")
        samples = result["rss_mib_by_case"]
        global_rss.update({offset + n: v for n, v in samples.items()})
        offset += result["finished"]
        pick = {n: _at_or_before(samples, n) for n in (25, 100, max(samples) if samples else 0)}
        parts.append({"part_id": k, "wall_s": round(result["wall_s"], 1), "cases": result["finished"],
                      "median_s_between_cases": result["median_s_between_cases"], "rss_mib": pick})
        print(f"part {k}: {result['finished']} cases in {result['wall_s']:.0f} s; RSS MiB {pick}", flush=True)
    total = time.time() - t0
    merged = root / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    m0 = time.time()
    run_command([bin_of("nnUNetv2_predict_multitask"), "--merge", *[str(root / f"part{k}") for k in range(args.parts)],
                 "-o", str(merged)], env)
    merge_s = time.time() - m0

    result = {"cases": args.cases, "parts": args.parts, "total_wall_s": round(total, 1),
              "seconds_per_case": round(total / args.cases, 3),
              "median_s_between_cases": median([p["median_s_between_cases"] for p in parts]),
              "rss_mib_case_100": _at_or_before(global_rss, 100),
              "rss_mib_case_last": _at_or_before(global_rss, args.cases),
              "merge_s": round(merge_s, 1), "per_part": parts, "machine": machine_info(),
              "load_average_end": os.getloadavg()}
    path = write_result(args.out, result, "prediction_scale")
    print(f"{args.cases} cases in {args.parts} parts: {result['seconds_per_case']} s per case (start-up included), "
          f"RSS {result['rss_mib_case_100']:.0f} MiB at case 100, {result['rss_mib_case_last']:.0f} MiB at case "
          f"{args.cases}; merge {merge_s:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
