"""The patient-level prediction, defined once.

nnU-Net trains and predicts on patches, so the heads produce one output per patch (and per
test-time mirror). A patient's prediction is the mean of its patch outputs weighted by each
patch's predicted tumour mass (the summed foreground probability of the patch's segmentation):
patches that see more of the tumour count more, patches without tumour count (almost) nothing.
Validation during training (random validation patches), the predictor (sliding-window tiles and
mirrors) and the evaluation all use :func:`patient_prediction` below.

Fallback: when the segmentation finds (almost) no tumour in any patch (total predicted tumour
mass below ``min_tumour_voxels``), the unweighted mean over all patches is used and
``tumour_found`` is False, so the row is flagged in the outputs.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

MIN_TUMOUR_VOXELS = 1.0


def _stack(records: List[Mapping[str, np.ndarray]], key: str) -> np.ndarray:
    """Rows of ``key`` over all records, as [P, width] (one row per patch)."""
    return np.concatenate([np.asarray(r[key], dtype=np.float64).reshape(np.size(r["tumour_mass"]), -1)
                           for r in records], axis=0)


def discrete_survival_from_logits(hazard_logits: np.ndarray) -> np.ndarray:
    """Survival at the end of each interval from per-interval hazard logits, [..., K]."""
    hazard = 1.0 / (1.0 + np.exp(-np.asarray(hazard_logits, dtype=np.float64)))
    return np.cumprod(1.0 - hazard, axis=-1)


def survival_at_times(hazard_logits: np.ndarray, bin_edges: np.ndarray, times: Iterable[float]) -> np.ndarray:
    """S(t) by linear interpolation between interval ends (S(0) = 1); beyond the last edge, S is held."""
    s_end = discrete_survival_from_logits(hazard_logits)
    edges = np.asarray(bin_edges, dtype=np.float64)
    grid = np.concatenate([[1.0], s_end])
    return np.array([np.interp(t, edges, grid) for t in times])


def patient_prediction(records: List[Mapping[str, np.ndarray]], survival_head: str, horizon: float,
                       bin_edges: Optional[np.ndarray] = None,
                       min_tumour_voxels: float = MIN_TUMOUR_VOXELS) -> Dict[str, object]:
    """Combine one patient's patch-level head outputs into the patient-level prediction.

    Parameters
    ----------
    records : list of dict
        Patch outputs (numpy): ``cls_logit`` [P], ``tumour_mass`` [P], and ``log_risk`` [P]
        (Cox head) or ``hazard_logits`` [P, K] (discrete-time head). Several records (tiles,
        mirrors, batches) are concatenated.
    survival_head : {"cox", "discrete"}
    horizon : float
        Horizon of the classification head (months); the discrete-time risk score is the
        cumulative hazard at this horizon.
    bin_edges : array, optional
        Discrete-time interval edges (required for the discrete head).

    Returns
    -------
    dict
        ``risk_score`` (higher = higher risk: the log-risk, or -log S(horizon)),
        ``p_recurrence`` (sigmoid of the weighted mean logit), ``survival_logits`` (discrete
        head: the weighted mean hazard logits, else None), ``tumour_found`` (bool),
        ``n_patches``.
    """
    if not records:
        raise ValueError("no patch outputs to aggregate")
    mass = np.concatenate([np.atleast_1d(np.asarray(r["tumour_mass"], dtype=np.float64)) for r in records])
    tumour_found = bool(mass.sum() >= min_tumour_voxels)
    w = mass / mass.sum() if tumour_found else np.full(mass.shape, 1.0 / len(mass))

    cls_logit = float(w @ _stack(records, "cls_logit")[:, 0])
    out = {"p_recurrence": float(1.0 / (1.0 + np.exp(-cls_logit))), "tumour_found": tumour_found,
           "n_patches": int(len(mass)), "survival_logits": None}
    if survival_head == "cox":
        out["risk_score"] = float(w @ _stack(records, "log_risk")[:, 0])
    elif survival_head == "discrete":
        if bin_edges is None:
            raise ValueError("the discrete-time head needs bin_edges")
        logits = w @ _stack(records, "hazard_logits")
        s_h = survival_at_times(logits, bin_edges, [horizon])[0]
        out["risk_score"] = float(-np.log(max(s_h, 1e-12)))
        out["survival_logits"] = logits
    else:
        raise ValueError(f"unknown survival head {survival_head!r}")
    return out


def group_patch_records(keys: Iterable[str], records: Iterable[Mapping[str, np.ndarray]]) -> Dict[str, List[dict]]:
    """Split batched patch outputs (one record per batch, rows aligned with ``keys``) per case."""
    per_case: Dict[str, List[dict]] = {}
    for batch_keys, rec in zip(keys, records):
        for i, k in enumerate(batch_keys):
            per_case.setdefault(str(k), []).append({n: np.asarray(v)[i:i + 1] for n, v in rec.items()})
    return per_case
