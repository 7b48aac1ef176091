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


def test_partial_oracles_rank_by_the_image_terms(preprocessed_dataset):
    """The image-only and volume-only oracles rank cases by the generator's image terms."""
    from dataset_conversion.oracle import image_terms
    from dataset_conversion.synthetic_larc import COEFFICIENTS
    import pytest
    raw, cohort = preprocessed_dataset["raw"], preprocessed_dataset["cohort"]
    mapping = pd.read_csv(raw / "patient_mapping.csv", dtype=str).set_index("case_id")
    truth = pd.read_csv(cohort / "ground_truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    for terms in ("image", "volume"):
        pred = oracle_predictions(cohort, raw, terms=terms).set_index("case_id")
        t = truth.loc[mapping.loc[pred.index, "patient_id"]]
        expected = image_terms(t.tumour_volume_ml.to_numpy(), t.tumour_mean_adc.to_numpy(), terms)
        np.testing.assert_allclose(np.diff(pred.risk_score.to_numpy()), np.diff(expected), atol=1e-9)
        assert pred["p_recurrence_36m"].between(0, 1).all()
    # volume doubled: the volume term moves by coefficient x ln 2 / log-sd
    d = image_terms([16.0], [1000.0], "volume") - image_terms([8.0], [1000.0], "volume")
    assert d[0] == pytest.approx(COEFFICIENTS["log_volume_std"] * np.log(2) / 0.6)
    with pytest.raises(ValueError, match="terms"):
        oracle_predictions(cohort, raw, terms="clinical")
