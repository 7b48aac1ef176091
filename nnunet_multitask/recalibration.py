"""Recalibration of both heads on the development patients' out-of-sample predictions (opt-in).

What is fitted (``python -m nnunet_multitask.recalibration``), from
``<model_folder>/fold_<f>/validation/head_predictions.csv`` of the folds used (each fold's validation
patients predicted by that fold's model, which never trained on them; written by the trainer's final
validation) joined with the development outcomes (``outcomes.csv`` of the raw dataset folder, the
``outcomes_table`` of its ``dataset.json`` ``multitask`` block):

* **Classification head**, logistic recalibration of ``p = p_recurrence_<H>m``:
  ``logit(p') = a + b * logit(p)`` (``p`` clipped to [1e-6, 1 - 1e-6]). The fit is a weighted
  maximum-likelihood logistic regression on the patients whose status at H is known, weighted by the
  inverse probability of censoring (``clinical.outcomes.ipcw_weights``; censoring Kaplan-Meier of
  the fitting patients, G floored at 0.05): a complete-case fit would over-represent early events
  when follow-up is short (issue 21, item 3). ``--classification-weighting complete_case`` fits on
  the known-status patients unweighted instead.
* **Survival head**, slope and baseline of its linear predictor: ``lp = risk_score`` for the Cox
  head (the log-risk) and ``lp = log(risk_score)`` for the discrete-time head (``risk_score`` is its
  cumulative hazard at H, ``-log S(H)``, so ``lp`` is the complementary log-log of its horizon risk:
  under proportional hazards a calibrated head has slope 1). A Cox model on the single covariate
  ``lp`` (Breslow ties) gives the slope ``b``; the baseline cumulative hazard is re-estimated
  (Breslow) at the centred predictor ``lp - c`` (``c`` the fitting patients' mean ``lp``), so
  ``surv_prob_<t>m' = S0'(t) ** exp(b * (lp - c))`` with ``S0' = exp(-H0')``. A Cox head, which
  writes no ``surv_prob`` columns, gains them. Beyond the fitting patients' longest follow-up the
  baseline is unknown: those columns are NaN.

Stored as ``<model_folder>/recalibration.json`` (layout in :func:`fit_recalibration`). Applied by
:func:`apply_recalibration`: the probability columns are replaced, the raw values kept beside them as
``<column>_uncalibrated`` (and their spread over folds as ``<column>_uncalibrated_sd``), a
``recalibrated`` column says True, and ``risk_score`` is left as it is (a monotone recalibration
does not change a ranking, and the risk groups' thresholds come from the raw out-of-sample risks).
Caveat, measured (``benchmarks/bench_ipcw.py --recalibration``, BENCHMARKS.md): the fit uses one fold's
prediction per patient, so it is right for one fold's predictions (synthetic cohort, 5 seeds: the
classification head's test calibration slope 0.45 +- 0.11 raw, 1.01 +- 0.27 recalibrated; the survival
head's 0.56 -> 0.99). A fold ensemble averages the folds' probabilities, which are then less spread
than any one fold's, and the same recalibration over-corrects it (0.61 -> 1.37 +- 0.41; survival head
0.74 -> 1.21); :func:`apply_recalibration` notes it when ``n_folds`` > 1.

    python -m nnunet_multitask.recalibration --model-folder DIR --dataset-folder RAW_DATASET [-f 0 1 2 3 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from os.path import isdir, isfile, join
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from clinical.errors import MultitaskError
from clinical.outcomes import MIN_CENSORING_SURVIVAL, ipcw_weights, recurrence_label
from nnunet_multitask.contract import (DatasetContract, HeadConfig, recurrence_column, survival_column,
                                       survival_times)
from nnunet_multitask.prediction_artifact import UNCALIBRATED, file_sha256

RECALIBRATION_FILE = "recalibration.json"
RECALIBRATION_VERSION = 1
PREDICTIONS_FILE = join("validation", "head_predictions.csv")
WEIGHTINGS = ("ipcw", "complete_case")
#: probabilities are clipped to [EPS, 1 - EPS] before the logit
EPS = 1e-6
#: floor of the discrete-time head's cumulative hazard before its log (as the predictor floors S)
MIN_CUMULATIVE_HAZARD = 1e-12
#: Fewer events by the horizon among the fitting patients than this: the command refuses to fit
#: (``--allow-few-events`` overrides it, recorded in the file): two coefficients per head.
MIN_EVENTS_BY_HORIZON = 10


class RecalibrationError(MultitaskError, ValueError):
    """A recalibration that cannot be fitted, read or applied; the message names the file or column."""


# ---------------------------------------------------------------------------- fits
def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def fit_logistic_recalibration(p, y, weights=None, max_iter: int = 100, tol: float = 1e-10) -> Dict[str, float]:
    """Weighted maximum-likelihood fit of ``y ~ Bernoulli(sigmoid(a + b * logit(p)))`` (Newton-Raphson).

    Parameters
    ----------
    p : probabilities in (0, 1) (clipped to [1e-6, 1 - 1e-6])
    y : 0/1 outcomes (no NaN: pass the known-status patients)
    weights : non-negative case weights (default 1)

    Returns
    -------
    dict with ``intercept`` (a), ``slope`` (b), ``n`` (cases with weight > 0), ``converged`` (bool)
    """
    x = _logit(p)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if not (x.shape == y.shape == w.shape) or x.ndim != 1:
        raise RecalibrationError(f"p, y and weights must be 1-D of one length, got {x.shape}, {y.shape}, {w.shape}")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise RecalibrationError("y must be 0 or 1 (leave out the patients whose status is unknown)")
    if (w < 0).any() or not np.isfinite(w).all():
        raise RecalibrationError("weights must be finite and >= 0")
    use = w > 0
    if len(np.unique(y[use])) < 2:
        raise RecalibrationError(f"the logistic recalibration needs events and non-events among the weighted "
                                 f"patients, got {int(y[use].sum())} events of {int(use.sum())}")
    design = np.stack([np.ones_like(x), x], 1)

    def nll(beta: np.ndarray) -> float:
        eta = design @ beta
        return float(-np.sum(w * (y * eta - np.logaddexp(0.0, eta))))

    # Newton-Raphson from the covariate-free fit (slope 0), each step halved until the likelihood does
    # not fall: saturated predictions (logits near +-14) would otherwise overshoot into a flat region
    rate = np.average(y, weights=w)
    beta = np.array([np.log(rate / (1 - rate)), 0.0])
    converged = False
    for _ in range(max_iter):
        mu = _sigmoid(design @ beta)
        grad = design.T @ (w * (y - mu))
        hess = (design * (w * mu * (1 - mu))[:, None]).T @ design
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        current = nll(beta)
        while nll(beta + step) > current + 1e-12 and np.max(np.abs(step)) > tol:
            step = step / 2
        beta = beta + step
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    return {"intercept": float(beta[0]), "slope": float(beta[1]), "n": int(use.sum()), "converged": converged}


def _breslow_risk_sets(time: np.ndarray, event: np.ndarray):
    """Distinct event times, events at each, and for each an index mask of its risk set (T >= t)."""
    event_times = np.unique(time[event])
    deaths = np.array([np.sum(event & (time == t)) for t in event_times], dtype=float)
    at_risk = time[None, :] >= event_times[:, None]
    return event_times, deaths, at_risk


def fit_cox_recalibration(lp, time, event, max_iter: int = 100, tol: float = 1e-10) -> Dict[str, object]:
    """Cox model ``h(t | lp) = h0(t) exp(b (lp - c))`` (Breslow ties, Newton-Raphson) and its Breslow
    baseline cumulative hazard at the centred predictor.

    .. math:: \\hat H_0(t) = \\sum_{t_j \\le t} \\frac{d_j}{\\sum_{i: T_i \\ge t_j} e^{\\hat b (lp_i - c)}}

    Returns
    -------
    dict with ``slope`` (b), ``centre`` (c, the mean lp), ``baseline_times`` (distinct event times),
    ``baseline_cumulative_hazard`` (H0 just after each), ``max_follow_up`` (longest observed time),
    ``n``, ``n_events``, ``converged``
    """
    lp = np.asarray(lp, dtype=float)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    if not (lp.shape == time.shape == event.shape) or lp.ndim != 1:
        raise RecalibrationError("lp, time and event must be 1-D of one length")
    if not np.isfinite(lp).all():
        raise RecalibrationError("the survival head's linear predictor has non-finite values")
    if event.sum() < 2 or np.ptp(lp) == 0:
        raise RecalibrationError(f"the Cox recalibration needs at least 2 events and varying risk scores, got "
                                 f"{int(event.sum())} events")
    centre = float(lp.mean())
    z = lp - centre
    event_times, deaths, at_risk = _breslow_risk_sets(time, event)
    z_events = np.array([z[event & (time == t)].sum() for t in event_times])
    def loglik(b: float) -> float:
        return float(b * z_events.sum() - np.sum(deaths * np.log(at_risk @ np.exp(b * z))))

    b, converged = 0.0, False
    for _ in range(max_iter):
        r = np.exp(b * z)
        s0 = at_risk @ r
        s1 = at_risk @ (r * z)
        s2 = at_risk @ (r * z * z)
        grad = float(np.sum(z_events - deaths * s1 / s0))
        info = float(np.sum(deaths * (s2 / s0 - (s1 / s0) ** 2)))
        step = grad / info
        current = loglik(b)
        while loglik(b + step) < current - 1e-12 and abs(step) > tol:  # halve a step that overshoots
            step /= 2
        b += step
        if abs(step) < tol:
            converged = True
            break
    r = np.exp(b * z)
    hazard = np.cumsum(deaths / (at_risk @ r))
    return {"slope": float(b), "centre": centre, "baseline_times": event_times.tolist(),
            "baseline_cumulative_hazard": hazard.tolist(), "max_follow_up": float(time.max()),
            "n": int(lp.size), "n_events": int(event.sum()), "converged": converged}


def baseline_cumulative_hazard_at(survival: dict, t) -> np.ndarray:
    """The stored Breslow baseline ``H0'(t)`` (a right-continuous step function, 0 before the first
    event time); NaN beyond the fitting patients' longest follow-up."""
    times = np.asarray(survival["baseline_times"], dtype=float)
    hazard = np.concatenate([[0.0], np.asarray(survival["baseline_cumulative_hazard"], dtype=float)])
    t = np.atleast_1d(np.asarray(t, dtype=float))
    out = hazard[np.searchsorted(times, t, side="right")]
    return np.where(t > float(survival["max_follow_up"]), np.nan, out)


