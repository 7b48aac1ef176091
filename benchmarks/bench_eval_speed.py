#!/usr/bin/env python
"""Benchmark d: wall time of ``python evaluation/survival_eval.py`` on 1,000 synthetic patients with
1,000 bootstrap resamples (target: < 15 s on 2 cores).

The prediction and outcome CSVs are made with numpy: disease-free survival from a Weibull
proportional-hazards model (three standard-normal covariates), censored by uniform administrative
follow-up and random loss to follow-up; the model's risk score is the true linear predictor plus
Gaussian noise, and its recurrence and survival probabilities come from the same Weibull model
evaluated at the noisy risk. The real CLI is timed as a subprocess (start-up, reading, all metrics,
bootstrap, report and figures included), median of ``--repeats`` runs.

Usage::

    python benchmarks/bench_eval_speed.py [--out bench_run/eval_speed.json] [--patients 1000]
        [--bootstrap 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_SECONDS = 15.0
HORIZON_MONTHS = 36
SURVIVAL_TIMES = (12, 24, 36, 60)
WEIBULL_SHAPE = 1.3
WEIBULL_SCALE_MONTHS = 70.0           # baseline: median DFS of about 53 months at linear predictor 0
COEFFICIENTS = np.array([0.8, 0.5, -0.4])
RISK_NOISE_SD = 0.6


def weibull_survival(t: np.ndarray, linear_predictor: np.ndarray) -> np.ndarray:
    """S(t | lp) = exp(-(t / scale)^shape * exp(lp)) of the Weibull PH model."""
    return np.exp(-np.power(t / WEIBULL_SCALE_MONTHS, WEIBULL_SHAPE) * np.exp(linear_predictor))


def synthetic_tables(n_patients: int, seed: int):
    """(predictions, outcomes) frames for ``n_patients`` with a known outcome model (module docstring)."""
    rng = np.random.default_rng(seed)
    covariates = rng.standard_normal((n_patients, COEFFICIENTS.size))
    linear_predictor = covariates @ COEFFICIENTS
    # inverse-transform sampling of the Weibull PH event time
    u = rng.uniform(size=n_patients)
    event_time = WEIBULL_SCALE_MONTHS * np.power(-np.log(u) * np.exp(-linear_predictor), 1.0 / WEIBULL_SHAPE)
    admin_censoring = rng.uniform(36.0, 96.0, size=n_patients)
    lost_to_follow_up = rng.exponential(300.0, size=n_patients)
    censor_time = np.minimum(admin_censoring, lost_to_follow_up)
    time = np.minimum(event_time, censor_time)
    event = (event_time <= censor_time).astype(int)
    case_ids = [f"BENCH_{i:04d}" for i in range(n_patients)]
    outcomes = pd.DataFrame({"case_id": case_ids, "dfs_months": np.round(time, 3), "dfs_event": event})

    risk = linear_predictor + rng.normal(0.0, RISK_NOISE_SD, size=n_patients)
    predictions = pd.DataFrame({"case_id": case_ids, "risk_score": risk,
                                f"p_recurrence_{HORIZON_MONTHS}m": 1.0 - weibull_survival(HORIZON_MONTHS, risk)})
    for t in SURVIVAL_TIMES:
        predictions[f"surv_prob_{t}m"] = weibull_survival(float(t), risk)
    return predictions, outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result JSON (default bench_run/eval_speed.json)")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=str(common.BENCH_RUN / "eval_speed"))
    args = parser.parse_args(argv)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    predictions, outcomes = synthetic_tables(args.patients, args.seed)
    pred_csv, out_csv = work / "predictions.csv", work / "outcomes.csv"
    predictions.to_csv(pred_csv, index=False)
    outcomes.to_csv(out_csv, index=False)

    load_start = common.load_average()
    env = common.nnunet_env(work)
    cmd = [sys.executable, str(common.REPO / "evaluation" / "survival_eval.py"), "--predictions", str(pred_csv),
           "--outcomes", str(out_csv), "--bootstrap", str(args.bootstrap), "--seed", "0",
           "-o", str(work / "report")]
    runs = [common.timed_command(cmd, env, timeout=600) for _ in range(args.repeats)]
    seconds = [r["wall"] for r in runs]
    cpu_seconds = [r["cpu"] for r in runs]
    load_end = common.load_average()
    metrics = json.loads((work / "report" / "metrics.json").read_text())

    wall = common.median(seconds)
    result = {
        "benchmark": "d. evaluation speed (survival_eval.py CLI)",
        "command": " ".join(cmd),
        "bench_command": common.command_line(),
        "machine": common.machine_info("cpu"),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "patients": args.patients,
        "events": int(outcomes["dfs_event"].sum()),
        "bootstrap": args.bootstrap,
        "wall_seconds_runs": [round(s, 3) for s in seconds],
        "wall_seconds_median": round(wall, 3),
        "cpu_seconds_runs": [round(s, 3) for s in cpu_seconds],
        "cpu_seconds_median": round(common.median(cpu_seconds), 3),
        "cli_internal_timing_seconds_last_run": metrics.get("timing_seconds"),
        "c_index_last_run": _c_index(metrics),
        "target_seconds": TARGET_SECONDS,
        "target_met": wall < TARGET_SECONDS,
    }
    path = common.write_result(args.out, result, "eval_speed")
    print(f"[d] survival_eval.py, {args.patients} patients, {args.bootstrap} bootstrap: median "
          f"{wall:.1f} s wall ({common.median(cpu_seconds):.1f} s CPU) over {args.repeats} runs "
          f"(target < {TARGET_SECONDS:g} s: "
          f"{'met' if result['target_met'] else 'MISSED'}); load {load_start[0]}->{load_end[0]}; {path}")
    return 0


def _c_index(metrics: dict):
    """The first Harrell's C point estimate found in metrics.json (a sanity check that the run evaluated)."""
    stack = [metrics]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("c_index", "harrell_c") and isinstance(v, (int, float)):
                    return v
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return None


if __name__ == "__main__":
    sys.exit(main())
