"""Recalibration of both heads (issue 21, item 6): the fits against statsmodels and lifelines on data
with a known miscalibration, applying to the fitting data gives slope 1, the stored file and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from clinical.outcomes import ipcw_weights, recurrence_label
from nnunet_multitask import recalibration as R
from nnunet_multitask.contract import recurrence_column, survival_column


def _logit(p):
    return np.log(p / (1 - p))


def _miscalibrated(n=20000, a=-0.7, b=0.6, seed=0):
    """Predictions p whose truth is logit(p_true) = a + b logit(p): overconfident and too high."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-1.0, 1.2, n)
    p = 1 / (1 + np.exp(-(true_logit - a) / b))
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(float)
    return p, y


def test_logistic_recalibration_recovers_known_miscalibration_and_matches_statsmodels():
    p, y = _miscalibrated()
    fit = R.fit_logistic_recalibration(p, y)
    assert fit["converged"]
    assert fit["intercept"] == pytest.approx(-0.7, abs=0.06) and fit["slope"] == pytest.approx(0.6, abs=0.03)
    ref = sm.GLM(y, sm.add_constant(_logit(p)), family=sm.families.Binomial()).fit()
    np.testing.assert_allclose([fit["intercept"], fit["slope"]], ref.params, rtol=1e-7)
    # weighted (IPCW-like) fit = statsmodels with frequency weights
    w = np.random.default_rng(1).uniform(0.5, 3.0, len(p))
    fit_w = R.fit_logistic_recalibration(p, y, w)
    ref_w = sm.GLM(y, sm.add_constant(_logit(p)), family=sm.families.Binomial(), freq_weights=w).fit()
    np.testing.assert_allclose([fit_w["intercept"], fit_w["slope"]], ref_w.params, rtol=1e-7)
    with pytest.raises(R.RecalibrationError):
        R.fit_logistic_recalibration(p, np.where(np.arange(len(y)) == 0, np.nan, y))


