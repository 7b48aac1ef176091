"""Validation metrics used while training (scikit-survival / scikit-learn; NaN where undefined).

The full evaluation with confidence intervals lives in ``evaluation/``; these are the two
numbers logged every epoch, which must never crash a training run on a small validation fold.
"""
from __future__ import annotations

import numpy as np

# the project's one Harrell's C (NaN where undefined, never an exception for that); evaluation.metrics
# imports nothing from this package, so there is no cycle
from evaluation.metrics import harrell_c  # noqa: F401


def roc_auc_or_nan(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC on cases with known label (NaN labels are unknown status and left out)."""
    from sklearn.metrics import roc_auc_score
    label, score = np.asarray(label, dtype=float), np.asarray(score, dtype=float)
    known = np.isfinite(label)
    if len(np.unique(label[known])) < 2:
        return float("nan")
    return float(roc_auc_score(label[known], score[known]))
