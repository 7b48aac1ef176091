"""A tumour at a clinical field of view (issue 19.3): do a model's patient-level outputs change when
background is added around the tumour?

For each of the first ``--cases`` test cases of a converted dataset, every channel is placed at the
centre of a 256 x 256 x 30 canvas (x, y, z) of its own spacing, the canvas filled with noise of the
channel's own mean and standard deviation (so nnU-Net's per-image z-score changes little) and the
original image pasted in; both versions are predicted with ``nnUNetv2_predict_multitask`` (fold 0,
no mirroring, CPU), and the risk score and 36-month probability of each model compared. A model whose
heads read whole-image soft sums (``"tumour_quantities"``) sees the background's probability; the box
of ``"tumour_roi"`` does not (the remaining difference is the z-score and the segmentation itself).

    python benchmarks/check_clinical_fov.py --raw-dataset DIR --dataset 531 --trainers A,B --cases 3 \\
        --results RESULTS_DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bin_of, run_command, write_result  # noqa: E402

CANVAS_XYZ = (256, 256, 30)


def embed(path: Path, out: Path, rng: np.random.Generator) -> None:
    """The image at the centre of a noise canvas of CANVAS_XYZ voxels, same spacing and direction."""
    import SimpleITK as sitk
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)          # z, y, x
    size_zyx = CANVAS_XYZ[::-1]
    canvas = rng.normal(float(array.mean()), float(array.std()), size_zyx).astype(np.float32)
    canvas = np.maximum(canvas, 0.0) if array.min() >= 0 else canvas
    start = [(c - a) // 2 for c, a in zip(size_zyx, array.shape)]
    canvas[tuple(slice(s, s + a) for s, a in zip(start, array.shape))] = array
    result = sitk.GetImageFromArray(canvas)
    result.SetSpacing(image.GetSpacing())
    result.SetDirection(image.GetDirection())
    shift_xyz = [start[2 - d] * image.GetSpacing()[d] for d in range(3)]
    result.SetOrigin(tuple(o - s for o, s in zip(image.GetOrigin(), shift_xyz)))
    sitk.WriteImage(result, str(out), True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw-dataset", required=True)
    p.add_argument("--dataset", required=True, help="dataset id of the trained models")
    p.add_argument("--trainers", required=True, help="comma-separated trainer names (fold 0 trained)")
    p.add_argument("--cases", type=int, default=3)
    p.add_argument("-o", default=None, help="result JSON (default bench_run/clinical_fov.json)")
    a = p.parse_args(argv)
    raw = Path(a.raw_dataset)
    cases = sorted({f.name[:-len("_0000.nii.gz")] for f in (raw / "imagesTs").glob("*_0000.nii.gz")})[:a.cases]
    n_ch = len(json.loads((raw / "dataset.json").read_text())["channel_names"])
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="clinical_fov_"))
    small, big = work / "small", work / "big"
    small.mkdir()
    big.mkdir()
    for c in cases:
        for ch in range(n_ch):
            name = f"{c}_{ch:04d}.nii.gz"
            os.symlink(raw / "imagesTs" / name, small / name)
            embed(raw / "imagesTs" / name, big / name, rng)
    env = dict(os.environ)
    result = {"canvas_xyz": CANVAS_XYZ, "cases": cases, "trainers": {}}
    for trainer in a.trainers.split(","):
        tables = {}
        for tag, folder in (("small", small), ("big", big)):
            out = work / f"pred_{trainer}_{tag}"
            run_command([bin_of("nnUNetv2_predict_multitask"), "-i", folder, "-o", out, "-d", a.dataset, "-c",
                         "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "0",
                         "-nps", "0"], env, timeout=3600)
            tables[tag] = pd.read_csv(out / "predictions.csv", dtype={"case_id": str}).set_index("case_id")
        col = next(c for c in tables["small"].columns if c.startswith("p_recurrence_"))
        result["trainers"][trainer] = {
            c: {"risk_small": float(tables["small"].loc[c, "risk_score"]),
                "risk_big": float(tables["big"].loc[c, "risk_score"]),
                "p_small": float(tables["small"].loc[c, col]), "p_big": float(tables["big"].loc[c, col])}
            for c in cases}
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result(a.o, result, 'clinical_fov')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
