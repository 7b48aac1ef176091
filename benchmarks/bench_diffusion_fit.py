#!/usr/bin/env python
"""Speed of :func:`dataset_conversion.diffusion_fit.fit_diffusion` on one rectal DWI-sized volume
(target: < 10 s on 2 cores for 256 x 256 x 30 voxels and b = 0, 50, 800, 1500, 2000 s/mm^2).

The volume: an elliptical body (about half the voxels) of smoothly varying tissue, each voxel a mix
of the synthetic cohort's fat / muscle / wall / tumour-like Dapp and Kapp
(:mod:`dataset_conversion.synthetic_larc` values), S0 = 1000, magnitude (Rician) noise with
sigma = 1000 / ``--snr`` everywhere, so the background is noise and the default foreground threshold
is exercised. The timed call is the default fit (ADC on b <= 1000, DKI WLS + bounded refinement, no
mask), median of ``--repeats``; the ``refine=False`` fit is timed once beside it. The accuracy inside
the body (median absolute relative error of Dapp, median absolute error of Kapp) is printed so a
faster but wrong fit cannot pass unnoticed.

Usage::

    python benchmarks/bench_diffusion_fit.py [--shape 30 256 256] [--repeats 3] [--snr 25] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import command_line, cpu_model, load_average, median, write_result  # noqa: E402
from dataset_conversion.diffusion_fit import fit_diffusion  # noqa: E402
from dataset_conversion.synthetic_larc import TISSUE_DAPP, TISSUE_KAPP  # noqa: E402

TARGET_SECONDS = 10.0
B_VALUES = np.array([0.0, 50.0, 800.0, 1500.0, 2000.0])
TUMOUR_DAPP, TUMOUR_KAPP = 1350.0, 1.0          # about the synthetic cohort's tumour (ADC 1000, Dapp/ADC ~1.35)


def make_volume(shape, snr: float, seed: int):
    """(n_b, *shape) float32 Rician DWI, the true Dapp / Kapp maps and the body mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = x ** 2 / 0.8 + y ** 2 / 0.6 < 1
    tissues = [(TISSUE_DAPP[t], TISSUE_KAPP[t]) for t in ("fat", "muscle", "wall")] + [(TUMOUR_DAPP, TUMOUR_KAPP)]
    weights = np.stack([np.exp(3 * np.sin((i + 1) * 2.1 * x + i) * np.cos((i + 2) * 1.7 * y - i) * np.cos(z + i))
                        for i in range(len(tissues))])
    weights /= weights.sum(axis=0)
    dapp = sum(w * d for w, (d, _) in zip(weights, tissues))
    kapp = sum(w * k for w, (_, k) in zip(weights, tissues))
    s0 = np.where(body, 1000.0, 0.0)
    signal = np.empty((B_VALUES.size,) + tuple(shape), np.float32)
    sigma = 1000.0 / snr
    for i, b in enumerate(B_VALUES):
        d = dapp * 1e-6
        clean = s0 * np.exp(-b * d + b * b * d * d * kapp / 6.0)
        signal[i] = np.hypot(clean + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape))
    return signal, dapp, kapp, body


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[30, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--snr", type=float, default=25.0, help="S0 / sigma at b=0 (default 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default bench_run/diffusion_fit.json)")
    args = parser.parse_args(argv)

    signal, dapp, kapp, body = make_volume(args.shape, args.snr, args.seed)
    load_before = load_average()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fit = fit_diffusion(signal, B_VALUES)
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    fit_wls = fit_diffusion(signal, B_VALUES, refine=False)
    seconds_wls = time.perf_counter() - start
    load_after = load_average()

    inside = body & (fit.dapp > 0)
    result = {
        "command": command_line(),
        "shape_zyx": list(args.shape), "b_values": B_VALUES.tolist(), "snr_b0": args.snr,
        "seconds_default_fit": seconds, "median_seconds": median(seconds), "target_seconds": TARGET_SECONDS,
        "seconds_refine_false": seconds_wls,
        "n_voxels": int(body.size), "n_fitted_dki": fit.record["dki"]["n_fitted"],
        "clipped_fraction": fit.record["dki"]["clipped_fraction"],
        "dapp_median_abs_rel_error_body": float(np.median(np.abs(fit.dapp[inside] / dapp[inside] - 1))),
        "kapp_median_abs_error_body": float(np.median(np.abs(fit.kapp[inside] - kapp[inside]))),
        "kapp_median_abs_error_body_refine_false": float(np.median(np.abs(fit_wls.kapp[inside] - kapp[inside]))),
        "machine": {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(),
                    "cores_available": len(os.sched_getaffinity(0)), "numpy": np.__version__,
                    "load_average_before": load_before, "load_average_after": load_after},
    }
    path = write_result(args.out, result, "diffusion_fit")
    print(f"fit_diffusion {'x'.join(map(str, args.shape))} voxels, b = {B_VALUES.astype(int).tolist()}: median "
          f"{result['median_seconds']:.2f} s of {args.repeats} ({', '.join(f'{s:.2f}' for s in seconds)}; "
          f"target < {TARGET_SECONDS:g} s); refine=False {seconds_wls:.2f} s")
    print(f"  DKI voxels fitted {result['n_fitted_dki']} of {result['n_voxels']}, clipped "
          f"{100 * result['clipped_fraction']:.2f} %; in the body: Dapp median |rel. error| "
          f"{100 * result['dapp_median_abs_rel_error_body']:.1f} %, Kapp median |error| "
          f"{result['kapp_median_abs_error_body']:.3f} "
          f"(refine=False {result['kapp_median_abs_error_body_refine_false']:.3f})")
    print(f"  machine: {result['machine']['cpu_model']}, {result['machine']['cores_available']} core(s) available, "
          f"load average {load_before} before, {load_after} after (shared machine)")
    print(f"  wrote {path}")
    return 0 if result["median_seconds"] < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
