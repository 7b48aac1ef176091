#!/usr/bin/env python
"""Evaluate recurrence / disease-free-survival predictions: metrics with CIs, comparisons, figures.

Works on prediction CSVs from any tool (columns ``case_id``, ``risk_score`` (higher = higher
risk), ``p_recurrence_<H>m``, optional ``surv_prob_<t>m``; other columns are ignored) and on
outcomes either from a converted nnU-Net dataset (``--dataset 501``: the ``"multitask"`` block of
``$nnUNet_raw/Dataset501_*/dataset.json``) or from a CSV (``--outcomes``).

The multitask model gives two risks at the horizon H from two different heads, and nothing ties
them together: ``p_recurrence_<H>m`` is the classification head (sigmoid of its logit), while
``risk_score`` and ``surv_prob_<t>m`` come from the survival head. The C-index and Uno's C score
``risk_score`` (survival head); ``auc_<H>m`` scores ``p_recurrence_<H>m`` (classification head;
``risk_score`` when a file has none, see ``auc_<H>m_score`` / ``auc_<H>m_head``);
``auc_<H>m_survival_head`` scores ``1 - surv_prob_<H>m`` on the same known-status cases; and
``heads_agreement_<H>m`` gives the Pearson and Spearman correlation and the mean absolute
difference of the two risks. metrics.json's top-level ``columns`` names the head of each column and
metric.

Examples
--------
::

    python evaluation/survival_eval.py --predictions all.csv mri.csv --names All MRI \
        --dataset 501 --seg-pred OUT_all OUT_mri --seg-gt $nnUNet_raw/Dataset501_LARC/labelsTs \
        --train-predictions train_all.csv train_mri.csv -o report/

    python -m evaluation.survival_eval --predictions preds.csv --outcomes outcomes.csv -o report/

Writes ``metrics.json``, ``report.md``, ``dice_<model>.csv`` (with segmentations) and PNG figures
into the report folder. Point estimates come from scikit-survival / scikit-learn; the bootstrap of
Harrell's C and DeLong's variance are computed in ``evaluation.metrics``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
import time as timer
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script path (python evaluation/survival_eval.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clinical.outcomes import recurrence_label, survival_array  # noqa: E402
from evaluation import metrics as M  # noqa: E402
from nnunet_multitask import columns  # noqa: E402

TD_AUC_TIMES = (12, 24, 36, 60)
SURV_PROB_TIMES = columns.SURVIVAL_TIMES
CI_LEVEL = 0.95


class EvaluationInputError(ValueError):
    """Bad input (file, column, case); the message names the file, case and problem."""


# --------------------------------------------------------------------------------------------
# Input loading and validation
# --------------------------------------------------------------------------------------------
def horizon_tag(horizon: float) -> str:
    """``36`` for 36.0, ``18.5`` for 18.5: the <H> in ``p_recurrence_<H>m`` and ``auc_<H>m`` (the
    predictor names its columns with the same function)."""
    return columns.horizon_tag(horizon)


def check_positive_months(value, what: str) -> float:
    """``value`` as a finite float > 0, or an EvaluationInputError naming ``what``."""
    try:
        months = float(value)
    except (TypeError, ValueError):
        months = float("nan")
    if not (math.isfinite(months) and months > 0):
        raise EvaluationInputError(f"{what} must be a finite number of months > 0, got {value!r}")
    return months


def _read_csv(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype={"case_id": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise EvaluationInputError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise EvaluationInputError(f"{path}: cannot be read as CSV: {str(error).strip().splitlines()[0]}") from None
    if "case_id" not in frame.columns:
        hint = ""
        if len(frame.columns) == 1 and (";" in str(frame.columns[0]) or "\t" in str(frame.columns[0])):
            hint = "; the file looks ';'- or tab-delimited, it must be comma-separated"
        raise EvaluationInputError(f"{path}: no 'case_id' column (columns: {list(frame.columns)}){hint}")
    if len(frame) == 0:
        raise EvaluationInputError(f"{path}: a header and no rows: nothing to evaluate")
    frame["case_id"] = frame["case_id"].astype(str).str.strip()
    empty = frame["case_id"].isin(["", "nan", "None"])
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 2).tolist()
        raise EvaluationInputError(f"{path}: empty case_id on line(s) {rows[:10]}")
    duplicated = frame["case_id"][frame["case_id"].duplicated()].unique().tolist()
    if duplicated:
        raise EvaluationInputError(f"{path}: duplicate rows for case(s) {duplicated[:10]} "
                                   f"({len(duplicated)} case(s) in total)")
    return frame


def _numeric_column(frame: pd.DataFrame, column: str, path: Path, low=None, high=None) -> np.ndarray:
    """Column as float; an error names the case(s) with a non-numeric, NaN or out-of-range value."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        cases = frame["case_id"].to_numpy()[bad].tolist()
        raw = frame[column].to_numpy()[bad].tolist()
        raise EvaluationInputError(f"{path}: column '{column}' is NaN, infinite or not a number for "
                                   f"case(s) {cases[:10]} (values {raw[:10]})")
    outside = np.zeros(values.shape, dtype=bool)
    if low is not None:
        outside |= values < low
    if high is not None:
        outside |= values > high
    if outside.any():
        cases = frame["case_id"].to_numpy()[outside].tolist()
        raise EvaluationInputError(f"{path}: column '{column}' outside [{low}, {high}] for case(s) "
                                   f"{cases[:10]} (values {values[outside][:10].tolist()})")
    return values


def load_predictions(path, horizon: float) -> pd.DataFrame:
    """Read and validate a prediction CSV.

    Returns a frame sorted by case_id with ``case_id``, ``risk_score``, ``p_recurrence`` (NaN
    column when the file has no ``p_recurrence_<H>m``) and every ``surv_prob_<t>m`` present (t in
    :data:`SURV_PROB_TIMES`, and t = H for the survival-head AUC at the horizon). Any
    NaN / non-numeric value in those columns, or a duplicate case, is an error naming case and file.
    """
    path = Path(path)
    frame = _read_csv(path)
    if "risk_score" not in frame.columns:
        raise EvaluationInputError(f"{path}: no 'risk_score' column (columns: {list(frame.columns)})")
    out = pd.DataFrame({"case_id": frame["case_id"],
                        "risk_score": _numeric_column(frame, "risk_score", path)})
    p_column = f"p_recurrence_{horizon_tag(horizon)}m"
    out["p_recurrence"] = (_numeric_column(frame, p_column, path, 0.0, 1.0)
                           if p_column in frame.columns else np.nan)
    out.attrs["p_recurrence_column"] = p_column if p_column in frame.columns else None
    horizon_column = f"surv_prob_{horizon_tag(horizon)}m"  # for the survival-head AUC at any horizon
    for column in dict.fromkeys([f"surv_prob_{t}m" for t in SURV_PROB_TIMES] + [horizon_column]):
        if column in frame.columns:
            out[column] = _numeric_column(frame, column, path, 0.0, 1.0)
    out.attrs["surv_prob_horizon_column"] = horizon_column if horizon_column in frame.columns else None
    out.attrs["path"] = str(path)
    return out.sort_values("case_id", kind="stable").reset_index(drop=True)


