"""survival_eval.py: calibration, decision curve and IPCW AUC at the horizon in metrics.json / report.md,
the risk-group threshold rule, results per centre and subgroup, the model card, and the refusals of
non-monotone survival curves and development cases (hand-made datasets, no training)."""
import json

import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc
from sksurv.util import Surv

from evaluation import survival_eval as SE
from evaluation.calibration import calibration_at_horizon
from evaluation.decision_curve import decision_curve

B = "40"  # bootstrap resamples: the numbers are checked against direct calls with the same seed


def _cases(prefix, n, rng):
    lp = rng.normal(size=n)
    t = rng.exponential(1 / (0.02 * np.exp(lp)))
    c = rng.uniform(12, 90, n)
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    outcomes = pd.DataFrame({"case_id": ids, "dfs_months": np.round(np.minimum(t, c), 3) + 0.01,
                             "dfs_event": (t <= c).astype(int)})
    predictions = pd.DataFrame({"case_id": ids, "risk_score": lp,
                                "p_recurrence_36m": 1 - np.exp(-0.02 * 36 * np.exp(lp))})
    for month in (12, 24, 36, 60):
        predictions[f"surv_prob_{month}m"] = np.exp(-0.02 * month * np.exp(lp))
    return outcomes, predictions


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Dataset501: internal test (centres 1, 2 and a 4-case centre 3), external test (centre 4), development."""
    root = tmp_path_factory.mktemp("horizon")
    folder = root / "raw" / "Dataset501_LARC"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    internal, p_internal = _cases("I", 84, rng)
    external, p_external = _cases("E", 60, rng)
    development, p_development = _cases("D", 40, rng)
    test = pd.concat([internal.assign(set="internal_test"), external.assign(set="external_test")])
    test.to_csv(folder / "outcomes_test.csv", index=False)
    development.to_csv(folder / "outcomes.csv", index=False)
    centre = ["1"] * 40 + ["2"] * 40 + ["3"] * 4 + ["4"] * 60 + ["1"] * 40
    ids = list(test["case_id"]) + list(development["case_id"])
    pd.DataFrame({"case_id": ids, "centre": centre, "sex": rng.choice(["F", "M", ""], len(ids), p=[0.45, 0.45, 0.1]),
                  "age": rng.normal(60, 8, len(ids)).round()}).to_csv(folder / "clinical.csv", index=False)
    block = {"test_outcomes_table": "outcomes_test.csv", "outcomes_table": "outcomes.csv", "horizon_months": 36,
             "internal_test": list(internal["case_id"]), "external_test": list(external["case_id"]),
             "time_column": "dfs_months", "event_column": "dfs_event", "clinical_table": "clinical.csv",
             "centre_column": "centre",
             "clinical_columns": {"age": {"group": "pretreatment", "type": "numeric", "unit": "years"},
                                  "sex": {"group": "pretreatment", "type": "categorical", "categories": ["F", "M"]}}}
    (folder / "dataset.json").write_text(json.dumps({"name": "LARC", "multitask": block}))
    predictions = root / "prediction"
    predictions.mkdir()
    pd.concat([p_internal, p_external]).assign(clinical_imputed=False, series_available="T2;ADC",
                                               tumour_found=True).to_csv(predictions / "predictions.csv", index=False)
    model = root / "model"
    for fold, part in enumerate(np.array_split(p_development.index, 2)):
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        p_development.loc[part].to_csv(model / f"fold_{fold}" / "validation" / "head_predictions.csv", index=False)
    return {"root": root, "raw": root / "raw", "predictions": predictions / "predictions.csv", "model": model,
            "test": test, "development": p_development, "prediction_table": pd.concat([p_internal, p_external])}


def _provenance(dataset, folds=("0", "1")):
    meta = {"model_folder": str(dataset["model"]), "trainer": "MultiRecTrainer", "plans": "nnUNetPlans",
            "configuration": "3d_fullres", "folds": list(folds), "checkpoint": "checkpoint_final.pth",
            "horizon_months": 36, "survival_head": "discrete", "clinical_columns": ["age", "sex"],
            "impute_missing_clinical": True, "allow_missing_series": False, "channel_availability": False}
    (dataset["predictions"].parent / "predictions.json").write_text(json.dumps(meta))


def _run(dataset, monkeypatch, tmp_path, *extra, predictions=None, capsys=None):
    monkeypatch.setenv("nnUNet_raw", str(dataset["raw"]))
    out = tmp_path / "report"
    rc = SE.main(["--predictions", str(predictions or dataset["predictions"]), "--dataset", "501", "--bootstrap", B,
                  "--seed", "1", "-o", str(out), *map(str, extra)])
    return rc, out


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
    _provenance(dataset)
    mp = pytest.MonkeyPatch()
    try:
        rc, out = _run(dataset, mp, tmp_path_factory.mktemp("full"), "--subgroups", "sex", "--model-card")
    finally:
        mp.undo()
    assert rc == 0
    return out, json.loads((out / "metrics.json").read_text())


def _set(dataset, set_name):
    frame = dataset["prediction_table"].merge(dataset["test"], on="case_id")
    return frame[frame["set"] == set_name].sort_values("case_id").reset_index(drop=True)


def test_horizon_metrics_match_direct_computations(dataset, full_run):
    out, report = full_run
    frame = _set(dataset, "internal_test")
    result = report["models"]["predictions"]["internal_test"]
    time, event = frame["dfs_months"].to_numpy(), frame["dfs_event"].to_numpy()
    y = Surv.from_arrays(event=event.astype(bool), time=time)
    p_class, p_surv = frame["p_recurrence_36m"].to_numpy(), 1 - frame["surv_prob_36m"].to_numpy()
    assert result["auc_36m_ipcw"] == pytest.approx(cumulative_dynamic_auc(y, y, p_class, [36.0])[0][0])
    assert result["auc_36m_survival_head_ipcw"] == pytest.approx(cumulative_dynamic_auc(y, y, p_surv, [36.0])[0][0])
    for head, p in (("classification_head", p_class), ("survival_head", p_surv)):
        expected = calibration_at_horizon(time, event, p, 36.0, int(B), 1)[0]
        got = result["calibration_36m"][head]
        for key in ("observed_risk", "observed_expected_ratio", "slope", "intercept", "ici", "e50", "e90"):
            assert got[key] == pytest.approx(expected[key]), key
            assert got[f"{key}_ci"] == pytest.approx(expected[f"{key}_ci"]), key
    curve = decision_curve(time, event, {"classification_head": p_class, "survival_head": p_surv}, 36.0)[0]
    assert result["decision_curve_36m"]["net_benefit"] == curve["net_benefit"]
    assert report["settings"]["decision_curve_thresholds"][0] == 0.01 and len(curve["thresholds"]) == 60
    markdown = (out / "report.md").read_text()
    for heading in ("## Calibration at 36 months", "## Decision curve at 36 months", "## Per centre and subgroup",
                    "## AUC at 36 months: known status and cumulative/dynamic (IPCW)", "## Risk groups"):
        assert heading in markdown
    for name in ("calibration_smoothed_36m_predictions_internal_test.png",
                 "decision_curve_36m_predictions_external_test.png"):
        assert (out / name).stat().st_size > 5000


def test_threshold_from_out_of_sample_development_predictions(dataset, full_run):
    out, report = full_run
    pooled = dataset["development"]["risk_score"]
    for set_name in ("internal_test", "external_test"):
        result = report["models"]["predictions"][set_name]
        assert result["risk_threshold"] == pytest.approx(np.median(pooled))
        assert result["risk_threshold_rule"] == "development" and result["risk_threshold_n"] == len(pooled)
        assert "out-of-sample" in result["risk_threshold_source"] and "fold_<f>/validation" in result[
            "risk_threshold_source"]
        assert "risk_threshold_fallback_reason" not in result
    assert "fixed before the test set" in (out / "report.md").read_text()


def test_threshold_rule_without_out_of_sample_predictions(dataset, monkeypatch, tmp_path, capsys):
    bare = tmp_path / "bare.csv"
    dataset["prediction_table"].to_csv(bare, index=False)
    rc, out = _run(dataset, monkeypatch, tmp_path, "--no-figures", predictions=bare)
    assert rc == 0
    result = json.loads((out / "metrics.json").read_text())["models"]["bare"]["internal_test"]
    frame = _set(dataset, "internal_test")
    assert result["risk_threshold"] == pytest.approx(np.median(frame["risk_score"]))
    assert result["risk_threshold_rule"] == "test-set median (fallback)"
    assert "no predictions.json beside" in result["risk_threshold_fallback_reason"]
    assert "**split at each set's own median (fallback)**" in (out / "report.md").read_text()

    rc, _ = _run(dataset, monkeypatch, tmp_path / "strict", "--threshold-from", "development", predictions=bare)
    assert rc == 2 and "--threshold-from development" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    rc, out = _run(dataset, monkeypatch, tmp_path / "median", "--threshold-from", "test-median", "--no-figures",
                   predictions=bare)
    result = json.loads((out / "metrics.json").read_text())["models"]["bare"]["internal_test"]
    assert rc == 0 and result["risk_threshold_rule"].startswith("test-set median (--threshold-from")

    leaky = tmp_path / "leaky.csv"
    pd.concat([dataset["development"], dataset["prediction_table"].head(2)]).to_csv(leaky, index=False)
    rc, _ = _run(dataset, monkeypatch, tmp_path / "leak", "--train-predictions", leaky, predictions=bare)
    assert rc == 2 and "I000" in capsys.readouterr().err and not (tmp_path / "leak").exists()


def test_results_per_centre_and_subgroup(dataset, full_run):
    _, report = full_run
    by_centre = report["models"]["predictions"]["internal_test"]["by_centre"]
    assert by_centre["column"] == "centre" and list(by_centre["groups"]) == ["1", "2", "3"]
    frame = _set(dataset, "internal_test")
    clinical = pd.read_csv(dataset["raw"] / "Dataset501_LARC" / "clinical.csv", dtype=str)
    frame = frame.merge(clinical, on="case_id")
    for centre in ("1", "2"):
        member = frame[frame["centre"] == centre]
        group = by_centre["groups"][centre]
        assert group["n"] == len(member) and group["events"] == int(member["dfs_event"].sum())
        expected = concordance_index_censored(member["dfs_event"].astype(bool).to_numpy(),
                                              member["dfs_months"].to_numpy(), member["risk_score"].to_numpy())[0]
        assert group["c_index"] == pytest.approx(expected) and len(group["c_index_ci"]) == 2
        assert group["calibration_36m"]["survival_head"]["slope"] is not None
    small = by_centre["groups"]["3"]
    assert small["n"] == 4 and "too small" in small["reason"] and "c_index" not in small
    assert list(report["models"]["predictions"]["external_test"]["by_centre"]["groups"]) == ["4"]
    sex = report["models"]["predictions"]["internal_test"]["by_subgroup"]["sex"]["groups"]
    assert set(sex) == {"F", "M", "missing"}
    assert sum(g["n"] for g in sex.values()) == 84


def test_bad_group_options_are_refused(dataset, monkeypatch, tmp_path, capsys):
    for option, message in ((["--subgroups", "age"], "declared 'numeric'"), (["--subgroups", "stage"], "stage"),
                            (["--centre-column", "site"], "no column 'site'")):
        rc, out = _run(dataset, monkeypatch, tmp_path / option[1], *option)
        assert rc == 2 and message in capsys.readouterr().err and not out.exists()


def test_model_card(full_run):
    out, report = full_run
    card = (out / "MODEL_CARD.md").read_text()
    for text in ("TRIPOD+AI", "## 2. Intended use", "Research use only", "trainer `MultiRecTrainer`",
                 "folds ['0', '1']", "missing clinical values imputed", "## 6. Calibration", "centre 4",
                 "## 7. Decision curve", "## 9. Known limitations"):
        assert text in card, text
    c = report["models"]["predictions"]["external_test"]["c_index"]
    assert f"{c:.2f}" in card


def test_non_monotone_survival_is_refused(dataset, monkeypatch, tmp_path, capsys):
    table = dataset["prediction_table"].copy()
    row = table["case_id"] == "E007"
    table.loc[row, "surv_prob_60m"] = table.loc[row, "surv_prob_36m"] + 0.01
    bad = tmp_path / "rising.csv"
    table.to_csv(bad, index=False)
    rc, out = _run(dataset, monkeypatch, tmp_path, predictions=bad)
    err = capsys.readouterr().err
    assert rc == 2 and "rising.csv: case E007: survival probability increases with time" in err
    assert "surv_prob_36m" in err and "surv_prob_60m" in err and not out.exists()
    table.loc[row, "surv_prob_60m"] = table.loc[row, "surv_prob_36m"] + 1e-7
    table.to_csv(bad, index=False)  # within the tolerance: float rounding
    assert _run(dataset, monkeypatch, tmp_path / "ok", "--no-figures", predictions=bad)[0] == 0


def test_development_cases_refused_unless_asked(dataset, monkeypatch, tmp_path, capsys):
    mixed = tmp_path / "mixed.csv"
    pd.concat([dataset["prediction_table"], dataset["development"]]).to_csv(mixed, index=False)
    rc, out = _run(dataset, monkeypatch, tmp_path, predictions=mixed)
    err = capsys.readouterr().err
    assert rc == 2 and "mixed.csv: 40 case(s) are development (training) cases" in err and "D000" in err
    assert "--allow-development-cases" in err and not out.exists()
    rc, out = _run(dataset, monkeypatch, tmp_path / "allowed", "--allow-development-cases", "--no-figures",
                   predictions=mixed)
    report = json.loads((out / "metrics.json").read_text())
    assert rc == 0 and report["not_test_results"] == ["mixed / development"]
    assert "not a test result" in report["models"]["mixed"]["development"]["not_a_test_result"]
    assert "not_a_test_result" not in report["models"]["mixed"]["internal_test"]
    assert "> **Not a test result**: mixed / development" in (out / "report.md").read_text()
