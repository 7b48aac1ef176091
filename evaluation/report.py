"""The evaluation report: report.md (tables shaped like the paper's) and the metrics.json parts
that describe the run (settings, which head each column and metric comes from, strict JSON).

The figures are drawn by :mod:`evaluation.figures`.
"""
from __future__ import annotations

import re

import numpy as np

from evaluation.inputs import SURV_PROB_TIMES
from evaluation.set_metrics import CI_LEVEL, TD_AUC_TIMES, finite_or_none
from nnunet_multitask.prediction_artifact import column_sources as prediction_column_sources


def column_sources(tag: str) -> dict:
    """Which head each prediction column, and so each metric, comes from (metrics.json ``columns``)."""
    return {
        # described once, by the prediction artifact that writes them (predictions.json column_sources)
        "prediction_columns": prediction_column_sources([f"p_recurrence_{tag}m", "risk_score", "surv_prob_<t>m"]),
        "metrics": {
            "c_index, c_index_ci, uno_c, td_auc, risk groups / logrank_p": "risk_score (survival head)",
            "ibs, brier": "surv_prob_<t>m (survival head)",
            f"auc_{tag}m, auc_{tag}m_ci": f"p_recurrence_{tag}m (classification head); risk_score when a "
                                          f"file has no p_recurrence_{tag}m (per model/set: auc_{tag}m_score, "
                                          f"auc_{tag}m_head)",
            f"auc_{tag}m_survival_head, auc_{tag}m_survival_head_ci": f"1 - surv_prob_{tag}m (survival head), "
                                                                      "same known-status cases as "
                                                                      f"auc_{tag}m; null without that column",
            f"auc_{tag}m_heads_difference, auc_{tag}m_heads_delong_p": f"auc_{tag}m - auc_{tag}m_survival_head "
                                                                       "and the DeLong test of equal AUCs "
                                                                       "(paired, same cases)",
            f"heads_agreement_{tag}m": f"p_recurrence_{tag}m vs 1 - surv_prob_{tag}m over all cases of the set: "
                                       "pearson, spearman (scipy), mean_abs_diff, mean_diff "
                                       "(classification - survival), n",
            "calibration": f"p_recurrence_{tag}m (classification head)",
            f"calibration_{tag}m": f"both heads: classification_head = p_recurrence_{tag}m, survival_head = "
                                   f"1 - surv_prob_{tag}m",
            f"decision_curve_{tag}m": f"both heads' risks by {tag} months, treat-all, treat-none",
            f"auc_{tag}m_ipcw, auc_{tag}m_survival_head_ipcw": f"p_recurrence_{tag}m and 1 - surv_prob_{tag}m, "
                                                               "every case (IPCW)",
            "by_centre, by_subgroup": "risk_score (C-index), p_recurrence (AUC), both heads (calibration)",
            "comparisons delong_p": f"p_recurrence_{tag}m of both models (risk_score when either lacks it)",
        },
    }


