"""Design of the learned image pathway on a design cohort's development cases only (issue 19.4).

Reads the development cases of a cohort prepared by :mod:`benchmarks.bench_image_pathway` (never its
test sets), splits them 80/20 (stratified by event, seed 0) and scores, on the 20 % validation part,
Harrell's C of:

* ``oracle_findings`` / ``oracle_image``: the generator's image terms (the ceiling of the inputs);
* ``coxph_quantities``: CoxPH on the tumour quantities, fitted on the 80 %;
* ``coxnet_texture``: the texture radiomics baseline (elastic net), fitted on the 80 %;
* the heads (``bench_image_pathway.train_heads``) with each ROI-encoder variant of ``--variants``,
  best validation epoch and its C (which is optimistic by the choice of the epoch, alike for every
  variant).

The numbers here choose the design; the final table (``bench_image_pathway.py``) reads the test sets
of cohorts drawn with other generator seeds.

    python benchmarks/design_image_pathway.py --cohort findings --variants base,std --epochs 25
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_image_pathway as bip  # noqa: E402
from benchmarks.common import BENCH_RUN  # noqa: E402


def main(argv=None) -> int:
    from sklearn.model_selection import train_test_split
    from evaluation.metrics import harrell_c
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", default="findings")
    p.add_argument("--cohort-seed", type=int, default=11)
    p.add_argument("--patients", type=int, default=600)
    p.add_argument("--variants", default="base")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--root", default=str(BENCH_RUN / "image_pathway"))
    p.add_argument("-o", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    home = bip.prepare(a.cohort, a.patients, a.cohort_seed, Path(a.root))
    data = bip.load(home, test_sets=False)
    dev = sorted(data["cases"])
    train, val = train_test_split(dev, test_size=0.2, random_state=0, stratify=[int(data["event"][k]) for k in dev])
    vt = np.array([data["time"][k] for k in val])
    ve = np.array([data["event"][k] for k in val])
    out = {"cohort": a.cohort, "cohort_seed": a.cohort_seed, "n_train": len(train), "n_val": len(val),
           "val_events": int(ve.sum()), "references": {}, "variants": {}}
    for terms in ("findings", "image"):
        try:
            o = bip.oracle(data, terms)
            out["references"][f"oracle_{terms}"] = float(harrell_c(vt, ve, np.array([o[k] for k in val])))
        except (ValueError, KeyError):
            pass
    q, bx = bip.quantities(data), bip.boxes(data)
    out["references"]["coxph_quantities"] = float(harrell_c(vt, ve, bip.coxph(q, train, val, data)))
    tex = bip.texture(data)
    out["references"]["coxnet_texture"] = float(harrell_c(vt, ve, bip.coxnet(tex, train, val, data)))
    print(json.dumps(out["references"]), flush=True)
    for variant in a.variants.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            kind = "quantities" if variant == "quantities" else "roi"
            _, _, curve = bip.train_heads(kind, data, q, bx, train, val, seed, a.epochs, lr=a.lr,
                                          encoder=None if kind == "quantities" else variant)
            out["variants"].setdefault(variant, {})[f"seed{seed}"] = {
                "best_val_c": max(curve), "best_epoch": int(np.argmax(curve)) + 1, "curve": curve}
            print(f"{variant} seed {seed}: best val C {max(curve):.3f} at epoch {int(np.argmax(curve)) + 1}; "
                  f"last {curve[-1]:.3f}; curve {np.round(curve, 2).tolist()}", flush=True)
    if a.o:
        Path(a.o).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
