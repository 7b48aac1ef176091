"""The synthetic oracle predictions file (true linear predictor through the patient mapping)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dataset_conversion.oracle import oracle_predictions, held_out_test_cases


def test_oracle_maps_ground_truth_to_case_ids(preprocessed_dataset):
    raw, cohort = preprocessed_dataset["raw"], preprocessed_dataset["cohort"]
    pred = oracle_predictions(cohort, raw)
    mapping = pd.read_csv(raw / "patient_mapping.csv", dtype=str)
    truth = pd.read_csv(cohort / "ground_truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert sorted(pred.case_id) == sorted(mapping.case_id)
    expected = mapping.set_index("case_id").patient_id.map(truth.linear_predictor)
    np.testing.assert_allclose(pred.set_index("case_id").risk_score, expected.loc[pred.case_id])
    p = pred["p_recurrence_36m"]
    assert p.between(0, 1).all()
    s = pred[["surv_prob_12m", "surv_prob_24m", "surv_prob_36m", "surv_prob_60m"]].to_numpy()
    assert (np.diff(s, axis=1) <= 0).all()
    np.testing.assert_allclose(1 - pred["surv_prob_36m"], p)
    # higher linear predictor, higher recurrence probability
    assert (np.diff(p.to_numpy()[np.argsort(pred.risk_score.to_numpy())]) >= 0).all()
    assert held_out_test_cases(raw) and held_out_test_cases(raw) <= set(pred.case_id)
