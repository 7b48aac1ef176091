"""The synthetic cohort's oracle as a predictions file: the true linear predictor, evaluated like a model.

The oracle's risk is the true linear predictor of the generator's proportional-hazards model;
its recurrence probability and survival curve follow from the known Weibull baseline. It is
the ceiling any model can reach on that cohort (evaluation only: ``ground_truth.csv`` never
enters training, model selection or prediction).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dataset_conversion.synthetic_larc import WEIBULL_SCALE_MONTHS, WEIBULL_SHAPE

SURVIVAL_TIMES = (12, 24, 36, 60)


def oracle_predictions(cohort_dir, raw_dataset_dir, horizon: float = 36.0) -> pd.DataFrame:
    """Predictions CSV rows (``case_id``, ``risk_score``, ``p_recurrence_<H>m``, ``surv_prob_<t>m``)
    for every converted case, from ``ground_truth.csv`` and the converter's ``patient_mapping.csv``."""
    truth = pd.read_csv(Path(cohort_dir) / "ground_truth.csv", dtype={"patient_id": str})
    mapping = pd.read_csv(Path(raw_dataset_dir) / "patient_mapping.csv", dtype=str)
    merged = mapping.merge(truth, on="patient_id", how="left", validate="one_to_one")
    if merged["linear_predictor"].isna().any():
        missing = list(merged.loc[merged.linear_predictor.isna(), "patient_id"])
        raise ValueError(f"ground_truth.csv has no linear predictor for patient(s) {missing}")
    lp = merged["linear_predictor"].to_numpy(dtype=float)

    def survival(t):
        return np.exp(-((t / WEIBULL_SCALE_MONTHS) ** WEIBULL_SHAPE) * np.exp(lp))

    out = pd.DataFrame({"case_id": merged["case_id"], "risk_score": lp,
                        f"p_recurrence_{int(horizon)}m": 1.0 - survival(horizon)})
    for t in SURVIVAL_TIMES:
        out[f"surv_prob_{t}m"] = survival(float(t))
    return out.sort_values("case_id").reset_index(drop=True)


def held_out_test_cases(raw_dataset_dir) -> set:
    """Case ids of the internal and external test sets (from the dataset's multitask block)."""
    import json
    from nnunet_multitask.dataset import held_out_cases, multitask_block
    return held_out_cases(multitask_block(json.loads((Path(raw_dataset_dir) / "dataset.json").read_text())))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", required=True)
    p.add_argument("--raw-dataset", required=True, help="the converted dataset folder ($nnUNet_raw/DatasetXXX_Name)")
    p.add_argument("--horizon", type=float, default=36.0)
    p.add_argument("--test-only", action="store_true", help="only the internal and external test cases")
    p.add_argument("-o", required=True, help="output CSV")
    a = p.parse_args(argv)
    out = oracle_predictions(a.cohort, a.raw_dataset, a.horizon)
    if a.test_only:
        out = out[out.case_id.isin(held_out_test_cases(a.raw_dataset))]
    out.to_csv(a.o, index=False)


if __name__ == "__main__":
    main()
