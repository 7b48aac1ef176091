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


def test_oracle_survival_is_calibrated_against_the_generator():
    """Issue 10.1: the oracle's S(36) is the generator's. Over a 2,000-patient cohort drawn by the
    generator itself, the mean oracle S(36) lies inside the Kaplan-Meier S(36)'s 95 % interval, and a
    Cox model of the drawn outcomes on the oracle's log relative hazard has slope near 1."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv
    from dataset_conversion.oracle import oracle_survival
    from dataset_conversion.synthetic_larc import BASELINE_LP_OFFSET, sample_outcome_model

    cohort = sample_outcome_model(2000, seed=123)
    event = cohort["dfs_event"].to_numpy().astype(bool)
    time = cohort["dfs_months"].to_numpy(dtype=float)
    lp = cohort["linear_predictor"].to_numpy(dtype=float)
    t, s, (lo, hi) = kaplan_meier_estimator(event, time, conf_type="log-log")
    i = np.searchsorted(t, 36.0, side="right") - 1
    km, km_lo, km_hi = s[i], lo[i], hi[i]
    mean_oracle = float(oracle_survival(lp, 36.0).mean())
    assert km_lo <= mean_oracle <= km_hi, (mean_oracle, km, km_lo, km_hi)
    # the uncentred exp(lp) (the fault this test guards against) lands far outside
    uncentred = float(oracle_survival(lp + BASELINE_LP_OFFSET, 36.0).mean())
    assert not km_lo <= uncentred <= km_hi
    slope = CoxPHSurvivalAnalysis().fit((lp - BASELINE_LP_OFFSET)[:, None], Surv.from_arrays(event, time)).coef_[0]
    assert abs(slope - 1.0) < 0.15, slope


def test_oracle_file_uses_the_generator_survival(preprocessed_dataset):
    from dataset_conversion.oracle import oracle_survival
    pred = oracle_predictions(preprocessed_dataset["cohort"], preprocessed_dataset["raw"])
    np.testing.assert_allclose(pred["surv_prob_36m"], oracle_survival(pred["risk_score"], 36.0))
    np.testing.assert_allclose(pred["surv_prob_12m"], oracle_survival(pred["risk_score"], 12.0))
