"""Shared helpers of the benchmark scripts: machine description, nnU-Net environment, the bench
dataset (synthetic cohort -> convert_larc -> nnUNetv2_plan_and_preprocess, prepared once and
reused by the training and inference benchmarks), subprocess running and result files.

The bench dataset lives under ``bench_run/`` (git-ignored) with its own nnU-Net roots and its own
dataset id (502), so it never collides with the datasets of tests, the demo or other benches.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCH_RUN = REPO / "bench_run"
BENCH_DATASET_ID = 502
BENCH_DATASET_LABEL = "LARCBENCH"
BENCH_DATASET_NAME = f"Dataset{BENCH_DATASET_ID}_{BENCH_DATASET_LABEL}"
BENCH_PATIENTS = 36
BENCH_SEED = 7
CONFIGURATION = "3d_fullres"
#: bench dataset sizes: ``bench`` (rows a and b, default shape 80 x 80 x 16) and ``demo`` (the
#: 48 x 48 x 12 images of ``make demo``, where the patch is the whole image)
BENCH_SIZES = {"bench": {"id": BENCH_DATASET_ID, "label": BENCH_DATASET_LABEL, "shape": None, "folder": "dataset"},
               "demo": {"id": 506, "label": "LARCBENCHDEMO", "shape": [48, 48, 12], "folder": "dataset_demo"}}


def bench_dataset(size: str = "bench") -> dict:
    """Id, label, nnU-Net name, image shape and root folder of a bench dataset size."""
    if size not in BENCH_SIZES:
        raise ValueError(f"unknown bench size {size!r}; choose one of {sorted(BENCH_SIZES)}")
    d = dict(BENCH_SIZES[size])
    d["name"] = f"Dataset{d['id']}_{d['label']}"
    d["root"] = BENCH_RUN / d.pop("folder")
    return d


# ------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages (the machine is shared, so timings must be read with them)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(device: str = "cpu") -> dict:
    """What a reader needs to compare a number: CPU, cores, memory, library versions, device, date."""
    import torch
    from importlib.metadata import version
    info = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "nnunetv2": version("nnunetv2"),
        "device": device,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
    }
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        info["memory_total_gib"] = round(mem_kb / 2 ** 20, 1)
    except (OSError, StopIteration):
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line() -> str:
    """The command that produced a result, as it could be retyped."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv)


# ------------------------------------------------------------------------------------ environment
def nnunet_env(root: Path, results: Optional[Path] = None) -> Dict[str, str]:
    """Environment for nnU-Net commands on the bench roots under ``root``.

    Planning must not see ``nnUNet_n_proc_DA=0`` (nnU-Net's planner calls torch.set_num_threads with
    it); use :func:`training_env` for training and in-process trainers.
    """
    env = dict(os.environ)
    env.pop("nnUNet_n_proc_DA", None)
    env.update({
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(results if results is not None else root / "nnUNet_results"),
        # product trainers first, then the benchmark variants (nnU-Net splits on os.pathsep)
        "nnUNet_extTrainer": os.pathsep.join([str(REPO / "trainers"), str(REPO / "benchmarks" / "trainers")]),
        "nnUNet_compile": "f",
        "nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc", "2"),
        "PYTHONPATH": os.pathsep.join([str(REPO)]
                                      + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
    })
    return env


def training_env(env: Dict[str, str], n_proc_da: int = 0) -> Dict[str, str]:
    """``env`` plus the data-augmentation worker count (0: nnU-Net's single-threaded augmenter)."""
    return dict(env, nnUNet_n_proc_DA=str(n_proc_da))


def bin_of(name: str) -> str:
    """A console script of the running interpreter's environment (nnUNetv2_train, ...)."""
    return str(Path(sys.executable).with_name(name))


