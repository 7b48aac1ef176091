"""Calibration of a predicted risk at the horizon H, censoring-aware, with seeded bootstrap CIs.

The predicted risk ``p`` is a probability of recurrence by H: the classification head's
``p_recurrence_<H>m`` or the survival head's ``1 - surv_prob_<H>m``. Follow-up beyond H is censored
at H, so every case counts until it leaves follow-up (no complete-case analysis). Let
``x = cloglog(p) = log(-log(1 - p))`` (p clipped to [1e-10, 1 - 1e-10], as lifelines does).

* **In the large**: observed risk = 1 - Kaplan-Meier survival at H of the set, against the mean
  predicted risk: their difference (observed - predicted) and ratio (O/E).
* **Slope and intercept** (Cox / cloglog, the survival analogue of logistic recalibration): a Cox
  model of the outcome (truncated at H) on ``x`` gives the slope ``b`` (1 = ideal, < 1 = predictions
  too extreme, i.e. overconfident), and its Breslow baseline cumulative hazard at H the line
  ``cloglog(observed risk) = a_line + b x``. The calibration intercept ``a`` is that line's
  intercept with the slope fixed at 1: ``log`` of the Breslow baseline cumulative hazard at H when each
  case's hazard is proportional to ``-log(1 - p)`` (0 = ideal, > 0 = more recurrences than predicted).
  A perfectly calibrated risk (``p = 1 - S(H | case)`` under proportional hazards) gives a = 0, b = 1.
  Why not logistic regression on the known-status cases: it drops every case censored before H, which
  biases both numbers when follow-up is short; it is still given (``logistic_known_status``) for
  comparison with papers that report it.
* **ICI, E50, E90** (Austin, Harrell & van Klaveren, Stat Med 2020, doi 10.1002/sim.8570): a Cox
  model of the outcome (truncated at H) on a restricted cubic spline of ``x`` (3 knots at the 10th,
  50th and 90th percentiles of x in the set, Harrell's placement, kept fixed in the resamples) gives
  the smoothed observed risk of each case; ICI, E50 and E90 are the mean, median and 90th percentile
  of ``|p - observed|``. lifelines' ``survival_probability_calibration`` does the same for its own
  fitted models with a Royston-Parmar spline baseline and a linear cloglog term; this module takes
  any predicted probability and follows Austin et al.'s Cox + spline model.

Every interval is a percentile bootstrap: cases resampled with replacement (the same resamples as the
C-index, :func:`evaluation.metrics.resample_counts`); each resample refits the models. The Cox fits
are a hand-written Newton-Raphson of the Breslow partial likelihood, vectorised over the resamples
(a resample is a vector of case weights); :func:`cox_fit` is tested against lifelines.
"""
from __future__ import annotations

import numpy as np

from evaluation import metrics as M

#: p is clipped to [P_CLIP, 1 - P_CLIP] before cloglog / logit (as lifelines does).
P_CLIP = 1e-10
#: Quantiles of cloglog(p) where the 3 knots of the restricted cubic spline sit (Harrell's default).
KNOT_QUANTILES = (0.10, 0.50, 0.90)
#: A fit whose coefficient grows beyond this is treated as diverged (monotone likelihood).
MAX_COEFFICIENT = 30.0
#: Points of the smoothed curve drawn in the figure.
GRID_POINTS = 100


def cloglog(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), P_CLIP, 1 - P_CLIP)
    return np.log(-np.log1p(-p))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), P_CLIP, 1 - P_CLIP)
    return np.log(p) - np.log1p(-p)


def rcs_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Restricted cubic spline basis (Harrell): ``[x, s(x)]`` for 3 knots, linear beyond the outer ones."""
    t1, t2, t3 = knots
    cube = lambda u: np.maximum(u, 0.0) ** 3  # noqa: E731
    s = (cube(x - t1) - cube(x - t2) * (t3 - t1) / (t3 - t2) + cube(x - t3) * (t2 - t1) / (t3 - t2)) / (t3 - t1) ** 2
    return np.column_stack([x, s])


# --------------------------------------------------------------------------------------------
# Weighted Cox (Breslow), vectorised over weight vectors
# --------------------------------------------------------------------------------------------
def _reverse_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Sum over the risk set of each (time-sorted) case along axis 1, ties sharing their risk set."""
    return np.flip(np.cumsum(np.flip(values, axis=1), axis=1), axis=1)[:, first]


