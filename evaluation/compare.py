"""Model A vs model B on their common cases of one set: paired C-index difference and DeLong test."""
from __future__ import annotations

import numpy as np
import pandas as pd

from clinical.outcomes import recurrence_label
from evaluation import metrics as M
from evaluation.inputs import horizon_tag
from evaluation.set_metrics import CI_LEVEL, finite_or_none


def _c_index_difference(out: dict, time: np.ndarray, event: np.ndarray, risks: np.ndarray, same_cases: bool,
                        n_bootstrap: int, seed: int, bootstrap_a: np.ndarray | None,
                        bootstrap_b: np.ndarray | None) -> None:
    """Harrell's C of both models, their difference with a paired percentile bootstrap CI and a
    two-sided bootstrap p."""
    if not event.any():
        out["c_index_difference_reason"] = "no events among the common cases"
        return
    (c_a, why_a), (c_b, why_b) = (M.harrell_c_with_reason(time, event, risk) for risk in risks)
    if why_a or why_b:
        out["c_index_difference_reason"] = f"no comparable pairs ({why_a or why_b})"
        return
    if same_cases and bootstrap_a is not None and bootstrap_b is not None:
        resampled = np.vstack([bootstrap_a, bootstrap_b])
    else:
        resampled = M.bootstrap_harrell_c(time, event, risks, n_bootstrap, seed)
    differences = resampled[0] - resampled[1]
    finite = differences[np.isfinite(differences)]
    out.update({"c_index_a": c_a, "c_index_b": c_b, "c_index_difference": c_a - c_b,
                "c_index_difference_ci": list(M.percentile_ci(differences, CI_LEVEL) or []) or None})
    if finite.size:
        # Two-sided bootstrap p: twice the smaller tail share on either side of 0, with the
        # (k + 1) / (B + 1) correction so it is never reported as exactly 0.
        tail = min((finite <= 0).sum(), (finite >= 0).sum())
        out["c_index_difference_p_bootstrap"] = float(min(1.0, 2 * (tail + 1) / (finite.size + 1)))


def _delong(out: dict, common: pd.DataFrame, time: np.ndarray, event: np.ndarray, horizon: float) -> None:
    """DeLong test of the two correlated horizon AUCs on the common cases with known status."""
    labels = recurrence_label(time, event, horizon)
    known = ~np.isnan(labels)
    use_p = common["p_recurrence_a"].notna().all() and common["p_recurrence_b"].notna().all()
    scores = (common[["p_recurrence_a", "p_recurrence_b"]] if use_p
              else common[["risk_score_a", "risk_score_b"]]).to_numpy(dtype=float).T
    out["delong_score"] = f"p_recurrence_{horizon_tag(horizon)}m" if use_p else "risk_score"
    out["n_known_status"] = int(known.sum())
    if len(np.unique(labels[known])) < 2:
        out["delong_p_reason"] = (f"needs cases with and without recurrence by {horizon_tag(horizon)} months "
                                  "among the common cases with known status")
        return
    test = M.delong_test(labels[known].astype(int), scores[0][known], scores[1][known])
    out.update({"auc_a": test["auc_a"], "auc_b": test["auc_b"], "auc_difference": test["difference"],
                "delong_z": finite_or_none(test["z"]), "delong_p": test["p_value"]})


def compare_pair(frame_a: pd.DataFrame, frame_b: pd.DataFrame, horizon: float, n_bootstrap: int,
                 seed: int, bootstrap_a: np.ndarray | None = None, bootstrap_b: np.ndarray | None = None) -> dict:
    """Model A vs B on their common cases of one set.

    C-index difference (A - B) with a paired percentile bootstrap (identical resamples for both
    models) and the DeLong test of the two correlated horizon AUCs.

    ``bootstrap_a`` / ``bootstrap_b`` are the per-model bootstrap C values of ``evaluate_set``
    (same seed, cases sorted by case_id); they are reused only when both models cover exactly the
    common cases, since only then are their resamples the resamples of the common cases.
    """
    common = frame_a.merge(frame_b[["case_id", "risk_score", "p_recurrence"]], on="case_id",
                           suffixes=("_a", "_b")).sort_values("case_id")
    time = common["time"].to_numpy(dtype=float)
    event = common["event"].to_numpy().astype(bool)
    out = {"n_common": int(len(common)), "events": int(event.sum()), "c_index_a": None, "c_index_b": None,
           "c_index_difference": None, "c_index_difference_ci": None, "c_index_difference_p_bootstrap": None,
           "delong_p": None}
    if len(common) == 0:
        out["c_index_difference_reason"] = out["delong_p_reason"] = "no common cases"
        return out
    risks = common[["risk_score_a", "risk_score_b"]].to_numpy(dtype=float).T
    same_cases = len(frame_a) == len(frame_b) == len(common)
    _c_index_difference(out, time, event, risks, same_cases, n_bootstrap, seed, bootstrap_a, bootstrap_b)
    _delong(out, common, time, event, horizon)
    return out
