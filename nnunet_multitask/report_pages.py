"""The pages of the per-patient report: one case's PNG (:func:`plot_case`) and the cohort summary
page (:func:`summary_html`), drawn from the numbers :mod:`nnunet_multitask.report` computed from
``predictions.csv`` (never recomputed).
"""
from __future__ import annotations

import html
import json
import os
import textwrap
from typing import List, Optional, Sequence

import numpy as np

from nnunet_multitask.contract import horizon_tag
from nnunet_multitask.prediction_artifact import PredictionRecord
from nnunet_multitask.report_reference import ReferenceDistribution

MAX_SLICES = 4
DISCLAIMER = ("Model output for research. Not validated for clinical decisions. Case ids only, no patient "
              "identifiers.")


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
    h = horizon_tag(meta.horizon)
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
