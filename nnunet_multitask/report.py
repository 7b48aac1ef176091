"""Per-patient report of a prediction folder (``nnUNetv2_predict_multitask ... --report``).

Writes ``<prediction folder>/report/``:

* ``<case>.png``, one per case: the T2 slices through the tumour with the predicted segmentation
  outlined (and the reference mask when ``--seg-gt`` is given), the occlusion saliency of the
  risk over T2 when ``--saliency`` computed it (:mod:`nnunet_multitask.saliency`), the predicted
  survival curve with its spread over folds, the risk score with its percentile in the reference
  distribution (below) and the risk group, the probability of recurrence by the horizon from each
  head, the clinical values the model used (imputed ones marked) and the ``tumour_found`` flag.
  The numbers drawn are also stored in the PNG's ``Description`` text chunk (JSON), so they can be
  checked against ``predictions.csv``;
* ``index.html``, the cohort summary: every case sorted by risk (highest first) with its numbers,
  linking to the case's section and PNG on the same page; viewable from disk without a server;
* ``summary.csv``, the summary table for programs.

Numbers come from ``predictions.csv`` (never recomputed), case ids only: no patient identifier is
read or shown (``patient_mapping.csv`` is never opened).

**Risk percentile and risk group.** The reference distribution is the pooled *out-of-sample* risks
of the development patients: the trainer's final validation writes
``fold_<f>/validation/head_predictions.csv``, the patient-level predictions of fold f's
validation patients by fold f's model, which never trained on them. The folds the prediction used
are pooled. Not the training patients' own risks: a model has fitted those, so they are overfit
(spread further apart than a new patient's risk will be) and would misplace a new patient. The
percentile is the mid-rank percentage of reference risks below the case's risk; the risk group is
"high" when the risk is above the reference median (the evaluation's training-threshold rule,
``risk_score > threshold``). Caveats, stated in the report: with several folds the case's risk is
the fold mean, a little less spread than one fold's risks; the reference comes from
``checkpoint_final.pth`` with test-time mirroring. When the files are absent (benchmark variants
skip the final validation), the model was trained on fold ``all`` (no out-of-sample patients),
or the prediction used another checkpoint, the report says "percentile unavailable" with the
reason, and gives no group.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from os.path import isdir, isfile, join
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnunet_multitask.contract import DatasetContract, horizon_tag, recurrence_column, survival_column
from nnunet_multitask.prediction_artifact import (PREDICTIONS_CSV, PREDICTIONS_JSON, MultitaskPredictionError,
                                                  PredictionFormatError, PredictionRecord)
from nnunet_multitask.prediction_artifact import read_predictions as read_prediction_files
from nnunet_multitask.publish import publish_folder, staging_folder
from nnunet_multitask.saliency import DEFAULT_MAX_BLOCKS, read_saliency, saliency_for_cases

REPORT_FOLDER = "report"
SUMMARY_HTML = "index.html"
SUMMARY_CSV = "summary.csv"
SALIENCY_FOLDER = "saliency"
REFERENCE_FILE = join("validation", "head_predictions.csv")
#: the checkpoint the final validation (and so the reference distribution) was computed with
REFERENCE_CHECKPOINT = "checkpoint_final.pth"
MAX_SLICES = 4
DISCLAIMER = ("Model output for research. Not validated for clinical decisions. Case ids only, no patient "
              "identifiers.")
_SURVIVAL_COLUMN = re.compile(r"surv_prob_([0-9.]+)m")


class ReportError(MultitaskPredictionError):
    """The report cannot be made (missing predictions, images or reference masks); names the file."""


# ---------------------------------------------------------------------- reference distribution
@dataclass
class ReferenceDistribution:
    """Risks a case's risk is ranked against (module docstring); ``risks`` is None when unavailable."""
    risks: Optional[np.ndarray]
    description: str
    reason_unavailable: Optional[str] = None

    @property
    def available(self) -> bool:
        return self.risks is not None and len(self.risks) > 0

    @property
    def threshold(self) -> Optional[float]:
        """The high-risk threshold: the reference median."""
        return float(np.median(self.risks)) if self.available else None

    def percentile(self, risk: float) -> Optional[float]:
        """Mid-rank percentile (0-100) of ``risk`` among the reference risks; None when unavailable."""
        if not self.available or not np.isfinite(risk):
            return None
        below = float(np.sum(self.risks < risk))
        ties = float(np.sum(self.risks == risk))
        return 100.0 * (below + 0.5 * ties) / len(self.risks)

    def group(self, risk: float) -> Optional[str]:
        """``"high"`` when the risk is above the reference median, else ``"low"``; None when unavailable."""
        if not self.available or not np.isfinite(risk):
            return None
        return "high" if risk > self.threshold else "low"

    def record(self) -> dict:
        return {"available": self.available, "n": 0 if self.risks is None else int(len(self.risks)),
                "median": self.threshold, "description": self.description,
                "reason_unavailable": self.reason_unavailable}


