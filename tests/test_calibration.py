"""evaluation/calibration.py against lifelines, statsmodels and hand-made cases."""
import numpy as np
import pandas as pd
import pytest

from evaluation import calibration as C

H = 36.0


def _cohort(n=600, seed=1, censor=(10, 80)):
    """Exponential survival with a known linear predictor: p = 1 - S(H | case) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(size=n)
    t = rng.exponential(1 / (0.02 * np.exp(lp)))
    c = rng.uniform(*censor, n)
    return np.round(np.minimum(t, c), 6), (t <= c).astype(int), 1 - np.exp(-0.02 * H * np.exp(lp))


@pytest.fixture(scope="module")
def calibrated():
    time, event, p = _cohort()
    return time, event, p, C.calibration_at_horizon(time, event, p, H, 300, 0)


def test_cox_fit_matches_lifelines_and_statsmodels_breslow():
    from lifelines import CoxPHFitter
    from statsmodels.duration.hazard_regression import PHReg

    time, event, p = _cohort(200, seed=3)
    t, d = np.minimum(time, H), event.astype(bool) & (time <= H)
    x = C.cloglog(p)
    design = C.rcs_basis(x, np.quantile(x, C.KNOT_QUANTILES))
    frame = pd.DataFrame({"x": design[:, 0], "s": design[:, 1], "T": t, "E": d.astype(int)})
    cph = CoxPHFitter().fit(frame, "T", "E")  # no tied event times: Efron = Breslow
    beta, cumulative = C.cox_fit(t, d, design)
    assert beta[0] == pytest.approx(cph.params_[["x", "s"]].to_numpy(), abs=1e-6)
    survival = cph.predict_survival_function(frame, times=[H]).to_numpy().ravel()
    assert np.exp(-cumulative[0] * np.exp(design @ beta[0])) == pytest.approx(survival, abs=1e-6)

    # Frequency weights = repeated rows, ties included (Breslow), against statsmodels PHReg.
    counts = np.random.default_rng(0).integers(0, 3, size=len(t))
    repeated = np.repeat(np.arange(len(t)), counts)
    fit = PHReg(t[repeated], x[repeated], status=d[repeated].astype(int), ties="breslow").fit()
    weighted, _ = C.cox_fit(t, d, x, counts[None, :])
    assert weighted[0, 0] == pytest.approx(fit.params[0], abs=1e-6)


def test_km_risk_and_fixed_slope_intercept_by_hand():
    from lifelines import KaplanMeierFitter

    time = np.array([2.0, 5, 5, 8, 12, 20, 30, 40, 50])
    event = np.array([1, 1, 0, 1, 0, 1, 0, 1, 0])
    p = np.array([0.1, 0.3, 0.2, 0.4, 0.15, 0.5, 0.3, 0.6, 0.2])
    counts = np.array([[1, 2, 0, 1, 1, 3, 1, 0, 2]])
    for w in (np.ones((1, 9)), counts):
        idx = np.repeat(np.arange(9), w[0].astype(int))
        km = KaplanMeierFitter().fit(time[idx], event[idx])
        assert C.weighted_km_risk(time, event, w, 36.0)[0] == pytest.approx(1 - km.predict(36.0))
        # Breslow with hazard proportional to -log(1 - p), by a loop over the event times.
        t, d = np.minimum(time[idx], 36.0), event[idx].astype(bool) & (time[idx] <= 36.0)
        risk = -np.log(1 - p[idx])
        cumulative = sum(d[t == u].sum() / risk[t >= u].sum() for u in np.unique(t[d]))
        tt, dd = np.minimum(time, 36.0), event.astype(bool) & (time <= 36.0)
        assert C.intercept_slope_fixed(tt, dd, p, w)[0] == pytest.approx(np.log(cumulative))
    assert np.isnan(C.weighted_km_risk(time, event, np.ones((1, 9)), 60.0)[0])  # beyond follow-up


def test_perfectly_calibrated_risk(calibrated):
    _, _, _, (result, plot) = calibrated
    assert result["slope_ci"][0] < 1 < result["slope_ci"][1]
    assert result["intercept_ci"][0] < 0 < result["intercept_ci"][1]
    assert result["observed_expected_ratio_ci"][0] < 1 < result["observed_expected_ratio_ci"][1]
    assert result["ici"] < 0.03 and result["e50"] <= result["e90"] < 0.06
    assert result["bootstrap_valid"] == {"slope": 300, "ici": 300}
    assert len(result["groups"]) == 10 and plot["band"].shape == (2, C.GRID_POINTS)
    assert np.all(plot["band"][0] <= plot["curve"] + 1e-9) and np.all(plot["curve"] <= plot["band"][1] + 1e-9)


def test_ici_against_lifelines_fit_of_the_spline(calibrated):
    from lifelines import CoxPHFitter

    time, event, p, (result, _) = calibrated
    x = C.cloglog(p)
    design = C.rcs_basis(x, np.quantile(x, C.KNOT_QUANTILES))
    frame = pd.DataFrame({"x": design[:, 0], "s": design[:, 1], "T": np.minimum(time, H),
                          "E": (event.astype(bool) & (time <= H)).astype(int)})
    cph = CoxPHFitter().fit(frame, "T", "E")
    observed = 1 - cph.predict_survival_function(frame, times=[H]).to_numpy().ravel()
    delta = np.abs(p - observed)
    assert result["ici"] == pytest.approx(delta.mean(), abs=1e-6)
    assert result["e50"] == pytest.approx(np.median(delta), abs=1e-6)
    assert result["e90"] == pytest.approx(np.quantile(delta, 0.9), abs=1e-6)
    assert result["spline_knots_cloglog"] == pytest.approx(np.quantile(x, C.KNOT_QUANTILES).tolist())


def test_mutated_predictions_are_caught(calibrated):
    time, event, p, (good, _) = calibrated
    overconfident = 1 / (1 + np.exp(-2 * C.logit(p)))  # logit doubled: too extreme
    result = C.calibration_at_horizon(time, event, overconfident, H, 200, 0)[0]
    assert result["slope_ci"][1] < 1 and result["ici"] > 2 * good["ici"]
    squared = C.calibration_at_horizon(time, event, p ** 2, H, 200, 0)[0]  # risks too low
    assert squared["intercept_ci"][0] > 0 and squared["observed_expected_ratio_ci"][0] > 1
    assert squared["slope_ci"][1] < 1


def test_logistic_known_status_matches_statsmodels():
    import statsmodels.api as sm

    time, event, p = _cohort(400, seed=5, censor=(1000, 2000))  # no censoring before the horizon
    result = C.logistic_known_status(time, event, p, H)
    y = (event.astype(bool) & (time <= H)).astype(float)
    assert result["n"] == 400
    lp = C.logit(p)
    slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    intercept = sm.GLM(y, np.ones((400, 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert result["slope"] == pytest.approx(slope.params[1], abs=1e-8)
    assert result["slope_ci"] == pytest.approx(slope.conf_int()[1].tolist(), abs=1e-6)
    assert result["intercept"] == pytest.approx(intercept.params[0], abs=1e-8)
    assert result["intercept_ci"] == pytest.approx(intercept.conf_int()[0].tolist(), abs=1e-6)


def test_degenerate_inputs_give_reasons():
    time = np.array([5.0, 10, 20, 40, 50, 60])
    result = C.calibration_at_horizon(time, np.zeros(6), np.full(6, 0.2), H, 20, 0)[0]
    assert result["slope"] is None and "no recurrence" in result["slope_reason"]
    assert result["observed_risk"] == 0.0  # no event: KM risk 0, still defined
    short = C.calibration_at_horizon(time / 10, np.array([1, 0, 1, 0, 1, 0]), np.full(6, 0.2), H, 20, 0)[0]
    assert short["observed_risk"] is None and "beyond the last follow-up" in short["observed_risk_reason"]
    constant = C.calibration_at_horizon(time, np.array([1, 0, 1, 0, 1, 0]), np.full(6, 0.2), H, 20, 0)[0]
    assert constant["slope"] is None and "same predicted risk" in constant["slope_reason"]
    assert constant["ici"] is not None


def test_a_set_of_one_case_gives_one_group_not_a_crash():
    from evaluation.calibration import km_groups
    groups = km_groups(np.array([40.0]), np.array([1]), np.array([0.3]), 36.0)
    assert len(groups) == 1 and groups[0]["n"] == 1