def settings(horizon: float, n_bootstrap: int, seed: int, uno_tau: float | None, outcomes_source: str) -> dict:
    """metrics.json ``settings``: the options and how every metric and interval is computed."""
    import sklearn
    import sksurv

    return {
        "horizon_months": horizon, "bootstrap_resamples": n_bootstrap, "seed": seed, "ci_level": CI_LEVEL,
        "outcomes_source": outcomes_source,
        "c_index_ci_method": ("percentile bootstrap: cases resampled with replacement within the set "
                              "(numpy default_rng(seed)); the same resamples for every model with the "
                              "same cases, so model differences are paired; the bootstrap p of a difference is "
                              "2 * (k + 1) / (B + 1), k = resamples on the smaller side of 0"),
        "auc_ci_method": "DeLong variance (fast midrank algorithm, Sun & Xu 2014), normal approximation, "
                         "clipped to [0, 1]",
        "auc_population": "cases with known status at the horizon: event at or before it (1) or followed "
                          "beyond it without event (0); censored earlier = excluded and counted; the same "
                          "cases for the classification-head and the survival-head AUC",
        "heads_agreement": "scipy.stats pearsonr / spearmanr and the mean absolute difference of "
                           "p_recurrence_<H>m and 1 - surv_prob_<H>m over every case of the set",
        "uno_c": ("sksurv concordance_index_ipcw; censoring distribution estimated from the evaluated set "
                  f"itself; truncation tau = {horizon if uno_tau is None else uno_tau:g} months"),
        "td_auc": f"sksurv cumulative_dynamic_auc of risk_score at {list(TD_AUC_TIMES)} months, "
                  "IPCW from the evaluated set, only inside its follow-up range",
        "ibs": f"sksurv integrated_brier_score over the surv_prob_<t>m times ({list(SURV_PROB_TIMES)}) "
               "inside the set's follow-up range, IPCW from the evaluated set",
        "risk_groups": "high risk = risk_score > threshold (median of --train-predictions when given, else of "
                       "the evaluated set); Kaplan-Meier and log-rank (sksurv compare_survival)",
        "calibration": "quantile bins of p_recurrence; observed = 1 - Kaplan-Meier survival at the horizon",
        "dice": "per case on label > 0; both-empty cases are undefined and counted, not averaged",
        "versions": {"scikit-survival": sksurv.__version__, "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__},
    }


def json_ready(value: object) -> object:
    """NaN/inf -> None and numpy scalars -> Python, recursively (metrics.json is strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def file_part(text: str) -> str:
    """Model / set name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_ci(value: float | None, ci: list | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f} ({ci[0]:.{digits}f}, {ci[1]:.{digits}f})" if ci else f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _rows(report: dict):
    """(model, set, result) in report order."""
    for name, sets in report["models"].items():
        for set_name, result in sets.items():
            yield name, set_name, result


def _results_table(report: dict, tag: str) -> list[str]:
    """The paper-shaped table (rows model x set) and its legend."""
    settings = report["settings"]
    lines = ["# Recurrence / DFS evaluation", "",
             f"Horizon {tag} months; {settings['bootstrap_resamples']} bootstrap resamples, seed {settings['seed']}; "
             f"outcomes: {settings['outcomes_source']}.", "",
             f"| Model | Set | n | Events | C-index (95% CI) | AUC at {tag} mo (95% CI) | Uno's C | IBS | Dice | "
             "Log-rank p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, set_name, r in _rows(report):
        lines.append(f"| {name} | {set_name} | {r['n']} | {r['events']} | "
                     f"{_fmt_ci(r['c_index'], r['c_index_ci'])} | {_fmt_ci(r[f'auc_{tag}m'], r[f'auc_{tag}m_ci'])} | "
                     f"{_fmt(r['uno_c'], 2)} | {_fmt(r['ibs'], 3)} | {_fmt(r['dice_mean'], 2)} | "
                     f"{_fmt_p(r['logrank_p'])} |")
    return lines + ["", "C-index: Harrell's (sksurv), percentile bootstrap CI, of risk_score (survival head). AUC: "
                    f"p_recurrence_{tag}m (classification head; risk_score when a file has none), cases with known "
                    "status at the horizon, DeLong CI; the survival head's AUC is in the next section. Uno's C: IPCW "
                    "with the censoring distribution estimated from the evaluated set "
                    "itself, truncated at tau (see metrics.json `uno_c_tau`). IBS: integrated Brier score over the "
                    "given survival-probability times. Dice: mean over cases. Log-rank: high vs low risk "
                    "(threshold and its source in metrics.json).", ""]


def _heads_table(report: dict, tag: str) -> list[str]:
    """Both heads' AUCs at the horizon, their DeLong p and the agreement of the two risks."""
    lines = [f"## The two {tag}-month risks", "",
             f"`p_recurrence_{tag}m` comes from the classification head (sigmoid of its logit), "
             f"`1 - surv_prob_{tag}m` from the survival head (which also gives `risk_score`); nothing ties the "
             "two together. Both AUCs on the same cases with known status (DeLong CIs; DeLong p: equal AUCs); "
             "agreement over every case of the set.", "",
             f"| Model | Set | Known status | AUC classification head, p_recurrence_{tag}m (95% CI) | "
             f"AUC survival head, 1 - surv_prob_{tag}m (95% CI) | DeLong p (heads) | Pearson r | Spearman rho | "
             "Mean abs. difference |", "|---|---|---|---|---|---|---|---|---|"]
    for name, set_name, r in _rows(report):
        from_classification = r.get(f"auc_{tag}m_head") == "classification head"
        classification = (_fmt_ci(r[f"auc_{tag}m"], r[f"auc_{tag}m_ci"]) if from_classification else "n/a")
        agreement = r.get(f"heads_agreement_{tag}m") or {}
        lines.append(f"| {name} | {set_name} | {r['n_known_status']} | {classification} | "
                     f"{_fmt_ci(r.get(f'auc_{tag}m_survival_head'), r.get(f'auc_{tag}m_survival_head_ci'))} | "
                     f"{_fmt_p(r.get(f'auc_{tag}m_heads_delong_p'))} | {_fmt(agreement.get('pearson'), 2)} | "
                     f"{_fmt(agreement.get('spearman'), 2)} | {_fmt(agreement.get('mean_abs_diff'), 3)} |")
    return lines + [""]


def _td_auc_table(report: dict) -> list[str]:
    td_rows = [(name, s, r["td_auc"]) for name, s, r in _rows(report)]
    if not td_rows:
        return []
    times = list(td_rows[0][2])
    lines = ["## Time-dependent AUC (cumulative/dynamic)", "",
             "| Model | Set | " + " | ".join(f"{t} mo" for t in times) + " |",
             "|---|---|" + "---|" * len(times)]
    lines += [f"| {n} | {s} | " + " | ".join(_fmt(td[t]) for t in times) + " |" for n, s, td in td_rows]
    return lines + [""]


def _comparisons_table(report: dict, tag: str) -> list[str]:
    if not report["comparisons"]:
        return []
    lines = ["## Model comparisons", "",
             "| Comparison | Set | n | C-index A | C-index B | Difference A-B (95% CI) | Bootstrap p | "
             f"DeLong p (AUC at {tag} mo) |", "|---|---|---|---|---|---|---|---|"]
    for label, comparison in report["comparisons"].items():
        for set_name, c in comparison["sets"].items():
            difference = _fmt_ci(c["c_index_difference"], c["c_index_difference_ci"], 3)
            lines.append(f"| {label} | {set_name} | {c['n_common']} | {_fmt(c['c_index_a'])} | "
                         f"{_fmt(c['c_index_b'])} | {difference} | "
                         f"{_fmt_p(c['c_index_difference_p_bootstrap'])} | {_fmt_p(c['delong_p'])} |")
    return lines + [""]


#: ``<key>_reason`` entries rendered in their own section, not under "Metrics not computed".
SHOWN_ELSEWHERE = ("dice_median_reason", "risk_threshold_fallback_reason")


def _ci_cell(entry: dict | None, key: str, digits: int = 2) -> str:
    return "n/a" if not entry else _fmt_ci(entry.get(key), entry.get(f"{key}_ci"), digits)


def _not_test_banner(report: dict) -> list[str]:
    if not report.get("not_test_results"):
        return []
    return [f"> **Not a test result**: {', '.join(report['not_test_results'])}: development (training) cases, which "
            "the model may have trained on, evaluated with --allow-development-cases.", ""]


def _threshold_lines(report: dict) -> list[str]:
    """How each model's risk groups were split (fixed before the test set or not), and whether its
    probabilities were recalibrated."""
    lines = ["## Probabilities", ""]
    for name, info in report["counts"].get("models", {}).items():
        lines.append(f"- {name}: {info.get('recalibrated', 'not known')}")
    lines += ["", "## Risk groups", ""]
    for name, sets in report["models"].items():
        if not sets:
            continue
        r = next(iter(sets.values()))
        if r.get("risk_threshold_fallback_reason"):
            lines.append(f"- {name}: **split at each set's own median (fallback)**: "
                         f"{r['risk_threshold_fallback_reason']}")
        elif r.get("risk_threshold_rule", "").startswith("test-set median"):
            lines.append(f"- {name}: split at each set's own median (--threshold-from test-median): the groups are "
                         "not fixed before the test set")
        else:
            lines.append(f"- {name}: high risk = risk_score > {r['risk_threshold']:.4g}, fixed before the test set: "
                         f"{r['risk_threshold_source']}")
    return lines + [""]


def _ipcw_table(report: dict, tag: str) -> list[str]:
    lines = [f"## AUC at {tag} months: known status and cumulative/dynamic (IPCW)", "",
             "Known status: cases censored before the horizon dropped (DeLong CI). Cumulative/dynamic: every case, "
             "inverse probability of censoring weights (sksurv cumulative_dynamic_auc).", "",
             "| Model | Set | Classification head, known status | Classification head, IPCW | Survival head, known "
             "status | Survival head, IPCW |", "|---|---|---|---|---|---|"]
    for name, set_name, r in _rows(report):
        from_classification = r.get(f"auc_{tag}m_head") == "classification head"
        known = _fmt_ci(r[f"auc_{tag}m"], r[f"auc_{tag}m_ci"]) if from_classification else "n/a"
        lines.append(f"| {name} | {set_name} | {known} | {_fmt(r.get(f'auc_{tag}m_ipcw'), 2)} | "
                     f"{_fmt_ci(r.get(f'auc_{tag}m_survival_head'), r.get(f'auc_{tag}m_survival_head_ci'))} | "
                     f"{_fmt(r.get(f'auc_{tag}m_survival_head_ipcw'), 2)} |")
    return lines + [""]


def _calibration_table(report: dict, tag: str) -> list[str]:
    lines = [f"## Calibration at {tag} months", "",
             f"Observed risk: 1 - Kaplan-Meier at {tag} months. O/E: observed / mean predicted. Slope: Cox model of "
             "the outcome (truncated at the horizon) on cloglog(predicted risk), 1 = ideal, < 1 = too extreme. "
             "Intercept: slope fixed at 1, 0 = ideal, > 0 = more recurrences than predicted. ICI / E50 / E90: mean, "
             "median, 90th percentile of |predicted - smoothed observed| (Cox on a restricted cubic spline of "
             "cloglog, Austin et al. 2020). Percentile bootstrap 95% CIs. Known-status logistic slope: complete "
             "case, for comparison.", "",
             "| Model | Set | Head | Observed risk | Mean predicted | O/E (95% CI) | Slope (95% CI) | "
             "Intercept (95% CI) | ICI (95% CI) | E50 | E90 | Logistic slope, known status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, set_name, r in _rows(report):
        for head, c in (r.get(f"calibration_{tag}m") or {}).items():
            if head.endswith("_reason") or c is None:
                continue
            logistic = c.get("logistic_known_status") or {}
            lines.append(f"| {name} | {set_name} | {c['column']} | {_fmt(c['observed_risk'])} | "
                         f"{_fmt(c['mean_predicted_risk'])} | {_ci_cell(c, 'observed_expected_ratio')} | "
                         f"{_ci_cell(c, 'slope')} | {_ci_cell(c, 'intercept')} | {_ci_cell(c, 'ici', 3)} | "
                         f"{_fmt(c['e50'])} | {_fmt(c['e90'])} | {_ci_cell(logistic, 'slope')} |")
    return lines + [""]


def _dca_table(report: dict, tag: str) -> list[str]:
    from evaluation.decision_curve import REPORT_THRESHOLDS

    lines = [f"## Decision curve at {tag} months", "",
             "Net benefit (dcurves, survival endpoint: Kaplan-Meier risk among the cases at or above the threshold); "
             "every threshold in metrics.json and the figure.", "",
             "| Model | Set | Strategy | " + " | ".join(f"pt {t:.2f}" for t in REPORT_THRESHOLDS)
             + " | Above treat-all and treat-none |", "|---|---|---|" + "---|" * (len(REPORT_THRESHOLDS) + 1)]
    for name, set_name, r in _rows(report):
        curve = r.get(f"decision_curve_{tag}m")
        if not curve:
            continue
        index = {round(t, 6): i for i, t in enumerate(curve["thresholds"])}
        for strategy, values in curve["net_benefit"].items():
            cells = [_fmt(values[index[t]]) if t in index else "" for t in REPORT_THRESHOLDS]
            runs = curve["above_treat_all_and_none"].get(strategy)
            above = "" if runs is None else (", ".join(f"{a:.2f}-{b:.2f}" for a, b in runs) or "none")
            label = curve.get("columns", {}).get(strategy, strategy.replace("_", " "))
            lines.append(f"| {name} | {set_name} | {label} | " + " | ".join(cells) + f" | {above} |")
    return lines + [""]


def _group_rows(name: str, set_name: str, by: dict, tag: str) -> list[str]:
    rows = []
    for value, g in by["groups"].items():
        calibration = g.get(f"calibration_{tag}m") or {}
        cells = [_ci_cell(calibration.get(h), k) for h in ("classification_head", "survival_head")
                 for k in ("observed_expected_ratio", "slope")]
        rows.append(f"| {name} | {set_name} | {by['column']} = {value} | {g['n']} | {g['events']} | "
                    f"{_ci_cell(g, 'c_index')} | {_ci_cell(g, f'auc_{tag}m')} | " + " | ".join(cells)
                    + f" | {g.get('reason', '')} |")
    return rows


def _groups_table(report: dict, tag: str) -> list[str]:
    header = ["| Model | Set | Group | n | Events | C-index (95% CI) | AUC at {tag} mo (95% CI) | O/E classification "
              "head | Slope classification head | O/E survival head | Slope survival head | Note |".format(tag=tag),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, set_name, r in _rows(report):
        for by in [r.get("by_centre")] + list((r.get("by_subgroup") or {}).values()):
            if by:
                rows += _group_rows(name, set_name, by, tag)
    if not rows:
        return []
    return (["## Per centre and subgroup", "", "C-index of risk_score; AUC of the classification head on known "
             "status (DeLong CI); calibration in the large (O/E) and slope per head (bootstrap CIs); small groups "
             "n/a with the reason.", ""] + header + rows + [""])


def _reasons_and_exclusions(report: dict) -> list[str]:
    """Why each missing metric is missing, and every excluded case count."""
    reasons = []
    for name, set_name, r in _rows(report):
        for key, value in r.items():
            if key.endswith("_reason") and isinstance(value, str) and key not in SHOWN_ELSEWHERE:
                reasons.append(f"- {name} / {set_name}: `{key[:-7]}` n/a: {value}")
        reasons += [f"- {name} / {set_name}: `td_auc` at {t} months n/a: {why}"
                    for t, why in r["td_auc_reason"].items()]
    lines = ["## Metrics not computed", ""] + reasons + [""] if reasons else []
    lines += ["## Excluded cases", ""]
    if report["dropped"]:
        lines += [f"- {d['model']} / {d['set'] or 'input'} / {d['metric']}: {d['count']} case(s), {d['reason']}"
                  for d in report["dropped"]]
    else:
        lines.append("- none")
    return lines + [""]


def render_report(report: dict, tag: str) -> str:
    """Markdown report: a results table shaped like the paper's (rows model x set), the two heads'
    risks at the horizon, time-dependent AUC, comparisons, reasons for missing values, counts of
    excluded cases and figures."""
    results = _results_table(report, tag)
    lines = (results[:4] + _not_test_banner(report) + results[4:] + _threshold_lines(report) + _heads_table(report, tag)
             + _ipcw_table(report, tag) + _calibration_table(report, tag) + _dca_table(report, tag)
             + _groups_table(report, tag) + _td_auc_table(report) + _comparisons_table(report, tag)
             + _reasons_and_exclusions(report))
    if report["figures"]:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in report["figures"]] + [""]
    return "\n".join(lines)
