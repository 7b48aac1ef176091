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
from evaluation.segmentation import add_dice, dice_per_case, dropped_record
from evaluation.set_metrics import evaluate_set

#: Sets in report order; any other set name follows, sorted.
KNOWN_SETS = ("internal_test", "external_test", "development", "all")


@dataclass(frozen=True)
class _Options:
    horizon: float
    n_bootstrap: int
    seed: int
    uno_tau: float | None
    allow_unmatched: bool
    outcomes_source: str

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
    if len(merged) == 0:
        source = options.outcomes_source or "the outcomes table"
        raise EvaluationInputError(
            f"{path}: none of its {len(predictions)} case(s) ({predictions['case_id'].tolist()[:5]}...) has an "
            f"outcome in {source} (outcome cases: {sorted(outcomes['case_id'])[:5]}...): nothing to evaluate; "
            "check the case ids")
    return predictions, merged, unmatched


def _threshold(train_path: PathLike | None, horizon: float) -> tuple[float | None, str | None]:
    """Risk-group threshold: the median risk of the model's training predictions (None: the set's median)."""
    if not train_path:
        return None, None
    train = load_predictions(train_path, horizon)
    return float(np.median(train["risk_score"])), f"median risk of training predictions {train_path} (n={len(train)})"


def _evaluate_sets(report: dict, plot_data: dict, name: str, merged: pd.DataFrame, outcomes: pd.DataFrame,
                   set_order: list[str], options: _Options, threshold: tuple, dice: tuple, has_segmentation: bool,
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
        result, plots = evaluate_set(frame, options.horizon, options.n_bootstrap, options.seed, *threshold,
                                     options.uno_tau)
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
           names: list[str], set_order: list[str], tag: str, start: float) -> None:
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


def evaluate(prediction_paths: Sequence[PathLike], outcomes: pd.DataFrame, output_dir: PathLike,
             names: Sequence[str] | None = None, horizon: float = 36.0, n_bootstrap: int = 1000, seed: int = 0,
             train_prediction_paths: Sequence[PathLike] | None = None,
             seg_pred_dirs: Sequence[PathLike] | None = None, seg_gt_dir: PathLike | None = None,
             allow_unmatched: bool = False, uno_tau: float | None = None, make_figures: bool = True,
             outcomes_source: str = "") -> dict:
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
        One training-fold prediction CSV per model; its median risk is the risk-group threshold.
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

    Returns
    -------
    dict
        The content of metrics.json.
    """
    start = timer.perf_counter()
    prediction_paths = [Path(p) for p in prediction_paths]
    names = _model_names(prediction_paths, names)
    _check_per_model_options(names, train_prediction_paths, seg_pred_dirs, seg_gt_dir)
    options = _Options(check_positive_months(horizon, "the horizon (--horizon)"), n_bootstrap, seed,
                       None if uno_tau is None else check_positive_months(uno_tau, "--uno-tau"),
                       allow_unmatched, outcomes_source)
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
    for index, (name, path) in enumerate(zip(names, prediction_paths, strict=True)):
        predictions, merged, unmatched = _match(report, name, path, outcomes, options)
        merged_frames[name] = merged
        model_counts = {"predictions_file": str(path), "p_recurrence_column": predictions.attrs["p_recurrence_column"],
                        "surv_prob_horizon_column": predictions.attrs["surv_prob_horizon_column"],
                        "prediction_rows": int(len(predictions)), "matched_to_outcomes": int(len(merged)),
                        "unmatched_excluded": len(unmatched), "per_set": {},
                        "outcome_cases_without_prediction": {}}
        counts["models"][name] = model_counts
        threshold = _threshold(train_prediction_paths[index] if train_prediction_paths else None, options.horizon)
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
    report["columns"] = column_sources(options.tag)
    counts["dropped_by_reason"] = {}
    for record in report["dropped"]:
        key = f"{record['metric']}: {record['reason']}"
        counts["dropped_by_reason"][key] = counts["dropped_by_reason"].get(key, 0) + record["count"]
    report["timing_seconds"] = {"metrics": round(timer.perf_counter() - start, 3)}
    # Every input was read and every metric computed: only now is the report folder touched.
    _write(output_dir, report, dice_tables, make_figures, plot_data, names, set_order, options.tag, start)
    return report
