"""PNG figures of the evaluation report (matplotlib, Agg backend, no display needed): Kaplan-Meier by
risk group with numbers at risk, ROC and calibration at the horizon; :func:`write_figures` draws them all."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from evaluation.metrics import number_at_risk  # noqa: E402
from evaluation.report import file_part  # noqa: E402

GROUP_COLOURS = {"low risk": "tab:blue", "high risk": "tab:red"}


def plot_km_by_risk_group(path: Path, curves: dict, title: str, risk_ticks: Sequence[float],
                          group_times: dict, logrank_p: float | None) -> None:
    """Kaplan-Meier curves per risk group with the numbers at risk under the axes.

    Parameters
    ----------
    path : Path
        PNG file to write.
    curves : dict
        ``{group name: (km_time, km_survival)}`` as returned by ``kaplan_meier_estimator``.
    title : str
    risk_ticks : sequence of float
        Times (months) at which the numbers at risk are printed.
    group_times : dict
        ``{group name: follow-up times of the group}`` for the numbers at risk.
    logrank_p : float or None
        Printed in the plot when given.
    """
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for group, (km_time, km_surv) in curves.items():
        # Start every curve at (0, 1) so a group whose first event is late is drawn correctly.
        ax.step(np.concatenate([[0.0], km_time]), np.concatenate([[1.0], km_surv]), where="post",
                color=GROUP_COLOURS.get(group), label=f"{group} (n={len(group_times[group])})")
    ax.set_ylim(0, 1.05)
    last_time = max(float(np.max(times)) for times in group_times.values())
    ax.set_xlim(0, max(risk_ticks[-1], last_time, 1.0))
    ax.set_xticks(list(risk_ticks))
    ax.set_xlabel("Months")
    ax.set_ylabel("Disease-free survival")
    ax.set_title(title)
    if logrank_p is not None:
        ax.text(0.02, 0.04, f"log-rank p = {logrank_p:.3g}", transform=ax.transAxes)
    ax.legend(loc="upper right")
    # Numbers-at-risk table: one text row per group, in data x-coordinates, below the axis.
    fig.subplots_adjust(left=0.20, bottom=0.30)
    transform = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(-0.06, -0.20, "At risk", transform=ax.transAxes, ha="right", fontsize=8, weight="bold")
    for row, (group, times) in enumerate(group_times.items()):
        y = -0.27 - 0.07 * row
        ax.text(-0.06, y, group, transform=ax.transAxes, ha="right", fontsize=8,
                color=GROUP_COLOURS.get(group))
        for tick, count in zip(risk_ticks, number_at_risk(times, risk_ticks), strict=True):
            ax.text(tick, y, str(count), transform=transform, ha="center", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(path: Path, roc_curves: dict, title: str) -> None:
    """ROC curves of several models on one set.

    ``roc_curves`` maps a legend label to ``(false_positive_rate, true_positive_rate)``.
    """
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    for label, (fpr, tpr) in roc_curves.items():
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_calibration(path: Path, calibration: dict, title: str, observed_label: str) -> None:
    """Calibration plot: mean predicted probability vs observed risk per quantile bin.

    ``calibration`` maps a legend label to a list of bins, each a dict with ``mean_predicted``
    and ``observed`` (NaN observed bins are skipped).
    """
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    for label, bins in calibration.items():
        predicted = np.array([b["mean_predicted"] for b in bins], dtype=float)
        observed = np.array([np.nan if b["observed"] is None else b["observed"] for b in bins],
                            dtype=float)
        keep = np.isfinite(observed)
        ax.plot(predicted[keep], observed[keep], marker="o", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Predicted probability of recurrence")
    ax.set_ylabel(observed_label)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_figures(output_dir: Path, report: dict, plot_data: dict, names: Sequence[str], set_order: Sequence[str],
                  tag: str) -> list[str]:
    """Every figure of the report into ``output_dir``: Kaplan-Meier by risk group per model and set,
    then per set the ROC and the calibration curves of all models at the horizon.

    Parameters
    ----------
    report : dict
        metrics.json content so far (``models`` gives the thresholds, AUCs and log-rank p).
    plot_data : dict
        ``{(model, set): plots}`` as :func:`evaluation.set_metrics.evaluate_set` returns them.
    names, set_order : sequence of str
        Models and sets in report order.
    tag : str
        The horizon as written in column names (``"36"``).

    Returns
    -------
    list of str
        The file names written, in order.
    """
    written = []
    for (name, set_name), plots in plot_data.items():
        result = report["models"][name][set_name]
        max_time = max(float(np.max(t)) for t in plots["km_times"].values())
        ticks = list(np.arange(0, max_time + 1e-9, 12.0 if max_time > 24 else max(max_time / 4, 1.0)))
        path = output_dir / f"km_{file_part(name)}_{file_part(set_name)}.png"
        plot_km_by_risk_group(path, plots["km"], f"{name}, {set_name}: split at {result['risk_threshold']:.3g}",
                              ticks, plots["km_times"], result["logrank_p"])
        written.append(path.name)
    for set_name in set_order:
        rocs, calibrations = {}, {}
        for name in names:
            plots = plot_data.get((name, set_name))
            if plots is None:
                continue
            result = report["models"][name][set_name]
            if "roc" in plots:
                rocs[f"{name} (AUC {result[f'auc_{tag}m']:.3f})"] = plots["roc"]
            if "calibration" in plots:
                calibrations[name] = plots["calibration"]
        if rocs:
            path = output_dir / f"roc_{tag}m_{file_part(set_name)}.png"
            plot_roc(path, rocs, f"Recurrence by {tag} months, {set_name} (known status)")
            written.append(path.name)
        if calibrations:
            path = output_dir / f"calibration_{tag}m_{file_part(set_name)}.png"
            plot_calibration(path, calibrations, f"Calibration at {tag} months, {set_name}",
                             f"Observed risk (1 - KM at {tag} months)")
            written.append(path.name)
    return written
