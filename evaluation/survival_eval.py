#!/usr/bin/env python
"""Evaluate recurrence / disease-free-survival predictions: metrics with CIs, comparisons, figures.

Works on prediction CSVs from any tool (columns ``case_id``, ``risk_score`` (higher = higher
risk), ``p_recurrence_<H>m``, optional ``surv_prob_<t>m``; other columns are ignored) and on
outcomes either from a converted nnU-Net dataset (``--dataset 501``: the ``"multitask"`` block of
``$nnUNet_raw/Dataset501_*/dataset.json``) or from a CSV (``--outcomes``).

The multitask model gives two risks at the horizon H from two different heads, and nothing ties
them together: ``p_recurrence_<H>m`` is the classification head (sigmoid of its logit), while
``risk_score`` and ``surv_prob_<t>m`` come from the survival head. The C-index and Uno's C score
``risk_score`` (survival head); ``auc_<H>m`` scores ``p_recurrence_<H>m`` (classification head;
``risk_score`` when a file has none, see ``auc_<H>m_score`` / ``auc_<H>m_head``);
``auc_<H>m_survival_head`` scores ``1 - surv_prob_<H>m`` on the same known-status cases; and
``heads_agreement_<H>m`` gives the Pearson and Spearman correlation and the mean absolute
difference of the two risks. metrics.json's top-level ``columns`` names the head of each column and
metric.

Examples
--------
::

    python evaluation/survival_eval.py --predictions all.csv mri.csv --names All MRI \
        --dataset 501 --seg-pred OUT_all OUT_mri --seg-gt $nnUNet_raw/Dataset501_LARC/labelsTs \
        --train-predictions train_all.csv train_mri.csv -o report/

    python -m evaluation.survival_eval --predictions preds.csv --outcomes outcomes.csv -o report/

    multitask_survival_eval --predictions preds.csv --outcomes outcomes.csv -o report/

Writes ``metrics.json``, ``report.md``, ``dice_<model>.csv`` (with segmentations) and PNG figures
into the report folder. Point estimates come from scikit-survival / scikit-learn; the bootstrap of
Harrell's C and DeLong's variance are computed in ``evaluation.metrics``.

This file is only the command line. The parts: ``evaluation.inputs`` (prediction and outcome
files; outcomes through ``clinical.tables.read_follow_up_table``), ``evaluation.set_metrics`` (one
helper per metric, ``evaluate_set``), ``evaluation.compare`` (model vs model),
``evaluation.segmentation`` (Dice), ``evaluation.report`` (report.md, metrics.json settings),
``evaluation.figures`` and ``evaluation.pipeline`` (``evaluate``: all of it, then the files).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run by path (python evaluation/survival_eval.py): Python puts this file's folder first on
    # sys.path, not the repository root. Swap it for the root, the only place sys.path is touched,
    # so that `evaluation` and `clinical` import as packages from this checkout even without
    # `pip install -e .` (with it they import anyway) and evaluation/*.py never shadow top-level modules.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import pandas as pd  # noqa: E402

from clinical.errors import MultitaskError
from evaluation.compare import compare_pair  # noqa: E402
from evaluation.decision_curve import thresholds_from  # noqa: E402
from evaluation.inputs import (EvaluationInputError, SURV_PROB_TIMES, check_positive_months,  # noqa: E402
                               find_dataset_json, horizon_tag, load_group_table, load_outcomes_csv,
                               load_outcomes_from_dataset, load_predictions)
from evaluation.pipeline import evaluate  # noqa: E402
from evaluation.report import column_sources, render_report  # noqa: E402
from evaluation.segmentation import dice_per_case  # noqa: E402
from evaluation.set_metrics import CI_LEVEL, TD_AUC_TIMES, evaluate_set  # noqa: E402

# The public names of the evaluation, importable from here as before the split.
__all__ = ["CI_LEVEL", "EvaluationInputError", "SURV_PROB_TIMES", "TD_AUC_TIMES", "build_parser",
           "check_positive_months", "column_sources", "compare_pair", "dice_per_case", "evaluate", "evaluate_set",
           "find_dataset_json", "horizon_tag", "load_outcomes_csv", "load_outcomes_from_dataset", "load_predictions",
           "main", "render_report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", nargs="+", required=True, help="prediction CSV(s), one per model")
    parser.add_argument("--names", nargs="+", help="model names (default: file names without .csv)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=int, help="nnU-Net dataset id: outcomes from its dataset.json "
                                                    "'multitask' block under $nnUNet_raw")
    source.add_argument("--outcomes", help="outcomes CSV: case_id, dfs_months, dfs_event, optional set")
    parser.add_argument("--time-column", default="dfs_months", help="time column of --outcomes")
    parser.add_argument("--event-column", default="dfs_event", help="event column of --outcomes")
    parser.add_argument("--horizon", type=float, default=None,
                        help="months (default: the dataset's horizon_months, else 36)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    parser.add_argument("--train-predictions", nargs="+",
                        help="per model, a CSV of the development patients' OUT-OF-SAMPLE predictions (each patient "
                             "predicted by a fold model that never trained on it, e.g. the pooled "
                             "fold_<f>/validation/head_predictions.csv); their median risk_score is the risk-group "
                             "threshold. Default: found through the predictions.json beside a predictions.csv")
    parser.add_argument("--threshold-from", choices=("auto", "development", "test-median"), default="auto",
                        help="risk-group threshold: 'development' = median of the development patients' "
                             "out-of-sample risks (error when there are none); 'test-median' = each evaluated set's "
                             "own median (not fixed before the test set); 'auto' (default) = development when "
                             "found, else the set's median flagged as a fallback in the report")
    parser.add_argument("--allow-development-cases", action="store_true",
                        help="evaluate prediction cases of the development (training) set instead of refusing them; "
                             "labelled 'not a test result' in report.md and metrics.json")
    parser.add_argument("--dca-thresholds", nargs=3, type=float, metavar=("LOW", "HIGH", "STEP"),
                        default=(0.01, 0.60, 0.01),
                        help="threshold probabilities of the decision curves (default 0.01 0.60 0.01)")
    parser.add_argument("--clinical", help="CSV with case_id and the centre / --subgroups columns (default: the "
                                           "dataset's clinical table with --dataset, else the --outcomes CSV)")
    parser.add_argument("--centre-column", help="centre column (default: the dataset's centre_column, else 'centre'; "
                                                "no results per centre when the table has none)")
    parser.add_argument("--subgroups", nargs="+", default=[],
                        help="categorical clinical columns: C-index, AUC and calibration per value")
    parser.add_argument("--model-card", action="store_true",
                        help="also write MODEL_CARD.md (TRIPOD+AI-shaped, from predictions.json and metrics.json)")
    parser.add_argument("--seg-pred", nargs="+", help="predicted segmentation folder per model ('none' skips)")
    parser.add_argument("--seg-gt", help="reference segmentation folder (<case_id>.nii.gz)")
    parser.add_argument("--uno-tau", type=float, default=None, help="Uno's C truncation (default: horizon)")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="count and exclude prediction cases absent from the outcomes instead of failing")
    parser.add_argument("--no-figures", action="store_true",
                        help="metrics.json and report.md only, no Kaplan-Meier / ROC / calibration figures")
    parser.add_argument("-o", "--output", required=True, help="report folder")
    return parser


#: A subgroup column with more distinct values than this is refused (it looks continuous).
MAX_SUBGROUP_VALUES = 12


def _group_table(args: argparse.Namespace, info: dict) -> dict:
    """The table, centre column and subgroups for the results per centre / subgroup (``evaluate``'s
    ``groups``, ``centre_column``, ``centre_reason``, ``subgroups``)."""
    path = args.clinical or info.get("clinical_table") or args.outcomes
    centre = args.centre_column or info.get("centre_column") or "centre"
    if not path or not Path(path).is_file():
        if args.subgroups or args.centre_column or args.clinical:
            raise EvaluationInputError(f"{path}: clinical table not found (for --subgroups / --centre-column)")
        return {"groups": None, "centre_column": None, "centre_reason": f"no clinical table ({path})"}
    load_group_table(path, [], "the centre and subgroups")  # a readable CSV with unique case ids
    present = pd.read_csv(path, nrows=0).columns
    if args.centre_column and centre not in present:
        raise EvaluationInputError(f"{path}: no column '{centre}' (--centre-column); columns: {list(present)}")
    declared = info.get("clinical_columns") or {}
    for column in args.subgroups:
        kind = (declared.get(column) or {}).get("type")
        if kind not in (None, "categorical", "binary"):
            raise EvaluationInputError(f"--subgroups {column}: declared '{kind}' in {info.get('dataset_json')}; "
                                       "subgroups need a categorical or binary column")
    columns = ([centre] if centre in present else []) + [c for c in args.subgroups if c != centre]
    reason = None if centre in present else f"{path} has no centre column '{centre}'"
    if not columns:
        return {"groups": None, "centre_column": None, "centre_reason": reason}
    table = load_group_table(path, columns, "--subgroups")
    for column in args.subgroups:
        values = table[column].nunique()
        if values > MAX_SUBGROUP_VALUES:
            raise EvaluationInputError(f"{path}: --subgroups {column} has {values} distinct values (more than "
                                       f"{MAX_SUBGROUP_VALUES}: not a categorical column)")
    return {"groups": table, "centre_column": centre if centre in present else None, "centre_reason": reason}


def _outcomes(args: argparse.Namespace):
    """Outcomes, horizon, source and the dataset's information named by the options (--dataset or --outcomes)."""
    if args.dataset is None:
        outcomes = load_outcomes_csv(args.outcomes, args.time_column, args.event_column)
        return outcomes, (args.horizon if args.horizon is not None else 36.0), str(args.outcomes), {}
    outcomes, info = load_outcomes_from_dataset(args.dataset)
    if args.horizon is not None:
        horizon = args.horizon
    elif info["horizon_months"] is None:
        horizon = 36.0
    else:
        horizon = check_positive_months(info["horizon_months"], f"{info['dataset_json']}: multitask.horizon_months")
    return outcomes, horizon, info["dataset_json"], info


