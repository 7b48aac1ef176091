"""Validation metrics used while training (scikit-survival / scikit-learn; NaN where undefined).

The full evaluation with confidence intervals lives in ``evaluation/``; these are the two
numbers logged every epoch, which must never crash a training run on a small validation fold.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

#: Same tolerance as ``sksurv.metrics.concordance_index_censored`` (absolute difference of risks
#: at or below it counts as a tie), so the evaluation's vectorised bootstrap C matches sksurv exactly.
TIED_TOL = 1e-8


def harrell_c_with_reason(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> tuple[float, str | None]:
    """Harrell's C and, when it is undefined, why (see :func:`harrell_c`).

    Returns
    -------
    c_index : float
        NaN when undefined.
    reason : str or None
        None when defined; else the cause: scikit-survival's own message (no comparable pair,
        fewer than two cases, every case censored), ``"every event at the same time as every other
        case"`` (comparable pairs exist in sksurv's iteration but none is usable) or a count of
        non-finite risks.
    """
    from sksurv.metrics import concordance_index_censored

    time, event = np.asarray(time, dtype=float), np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    if not time.shape == event.shape == risk.shape or time.ndim != 1:
        raise ValueError(f"time, event and risk must be 1-D of one length, got shapes {time.shape}, "
                         f"{event.shape}, {risk.shape}")
    if not np.all(np.isfinite(risk)):
        return float("nan"), f"risk is NaN or infinite for {int((~np.isfinite(risk)).sum())} case(s)"
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            c_index = float(concordance_index_censored(event, time, risk, tied_tol=TIED_TOL)[0])
    except (ValueError, ZeroDivisionError) as error:  # sksurv's NoComparablePairException is a ValueError
        return float("nan"), str(error)
    if not np.isfinite(c_index):  # sksurv divides 0 by 0 when every comparable set is empty
        return float("nan"), "every event at the same time as every other case"
    return c_index, None


def harrell_c(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's concordance index, by ``sksurv.metrics.concordance_index_censored``.

    The one definition of the project: the trainer's per-epoch validation metric, and the one the
    evaluation reports (``evaluation.metrics`` imports it from here).

    Parameters
    ----------
    time : array-like, shape (n,)
        Follow-up time (> 0).
    event : array-like, shape (n,)
        Event indicator (1 / True = event; cast to bool).
    risk : array-like, shape (n,)
        Risk score, higher = earlier event expected.

    Returns
    -------
    float
        The C-index: the share of comparable pairs (i had an event before j's time, or at j's time
        with j censored) in which i has the higher risk, risk ties (within :data:`TIED_TOL`) counting
        one half. **NaN when it is undefined**, never an exception: no comparable pair (no event,
        fewer than two cases, every event tied in time with every other case) or a NaN / infinite
        risk (a diverged model). :func:`harrell_c_with_reason` also says why.

    Raises
    ------
    ValueError
        Only when the three arrays are not 1-D of one length.
    """
    return harrell_c_with_reason(time, event, risk)[0]




def roc_auc_or_nan(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC on cases with known label (NaN labels are unknown status and left out)."""
    from sklearn.metrics import roc_auc_score
    label, score = np.asarray(label, dtype=float), np.asarray(score, dtype=float)
    known = np.isfinite(label)
    if len(np.unique(label[known])) < 2:
        return float("nan")
    return float(roc_auc_score(label[known], score[known]))
