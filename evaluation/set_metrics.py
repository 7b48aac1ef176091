"""All metrics of one model on one set, one helper per metric.

Each helper adds its keys to the set's ``result`` dict (a metric that cannot be computed is None
with ``<metric>_reason``) and, where a figure needs them, arrays to ``plots``;
:func:`evaluate_set` calls them in the order of the keys in metrics.json. The arithmetic is done
by scikit-survival / scikit-learn / scipy and by :mod:`evaluation.metrics`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from clinical.outcomes import recurrence_label, survival_array
from evaluation import metrics as M
from evaluation.calibration import calibration_at_horizon
from evaluation.decision_curve import THRESHOLDS, decision_curve
from evaluation.inputs import SURV_PROB_TIMES, horizon_tag

#: Times (months) of the cumulative/dynamic AUC.
TD_AUC_TIMES = (12, 24, 36, 60)
#: Level of every confidence interval.
CI_LEVEL = 0.95


def finite_or_none(value: object) -> float | None:
    """``value`` as a float, None when it is None, NaN or infinite (metrics.json is strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# Discrimination of risk_score: Harrell's C (bootstrap CI), Uno's C, time-dependent AUC
# --------------------------------------------------------------------------------------------
def add_harrell_c(result: dict, plots: dict, time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                  n_bootstrap: int, seed: int) -> None:
    """``c_index`` (sksurv) with a seeded percentile bootstrap CI (vectorised, see metrics.py);
    the resamples go to ``plots["bootstrap_c"]`` for the paired model comparison."""
    result.update({"c_index": None, "c_index_ci": None})
    if not event.any():
        result["c_index_reason"] = "no events in this set"
        return
    c_index, why = M.harrell_c_with_reason(time, event, risk)
    if why is not None:
        result["c_index_reason"] = f"no comparable pairs ({why})"
        return
    vectorised = M.weighted_harrell_c(time, event, risk, np.ones((1, len(time))))[0, 0]
    if abs(vectorised - c_index) > 1e-9:  # guards the vectorised bootstrap code
        raise RuntimeError(f"vectorised Harrell C {vectorised} != sksurv {c_index}")
    resampled = M.bootstrap_harrell_c(time, event, risk, n_bootstrap, seed)[0]
    plots["bootstrap_c"] = resampled  # reused by compare_pair when the cases are the same
    result["c_index"] = c_index
    result["c_index_ci"] = list(M.percentile_ci(resampled, CI_LEVEL) or []) or None
    result["c_index_bootstrap_valid"] = int(np.isfinite(resampled).sum())
    result["c_index_bootstrap_without_comparable_pairs"] = int((~np.isfinite(resampled)).sum())


def add_uno_c(result: dict, time: np.ndarray, event: np.ndarray, risk: np.ndarray, tau: float) -> None:
    """``uno_c``: sksurv ``concordance_index_ipcw``, IPCW from the evaluated set itself, truncated at tau."""
    from sksurv.metrics import concordance_index_ipcw

    result.update({"uno_c": None, "uno_c_tau": tau,
                   "uno_c_ipcw": "censoring distribution (Kaplan-Meier of censoring times) estimated "
                                 "from the evaluated set itself; pairs whose earlier time is < tau"})
    if not event.any():
        result["uno_c_reason"] = "no events in this set"
    elif not (event & (time < tau)).any():
        result["uno_c_reason"] = f"no event before tau = {tau:g} months"
    else:
        y = survival_array(time, event)
        try:
            result["uno_c"] = finite_or_none(concordance_index_ipcw(y, y, risk, tau=tau)[0])
            if result["uno_c"] is None:
                result["uno_c_reason"] = "sksurv concordance_index_ipcw returned NaN (no comparable pair before tau)"
        except (ValueError, np.linalg.LinAlgError) as error:
            result["uno_c_reason"] = f"sksurv concordance_index_ipcw failed: {error}"


def add_td_auc(result: dict, time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> None:
    """Censoring-aware ``td_auc`` (sksurv cumulative_dynamic_auc), each time separately so one bad
    time leaves the others."""
    from sksurv.metrics import cumulative_dynamic_auc

    y = survival_array(time, event)
    td_auc, td_reason = {}, {}
    for t in TD_AUC_TIMES:
        td_auc[str(t)] = None
        if not (time.min() <= t < time.max()):
            td_reason[str(t)] = f"outside follow-up range [{time.min():g}, {time.max():g}) months"
        elif not (event & (time <= t)).any():
            td_reason[str(t)] = f"no event at or before {t} months"
        else:
            try:
                td_auc[str(t)] = finite_or_none(cumulative_dynamic_auc(y, y, risk, [t])[0][0])
                if td_auc[str(t)] is None:
                    td_reason[str(t)] = "sksurv cumulative_dynamic_auc returned NaN"
            except ValueError as error:
                td_reason[str(t)] = f"sksurv cumulative_dynamic_auc failed: {error}"
    result["td_auc"], result["td_auc_reason"] = td_auc, td_reason


# --------------------------------------------------------------------------------------------
# The two risks at the horizon: AUCs (DeLong), their difference and agreement
# --------------------------------------------------------------------------------------------
def horizon_auc(result: dict, frame: pd.DataFrame, horizon: float, score: np.ndarray, score_column: str,
                key: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """AUC at the horizon on cases with known status, DeLong CI; fills ``result`` under ``key``
    (default ``auc_<H>m``). Every score is judged on the same known-status cases.

    Returns the ROC curve ``(fpr, tpr)``, or None (with ``<key>_reason``) when one class is absent.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    tag = horizon_tag(horizon)
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


def horizon_score(frame: pd.DataFrame, horizon: float) -> tuple[np.ndarray, str]:
    """The score of ``auc_<H>m``: ``p_recurrence_<H>m`` (classification head), else ``risk_score``."""
    if frame["p_recurrence"].notna().all():
        return frame["p_recurrence"].to_numpy(dtype=float), f"p_recurrence_{horizon_tag(horizon)}m"
    return frame["risk_score"].to_numpy(dtype=float), "risk_score"


def add_classification_auc(result: dict, plots: dict, frame: pd.DataFrame, horizon: float) -> None:
    """``auc_<H>m`` of :func:`horizon_score` and ``auc_<H>m_head`` naming the head behind it."""
    tag = horizon_tag(horizon)
    score, score_column = horizon_score(frame, horizon)
    roc = horizon_auc(result, frame, horizon, score, score_column)
    result[f"auc_{tag}m_head"] = ("classification head" if score_column != "risk_score" else
                                  f"survival head (risk_score; no p_recurrence_{tag}m column)")
    if roc is not None:
        plots["roc"] = roc


def add_survival_head_auc(result: dict, frame: pd.DataFrame, horizon: float) -> None:
    """``auc_<H>m_survival_head``: AUC of ``1 - surv_prob_<H>m`` (the survival head's risk by the
    horizon) on the known-status cases, DeLong CI; None with a reason when the column is absent."""
    tag = horizon_tag(horizon)
    key, column = f"auc_{tag}m_survival_head", f"surv_prob_{tag}m"
    if column not in frame.columns:
        result.update({key: None, f"{key}_ci": None, f"{key}_score": None,
                       f"{key}_reason": f"no {column} column in the predictions (no survival probability at the "
                                        "horizon, e.g. a Cox survival head or a baseline with risk_score only)"})
        return
    risk = 1.0 - frame[column].to_numpy(dtype=float)
    horizon_auc(result, frame, horizon, risk, f"1 - {column}", key=key)


def add_heads_difference(result: dict, frame: pd.DataFrame, horizon: float) -> None:
    """``auc_<H>m_heads_difference`` and the DeLong p of equal AUCs of the two heads (same cases)."""
    tag = horizon_tag(horizon)
    both_key = f"auc_{tag}m_heads_delong_p"
    result.update({f"auc_{tag}m_heads_difference": None, both_key: None})
    score, score_column = horizon_score(frame, horizon)
    if score_column == "risk_score" or result[f"auc_{tag}m_survival_head"] is None:
        result[f"{both_key}_reason"] = f"needs the AUC of both heads (p_recurrence_{tag}m and surv_prob_{tag}m)"
        return
    labels = recurrence_label(frame["time"], frame["event"], horizon)
    known = ~np.isnan(labels)
    test = M.delong_test(labels[known].astype(int), score[known],
                         1.0 - frame[f"surv_prob_{tag}m"].to_numpy(dtype=float)[known])
    result[f"auc_{tag}m_heads_difference"] = test["difference"]
    result[both_key] = finite_or_none(test["p_value"])


def heads_agreement(frame: pd.DataFrame, tag: str) -> tuple[dict | None, str | None]:
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
        out["pearson"] = finite_or_none(stats.pearsonr(p_classification, p_survival)[0])
        out["spearman"] = finite_or_none(stats.spearmanr(p_classification, p_survival)[0])
    return out, None


def add_heads_agreement(result: dict, frame: pd.DataFrame, horizon: float) -> None:
    """``heads_agreement_<H>m`` (see :func:`heads_agreement`), with a reason when None."""
    tag = horizon_tag(horizon)
    agreement, reason = heads_agreement(frame, tag)
    result[f"heads_agreement_{tag}m"] = agreement
    if reason:
        result[f"heads_agreement_{tag}m_reason"] = reason


# --------------------------------------------------------------------------------------------
# Survival probabilities, risk groups, calibration
# --------------------------------------------------------------------------------------------
def add_brier(result: dict, frame: pd.DataFrame, time: np.ndarray, event: np.ndarray) -> None:
    """``ibs`` and ``brier``: integrated Brier score over the given survival-probability times
    inside follow-up (sksurv, IPCW from the evaluated set)."""
    from sksurv.metrics import brier_score, integrated_brier_score

    given = [t for t in SURV_PROB_TIMES if f"surv_prob_{t}m" in frame.columns]
    usable = [t for t in given if time.min() <= t < time.max()]
    result.update({"ibs": None, "ibs_times": usable, "brier": None})
    if not given:
        result["ibs_reason"] = "no surv_prob_<t>m columns in the predictions"
    elif len(usable) < 2:
        result["ibs_reason"] = (f"needs >= 2 survival-probability times inside follow-up "
                                f"[{time.min():g}, {time.max():g}); given {given}, usable {usable}")
    else:
        y = survival_array(time, event)
        survival = frame[[f"surv_prob_{t}m" for t in usable]].to_numpy(dtype=float)
        try:
            result["ibs"] = float(integrated_brier_score(y, y, survival, usable))
            result["brier"] = {str(t): float(b) for t, b in zip(*brier_score(y, y, survival, usable), strict=True)}
        except ValueError as error:
            result["ibs_reason"] = f"sksurv integrated_brier_score failed: {error}"


def add_risk_groups(result: dict, plots: dict, time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                    risk_threshold: float | None, threshold_source: str | None) -> None:
    """High / low risk groups (high = risk_score > threshold; the set's median when None),
    their Kaplan-Meier curves and the log-rank test (sksurv compare_survival)."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

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
    if not event.any():
        result["logrank_p_reason"] = "no events in this set"
        return
    if high.all() or (~high).all():
        result["logrank_p_reason"] = "all cases fall in one risk group at this threshold"
        return
    try:
        chisq, p_value = compare_survival(survival_array(time, event), np.where(high, "high", "low"))
    except (ValueError, np.linalg.LinAlgError) as error:
        result["logrank_p_reason"] = (f"sksurv compare_survival failed ({type(error).__name__}: {error}); "
                                      "e.g. every event at the same time leaves no variance")
        return
    if np.isfinite(p_value):
        result["logrank_chisq"], result["logrank_p"] = float(chisq), float(p_value)
    else:
        result["logrank_p_reason"] = "sksurv compare_survival returned NaN (no variance between groups)"


def calibration_bins(frame: pd.DataFrame, horizon: float, p: np.ndarray) -> list[dict]:
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
                     "observed": finite_or_none(1.0 - survival),
                     "observed_among_known_status": finite_or_none(labels[known].mean()) if known.any() else None,
                     "n_known_status": int(known.sum())})
    return bins


def add_calibration(result: dict, plots: dict, frame: pd.DataFrame, horizon: float) -> None:
    """``calibration`` at the horizon (:func:`calibration_bins`); None without p_recurrence."""
    tag = horizon_tag(horizon)
    if not frame["p_recurrence"].notna().all():
        result["calibration"] = None
        result["calibration_reason"] = f"no p_recurrence_{tag}m column in the predictions"
        return
    bins = calibration_bins(frame, horizon, frame["p_recurrence"].to_numpy(dtype=float))
    result["calibration"] = {"bins": bins, "binning": "quantile bins of predicted p_recurrence",
                             "observed": f"1 - Kaplan-Meier survival at {tag} months within the bin "
                                         "(uses censored cases); observed_among_known_status also given"}
    plots["calibration"] = bins


# --------------------------------------------------------------------------------------------
# Both heads' probabilities at the horizon: IPCW AUC, calibration, decision curve
# --------------------------------------------------------------------------------------------
#: The two heads' risks of recurrence by the horizon (``{tag}`` = the horizon tag).
HEAD_COLUMNS = {"classification_head": "p_recurrence_{tag}m", "survival_head": "1 - surv_prob_{tag}m"}


def head_risks(frame: pd.DataFrame, horizon: float) -> tuple[dict, dict]:
    """({head: risk by the horizon} for the heads the file has, {head: reason} for the others)."""
    tag = horizon_tag(horizon)
    risks, missing = {}, {}
    if frame["p_recurrence"].notna().all():
        risks["classification_head"] = frame["p_recurrence"].to_numpy(dtype=float)
    else:
        missing["classification_head"] = f"no p_recurrence_{tag}m column in the predictions"
    if f"surv_prob_{tag}m" in frame.columns:
        risks["survival_head"] = 1.0 - frame[f"surv_prob_{tag}m"].to_numpy(dtype=float)
    else:
        missing["survival_head"] = f"no surv_prob_{tag}m column in the predictions"
    return risks, missing


def add_ipcw_horizon_auc(result: dict, frame: pd.DataFrame, horizon: float) -> None:
    """``auc_<H>m_ipcw`` (classification head) and ``auc_<H>m_survival_head_ipcw``: sksurv
    cumulative_dynamic_auc at the horizon, every case used (IPCW, censoring from the evaluated set)."""
    from sksurv.metrics import cumulative_dynamic_auc

    tag = horizon_tag(horizon)
    time, event = frame["time"].to_numpy(dtype=float), frame["event"].to_numpy().astype(bool)
    risks, missing = head_risks(frame, horizon)
    for head, key in (("classification_head", f"auc_{tag}m_ipcw"), ("survival_head", f"auc_{tag}m_survival_head_ipcw")):
        result[key] = None
        if head in missing:
            result[f"{key}_reason"] = missing[head]
        elif not (time.min() <= horizon < time.max()):
            result[f"{key}_reason"] = f"horizon outside follow-up range [{time.min():g}, {time.max():g}) months"
        elif not (event & (time <= horizon)).any():
            result[f"{key}_reason"] = f"no event at or before {tag} months"
        else:
            try:
                y = survival_array(time, event)
                result[key] = finite_or_none(cumulative_dynamic_auc(y, y, risks[head], [horizon])[0][0])
            except ValueError as error:
                result[f"{key}_reason"] = f"sksurv cumulative_dynamic_auc failed: {error}"


def add_horizon_calibration(result: dict, plots: dict, frame: pd.DataFrame, horizon: float, n_bootstrap: int,
                            seed: int) -> None:
    """``calibration_<H>m``: {head: :func:`evaluation.calibration.calibration_at_horizon`} for both heads
    (None with ``<head>_reason`` for a head the file lacks); the curves go to ``plots["calibration_smoothed"]``."""
    tag = horizon_tag(horizon)
    risks, missing = head_risks(frame, horizon)
    time, event = frame["time"].to_numpy(dtype=float), frame["event"].to_numpy().astype(bool)
    out, curves = {}, {}
    for head in HEAD_COLUMNS:
        if head in missing:
            out[head], out[f"{head}_reason"] = None, missing[head]
            continue
        out[head], curves[head] = calibration_at_horizon(time, event, risks[head], horizon, n_bootstrap, seed,
                                                         CI_LEVEL)
        out[head]["column"] = HEAD_COLUMNS[head].format(tag=tag)
    result[f"calibration_{tag}m"] = out
    if curves:
        plots["calibration_smoothed"] = curves


def add_decision_curve(result: dict, plots: dict, frame: pd.DataFrame, horizon: float,
                       thresholds: tuple = THRESHOLDS) -> None:
    """``decision_curve_<H>m``: net benefit of both heads' risks, treat-all and treat-none (dcurves)."""
    tag = horizon_tag(horizon)
    risks, _ = head_risks(frame, horizon)
    curve, reason = decision_curve(frame["time"].to_numpy(dtype=float), frame["event"].to_numpy(), risks, horizon,
                                   thresholds)
    result[f"decision_curve_{tag}m"] = curve
    if reason:
        result[f"decision_curve_{tag}m_reason"] = reason
    else:
        curve["columns"] = {head: HEAD_COLUMNS[head].format(tag=tag) for head in risks}
        plots["decision_curve"] = curve


# --------------------------------------------------------------------------------------------
# One model on one set
# --------------------------------------------------------------------------------------------
def evaluate_set(frame: pd.DataFrame, horizon: float, n_bootstrap: int, seed: int,
                 risk_threshold: float | None, threshold_source: str | None,
                 uno_tau: float | None, dca_thresholds: tuple = THRESHOLDS) -> tuple[dict, dict]:
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
    dca_thresholds : tuple of float
        Threshold probabilities of the decision curve.

    Returns
    -------
    result : dict
        JSON-ready metrics; a metric that cannot be computed is None with ``<metric>_reason``.
    plots : dict
        Arrays for the figures (KM curves, ROC, calibration bins) and the bootstrap C values.
    """
    time = frame["time"].to_numpy(dtype=float)
    event = frame["event"].to_numpy().astype(bool)
    risk = frame["risk_score"].to_numpy(dtype=float)
    n_events = int(event.sum())
    result = {"n": int(len(frame)), "events": n_events, "censored": int(len(frame) - n_events),
              "follow_up_min": float(time.min()), "follow_up_max": float(time.max())}
    plots: dict = {}
    add_harrell_c(result, plots, time, event, risk, n_bootstrap, seed)
    add_uno_c(result, time, event, risk, float(horizon if uno_tau is None else uno_tau))
    add_classification_auc(result, plots, frame, horizon)
    add_survival_head_auc(result, frame, horizon)
    add_heads_difference(result, frame, horizon)
    add_heads_agreement(result, frame, horizon)
    add_td_auc(result, time, event, risk)
    add_brier(result, frame, time, event)
    add_risk_groups(result, plots, time, event, risk, risk_threshold, threshold_source)
    add_calibration(result, plots, frame, horizon)
    add_ipcw_horizon_auc(result, frame, horizon)
    add_horizon_calibration(result, plots, frame, horizon, n_bootstrap, seed)
    add_decision_curve(result, plots, frame, horizon, dca_thresholds)
    return result, plots