def _survival_data(n=3000, slope=0.5, seed=0):
    """Risk scores whose true log hazard ratio is slope x score (Weibull baseline, censoring)."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(0, 1.5, n)
    t_event = 60 * (-np.log(rng.random(n)) / np.exp(slope * lp)) ** (1 / 1.3)
    t_cens = rng.uniform(10, 80, n)
    return lp, np.minimum(t_event, t_cens), (t_event <= t_cens).astype(float)


def test_cox_recalibration_recovers_the_slope_and_matches_statsmodels_and_lifelines():
    from lifelines import CoxPHFitter
    lp, time, event = _survival_data()
    fit = R.fit_cox_recalibration(lp, time, event)
    assert fit["converged"] and fit["slope"] == pytest.approx(0.5, abs=0.05)
    ref = sm.PHReg(time, lp[:, None], status=event, ties="breslow").fit()
    assert fit["slope"] == pytest.approx(float(ref.params[0]), rel=1e-7)
    # no tied times: Efron = Breslow, so lifelines agrees on the slope, and its Breslow baseline is at
    # the covariate mean, our centre
    cph = CoxPHFitter().fit(pd.DataFrame({"lp": lp, "T": time, "E": event}), "T", "E")
    assert fit["slope"] == pytest.approx(float(cph.params_["lp"]), abs=1e-5)
    base = cph.baseline_cumulative_hazard_
    grid = np.array([5.0, 20.0, 36.0, 60.0])
    expect = base.iloc[np.searchsorted(base.index.to_numpy(), grid, side="right") - 1].to_numpy().ravel()
    np.testing.assert_allclose(R.baseline_cumulative_hazard_at(fit, grid), expect, rtol=1e-5)
    assert np.isnan(R.baseline_cumulative_hazard_at(fit, [fit["max_follow_up"] + 1])[0])


def test_applying_to_the_fitting_data_gives_slope_one():
    p, y = _miscalibrated(5000)
    fit = R.fit_logistic_recalibration(p, y)
    lp, time, event = _survival_data(2000)
    surv = R.fit_cox_recalibration(lp, time, event)
    recal = {"classification": {"column": "p_recurrence_36m", "weighting": "complete_case", **fit},
             "survival": {"linear_predictor": "risk_score", **surv}, "horizon_months": 36.0,
             "survival_head": "cox", "folds": ["0"]}
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(2000)], "risk_score": lp, "p_recurrence_36m": p[:2000],
                          "p_recurrence_36m_sd": 0.01})
    out = R.apply_recalibration(table, recal)
    refit = R.fit_logistic_recalibration(out["p_recurrence_36m"].to_numpy(), y[:2000])
    refit_all = R.fit_logistic_recalibration(R._sigmoid(fit["intercept"] + fit["slope"] * _logit(p)), y)
    assert refit_all["slope"] == pytest.approx(1.0, abs=1e-6) and refit_all["intercept"] == pytest.approx(0, abs=1e-6)
    assert abs(refit["slope"] - 1) < 0.15   # a subset of the fitting data: close to 1
    # survival: the recalibrated linear predictor b * lp has slope 1 on the fitting data
    assert R.fit_cox_recalibration(surv["slope"] * lp, time, event)["slope"] == pytest.approx(1.0, abs=1e-6)
    # risk_score untouched; raw values and their spread kept; survival columns added for a Cox head
    np.testing.assert_array_equal(out["risk_score"], table["risk_score"])
    np.testing.assert_array_equal(out["p_recurrence_36m_uncalibrated"], table["p_recurrence_36m"])
    assert "p_recurrence_36m_uncalibrated_sd" in out and "p_recurrence_36m_sd" not in out
    assert out["recalibrated"].all() and out.attrs["recalibration"]["classification"]["slope"] == fit["slope"]
    s36 = out[survival_column(36)].to_numpy()
    assert np.all(np.diff(s36[np.argsort(lp)]) <= 1e-12)      # higher risk, lower survival
    assert out[survival_column(60)].notna().all() and out[survival_column(12)].gt(s36).all()
    # mean recalibrated 36-month risk close to the Kaplan-Meier risk of the fitting data
    from lifelines import KaplanMeierFitter
    km = KaplanMeierFitter().fit(time, event).predict(36.0)
    assert (1 - s36).mean() == pytest.approx(1 - km, abs=0.02)
    with pytest.raises(R.RecalibrationError, match="already"):
        R.apply_recalibration(out, recal)


# ---------------------------------------------------------------------------- files and CLI
def _model_and_dataset(tmp_path: Path, survival_head="discrete", n=240, seed=0):
    rng = np.random.default_rng(seed)
    lp_true = rng.normal(0, 1, n)
    t_event = 50 * (-np.log(rng.random(n)) / np.exp(lp_true)) ** (1 / 1.2)
    t_cens = rng.uniform(12, 60, n)
    time, event = np.round(np.minimum(t_event, t_cens), 1).clip(0.1), (t_event <= t_cens).astype(int)
    cases = [f"LARC_{i:04d}" for i in range(n)]
    raw = tmp_path / "nnUNet_raw" / "Dataset599_RECAL"
    raw.mkdir(parents=True)
    from clinical.schema import ClinicalSchema
    block = {"time_column": "dfs_months", "event_column": "dfs_event", "horizon_months": 36.0,
             "internal_test": ["LARC_9999"], "clinical_columns": ClinicalSchema.load().to_dict()["columns"]}
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0},
                                                  "multitask": block}))
    pd.DataFrame({"case_id": cases, "dfs_months": time, "dfs_event": event}).to_csv(raw / "outcomes.csv",
                                                                                  index=False)
    model = tmp_path / "results" / "MultiRecTrainer__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps({"multitask_model": {
        "clinical_groups": [], "clinical_columns": {}, "n_clinical_features": 0, "clinical_state_size": 1,
        "survival_head": survival_head, "n_time_bins": 10, "head_hidden": 64, "horizon_months": 36.0}}))
    # overconfident, too-high predictions of the truth
    p = 1 / (1 + np.exp(-(1.6 * lp_true - 0.3)))
    risk = lp_true * 1.5 if survival_head == "cox" else np.exp(1.5 * lp_true) * 0.3
    for f in range(2):
        part = np.arange(n) % 2 == f
        table = pd.DataFrame({"case_id": np.array(cases)[part], "risk_score": risk[part],
                              recurrence_column(36): p[part], "n_folds": 1})
        (model / f"fold_{f}" / "validation").mkdir(parents=True)
        table.to_csv(model / f"fold_{f}" / "validation" / "head_predictions.csv", index=False)
    return model, raw, time, event, p


def test_cli_writes_the_file_and_load_apply_round_trip(tmp_path, capsys):
    model, raw, time, event, p = _model_and_dataset(tmp_path)
    assert R.main(["--model-folder", str(model), "--dataset-folder", str(raw)]) == 0
    recal = R.load_recalibration(str(model))
    assert recal["version"] == R.RECALIBRATION_VERSION and recal["folds"] == ["0", "1"]
    assert recal["n_patients"] == len(time) and recal["n_events"] == int(event.sum())
    assert recal["inputs"]["outcomes.csv"] == R.file_sha256(str(raw / "outcomes.csv"))
    assert recal["inputs"]["fold_1/validation/head_predictions.csv"] == R.file_sha256(
        str(model / "fold_1" / "validation" / "head_predictions.csv"))
    assert recal["survival"]["linear_predictor"] == "log(risk_score)"
    assert recal["survival"]["slope"] == pytest.approx(1 / 1.5, abs=0.2)
    cls = recal["classification"]
    assert cls["weighting"] == "ipcw" and cls["slope"] == pytest.approx(1 / 1.6, abs=0.25)
    # the stored IPCW fit is the weighted logistic fit of the known-status patients (statsmodels)
    label = recurrence_label(time, event, 36.0)
    known = ~np.isnan(label)
    w = ipcw_weights(time, event, 36.0)[known]
    ref = sm.GLM(label[known], sm.add_constant(_logit(p[known])), family=sm.families.Binomial(),
                 freq_weights=w).fit()
    np.testing.assert_allclose([cls["intercept"], cls["slope"]], ref.params, rtol=1e-6)
    # apply to the pooled fitting predictions: the IPCW calibration slope is 1
    pooled = pd.concat([pd.read_csv(model / f"fold_{f}" / "validation" / "head_predictions.csv") for f in (0, 1)])
    out = R.apply_recalibration(pooled, recal)
    order = [int(c.split("_")[1]) for c in out["case_id"]]
    again = R.fit_logistic_recalibration(out[recurrence_column(36)].to_numpy()[np.argsort(order)][known],
                                         label[known], w)
    assert again["slope"] == pytest.approx(1.0, abs=1e-5) and again["intercept"] == pytest.approx(0.0, abs=1e-5)
    assert {survival_column(t) for t in (12, 24, 36, 60)} <= set(out.columns)


def test_cli_refuses_fold_all_and_missing_predictions_with_exit_2(tmp_path, capsys):
    model, raw, *_ = _model_and_dataset(tmp_path, survival_head="cox")
    assert R.main(["--model-folder", str(model), "--dataset-folder", str(raw), "-f", "all"]) == 2
    assert "fold 'all'" in capsys.readouterr().err
    assert R.main(["--model-folder", str(model), "--dataset-folder", str(raw), "-f", "0", "3"]) == 2
    err = capsys.readouterr().err
    assert "fold_3/validation/head_predictions.csv not found" in err
    assert not (model / R.RECALIBRATION_FILE).exists()
    with pytest.raises(R.RecalibrationError, match="not found"):
        R.load_recalibration(str(model))
    # a test case among the validation predictions is refused
    table = pd.read_csv(model / "fold_0" / "validation" / "head_predictions.csv")
    table.loc[0, "case_id"] = "LARC_9999"
    table.to_csv(model / "fold_0" / "validation" / "head_predictions.csv", index=False)
    assert R.main(["--model-folder", str(model), "--dataset-folder", str(raw)]) == 2
    assert "test case" in capsys.readouterr().err


def test_logistic_recalibration_of_saturated_predictions_converges_to_statsmodels():
    # an overfitted head: many probabilities at the clip (logit +-13.8), several of them wrong
    rng = np.random.default_rng(4)
    p = np.concatenate([np.full(60, 1e-9), np.full(40, 1 - 1e-9), rng.uniform(0.05, 0.95, 100)])
    y = np.concatenate([(rng.random(60) < 0.15), (rng.random(40) < 0.7), rng.random(100) < 0.3]).astype(float)
    fit = R.fit_logistic_recalibration(p, y)
    ref = sm.GLM(y, sm.add_constant(_logit(np.clip(p, 1e-6, 1 - 1e-6))), family=sm.families.Binomial()).fit()
    assert fit["converged"]
    np.testing.assert_allclose([fit["intercept"], fit["slope"]], ref.params, rtol=1e-6)
    assert 0 < fit["slope"] < 0.3


def test_cli_refuses_a_fit_on_few_events_unless_allowed(tmp_path, capsys):
    model, raw, time, event = _model_and_dataset(tmp_path, n=14, seed=3)[:4]
    label = recurrence_label(np.asarray(time, float), np.asarray(event, float), 36.0)
    assert np.nansum(label) < R.MIN_EVENTS_BY_HORIZON
    assert R.main(["--model-folder", str(model), "--dataset-folder", str(raw)]) == 2
    err = capsys.readouterr().err
    assert "events by 36 months" in err and "--allow-few-events" in err
    assert not (model / R.RECALIBRATION_FILE).exists()
    assert R.main(["--model-folder", str(model), "--dataset-folder", str(raw), "--allow-few-events"]) == 0
    recal = R.load_recalibration(str(model))
    assert "mostly noise" in recal["few_events"]
    assert R.recalibration_record(recal)["few_events"] == recal["few_events"]


def test_times_beyond_the_fitting_follow_up_are_left_out_not_written_empty(tmp_path):
    model, raw = _model_and_dataset(tmp_path)[:2]
    assert R.main(["--model-folder", str(model), "--dataset-folder", str(raw)]) == 0
    recal = R.load_recalibration(str(model))
    recal["survival"]["max_follow_up"] = 50.0  # development follow-up ending before 60 months: no baseline there
    table = pd.DataFrame({"case_id": ["a", "b"], "risk_score": [0.2, 0.9], recurrence_column(36): [0.2, 0.6],
                          survival_column(60): [0.7, 0.3]})
    out = R.apply_recalibration(table, recal)
    assert survival_column(60) not in out.columns and survival_column(36) in out.columns
    assert list(out[survival_column(60) + R.UNCALIBRATED]) == [0.7, 0.3]
    assert survival_column(60) in out.attrs["recalibration"]["left_out"]
    assert np.isfinite(out[survival_column(36)]).all()