def survival_linear_predictor(risk_score, survival_head: str) -> np.ndarray:
    """The survival head's linear predictor: the log-risk (Cox) or ``log(-log S(H))`` (discrete-time)."""
    r = np.asarray(risk_score, dtype=float)
    if survival_head == "cox":
        return r
    if survival_head == "discrete":
        return np.log(np.maximum(r, MIN_CUMULATIVE_HAZARD))
    raise RecalibrationError(f"unknown survival head {survival_head!r}")


# ---------------------------------------------------------------------------- inputs
def available_folds(model_folder: str) -> List[str]:
    """The folds of a model folder that have out-of-sample predictions (``fold_<f>/validation/
    head_predictions.csv``), numerically sorted; never ``all``."""
    folds = []
    for name in os.listdir(model_folder):
        if name.startswith("fold_") and name[5:].isdigit() and isfile(join(model_folder, name, PREDICTIONS_FILE)):
            folds.append(name[5:])
    return sorted(folds, key=int)


def _read_head_config(model_folder: str) -> HeadConfig:
    path = join(model_folder, "plans.json")
    if not isfile(path):
        raise RecalibrationError(f"{path} not found: is {model_folder} a trained MultiRec model folder "
                                 f"(nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>)?")
    try:
        with open(path) as f:
            return HeadConfig.from_plans(json.load(f), source=path)
    except (ValueError, OSError) as e:
        raise RecalibrationError(str(e)) from None


