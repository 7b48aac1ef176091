"""Decision-curve analysis at the horizon (dcurves, survival endpoint).

Net benefit of treating the cases whose predicted risk of recurrence by H is at or above a threshold
probability pt, for each head's risk (classification head ``p_recurrence_<H>m``, survival head
``1 - surv_prob_<H>m``), against treating everyone and no one. dcurves' survival definition
(Vickers et al. 2008): with the share of cases at or above pt ("test positive") and the
Kaplan-Meier risk by H among them,
``true positives = KM risk among positives * share positive``,
``false positives = (1 - KM risk among positives) * share positive``,
``net benefit = true positives - false positives * pt / (1 - pt)``; treat-all uses the whole set's
Kaplan-Meier risk by H, treat-none is 0. The threshold range is stated in metrics.json
(default :data:`THRESHOLDS`, 0.01 to 0.60 in steps of 0.01).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

#: Default threshold probabilities.
THRESHOLDS = tuple(np.round(np.arange(0.01, 0.6001, 0.01), 2).tolist())
#: Thresholds shown in report.md's table (the figure and metrics.json have all of them).
REPORT_THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.30, 0.40, 0.50)


def thresholds_from(low: float, high: float, step: float) -> tuple[float, ...]:
    """``low, low + step, ..., high`` rounded to 6 decimals (0 < low <= high < 1, step > 0)."""
    if not (0 < low <= high < 1 and step > 0):
        raise ValueError(f"decision-curve thresholds need 0 < low <= high < 1 and step > 0, got {low}, {high}, {step}")
    count = int(np.floor((high - low) / step + 1e-9)) + 1
    return tuple(np.round(low + step * np.arange(count), 6).tolist())


def _runs(thresholds: list[float], better: np.ndarray) -> list[list[float]]:
    """[first, last] threshold of each run of consecutive thresholds where ``better`` holds."""
    runs, start = [], None
    for index, flag in enumerate(better):
        if flag and start is None:
            start = index
        if start is not None and (not flag or index == len(better) - 1):
            end = index if flag else index - 1
            runs.append([thresholds[start], thresholds[end]])
            start = None
    return runs


def decision_curve(time: np.ndarray, event: np.ndarray, risks: dict[str, np.ndarray], horizon: float,
                   thresholds: tuple[float, ...] = THRESHOLDS) -> tuple[dict | None, str | None]:
    """Net benefit of each risk in ``risks`` ({head name: probabilities}), treat-all and treat-none.

    Returns (result, None) or (None, reason). ``result``: thresholds, net_benefit per head and for
    treat_all / treat_none (None where dcurves cannot say, e.g. the positives' follow-up ends before
    the horizon), the Kaplan-Meier risk by the horizon of the set, and per head the threshold ranges
    where its net benefit is above both treat-all and treat-none.
    """
    from dcurves import dca

    time, event = np.asarray(time, dtype=float), np.asarray(event).astype(int)
    if time.max() < horizon:
        return None, f"horizon {horizon:g} months beyond the last follow-up ({time.max():g} months)"
    if not (event.astype(bool) & (time <= horizon)).any():
        return None, f"no recurrence at or before {horizon:g} months"
    if not risks:
        return None, "no predicted probability at the horizon"
    frame = pd.DataFrame({"time": time, "event": event, **{k: np.asarray(v, dtype=float) for k, v in risks.items()}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = dca(data=frame, outcome="event", modelnames=list(risks), thresholds=list(thresholds),
                    time=float(horizon), time_to_outcome_col="time")
    curves = {}
    for model, label in [(k, k) for k in risks] + [("all", "treat_all"), ("none", "treat_none")]:
        values = pd.to_numeric(table.loc[table["model"] == model, "net_benefit"], errors="coerce").to_numpy(float)
        curves[label] = [float(v) if np.isfinite(v) else None for v in values]
    defaults = np.maximum(np.nan_to_num(np.array(curves["treat_all"], dtype=float), nan=-np.inf), 0.0)
    useful = {}
    for head in risks:
        values = np.array([np.nan if v is None else v for v in curves[head]], dtype=float)
        useful[head] = _runs(list(thresholds), np.nan_to_num(values, nan=-np.inf) > defaults + 1e-12)
    result = {"thresholds": list(thresholds), "net_benefit": curves,
              "km_risk_by_horizon": float(table["prevalence"].iloc[0]),
              "above_treat_all_and_none": useful,
              "method": "dcurves dca, survival endpoint (outcome, time, time_to_outcome_col): Kaplan-Meier risk "
                        "by the horizon among cases with predicted risk >= threshold"}
    return result, None
