"""The image pathway end to end: real ``nnUNetv2_train`` of the quantities and the learned (ROI) pathway
on the image-pathway cohorts, each predicted and evaluated against what its inputs can reach.

The cohorts and datasets are :mod:`benchmarks.bench_image_pathway`'s (prepared once, shared). For each
training seed: the quality-budget trainers (``benchmarks/trainers/quality_variants.py``) on fold 0,
``nnUNetv2_predict_multitask`` on the internal and external test sets, and one
``evaluation/survival_eval.py`` run over every model beside

* the oracles of the cohort's image terms (``oracle_image``, ``oracle_findings``) and the full oracle;
* ``coxph_image_radiomics`` (volume + mean ADC on the first model's *predicted* mask of the test
  cases), ``coxph_clinical``, ``coxph_radiomics`` (clinical + volume + ADC), as in row c;
* ``radiomics_texture``: ``python -m evaluation.radiomics_baseline --features texture`` on the same
  predicted masks (elastic-net Cox, penalty by internal CV on the development cases).

``survival_eval`` compares every pair (paired bootstrap C difference), so the ROI - quantities
difference and each model against the baselines are in ``report_<cohort>_seed<s>/metrics.json``.

    python benchmarks/bench_image_pathway_e2e.py --cohort findings --seeds 0,1,2 \\
        [--models MultiRecTrainer_MRI_quality,MultiRecTrainer_MRI_ROI_quality]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_image_pathway as bip  # noqa: E402
from benchmarks.bench_quality import (_oracles, coxph_baselines, evaluate_seed, seed_record,  # noqa: E402
                                      _summary_over_seeds, train_and_predict)
from benchmarks.common import BENCH_RUN, command_line, machine_info, nnunet_env, run_command, write_result  # noqa: E402

MODELS = ("MultiRecTrainer_MRI_quality", "MultiRecTrainer_MRI_ROI_quality")


def dataset(name: str, patients: int, cohort_seed: int, root: Path) -> dict:
    home = bip.prepare(name, patients, cohort_seed, root)
    raw = next((home / "nnUNet_raw").iterdir())
    return {"env": nnunet_env(home), "raw": raw, "pre": home / "nnUNet_preprocessed" / raw.name,
            "cohort": home / "cohort", "root": home, "id": bip.COHORTS[name][0], "name": raw.name}


def extra_baselines(ds: dict, seg_dir: Path, work: Path, mt: dict) -> dict:
    """Texture radiomics on the predicted masks and the findings oracle (where the cohort has findings)."""
    from dataset_conversion.oracle import oracle_predictions
    from nnunet_multitask.contract import DatasetContract
    paths = {"radiomics_texture": work / "radiomics_texture.csv"}
    if not paths["radiomics_texture"].is_file():
        run_command([sys.executable, "-m", "evaluation.radiomics_baseline", "--raw-dataset", ds["raw"],
                     "--test-masks", seg_dir, "--features", "texture", "-o", paths["radiomics_texture"]], ds["env"])
    try:
        pred = oracle_predictions(ds["cohort"], ds["raw"], mt["horizon_months"], terms="findings")
    except ValueError:
        return paths
    pred = pred[pred.case_id.isin(DatasetContract.from_block(mt).held_out_cases)]
    paths["oracle_findings"] = work / "oracle_findings.csv"
    pred.to_csv(paths["oracle_findings"], index=False)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", default="findings", choices=sorted(bip.COHORTS))
    p.add_argument("--patients", type=int, default=600)
    p.add_argument("--cohort-seed", type=int, default=12)
    p.add_argument("--seeds", default="0")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--root", default=str(BENCH_RUN / "image_pathway"))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    started = time.time()
    ds = dataset(a.cohort, a.patients, a.cohort_seed, Path(a.root))
    seeds = [int(s) for s in a.seeds.split(",")]
    models = [m for m in a.models.split(",") if m]
    mt = json.loads((ds["raw"] / "dataset.json").read_text())["multitask"]
    work = ds["root"] / "eval_inputs"
    work.mkdir(parents=True, exist_ok=True)
    oracles = _oracles(ds, work, mt)
    per_seed, comparisons, train_seconds = {}, {}, {}
    for s in seeds:
        runs = [train_and_predict(ds, m, True, s) for m in models]
        train_seconds.update({f"{r['trainer']}@seed{s}": r["train_seconds"] for r in runs})
        base = coxph_baselines(ds, runs[0]["predictions"], work / f"seed{s}")
        base.update(extra_baselines(ds, runs[0]["predictions"], work / f"seed{s}", mt))
        names = [r["trainer"] for r in runs] + list(oracles) + list(base)
        preds = [r["predictions"] / "predictions.csv" for r in runs] + list(oracles.values()) + list(base.values())
        segs = [r["predictions"] for r in runs] + ["none"] * (len(oracles) + len(base))
        metrics = evaluate_seed(ds, names, preds, segs, ds["root"] / f"report_seed{s}", a.bootstrap)
        for name, sets in metrics["models"].items():
            per_seed.setdefault(name, {})[s] = seed_record(sets)
        comparisons[s] = {k: {st: {f: v.get(f) for f in ("c_index_difference", "c_index_difference_ci", "events")}
                              for st, v in c["sets"].items()}
                          for k, c in metrics["comparisons"].items() if c["model_a"] in models}
    result = {"benchmark": "image_pathway_e2e", "cohort": a.cohort, "command": command_line(),
              "machine": machine_info(), "models": models, "seeds": seeds, "training_seconds": train_seconds,
              "per_seed": per_seed, "summary": _summary_over_seeds(per_seed), "comparisons": comparisons,
              "wall_seconds": round(time.time() - started, 1)}
    out = write_result(a.out, result, f"image_pathway_e2e_{a.cohort}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