def _read_outcomes(dataset_folder: str):
    from nnunet_multitask.dataset_tables import read_outcomes
    dj_path = join(dataset_folder, "dataset.json")
    if not isfile(dj_path):
        raise RecalibrationError(f"{dj_path} not found: --dataset-folder must be the raw dataset folder "
                                 f"($nnUNet_raw/DatasetXXX_Name)")
    try:
        with open(dj_path) as f:
            contract = DatasetContract.from_dataset_json(json.load(f), source=dj_path)
        path = join(dataset_folder, contract.outcomes_table)
        if not isfile(path):
            raise RecalibrationError(f"{path} not found: the development outcomes of the dataset")
        return contract, read_outcomes(Path(path), contract.schema()), path
    except RecalibrationError:
        raise
    except (ValueError, RuntimeError, OSError) as e:  # contract, schema and table errors name their file
        raise RecalibrationError(str(e)) from None


def load_fitting_data(model_folder: str, dataset_folder: str, folds: Optional[Sequence] = None) -> dict:
    """The folds' out-of-sample predictions joined with the development outcomes.

    Raises :class:`RecalibrationError` for fold ``all``, a missing ``head_predictions.csv``, a case
    in two folds, a test case, or a case without outcomes.
    """
    if not isdir(model_folder):
        raise RecalibrationError(f"model folder {model_folder} not found")
    folds = [str(f) for f in (folds if folds else available_folds(model_folder))]
    if "all" in folds:
        raise RecalibrationError("fold 'all' trains on every development patient, so it has no out-of-sample "
                                 "predictions to recalibrate on; train the cross-validation folds (0 1 2 3 4)")
    if not folds:
        raise RecalibrationError(f"no fold_<f>/{PREDICTIONS_FILE} in {model_folder}: the trainer's final "
                                 f"validation writes it (benchmark variants skip it; or training has not finished)")
    cfg = _read_head_config(model_folder)
    contract, outcomes, outcomes_path = _read_outcomes(dataset_folder)
    tables, inputs = [], {}
    for f in folds:
        path = join(model_folder, f"fold_{f}", PREDICTIONS_FILE)
        if not isfile(path):
            raise RecalibrationError(f"{path} not found: fold {f} has no out-of-sample predictions (the trainer's "
                                     f"final validation writes them; benchmark variants skip it, fold 'all' has "
                                     f"none, or training has not finished)")
        table = pd.read_csv(path, dtype={"case_id": str})
        table["fold"] = f
        tables.append(table)
        inputs[f"fold_{f}/{PREDICTIONS_FILE}"] = file_sha256(path)
    inputs[os.path.basename(outcomes_path)] = file_sha256(outcomes_path)
    table = pd.concat(tables, ignore_index=True)
    column = recurrence_column(cfg.horizon_months)
    for needed in ("case_id", "risk_score", column):
        if needed not in table.columns:
            raise RecalibrationError(f"head_predictions.csv of folds {folds} lacks the column {needed!r}")
    twice = table["case_id"][table["case_id"].duplicated()].tolist()
    if twice:
        raise RecalibrationError(f"case(s) {twice[:5]} are in more than one fold's validation set")
    test = sorted(set(table["case_id"]) & contract.held_out_cases)
    if test:
        raise RecalibrationError(f"test case(s) {test[:5]} appear among the validation predictions: test patients "
                                 f"must never be used for a fit")
    lacking = sorted(set(table["case_id"]) - set(outcomes.index))
    if lacking:
        raise RecalibrationError(f"{outcomes_path}: no outcome for case(s) {lacking[:5]} of the validation "
                                 f"predictions: is {dataset_folder} the dataset this model was trained on?")
    out = outcomes.loc[table["case_id"]]
    return {"table": table, "time": out[contract.time_column].to_numpy(float),
            "event": out[contract.event_column].to_numpy(float), "head_config": cfg, "folds": folds,
            "inputs": inputs, "column": column}


