"""``MODEL_CARD.md`` of an evaluation (``survival_eval.py --model-card``), shaped by TRIPOD+AI.

Collins GS et al., "TRIPOD+AI statement: updated guidance for reporting clinical prediction models that
use regression or machine learning methods", BMJ 2024;385:e078378. The card is written from what the
run knows: the provenance in the ``predictions.json`` beside each ``predictions.csv`` (model folder,
trainer, folds, checkpoint, clinical columns, how missing clinical values and series were handled), the
per-case flags of the predictions table (``clinical_imputed``, ``series_available``, ``tumour_found``)
and the metrics of this run (metrics.json). What it cannot know it says it does not know.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from evaluation.report import _ci_cell, _fmt, _fmt_ci
from nnunet_multitask.prediction_artifact import PREDICTIONS_JSON, PredictionFormatError, PredictionRecord

HEADS = {"classification_head": "classification head", "survival_head": "survival head"}
#: Below this many events in a set, the card warns that the intervals are wide.
FEW_EVENTS = 100


def _meta(prediction_path: Path) -> PredictionRecord | None:
    """The typed record of the ``predictions.json`` beside a predictions CSV; None when there is none
    (a baseline's or the oracle's CSV) or it cannot be read as one (the card says provenance unknown)."""
    path = Path(prediction_path).parent / PREDICTIONS_JSON
    if not path.is_file():
        return None
    try:
        return PredictionRecord.read(str(path))
    except PredictionFormatError:
        return None


def _model_section(names: list[str], paths: list[Path], metas: dict) -> list[str]:
    lines = ["## 1. Model (TRIPOD+AI items 1, 12)", ""]
    for name, path in zip(names, paths, strict=True):
        meta = metas[name]
        if meta is None:
            lines += [f"- **{name}** (`{path}`): no predictions.json beside the file: provenance unknown (a model "
                      "from another tool, or a baseline).", ""]
            continue
        lines += [f"- **{name}** (`{path}`): trainer `{meta.trainer}`, plans `{meta.plans}`, "
                  f"configuration `{meta.configuration}`, folds {meta.fold_list} (fold ensemble: "
                  f"{meta.fold_ensemble or 'n/a'}), checkpoint `{meta.checkpoint}`, survival head "
                  f"`{meta.survival_head}`, horizon {meta.horizon:g} months; model folder "
                  f"`{meta.model_folder}`; nnU-Net {meta.nnunetv2_version}, nnunet-multitask "
                  f"{meta.nnunet_multitask_version}; predicted {meta.created}.",
                  f"  - Inputs: image channels with the tumour segmentation; clinical columns "
                  f"{meta.model_columns or 'none'}; patient-level heads: {meta.patient_level or 'n/a'}.",
                  f"  - {_recalibration_text(meta)}", ""]
    return lines


def _recalibration_text(meta: PredictionRecord) -> str:
    """Whether the probabilities were recalibrated (``--recalibrated``), and with which fit."""
    recal = meta.recalibration
    if not recal:
        return "Probabilities: the heads' own (not recalibrated)."
    cls, surv = recal.get("classification") or {}, recal.get("survival") or {}
    return (f"Probabilities: **recalibrated** (`--recalibrated`, recalibration.json SHA-256 {recal.get('sha256')}, "
            f"fitted on folds {recal.get('folds')}' out-of-sample predictions of {recal.get('n_patients')} development "
            f"patients): classification logit' = {cls.get('intercept', float('nan')):.3f} + "
            f"{cls.get('slope', float('nan')):.3f} x logit, survival linear-predictor slope "
            f"{surv.get('slope', float('nan')):.3f}; the heads' own values are the *_uncalibrated columns."
            + (f" **Caution: {recal['few_events']}.**" if recal.get("few_events") else ""))


def _intended_use(tag: str) -> list[str]:
    return ["## 2. Intended use (items 3, 4)", "",
            f"Research use only. The model segments the rectal tumour on pre-treatment MRI and predicts the risk of "
            f"recurrence of locally advanced rectal cancer: a classification head gives `p_recurrence_{tag}m` "
            f"(probability of recurrence by {tag} months), a survival head `risk_score` and `surv_prob_<t>m`. "
            "It is not validated for clinical decisions and must not be used to choose a patient's treatment.", ""]


def _data_section(report: dict, tag: str) -> list[str]:
    counts = report["counts"]["outcomes"]
    lines = ["## 3. Data and centres (items 5, 6, 20)", "",
             f"Outcomes: `{counts['source']}` ({counts['rows']} cases; per set {counts['per_set']}). "
             f"Outcome: disease-free survival; recurrence by {tag} months for the classification head.", ""]
    for name, sets in report["models"].items():
        for set_name, r in sets.items():
            centres = r.get("by_centre")
            text = ("centre not known (" + str(r.get("by_centre_reason")) + ")" if not centres else
                    "; ".join(f"centre {v}: n={g['n']}, events={g['events']}" for v, g in centres["groups"].items()))
            lines.append(f"- {name} / {set_name}: n={r['n']}, events={r['events']}, follow-up "
                         f"{r['follow_up_min']:.1f}-{r['follow_up_max']:.1f} months; {text}")
    return lines + [""]


def _missing_section(names: list[str], paths: list[Path], metas: dict) -> list[str]:
    lines = ["## 4. Missing clinical values and series (items 9, 13)", ""]
    for name, path in zip(names, paths, strict=True):
        meta = metas[name]
        table = pd.read_csv(path, dtype={"case_id": str})
        facts = [f"{len(table)} predicted cases"]
        if "clinical_imputed" in table:
            facts.append(f"{int(table['clinical_imputed'].astype(str).str.lower().eq('true').sum())} with an imputed "
                         "clinical value (the fold's fitted imputation)")
        if "series_available" in table and meta is not None and meta.channel_availability is not None:
            full = table["series_available"].astype(str).str.count(";").max()
            facts.append(f"{int((table['series_available'].astype(str).str.count(';') < full).sum())} without every "
                         "MRI series")
        if "tumour_found" in table:
            facts.append(f"{int(table['tumour_found'].astype(str).str.lower().eq('false').sum())} without a segmented "
                         "tumour")
        policy = ("policy unknown (no predictions.json)" if meta is None else
                  f"missing clinical values {'imputed' if meta.impute_missing_clinical else 'refused'}; "
                  f"missing series {'allowed' if meta.allow_missing_series else 'refused'} (channel "
                  f"availability input: {meta.channel_availability})")
        lines.append(f"- {name}: {policy}; " + ", ".join(facts) + ".")
    return lines + [""]


def _performance_section(report: dict, tag: str) -> list[str]:
    lines = ["## 5. Performance (item 23)", "",
             f"| Model | Set | n | Events | C-index (95% CI) | AUC {tag} mo classification head, known status | "
             f"AUC {tag} mo survival head, known status | AUC {tag} mo IPCW (classification / survival) | IBS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, sets in report["models"].items():
        for set_name, r in sets.items():
            label = set_name + (" (not a test result)" if r.get("not_a_test_result") else "")
            lines.append(f"| {name} | {label} | {r['n']} | {r['events']} | {_ci_cell(r, 'c_index')} | "
                         f"{_fmt_ci(r[f'auc_{tag}m'], r[f'auc_{tag}m_ci'])} | "
                         f"{_ci_cell(r, f'auc_{tag}m_survival_head')} | {_fmt(r.get(f'auc_{tag}m_ipcw'), 2)} / "
                         f"{_fmt(r.get(f'auc_{tag}m_survival_head_ipcw'), 2)} "
                         f"| {_fmt(r.get('ibs'))} |")
    lines += ["", "Per centre (C-index, AUC of the classification head):", ""]
    for name, sets in report["models"].items():
        for set_name, r in sets.items():
            for value, g in ((r.get("by_centre") or {}).get("groups") or {}).items():
                text = g.get("reason") or (f"C-index {_ci_cell(g, 'c_index')}, AUC {_ci_cell(g, f'auc_{tag}m')}")
                lines.append(f"- {name} / {set_name} / centre {value}: n={g['n']}, events={g['events']}: {text}")
            if not r.get("by_centre"):
                lines.append(f"- {name} / {set_name}: no results per centre ({r.get('by_centre_reason')})")
    return lines + [""]


def _calibration_section(report: dict, tag: str) -> list[str]:
    lines = ["## 6. Calibration at the horizon (item 23)", "",
             "O/E = observed (1 - Kaplan-Meier) / mean predicted risk; slope and intercept: Cox model on "
             "cloglog(predicted risk), ideal 1 and 0; ICI: Austin et al. 2020. Bootstrap 95% CIs.", ""]
    for name, sets in report["models"].items():
        for set_name, r in sets.items():
            for head, c in (r.get(f"calibration_{tag}m") or {}).items():
                if head in HEADS and c:
                    lines.append(f"- {name} / {set_name} / {HEADS[head]} (`{c['column']}`): O/E "
                                 f"{_ci_cell(c, 'observed_expected_ratio')}, slope {_ci_cell(c, 'slope')}, intercept "
                                 f"{_ci_cell(c, 'intercept')}, ICI {_ci_cell(c, 'ici', 3)}")
    return lines + [""]


def _decision_section(report: dict, tag: str) -> list[str]:
    lines = ["## 7. Decision curve at the horizon (item 23)", ""]
    for name, sets in report["models"].items():
        for set_name, r in sets.items():
            curve = r.get(f"decision_curve_{tag}m")
            if not curve:
                lines.append(f"- {name} / {set_name}: n/a ({r.get(f'decision_curve_{tag}m_reason')})")
                continue
            parts = [f"{HEADS[h]}: " + (", ".join(f"{a:.2f}-{b:.2f}" for a, b in runs) or "no threshold")
                     for h, runs in curve["above_treat_all_and_none"].items()]
            lines.append(f"- {name} / {set_name}: net benefit above treat-all and treat-none at thresholds "
                         + "; ".join(parts) + f" (range {curve['thresholds'][0]:g}-{curve['thresholds'][-1]:g})")
    return lines + [""]


def _limitations(report: dict, metas: dict, tag: str) -> list[str]:
    notes = []
    for name, sets in report["models"].items():
        meta = metas.get(name)
        if meta is not None and len(meta.fold_list) == 1:
            notes.append(f"{name}: one fold's model (no fold ensemble).")
        if meta is not None and meta.recalibration and (meta.recalibration.get("note")):
            notes.append(f"{name}: {meta.recalibration['note']}.")
        for set_name, r in sets.items():
            where = f"{name} / {set_name}"
            if r.get("not_a_test_result"):
                notes.append(f"{where}: development cases, not a test result.")
            if r["events"] < FEW_EVENTS:
                notes.append(f"{where}: {r['events']} events (< {FEW_EVENTS}): wide intervals, per-centre numbers "
                             "mostly n/a.")
            if r.get("risk_threshold_fallback_reason"):
                notes.append(f"{where}: risk groups split at the set's own median (no out-of-sample development "
                             "predictions).")
            for head, c in (r.get(f"calibration_{tag}m") or {}).items():
                if head in HEADS and c and c.get("slope_ci") and c["slope_ci"][1] < 1:
                    notes.append(f"{where}: the {HEADS[head]}'s calibration slope is below 1 (CI "
                                 f"{c['slope_ci'][0]:.2f}-{c['slope_ci'][1]:.2f}): its probabilities are too "
                                 "extreme (overconfident); do not read them as absolute risks without recalibration.")
    notes.append(f"The two heads' {tag}-month risks are not tied together and can disagree (report.md, 'The two "
                 f"{tag}-month risks').")
    notes.append("Metrics reported n/a are listed with their reasons in report.md.")
    return ["## 9. Known limitations (item 27)", ""] + [f"- {n}" for n in notes] + [""]


def model_card(report: dict, names: list[str], prediction_paths: list[Path], tag: str) -> str:
    """The Markdown text of ``MODEL_CARD.md``."""
    metas = {name: _meta(path) for name, path in zip(names, prediction_paths, strict=True)}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [f"# Model card: {', '.join(names)}", "",
             f"Written by `evaluation/survival_eval.py --model-card` on {created} from the predictions' "
             "`predictions.json` and this run's `metrics.json`; sections follow TRIPOD+AI (Collins et al., BMJ "
             "2024;385:e078378; item numbers in brackets). Full numbers: `report.md`, `metrics.json`.", ""]
    lines += (_model_section(names, prediction_paths, metas) + _intended_use(tag) + _data_section(report, tag)
              + _missing_section(names, prediction_paths, metas) + _performance_section(report, tag)
              + _calibration_section(report, tag) + _decision_section(report, tag)
              + ["## 8. Risk groups", ""] + [line for line in _risk_lines(report)] + [""]
              + _limitations(report, metas, tag))
    return "\n".join(lines)


def _risk_lines(report: dict) -> list[str]:
    from evaluation.report import _threshold_lines

    return _threshold_lines(report)[2:-1]
