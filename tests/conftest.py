"""Shared fixtures: one tiny synthetic cohort, converted and preprocessed by the real nnU-Net
commands, then trained once with MultiRecTrainer_smoke on the CPU (session scope: the
trainer, predictor and fault tests all reuse it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_SHAPE = ("40", "40", "10")
TINY_PATIENTS = "14"
DATASET_ID = "501"
DATASET_NAME = "Dataset501_LARC"
SMOKE_SEED = "5"  # MULTIREC_SEED of the shared smoke training (tests/test_trainer_e2e.py reruns it)


def nnunet_env(root: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
        # product trainers first, then the benchmark variants (nnU-Net splits on os.pathsep)
        "nnUNet_extTrainer": os.pathsep.join([str(REPO / "trainers"),
                                              str(REPO / "benchmarks" / "trainers")]),
        "nnUNet_compile": "f",
        "nnUNet_def_n_proc": "1",
        "PYTHONPATH": str(REPO),
    })
    return env


def train_env(env: dict) -> dict:
    """Training runs with the single-threaded augmenter (nnUNet_n_proc_DA=0); planning must not see
    that setting (nnU-Net's planner calls torch.set_num_threads with it)."""
    return dict(env, nnUNet_n_proc_DA="0")


def run(cmd, env, cwd=None, timeout=900):
    """Run a command; on failure show its output (nnU-Net's tracebacks are the useful part)."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                             f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def bin_of(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.fixture(scope="session")
def preprocessed_dataset(tmp_path_factory):
    """A 14-patient synthetic cohort -> convert_larc -> nnUNetv2_plan_and_preprocess (real commands)."""
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    cohort = root / "cohort"
    run([sys.executable, "-m", "dataset_conversion.synthetic_larc", "--out", str(cohort), "--patients",
         TINY_PATIENTS, "--seed", "1", "--shape", *TINY_SHAPE], env, cwd=REPO)
    run([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", str(cohort), "--dataset-id",
         DATASET_ID, "--name", "LARC"], env, cwd=REPO)
    plan = run([bin_of("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", "1",
                "-npfp", "1", "--verify_dataset_integrity"], env, cwd=REPO)
    return {"root": root, "env": env, "cohort": cohort, "raw": root / "nnUNet_raw" / DATASET_NAME,
            "preprocessed": root / "nnUNet_preprocessed" / DATASET_NAME, "plan_output": plan.stdout + plan.stderr}


@pytest.fixture(scope="session")
def smoke_model(preprocessed_dataset):
    """MultiRecTrainer_smoke trained on fold 0 with the real nnUNetv2_train on the CPU."""
    env = dict(train_env(preprocessed_dataset["env"]), MULTIREC_SEED=SMOKE_SEED)
    proc = run([bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", "MultiRecTrainer_smoke",
                "-device", "cpu"], env, cwd=REPO)
    folder = (preprocessed_dataset["root"] / "nnUNet_results" / DATASET_NAME /
              "MultiRecTrainer_smoke__nnUNetPlans__3d_fullres")
    return dict(preprocessed_dataset, model_folder=folder, train_stdout=proc.stdout)