# ---------------------------------------------------------------------------- fit / store / load
def fit_recalibration(data: dict, classification_weighting: str = "ipcw",
                      min_censoring_survival: float = MIN_CENSORING_SURVIVAL) -> dict:
    """Both recalibrations from :func:`load_fitting_data`'s output. The JSON layout::

        {"version": 1, "created": ISO time, "folds": ["0", ...], "horizon_months": 36.0,
         "time_unit": "months", "survival_head": "discrete" | "cox",
         "n_patients": N, "n_events": events (any time), "n_events_by_horizon": events at or before H,
         "n_known_status": patients whose status at H is known,
         "inputs": {"fold_0/validation/head_predictions.csv": sha256, ..., "outcomes.csv": sha256},
         "classification": {"column": "p_recurrence_36m", "model": "logit(p') = a + b logit(p)",
                            "weighting": "ipcw" | "complete_case", "min_censoring_survival": 0.05,
                            "intercept": a, "slope": b, "n": patients used, "converged": bool},
         "survival": {"model": "...", "linear_predictor": "risk_score" | "log(risk_score)",
                      "slope": b, "centre": c, "baseline_times": [...], "baseline_cumulative_hazard": [...],
                      "max_follow_up": longest observed time, "surv_prob_at": {"surv_prob_12m": S0'(12), ...},
                      "n": N, "n_events": events, "converged": bool}}
    """
    if classification_weighting not in WEIGHTINGS:
        raise RecalibrationError(f"classification weighting must be one of {WEIGHTINGS}, got "
                                 f"{classification_weighting!r}")
    cfg: HeadConfig = data["head_config"]
    horizon, table = float(cfg.horizon_months), data["table"]
    time, event = data["time"], data["event"]
    label = recurrence_label(time, event, horizon)
    known = ~np.isnan(label)
    if classification_weighting == "ipcw":
        weights = ipcw_weights(time, event, horizon, min_censoring_survival=min_censoring_survival)[known]
    else:
        weights = np.ones(int(known.sum()))
    p = pd.to_numeric(table[data["column"]], errors="coerce").to_numpy(float)
    if not np.isfinite(p[known]).all():
        raise RecalibrationError(f"{data['column']} has missing or non-numeric values")
    cls = fit_logistic_recalibration(p[known], label[known], weights)
    lp = survival_linear_predictor(pd.to_numeric(table["risk_score"], errors="coerce").to_numpy(float),
                                   cfg.survival_head)
    surv = fit_cox_recalibration(lp, time, event)
    s0 = {survival_column(t): float(np.exp(-baseline_cumulative_hazard_at(surv, t)[0]))
          for t in survival_times(horizon)}
    return {
        "version": RECALIBRATION_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folds": list(data["folds"]), "horizon_months": horizon, "time_unit": cfg.time_unit,
        "survival_head": cfg.survival_head, "n_patients": int(len(table)), "n_events": int(np.sum(event > 0)),
        "n_events_by_horizon": int(np.nansum(label)), "n_known_status": int(known.sum()),
        "inputs": dict(data["inputs"]),
        "fitted_on": "out-of-sample predictions of the development patients (each fold's validation patients "
                     "by that fold's model) joined with the development outcomes",
        "classification": {"column": data["column"], "model": "logit(p') = intercept + slope * logit(p)",
                           "weighting": classification_weighting,
                           "min_censoring_survival": float(min_censoring_survival), **cls},
        "survival": {"model": "S'(t | lp) = exp(-H0'(t) * exp(slope * (lp - centre))), Cox (Breslow ties) on lp, "
                              "Breslow baseline H0'",
                     "linear_predictor": "risk_score" if cfg.survival_head == "cox" else "log(risk_score)",
                     **surv, "surv_prob_at": {k: (None if np.isnan(v) else v) for k, v in s0.items()}},
    }