def run_command(cmd: Sequence[str], env: Dict[str, str], timeout: float = 1800,
                cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with the tail of its output (nnU-Net's traceback is the useful part)."""
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
                           f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def timed_command(cmd: Sequence[str], env: Dict[str, str], timeout: float = 1800) -> Dict[str, float]:
    """Time one run of ``cmd`` as a subprocess.

    Returns
    -------
    dict
        ``wall`` (seconds from start to exit) and ``cpu`` (user + system seconds of the command and
        the processes it waited for). On a shared, overloaded machine ``cpu`` is the steadier number:
        it does not count the time the command waited for a core.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run_command(cmd, env, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


# ------------------------------------------------------------------------------------ bench dataset
def bench_root() -> Path:
    return BENCH_RUN / "dataset"


def prepare_bench_dataset(root: Optional[Path] = None, patients: int = BENCH_PATIENTS, seed: int = BENCH_SEED,
                          log=print, size: str = "bench") -> dict:
    """Synthetic cohort (image shape of ``size``: 80 x 80 x 16 for ``bench``, 48 x 48 x 12 for
    ``demo``) -> ``convert_larc`` -> nnU-Net planning and preprocessing of 3d_fullres, once: a later
    call with the same size and seed reuses it.

    Returns
    -------
    dict
        ``root``, ``env`` (planning env), ``raw`` (raw dataset folder), ``preprocessed`` (folder),
        ``patients``, ``seed``, ``dataset_id``, ``dataset_name`` and ``prepare_seconds`` (0.0 when reused).
    """
    ds = bench_dataset(size)
    root = Path(root) if root is not None else ds["root"]
    env = nnunet_env(root)
    stamp = root / "prepared.json"
    wanted = {"patients": patients, "seed": seed, "dataset": ds["name"], "shape": ds["shape"]}
    if ds["shape"] is None:
        wanted.pop("shape")  # the stamp of a bench dataset prepared before sizes existed stays valid
    raw = root / "nnUNet_raw" / ds["name"]
    pre = root / "nnUNet_preprocessed" / ds["name"]
    info = {"root": root, "env": env, "raw": raw, "preprocessed": pre, "patients": patients, "seed": seed,
            "dataset_id": ds["id"], "dataset_name": ds["name"]}
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == wanted and (pre / "nnUNetPlans.json").is_file():
        return dict(info, prepare_seconds=0.0)
    if root.exists():
        import shutil
        shutil.rmtree(root)  # a half-made or differently sized dataset: start again
    root.mkdir(parents=True)
    start = time.perf_counter()
    log(f"[bench] preparing {ds['name']}: {patients} synthetic patients (seed {seed}) under {root}")
    cohort = root / "cohort"
    shape = ["--shape", *ds["shape"]] if ds["shape"] else []
    run_command([sys.executable, "-m", "dataset_conversion.synthetic_larc", "--out", cohort, "--patients", patients,
                 "--seed", seed, *shape, "--no-progress"], env)
    run_command([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", cohort, "--dataset-id",
                 ds["id"], "--name", ds["label"]], env)
    run_command([bin_of("nnUNetv2_plan_and_preprocess"), "-d", ds["id"], "-c", CONFIGURATION, "-np",
                 os.environ.get("nnUNet_def_n_proc", "2"), "--verify_dataset_integrity"], env)
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps({"key": wanted, "prepare_seconds": seconds}, indent=2))
    log(f"[bench] dataset ready in {seconds:.0f} s")
    return dict(info, prepare_seconds=seconds)


def plan_summary(preprocessed: Path) -> dict:
    """Patch size, batch size and network class of the 3d_fullres plan (what both trainers train with)."""
    plans = json.loads((Path(preprocessed) / "nnUNetPlans.json").read_text())
    cfg = plans["configurations"][CONFIGURATION]
    return {"patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"],
            "network": cfg["architecture"]["network_class_name"].rsplit(".", 1)[-1],
            "spacing": cfg["spacing"]}


# ------------------------------------------------------------------------------------ numbers and results
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def write_result(path: Optional[str], result: dict, default_name: str) -> Path:
    """Write a result dict as JSON to ``path`` (default ``bench_run/<default_name>.json``)."""
    out = Path(path) if path else BENCH_RUN / f"{default_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    return out