def load_outcomes_csv(path, time_column: str = "dfs_months", event_column: str = "dfs_event",
                      default_set: str = "all") -> pd.DataFrame:
    """Read and validate an outcomes CSV into ``case_id, time, event, set``.

    A missing ``set`` column puts every case in ``default_set``. NaN / negative times and events
    other than 0/1 are errors naming the case and file.
    """
    path = Path(path)
    frame = _read_csv(path)
    for column in (time_column, event_column):
        if column not in frame.columns:
            raise EvaluationInputError(f"{path}: no '{column}' column (columns: {list(frame.columns)})")
    time = _numeric_column(frame, time_column, path, low=0.0)
    event = _numeric_column(frame, event_column, path)
    not_binary = ~np.isin(event, (0.0, 1.0))
    if not_binary.any():
        raise EvaluationInputError(f"{path}: column '{event_column}' must be 0/1; case(s) "
                                   f"{frame['case_id'][not_binary].tolist()[:10]} have "
                                   f"{event[not_binary][:10].tolist()}")
    if "set" in frame.columns:
        sets = frame["set"].astype(str).str.strip()
        missing = frame["set"].isna() | sets.eq("")
        if missing.any():
            raise EvaluationInputError(f"{path}: empty 'set' for case(s) "
                                       f"{frame['case_id'][missing].tolist()[:10]}")
    else:
        sets = pd.Series(default_set, index=frame.index)
    return pd.DataFrame({"case_id": frame["case_id"], "time": time, "event": event.astype(int),
                         "set": sets.to_numpy()})


def find_dataset_json(dataset_id: int, raw_dir=None) -> Path:
    """``$nnUNet_raw/DatasetXXX_*/dataset.json`` for a numeric dataset id."""
    raw_dir = raw_dir or os.environ.get("nnUNet_raw")
    if not raw_dir:
        raise EvaluationInputError("--dataset needs the nnUNet_raw environment variable "
                                   "(or use --outcomes CSV)")
    matches = sorted(Path(raw_dir).glob(f"Dataset{int(dataset_id):03d}_*/dataset.json"))
    if len(matches) != 1:
        raise EvaluationInputError(f"expected one {raw_dir}/Dataset{int(dataset_id):03d}_*/dataset.json, "
                                   f"found {[str(m) for m in matches]}")
    return matches[0]


def load_outcomes_from_dataset(dataset_id: int, raw_dir=None) -> tuple[pd.DataFrame, dict]:
    """Outcomes and set membership from the ``"multitask"`` block of a converted dataset.

    Test cases come from ``test_outcomes_table`` (set = internal_test / external_test, checked
    against the ``internal_test`` / ``external_test`` lists), development cases from
    ``outcomes_table`` (set = development; evaluated only when predictions include them).

    Returns
    -------
    outcomes : DataFrame ``case_id, time, event, set``
    info : dict with the dataset.json path, horizon_months and the table paths
    """
    json_path = find_dataset_json(dataset_id, raw_dir)
    block = json.loads(json_path.read_text()).get("multitask")
    if not isinstance(block, dict):
        raise EvaluationInputError(f"{json_path}: no 'multitask' block")
    time_column = block.get("time_column", "dfs_months")
    event_column = block.get("event_column", "dfs_event")
    frames = []
    listed = {name: set(map(str, block.get(name) or [])) for name in ("internal_test", "external_test")}
    if block.get("test_outcomes_table"):
        test_path = json_path.parent / block["test_outcomes_table"]
        test = load_outcomes_csv(test_path, time_column, event_column, default_set="")
        if (test["set"] == "").any():  # no set column: assign from the lists in the block
            for name, ids in listed.items():
                test.loc[test["case_id"].isin(ids), "set"] = name
            unassigned = test["case_id"][test["set"] == ""].tolist()
            if unassigned:
                raise EvaluationInputError(f"{test_path}: case(s) {unassigned[:10]} have no 'set' and "
                                           f"are in neither internal_test nor external_test of {json_path}")
        for name, ids in listed.items():
            if ids:
                in_table = set(test["case_id"][test["set"] == name])
                if in_table != ids:
                    raise EvaluationInputError(
                        f"{test_path}: set '{name}' disagrees with {json_path}: only in table "
                        f"{sorted(in_table - ids)[:10]}, only in dataset.json {sorted(ids - in_table)[:10]}")
        frames.append(test)
    if block.get("outcomes_table"):
        development = load_outcomes_csv(json_path.parent / block["outcomes_table"], time_column,
                                        event_column, default_set="development")
        development["set"] = "development"
        frames.append(development)
    if not frames:
        raise EvaluationInputError(f"{json_path}: 'multitask' block names no outcomes table")
    outcomes = pd.concat(frames, ignore_index=True)
    in_two = outcomes["case_id"][outcomes["case_id"].duplicated()].unique().tolist()
    if in_two:
        raise EvaluationInputError(f"{json_path}: case(s) {in_two[:10]} appear in more than one outcomes "
                                   "table / set")
    info = {"dataset_json": str(json_path), "horizon_months": block.get("horizon_months"),
            "time_column": time_column, "event_column": event_column}
    return outcomes, info


# --------------------------------------------------------------------------------------------
# Per-set metrics
# --------------------------------------------------------------------------------------------
def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dropped_record(model, set_name, metric, reason, case_ids) -> dict:
    case_ids = [str(c) for c in case_ids]
    return {"model": model, "set": set_name, "metric": metric, "reason": reason,
            "count": len(case_ids), "case_ids": case_ids}


