"""Metric functions for the survival / classification / segmentation evaluation.

The arithmetic of the point estimates is done by scikit-survival and scikit-learn (Harrell's C,
Uno's C, time-dependent AUC, Brier scores, Kaplan-Meier, log-rank, ROC AUC). What is hand-written
here is only what those libraries lack:

* a vectorised Harrell C over many bootstrap resamples (``bootstrap_harrell_c``): calling
  ``concordance_index_censored`` once per resample costs ~O(n log n) Python-level work per call and
  makes 1,000 resamples of 1,000 patients take tens of seconds; expressing every resample as
  integer case weights lets one matrix product evaluate all of them;
* DeLong's variance of (correlated) ROC AUCs, in the fast midrank form of Sun & Xu (2014);
* percentile intervals and a Dice coefficient on binary masks.

:func:`harrell_c` (defined in :mod:`nnunet_multitask.metrics`, imported here) is the project's one
definition of Harrell's C (NaN where undefined, never an exception for that), for training and evaluation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

# the project's one Harrell's C lives with the training metrics, which import nothing from evaluation/
from nnunet_multitask.metrics import TIED_TOL, harrell_c, harrell_c_with_reason  # noqa: F401


# --------------------------------------------------------------------------------------------
# Harrell's C: point estimate (sksurv) and vectorised bootstrap
# --------------------------------------------------------------------------------------------
def harrell_pair_matrices(time: ArrayLike, event: ArrayLike, risks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise comparability and concordance-credit matrices with sksurv's pair definition.

    A pair (i, j) is comparable when i had an event and either ``time[i] < time[j]`` or the times
    are equal and j is censored (a censored case is still at risk at its own time); this is the
    rule of ``sksurv.metrics._iter_comparable``. The credit of a comparable pair is 1 when
    ``risk[i] > risk[j]`` beyond ``TIED_TOL``, 0.5 for a risk tie, 0 otherwise.

    Parameters
    ----------
    time, event : array-like, shape (n,)
    risks : array-like, shape (n,) or (n_models, n)

    Returns
    -------
    comparable : ndarray, shape (n, n), float64 (0/1)
    credit : ndarray, shape (n_models, n, n), float64 (comparable pairs only)
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    risks = np.atleast_2d(np.asarray(risks, dtype=float))
    earlier = time[:, None] < time[None, :]
    same_time_censored_j = (time[:, None] == time[None, :]) & ~event[None, :]
    comparable = event[:, None] & (earlier | same_time_censored_j)
    credit = np.empty((risks.shape[0],) + comparable.shape)
    for m, risk in enumerate(risks):
        diff = risk[:, None] - risk[None, :]
        tie = np.abs(diff) <= TIED_TOL
        credit[m] = comparable * (((diff > 0) & ~tie) + 0.5 * tie)
    return comparable.astype(float), credit


def resample_counts(n_cases: int, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap resamples as case multiplicities.

    Row b holds how often each case is drawn in resample b (n draws with replacement). The draws
    come from ``numpy.random.default_rng(seed)``, so equal (n_cases, n_resamples, seed) give equal
    resamples: this is what makes model-vs-model bootstrap comparisons paired.

    Returns
    -------
    ndarray, shape (n_resamples, n_cases), int64
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_cases, size=(n_resamples, n_cases))
    flat = draws + (np.arange(n_resamples) * n_cases)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * n_cases).reshape(n_resamples, n_cases)


def weighted_harrell_c(time: ArrayLike, event: ArrayLike, risks: ArrayLike, weights: ArrayLike,
                       chunk: int = 256) -> np.ndarray:
    """Harrell's C of case-weighted samples, all weight vectors at once.

    A bootstrap resample in which case a appears w_a times has, by sksurv's pair rule, exactly
    ``w_a * w_b`` copies of each pair (a, b) (copies of one case are never comparable with each
    other: equal time, and either both censored or both events at a tied time). So
    ``C = (w^T Credit w) / (w^T Comparable w)``, evaluated for every resample with one matrix
    product per chunk instead of one sksurv call per resample.

    Parameters
    ----------
    time, event : array-like, shape (n,)
    risks : array-like, shape (n,) or (n_models, n)
    weights : array-like, shape (n_weights, n)
        Case multiplicities (e.g. from ``resample_counts``), or ones for the plain estimate.
    chunk : int
        Rows of ``weights`` per matrix product (bounds memory).

    Returns
    -------
    ndarray, shape (n_models, n_weights)
        C per model and weight vector; NaN where a weight vector leaves no comparable pair.
    """
    comparable, credit = harrell_pair_matrices(time, event, risks)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    if weights.max() * len(weights[0]) < 2 ** 20:
        # float32 products are exact here (integer weights, credits in halves, row sums < 2^21 in
        # steps of 0.5) and run twice as fast; the final sum over cases is done in float64.
        comparable, credit, matmul_weights = (comparable.astype(np.float32), credit.astype(np.float32),
                                              weights.astype(np.float32))
    else:
        matmul_weights = weights
    out = np.empty((credit.shape[0], weights.shape[0]))
    for start in range(0, weights.shape[0], chunk):
        w, w_matmul = weights[start:start + chunk], matmul_weights[start:start + chunk]
        denominator = np.einsum("bj,bj->b", (w_matmul @ comparable).astype(float), w)
        for m in range(credit.shape[0]):
            numerator = np.einsum("bj,bj->b", (w_matmul @ credit[m]).astype(float), w)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[m, start:start + chunk] = np.where(denominator > 0, numerator / denominator, np.nan)
    return out


def bootstrap_harrell_c(time: ArrayLike, event: ArrayLike, risks: ArrayLike, n_resamples: int,
                        seed: int) -> np.ndarray:
    """Harrell's C on ``n_resamples`` seeded bootstrap resamples of the cases.

    Returns
    -------
    ndarray, shape (n_models, n_resamples); NaN for a resample without a comparable pair.
    """
    counts = resample_counts(len(np.asarray(time)), n_resamples, seed)
    return weighted_harrell_c(time, event, risks, counts)


def percentile_ci(values: ArrayLike, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the finite values; None when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------
def delong_auc_covariance(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUCs of one or more scores and their DeLong covariance matrix.

    Hand-written because scikit-learn has no AUC variance. Fast midrank algorithm of
    X. Sun and W. Xu, "Fast implementation of DeLong's algorithm for comparing the areas under
    correlated receiver operating characteristic curves", IEEE Signal Processing Letters 21(11),
    1389-1393, 2014 (doi 10.1109/LSP.2014.2337313), for the estimator of
    E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, Biometrics 44(3), 837-845, 1988.

    Parameters
    ----------
    labels : array-like, shape (n,)
        Binary outcome (1 = positive). Both classes must be present.
    scores : array-like, shape (n,) or (n_scores, n)
        Higher = more likely positive.

    Returns
    -------
    aucs : ndarray, shape (n_scores,)
    covariance : ndarray, shape (n_scores, n_scores)
    """
    labels = np.asarray(labels).astype(int)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both positive and negative cases")
    x, y = scores[:, positive], scores[:, ~positive]
    # Midranks (ties averaged) within positives, within negatives and in the pooled sample.
    tx = stats.rankdata(x, axis=1)
    ty = stats.rankdata(y, axis=1)
    tz = stats.rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v01 = (tz[:, :m] - tx) / n          # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m    # structural components of the negatives
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((scores.shape[0],) * 2)
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((scores.shape[0],) * 2)
    return aucs, sx / m + sy / n


