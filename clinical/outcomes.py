"""Outcome definitions shared by training, validation and evaluation (defined once, here)."""
from __future__ import annotations

import numpy as np


def recurrence_label(time, event, horizon: float) -> np.ndarray:
    """Recurrence-or-metastasis-within-horizon label with censoring respected.

    Returns float array: 1.0 if the event happened at or before ``horizon``; 0.0 if follow-up
    reached the horizon without an event (time >= horizon, event at any later time or none);
    NaN when the patient was censored before the horizon (status unknown, never 0).
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    if time.shape != event.shape:
        raise ValueError(f"time and event shapes differ: {time.shape} vs {event.shape}")
    out = np.full(time.shape, np.nan)
    out[event & (time <= horizon)] = 1.0
    out[time > horizon] = 0.0
    out[(~event) & (time >= horizon)] = 0.0
    return out


def survival_array(time, event):
    """scikit-survival structured array ``(event, time)``."""
    from sksurv.util import Surv
    return Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=float))


#: floor on the censoring survival G in :func:`ipcw_weights` (a weight never exceeds 1 / 0.05 = 20)
MIN_CENSORING_SURVIVAL = 0.05


def censoring_km(time, event):
    """Kaplan-Meier estimate of the censoring distribution G(t) = P(C > t).

    The censoring indicator is ``1 - event``: a censoring is G's "event", an outcome event censors G.
    At a time with both outcome events and censorings, the events come first (the usual convention,
    as lifelines' ``KaplanMeierFitter().fit(time, 1 - event)`` does): a patient whose event is at t is
    still in G's risk set at t, and is not counted as censored.

    .. math:: \\hat G(t) = \\prod_{s_j \\le t} \\Big(1 - \\frac{c_j}{n_j}\\Big)

    with :math:`s_j` the distinct observed times, :math:`c_j` the censorings at :math:`s_j` and
    :math:`n_j = \\#\\{i: T_i \\ge s_j\\}`.

    Returns
    -------
    (times, survival) : two float arrays
        The distinct observed times ascending, and :math:`\\hat G` just after each (right-continuous).
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    if time.shape != event.shape or time.ndim != 1:
        raise ValueError(f"time and event must be 1-D of one length, got {time.shape} and {event.shape}")
    if time.size == 0 or not np.isfinite(time).all():
        raise ValueError("censoring_km needs at least one patient and finite times")
    times, inverse = np.unique(time, return_inverse=True)
    censored = np.bincount(inverse, weights=(~event).astype(float), minlength=times.size)
    at_time = np.bincount(inverse, minlength=times.size).astype(float)
    at_risk = at_time[::-1].cumsum()[::-1]
    return times, np.cumprod(1.0 - censored / at_risk)


def censoring_survival_at(km, t, left: bool = False) -> np.ndarray:
    """:math:`\\hat G(t)` (``left=False``) or its left limit :math:`\\hat G(t-)` = P(C >= t)
    (``left=True``) from :func:`censoring_km`'s ``(times, survival)``; 1 before the first time."""
    times, surv = km
    t = np.asarray(t, dtype=float)
    idx = np.searchsorted(times, t, side="left" if left else "right")
    return np.concatenate([[1.0], surv])[idx]


def ipcw_weights(time, event, horizon: float, train_time=None, train_event=None,
                 min_censoring_survival: float = MIN_CENSORING_SURVIVAL) -> np.ndarray:
    """Inverse-probability-of-censoring weights of the recurrence-within-horizon label.

    With :math:`\\hat G` the Kaplan-Meier estimate of the censoring distribution
    (:func:`censoring_km`) fitted on ``train_time``/``train_event`` (the TRAINING FOLD only; by
    default on ``time``/``event`` themselves), horizon H and the label of :func:`recurrence_label`:

    * event at or before H (label 1):            :math:`w_i = 1 / \\hat G(T_i-)`
    * known event-free at H (label 0, T_i >= H): :math:`w_i = 1 / \\hat G(H-)`
    * censored before H (label unknown):         :math:`w_i = 0`

    i.e. :math:`w_i = 1\\{\\text{known}\\} / \\hat G(\\min(T_i, H)-)`, the inverse probability that the
    patient's status at H was observed. :math:`\\hat G(H-) = P(C \\ge H)` matches the label's rule
    that a patient followed up to exactly H is known event-free; it equals :math:`\\hat G(H)` unless a
    training patient is censored exactly at H. So :math:`E[w_i] = 1`, and
    :math:`\\sum_i w_i \\ell_i / n` estimates the loss the uncensored cohort would have (Horvitz-Thompson).

    Truncation: :math:`\\hat G` is floored at ``min_censoring_survival`` (default 0.05, so no weight
    exceeds 20): beyond the last training censoring or deep in the tail :math:`\\hat G` may reach 0,
    and a few patients would otherwise carry the loss alone.

    Returns
    -------
    float array, >= 0, same length as ``time``.
    """
    if not 0.0 < float(min_censoring_survival) <= 1.0:
        raise ValueError(f"min_censoring_survival must be in (0, 1], got {min_censoring_survival}")
    label = recurrence_label(time, event, horizon)
    time = np.asarray(time, dtype=float)
    if train_time is None:
        train_time, train_event = time, event
    elif train_event is None:
        raise ValueError("train_time needs train_event")
    km = censoring_km(train_time, train_event)
    g = censoring_survival_at(km, np.minimum(time, float(horizon)), left=True)
    w = 1.0 / np.maximum(g, float(min_censoring_survival))
    w[np.isnan(label)] = 0.0
    return w


def ipcw_event_rate(time, event, horizon: float, **kwargs) -> float:
    """IPCW estimate of P(event by H): :math:`\\sum_i w_i y_i / \\sum_i w_i` over known labels
    (:func:`ipcw_weights`; equals 1 - Kaplan-Meier at H up to the floor). NaN when none is known."""
    label = recurrence_label(time, event, horizon)
    w = ipcw_weights(time, event, horizon, **kwargs)
    known = ~np.isnan(label)
    total = w[known].sum()
    return float((w[known] * label[known]).sum() / total) if total > 0 else float("nan")