def _horizon_auc(result, frame, horizon, tag, score, score_column, key=None):
    """AUC at the horizon on cases with known status, DeLong CI; fills ``result`` under ``key``
    (default ``auc_<H>m``). Every score is judged on the same known-status cases."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = recurrence_label(frame["time"], frame["event"], horizon)
    known = ~np.isnan(labels)
    key = key or f"auc_{tag}m"
    result.update({"n_known_status": int(known.sum()), "n_unknown_status": int((~known).sum()),
                   f"events_by_{tag}m": int(np.nansum(labels)), f"{key}_score": score_column,
                   key: None, f"{key}_ci": None})
    n_positive, n_negative = int((labels[known] == 1).sum()), int((labels[known] == 0).sum())
    if n_negative == 0 and frame["time"].max() < horizon:
        result[f"{key}_reason"] = (f"horizon {tag} months beyond follow-up: no case followed past it "
                                   f"without an event (max follow-up {frame['time'].max():g} months)")
    elif n_negative == 0:
        result[f"{key}_reason"] = f"no case with known recurrence-free status at {tag} months"
    elif n_positive == 0:
        result[f"{key}_reason"] = f"no recurrence at or before {tag} months among cases with known status"
    if n_positive == 0 or n_negative == 0:
        return None
    y, s = labels[known].astype(int), score[known]
    auc = float(roc_auc_score(y, s))
    delong_auc, ci, se = M.delong_ci(y, s, CI_LEVEL)
    if abs(delong_auc - auc) > 1e-9:  # same quantity two ways: guards the DeLong code
        raise RuntimeError(f"DeLong AUC {delong_auc} != roc_auc_score {auc}")
    result.update({key: auc, f"{key}_ci": list(ci), f"{key}_se": se})
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def _survival_head_auc(result, frame, horizon, tag):
    """``auc_<H>m_survival_head``: AUC of ``1 - surv_prob_<H>m`` (the survival head's risk by the
    horizon) on the known-status cases, DeLong CI; None with a reason when the column is absent."""
    key, column = f"auc_{tag}m_survival_head", f"surv_prob_{tag}m"
    if column not in frame.columns:
        result.update({key: None, f"{key}_ci": None, f"{key}_score": None,
                       f"{key}_reason": f"no {column} column in the predictions (no survival probability at the "
                                        "horizon, e.g. a Cox survival head or a baseline with risk_score only)"})
        return None
    risk = 1.0 - frame[column].to_numpy(dtype=float)
    return _horizon_auc(result, frame, horizon, tag, risk, f"1 - {column}", key=key)


def _heads_agreement(frame, tag) -> tuple[dict | None, str | None]:
    """Agreement of the two risks at the horizon over all cases of the set: classification head
    ``p_recurrence_<H>m`` vs survival head ``1 - surv_prob_<H>m`` (both are predictions, so
    censoring does not matter). Pearson and Spearman correlation (scipy), mean absolute difference
    and mean difference (classification - survival).

    Returns (agreement, None) or (None, reason).
    """
    from scipy import stats

    column = f"surv_prob_{tag}m"
    if not frame["p_recurrence"].notna().all():
        return None, f"no p_recurrence_{tag}m column in the predictions (no classification-head risk)"
    if column not in frame.columns:
        return None, f"no {column} column in the predictions (no survival-head probability at the horizon)"
    p_classification = frame["p_recurrence"].to_numpy(dtype=float)
    p_survival = 1.0 - frame[column].to_numpy(dtype=float)
    difference = p_classification - p_survival
    out = {"n": int(len(frame)), "classification_head": f"p_recurrence_{tag}m",
           "survival_head": f"1 - {column}", "pearson": None, "spearman": None,
           "mean_abs_diff": float(np.mean(np.abs(difference))), "mean_diff": float(np.mean(difference))}
    if len(frame) < 2:
        out["correlation_reason"] = "needs at least 2 cases"
    elif np.ptp(p_classification) == 0 or np.ptp(p_survival) == 0:
        out["correlation_reason"] = "one of the two risks is constant over the set (correlation undefined)"
    else:
        out["pearson"] = _finite_or_none(stats.pearsonr(p_classification, p_survival)[0])
        out["spearman"] = _finite_or_none(stats.spearmanr(p_classification, p_survival)[0])
    return out, None


def _calibration(frame, horizon, p):
    """Quantile bins of predicted p_recurrence; observed risk = 1 - KM survival at the horizon."""
    labels = recurrence_label(frame["time"], frame["event"], horizon)
    n_bins = int(min(10, max(2, len(frame) // 10)))
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    bin_index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins = []
    for b in np.unique(bin_index):
        member = bin_index == b
        survival = M.km_survival_at(frame["time"][member], frame["event"][member], horizon)
        known = member & ~np.isnan(labels)
        bins.append({"n": int(member.sum()), "mean_predicted": float(p[member].mean()),
                     "observed": _finite_or_none(1.0 - survival),
                     "observed_among_known_status": _finite_or_none(labels[known].mean()) if known.any() else None,
                     "n_known_status": int(known.sum())})
    return bins


def evaluate_set(frame: pd.DataFrame, horizon: float, n_bootstrap: int, seed: int,
                 risk_threshold: float | None, threshold_source: str | None,
                 uno_tau: float | None) -> tuple[dict, dict]:
    """All metrics of one model on one set.

    Parameters
    ----------
    frame : DataFrame
        One row per case, sorted by case_id: ``time``, ``event``, ``risk_score``,
        ``p_recurrence`` (may be all-NaN), optional ``surv_prob_<t>m``.
    horizon : float
        Months for the recurrence label / AUC / calibration.
    n_bootstrap, seed : int
        Bootstrap resamples for Harrell's C and the numpy seed.
    risk_threshold, threshold_source : float or None, str or None
        Risk-group split (high = risk > threshold); None uses the set's median.
    uno_tau : float or None
        Truncation time for Uno's C; None = the horizon.

    Returns
    -------
    result : dict
        JSON-ready metrics; a metric that cannot be computed is None with ``<metric>_reason``.
    plots : dict
        Arrays for the figures (KM curves, ROC, calibration bins).
    """
    from sksurv.metrics import (concordance_index_ipcw, cumulative_dynamic_auc, brier_score,
                                integrated_brier_score)
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.compare import compare_survival

    tag = horizon_tag(horizon)
    time = frame["time"].to_numpy(dtype=float)
    event = frame["event"].to_numpy().astype(bool)
    risk = frame["risk_score"].to_numpy(dtype=float)
    y = survival_array(time, event)
    n_events = int(event.sum())
    result = {"n": int(len(frame)), "events": n_events, "censored": int(len(frame) - n_events),
              "follow_up_min": float(time.min()), "follow_up_max": float(time.max())}
    plots = {}
    no_events = "no events in this set" if n_events == 0 else None

    # Harrell's C (sksurv) + seeded percentile bootstrap (vectorised, see metrics.py).
    result.update({"c_index": None, "c_index_ci": None})
    if no_events:
        result["c_index_reason"] = no_events
    else:
        try:
            c_index = M.harrell_c(time, event, risk)
            if not np.isfinite(c_index):  # sksurv returns NaN when no pair is comparable (e.g. tied times)
                raise ValueError("every event at the same time as every other case")
        except ValueError as error:
            result["c_index_reason"] = f"no comparable pairs ({error})"
        else:
            vectorised = M.weighted_harrell_c(time, event, risk, np.ones((1, len(time))))[0, 0]
            if abs(vectorised - c_index) > 1e-9:  # guards the vectorised bootstrap code
                raise RuntimeError(f"vectorised Harrell C {vectorised} != sksurv {c_index}")
            resampled = M.bootstrap_harrell_c(time, event, risk, n_bootstrap, seed)[0]
            plots["bootstrap_c"] = resampled  # reused by compare_pair when the cases are the same
            result["c_index"] = c_index
            result["c_index_ci"] = list(M.percentile_ci(resampled, CI_LEVEL) or []) or None
            result["c_index_bootstrap_valid"] = int(np.isfinite(resampled).sum())
            result["c_index_bootstrap_without_comparable_pairs"] = int((~np.isfinite(resampled)).sum())

    # Uno's C: IPCW from the evaluated set itself, truncated at tau.
    tau = float(horizon if uno_tau is None else uno_tau)
    result.update({"uno_c": None, "uno_c_tau": tau,
                   "uno_c_ipcw": "censoring distribution (Kaplan-Meier of censoring times) estimated "
                                 "from the evaluated set itself; pairs whose earlier time is < tau"})
    if no_events:
        result["uno_c_reason"] = no_events
    elif not (event & (time < tau)).any():
        result["uno_c_reason"] = f"no event before tau = {tau:g} months"
    else:
        try:
            result["uno_c"] = _finite_or_none(concordance_index_ipcw(y, y, risk, tau=tau)[0])
            if result["uno_c"] is None:
                result["uno_c_reason"] = "sksurv concordance_index_ipcw returned NaN (no comparable pair before tau)"
        except (ValueError, np.linalg.LinAlgError) as error:
            result["uno_c_reason"] = f"sksurv concordance_index_ipcw failed: {error}"

    # AUC at the horizon (known status only) with DeLong CI.
    if frame["p_recurrence"].notna().all():
        score, score_column = frame["p_recurrence"].to_numpy(dtype=float), f"p_recurrence_{tag}m"
    else:
        score, score_column = risk, "risk_score"
    roc = _horizon_auc(result, frame, horizon, tag, score, score_column)
    result[f"auc_{tag}m_head"] = ("classification head" if score_column != "risk_score" else
                                  f"survival head (risk_score; no p_recurrence_{tag}m column)")
    if roc is not None:
        plots["roc"] = roc

    # The same AUC from the survival head (1 - surv_prob_<H>m), the two heads' AUCs compared
    # (DeLong, same known-status cases) and the agreement of their two risks over the set.
    _survival_head_auc(result, frame, horizon, tag)
    both_key = f"auc_{tag}m_heads_delong_p"
    result.update({f"auc_{tag}m_heads_difference": None, both_key: None})
    if score_column == "risk_score" or result[f"auc_{tag}m_survival_head"] is None:
        result[f"{both_key}_reason"] = ("needs the AUC of both heads (p_recurrence_"
                                        f"{tag}m and surv_prob_{tag}m)")
    else:
        labels = recurrence_label(frame["time"], frame["event"], horizon)
        known = ~np.isnan(labels)
        test = M.delong_test(labels[known].astype(int), score[known],
                             1.0 - frame[f"surv_prob_{tag}m"].to_numpy(dtype=float)[known])
        result[f"auc_{tag}m_heads_difference"] = test["difference"]
        result[both_key] = _finite_or_none(test["p_value"])
    agreement, reason = _heads_agreement(frame, tag)
    result[f"heads_agreement_{tag}m"] = agreement
    if reason:
        result[f"heads_agreement_{tag}m_reason"] = reason

    # Censoring-aware time-dependent AUC, each time separately so one bad time leaves the others.
    td_auc, td_reason = {}, {}
    for t in TD_AUC_TIMES:
        td_auc[str(t)] = None
        if not (time.min() <= t < time.max()):
            td_reason[str(t)] = f"outside follow-up range [{time.min():g}, {time.max():g}) months"
        elif not (event & (time <= t)).any():
            td_reason[str(t)] = f"no event at or before {t} months"
        else:
            try:
                td_auc[str(t)] = _finite_or_none(cumulative_dynamic_auc(y, y, risk, [t])[0][0])
                if td_auc[str(t)] is None:
                    td_reason[str(t)] = "sksurv cumulative_dynamic_auc returned NaN"
            except ValueError as error:
                td_reason[str(t)] = f"sksurv cumulative_dynamic_auc failed: {error}"
    result["td_auc"], result["td_auc_reason"] = td_auc, td_reason

    # Integrated Brier score over the given survival-probability times inside follow-up.
    given = [t for t in SURV_PROB_TIMES if f"surv_prob_{t}m" in frame.columns]
    usable = [t for t in given if time.min() <= t < time.max()]
    result.update({"ibs": None, "ibs_times": usable, "brier": None})
    if not given:
        result["ibs_reason"] = "no surv_prob_<t>m columns in the predictions"
    elif len(usable) < 2:
        result["ibs_reason"] = (f"needs >= 2 survival-probability times inside follow-up "
                                f"[{time.min():g}, {time.max():g}); given {given}, usable {usable}")
    else:
        survival = frame[[f"surv_prob_{t}m" for t in usable]].to_numpy(dtype=float)
        try:
            result["ibs"] = float(integrated_brier_score(y, y, survival, usable))
            result["brier"] = {str(t): float(b) for t, b in zip(*brier_score(y, y, survival, usable))}
        except ValueError as error:
            result["ibs_reason"] = f"sksurv integrated_brier_score failed: {error}"

    # Risk groups, Kaplan-Meier and log-rank.
    if risk_threshold is None:
        risk_threshold, threshold_source = float(np.median(risk)), "median risk of this set"
    high = risk > risk_threshold
    result.update({"risk_threshold": float(risk_threshold), "risk_threshold_source": threshold_source,
                   "risk_group_rule": "high risk = risk_score > threshold",
                   "n_high_risk": int(high.sum()), "n_low_risk": int((~high).sum()),
                   "events_high_risk": int(event[high].sum()), "events_low_risk": int(event[~high].sum()),
                   "logrank_p": None, "logrank_chisq": None})
    groups = {"low risk": ~high, "high risk": high}
    plots["km"] = {name: kaplan_meier_estimator(event[m], time[m]) for name, m in groups.items() if m.any()}
    plots["km_times"] = {name: time[m] for name, m in groups.items() if m.any()}
    if no_events:
        result["logrank_p_reason"] = no_events
    elif high.all() or (~high).all():
        result["logrank_p_reason"] = "all cases fall in one risk group at this threshold"
    else:
        try:
            chisq, p_value = compare_survival(y, np.where(high, "high", "low"))
        except (ValueError, np.linalg.LinAlgError) as error:
            result["logrank_p_reason"] = (f"sksurv compare_survival failed ({type(error).__name__}: {error}); "
                                          "e.g. every event at the same time leaves no variance")
        else:
            if np.isfinite(p_value):
                result["logrank_chisq"], result["logrank_p"] = float(chisq), float(p_value)
            else:
                result["logrank_p_reason"] = "sksurv compare_survival returned NaN (no variance between groups)"

    # Calibration at the horizon.
    if frame["p_recurrence"].notna().all():
        bins = _calibration(frame, horizon, frame["p_recurrence"].to_numpy(dtype=float))
        result["calibration"] = {"bins": bins, "binning": "quantile bins of predicted p_recurrence",
                                 "observed": f"1 - Kaplan-Meier survival at {tag} months within the bin "
                                             "(uses censored cases); observed_among_known_status also given"}
        plots["calibration"] = bins
    else:
        result["calibration"] = None
        result["calibration_reason"] = f"no p_recurrence_{tag}m column in the predictions"
    return result, plots


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------
def dice_per_case(case_ids, seg_pred_dir, seg_gt_dir) -> tuple[dict, dict]:
    """Dice of ``<seg_pred_dir>/<case>.nii.gz`` vs ``<seg_gt_dir>/<case>.nii.gz`` (SimpleITK).

    Returns
    -------
    dice : dict case_id -> Dice (NaN when both masks are empty)
    missing : dict reason -> list of case ids without a usable pair of files
    """
    import SimpleITK as sitk

    dice, missing = {}, {"no reference segmentation": [], "no predicted segmentation": []}
    for case_id in case_ids:
        pred_path, gt_path = Path(seg_pred_dir) / f"{case_id}.nii.gz", Path(seg_gt_dir) / f"{case_id}.nii.gz"
        if not gt_path.is_file():
            missing["no reference segmentation"].append(case_id)
            continue
        if not pred_path.is_file():
            missing["no predicted segmentation"].append(case_id)
            continue
        pred, gt = sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(gt_path))
        if pred.GetSize() != gt.GetSize() or not np.allclose(pred.GetSpacing(), gt.GetSpacing(), rtol=1e-3):
            raise EvaluationInputError(
                f"case {case_id}: {pred_path} (size {pred.GetSize()}, spacing {pred.GetSpacing()}) does not "
                f"match {gt_path} (size {gt.GetSize()}, spacing {gt.GetSpacing()})")
        dice[case_id] = M.dice_coefficient(sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(gt))
    return dice, missing


# --------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------
def compare_pair(frame_a: pd.DataFrame, frame_b: pd.DataFrame, horizon: float, n_bootstrap: int,
                 seed: int, bootstrap_a=None, bootstrap_b=None) -> dict:
    """Model A vs B on their common cases of one set.

    C-index difference (A - B) with a paired percentile bootstrap (identical resamples for both
    models) and the DeLong test of the two correlated horizon AUCs.

    ``bootstrap_a`` / ``bootstrap_b`` are the per-model bootstrap C values of ``evaluate_set``
    (same seed, cases sorted by case_id); they are reused only when both models cover exactly the
    common cases, since only then are their resamples the resamples of the common cases.
    """
    common = frame_a.merge(frame_b[["case_id", "risk_score", "p_recurrence"]], on="case_id",
                           suffixes=("_a", "_b")).sort_values("case_id")
    time = common["time"].to_numpy(dtype=float)
    event = common["event"].to_numpy().astype(bool)
    out = {"n_common": int(len(common)), "events": int(event.sum()), "c_index_a": None, "c_index_b": None,
           "c_index_difference": None, "c_index_difference_ci": None, "c_index_difference_p_bootstrap": None,
           "delong_p": None}
    if len(common) == 0:
        out["c_index_difference_reason"] = out["delong_p_reason"] = "no common cases"
        return out
    risks = common[["risk_score_a", "risk_score_b"]].to_numpy(dtype=float).T
    if not event.any():
        out["c_index_difference_reason"] = "no events among the common cases"
    else:
        try:
            c_a, c_b = M.harrell_c(time, event, risks[0]), M.harrell_c(time, event, risks[1])
            if not (np.isfinite(c_a) and np.isfinite(c_b)):
                raise ValueError("every event at the same time as every other case")
        except ValueError as error:
            out["c_index_difference_reason"] = f"no comparable pairs ({error})"
        else:
            same_cases = len(frame_a) == len(frame_b) == len(common)
            if same_cases and bootstrap_a is not None and bootstrap_b is not None:
                resampled = np.vstack([bootstrap_a, bootstrap_b])
            else:
                resampled = M.bootstrap_harrell_c(time, event, risks, n_bootstrap, seed)
            differences = resampled[0] - resampled[1]
            finite = differences[np.isfinite(differences)]
            out.update({"c_index_a": c_a, "c_index_b": c_b, "c_index_difference": c_a - c_b,
                        "c_index_difference_ci": list(M.percentile_ci(differences, CI_LEVEL) or []) or None})
            if finite.size:
                # Two-sided bootstrap p: twice the smaller tail share on either side of 0, with the
                # (k + 1) / (B + 1) correction so it is never reported as exactly 0.
                tail = min((finite <= 0).sum(), (finite >= 0).sum())
                out["c_index_difference_p_bootstrap"] = float(min(1.0, 2 * (tail + 1) / (finite.size + 1)))
    labels = recurrence_label(time, event, horizon)
    known = ~np.isnan(labels)
    use_p = common["p_recurrence_a"].notna().all() and common["p_recurrence_b"].notna().all()
    scores = (common[["p_recurrence_a", "p_recurrence_b"]] if use_p
              else common[["risk_score_a", "risk_score_b"]]).to_numpy(dtype=float).T
    out["delong_score"] = f"p_recurrence_{horizon_tag(horizon)}m" if use_p else "risk_score"
    out["n_known_status"] = int(known.sum())
    if len(np.unique(labels[known])) < 2:
        out["delong_p_reason"] = (f"needs cases with and without recurrence by {horizon_tag(horizon)} months "
                                  "among the common cases with known status")
    else:
        test = M.delong_test(labels[known].astype(int), scores[0][known], scores[1][known])
        out.update({"auc_a": test["auc_a"], "auc_b": test["auc_b"], "auc_difference": test["difference"],
                    "delong_z": _finite_or_none(test["z"]), "delong_p": test["p_value"]})
    return out


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------
def evaluate(prediction_paths, outcomes: pd.DataFrame, output_dir, names=None, horizon: float = 36.0,
             n_bootstrap: int = 1000, seed: int = 0, train_prediction_paths=None, seg_pred_dirs=None,
             seg_gt_dir=None, allow_unmatched: bool = False, uno_tau: float | None = None,
             make_figures: bool = True, outcomes_source: str = "") -> dict:
    """Evaluate one or more prediction files and write metrics.json, report.md and figures.

    Parameters
    ----------
    prediction_paths : list of path
        Prediction CSVs, one per model.
    outcomes : DataFrame
        ``case_id, time, event, set`` (from ``load_outcomes_csv`` / ``load_outcomes_from_dataset``).
    output_dir : path
        Report folder (created).
    names : list of str, optional
        Model names (default: file stems; must be unique).
    horizon : float
        Months for the recurrence label.
    n_bootstrap, seed : int
        Bootstrap resamples and seed.
    train_prediction_paths : list of path, optional
        One training-fold prediction CSV per model; its median risk is the risk-group threshold.
    seg_pred_dirs : list of path, optional
        One predicted-segmentation folder per model ("none" skips a model); needs ``seg_gt_dir``.
    allow_unmatched : bool
        Count and drop prediction cases absent from the outcomes instead of raising.
    uno_tau : float, optional
        Truncation time of Uno's C (default: the horizon).
    make_figures : bool
        Write the PNG figures.

    Returns
    -------
    dict
        The content of metrics.json.
    """
    start = timer.perf_counter()
    prediction_paths = [Path(p) for p in prediction_paths]
    names = list(names) if names else [p.name[:-4] if p.name.endswith(".csv") else p.name
                                       for p in prediction_paths]
    if len(names) != len(prediction_paths):
        raise EvaluationInputError(f"--names has {len(names)} names for {len(prediction_paths)} prediction files")
    if len(set(names)) != len(names):
        raise EvaluationInputError(f"model names must be unique, got {names} (use --names)")
    for option, values in (("--train-predictions", train_prediction_paths), ("--seg-pred", seg_pred_dirs)):
        if values and len(values) != len(names):
            raise EvaluationInputError(f"{option} needs one entry per prediction file, in the same order "
                                       f"({len(names)}), got {len(values)}"
                                       + ("; write 'none' for a model without segmentations"
                                          if option == "--seg-pred" else ""))
    if seg_pred_dirs and not seg_gt_dir:
        raise EvaluationInputError("--seg-pred needs --seg-gt")
    if seg_pred_dirs:
        if not Path(seg_gt_dir).is_dir():
            raise EvaluationInputError(f"--seg-gt {seg_gt_dir}: folder not found")
        for name, folder in zip(names, seg_pred_dirs):
            if str(folder).lower() != "none" and not Path(folder).is_dir():
                raise EvaluationInputError(f"--seg-pred {folder} (model {name}): folder not found "
                                           "(write 'none' for a model without segmentations)")
    horizon = check_positive_months(horizon, "the horizon (--horizon)")
    if uno_tau is not None:
        uno_tau = check_positive_months(uno_tau, "--uno-tau")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise EvaluationInputError(f"-o {output_dir}: exists and is not a folder")
    if len(outcomes) == 0:
        raise EvaluationInputError(f"no outcomes in {outcomes_source or 'the outcomes table'}: nothing to evaluate")
    tag = horizon_tag(horizon)

    set_order = [s for s in ("internal_test", "external_test", "development", "all")
                 if s in set(outcomes["set"])] + sorted(set(outcomes["set"]) - {"internal_test", "external_test",
                                                                                  "development", "all"})
    report = {"settings": {}, "columns": {}, "models": {}, "comparisons": {}, "counts": {}, "dropped": [],
              "figures": []}
    counts = report["counts"]
    counts["outcomes"] = {"source": outcomes_source, "rows": int(len(outcomes)),
                          "per_set": {s: int((outcomes["set"] == s).sum()) for s in set_order}}
    counts["models"] = {}
    merged_frames, plot_data, dice_tables = {}, {}, {}
    for index, (name, path) in enumerate(zip(names, prediction_paths)):
        predictions = load_predictions(path, horizon)
        unmatched = sorted(set(predictions["case_id"]) - set(outcomes["case_id"]))
        if unmatched and not allow_unmatched:
            raise EvaluationInputError(
                f"{path}: {len(unmatched)} case(s) have no outcome: {unmatched[:10]}; check the case ids "
                "or pass --allow-unmatched to count and exclude them")
        if unmatched:
            report["dropped"].append(_dropped_record(name, None, "all", "prediction case absent from outcomes",
                                                     unmatched))
        merged = predictions.merge(outcomes, on="case_id", how="inner").sort_values("case_id")
        if len(merged) == 0:
            raise EvaluationInputError(
                f"{path}: none of its {len(predictions)} case(s) ({predictions['case_id'].tolist()[:5]}...) has an "
                f"outcome in {outcomes_source or 'the outcomes table'} (outcome cases: "
                f"{sorted(outcomes['case_id'])[:5]}...): nothing to evaluate; check the case ids")
        merged_frames[name] = merged
        model_counts = {"predictions_file": str(path), "p_recurrence_column": predictions.attrs["p_recurrence_column"],
                        "surv_prob_horizon_column": predictions.attrs["surv_prob_horizon_column"],
                        "prediction_rows": int(len(predictions)), "matched_to_outcomes": int(len(merged)),
                        "unmatched_excluded": len(unmatched), "per_set": {},
                        "outcome_cases_without_prediction": {}}
        counts["models"][name] = model_counts

        threshold, threshold_source = None, None
        if train_prediction_paths:
            train = load_predictions(train_prediction_paths[index], horizon)
            threshold = float(np.median(train["risk_score"]))
            threshold_source = (f"median risk of training predictions {train_prediction_paths[index]} "
                                f"(n={len(train)})")
        dice, dice_missing = {}, {}
        if seg_pred_dirs and str(seg_pred_dirs[index]).lower() != "none":
            dice, dice_missing = dice_per_case(merged["case_id"].tolist(), seg_pred_dirs[index], seg_gt_dir)
            dice_tables[f"dice_{_file_part(name)}.csv"] = pd.DataFrame({"case_id": list(dice),
                                                                         "dice": list(dice.values())})

        report["models"][name] = {}
        for set_name in set_order:
            in_set = outcomes["case_id"][outcomes["set"] == set_name]
            frame = merged[merged["set"] == set_name].reset_index(drop=True)
            model_counts["per_set"][set_name] = int(len(frame))
            not_predicted = sorted(set(in_set) - set(frame["case_id"]))
            model_counts["outcome_cases_without_prediction"][set_name] = len(not_predicted)
            if len(frame) == 0:
                continue  # e.g. development outcomes when only test cases were predicted
            if not_predicted and set_name != "development":
                report["dropped"].append(_dropped_record(name, set_name, "all", "outcome case without a prediction "
                                                         "(not evaluated)", not_predicted))
            result, plots = evaluate_set(frame, horizon, n_bootstrap, seed, threshold, threshold_source, uno_tau)
            unknown = frame["case_id"][np.isnan(recurrence_label(frame["time"], frame["event"], horizon))]
            if len(unknown):
                report["dropped"].append(_dropped_record(name, set_name, f"auc_{tag}m", f"censored before {tag} months "
                                                         "(recurrence status unknown)", unknown))
            _add_dice(result, report, name, set_name, frame["case_id"], dice, dice_missing, bool(seg_pred_dirs)
                      and str(seg_pred_dirs[index]).lower() != "none")
            report["models"][name][set_name] = result
            plot_data[(name, set_name)] = plots

    for name_a, name_b in itertools.combinations(names, 2):
        pair = {}
        for set_name in set_order:
            a, b = merged_frames[name_a], merged_frames[name_b]
            a, b = a[a["set"] == set_name], b[b["set"] == set_name]
            if len(a) and len(b):
                pair[set_name] = compare_pair(
                    a, b, horizon, n_bootstrap, seed,
                    plot_data.get((name_a, set_name), {}).get("bootstrap_c"),
                    plot_data.get((name_b, set_name), {}).get("bootstrap_c"))
        report["comparisons"][f"{name_a} vs {name_b}"] = {"model_a": name_a, "model_b": name_b, "sets": pair}

    report["settings"] = _settings(horizon, n_bootstrap, seed, uno_tau, outcomes_source)
    report["columns"] = column_sources(tag)
    counts["dropped_by_reason"] = {}
    for record in report["dropped"]:
        key = f"{record['metric']}: {record['reason']}"
        counts["dropped_by_reason"][key] = counts["dropped_by_reason"].get(key, 0) + record["count"]
    report["timing_seconds"] = {"metrics": round(timer.perf_counter() - start, 3)}
    # Every input was read and every metric computed: only now is the report folder touched.
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EvaluationInputError(f"-o {output_dir}: cannot create the report folder: {error}") from None
    for file_name, table in dice_tables.items():
        table.to_csv(output_dir / file_name, index=False)
    if make_figures:
        report["figures"] = _write_figures(output_dir, report, plot_data, names, set_order, tag)
    report["timing_seconds"]["total"] = round(timer.perf_counter() - start, 3)
    (output_dir / "metrics.json").write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False))
    (output_dir / "report.md").write_text(render_report(report, tag))
    return report


def _add_dice(result, report, name, set_name, case_ids, dice, dice_missing, has_segmentation):
    result.update({"dice_mean": None, "dice_median": None, "n_dice": 0})
    if not has_segmentation:
        result["dice_mean_reason"] = result["dice_median_reason"] = "no segmentations given (--seg-pred/--seg-gt)"
        return
    values = np.array([dice[c] for c in case_ids if c in dice], dtype=float)
    both_empty = [c for c in case_ids if c in dice and not np.isfinite(dice[c])]
    for reason, cases in list(dice_missing.items()) + [("both masks empty (Dice undefined)", both_empty)]:
        cases = [c for c in cases if c in set(case_ids)]
        if cases:
            report["dropped"].append(_dropped_record(name, set_name, "dice", reason, cases))
    finite = values[np.isfinite(values)]
    result["n_dice"] = int(finite.size)
    if finite.size == 0:
        result["dice_mean_reason"] = result["dice_median_reason"] = "no case with a usable segmentation pair"
    else:
        result["dice_mean"], result["dice_median"] = float(finite.mean()), float(np.median(finite))
        result["dice_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else None


def column_sources(tag: str) -> dict:
    """Which head each prediction column, and so each metric, comes from (metrics.json ``columns``)."""
    return {
        "prediction_columns": {
            f"p_recurrence_{tag}m": "classification head: sigmoid of its logit, P(recurrence by "
                                    f"{tag} months); not derived from the survival head",
            "risk_score": "survival head (Cox: log-risk; discrete-time: -log S(horizon)); higher = higher risk",
            "surv_prob_<t>m": "survival head: predicted recurrence-free survival S(t) at t months "
                              "(discrete-time head only)",
        },
        "metrics": {
            "c_index, c_index_ci, uno_c, td_auc, risk groups / logrank_p": "risk_score (survival head)",
            "ibs, brier": "surv_prob_<t>m (survival head)",
            f"auc_{tag}m, auc_{tag}m_ci": f"p_recurrence_{tag}m (classification head); risk_score when a "
                                          f"file has no p_recurrence_{tag}m (per model/set: auc_{tag}m_score, "
                                          f"auc_{tag}m_head)",
            f"auc_{tag}m_survival_head, auc_{tag}m_survival_head_ci": f"1 - surv_prob_{tag}m (survival head), "
                                                                      "same known-status cases as "
                                                                      f"auc_{tag}m; null without that column",
            f"auc_{tag}m_heads_difference, auc_{tag}m_heads_delong_p": f"auc_{tag}m - auc_{tag}m_survival_head "
                                                                       "and the DeLong test of equal AUCs "
                                                                       "(paired, same cases)",
            f"heads_agreement_{tag}m": f"p_recurrence_{tag}m vs 1 - surv_prob_{tag}m over all cases of the set: "
                                       "pearson, spearman (scipy), mean_abs_diff, mean_diff "
                                       "(classification - survival), n",
            "calibration": f"p_recurrence_{tag}m (classification head)",
            "comparisons delong_p": f"p_recurrence_{tag}m of both models (risk_score when either lacks it)",
        },
    }


def _settings(horizon, n_bootstrap, seed, uno_tau, outcomes_source) -> dict:
    import sklearn
    import sksurv

    return {
        "horizon_months": horizon, "bootstrap_resamples": n_bootstrap, "seed": seed, "ci_level": CI_LEVEL,
        "outcomes_source": outcomes_source,
        "c_index_ci_method": ("percentile bootstrap: cases resampled with replacement within the set "
                              "(numpy default_rng(seed)); the same resamples for every model with the "
                              "same cases, so model differences are paired; the bootstrap p of a difference is "
                              "2 * (k + 1) / (B + 1), k = resamples on the smaller side of 0"),
        "auc_ci_method": "DeLong variance (fast midrank algorithm, Sun & Xu 2014), normal approximation, "
                         "clipped to [0, 1]",
        "auc_population": "cases with known status at the horizon: event at or before it (1) or followed "
                          "beyond it without event (0); censored earlier = excluded and counted; the same "
                          "cases for the classification-head and the survival-head AUC",
        "heads_agreement": "scipy.stats pearsonr / spearmanr and the mean absolute difference of "
                           "p_recurrence_<H>m and 1 - surv_prob_<H>m over every case of the set",
        "uno_c": ("sksurv concordance_index_ipcw; censoring distribution estimated from the evaluated set "
                  f"itself; truncation tau = {horizon if uno_tau is None else uno_tau:g} months"),
        "td_auc": f"sksurv cumulative_dynamic_auc of risk_score at {list(TD_AUC_TIMES)} months, "
                  "IPCW from the evaluated set, only inside its follow-up range",
        "ibs": f"sksurv integrated_brier_score over the surv_prob_<t>m times ({list(SURV_PROB_TIMES)}) "
               "inside the set's follow-up range, IPCW from the evaluated set",
        "risk_groups": "high risk = risk_score > threshold (median of --train-predictions when given, else of "
                       "the evaluated set); Kaplan-Meier and log-rank (sksurv compare_survival)",
        "calibration": "quantile bins of p_recurrence; observed = 1 - Kaplan-Meier survival at the horizon",
        "dice": "per case on label > 0; both-empty cases are undefined and counted, not averaged",
        "versions": {"scikit-survival": sksurv.__version__, "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__},
    }


def _json_ready(value):
    """NaN/inf -> None and numpy scalars -> Python, recursively (metrics.json is strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite_or_none(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _file_part(text: str) -> str:
    """Model / set name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def _write_figures(output_dir, report, plot_data, names, set_order, tag) -> list[str]:
    from evaluation import figures

    written = []
    for (name, set_name), plots in plot_data.items():
        result = report["models"][name][set_name]
        max_time = max(float(np.max(t)) for t in plots["km_times"].values())
        ticks = list(np.arange(0, max_time + 1e-9, 12.0 if max_time > 24 else max(max_time / 4, 1.0)))
        path = output_dir / f"km_{_file_part(name)}_{_file_part(set_name)}.png"
        figures.plot_km_by_risk_group(path, plots["km"], f"{name}, {set_name}: split at {result['risk_threshold']:.3g}",
                                      ticks, plots["km_times"], result["logrank_p"])
        written.append(path.name)
    for set_name in set_order:
        rocs, calibrations = {}, {}
        for name in names:
            plots = plot_data.get((name, set_name))
            if plots is None:
                continue
            result = report["models"][name][set_name]
            if "roc" in plots:
                rocs[f"{name} (AUC {result[f'auc_{tag}m']:.3f})"] = plots["roc"]
            if "calibration" in plots:
                calibrations[name] = plots["calibration"]
        if rocs:
            path = output_dir / f"roc_{tag}m_{_file_part(set_name)}.png"
            figures.plot_roc(path, rocs, f"Recurrence by {tag} months, {set_name} (known status)")
            written.append(path.name)
        if calibrations:
            path = output_dir / f"calibration_{tag}m_{_file_part(set_name)}.png"
            figures.plot_calibration(path, calibrations, f"Calibration at {tag} months, {set_name}",
                                     f"Observed risk (1 - KM at {tag} months)")
            written.append(path.name)
    return written


# --------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------
def _fmt(value, digits=3):
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_ci(value, ci, digits=2):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f} ({ci[0]:.{digits}f}, {ci[1]:.{digits}f})" if ci else f"{value:.{digits}f}"


def _fmt_p(p):
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def render_report(report: dict, tag: str) -> str:
    """Markdown report: a results table shaped like the paper's (rows model x set), comparisons,
    reasons for missing values, counts of excluded cases, settings and figures."""
    settings = report["settings"]
    lines = ["# Recurrence / DFS evaluation", "",
             f"Horizon {tag} months; {settings['bootstrap_resamples']} bootstrap resamples, seed {settings['seed']}; "
             f"outcomes: {settings['outcomes_source']}.", "",
             f"| Model | Set | n | Events | C-index (95% CI) | AUC at {tag} mo (95% CI) | Uno's C | IBS | Dice | "
             "Log-rank p |", "|---|---|---|---|---|---|---|---|---|---|"]
    reasons = []
    for name, sets in report["models"].items():
        for set_name, r in sets.items():
            lines.append(f"| {name} | {set_name} | {r['n']} | {r['events']} | {_fmt_ci(r['c_index'], r['c_index_ci'])} | "
                         f"{_fmt_ci(r[f'auc_{tag}m'], r[f'auc_{tag}m_ci'])} | {_fmt(r['uno_c'], 2)} | {_fmt(r['ibs'], 3)} | "
                         f"{_fmt(r['dice_mean'], 2)} | {_fmt_p(r['logrank_p'])} |")
            for key, value in r.items():
                if key.endswith("_reason") and isinstance(value, str) and key != "dice_median_reason":
                    reasons.append(f"- {name} / {set_name}: `{key[:-7]}` n/a: {value}")
            reasons += [f"- {name} / {set_name}: `td_auc` at {t} months n/a: {why}"
                        for t, why in r["td_auc_reason"].items()]
    lines += ["", "C-index: Harrell's (sksurv), percentile bootstrap CI, of risk_score (survival head). AUC: "
              f"p_recurrence_{tag}m (classification head; risk_score when a file has none), cases with known "
              "status at the horizon, DeLong CI; the survival head's AUC is in the next section. Uno's C: IPCW with the censoring distribution estimated from the evaluated set "
              "itself, truncated at tau (see metrics.json `uno_c_tau`). IBS: integrated Brier score over the "
              "given survival-probability times. Dice: mean over cases. Log-rank: high vs low risk "
              "(threshold and its source in metrics.json).", ""]
    lines += [f"## The two {tag}-month risks", "",
              f"`p_recurrence_{tag}m` comes from the classification head (sigmoid of its logit), "
              f"`1 - surv_prob_{tag}m` from the survival head (which also gives `risk_score`); nothing ties the "
              "two together. Both AUCs on the same cases with known status (DeLong CIs; DeLong p: equal AUCs); "
              "agreement over every case of the set.", "",
              f"| Model | Set | Known status | AUC classification head, p_recurrence_{tag}m (95% CI) | "
              f"AUC survival head, 1 - surv_prob_{tag}m (95% CI) | DeLong p (heads) | Pearson r | Spearman rho | "
              "Mean abs. difference |", "|---|---|---|---|---|---|---|---|---|"]
    for name, sets in report["models"].items():
        for set_name, r in sets.items():
            from_classification = r.get(f"auc_{tag}m_head") == "classification head"
            classification = (_fmt_ci(r[f"auc_{tag}m"], r[f"auc_{tag}m_ci"]) if from_classification else "n/a")
            agreement = r.get(f"heads_agreement_{tag}m") or {}
            lines.append(f"| {name} | {set_name} | {r['n_known_status']} | {classification} | "
                         f"{_fmt_ci(r.get(f'auc_{tag}m_survival_head'), r.get(f'auc_{tag}m_survival_head_ci'))} | "
                         f"{_fmt_p(r.get(f'auc_{tag}m_heads_delong_p'))} | {_fmt(agreement.get('pearson'), 2)} | "
                         f"{_fmt(agreement.get('spearman'), 2)} | {_fmt(agreement.get('mean_abs_diff'), 3)} |")
    lines.append("")
    td_rows = [(name, s, r["td_auc"]) for name, sets in report["models"].items() for s, r in sets.items()]
    if td_rows:
        times = list(td_rows[0][2])
        lines += ["## Time-dependent AUC (cumulative/dynamic)", "",
                  "| Model | Set | " + " | ".join(f"{t} mo" for t in times) + " |",
                  "|---|---|" + "---|" * len(times)]
        lines += [f"| {n} | {s} | " + " | ".join(_fmt(td[t]) for t in times) + " |" for n, s, td in td_rows]
        lines.append("")
    if report["comparisons"]:
        lines += ["## Model comparisons", "",
                  "| Comparison | Set | n | C-index A | C-index B | Difference A-B (95% CI) | Bootstrap p | "
                  f"DeLong p (AUC at {tag} mo) |", "|---|---|---|---|---|---|---|---|"]
        for label, comparison in report["comparisons"].items():
            for set_name, c in comparison["sets"].items():
                lines.append(f"| {label} | {set_name} | {c['n_common']} | {_fmt(c['c_index_a'])} | "
                             f"{_fmt(c['c_index_b'])} | {_fmt_ci(c['c_index_difference'], c['c_index_difference_ci'], 3)} | "
                             f"{_fmt_p(c['c_index_difference_p_bootstrap'])} | {_fmt_p(c['delong_p'])} |")
        lines.append("")
    if reasons:
        lines += ["## Metrics not computed", ""] + reasons + [""]
    lines += ["## Excluded cases", ""]
    if report["dropped"]:
        lines += [f"- {d['model']} / {d['set'] or 'input'} / {d['metric']}: {d['count']} case(s), {d['reason']}"
                  for d in report["dropped"]]
    else:
        lines.append("- none")
    lines.append("")
    if report["figures"]:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in report["figures"]] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", nargs="+", required=True, help="prediction CSV(s), one per model")
    parser.add_argument("--names", nargs="+", help="model names (default: file names without .csv)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=int, help="nnU-Net dataset id: outcomes from its dataset.json "
                                                    "'multitask' block under $nnUNet_raw")
    source.add_argument("--outcomes", help="outcomes CSV: case_id, dfs_months, dfs_event, optional set")
    parser.add_argument("--time-column", default="dfs_months", help="time column of --outcomes")
    parser.add_argument("--event-column", default="dfs_event", help="event column of --outcomes")
    parser.add_argument("--horizon", type=float, default=None,
                        help="months (default: the dataset's horizon_months, else 36)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-predictions", nargs="+",
                        help="training-fold prediction CSV per model; median risk = risk-group threshold")
    parser.add_argument("--seg-pred", nargs="+", help="predicted segmentation folder per model ('none' skips)")
    parser.add_argument("--seg-gt", help="reference segmentation folder (<case_id>.nii.gz)")
    parser.add_argument("--uno-tau", type=float, default=None, help="Uno's C truncation (default: horizon)")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="count and exclude prediction cases absent from the outcomes instead of failing")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("-o", "--output", required=True, help="report folder")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if Path(args.output).exists() and not Path(args.output).is_dir():
            raise EvaluationInputError(f"-o {args.output}: exists and is not a folder")
        if args.horizon is not None:
            check_positive_months(args.horizon, "--horizon")
        if args.uno_tau is not None:
            check_positive_months(args.uno_tau, "--uno-tau")
        if args.bootstrap < 1:
            raise EvaluationInputError("--bootstrap must be >= 1")
        if args.dataset is not None:
            outcomes, info = load_outcomes_from_dataset(args.dataset)
            if args.horizon is not None:
                horizon = args.horizon
            elif info["horizon_months"] is None:
                horizon = 36.0
            else:
                horizon = check_positive_months(info["horizon_months"],
                                                f"{info['dataset_json']}: multitask.horizon_months")
            source = info["dataset_json"]
        else:
            outcomes = load_outcomes_csv(args.outcomes, args.time_column, args.event_column)
            horizon = args.horizon if args.horizon is not None else 36.0
            source = str(args.outcomes)
        report = evaluate(args.predictions, outcomes, args.output, names=args.names, horizon=horizon,
                          n_bootstrap=args.bootstrap, seed=args.seed, train_prediction_paths=args.train_predictions,
                          seg_pred_dirs=args.seg_pred, seg_gt_dir=args.seg_gt, allow_unmatched=args.allow_unmatched,
                          uno_tau=args.uno_tau, make_figures=not args.no_figures, outcomes_source=source)
    except EvaluationInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render_report(report, horizon_tag(horizon)).split("\n## ")[0])
    if report["dropped"]:
        print("Excluded cases (also in report.md):")
        for d in report["dropped"]:
            shown = ", ".join(d["case_ids"][:10]) + (", ..." if d["count"] > 10 else "")
            print(f"  {d['model']} / {d['set'] or 'input'} / {d['metric']}: {d['count']} case(s), {d['reason']}: "
                  f"{shown}")
    else:
        print("Excluded cases: none")
    print(f"wrote {Path(args.output) / 'metrics.json'} and report.md in {report['timing_seconds']['total']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