def _cox_terms(beta: np.ndarray, x: np.ndarray, xx: np.ndarray, wd: np.ndarray, weights: np.ndarray,
               first: np.ndarray) -> tuple:
    """Log partial likelihood, gradient and Hessian (Breslow ties) for every row of ``beta``."""
    eta = beta @ x.T                                    # (B, n)
    shift = eta.max(axis=1, keepdims=True)
    r = weights * np.exp(eta - shift)
    s0 = _reverse_cumsum(r, first)
    s1 = _reverse_cumsum(r[:, :, None] * x[None], first)
    s2 = _reverse_cumsum(r[:, :, None, None] * xx[None], first)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / s0[:, :, None]
        loglik = np.where(wd > 0, wd * (eta - shift - np.log(s0)), 0.0).sum(axis=1)
        grad = np.where(wd[:, :, None] > 0, wd[:, :, None] * (x[None] - mean), 0.0).sum(axis=1)
        inner = s2 / s0[:, :, None, None] - mean[:, :, :, None] * mean[:, :, None, :]
        hess = -np.where(wd[:, :, None, None] > 0, wd[:, :, None, None] * inner, 0.0).sum(axis=1)
    # a row whose risk sets underflowed (extreme coefficients) is unusable: worst likelihood, no step
    bad = ~(np.isfinite(loglik) & np.isfinite(grad).all(axis=1) & np.isfinite(hess).all(axis=(1, 2)))
    loglik[bad], grad[bad], hess[bad] = -np.inf, 0.0, -np.eye(x.shape[1])
    return loglik, grad, hess


