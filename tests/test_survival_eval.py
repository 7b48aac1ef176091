"""evaluation/survival_eval.py end to end: every reported number against an independent computation."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sksurv.metrics import (concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc,
                            integrated_brier_score)
from sksurv.util import Surv

from evaluation import survival_eval as SE
from evaluation.metrics import delong_ci

REPO = Path(__file__).resolve().parents[1]
MONTH = 30.4375


@pytest.fixture(scope="module")
def gbsg2_tables(tmp_path_factory):
    """GBSG2 (real recurrence-free survival) with predictions of two CoxPH models.

    Model "cox" uses age, tumour size, nodes, hormone therapy and grade; model "small" only age and
    hormone therapy. Cases 0-399 form internal_test, the rest external_test.
    """
    from sksurv.datasets import load_gbsg2
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    features, outcome = load_gbsg2()
    time = np.round(outcome["time"] / MONTH, 2)
    event = outcome["cens"].astype(int)
    y_months = Surv.from_arrays(event=event.astype(bool), time=time)
    case_ids = [f"GBSG{i:03d}" for i in range(len(time))]
    folder = tmp_path_factory.mktemp("gbsg2")
    outcomes = pd.DataFrame({"case_id": case_ids, "dfs_months": time, "dfs_event": event,
                             "set": np.where(np.arange(len(time)) < 400, "internal_test", "external_test")})
    outcomes.to_csv(folder / "outcomes.csv", index=False)
    paths = {}
    for name, columns in (("cox", ["age", "tsize", "pnodes", "horTh", "tgrade"]), ("small", ["age", "horTh"])):
        covariates = OneHotEncoder().fit_transform(features[columns])
        model = CoxPHSurvivalAnalysis().fit(covariates, y_months)
        functions = model.predict_survival_function(covariates)
        table = {"case_id": case_ids, "risk_score": model.predict(covariates),
                 "p_recurrence_36m": [1 - fn(36.0) for fn in functions], "risk_score_sd": 0.1}
        for t in (12, 24, 36, 60):
            table[f"surv_prob_{t}m"] = [fn(float(t)) for fn in functions]
        paths[name] = folder / f"{name}.csv"
        pd.DataFrame(table).to_csv(paths[name], index=False)
    return folder, outcomes, paths


@pytest.fixture(scope="module")
def gbsg2_report(gbsg2_tables, tmp_path_factory):
    folder, _, paths = gbsg2_tables
    out = tmp_path_factory.mktemp("report")
    assert SE.main(["--predictions", str(paths["cox"]), str(paths["small"]), "--outcomes",
                    str(folder / "outcomes.csv"), "--bootstrap", "200", "--seed", "0", "--dca-thresholds", "0.1", "0.5",
                    "0.1", "-o", str(out)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def _set_data(gbsg2_tables, model, set_name):
    _, outcomes, paths = gbsg2_tables
    frame = pd.read_csv(paths[model]).merge(outcomes, on="case_id")
    return frame[frame["set"] == set_name].sort_values("case_id")


@pytest.mark.parametrize("set_name", ["internal_test", "external_test"])
def test_reported_numbers_match_independent_computations(gbsg2_tables, gbsg2_report, set_name):
    from lifelines.statistics import logrank_test
    from lifelines.utils import concordance_index

    frame = _set_data(gbsg2_tables, "cox", set_name)
    result = gbsg2_report[1]["models"]["cox"][set_name]
    time = frame["dfs_months"].to_numpy()
    event = frame["dfs_event"].to_numpy().astype(bool)
    risk = frame["risk_score"].to_numpy()
    y = Surv.from_arrays(event=event, time=time)
    assert result["n"] == len(frame) and result["events"] == int(event.sum())

    # Harrell's C against lifelines (survival score = -risk) and sksurv.
    assert result["c_index"] == pytest.approx(concordance_index(time, -risk, event), abs=1e-10)
    assert result["c_index"] == pytest.approx(concordance_index_censored(event, time, risk)[0], abs=1e-12)
    low, high = result["c_index_ci"]
    assert low < result["c_index"] < high and high - low < 0.2

    # Log-rank p against lifelines with the same median split.
    high_risk = risk > np.median(risk)
    assert result["risk_threshold"] == pytest.approx(np.median(risk))
    assert result["risk_threshold_source"] == "median risk of this set"
    lifelines_p = logrank_test(time[high_risk], time[~high_risk], event[high_risk], event[~high_risk]).p_value
    assert result["logrank_p"] == pytest.approx(lifelines_p, rel=1e-6)

    # AUC at 36 months on known status only, DeLong CI from the O(n^2)-checked implementation.
    known = (event & (time <= 36)) | (time >= 36)
    labels = (event & (time <= 36))[known].astype(int)
    p = frame["p_recurrence_36m"].to_numpy()[known]
    assert result["n_known_status"] == int(known.sum())
    assert result["auc_36m"] == pytest.approx(roc_auc_score(labels, p))
    assert result["auc_36m_ci"] == pytest.approx(list(delong_ci(labels, p)[1]))

    # Uno's C (IPCW from the same set, tau = horizon), td-AUC and IBS straight from sksurv.
    assert result["uno_c_tau"] == 36.0
    assert result["uno_c"] == pytest.approx(concordance_index_ipcw(y, y, risk, tau=36.0)[0])
    for t in (12, 24, 36, 60):
        assert result["td_auc"][str(t)] == pytest.approx(cumulative_dynamic_auc(y, y, risk, [t])[0][0])
    survival = frame[[f"surv_prob_{t}m" for t in (12, 24, 36, 60)]].to_numpy()
    assert result["ibs"] == pytest.approx(integrated_brier_score(y, y, survival, [12, 24, 36, 60]))
    assert result["dice_mean"] is None and "seg" in result["dice_mean_reason"]


def test_report_files_comparisons_and_counts(gbsg2_tables, gbsg2_report):
    out, report = gbsg2_report
    for name in ("km_cox_internal_test.png", "km_small_external_test.png", "roc_36m_internal_test.png",
                 "calibration_36m_external_test.png"):
        assert (out / name).stat().st_size > 1000, name
    markdown = (out / "report.md").read_text()
    assert "| Model | Set | n | Events | C-index (95% CI) | AUC at 36 mo (95% CI) |" in markdown
    assert f"{report['models']['cox']['internal_test']['c_index']:.2f}" in markdown

    comparison = report["comparisons"]["cox vs small"]["sets"]["internal_test"]
    cox, small = (_set_data(gbsg2_tables, m, "internal_test") for m in ("cox", "small"))
    event, time = cox["dfs_event"].to_numpy().astype(bool), cox["dfs_months"].to_numpy()
    assert comparison["c_index_difference"] == pytest.approx(
        concordance_index_censored(event, time, cox["risk_score"].to_numpy())[0]
        - concordance_index_censored(event, time, small["risk_score"].to_numpy())[0])
    low, high = comparison["c_index_difference_ci"]
    assert low < comparison["c_index_difference"] < high
    assert 0 <= comparison["delong_p"] <= 1

    # Every exclusion is counted: unknown status at 36 months listed per model and set.
    known = ((event & (time <= 36)) | (time >= 36))
    unknown = [d for d in report["dropped"] if d["model"] == "cox" and d["set"] == "internal_test"]
    assert unknown[0]["count"] == int((~known).sum()) == report["models"]["cox"]["internal_test"]["n_unknown_status"]
    assert report["settings"]["horizon_months"] == 36 and report["settings"]["bootstrap_resamples"] == 200
    assert report["counts"]["models"]["cox"]["matched_to_outcomes"] == 686


def test_bootstrap_ci_is_seeded(gbsg2_tables):
    frame = _set_data(gbsg2_tables, "cox", "internal_test").rename(columns={"dfs_months": "time", "dfs_event": "event"})
    frame = frame.rename(columns={"p_recurrence_36m": "p_recurrence"})
    runs = [SE.evaluate_set(frame, 36.0, 200, seed, None, None, None, (0.2,))[0] for seed in (5, 5, 6)]
    assert runs[0]["c_index_ci"] == runs[1]["c_index_ci"]
    assert runs[0]["c_index_ci"] != runs[2]["c_index_ci"]
    assert np.allclose(runs[0]["c_index_ci"], runs[2]["c_index_ci"], atol=0.03)


def test_model_against_itself_gives_zero_difference(gbsg2_tables):
    frame = _set_data(gbsg2_tables, "cox", "external_test").rename(
        columns={"dfs_months": "time", "dfs_event": "event", "p_recurrence_36m": "p_recurrence"})
    comparison = SE.compare_pair(frame, frame, 36.0, 100, 0)
    assert comparison["c_index_difference"] == 0 and comparison["c_index_difference_ci"] == [0.0, 0.0]
    assert comparison["delong_p"] == 1.0


def _write_small(tmp_path, outcomes, predictions, name="model.csv"):
    pd.DataFrame(outcomes).to_csv(tmp_path / "outcomes.csv", index=False)
    pd.DataFrame(predictions).to_csv(tmp_path / name, index=False)
    return tmp_path / "outcomes.csv", tmp_path / name


def test_censored_before_horizon_is_excluded_from_auc(tmp_path):
    outcomes = {"case_id": ["a", "b", "c", "d", "e"], "dfs_months": [10, 20, 40, 50, 5],
                "dfs_event": [1, 1, 0, 0, 0]}  # e: censored at 5 months -> unknown at 36
    base = {"case_id": ["a", "b", "c", "d", "e"], "risk_score": [3, 2, 1, 0, 0.5],
            "p_recurrence_36m": [0.9, 0.8, 0.3, 0.2, 0.1]}
    aucs = []
    for p_e in (0.1, 0.95):
        base["p_recurrence_36m"][4] = p_e
        outcome_csv, prediction_csv = _write_small(tmp_path, outcomes, base)
        report = SE.evaluate([prediction_csv], SE.load_outcomes_csv(outcome_csv), tmp_path / "r",
                             n_bootstrap=20, make_figures=False)
        result = report["models"]["model"]["all"]
        aucs.append(result["auc_36m"])
        assert result["n_known_status"] == 4 and result["n_unknown_status"] == 1
        assert report["dropped"][0]["case_ids"] == ["e"]
    assert aucs == [1.0, 1.0]


def test_bad_inputs_give_clear_errors_or_reasons(tmp_path):
    outcomes = {"case_id": ["a", "b", "c", "d"], "dfs_months": [10, 20, 30, 30], "dfs_event": [1, 0, 1, 0]}
    good = {"case_id": ["a", "b", "c", "d"], "risk_score": [1.0, 0.2, 0.5, 0.1]}
    outcome_csv, prediction_csv = _write_small(tmp_path, outcomes, good)
    table = SE.load_outcomes_csv(outcome_csv)

    _, missing = _write_small(tmp_path, outcomes, {**good, "case_id": ["a", "b", "c", "zz"]}, "missing.csv")
    with pytest.raises(SE.EvaluationInputError, match=r"missing.csv.*zz.*--allow-unmatched"):
        SE.evaluate([missing], table, tmp_path / "r", n_bootstrap=10, make_figures=False)
    report = SE.evaluate([missing], table, tmp_path / "r", n_bootstrap=10, make_figures=False, allow_unmatched=True)
    assert report["counts"]["models"]["missing"]["unmatched_excluded"] == 1
    assert {d["reason"]: d["case_ids"] for d in report["dropped"]}["prediction case absent from outcomes"] == ["zz"]

    _, nan_file = _write_small(tmp_path, outcomes, {**good, "risk_score": [1.0, np.nan, 0.5, 0.1]}, "nan.csv")
    with pytest.raises(SE.EvaluationInputError, match=r"nan.csv.*risk_score.*\['b'\]"):
        SE.evaluate([nan_file], table, tmp_path / "r", n_bootstrap=10, make_figures=False)

    _, duplicate = _write_small(tmp_path, outcomes, {"case_id": ["a", "a", "b"], "risk_score": [1, 2, 3]}, "dup.csv")
    with pytest.raises(SE.EvaluationInputError, match=r"dup.csv: duplicate rows for case\(s\) \['a'\]"):
        SE.evaluate([duplicate], table, tmp_path / "r", n_bootstrap=10, make_figures=False)

    # Horizon beyond follow-up (max 30 months): AUC null with a reason, nothing crashes.
    result = SE.evaluate([prediction_csv], table, tmp_path / "r", horizon=36, n_bootstrap=10,
                         make_figures=False)["models"]["model"]["all"]
    assert result["auc_36m"] is None and "beyond follow-up" in result["auc_36m_reason"]
    assert result["td_auc"]["60"] is None and "outside follow-up" in result["td_auc_reason"]["60"]
    assert result["c_index"] is not None

    # A set without events: metrics null with reasons; the CLI still writes strict JSON.
    no_events = {**outcomes, "dfs_event": [0, 0, 0, 0]}
    outcome_csv, _ = _write_small(tmp_path, no_events, good)
    assert SE.main(["--predictions", str(prediction_csv), "--outcomes", str(outcome_csv), "--bootstrap", "10",
                    "-o", str(tmp_path / "r2")]) == 0
    result = json.loads((tmp_path / "r2" / "metrics.json").read_text())["models"]["model"]["all"]
    for key in ("c_index", "uno_c", "logrank_p", "auc_36m"):
        assert result[key] is None and result[f"{key}_reason"], key
    assert result["c_index_reason"] == "no events in this set"

    # CLI error path: exit code 2 and the message on stderr, not a traceback.
    assert SE.main(["--predictions", str(nan_file), "--outcomes", str(outcome_csv), "-o", str(tmp_path / "r3")]) == 2


def test_train_threshold_and_dice(tmp_path):
    import SimpleITK as sitk

    outcomes = {"case_id": ["a", "b", "c", "d"], "dfs_months": [10, 50, 30, 40], "dfs_event": [1, 0, 1, 0]}
    outcome_csv, prediction_csv = _write_small(tmp_path, outcomes, {"case_id": ["a", "b", "c", "d"],
                                                                    "risk_score": [1.0, 0.2, 0.5, 0.1]})
    train_csv = tmp_path / "train.csv"
    pd.DataFrame({"case_id": ["t1", "t2", "t3"], "risk_score": [0.0, 0.3, 0.9]}).to_csv(train_csv, index=False)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    reference = np.zeros((3, 4, 4), dtype=np.uint8)
    reference[1, :2, :2] = 1
    predicted = {"a": reference, "b": np.roll(reference, 1, axis=2), "c": np.zeros_like(reference)}
    for case, array in predicted.items():
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "pred" / f"{case}.nii.gz"))
    for case in ("a", "b", "c", "d"):
        sitk.WriteImage(sitk.GetImageFromArray(reference), str(tmp_path / "gt" / f"{case}.nii.gz"))
    assert SE.main(["--predictions", str(prediction_csv), "--outcomes", str(outcome_csv), "--bootstrap", "20",
                    "--train-predictions", str(train_csv), "--seg-pred", str(tmp_path / "pred"),
                    "--seg-gt", str(tmp_path / "gt"), "-o", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    result = report["models"]["model"]["all"]
    assert result["risk_threshold"] == 0.3 and "train.csv" in result["risk_threshold_source"]
    assert result["n_high_risk"] == 2
    # Dice: a = 1, b = 2*2/(4+4) = 0.5, c = 0; d has no predicted file and is counted.
    assert result["dice_mean"] == pytest.approx(0.5) and result["dice_median"] == pytest.approx(0.5)
    assert result["n_dice"] == 3
    assert {d["reason"]: d["case_ids"] for d in report["dropped"]}["no predicted segmentation"] == ["d"]
    assert pd.read_csv(tmp_path / "r" / "dice_model.csv")["dice"].tolist() == pytest.approx([1.0, 0.5, 0.0])


def _write_dataset(raw, with_set_column=True):
    folder = raw / "Dataset501_LARC"
    folder.mkdir(parents=True)
    test = pd.DataFrame({"case_id": ["i1", "i2", "i3", "e1", "e2", "e3"], "dfs_months": [5, 40, 20, 12, 50, 7],
                         "dfs_event": [1, 0, 1, 1, 0, 0]})
    if with_set_column:
        test["set"] = ["internal_test"] * 3 + ["external_test"] * 3
    test.to_csv(folder / "test_outcomes.csv", index=False)
    pd.DataFrame({"case_id": ["d1", "d2", "d3"], "dfs_months": [8, 60, 30], "dfs_event": [1, 0, 1],
                  "age": [50, 60, 70]}).to_csv(folder / "outcomes.csv", index=False)
    block = {"test_outcomes_table": "test_outcomes.csv", "outcomes_table": "outcomes.csv", "horizon_months": 24,
             "internal_test": ["i1", "i2", "i3"], "external_test": ["e1", "e2", "e3"],
             "time_column": "dfs_months", "event_column": "dfs_event"}
    (folder / "dataset.json").write_text(json.dumps({"name": "LARC", "multitask": block}))


@pytest.mark.parametrize("with_set_column", [True, False])
def test_outcomes_from_dataset_json(tmp_path, monkeypatch, with_set_column):
    _write_dataset(tmp_path / "raw", with_set_column)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    pd.DataFrame({"case_id": ["i1", "i2", "i3", "e1", "e2", "e3"], "risk_score": [3, 0, 1, 2, 0, 1],
                  "p_recurrence_24m": [0.9, 0.1, 0.6, 0.8, 0.2, 0.4]}).to_csv(tmp_path / "p.csv", index=False)
    assert SE.main(["--predictions", str(tmp_path / "p.csv"), "--dataset", "501", "--bootstrap", "20",
                    "-o", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["settings"]["horizon_months"] == 24          # taken from the multitask block
    assert set(report["models"]["p"]) == {"internal_test", "external_test"}  # no development predictions
    assert report["models"]["p"]["internal_test"]["n"] == 3
    assert "auc_24m" in report["models"]["p"]["internal_test"]
    assert report["counts"]["outcomes"]["per_set"] == {"internal_test": 3, "external_test": 3, "development": 3}


def test_cli_as_script_and_as_module(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    time = np.round(rng.exponential(30, n), 1) + 0.5
    event = (rng.random(n) < 0.6).astype(int)
    risk = -time * (1 + rng.normal(scale=0.5, size=n))
    ids = [f"P{i}" for i in range(n)]
    outcome_csv, prediction_csv = _write_small(tmp_path, {"case_id": ids, "dfs_months": time, "dfs_event": event},
                                               {"case_id": ids, "risk_score": risk,
                                                "p_recurrence_36m": 1 / (1 + np.exp(-risk / 10))})
    expected = concordance_index_censored(event.astype(bool), time, risk)[0]
    for command, folder in (([sys.executable, str(REPO / "evaluation" / "survival_eval.py")], "script"),
                            ([sys.executable, "-m", "evaluation.survival_eval", "--no-figures"], "module")):
        subprocess.run(command + ["--predictions", str(prediction_csv), "--outcomes", str(outcome_csv),
                                  "--bootstrap", "50", "-o", str(tmp_path / folder)],
                       cwd=tmp_path if folder == "script" else REPO, check=True, capture_output=True)
        report = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert report["models"]["model"]["all"]["c_index"] == pytest.approx(expected, abs=1e-12)
        assert (tmp_path / folder / "report.md").is_file()
    assert (tmp_path / "script" / "km_model_all.png").is_file()
    assert (tmp_path / "script" / "roc_36m_all.png").is_file()
    assert (tmp_path / "script" / "calibration_36m_all.png").is_file()


def test_comparison_reuses_per_model_resamples_exactly(gbsg2_tables):
    frames = [_set_data(gbsg2_tables, m, "internal_test").rename(
        columns={"dfs_months": "time", "dfs_event": "event", "p_recurrence_36m": "p_recurrence"}).reset_index(drop=True)
        for m in ("cox", "small")]
    cached = [SE.evaluate_set(f, 36.0, 100, 4, None, None, None, (0.2,))[1]["bootstrap_c"] for f in frames]
    recomputed = SE.compare_pair(frames[0], frames[1], 36.0, 100, 4)
    reused = SE.compare_pair(frames[0], frames[1], 36.0, 100, 4, *cached)
    assert reused["c_index_difference_ci"] == pytest.approx(recomputed["c_index_difference_ci"], abs=1e-12)
    assert reused["c_index_difference_p_bootstrap"] == recomputed["c_index_difference_p_bootstrap"]


# --------------------------------------------------------------------------------------------
# The two horizon risks: classification head (p_recurrence_<H>m) vs survival head (surv_prob_<H>m)
# --------------------------------------------------------------------------------------------
HEADS_OUTCOMES = {"case_id": list("abcdefghijk"),
                  "dfs_months": [10, 20, 30, 40, 50, 60, 45, 5, 12, 36, 36],
                  "dfs_event": [1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1]}  # h, i: censored early (unknown at 36)
P_CLASSIFICATION = [0.9, 0.35, 0.7, 0.2, 0.5, 0.3, 0.1, 0.05, 0.95, 0.4, 0.6]
SURV_AT_HORIZON = [0.3, 0.2, 0.75, 0.6, 0.9, 0.5, 0.65, 0.95, 0.1, 0.55, 0.7]


def _heads_inputs(tmp_path, tag, surv_h=None):
    surv = list(SURV_AT_HORIZON)
    if surv_h is not None:
        surv[7] = surv_h  # case h, censored at 5 months
    multitask = {"case_id": HEADS_OUTCOMES["case_id"], "risk_score": -np.log(surv),
                 f"p_recurrence_{tag}m": P_CLASSIFICATION, f"surv_prob_{tag}m": surv}
    baseline = {"case_id": HEADS_OUTCOMES["case_id"], "risk_score": P_CLASSIFICATION,
                f"p_recurrence_{tag}m": P_CLASSIFICATION}  # classification only: no surv_prob
    outcome_csv, multitask_csv = _write_small(tmp_path, HEADS_OUTCOMES, multitask, "multitask.csv")
    _, baseline_csv = _write_small(tmp_path, HEADS_OUTCOMES, baseline, "baseline.csv")
    return outcome_csv, multitask_csv, baseline_csv, np.array(surv)


@pytest.mark.parametrize("horizon", [36.0, 18.0])
def test_survival_head_auc_and_heads_agreement(tmp_path, horizon):
    from scipy.stats import pearsonr, spearmanr

    tag = SE.horizon_tag(horizon)
    outcome_csv, multitask_csv, baseline_csv, surv = _heads_inputs(tmp_path, tag)
    out = tmp_path / "report"
    assert SE.main(["--predictions", str(multitask_csv), str(baseline_csv), "--outcomes", str(outcome_csv),
                    "--horizon", tag, "--bootstrap", "20", "--no-figures", "-o", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())  # strict JSON (no NaN)
    result = report["models"]["multitask"]["all"]

    time, event = np.array(HEADS_OUTCOMES["dfs_months"]), np.array(HEADS_OUTCOMES["dfs_event"]).astype(bool)
    known = (event & (time <= horizon)) | (time >= horizon)
    labels = (event & (time <= horizon))[known].astype(int)
    p, risk_survival = np.array(P_CLASSIFICATION), 1 - surv
    assert 0 < (~known).sum() and result["n_known_status"] == int(known.sum())

    # Both heads' AUCs on the same known-status cases, DeLong CIs, named by head and column.
    assert result[f"auc_{tag}m"] == pytest.approx(roc_auc_score(labels, p[known]), abs=1e-12)
    assert result[f"auc_{tag}m_head"] == "classification head"
    assert result[f"auc_{tag}m_score"] == f"p_recurrence_{tag}m"
    expected = roc_auc_score(labels, risk_survival[known])
    assert result[f"auc_{tag}m_survival_head"] == pytest.approx(expected, abs=1e-12)
    assert result[f"auc_{tag}m_survival_head_ci"] == pytest.approx(list(delong_ci(labels, risk_survival[known])[1]))
    assert result[f"auc_{tag}m_survival_head_score"] == f"1 - surv_prob_{tag}m"
    assert expected != pytest.approx(roc_auc_score((event & (time <= horizon)).astype(int), risk_survival))
    assert result[f"auc_{tag}m_heads_difference"] == pytest.approx(result[f"auc_{tag}m"] - expected)
    assert 0 <= result[f"auc_{tag}m_heads_delong_p"] <= 1

    # Agreement of the two risks over every case of the set, against scipy / numpy.
    agreement = result[f"heads_agreement_{tag}m"]
    assert agreement["n"] == 11
    assert agreement["pearson"] == pytest.approx(pearsonr(p, risk_survival)[0], abs=1e-12)
    assert agreement["spearman"] == pytest.approx(spearmanr(p, risk_survival)[0], abs=1e-12)
    assert agreement["mean_abs_diff"] == pytest.approx(np.mean(np.abs(p - risk_survival)), abs=1e-12)
    assert agreement["mean_diff"] == pytest.approx(np.mean(p - risk_survival), abs=1e-12)

    # A model without surv_prob: survival-head AUC and agreement null with a reason, no error.
    baseline = report["models"]["baseline"]["all"]
    assert baseline[f"auc_{tag}m"] == pytest.approx(roc_auc_score(labels, p[known]), abs=1e-12)
    assert baseline[f"auc_{tag}m_survival_head"] is None
    assert f"surv_prob_{tag}m" in baseline[f"auc_{tag}m_survival_head_reason"]
    assert baseline[f"heads_agreement_{tag}m"] is None and baseline[f"heads_agreement_{tag}m_reason"]
    assert baseline[f"auc_{tag}m_heads_delong_p"] is None
    assert report["counts"]["models"]["baseline"]["surv_prob_horizon_column"] is None
    assert report["counts"]["models"]["multitask"]["surv_prob_horizon_column"] == f"surv_prob_{tag}m"

    # metrics.json names the head behind every column and horizon metric.
    columns = report["columns"]
    assert columns["prediction_columns"][f"p_recurrence_{tag}m"].startswith("classification head")
    assert columns["prediction_columns"]["surv_prob_<t>m"].startswith("survival head")
    assert columns["prediction_columns"]["risk_score"].startswith("survival head")
    assert any(k.startswith(f"auc_{tag}m_survival_head") and v.startswith(f"1 - surv_prob_{tag}m")
               for k, v in columns["metrics"].items())

    # report.md: a table with both AUCs and the agreement, numbers as in metrics.json.
    markdown = (out / "report.md").read_text()
    header = (f"| Model | Set | Known status | AUC classification head, p_recurrence_{tag}m (95% CI) | "
              f"AUC survival head, 1 - surv_prob_{tag}m (95% CI) | DeLong p (heads) | Pearson r | Spearman rho | "
              "Mean abs. difference |")
    assert header in markdown
    section = markdown.split(f"## The two {tag}-month risks")[1].split("\n## ")[0].splitlines()
    row = next(line for line in section if line.startswith("| multitask | all | "))
    low, high = result[f"auc_{tag}m_survival_head_ci"]
    assert f"| {expected:.2f} ({low:.2f}, {high:.2f}) |" in row
    assert f"| {agreement['pearson']:.2f} | {agreement['spearman']:.2f} | {agreement['mean_abs_diff']:.3f} |" in row
    baseline_row = next(line for line in section if line.startswith("| baseline | all | "))
    assert baseline_row.endswith("| n/a | n/a | n/a | n/a | n/a |")


def test_survival_head_auc_ignores_cases_censored_before_horizon(tmp_path):
    """Case h (censored at 5 months) has unknown status: moving its survival probability from one
    extreme to the other leaves the survival-head AUC unchanged but moves the agreement."""
    results = []
    for surv_h in (0.99, 0.01):
        outcome_csv, multitask_csv, _, _ = _heads_inputs(tmp_path, "36", surv_h)
        report = SE.evaluate([multitask_csv], SE.load_outcomes_csv(outcome_csv), tmp_path / "r",
                             n_bootstrap=20, make_figures=False)
        results.append(report["models"]["multitask"]["all"])
        assert sorted(report["dropped"][0]["case_ids"]) == ["h", "i"]
    assert results[0]["auc_36m_survival_head"] == results[1]["auc_36m_survival_head"]
    assert results[0]["auc_36m_survival_head_ci"] == results[1]["auc_36m_survival_head_ci"]
    assert results[0]["heads_agreement_36m"]["mean_abs_diff"] != results[1]["heads_agreement_36m"]["mean_abs_diff"]


def test_constant_risk_gives_no_correlation_but_no_error(tmp_path):
    outcome_csv, prediction_csv = _write_small(tmp_path, HEADS_OUTCOMES, {
        "case_id": HEADS_OUTCOMES["case_id"], "risk_score": SURV_AT_HORIZON, "p_recurrence_36m": 0.3,
        "surv_prob_36m": SURV_AT_HORIZON})
    report = SE.evaluate([prediction_csv], SE.load_outcomes_csv(outcome_csv), tmp_path / "r", n_bootstrap=10,
                         make_figures=False)
    agreement = report["models"]["model"]["all"]["heads_agreement_36m"]
    assert agreement["pearson"] is None and agreement["spearman"] is None
    assert "constant" in agreement["correlation_reason"]
    assert agreement["mean_abs_diff"] == pytest.approx(np.mean(np.abs(0.3 - (1 - np.array(SURV_AT_HORIZON)))))


def test_predictions_json_names_the_head_of_each_column():
    from nnunet_multitask.predictor import column_sources

    sources = column_sources(["case_id", "risk_score", "p_recurrence_36m", "surv_prob_12m", "surv_prob_36m",
                              "p_recurrence_36m_sd", "n_folds", "tumour_found"])
    assert set(sources) == {"risk_score", "p_recurrence_36m", "surv_prob_12m", "surv_prob_36m", "p_recurrence_36m_sd"}
    assert sources["p_recurrence_36m"].startswith("classification head")
    assert sources["p_recurrence_36m_sd"].startswith("classification head")
    assert "sd over folds" in sources["p_recurrence_36m_sd"]
    assert all(sources[c].startswith("survival head") for c in ("risk_score", "surv_prob_12m", "surv_prob_36m"))
