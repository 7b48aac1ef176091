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