def cox_fit(time: np.ndarray, event: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None,
            max_iter: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Cox proportional-hazards fits (Breslow ties) of one design for many case-weight vectors.

    Parameters
    ----------
    time, event : array, shape (n,)
    x : array, shape (n,) or (n, p)
        Covariates (no intercept; the baseline hazard absorbs it).
    weights : array, shape (B, n), optional
        Case weights (bootstrap multiplicities); default one row of ones.

    Returns
    -------
    beta : ndarray, shape (B, p)
        Coefficients; NaN rows where the fit did not converge or diverged (monotone likelihood).
    cumulative_hazard : ndarray, shape (B,)
        Breslow baseline cumulative hazard at the last time (covariates not centred), NaN likewise.
    """
    time, event = np.asarray(time, dtype=float), np.asarray(event).astype(bool)
    x = np.asarray(x, dtype=float).reshape(len(time), -1)
    weights = np.ones((1, len(time))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(time, kind="stable")
    time, event, x, weights = time[order], event[order], x[order], weights[:, order]
    first = np.searchsorted(time, time, side="left")
    xx = x[:, :, None] * x[:, None, :]
    wd = weights * event
    beta = np.zeros((len(weights), x.shape[1]))
    loglik, grad, hess = _cox_terms(beta, x, xx, wd, weights, first)
    converged = np.zeros(len(weights), dtype=bool)
    failed = ~np.isfinite(loglik)
    for _ in range(max_iter):
        step = np.einsum("bij,bj->bi", np.linalg.pinv(-hess), grad)
        step[converged] = 0.0
        candidate = beta + step
        new_loglik, new_grad, new_hess = _cox_terms(candidate, x, xx, wd, weights, first)
        for _ in range(30):  # step halving where the likelihood fell
            worse = ~(new_loglik >= loglik - 1e-10)
            if not worse.any():
                break
            step[worse] /= 2.0
            candidate[worse] = beta[worse] + step[worse]
            new_loglik, new_grad, new_hess = _cox_terms(candidate, x, xx, wd, weights, first)
        failed |= ~np.isfinite(new_loglik)
        beta, loglik, grad, hess = candidate, new_loglik, new_grad, new_hess
        converged |= (np.abs(step).max(axis=1) < 1e-9) | failed
        if converged.all():
            break
    eta = beta @ x.T
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        s0 = _reverse_cumsum(weights * np.exp(eta), first)
        cumulative_hazard = np.where(wd > 0, wd / s0, 0.0).sum(axis=1)
    bad = ~converged | failed | (np.abs(beta).max(axis=1) > MAX_COEFFICIENT) | (wd.sum(axis=1) == 0)
    bad |= ~np.isfinite(cumulative_hazard)
    beta[bad], cumulative_hazard[bad] = np.nan, np.nan
    return beta, cumulative_hazard


def _truncate(time: np.ndarray, event: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Follow-up beyond the horizon censored at the horizon."""
    return np.minimum(time, horizon), event.astype(bool) & (time <= horizon)


# --------------------------------------------------------------------------------------------
# The calibration quantities, point estimate (weights = ones) and resamples together
# --------------------------------------------------------------------------------------------
def weighted_km_risk(time: np.ndarray, event: np.ndarray, weights: np.ndarray, horizon: float) -> np.ndarray:
    """1 - Kaplan-Meier survival at the horizon for each weight vector (NaN when the horizon lies
    beyond the weighted sample's last time)."""
    event = event.astype(bool)
    event_times = np.unique(time[event & (time <= horizon)])
    if event_times.size == 0:
        survival = np.ones(len(weights))
    else:
        deaths = weights @ (event[:, None] & (time[:, None] == event_times[None, :]))
        at_risk = weights @ (time[:, None] >= event_times[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(at_risk > 0, 1.0 - deaths / at_risk, 1.0)
        survival = factor.prod(axis=1)
    last = np.where(weights > 0, time[None, :], -np.inf).max(axis=1)
    return np.where(last >= horizon, 1.0 - survival, np.nan)


def intercept_slope_fixed(time: np.ndarray, event: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Calibration intercept with the slope fixed at 1: log of the Breslow baseline cumulative hazard
    when case i's hazard is proportional to ``-log(1 - p_i)`` (times already truncated at the horizon)."""
    order = np.argsort(time, kind="stable")
    time, event, p, weights = time[order], event[order], p[order], weights[:, order]
    first = np.searchsorted(time, time, side="left")
    hazard = -np.log1p(-np.clip(p, P_CLIP, 1 - P_CLIP))
    s0 = _reverse_cumsum(weights * hazard, first)
    wd = weights * event
    with np.errstate(divide="ignore", invalid="ignore"):
        cumulative = np.where(wd > 0, wd / s0, 0.0).sum(axis=1)
        return np.where(cumulative > 0, np.log(cumulative), np.nan)


def _weighted_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Quantile (numpy's linear rule) of the sample in which value i appears counts[i] times."""
    keep = counts > 0
    return float(np.quantile(np.repeat(values[keep], counts[keep].astype(int)), q))


def smoothed_observed(beta: np.ndarray, cumulative: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Observed risk at the horizon of the Cox-spline model: ``1 - exp(-H0 exp(basis @ beta))``, (B, m)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return -np.expm1(-cumulative[:, None] * np.exp(beta @ basis.T))


def _spline_knots(x: np.ndarray) -> np.ndarray | None:
    knots = np.quantile(x, KNOT_QUANTILES)
    return knots if np.all(np.diff(knots) > 1e-8 * max(1.0, np.abs(knots).max())) else None


def _ici(p: np.ndarray, observed: np.ndarray, weights: np.ndarray) -> dict:
    """ICI, E50, E90 per weight vector (NaN where the smoothed fit failed)."""
    delta = np.abs(p[None, :] - observed)
    out = {"ici": np.full(len(weights), np.nan), "e50": np.full(len(weights), np.nan),
           "e90": np.full(len(weights), np.nan)}
    for b in np.flatnonzero(np.isfinite(delta).all(axis=1)):
        out["ici"][b] = float(np.average(delta[b], weights=weights[b]))
        out["e50"][b] = _weighted_quantile(delta[b], weights[b], 0.5)
        out["e90"][b] = _weighted_quantile(delta[b], weights[b], 0.9)
    return out


def calibration_replicates(time: np.ndarray, event: np.ndarray, p: np.ndarray, horizon: float,
                           weights: np.ndarray) -> tuple[dict, dict]:
    """Every calibration quantity for each weight vector (row 0 = ones gives the point estimate).

    Returns (values: {name: ndarray (B,)}, curve: {"grid", "curves" (B, GRID_POINTS), "knots"}).
    """
    t, d = _truncate(time, event, horizon)
    x = cloglog(p)
    total = weights.sum(axis=1)
    observed = weighted_km_risk(time, event, weights, horizon)
    predicted = weights @ p / total
    beta, cumulative = cox_fit(t, d, x, weights)
    if np.ptp(x) == 0:  # one predicted risk for every case: no slope
        beta[:], cumulative[:] = np.nan, np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {"observed_risk": observed, "mean_predicted_risk": predicted,
                  "observed_minus_predicted": observed - predicted, "observed_expected_ratio": observed / predicted,
                  "slope": beta[:, 0], "line_intercept": np.log(cumulative),
                  "intercept": intercept_slope_fixed(t, d, p, weights)}
    knots = _spline_knots(x)
    design = rcs_basis(x, knots) if knots is not None else x[:, None]
    spline_beta, spline_cumulative = cox_fit(t, d, design, weights)
    values.update(_ici(p, smoothed_observed(spline_beta, spline_cumulative, design), weights))
    grid = np.linspace(p.min(), p.max(), GRID_POINTS)
    grid_x = cloglog(grid)
    grid_design = rcs_basis(grid_x, knots) if knots is not None else grid_x[:, None]
    curve = {"grid": grid, "curves": smoothed_observed(spline_beta, spline_cumulative, grid_design),
             "knots": None if knots is None else knots.tolist()}
    return values, curve


# --------------------------------------------------------------------------------------------
# Known status: logistic recalibration (complete case, for comparison)
# --------------------------------------------------------------------------------------------
def logistic_fit(y: np.ndarray, x: np.ndarray, offset: np.ndarray | None = None,
                 max_iter: int = 100) -> tuple[np.ndarray, np.ndarray] | None:
    """Maximum-likelihood logistic regression ``logit P(y=1) = offset + [1, x] @ beta`` (x may have 0
    columns) by Newton-Raphson; returns (beta, covariance) or None when it does not converge."""
    design = np.column_stack([np.ones(len(y))] + ([x] if x is not None else []))
    offset = np.zeros(len(y)) if offset is None else offset
    beta = np.zeros(design.shape[1])
    for _ in range(max_iter):
        mu = 1.0 / (1.0 + np.exp(-(offset + design @ beta)))
        info = design.T @ (design * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(info, design.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if np.abs(beta).max() > 50:
            return None
        if np.abs(step).max() < 1e-10:
            return beta, np.linalg.inv(info)
    return None


def logistic_known_status(time: np.ndarray, event: np.ndarray, p: np.ndarray, horizon: float,
                          level: float = 0.95) -> dict:
    """Slope (logit y on logit p) and intercept (slope fixed at 1, offset logit p) on the cases with
    known status at the horizon, Wald CIs; None values with a reason when it cannot be fitted."""
    from scipy import stats

    known = (event.astype(bool) & (time <= horizon)) | (time >= horizon)
    y = (event.astype(bool) & (time <= horizon))[known].astype(float)
    out = {"n": int(known.sum()), "events": int(y.sum()), "slope": None, "slope_ci": None, "intercept": None,
           "intercept_ci": None, "method": "logistic regression of the known-status outcome on logit(p) (slope) and "
                                           "with offset logit(p) (intercept); complete case, Wald CIs"}
    if y.sum() < 2 or (1 - y).sum() < 2:
        out["reason"] = "needs at least 2 cases with and 2 without recurrence among known status"
        return out
    z = stats.norm.ppf(1 - (1 - level) / 2)
    lp = logit(p[known])
    slope_fit, intercept_fit = logistic_fit(y, lp), logistic_fit(y, None, offset=lp)
    if slope_fit is None or intercept_fit is None:
        out["reason"] = "logistic fit did not converge (separation)"
        return out
    (b, cov), (a, cov_a) = slope_fit, intercept_fit
    se_b, se_a = float(np.sqrt(cov[1, 1])), float(np.sqrt(cov_a[0, 0]))
    out.update({"slope": float(b[1]), "slope_ci": [float(b[1] - z * se_b), float(b[1] + z * se_b)],
                "intercept": float(a[0]), "intercept_ci": [float(a[0] - z * se_a), float(a[0] + z * se_a)]})
    return out


# --------------------------------------------------------------------------------------------
# Grouped Kaplan-Meier points and the whole calibration of one risk
# --------------------------------------------------------------------------------------------
def n_groups(n: int) -> int:
    """Deciles from 200 cases, quintiles from 50, tertiles from 15, else halves."""
    return 10 if n >= 200 else 5 if n >= 50 else 3 if n >= 15 else 2


def km_groups(time: np.ndarray, event: np.ndarray, p: np.ndarray, horizon: float) -> list[dict]:
    """Quantile groups of the predicted risk with 1 - KM at the horizon and its log-log 95% CI."""
    from sksurv.nonparametric import kaplan_meier_estimator

    k = min(n_groups(len(p)), len(p))  # a set of one case is one group, never an empty one
    order = np.argsort(p, kind="stable")
    groups = []
    for member in np.array_split(order, k):
        if len(member) == 0:
            continue
        g_time, g_event = time[member], event[member].astype(bool)
        entry = {"n": int(len(member)), "events": int(g_event.sum()), "mean_predicted": float(p[member].mean()),
                 "observed": None, "observed_ci": None}
        if g_time.max() >= horizon:
            km_time, km_surv, ci = kaplan_meier_estimator(g_event, g_time, conf_type="log-log")
            index = np.searchsorted(km_time, horizon, side="right") - 1
            if index < 0:
                entry.update(observed=0.0, observed_ci=[0.0, 0.0])
            else:
                entry.update(observed=float(1 - km_surv[index]),
                             observed_ci=[float(1 - ci[1][index]), float(1 - ci[0][index])])
        groups.append(entry)
    return groups


def calibration_at_horizon(time: np.ndarray, event: np.ndarray, p: np.ndarray, horizon: float,
                           n_bootstrap: int, seed: int, level: float = 0.95) -> tuple[dict, dict]:
    """Calibration of the predicted risk ``p`` (probability of recurrence by ``horizon``).

    Returns
    -------
    result : dict
        JSON-ready: observed_risk, mean_predicted_risk, observed_minus_predicted, observed_expected_ratio,
        slope, intercept, line_intercept, ici, e50, e90 (each with ``<name>_ci``), logistic_known_status,
        groups, counts of usable resamples; a value that cannot be computed is None with ``<name>_reason``.
    plot : dict
        ``grid``, ``curve``, ``band`` (pointwise bootstrap percentiles) and ``groups`` for the figure.
    """
    time, event, p = np.asarray(time, float), np.asarray(event).astype(bool), np.asarray(p, float)
    counts = M.resample_counts(len(time), n_bootstrap, seed)
    weights = np.vstack([np.ones((1, len(time))), counts])
    values, curve = calibration_replicates(time, event, p, horizon, weights)
    n_events = int((event & (time <= horizon)).sum())
    result = {"n": int(len(time)), "events_by_horizon": n_events, "horizon_months": float(horizon)}
    for name, replicate in values.items():
        point = replicate[0]
        result[name] = float(point) if np.isfinite(point) else None
        result[f"{name}_ci"] = list(M.percentile_ci(replicate[1:], level) or []) or None
        if result[name] is None:
            result[f"{name}_reason"] = _reason(name, time, p, n_events, horizon)
    result["bootstrap_resamples"] = int(n_bootstrap)
    result["bootstrap_valid"] = {"slope": int(np.isfinite(values["slope"][1:]).sum()),
                                 "ici": int(np.isfinite(values["ici"][1:]).sum())}
    result["spline_knots_cloglog"] = curve["knots"]
    result["logistic_known_status"] = logistic_known_status(time, event, p, horizon, level)
    result["groups"] = km_groups(time, event, p, horizon)
    curves = curve["curves"]
    finite = np.isfinite(curves[1:]).all(axis=1)
    band = (np.quantile(curves[1:][finite], [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
            if finite.sum() >= 10 else None)
    plot = {"grid": curve["grid"], "curve": curves[0], "band": band, "groups": result["groups"]}
    return result, plot


def _reason(name: str, time: np.ndarray, p: np.ndarray, n_events: int, horizon: float) -> str:
    if n_events == 0:
        return f"no recurrence at or before {horizon:g} months"
    if name.startswith("observed") and time.max() < horizon:
        return f"horizon {horizon:g} months beyond the last follow-up ({time.max():g} months)"
    if name in ("slope", "line_intercept") and np.ptp(p) == 0:
        return "every case has the same predicted risk: no slope"
    return "the Cox fit did not converge or diverged (e.g. every recurrence among the highest predictions)"