def reference_distribution(model_folder: Optional[str], folds: Sequence, checkpoint: str = REFERENCE_CHECKPOINT
                           ) -> ReferenceDistribution:
    """The pooled out-of-sample validation risks of the folds a prediction used.

    Parameters
    ----------
    model_folder : str or None
        ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``.
    folds : sequence
        The folds of the prediction (``predictions.json`` ``folds``).
    checkpoint : str
        The checkpoint the prediction used; the reference was computed with
        :data:`REFERENCE_CHECKPOINT`, so another one makes it unavailable.

    Returns
    -------
    ReferenceDistribution
        With ``reason_unavailable`` set (and no risks) when it cannot be used.
    """
    folds = [str(f) for f in folds]
    description = (f"out-of-sample risks of the development patients: each fold's validation patients predicted by "
                   f"that fold's model, which never trained on them (fold_<f>/{REFERENCE_FILE}, folds "
                   f"{', '.join(folds)} pooled); not the training patients' own risks, which the model has fitted "
                   f"(overfit, spread too wide)")

    def unavailable(reason: str) -> ReferenceDistribution:
        return ReferenceDistribution(None, description, reason)

    if not model_folder or not isdir(model_folder):
        return unavailable(f"the model folder {model_folder} is not available")
    if "all" in folds:
        return unavailable("fold 'all' trains on every development patient, so no patient is out of sample to "
                           "compare with")
    if checkpoint != REFERENCE_CHECKPOINT:
        return unavailable(f"the validation risks come from {REFERENCE_CHECKPOINT}, this prediction used {checkpoint}")
    risks = []
    for f in folds:
        path = join(model_folder, f"fold_{f}", REFERENCE_FILE)
        if not isfile(path):
            return unavailable(f"{path} not found: the trainer's final validation did not run for fold {f} "
                               f"(benchmark variants skip it; or training has not finished)")
        try:
            table = pd.read_csv(path, dtype={"case_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            return unavailable(f"{path} cannot be read: {e}")
        if "risk_score" not in table.columns or table.empty:
            return unavailable(f"{path} has no risk scores")
        values = pd.to_numeric(table["risk_score"], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            return unavailable(f"{path} has risk scores that are not finite numbers")
        risks.append(values)
    return ReferenceDistribution(np.concatenate(risks), description)


# ---------------------------------------------------------------------- inputs
def read_predictions(prediction_folder: str) -> tuple:
    """(``predictions.csv`` as a frame, its :class:`~nnunet_multitask.prediction_artifact.PredictionRecord`)
    of a prediction folder."""
    for p in (join(prediction_folder, PREDICTIONS_CSV), join(prediction_folder, PREDICTIONS_JSON)):
        if not isfile(p):
            raise ReportError(f"{p} not found: the report reads a finished prediction folder")
    try:
        return read_prediction_files(prediction_folder)
    except PredictionFormatError as e:
        raise ReportError(str(e)) from None


def read_clinical_text(path: str) -> pd.DataFrame:
    """A clinical table as the user wrote it (text, indexed by ``case_id``); empty cells and
    pandas' missing-value tokens are NaN, as the predictor reads them."""
    table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    table.columns = [str(c).strip() for c in table.columns]
    for column in table.columns:
        stripped = table[column].str.strip()
        table[column] = stripped.mask(stripped == "")
    return table.set_index("case_id")


def clinical_values(case_id: str, columns: Sequence[str], table: Optional[pd.DataFrame]) -> List[dict]:
    """``[{"column", "value", "imputed"}]`` for the model's clinical columns; a missing value (or a
    missing row) is imputed by the fold's fitted transform, and marked."""
    out = []
    row = table.loc[case_id] if table is not None and case_id in table.index else None
    for c in columns:
        value = None if row is None or c not in row.index else row[c]
        missing = value is None or (not isinstance(value, str) and pd.isna(value))
        if missing:
            text = None
        elif isinstance(value, (float, np.floating)):
            text = f"{float(value):g}"
        else:
            text = str(value)
        out.append({"column": c, "value": text, "imputed": bool(missing)})
    return out


def _load_image(path: str):
    img = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(img), tuple(reversed(img.GetSpacing()))


def t2_channel(dataset_json: dict) -> tuple:
    """(channel index, name) of T2 (by name, case-insensitive); channel 0 when no channel is named T2."""
    names = {int(k): str(v) for k, v in dataset_json.get("channel_names", {}).items()}
    for k in sorted(names):
        if names[k].strip().casefold() == "t2":
            return k, names[k]
    return 0, names.get(0, "channel 0")


def prediction_horizon(record: PredictionRecord) -> float:
    """The horizon (months) a prediction was made for, from its ``predictions.json``."""
    return record.horizon


def case_set(case_id: str, dataset_json: dict) -> str:
    """``internal test`` / ``external test`` from the dataset's multitask block, else ``""``."""
    if not dataset_json.get("multitask"):
        return ""
    contract = DatasetContract.from_dataset_json(dataset_json)
    if case_id in contract.internal_test:
        return "internal test"
    if case_id in contract.external_test:
        return "external test"
    return ""


def check_report_inputs(image_folder: str, seg_gt_folder: Optional[str], cases: Optional[Sequence[str]] = None,
                        ending: Optional[str] = None) -> None:
    """What the report needs, checked before a prediction starts (the CLI calls this first, and
    again with the cases to predict and their file ending once the input folder was checked)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ReportError(f"--report needs matplotlib: {e}") from None
    if not isdir(image_folder):
        raise ReportError(f"--report: image folder not found: {image_folder}")
    if seg_gt_folder is not None and not isdir(seg_gt_folder):
        raise ReportError(f"--seg-gt: folder not found: {seg_gt_folder}")
    if seg_gt_folder is not None and cases is not None and ending is not None and \
            not any(isfile(join(seg_gt_folder, c + ending)) for c in cases):
        raise ReportError(f"--seg-gt {seg_gt_folder}: holds no reference mask <case>{ending} of any case to "
                          f"predict (e.g. {cases[0]}{ending}); check the folder, or leave --seg-gt out")


# ---------------------------------------------------------------------- numbers of one case
def _num(value) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def survival_times_in(columns: Sequence[str]) -> List[float]:
    """The times t of the ``surv_prob_<t>m`` columns (not their ``_sd``), ascending."""
    times = [float(m.group(1)) for c in columns if (m := _SURVIVAL_COLUMN.fullmatch(c))]
    return sorted(times)


def case_numbers(row: pd.Series, meta: PredictionRecord, reference: ReferenceDistribution, clinical: List[dict],
                 dataset_json: dict) -> dict:
    """Every number the report shows for one case, from its ``predictions.csv`` row."""
    horizon = prediction_horizon(meta)
    rec, surv_h = recurrence_column(horizon), survival_column(horizon)
    risk = _num(row["risk_score"])
    s_h = _num(row.get(surv_h))
    numbers = {
        "case_id": str(row["case_id"]), "set": case_set(str(row["case_id"]), dataset_json),
        "horizon_months": horizon,
        "risk_score": risk, "risk_score_sd": _num(row.get("risk_score_sd")),
        "risk_percentile": None if risk is None else reference.percentile(risk),
        "risk_group": None if risk is None else reference.group(risk),
        "risk_threshold": reference.threshold, "reference_n": 0 if reference.risks is None else len(reference.risks),
        "percentile_unavailable_reason": None if reference.available else reference.reason_unavailable,
        # the two heads' answers to "recurrence by the horizon" (evaluation: auc_<H>m, auc_<H>m_survival_head)
        "p_recurrence_classification_head": _num(row.get(rec)), "p_recurrence_classification_head_sd": _num(
            row.get(rec + "_sd")),
        "p_recurrence_survival_head": None if s_h is None else 1.0 - s_h,
        "p_recurrence_survival_head_sd": _num(row.get(surv_h + "_sd")),
        "survival": [{"months": t, "s": _num(row.get(survival_column(t))),
                      "sd": _num(row.get(survival_column(t) + "_sd"))} for t in survival_times_in(row.index)],
        "n_folds": int(row["n_folds"]) if "n_folds" in row.index else None,
        "tumour_found": bool(row["tumour_found"]) if "tumour_found" in row.index else None,
        "clinical_imputed": bool(row["clinical_imputed"]) if "clinical_imputed" in row.index else None,
        "n_clinical_values_imputed": (int(row["n_clinical_values_imputed"])
                                      if "n_clinical_values_imputed" in row.index else None),
        "clinical": clinical,
    }
    for column in ("series_available", "series_used"):  # the MRI series the case was predicted with
        if column in row.index:
            numbers["series"] = None if pd.isna(row[column]) else str(row[column])
    return numbers


# ---------------------------------------------------------------------- figure of one case
def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pm(v: Optional[float], sd: Optional[float], digits: int = 3) -> str:
    return _fmt(v, digits) + ("" if sd is None else f" ± {sd:.{digits}f}")


def _ordinal(p: float) -> str:
    n = int(round(p))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def slices_through_tumour(masks: Sequence[Optional[np.ndarray]], axis: int, n_slices: int,
                          n_max: int = MAX_SLICES) -> List[int]:
    """Up to ``n_max`` slice indices along ``axis`` spread over the tumour (union of the masks),
    including the slice of largest tumour area; the middle one of ``n_slices`` when no mask has tumour."""
    union = None
    for m in masks:
        if m is not None:
            union = m > 0 if union is None else union | (m > 0)
    if union is None or not union.any():
        return [n_slices // 2]
    other = tuple(a for a in range(union.ndim) if a != axis)
    area = union.sum(axis=other)
    idx = np.flatnonzero(area)
    chosen = set(np.unique(np.round(np.linspace(idx[0], idx[-1], min(n_max, len(idx)))).astype(int)).tolist())
    chosen.add(int(np.argmax(area)))
    while len(chosen) > n_max:  # keep the largest slice, drop the one closest to it
        biggest = int(np.argmax(area))
        chosen.remove(min((c for c in chosen if c != biggest), key=lambda c: abs(c - biggest)))
    return sorted(chosen)


def _crop_box(masks: Sequence[Optional[np.ndarray]], axis: int, shape: tuple) -> tuple:
    """In-plane window around the tumour (30 % margin, at least 8 voxels); the whole plane without tumour."""
    plane_axes = [a for a in range(len(shape)) if a != axis]
    union = np.zeros(shape, dtype=bool)
    for m in masks:
        if m is not None:
            union |= m > 0
    if not union.any():
        return tuple(slice(0, shape[a]) for a in plane_axes)
    box = []
    for a in plane_axes:
        idx = np.flatnonzero(union.any(axis=tuple(b for b in range(len(shape)) if b != a)))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        margin = max(8, int(0.3 * (hi - lo)))
        box.append(slice(max(0, lo - margin), min(shape[a], hi + margin)))
    return tuple(box)


def plot_case(path: str, numbers: dict, t2: np.ndarray, spacing: tuple, t2_name: str, prediction: Optional[np.ndarray],
              reference_mask: Optional[np.ndarray], saliency: Optional[dict], reference: ReferenceDistribution,
              meta: PredictionRecord, notes: Sequence[str] = ()) -> None:
    """Draw one case's page (module docstring) into ``path`` (PNG, numbers in its Description chunk)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    axis = int(np.argmax(spacing))  # slices across the thickest spacing (axial for an anisotropic T2)
    masks = [prediction, reference_mask]
    chosen = slices_through_tumour(masks, axis, t2.shape[axis])
    box = _crop_box(masks, axis, t2.shape)
    plane_spacing = [s for a, s in enumerate(spacing) if a != axis]
    aspect = plane_spacing[0] / plane_spacing[1]
    sal_values = saliency.get("values") if saliency else None
    rows_img = 2 if sal_values is not None else 1
    fig = plt.figure(figsize=(16, 4.0 * rows_img + 4.6))
    grid = fig.add_gridspec(rows_img + 1, MAX_SLICES, height_ratios=[4.0] * rows_img + [4.6], hspace=0.35, wspace=0.25)

    def plane(volume, index):
        return np.take(volume, index, axis=axis)[box]

    plane_axes = [a for a in range(t2.ndim) if a != axis]
    window = t2[tuple(slice(None) if a == axis else box[plane_axes.index(a)] for a in range(t2.ndim))]
    vmin, vmax = np.percentile(window, [1, 99]) if window.size else (0, 1)
    sal_max = None
    if sal_values is not None:
        finite = np.abs(sal_values[np.isfinite(sal_values)])
        sal_max = float(finite.max()) if finite.size and finite.max() > 0 else 1e-12
    for i, index in enumerate(chosen):
        for r in range(rows_img):
            ax = fig.add_subplot(grid[r, i])
            ax.imshow(plane(t2, index), cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            if r == 1:
                s = plane(sal_values, index)
                shown = np.ma.masked_where(~np.isfinite(s) | (s == 0), s)
                im = ax.imshow(shown, cmap="RdBu_r", vmin=-sal_max, vmax=sal_max, alpha=0.65, aspect=aspect,
                               interpolation="nearest")
                if i == len(chosen) - 1:
                    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
                    cb.set_label("risk - risk with block occluded", fontsize=8)
            if prediction is not None and plane(prediction, index).any():
                ax.contour(plane(prediction, index) > 0, levels=[0.5], colors="red", linewidths=1.2)
            if reference_mask is not None and plane(reference_mask, index).any():
                ax.contour(plane(reference_mask, index) > 0, levels=[0.5], colors="cyan", linewidths=1.0,
                           linestyles="dashed")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{t2_name}, slice {index}" + (" (saliency)" if r == 1 else ""), fontsize=9)
    handles = [Line2D([], [], color="red", label="predicted tumour")]
    if reference_mask is not None:
        handles.append(Line2D([], [], color="cyan", linestyle="dashed", label="reference mask"))
    fig.axes[0].legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.7)

    _plot_survival(fig.add_subplot(grid[rows_img, 0]), numbers)
    _plot_reference(fig.add_subplot(grid[rows_img, 1]), numbers, reference)
    ax = fig.add_subplot(grid[rows_img, 2])
    ax.axis("off")
    ax.text(0, 1, _numbers_text(numbers, saliency, notes), family="monospace", fontsize=8, va="top",
            transform=ax.transAxes)
    ax = fig.add_subplot(grid[rows_img, 3])
    ax.axis("off")
    ax.text(0, 1, _clinical_text(numbers, meta), family="monospace", fontsize=8, va="top", transform=ax.transAxes)

    folds = ", ".join(meta.fold_list)
    title = (f"Case {numbers['case_id']}" + (f" ({numbers['set']})" if numbers["set"] else "")
             + f" - {meta.trainer or '?'}, fold(s) {folds}, {meta.checkpoint or '?'}")
    fig.suptitle(title, fontsize=13, x=0.01, ha="left")
    fig.text(0.01, 0.005, DISCLAIMER, fontsize=7, color="0.4")
    fig.savefig(path, dpi=80, metadata={"Title": title, "Description": json.dumps(numbers), "Disclaimer": DISCLAIMER,
                                        "Software": "nnunet_multitask.report"})
    plt.close(fig)


def _plot_survival(ax, numbers: dict) -> None:
    points = [p for p in numbers["survival"] if p["s"] is not None]
    horizon = numbers["horizon_months"]
    if not points:
        ax.axis("off")
        ax.text(0, 0.9, "Survival curve: not available\n(Cox survival head: a risk\nscore only, no survival "
                        "probabilities)", fontsize=9, va="top", transform=ax.transAxes)
        return
    t = np.array([0.0] + [p["months"] for p in points])
    s = np.array([1.0] + [p["s"] for p in points])
    sd = np.array([0.0] + [p["sd"] if p["sd"] is not None else 0.0 for p in points])
    spread = any(p["sd"] is not None for p in points)
    ax.plot(t, s, "o-", color="C0", label="predicted S(t)" + (" (fold mean)" if spread else
                                                               " (one fold: no spread)"))
    if spread:
        ax.fill_between(t, np.clip(s - sd, 0, 1), np.clip(s + sd, 0, 1), color="C0", alpha=0.25,
                        label="± sd over folds")
    ax.axvline(horizon, color="0.5", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("months")
    ax.set_ylabel("recurrence-free survival")
    ax.set_title("Survival head: S(t) at the written times", fontsize=9)
    ax.legend(fontsize=7, loc="lower left" if s[-1] > 0.3 else "upper right")


def _plot_reference(ax, numbers: dict, reference: ReferenceDistribution) -> None:
    risk = numbers["risk_score"]
    if not reference.available:
        ax.axis("off")
        ax.text(0, 0.95, "Risk percentile: percentile unavailable\n\n" + textwrap.fill(
            str(reference.reason_unavailable), 48), fontsize=8, va="top", transform=ax.transAxes)
        return
    ax.hist(reference.risks, bins=min(20, max(5, len(reference.risks) // 2)), color="0.75", edgecolor="0.5")
    ax.axvline(reference.threshold, color="0.3", linestyle="--", linewidth=1, label="median (high-risk threshold)")
    if risk is not None:
        ax.axvline(risk, color="red", linewidth=2, label=f"this case ({_ordinal(numbers['risk_percentile'])} pct)")
    ax.set_xlabel("risk score")
    ax.set_ylabel("reference patients")
    ax.set_title(f"Reference: {len(reference.risks)} out-of-sample validation risks", fontsize=9)
    ax.legend(fontsize=7)


def _numbers_text(numbers: dict, saliency: Optional[dict], notes: Sequence[str]) -> str:
    h = horizon_tag(numbers["horizon_months"])
    n_folds = numbers["n_folds"]
    spread = "± sd over folds" if n_folds and n_folds > 1 else "one fold: no spread"
    lines = [f"Risk score (survival head)  {_pm(numbers['risk_score'], numbers['risk_score_sd'])}", f"  ({spread})"]
    if numbers["risk_percentile"] is not None:
        lines.append(f"Percentile in reference    {_ordinal(numbers['risk_percentile'])} "
                     f"(n = {numbers['reference_n']})")
        lines.append(f"Risk group                 {numbers['risk_group'].upper()} "
                     f"({'above' if numbers['risk_group'] == 'high' else 'not above'} median "
                     f"{numbers['risk_threshold']:.3f})")
    else:
        lines.append("Percentile in reference    percentile unavailable")
        lines.append("Risk group                 unavailable (no reference)")
    lines += ["", f"P(recurrence by {h} months)",
              "  classification head      " + _pm(numbers["p_recurrence_classification_head"],
                                                   numbers["p_recurrence_classification_head_sd"]),
              f"  survival head, 1-S({h})   "
              + (_pm(numbers["p_recurrence_survival_head"], numbers["p_recurrence_survival_head_sd"])
                 if numbers["p_recurrence_survival_head"] is not None else "n/a (Cox head)"),
              "", "Tumour found               " + ("yes" if numbers["tumour_found"] else
                                                   "NO: the heads saw an (almost)\n  empty segmentation")]
    if numbers.get("series") is not None:
        lines.append(f"MRI series                 {numbers['series']}")
    if saliency is not None:
        rec = saliency.get("record", {})
        if rec.get("unavailable"):
            lines += ["", "Saliency: unavailable", textwrap.fill(rec["unavailable"], 46)]
        else:
            lines += ["", f"Saliency: occlusion, {rec.get('n_blocks')} blocks,",
                      f"  {rec.get('n_forward_passes')} predictions, {rec.get('seconds', 0):.1f} s;",
                      "  red: region raises the risk"]
    for note in notes:
        lines += ["", textwrap.fill(note, 46)]
    return "\n".join(lines)


def _clinical_text(numbers: dict, meta: PredictionRecord) -> str:
    entries = numbers["clinical"]
    if not meta.model_columns:
        return "Clinical values: none\n(this model uses no clinical data)"
    lines = ["Clinical values used" + (" (whole row imputed)" if numbers["clinical_imputed"] else "")]
    for e in entries:
        value = "-- imputed" if e["imputed"] else e["value"]
        lines.append(f"  {e['column']:<16} {value}{'  *' if e['imputed'] else ''}")
    n_marked = sum(e["imputed"] for e in entries)
    lines.append("")
    lines.append("* missing: imputed with the training fold's\n  fitted value (median / most frequent)")
    if numbers["n_clinical_values_imputed"] is not None and numbers["n_clinical_values_imputed"] != n_marked:
        lines.append(f"predictions.csv counts {numbers['n_clinical_values_imputed']} imputed\nvalue(s); the table read "
                     f"here marks {n_marked}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- summary page
_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1300px}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td.l,th.l{text-align:left}
tr.high td{background:#fde8e8}.note{color:#555;font-size:90%}.warn{color:#a00}img{max-width:100%}"""


def summary_html(rows: List[dict], meta: PredictionRecord, reference: ReferenceDistribution,
                 prediction_folder: str) -> str:
    """The cohort summary page: cases sorted by risk (``rows`` already sorted), each linking to its
    section (the PNG, on the same page) and to the PNG file itself."""
    e = html.escape
    h = horizon_tag(prediction_horizon(meta))
    sha = meta.checkpoint_sha256 or {}
    model = (f"{e(str(meta.trainer))}, plans {e(str(meta.plans))}, configuration "
             f"{e(str(meta.configuration))}, fold(s) {e(', '.join(meta.fold_list))}, "
             f"{e(str(meta.checkpoint))} (SHA-256 "
             + e(", ".join(f"fold {k}: {str(v)[:12]}" for k, v in sha.items())) + ")")
    if reference.available:
        ref = (f"Risk percentiles are ranked among {len(reference.risks)} reference risks: {e(reference.description)}. "
               f"Risk group: high when the risk score is above the reference median ({reference.threshold:.4g}). "
               f"With several folds a case's risk is the fold mean, slightly less spread than one fold's risks.")
    else:
        ref = (f"<span class='warn'>Percentile unavailable</span>: {e(str(reference.reason_unavailable))}. No risk "
               f"group is given (it needs the reference median). Reference that would be used: "
               f"{e(reference.description)}.")
    head = ("<tr><th>rank</th><th class='l'>case</th><th class='l'>set</th><th>risk score</th><th>percentile</th>"
            f"<th class='l'>risk group</th><th>P(recurrence by {h} mo),<br>classification head</th>"
            f"<th>1 - S({h} mo),<br>survival head</th><th class='l'>tumour found</th>"
            "<th>clinical values imputed</th></tr>")
    body = []
    for r in rows:
        n = r["numbers"]
        attrs = " ".join(f'data-{k.replace("_", "-")}="{e(repr(v) if isinstance(v, float) else str(v))}"'
                         for k, v in (("case_id", n["case_id"]), ("risk_score", n["risk_score"]),
                                      ("risk_percentile", n["risk_percentile"]),
                                      ("p_recurrence_classification_head", n["p_recurrence_classification_head"]),
                                      ("p_recurrence_survival_head", n["p_recurrence_survival_head"]),
                                      ("tumour_found", n["tumour_found"])))
        group = n["risk_group"] or "unavailable"
        body.append(
            f"<tr class='{e(group)}' {attrs}><td>{r['rank']}</td>"
            f"<td class='l'><a href='#case-{e(n['case_id'])}'>{e(n['case_id'])}</a> "
            f"(<a href='{e(r['png'])}'>png</a>)</td><td class='l'>{e(n['set'])}</td>"
            f"<td>{_pm(n['risk_score'], n['risk_score_sd'])}</td>"
            f"<td>{'unavailable' if n['risk_percentile'] is None else _ordinal(n['risk_percentile'])}</td>"
            f"<td class='l'>{e(group)}</td>"
            f"<td>{_pm(n['p_recurrence_classification_head'], n['p_recurrence_classification_head_sd'])}</td>"
            f"<td>{_pm(n['p_recurrence_survival_head'], n['p_recurrence_survival_head_sd'])}</td>"
            f"<td class='l'>{'yes' if n['tumour_found'] else '<b class=warn>NO</b>'}</td>"
            f"<td>{n['n_clinical_values_imputed'] if n['n_clinical_values_imputed'] is not None else ''}"
            f"{' (whole row)' if n['clinical_imputed'] else ''}</td></tr>")
    sections = [f"<h2 id='case-{e(r['numbers']['case_id'])}'>{r['rank']}. {e(r['numbers']['case_id'])}</h2>"
                f"<p><a href='#top'>back to the table</a> | <a href='{e(r['png'])}'>open the PNG</a></p>"
                f"<img src='{e(r['png'])}' alt='report of case {e(r['numbers']['case_id'])}'>" for r in rows]
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Per-patient report ({len(rows)} "
            f"cases)</title><style>{_CSS}</style></head><body>\n<h1 id='top'>Per-patient report: {len(rows)} cases, "
            f"sorted by risk</h1>\n<p>Model: {model}.<br>Predictions: {e(os.path.abspath(prediction_folder))} "
            f"(created {e(str(meta.created))}).</p>\n<p class='note'>{ref}</p>\n"
            f"<p class='note'>Risk score: survival head (higher = higher risk; rank patients with it). "
            f"P(recurrence by {h} months): the classification head, trained on exactly that question; 1 - S({h}): "
            f"the survival head's answer to it (the two heads are not forced to agree). ± is the sample sd over "
            f"folds. {e(DISCLAIMER)}</p>\n<table>\n{head}\n" + "\n".join(body) + "\n</table>\n"
            + "\n".join(sections) + "\n</body></html>\n")


# ---------------------------------------------------------------------- whole report
def _mask_on_grid(path: str, shape: tuple, what: str, notes: List[str]) -> Optional[np.ndarray]:
    """A mask to outline, or None with a note (absent, or not on the T2 grid)."""
    if not isfile(path):
        notes.append(f"no {what} {os.path.basename(path)} in {os.path.dirname(path)}")
        return None
    mask = _load_image(path)[0]
    if mask.shape != shape:
        notes.append(f"{what} {mask.shape} not on the T2 grid {shape}: not drawn")
        return None
    return mask


def _saliency_of_this_prediction(folder: Optional[str], case: str, risk: Optional[float], shape: tuple,
                                 notes: List[str]) -> Optional[dict]:
    """The case's saliency map when it belongs to this prediction (its unoccluded risk is the
    risk of ``predictions.csv``: a map left by an earlier prediction into the folder is not drawn)."""
    sal = read_saliency(folder, case)
    if sal is None or sal.get("values") is None:
        return sal
    base = _num(sal["record"].get("baseline_risk"))
    if base is None or risk is None or abs(base - risk) > 1e-5 * (1 + abs(risk)):
        notes.append("the saliency map in the folder belongs to another prediction (its unoccluded risk differs): "
                     "not drawn")
        return None
    if sal["values"].shape != shape:
        notes.append("saliency map not on the T2 grid: not drawn")
        return None
    return sal


def write_report(prediction_folder: str, image_folder: str, seg_gt_folder: Optional[str] = None,
                 clinical: Optional[pd.DataFrame | str] = None, reference: Optional[ReferenceDistribution] = None,
                 saliency_folder: Optional[str] = None, log=print) -> str:
    """Write ``<prediction_folder>/report/`` (module docstring) and return the summary page's path.

    Parameters
    ----------
    prediction_folder : str
        A finished ``nnUNetv2_predict_multitask`` output (or a ``--merge`` of parts): segmentations,
        ``predictions.csv``, ``predictions.json``, nnU-Net's ``dataset.json``.
    image_folder : str
        The input images (``<case>_<XXXX><ending>``); the T2 channel is drawn.
    seg_gt_folder : str, optional
        Reference masks ``<case><ending>``; a case without one is drawn without (and says so).
    clinical : DataFrame or str, optional
        The clinical table used (text frame indexed by case id, or CSV path); default: the path
        ``predictions.json`` records.
    reference : ReferenceDistribution, optional
        Default: :func:`reference_distribution` of the model folder and folds in ``predictions.json``.
    saliency_folder : str, optional
        Default: ``<prediction_folder>/saliency`` when it exists.

    The report is written into a hidden staging folder and moved into place when complete (an
    earlier report there is replaced).
    """
    table, meta = read_predictions(prediction_folder)
    ds_path = join(prediction_folder, "dataset.json")
    if not isfile(ds_path) and meta.model_folder:
        ds_path = join(meta.model_folder, "dataset.json")
    if not isfile(ds_path):
        raise ReportError(f"{prediction_folder}: no dataset.json (nnU-Net writes it beside the segmentations)")
    with open(ds_path) as f:
        dataset_json = json.load(f)
    ending = dataset_json.get("file_ending", ".nii.gz")
    channel, channel_name = t2_channel(dataset_json)
    check_report_inputs(image_folder, seg_gt_folder)
    if reference is None:
        reference = reference_distribution(meta.model_folder, meta.fold_list,
                                           meta.checkpoint or REFERENCE_CHECKPOINT)
    if clinical is None and meta.clinical_table and isfile(str(meta.clinical_table)):
        clinical = str(meta.clinical_table)
    clinical_table = read_clinical_text(clinical) if isinstance(clinical, str) else clinical
    clinical_columns = meta.model_columns
    if saliency_folder is None and isdir(join(prediction_folder, SALIENCY_FOLDER)):
        saliency_folder = join(prediction_folder, SALIENCY_FOLDER)
    if seg_gt_folder is not None and not any(isfile(join(seg_gt_folder, c + ending)) for c in table["case_id"]):
        raise ReportError(f"--seg-gt {seg_gt_folder}: holds no reference mask of any predicted case "
                          f"(<case>{ending})")

    rows = []
    for _, row in table.iterrows():
        case = str(row["case_id"])
        numbers = case_numbers(row, meta, reference,
                               clinical_values(case, clinical_columns, clinical_table), dataset_json)
        rows.append({"numbers": numbers, "png": f"{case}.png"})
    rows.sort(key=lambda r: (-(r["numbers"]["risk_score"] if r["numbers"]["risk_score"] is not None else -np.inf),
                             r["numbers"]["case_id"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank

    with staging_folder(prediction_folder, "report_") as staging:
        for r in rows:
            case = r["numbers"]["case_id"]
            t2_path = join(image_folder, f"{case}_{channel:04d}{ending}")
            if not isfile(t2_path):
                raise ReportError(f"case {case}: {t2_path} not found (the report draws the {channel_name} channel)")
            t2, spacing = _load_image(t2_path)
            notes: List[str] = []
            pred = _mask_on_grid(join(prediction_folder, case + ending), t2.shape, "predicted segmentation", notes)
            gt = None if seg_gt_folder is None else \
                _mask_on_grid(join(seg_gt_folder, case + ending), t2.shape, "reference mask", notes)
            sal = _saliency_of_this_prediction(saliency_folder, case, r["numbers"]["risk_score"], t2.shape, notes)
            plot_case(join(staging, r["png"]), r["numbers"], t2, spacing, channel_name, pred, gt, sal, reference,
                      meta, notes)
        summary = pd.DataFrame([{"rank": r["rank"], **{k: v for k, v in r["numbers"].items()
                                                       if k not in ("clinical", "survival")}, "png": r["png"]}
                                for r in rows])
        summary.to_csv(join(staging, SUMMARY_CSV), index=False)
        with open(join(staging, "reference.json"), "w") as f:
            json.dump(reference.record(), f, indent=2)
        with open(join(staging, SUMMARY_HTML), "w") as f:
            f.write(summary_html(rows, meta, reference, prediction_folder))
        publish_folder(staging, join(prediction_folder, REPORT_FOLDER))
    path = join(prediction_folder, REPORT_FOLDER, SUMMARY_HTML)
    log(f"Per-patient report of {len(rows)} cases: open {os.path.abspath(path)}")
    return path


def report_for_prediction(predictor, input_folder: str, output_folder: str, table: pd.DataFrame,
                          seg_gt_folder: Optional[str] = None, saliency: bool = False,
                          saliency_blocks: Optional[int] = None, log=print) -> str:
    """The report right after :func:`~nnunet_multitask.predictor.predict_folder` (``--report``),
    with the occlusion saliency first when asked (``--saliency``).

    The saliency maps are computed into a hidden staging folder and replace ``<output>/saliency``
    when every case is done; the report then draws them. Returns the summary page's path.
    """
    saliency_folder = None
    if saliency:
        risks = dict(zip(table["case_id"].astype(str), table["risk_score"].astype(float)))
        with staging_folder(output_folder, "saliency_") as staging:
            saliency_for_cases(predictor, input_folder, list(risks), risks, staging,
                               saliency_blocks or DEFAULT_MAX_BLOCKS, log=log)
            saliency_folder = join(output_folder, SALIENCY_FOLDER)
            publish_folder(staging, saliency_folder)
    source = predictor.clinical_table_source
    clinical = source if source and isfile(str(source)) else predictor.clinical_table
    return write_report(output_folder, input_folder, seg_gt_folder, clinical=clinical,
                        saliency_folder=saliency_folder, log=log)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m nnunet_multitask.report``: the report of an existing prediction folder (e.g. a
    ``--merge`` of parts, or a run without ``--report``). Saliency maps are drawn when the folder has
    them (``--saliency`` at prediction time)."""
    parser = argparse.ArgumentParser(prog="python -m nnunet_multitask.report", description=main.__doc__)
    parser.add_argument("-p", "--predictions", required=True, help="prediction folder (predictions.csv, segmentations)")
    parser.add_argument("-i", required=True, help="the input image folder of the prediction")
    parser.add_argument("--seg-gt", default=None, help="reference masks <case><ending>")
    parser.add_argument("--clinical", default=None, help="clinical CSV used (default: the one predictions.json names)")
    args = parser.parse_args(argv)
    try:
        write_report(args.predictions, args.i, args.seg_gt, args.clinical)
    except (ReportError, OSError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
