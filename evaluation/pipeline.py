"""Evaluate one or more prediction files against the outcomes and write the report folder.

:func:`evaluate` checks the options, matches each model's predictions to the outcomes, computes
every set's metrics (:mod:`evaluation.set_metrics`), Dice (:mod:`evaluation.segmentation`) and the
model comparisons (:mod:`evaluation.compare`), and only then writes ``metrics.json``,
``report.md`` (:mod:`evaluation.report`), ``dice_<model>.csv`` and the figures
(:mod:`evaluation.figures`): a bad input leaves the report folder untouched.
"""
from __future__ import annotations

import itertools
import json
import time as timer
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from clinical.outcomes import recurrence_label
from evaluation.compare import compare_pair
from evaluation.inputs import (EvaluationInputError, PathLike, check_positive_months, horizon_tag,
                               load_predictions)
from evaluation.report import column_sources, file_part, json_ready, render_report, settings
from evaluation.decision_curve import THRESHOLDS
from evaluation.groups import results_by_group
from evaluation.segmentation import add_dice, dice_per_case, dropped_record
from evaluation.set_metrics import evaluate_set
from nnunet_multitask.prediction_artifact import PredictionFormatError, PredictionRecord
from nnunet_multitask.report_reference import REFERENCE_CHECKPOINT, reference_distribution

#: Sets in report order; any other set name follows, sorted.
KNOWN_SETS = ("internal_test", "external_test", "development", "all")
#: Sets whose cases a model may have trained on: refused unless ``allow_development_cases``.
NON_TEST_SETS = ("development", "training", "train")
#: Where the risk-group threshold comes from (``--threshold-from``).
THRESHOLD_RULES = ("auto", "development", "test-median")
NOT_A_TEST_RESULT = ("not a test result: development (training) cases, which the model may have trained on "
                     "(evaluated with --allow-development-cases)")


@dataclass(frozen=True)
class _Options:
    horizon: float
    n_bootstrap: int
    seed: int
    uno_tau: float | None
    allow_unmatched: bool
    outcomes_source: str
    threshold_from: str = "auto"
    allow_development_cases: bool = False
    dca_thresholds: tuple = THRESHOLDS
    centre_column: str | None = None
    centre_reason: str | None = None
    subgroups: tuple = ()

    @property
    def tag(self) -> str:
        return horizon_tag(self.horizon)


def _model_names(prediction_paths: list[Path], names: Sequence[str] | None) -> list[str]:
    names = list(names) if names else [p.name[:-4] if p.name.endswith(".csv") else p.name for p in prediction_paths]
    if len(names) != len(prediction_paths):
        raise EvaluationInputError(f"--names has {len(names)} names for {len(prediction_paths)} prediction files")
    if len(set(names)) != len(names):
        raise EvaluationInputError(f"model names must be unique, got {names} (use --names)")
    return names


def _check_per_model_options(names: list[str], train_prediction_paths: Sequence | None,
                             seg_pred_dirs: Sequence | None, seg_gt_dir: PathLike | None) -> None:
    for option, values in (("--train-predictions", train_prediction_paths), ("--seg-pred", seg_pred_dirs)):
        if values and len(values) != len(names):
            raise EvaluationInputError(f"{option} needs one entry per prediction file, in the same order "
                                       f"({len(names)}), got {len(values)}"
                                       + ("; write 'none' for a model without segmentations"
                                          if option == "--seg-pred" else ""))
    if seg_pred_dirs and not seg_gt_dir:
        raise EvaluationInputError("--seg-pred needs --seg-gt")
    if seg_pred_dirs:
        if not Path(seg_gt_dir).is_dir():
            raise EvaluationInputError(f"--seg-gt {seg_gt_dir}: folder not found")
        for name, folder in zip(names, seg_pred_dirs, strict=True):
            if str(folder).lower() != "none" and not Path(folder).is_dir():
                raise EvaluationInputError(f"--seg-pred {folder} (model {name}): folder not found "
                                           "(write 'none' for a model without segmentations)")


