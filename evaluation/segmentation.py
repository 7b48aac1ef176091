"""Segmentation quality: Dice per case from predicted and reference masks, and its summary per set."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation import metrics as M
from evaluation.inputs import EvaluationInputError


def dice_per_case(case_ids: Sequence[str], seg_pred_dir: str | os.PathLike,
                  seg_gt_dir: str | os.PathLike) -> tuple[dict, dict]:
    """Dice of ``<seg_pred_dir>/<case>.nii.gz`` vs ``<seg_gt_dir>/<case>.nii.gz`` (SimpleITK).

    Returns
    -------
    dice : dict case_id -> Dice (NaN when both masks are empty)
    missing : dict reason -> list of case ids without a usable pair of files
    """
    import SimpleITK as sitk

    dice, missing = {}, {"no reference segmentation": [], "no predicted segmentation": []}
    for case_id in case_ids:
        pred_path, gt_path = Path(seg_pred_dir) / f"{case_id}.nii.gz", Path(seg_gt_dir) / f"{case_id}.nii.gz"
        if not gt_path.is_file():
            missing["no reference segmentation"].append(case_id)
            continue
        if not pred_path.is_file():
            missing["no predicted segmentation"].append(case_id)
            continue
        pred, gt = sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(gt_path))
        if pred.GetSize() != gt.GetSize() or not np.allclose(pred.GetSpacing(), gt.GetSpacing(), rtol=1e-3):
            raise EvaluationInputError(
                f"case {case_id}: {pred_path} (size {pred.GetSize()}, spacing {pred.GetSpacing()}) does not "
                f"match {gt_path} (size {gt.GetSize()}, spacing {gt.GetSpacing()})")
        dice[case_id] = M.dice_coefficient(sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(gt))
    return dice, missing


def dropped_record(model: str, set_name: str | None, metric: str, reason: str, case_ids: Sequence) -> dict:
    """One entry of metrics.json ``dropped``: cases left out of a metric, and why."""
    case_ids = [str(c) for c in case_ids]
    return {"model": model, "set": set_name, "metric": metric, "reason": reason,
            "count": len(case_ids), "case_ids": case_ids}


def add_dice(result: dict, dropped: list, name: str, set_name: str, case_ids: Sequence[str], dice: dict,
             dice_missing: dict, has_segmentation: bool) -> None:
    """``dice_mean`` / ``dice_median`` / ``n_dice`` (``dice_sd``) of the set's cases; cases without a
    usable pair of masks, or with both masks empty, go to ``dropped``."""
    result.update({"dice_mean": None, "dice_median": None, "n_dice": 0})
    if not has_segmentation:
        result["dice_mean_reason"] = result["dice_median_reason"] = "no segmentations given (--seg-pred/--seg-gt)"
        return
    values = np.array([dice[c] for c in case_ids if c in dice], dtype=float)
    both_empty = [c for c in case_ids if c in dice and not np.isfinite(dice[c])]
    for reason, cases in list(dice_missing.items()) + [("both masks empty (Dice undefined)", both_empty)]:
        cases = [c for c in cases if c in set(case_ids)]
        if cases:
            dropped.append(dropped_record(name, set_name, "dice", reason, cases))
    finite = values[np.isfinite(values)]
    result["n_dice"] = int(finite.size)
    if finite.size == 0:
        result["dice_mean_reason"] = result["dice_median_reason"] = "no case with a usable segmentation pair"
    else:
        result["dice_mean"], result["dice_median"] = float(finite.mean()), float(np.median(finite))
        result["dice_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else None
