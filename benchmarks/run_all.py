"""`make bench`: every benchmark in turn; each writes bench_run/<name>.json and prints a summary.

Rows of BENCHMARKS.md: a. training speed and memory, b. inference speed, c. quality (long: about an
hour per model on a 2-core CPU; skip with BENCH_SKIP_QUALITY=1, which also skips c.9, missing
series), d. evaluation speed, e. diffusion fitting speed, f. prediction at scale (1,000 cases in 4 parts),
g. complete-case vs IPCW classification head.
"""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_training_speed.py", "bench_inference_speed.py", "bench_eval_speed.py", "bench_quality.py",
           "bench_missing_series.py", "bench_diffusion_fit.py", "bench_prediction_scale.py", "bench_ipcw.py"]
QUALITY = ("bench_quality.py", "bench_missing_series.py")


def main() -> int:
    failed = []
    for script in SCRIPTS:
        if script in QUALITY and os.environ.get("BENCH_SKIP_QUALITY"):
            print("[bench] quality benchmark skipped (BENCH_SKIP_QUALITY set)")
            continue
        print(f"\n[bench] {script}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)], cwd=HERE.parent).returncode != 0:
            failed.append(script)
    if failed:
        print(f"[bench] failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