def _set_order(outcomes: pd.DataFrame) -> list[str]:
    present = set(outcomes["set"])
    return [s for s in KNOWN_SETS if s in present] + sorted(present - set(KNOWN_SETS))


def _match(report: dict, name: str, path: Path, outcomes: pd.DataFrame,
           options: _Options) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """A model's predictions, and those with an outcome merged with it (sorted by case_id)."""
    predictions = load_predictions(path, options.horizon)
    unmatched = sorted(set(predictions["case_id"]) - set(outcomes["case_id"]))
    if unmatched and not options.allow_unmatched:
        raise EvaluationInputError(
            f"{path}: {len(unmatched)} case(s) have no outcome: {unmatched[:10]}; check the case ids "
            "or pass --allow-unmatched to count and exclude them")
    if unmatched:
        report["dropped"].append(dropped_record(name, None, "all", "prediction case absent from outcomes", unmatched))
    merged = predictions.merge(outcomes, on="case_id", how="inner").sort_values("case_id")
    source = options.outcomes_source or "the outcomes table"
    if len(merged) == 0:
        raise EvaluationInputError(
            f"{path}: none of its {len(predictions)} case(s) ({predictions['case_id'].tolist()[:5]}...) has an "
            f"outcome in {source} (outcome cases: {sorted(outcomes['case_id'])[:5]}...): nothing to evaluate; "
            "check the case ids")
    development = merged["case_id"][merged["set"].isin(NON_TEST_SETS)].tolist()
    if development and not options.allow_development_cases:
        raise EvaluationInputError(
            f"{path}: {len(development)} case(s) are development (training) cases in {source}, not cases of its "
            f"test sets: {development[:10]}; the model may have trained on them, so their metrics are not a test "
            "result. Evaluate the test sets' predictions, or pass --allow-development-cases to evaluate them "
            "labelled as not a test result")
    return predictions, merged, unmatched


def out_of_sample_reference(prediction_path: PathLike) -> tuple[object | None, str]:
    """The development patients' out-of-sample risks of the model behind a ``predictions.csv``: the
    ``predictions.json`` beside it names the model folder, folds and checkpoint, and
    :func:`nnunet_multitask.report.reference_distribution` (the per-patient report's reference) pools
    ``fold_<f>/validation/head_predictions.csv``. Returns (reference, "") or (None, why not)."""
    prediction_path = Path(prediction_path)
    meta_path = prediction_path.parent / "predictions.json"
    if prediction_path.name != "predictions.csv" or not meta_path.is_file():
        return None, (f"no predictions.json beside {prediction_path} to name the model folder, and no "
                      "--train-predictions")
    try:
        record = PredictionRecord.read(str(meta_path))
    except PredictionFormatError as error:
        return None, str(error)
    reference = reference_distribution(record.model_folder, record.fold_list, record.checkpoint or REFERENCE_CHECKPOINT)
    if not reference.available:
        return None, f"{meta_path}: the development patients' out-of-sample risks are unavailable: " \
                     f"{reference.reason_unavailable}"
    return reference, ""


def _recalibration_of(prediction_path: PathLike, predictions: pd.DataFrame) -> str:
    """Whether a model's probabilities were recalibrated (``--recalibrated``), for report.md."""
    meta_path = Path(prediction_path).parent / "predictions.json"
    record = None
    if Path(prediction_path).name == "predictions.csv" and meta_path.is_file():
        try:
            record = PredictionRecord.read(str(meta_path))
        except PredictionFormatError:
            record = None
    if record is not None and record.recalibration:
        recal = record.recalibration
        return (f"recalibrated (--recalibrated; recalibration.json SHA-256 {recal.get('sha256')}, folds "
                f"{recal.get('folds')}, {recal.get('n_patients')} development patients)"
                + (f"; caution: {recal['few_events']}" if recal.get("few_events") else ""))
    if "recalibrated" in predictions.columns:
        return "recalibrated (column recalibrated; no predictions.json record)"
    return "not recalibrated (the heads' own probabilities)"


