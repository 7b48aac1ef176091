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


HEAD_TITLES = {"classification_head": "classification head, p_recurrence_{tag}m",
               "survival_head": "survival head, 1 - surv_prob_{tag}m"}


def plot_smoothed_calibration(path: Path, curves: dict, results: dict, title: str, tag: str) -> None:
    """Per head: the smoothed calibration curve (Cox on a spline of cloglog) with its bootstrap band, and
    the Kaplan-Meier risk at the horizon of quantile groups of the prediction (95% CI bars)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 5.0), squeeze=False)
    for ax, (head, plot) in zip(axes[0], curves.items(), strict=True):
        result = results[head]
        if plot["band"] is not None:
            ax.fill_between(plot["grid"], plot["band"][0], plot["band"][1], color="tab:red", alpha=0.2,
                            label="95% bootstrap band")
        ax.plot(plot["grid"], plot["curve"], color="tab:red", label="smoothed (Cox, spline of cloglog)")
        groups = [g for g in plot["groups"] if g["observed"] is not None]
        if groups:
            x = np.array([g["mean_predicted"] for g in groups])
            y = np.array([g["observed"] for g in groups])
            err = np.array([[g["observed"] - g["observed_ci"][0], g["observed_ci"][1] - g["observed"]]
                            for g in groups]).T
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o", color="tab:blue", capsize=3,
                        label=f"Kaplan-Meier, {len(plot['groups'])} groups")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"Predicted risk of recurrence by {tag} months")
        ax.set_ylabel(f"Observed risk (1 - KM at {tag} months)")
        slope, ici = result.get("slope"), result.get("ici")
        ax.set_title(f"{HEAD_TITLES[head].format(tag=tag)}\nslope {'n/a' if slope is None else f'{slope:.2f}'}, "
                     f"ICI {'n/a' if ici is None else f'{ici:.3f}'}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_decision_curve(path: Path, curve: dict, title: str) -> None:
    """Net benefit against the threshold probability: each head, treat-all, treat-none."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    thresholds = np.array(curve["thresholds"])
    styles = {"treat_all": {"color": "grey"}, "treat_none": {"color": "black", "linestyle": "--"}}
    for strategy, values in curve["net_benefit"].items():
        y = np.array([np.nan if v is None else v for v in values], dtype=float)
        label = curve.get("columns", {}).get(strategy, strategy.replace("_", " "))
        ax.plot(thresholds, y, label=label, **styles.get(strategy, {}))
    finite = [v for values in curve["net_benefit"].values() for v in values if v is not None]
    top = max(finite) if finite else 0.1
    ax.set_ylim(-0.05 * max(top, 0.1), max(top, 0.01) * 1.1)
    ax.set_xlabel("Threshold probability")
    ax.set_ylabel("Net benefit")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _horizon_figures(output_dir: Path, report: dict, plot_data: dict, tag: str) -> list[str]:
    """Smoothed calibration and decision curve per model and set."""
    written = []
    for (name, set_name), plots in plot_data.items():
        result = report["models"][name][set_name]
        stem = f"{tag}m_{file_part(name)}_{file_part(set_name)}.png"
        if plots.get("calibration_smoothed"):
            path = output_dir / f"calibration_smoothed_{stem}"
            plot_smoothed_calibration(path, plots["calibration_smoothed"], result[f"calibration_{tag}m"],
                                      f"{name}, {set_name}: calibration at {tag} months", tag)
            written.append(path.name)
        if plots.get("decision_curve"):
            path = output_dir / f"decision_curve_{stem}"
            plot_decision_curve(path, plots["decision_curve"], f"{name}, {set_name}: decision curve at {tag} months")
            written.append(path.name)
    return written


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
    return written + _horizon_figures(output_dir, report, plot_data, tag)