def save_recalibration(model_folder: str, recal: dict) -> str:
    path = join(model_folder, RECALIBRATION_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(recal, f, indent=2)
    os.replace(tmp, path)
    return path


def load_recalibration(model_folder: str) -> dict:
    """``<model_folder>/recalibration.json``, checked; raises :class:`RecalibrationError` (with the
    command that makes it) when absent or of another version."""
    path = join(model_folder, RECALIBRATION_FILE)
    if not isfile(path):
        raise RecalibrationError(f"{path} not found: fit it first with `python -m nnunet_multitask.recalibration "
                                 f"--model-folder {model_folder} --dataset-folder $nnUNet_raw/<dataset>`")
    try:
        with open(path) as f:
            recal = json.load(f)
    except (OSError, ValueError) as e:
        raise RecalibrationError(f"{path} cannot be read: {e}") from None
    if recal.get("version") != RECALIBRATION_VERSION:
        raise RecalibrationError(f"{path}: version {recal.get('version')!r}, this code reads version "
                                 f"{RECALIBRATION_VERSION}; fit it again")
    for key in ("classification", "survival", "horizon_months", "survival_head", "folds"):
        if key not in recal:
            raise RecalibrationError(f"{path} lacks {key!r}")
    recal["path"] = path
    return recal


def recalibration_record(recal: dict) -> dict:
    """What a prediction records about the recalibration it applied (for ``predictions.json``)."""
    cls, surv = recal["classification"], recal["survival"]
    return {"file": recal.get("path"), "created": recal.get("created"), "folds": recal["folds"],
            "n_patients": recal.get("n_patients"), "n_events": recal.get("n_events"),
            "n_events_by_horizon": recal.get("n_events_by_horizon"), "few_events": recal.get("few_events"),
            "inputs": recal.get("inputs"),
            "classification": {"column": cls["column"], "intercept": cls["intercept"], "slope": cls["slope"],
                               "weighting": cls["weighting"]},
            "survival": {"linear_predictor": surv["linear_predictor"], "slope": surv["slope"],
                         "centre": surv["centre"], "max_follow_up": surv["max_follow_up"]}}


# ---------------------------------------------------------------------------- apply
def _keep_raw(out: pd.DataFrame, column: str) -> None:
    if column in out.columns:
        out[column + UNCALIBRATED] = out[column]
    if column + "_sd" in out.columns:
        out[column + UNCALIBRATED + "_sd"] = out.pop(column + "_sd")


def apply_recalibration(table: pd.DataFrame, recal: dict) -> pd.DataFrame:
    """A copy of a predictions table with recalibrated probabilities (module docstring).

    Replaces ``p_recurrence_<H>m`` (raw kept as ``p_recurrence_<H>m_uncalibrated``) and writes
    ``surv_prob_<t>m`` for the predictor's times (raw, where the head wrote them, kept as
    ``surv_prob_<t>m_uncalibrated``; a time beyond the fitting follow-up is left out, and said so in the
    record's ``left_out``); ``risk_score`` is unchanged;
    adds ``recalibrated = True`` and ``attrs["recalibration"]`` (:func:`recalibration_record`).
    Refuses a table that is already recalibrated or lacks the columns.
    """
    if "recalibrated" in table.columns and table["recalibrated"].astype(bool).any():
        raise RecalibrationError("this table is already recalibrated")
    cls, surv = recal["classification"], recal["survival"]
    column = cls["column"]
    for needed in (column, "risk_score"):
        if needed not in table.columns:
            raise RecalibrationError(f"the predictions lack {needed!r} (horizon {recal['horizon_months']:g}, "
                                     f"{recal['survival_head']} survival head): recalibration of another model?")
    out = table.copy()
    p = pd.to_numeric(out[column], errors="coerce").to_numpy(float)
    _keep_raw(out, column)
    out[column] = _sigmoid(cls["intercept"] + cls["slope"] * _logit(p))
    lp = survival_linear_predictor(pd.to_numeric(out["risk_score"], errors="coerce").to_numpy(float),
                                   recal["survival_head"])
    relative = np.exp(surv["slope"] * (lp - surv["centre"]))
    beyond = []
    for t in survival_times(recal["horizon_months"]):
        name = survival_column(t)
        _keep_raw(out, name)
        if t > float(surv["max_follow_up"]):
            # no baseline there: the column is left out rather than written empty (readers refuse NaN)
            beyond.append(name)
            out = out.drop(columns=[name], errors="ignore")
            continue
        out[name] = np.exp(-baseline_cumulative_hazard_at(surv, t)[0] * relative)
    out["recalibrated"] = True
    record = recalibration_record(recal)
    if beyond:
        record["left_out"] = (f"{', '.join(beyond)}: beyond the fitting patients' longest follow-up "
                              f"({float(surv['max_follow_up']):g} months), where the refitted baseline is unknown; "
                              f"the heads' own values are in the *_uncalibrated columns")
    if "n_folds" in out.columns and (pd.to_numeric(out["n_folds"], errors="coerce") > 1).any():
        record["note"] = ("fitted on single-fold out-of-sample predictions and applied to a fold ensemble, whose "
                          "probabilities are less spread: the recalibrated slope may be over-corrected (BENCHMARKS.md, "
                          "bench_ipcw --recalibration)")
    out.attrs["recalibration"] = record
    return out


# ---------------------------------------------------------------------------- CLI
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nnunet_multitask.recalibration",
                                description="Fit the recalibration of both heads on the development patients' "
                                            "out-of-sample predictions and write <model-folder>/recalibration.json")
    p.add_argument("--model-folder", required=True,
                   help="nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>")
    p.add_argument("--dataset-folder", required=True,
                   help="the raw dataset folder ($nnUNet_raw/DatasetXXX_Name) with dataset.json and outcomes.csv")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds whose fold_<f>/validation/head_predictions.csv are used (default: every fold that "
                        "has one); never 'all'")
    p.add_argument("--allow-few-events", action="store_true",
                   help=f"fit even with fewer than {MIN_EVENTS_BY_HORIZON} events by the horizon among the fitting "
                        f"patients (refused otherwise: two coefficients per head from so few events are mostly noise); "
                        f"the file then records it and every report that uses it says so")
    p.add_argument("--classification-weighting", choices=WEIGHTINGS, default="ipcw",
                   help="ipcw (default): known-status patients weighted by the inverse probability of censoring; "
                        "complete_case: known-status patients unweighted")
    a = p.parse_args(argv)
    try:
        data = load_fitting_data(a.model_folder, a.dataset_folder, a.folds)
        recal = fit_recalibration(data, a.classification_weighting)
        if recal["n_events_by_horizon"] < MIN_EVENTS_BY_HORIZON:
            few = (f"fitted on {recal['n_patients']} patients with {recal['n_events_by_horizon']} events by "
                   f"{recal['horizon_months']:g} months (fewer than {MIN_EVENTS_BY_HORIZON}): its coefficients are "
                   f"mostly noise")
            if not a.allow_few_events:
                raise RecalibrationError(f"{few}; fit it on more folds' out-of-sample patients (train folds 0-4), or "
                                         f"pass --allow-few-events to fit it anyway (recorded as such)")
            recal["few_events"] = few
            print(f"recalibration: warning: {few} (--allow-few-events)", file=sys.stderr)
    except MultitaskError as e:
        print(f"recalibration: {e}", file=sys.stderr)
        return 2
    path = save_recalibration(a.model_folder, recal)
    c, s = recal["classification"], recal["survival"]
    print(f"wrote {path}: {recal['n_patients']} patients, {recal['n_events']} events, "
          f"folds {', '.join(recal['folds'])}")
    print(f"  classification ({c['column']}, {c['weighting']}): intercept {c['intercept']:.3f}, slope {c['slope']:.3f}")
    print(f"  survival ({recal['survival_head']} head, lp = {s['linear_predictor']}): slope {s['slope']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