def _print_summary(report: dict, horizon: float, output: str) -> None:
    """The results table, the excluded cases and where the report went, on the console."""
    print(render_report(report, horizon_tag(horizon)).split("\n## ")[0])
    if report["dropped"]:
        print("Excluded cases (also in report.md):")
        for d in report["dropped"]:
            shown = ", ".join(d["case_ids"][:10]) + (", ..." if d["count"] > 10 else "")
            print(f"  {d['model']} / {d['set'] or 'input'} / {d['metric']}: {d['count']} case(s), {d['reason']}: "
                  f"{shown}")
    else:
        print("Excluded cases: none")
    print(f"wrote {Path(output) / 'metrics.json'} and report.md in {report['timing_seconds']['total']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """The command line (``multitask_survival_eval``); 0 on success, 2 on bad input (``error: ...``)."""
    args = build_parser().parse_args(argv)
    try:
        if Path(args.output).exists() and not Path(args.output).is_dir():
            raise EvaluationInputError(f"-o {args.output}: exists and is not a folder")
        if args.horizon is not None:
            check_positive_months(args.horizon, "--horizon")
        if args.uno_tau is not None:
            check_positive_months(args.uno_tau, "--uno-tau")
        if args.bootstrap < 1:
            raise EvaluationInputError("--bootstrap must be >= 1")
        try:
            dca_thresholds = thresholds_from(*args.dca_thresholds)
        except ValueError as error:
            raise EvaluationInputError(f"--dca-thresholds: {error}") from None
        outcomes, horizon, source, info = _outcomes(args)
        report = evaluate(args.predictions, outcomes, args.output, names=args.names, horizon=horizon,
                          n_bootstrap=args.bootstrap, seed=args.seed, train_prediction_paths=args.train_predictions,
                          seg_pred_dirs=args.seg_pred, seg_gt_dir=args.seg_gt, allow_unmatched=args.allow_unmatched,
                          uno_tau=args.uno_tau, make_figures=not args.no_figures, outcomes_source=source,
                          threshold_from=args.threshold_from, allow_development_cases=args.allow_development_cases,
                          dca_thresholds=dca_thresholds, subgroups=args.subgroups, model_card=args.model_card,
                          **_group_table(args, info))
    except MultitaskError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_summary(report, horizon, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
