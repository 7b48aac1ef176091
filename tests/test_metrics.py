"""Metric functions of evaluation/metrics.py against independent computations."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored

from evaluation import metrics as M


@pytest.fixture(scope="module")
def gbsg2():
    """GBSG2 recurrence-free survival (months) with a CoxPH risk on a few covariates."""
    from sksurv.datasets import load_gbsg2
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    features, outcome = load_gbsg2()
    covariates = OneHotEncoder().fit_transform(features[["age", "tsize", "pnodes", "horTh", "tgrade"]])
    time = outcome["time"] / 30.4375
    event = outcome["cens"].astype(bool)
    model = CoxPHSurvivalAnalysis().fit(covariates, outcome)
    return time, event, model.predict(covariates)


def structural_components_delong(labels, scores_a, scores_b):
    """DeLong et al. (1988) directly from the O(n^2) definition: psi(X, Y) = 1, 1/2, 0."""
    labels = np.asarray(labels)
    result = []
    for scores in (scores_a, scores_b):
        x, y = scores[labels == 1], scores[labels == 0]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        result.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))  # AUC, V10(X_i), V01(Y_j)
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = result
    m, n = len(v10_a), len(v01_a)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    return np.array([auc_a, auc_b]), s10 / m + s01 / n


def test_harrell_c_matches_lifelines_on_gbsg2(gbsg2):
    from lifelines.utils import concordance_index

    time, event, risk = gbsg2
    ours = M.harrell_c(time, event, risk)
    # lifelines expects a survival score (higher = longer survival), hence -risk.
    assert ours == pytest.approx(concordance_index(time, -risk, event), abs=1e-10)
    assert 0.6 < ours < 0.75


def test_vectorised_c_equals_sksurv_on_full_sample_and_on_resamples(gbsg2):
    time, event, risk = gbsg2
    risk = np.round(risk, 1)  # create risk ties so the 0.5 credit is exercised
    time = np.round(time)     # and time ties (event vs censored at the same month)
    full = M.weighted_harrell_c(time, event, risk, np.ones((1, len(time))))[0, 0]
    assert full == pytest.approx(concordance_index_censored(event, time, risk)[0], abs=1e-12)
    counts = M.resample_counts(len(time), 5, seed=3)
    vectorised = M.weighted_harrell_c(time, event, risk, counts)[0]
    for b in range(5):
        index = np.repeat(np.arange(len(time)), counts[b])
        assert len(index) == len(time)
        direct = concordance_index_censored(event[index], time[index], risk[index])[0]
        assert vectorised[b] == pytest.approx(direct, abs=1e-12)


def test_resample_counts_are_seeded():
    a, b, c = M.resample_counts(50, 20, 1), M.resample_counts(50, 20, 1), M.resample_counts(50, 20, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a.sum(axis=1) == 50).all()


def test_weighted_c_is_nan_without_comparable_pairs():
    out = M.weighted_harrell_c([1.0, 2.0], [False, False], [0.1, 0.2], np.ones((1, 2)))
    assert np.isnan(out[0, 0])


def test_percentile_ci():
    assert M.percentile_ci(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert M.percentile_ci([np.nan, np.nan]) is None


def test_fast_delong_equals_structural_components_definition():
    rng = np.random.default_rng(0)
    labels = rng.random(80) < 0.4
    score_a = np.round(labels + rng.normal(size=80), 1)  # with ties
    score_b = np.round(0.5 * labels + rng.normal(size=80), 1)
    aucs, cov = M.delong_auc_covariance(labels, np.vstack([score_a, score_b]))
    ref_aucs, ref_cov = structural_components_delong(labels, score_a, score_b)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    assert aucs[0] == pytest.approx(roc_auc_score(labels, score_a))

    auc, (low, high), se = M.delong_ci(labels, score_a)
    assert se == pytest.approx(np.sqrt(ref_cov[0, 0]))
    assert low == pytest.approx(auc - 1.959963984540054 * se)
    assert high == pytest.approx(min(1, auc + 1.959963984540054 * se))

    test = M.delong_test(labels, score_a, score_b)
    z = (ref_aucs[0] - ref_aucs[1]) / np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert test["z"] == pytest.approx(z)
    from scipy.stats import norm
    assert test["p_value"] == pytest.approx(2 * norm.sf(abs(z)))
    assert M.delong_test(labels, score_a, score_a)["p_value"] == 1.0


def test_delong_on_hanley_mcneil_ct_example():
    """Hanley & McNeil (Radiology 1982) CT ratings 1-5 of 58 normal and 51 abnormal: AUC 0.893."""
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    scores = np.concatenate([np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)])
    labels = np.concatenate([np.zeros(58), np.ones(51)])
    auc, _, se = M.delong_ci(labels, scores)
    assert auc == pytest.approx(0.893, abs=5e-4)
    # DeLong's nonparametric SE is close to Hanley-McNeil's exponential-model SE of 0.032.
    assert se == pytest.approx(np.sqrt(structural_components_delong(labels, scores, scores)[1][0, 0]))
    assert 0.025 < se < 0.035


def test_km_survival_at_matches_lifelines(gbsg2):
    from lifelines import KaplanMeierFitter

    time, event, _ = gbsg2
    kmf = KaplanMeierFitter().fit(time, event)
    for t in (12.0, 36.0, 60.0):
        assert M.km_survival_at(time, event, t) == pytest.approx(float(kmf.survival_function_at_times(t).iloc[0]))
    assert np.isnan(M.km_survival_at(time, event, time.max() + 1))
    assert M.number_at_risk([1, 2, 3], [0, 2, 5]) == [3, 2, 0]


def test_dice_coefficient():
    a = np.zeros((4, 4), dtype=np.uint8)
    b = np.zeros((4, 4), dtype=np.uint8)
    a[:2, :2] = 1                      # 4 voxels
    b[:2, :3] = 1                      # 6 voxels, 4 shared
    assert M.dice_coefficient(a, b) == pytest.approx(8 / 10)
    assert np.isnan(M.dice_coefficient(np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="shapes differ"):
        M.dice_coefficient(np.zeros(3), np.zeros(4))
