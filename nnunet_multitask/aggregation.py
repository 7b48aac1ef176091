"""The patient-level prediction, defined once.

nnU-Net trains and predicts on patches. The heads, however, describe the whole tumour: a
patient's prediction is :func:`patient_level_prediction`: nnU-Net's sliding window (tiles and
test-time mirrors) stitches the whole-image segmentation, the network computes its tumour-level
image features from that segmentation and the whole image (soft tumour volume, tumour means of
every channel; pooled bottleneck features gathered over the tiles where the model uses them),
and the heads run once on those features and the clinical vector. The predictor and the
trainer's final validation both call it. A patch that shows the whole image (as in training on
small fields of view) gives exactly the same features.

The trainer's per-epoch validation monitor uses the same definition on every validation case
(sliding window without mirroring), so monitoring, selection and prediction agree.

``tumour_found`` is False when the segmentation finds less than ``min_tumour_voxels`` of tumour
probability in the whole image; the features are then those of an (almost) empty segmentation and
the row is flagged in the outputs.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

MIN_TUMOUR_VOXELS = 1.0


def _stack(records: List[Mapping[str, np.ndarray]], key: str) -> np.ndarray:
    """Rows of ``key`` over all records, as [P, width] (one row per patch)."""
    return np.concatenate([np.asarray(r[key], dtype=np.float64).reshape(np.size(r["tumour_mass"]), -1)
                           for r in records], axis=0)


def survival_at_times(hazard_logits: np.ndarray, bin_edges: np.ndarray, times: Iterable[float]) -> np.ndarray:
    """S(t) of one patient's hazard logits ``[K]`` at ``times``, as numpy (float64): the training
    loss's own :func:`nnunet_multitask.losses.survival_at` (one implementation of S(t): linear
    between interval ends, S(0) = 1, held beyond the last edge)."""
    import torch

    from nnunet_multitask.losses import survival_at
    logits = torch.as_tensor(np.asarray(hazard_logits, dtype=np.float64)).reshape(1, -1)
    edges = torch.as_tensor(np.asarray(bin_edges, dtype=np.float64))
    t = torch.as_tensor(np.asarray(list(times), dtype=np.float64))
    return survival_at(logits, edges, t)[0].numpy()


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


def patient_level_prediction(network, seg_logits, image, tile_records, clinical, horizon: float,
                             min_tumour_voxels: float = MIN_TUMOUR_VOXELS, availability=None) -> Dict[str, object]:
    """THE patient-level prediction (module docstring): heads once on whole-tumour features.

    Parameters
    ----------
    network : nnunet_multitask.network.MultiTaskUNet
    seg_logits : Tensor [L, *sp]
        nnU-Net's stitched sliding-window logits of the whole preprocessed image.
    image : Tensor [C, *sp]
        The whole preprocessed image (every channel; the network selects its own).
    tile_records : list of dict
        What the network captured during the sliding window (``with network.capture("tiles") as tiles``).
    clinical : Tensor [F] or None
        The preprocessed clinical vector (None or empty for an image-only model).
    horizon : float
    min_tumour_voxels : float
    availability : Tensor [C] or None
        Which of the image's channels are real series (0: filled in for a missing one); read by
        models trained with ``channel_availability``, None = all present.

    Returns
    -------
    dict
        As :func:`patient_prediction`.
    """
    import torch
    with torch.no_grad():
        heads, mass = network.patient_heads(seg_logits, image, tile_records, clinical, availability)
    record = {k: v.float().cpu().numpy() for k, v in heads.items()}
    record["tumour_mass"] = np.array([mass])
    edges = network.time_bin_edges.cpu().numpy()
    return patient_prediction([record], network.survival_head, horizon, edges, min_tumour_voxels)
