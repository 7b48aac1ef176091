"""The package as a user installs it: a wheel built from the tree, installed into a fresh virtual
environment, run from outside the source tree (issue 22 item 5).

``make`` installs the project editable, which would hide a file that the wheel lacks (the default
clinical schema was one: read through ``__file__`` but not declared as package data). The fresh
environment gets the wheel with ``--no-deps``; its dependencies (torch, nnU-Net, ...) come from this
environment's site-packages through a ``.pth`` line appended after its own, so the installed copy of
our packages is the one imported (checked) and nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

try:
    from cohort_factory import write_cohort
except ImportError:  # tests/ imported as a package
    from tests.cohort_factory import write_cohort

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("nnunet_multitask", "clinical", "dataset_conversion", "evaluation", "trainers")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    # a copy of the sources: setuptools builds in the source tree (build/, *.egg-info), which must stay clean
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "bench_run", "demo_run", "nnUNet_*", "__pycache__",
        ".pytest_cache", ".ci_work", "cohort"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), "-q"], check=True, capture_output=True, cwd=root)
    wheel = next((root / "dist").glob("nnunet_multitask-*.whl"))
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, cwd=root)
    # the dependencies: this environment's site-packages, after the fresh one's own
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (Path(purelib) / "zz_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {"root": root, "python": str(python), "bin": env_dir / "bin", "purelib": purelib, "wheel": wheel,
            "env": env}


def _run(installed, args, cwd, **kw):
    return subprocess.run(args, cwd=cwd, env=dict(installed["env"], **kw.pop("env", {})), capture_output=True,
                          text=True, timeout=600, **kw)


def test_wheel_holds_the_schema_and_imports_from_the_installed_copy(installed):
    import zipfile
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "clinical/larc_schema.json" in names
    proc = _run(installed, [installed["python"], "-c", "import json, " + ", ".join(PACKAGES) + "; print(json.dumps("
                            "{p: __import__(p).__file__ for p in " + repr(PACKAGES) + "}))"], installed["root"])
    assert proc.returncode == 0, proc.stderr
    for package, path in json.loads(proc.stdout).items():
        assert path.startswith(installed["purelib"]), (package, path)


def test_installed_converter_predictor_help_and_evaluation_run_outside_the_tree(installed, tmp_path):
    cohort = tmp_path / "cohort"
    write_cohort(cohort, n_patients=12)
    raw = tmp_path / "raw"
    conv = _run(installed, [str(installed["bin"] / "nnUNetv2_convert_larc"), "--cohort", str(cohort), "--dataset-id",
                            "777", "--name", "Wheel"], tmp_path,
                env={"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(tmp_path / "pre"),
                     "nnUNet_results": str(tmp_path / "res")})
    assert conv.returncode == 0, conv.stderr  # the default schema comes from the installed package data
    dataset = raw / "Dataset777_Wheel"
    assert (dataset / "dataset.json").is_file()

    help_proc = _run(installed, [str(installed["bin"] / "nnUNetv2_predict_multitask"), "--help"], tmp_path)
    assert help_proc.returncode == 0 and "--continue" in help_proc.stdout, help_proc.stderr

    # the evaluation on a tiny hand-made prediction of the converted test cases
    import pandas as pd
    outcomes = pd.read_csv(dataset / "outcomes_test.csv", dtype={"case_id": str})
    preds = pd.DataFrame({"case_id": outcomes["case_id"], "risk_score": range(len(outcomes))})
    preds.to_csv(tmp_path / "predictions.csv", index=False)
    ev = _run(installed, [str(installed["bin"] / "multitask_survival_eval"), "--predictions",
                          str(tmp_path / "predictions.csv"), "--outcomes", str(dataset / "outcomes_test.csv"),
                          "--bootstrap", "20", "--no-figures", "-o", str(tmp_path / "report")], tmp_path)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert (tmp_path / "report" / "metrics.json").is_file()