def _threshold(train_path: PathLike | None, prediction_path: Path, options: _Options, test_cases: set) -> dict:
    """The risk-group rule of one model: ``value`` (None = each set's median), ``source``, ``rule``, ``n``,
    ``fallback_reason`` (module :data:`THRESHOLD_RULES`)."""
    if options.threshold_from == "test-median":
        return {"value": None, "source": None, "rule": "test-set median (--threshold-from test-median)", "n": None}
    if train_path:
        train = load_predictions(train_path, options.horizon)
        leaked = sorted(set(train["case_id"]) & test_cases)
        if leaked:
            raise EvaluationInputError(f"--train-predictions {train_path}: {len(leaked)} case(s) of the evaluated "
                                       f"test sets {leaked[:10]}: the threshold must come from development "
                                       "patients' out-of-sample predictions, never from the test set")
        return {"value": float(np.median(train["risk_score"])), "n": int(len(train)), "rule": "development",
                "source": f"median risk_score of the out-of-sample development predictions {train_path} "
                          f"(--train-predictions, n={len(train)})"}
    reference, why = out_of_sample_reference(prediction_path)
    if reference is not None:
        return {"value": reference.threshold, "n": int(len(reference.risks)), "rule": "development",
                "source": f"median risk_score of the development patients' {reference.description} "
                          f"(n={len(reference.risks)})"}
    if options.threshold_from == "development":
        raise EvaluationInputError(f"{prediction_path}: --threshold-from development: {why}; pass --train-predictions "
                                   "with the development patients' out-of-sample predictions, or --threshold-from "
                                   "test-median")
    return {"value": None, "source": None, "n": None, "rule": "test-set median (fallback)",
            "fallback_reason": f"no out-of-sample development predictions: {why}"}


def _threshold_record(result: dict, threshold: dict) -> None:
    """The risk-group rule in a set's result."""
    result["risk_threshold_rule"] = threshold["rule"]
    result["risk_threshold_n"] = threshold["n"] if threshold["n"] is not None else result["n"]
    if threshold.get("fallback_reason"):
        result["risk_threshold_fallback_reason"] = (
            f"{threshold['fallback_reason']}; the groups are split at this set's own median, so they are not "
            "fixed before the test set (pass --train-predictions, or --threshold-from test-median to ask for this)")


def _add_groups(result: dict, frame: pd.DataFrame, options: _Options) -> None:
    """Results per centre and per subgroup column (:mod:`evaluation.groups`)."""
    if options.centre_column:
        result["by_centre"] = results_by_group(frame, options.centre_column, options.horizon, options.n_bootstrap,
                                               options.seed)
    else:
        result["by_centre"] = None
        result["by_centre_reason"] = options.centre_reason or "no centre column"
    if options.subgroups:
        result["by_subgroup"] = {column: results_by_group(frame, column, options.horizon, options.n_bootstrap,
                                                          options.seed) for column in options.subgroups}


def _evaluate_sets(report: dict, plot_data: dict, name: str, merged: pd.DataFrame, outcomes: pd.DataFrame,
                   set_order: list[str], options: _Options, threshold: dict, dice: tuple, has_segmentation: bool,
                   model_counts: dict) -> None:
    """Every set's metrics of one model into ``report["models"][name]`` (sets without a prediction skipped)."""
    report["models"][name] = {}
    for set_name in set_order:
        in_set = outcomes["case_id"][outcomes["set"] == set_name]
        frame = merged[merged["set"] == set_name].reset_index(drop=True)
        model_counts["per_set"][set_name] = int(len(frame))
        not_predicted = sorted(set(in_set) - set(frame["case_id"]))
        model_counts["outcome_cases_without_prediction"][set_name] = len(not_predicted)
        if len(frame) == 0:
            continue  # e.g. development outcomes when only test cases were predicted
        if not_predicted and set_name != "development":
            report["dropped"].append(dropped_record(name, set_name, "all", "outcome case without a prediction "
                                                    "(not evaluated)", not_predicted))
        result, plots = evaluate_set(frame, options.horizon, options.n_bootstrap, options.seed, threshold["value"],
                                     threshold["source"], options.uno_tau, options.dca_thresholds)
        _threshold_record(result, threshold)
        if set_name in NON_TEST_SETS:
            result["not_a_test_result"] = NOT_A_TEST_RESULT
        _add_groups(result, frame, options)
        unknown = frame["case_id"][np.isnan(recurrence_label(frame["time"], frame["event"], options.horizon))]
        if len(unknown):
            report["dropped"].append(dropped_record(name, set_name, f"auc_{options.tag}m", f"censored before "
                                                    f"{options.tag} months (recurrence status unknown)", unknown))
        add_dice(result, report["dropped"], name, set_name, frame["case_id"], *dice, has_segmentation)
        report["models"][name][set_name] = result
        plot_data[(name, set_name)] = plots


