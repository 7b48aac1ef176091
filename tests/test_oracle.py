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


def _cohort_with_mapping(tmp_path, **options):
    """A tiny synthetic cohort and a converter-like patient_mapping.csv (no conversion needed here)."""
    from dataset_conversion.synthetic_larc import generate_cohort
    cohort, raw = tmp_path / "cohort", tmp_path / "raw"
    generate_cohort(cohort, 8, seed=4, shape=(16, 16, 4), **options)
    raw.mkdir()
    truth = pd.read_csv(cohort / "ground_truth.csv", dtype={"patient_id": str})
    pd.DataFrame({"case_id": [f"LARC_{i:04d}" for i in range(1, len(truth) + 1)][::-1],
                  "patient_id": truth["patient_id"]}).to_csv(raw / "patient_mapping.csv", index=False)
    return cohort, raw, truth


def _ranked_like(pred, raw, truth, expected):
    """The oracle's risk scores equal ``expected`` (per patient) up to the centring shift."""
    mapping = pd.read_csv(raw / "patient_mapping.csv", dtype=str).set_index("case_id")
    by_patient = pd.Series(np.asarray(expected, dtype=float), index=truth["patient_id"])
    wanted = by_patient.loc[mapping.loc[pred["case_id"], "patient_id"]].to_numpy()
    np.testing.assert_allclose(np.diff(pred["risk_score"].to_numpy()), np.diff(wanted), atol=1e-9)


def test_term_sets_on_a_cohort_with_findings(tmp_path):
    """image = every term_ column, quantities = volume + ADC terms, findings = the finding terms, volume as
    today (from tumour_volume_ml); each a shifted part of the full linear predictor's scale."""
    import pytest
    from dataset_conversion.oracle import image_terms
    from dataset_conversion.synthetic_larc import FINDINGS, IMAGE_RISK_TERMS
    risk = ("adc", "heterogeneity", "nodes")
    cohort, raw, truth = _cohort_with_mapping(tmp_path, findings=("heterogeneity", "margin", "nodes"), image_risk=risk)
    terms = truth[[f"term_{t}" for t in IMAGE_RISK_TERMS]]
    assert (truth["term_volume"] == 0).all() and (truth["term_margin"] == 0).all() and truth["term_nodes"].ne(0).all()
    expected = {"image": terms.sum(axis=1), "quantities": truth["term_volume"] + truth["term_adc"],
                "findings": truth[[f"term_{f}" for f in FINDINGS]].sum(axis=1),
                "volume": image_terms(truth["tumour_volume_ml"], truth["tumour_mean_adc"], "volume"),
                "all": truth["linear_predictor"]}
    for name, part in expected.items():
        _ranked_like(oracle_predictions(cohort, raw, terms=name), raw, truth, part)
    # The image terms are the whole image-borne part of the linear predictor.
    assert np.corrcoef(truth["linear_predictor"], terms.sum(axis=1))[0, 1] > 0
    with pytest.raises(ValueError, match="terms"):
        oracle_predictions(cohort, raw, terms="texture")


def test_a_permuted_cohorts_image_ceiling_has_no_finding_terms(tmp_path):
    """--permute-findings: the hazard's finding terms come from other patients, so they are no image
    ceiling: ``image`` is volume + ADC only and ``findings`` is refused."""
    import pytest
    cohort, raw, truth = _cohort_with_mapping(tmp_path, findings=("heterogeneity", "nodes"),
                                              image_risk=("volume", "adc", "heterogeneity", "nodes"),
                                              permute_findings=True)
    assert truth["term_nodes"].ne(0).all()
    _ranked_like(oracle_predictions(cohort, raw, terms="image"), raw, truth, truth["term_volume"] + truth["term_adc"])
    with pytest.raises(ValueError, match="permute-findings"):
        oracle_predictions(cohort, raw, terms="findings")


def test_term_sets_on_todays_cohort_are_as_before(tmp_path):
    """A cohort without findings has no term_ columns: image / quantities are volume + ADC, volume the
    volume term, exactly as before; findings is refused."""
    import pytest
    from dataset_conversion.oracle import image_terms
    cohort, raw, truth = _cohort_with_mapping(tmp_path)
    assert not [c for c in truth.columns if c.startswith("term_")]
    for terms in ("image", "volume"):
        _ranked_like(oracle_predictions(cohort, raw, terms=terms), raw, truth,
                     image_terms(truth["tumour_volume_ml"], truth["tumour_mean_adc"], terms))
    pd.testing.assert_frame_equal(oracle_predictions(cohort, raw, terms="quantities"),
                                  oracle_predictions(cohort, raw, terms="image"))
    with pytest.raises(ValueError, match="without --findings"):
        oracle_predictions(cohort, raw, terms="findings")


def test_command_line_offers_the_term_sets(tmp_path):
    from dataset_conversion.oracle import main
    cohort, raw, _ = _cohort_with_mapping(tmp_path, findings=("margin",), image_risk=("volume", "margin"))
    main(["--cohort", str(cohort), "--raw-dataset", str(raw), "--terms", "findings", "-o", str(tmp_path / "o.csv")])
    assert len(pd.read_csv(tmp_path / "o.csv")) == 8
