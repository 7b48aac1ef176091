"""Validation metrics used while training (scikit-survival / scikit-learn; NaN where undefined).

The full evaluation with confidence intervals lives in ``evaluation/``; these are the two
numbers logged every epoch, which must never crash a training run on a small validation fold.
"""
from __future__ import annotations

import numpy as np


def harrell_c(time, event, risk) -> float:
    """Harrell's C of ``risk`` (higher = earlier event); NaN when no pair is comparable."""
    from sksurv.metrics import concordance_index_censored
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    if event.sum() == 0 or len(time) < 2 or not np.all(np.isfinite(risk)):
        return float("nan")
    try:
        return float(concordance_index_censored(event.astype(bool), time, risk)[0])
    except (ValueError, ZeroDivisionError):  # no comparable pairs
        return float("nan")


def roc_auc_or_nan(label, score) -> float:
    """ROC AUC on cases with known label (NaN labels are unknown status and left out)."""
    from sklearn.metrics import roc_auc_score
    label, score = np.asarray(label, dtype=float), np.asarray(score, dtype=float)
    known = np.isfinite(label)
    if len(np.unique(label[known])) < 2:
        return float("nan")
    return float(roc_auc_score(label[known], score[known]))