def delong_ci(labels: ArrayLike, scores: ArrayLike, level: float = 0.95) -> tuple[float, tuple[float, float], float]:
    """AUC with a DeLong normal-approximation interval (clipped to [0, 1]).

    Returns
    -------
    auc, (low, high), standard_error
    """
    aucs, cov = delong_auc_covariance(labels, scores)
    auc, se = float(aucs[0]), float(np.sqrt(max(cov[0, 0], 0.0)))
    z = stats.norm.ppf(1.0 - (1.0 - level) / 2.0)
    return auc, (float(max(0.0, auc - z * se)), float(min(1.0, auc + z * se))), se


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> dict:
    """Two-sided DeLong test of equal AUCs for two scores on the same cases.

    Returns
    -------
    dict with ``auc_a``, ``auc_b``, ``difference`` (a - b), ``se``, ``z``, ``p_value``
    (p is 1.0 and z 0.0 when the difference and its variance are both 0, e.g. identical scores).
    """
    aucs, cov = delong_auc_covariance(labels, np.vstack([scores_a, scores_b]))
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = float(np.sqrt(max(variance, 0.0)))
    if se == 0.0:
        z = 0.0 if difference == 0.0 else float(np.sign(difference) * np.inf)
    else:
        z = difference / se
    p_value = float(2.0 * stats.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": difference, "se": se,
            "z": z, "p_value": p_value}


# --------------------------------------------------------------------------------------------
# Kaplan-Meier helpers and Dice
# --------------------------------------------------------------------------------------------
def km_survival_at(time: ArrayLike, event: ArrayLike, at: float) -> float:
    """Kaplan-Meier survival (``sksurv.nonparametric.kaplan_meier_estimator``) at time ``at``.

    Returns NaN when ``at`` lies beyond the last observed time (the curve is undefined there).
    """
    from sksurv.nonparametric import kaplan_meier_estimator

    time = np.asarray(time, dtype=float)
    if at > time.max():
        return float("nan")
    km_time, km_surv = kaplan_meier_estimator(np.asarray(event, dtype=bool), time)
    index = np.searchsorted(km_time, at, side="right") - 1
    return 1.0 if index < 0 else float(km_surv[index])


def number_at_risk(time: ArrayLike, at_times: Sequence[float]) -> list[int]:
    """Number of cases still under observation (time >= t) at each t."""
    time = np.asarray(time, dtype=float)
    return [int((time >= t).sum()) for t in at_times]


def dice_coefficient(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Dice of two binary masks (foreground = label > 0); NaN when both are empty.

    Both-empty is NaN (as nnU-Net does) rather than 1, so a case without tumour cannot inflate a
    mean silently; the caller counts such cases.
    """
    prediction = np.asarray(prediction) > 0
    reference = np.asarray(reference) > 0
    if prediction.shape != reference.shape:
        raise ValueError(f"mask shapes differ: {prediction.shape} vs {reference.shape}")
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total