def _compare_models(names: list[str], set_order: list[str], merged_frames: dict, plot_data: dict,
                    options: _Options) -> dict:
    """Every pair of models on every set both cover (:func:`evaluation.compare.compare_pair`)."""
    comparisons = {}
    for name_a, name_b in itertools.combinations(names, 2):
        pair = {}
        for set_name in set_order:
            a, b = merged_frames[name_a], merged_frames[name_b]
            a, b = a[a["set"] == set_name], b[b["set"] == set_name]
            if len(a) and len(b):
                pair[set_name] = compare_pair(
                    a, b, options.horizon, options.n_bootstrap, options.seed,
                    plot_data.get((name_a, set_name), {}).get("bootstrap_c"),
                    plot_data.get((name_b, set_name), {}).get("bootstrap_c"))
        comparisons[f"{name_a} vs {name_b}"] = {"model_a": name_a, "model_b": name_b, "sets": pair}
    return comparisons


def _write(output_dir: Path, report: dict, dice_tables: dict, make_figures: bool, plot_data: dict,
           names: list[str], set_order: list[str], tag: str, start: float,
           card: str | None = None) -> None:
    """Create the report folder and write dice tables, figures, metrics.json and report.md."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EvaluationInputError(f"-o {output_dir}: cannot create the report folder: {error}") from None
    for file_name, table in dice_tables.items():
        table.to_csv(output_dir / file_name, index=False)
    if make_figures:
        from evaluation import figures  # matplotlib only when figures are drawn

        report["figures"] = figures.write_figures(output_dir, report, plot_data, names, set_order, tag)
    report["timing_seconds"]["total"] = round(timer.perf_counter() - start, 3)
    (output_dir / "metrics.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False))
    (output_dir / "report.md").write_text(render_report(report, tag))
    if card is not None:
        (output_dir / "MODEL_CARD.md").write_text(card)


def evaluate(prediction_paths: Sequence[PathLike], outcomes: pd.DataFrame, output_dir: PathLike,
             names: Sequence[str] | None = None, horizon: float = 36.0, n_bootstrap: int = 1000, seed: int = 0,
             train_prediction_paths: Sequence[PathLike] | None = None,
             seg_pred_dirs: Sequence[PathLike] | None = None, seg_gt_dir: PathLike | None = None,
             allow_unmatched: bool = False, uno_tau: float | None = None, make_figures: bool = True,
             outcomes_source: str = "", threshold_from: str = "auto", allow_development_cases: bool = False,
             dca_thresholds: Sequence[float] = THRESHOLDS, groups: pd.DataFrame | None = None,
             centre_column: str | None = None, centre_reason: str | None = None,
             subgroups: Sequence[str] = (), model_card: bool = False) -> dict:
    """Evaluate one or more prediction files and write metrics.json, report.md and figures.

    Parameters
    ----------
    prediction_paths : list of path
        Prediction CSVs, one per model.
    outcomes : DataFrame
        ``case_id, time, event, set`` (from ``load_outcomes_csv`` / ``load_outcomes_from_dataset``).
    output_dir : path
        Report folder (created).
    names : list of str, optional
        Model names (default: file stems; must be unique).
    horizon : float
        Months for the recurrence label.
    n_bootstrap, seed : int
        Bootstrap resamples and seed.
    train_prediction_paths : list of path, optional
        One CSV per model of the development patients' out-of-sample predictions (each predicted by a
        fold model that never trained on it); its median risk is the risk-group threshold.
    seg_pred_dirs : list of path, optional
        One predicted-segmentation folder per model ("none" skips a model); needs ``seg_gt_dir``.
    allow_unmatched : bool
        Count and drop prediction cases absent from the outcomes instead of raising.
    uno_tau : float, optional
        Truncation time of Uno's C (default: the horizon).
    make_figures : bool
        Write the PNG figures.
    outcomes_source : str
        Where the outcomes come from, for the report and messages.
    threshold_from : str
        ``auto`` (default): the median of the development patients' out-of-sample risks (``--train-predictions``,
        else found through the ``predictions.json`` beside a ``predictions.csv``), else each set's median,
        flagged as a fallback; ``development``: those risks or an error; ``test-median``: each set's median.
    allow_development_cases : bool
        Evaluate prediction cases of the development set (else an error), labelled as not a test result.
    dca_thresholds : sequence of float
        Threshold probabilities of the decision curves.
    groups : DataFrame, optional
        ``case_id`` and the centre / subgroup columns as text (:func:`evaluation.inputs.load_group_table`).
    centre_column, centre_reason : str, optional
        The centre column of ``groups``; without one, why there are no results per centre.
    subgroups : sequence of str
        Categorical columns of ``groups`` to report per value.
    model_card : bool
        Also write ``MODEL_CARD.md`` (:mod:`evaluation.model_card`).

    Returns
    -------
    dict
        The content of metrics.json.
    """
    start = timer.perf_counter()
    prediction_paths = [Path(p) for p in prediction_paths]
    names = _model_names(prediction_paths, names)
    _check_per_model_options(names, train_prediction_paths, seg_pred_dirs, seg_gt_dir)
    if threshold_from not in THRESHOLD_RULES:
        raise EvaluationInputError(f"--threshold-from must be one of {THRESHOLD_RULES}, got {threshold_from!r}")
    options = _Options(check_positive_months(horizon, "the horizon (--horizon)"), n_bootstrap, seed,
                       None if uno_tau is None else check_positive_months(uno_tau, "--uno-tau"),
                       allow_unmatched, outcomes_source, threshold_from, allow_development_cases,
                       tuple(dca_thresholds), centre_column if groups is not None else None,
                       centre_reason, tuple(subgroups) if groups is not None else ())
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise EvaluationInputError(f"-o {output_dir}: exists and is not a folder")
    if len(outcomes) == 0:
        raise EvaluationInputError(f"no outcomes in {outcomes_source or 'the outcomes table'}: nothing to evaluate")

    set_order = _set_order(outcomes)
    report = {"settings": {}, "columns": {}, "models": {}, "comparisons": {}, "counts": {}, "dropped": [],
              "figures": []}
    counts = report["counts"]
    counts["outcomes"] = {"source": outcomes_source, "rows": int(len(outcomes)),
                          "per_set": {s: int((outcomes["set"] == s).sum()) for s in set_order}}
    counts["models"] = {}
    merged_frames, plot_data, dice_tables = {}, {}, {}
    test_cases = set(outcomes["case_id"][~outcomes["set"].isin(NON_TEST_SETS)])
    for index, (name, path) in enumerate(zip(names, prediction_paths, strict=True)):
        predictions, merged, unmatched = _match(report, name, path, outcomes, options)
        if groups is not None:
            merged = merged.merge(groups, on="case_id", how="left").fillna(
                {c: "missing" for c in groups.columns if c != "case_id"})
        merged_frames[name] = merged
        model_counts = {"predictions_file": str(path), "p_recurrence_column": predictions.attrs["p_recurrence_column"],
                        "surv_prob_horizon_column": predictions.attrs["surv_prob_horizon_column"],
                        "prediction_rows": int(len(predictions)), "matched_to_outcomes": int(len(merged)),
                        "unmatched_excluded": len(unmatched), "per_set": {},
                        "outcome_cases_without_prediction": {}}
        counts["models"][name] = model_counts
        model_counts["recalibrated"] = _recalibration_of(path, predictions)
        threshold = _threshold(train_prediction_paths[index] if train_prediction_paths else None, path, options,
                               test_cases)
        model_counts["risk_threshold"] = threshold
        has_segmentation = bool(seg_pred_dirs) and str(seg_pred_dirs[index]).lower() != "none"
        dice = ({}, {})
        if has_segmentation:
            dice = dice_per_case(merged["case_id"].tolist(), seg_pred_dirs[index], seg_gt_dir)
            dice_tables[f"dice_{file_part(name)}.csv"] = pd.DataFrame({"case_id": list(dice[0]),
                                                                        "dice": list(dice[0].values())})
        _evaluate_sets(report, plot_data, name, merged, outcomes, set_order, options, threshold, dice,
                       has_segmentation, model_counts)

    report["comparisons"] = _compare_models(names, set_order, merged_frames, plot_data, options)
    report["settings"] = settings(options.horizon, n_bootstrap, seed, options.uno_tau, outcomes_source)
    report["settings"].update(extra_settings(options))
    report["not_test_results"] = [f"{name} / {s}" for name, sets in report["models"].items() for s in sets
                                  if s in NON_TEST_SETS]
    report["columns"] = column_sources(options.tag)
    counts["dropped_by_reason"] = {}
    for record in report["dropped"]:
        key = f"{record['metric']}: {record['reason']}"
        counts["dropped_by_reason"][key] = counts["dropped_by_reason"].get(key, 0) + record["count"]
    report["timing_seconds"] = {"metrics": round(timer.perf_counter() - start, 3)}
    # Every input was read and every metric computed: only now is the report folder touched.
    card = None
    if model_card:
        from evaluation.model_card import model_card as write_card

        card = write_card(json_ready(report), names, prediction_paths, options.tag)
    _write(output_dir, report, dice_tables, make_figures, plot_data, names, set_order, options.tag, start, card)
    return report


def extra_settings(options: _Options) -> dict:
    """metrics.json ``settings`` of the calibration, decision curve, risk-group rule and groups."""
    from evaluation.groups import MIN_GROUP_CASES, MIN_GROUP_EVENTS

    return {
        "risk_threshold_from": options.threshold_from,
        "risk_threshold_rule": "auto: median risk_score of the development patients' out-of-sample predictions "
                               "(--train-predictions, else fold_<f>/validation/head_predictions.csv of the model "
                               "folder named by the predictions.json beside predictions.csv), else the set's own "
                               "median, flagged as a fallback; development: those or an error; test-median: the "
                               "set's own median",
        "calibration_horizon": "evaluation.calibration: 1 - KM at the horizon vs mean predicted (in the large), "
                               "Cox on cloglog(p) (slope; intercept = log Breslow baseline cumulative hazard at the "
                               "horizon with slope fixed at 1), Cox on a 3-knot restricted cubic spline of cloglog(p) "
                               "(ICI, E50, E90; Austin et al. 2020); follow-up truncated at the horizon; percentile "
                               "bootstrap CIs on the C-index's resamples",
        "decision_curve": "dcurves dca, survival endpoint, thresholds "
                          f"{options.dca_thresholds[0]:g} to {options.dca_thresholds[-1]:g} "
                          f"({len(options.dca_thresholds)} values)",
        "decision_curve_thresholds": list(options.dca_thresholds),
        "auc_ipcw": "sksurv cumulative_dynamic_auc at the horizon of p_recurrence_<H>m and of 1 - surv_prob_<H>m, "
                    "every case (IPCW, censoring from the evaluated set)",
        "centre_column": options.centre_column, "centre_reason": options.centre_reason,
        "subgroups": list(options.subgroups),
        "groups_rule": f"per centre / subgroup: n/a below {MIN_GROUP_CASES} cases or {MIN_GROUP_EVENTS} events",
        "allow_development_cases": options.allow_development_cases,
    }
