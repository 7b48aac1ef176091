"""Patient-level inference: nnU-Net's predictor plus the heads' risk, recurrence probability and
survival curve, with fold ensembling.

``nnUNetv2_predict_multitask`` mirrors ``nnUNetv2_predict`` (same flags) and adds ``--clinical``
and ``--impute-missing-clinical``. Segmentations are written by nnU-Net's own export;
``predictions.csv`` and ``predictions.json`` hold the patient-level outputs.

``predictions.csv``, one row per case (sorted by ``case_id``). The two heads give two separate
risks at the horizon, and nothing ties them together (``evaluation/survival_eval.py`` reports the
horizon AUC of each and their agreement):

* ``p_recurrence_<H>m`` (H = the model's horizon): **classification head**, the sigmoid of its
  logit, P(recurrence by H months);
* ``risk_score``: **survival head** (higher = higher risk; Cox head: the log-risk, discrete-time
  head: the cumulative hazard ``-log S(horizon)``);
* ``surv_prob_<t>m`` for t in :data:`~nnunet_multitask.contract.SURVIVAL_TIMES`: **survival head**,
  discrete-time head only, the predicted recurrence-free survival S(t); ``1 - surv_prob_<H>m`` is the
  survival head's risk by the horizon, not ``p_recurrence_<H>m``;
* ``<column>_sd``: the spread (sample standard deviation) of each of these over the folds; empty
  (NaN) when a single fold was used, because one fold gives no spread;
* ``n_folds``; ``tumour_found`` (False when, in at least one fold, the segmentation found
  (almost) no tumour, so the heads saw the features of an empty segmentation; see
  :mod:`nnunet_multitask.aggregation`); ``clinical_imputed`` (the case had no clinical
  row and ``--impute-missing-clinical`` imputed all of it as in training);
  ``n_clinical_values_imputed`` (how many of the model's clinical columns were empty or absent
  for the case and were imputed with the fold's fitted values).

``predictions.json`` repeats this as ``column_sources`` (column -> head) for the columns written.

The patient-level definition is :func:`nnunet_multitask.aggregation.patient_level_prediction`:
nnU-Net's sliding window (tiles and mirrors) stitches the whole-image segmentation, the heads run
once on tumour-level features of the whole image, so one pass yields the segmentation and the
heads. Folds are ensembled by averaging log-risks (risk scores) and probabilities.

Nothing half-written: :func:`predict_folder` checks the model, every input case, the clinical
table and the output folder before predicting anything, then predicts into a hidden staging
folder inside the output folder and moves the results into place only when every case has
succeeded (``predictions.csv`` last). A failure leaves the output folder as it was.

This module is the command line (``nnUNetv2_predict_multitask``, and ``--merge``); the work is done by
:mod:`~nnunet_multitask.prediction_inputs` (checks before predicting),
:mod:`~nnunet_multitask.prediction_engine` (the predictor), :mod:`~nnunet_multitask.prediction_run`
(the staged, resumable run), :mod:`~nnunet_multitask.prediction_parts` (parts and their merge),
:mod:`~nnunet_multitask.report` and :mod:`~nnunet_multitask.saliency`; the files' types are in
:mod:`~nnunet_multitask.prediction_artifact`, the locking and publishing in
:mod:`~nnunet_multitask.publish`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from os.path import isdir, isfile, join
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from nnunetv2.utilities.file_path_utilities import get_output_folder

from clinical.errors import MultitaskError
from dataset_conversion.dicom_export import read_t2_series, t2_reference_grid, write_dicom_seg, write_risk_report
from dataset_conversion.import_dicom import t2_files_from_mapping
from dataset_conversion.new_patients import prepare_new_patients
from nnunet_multitask.prediction_artifact import (EXIT_FINISHED_WITH_FAILURES, FAILURES_CSV, PREDICTIONS_CSV,
                                                  PREDICTIONS_JSON, MultitaskPredictionError, PredictionRecord,
                                                  column_sources)
from nnunet_multitask.prediction_engine import MultiTaskPredictor
from nnunet_multitask.prediction_inputs import check_inputs, is_cohort_folder
from nnunet_multitask.prediction_model import refuse_duplicate_folds
from nnunet_multitask.prediction_parts import merge_parts
from nnunet_multitask.prediction_run import predict_folder
from nnunet_multitask.publish import output_folder_lock, publish_folder, staging_folder
from nnunet_multitask.recalibration import RecalibrationError, load_recalibration
from nnunet_multitask.report import ReportError, check_report_inputs, report_for_prediction, write_report
from nnunet_multitask.saliency import DEFAULT_MAX_BLOCKS


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_multitask",
        description="nnU-Net prediction with patient-level heads: writes nnU-Net's segmentations plus "
                    "predictions.csv (p_recurrence_<H>m from the classification head; risk_score and "
                    "surv_prob_<t>m from the survival head; spread over folds) "
                    "and predictions.json (provenance). Everything is checked before prediction starts, and "
                    "the output folder receives the results only when every case succeeded.")
    parser.add_argument("-i", required=True, help="input folder: <case>_<XXXX>.nii.gz files as nnUNetv2_predict, or "
                        "new patients in the cohort layout (images/<patient_id>/T2.nii.gz, ADC, Dapp, Kapp on their "
                        "own grids, no mask; clinical.csv without follow-up), checked and resampled as the converter "
                        "does")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-tr", default="MultiRecTrainer", help="trainer class used for training")
    parser.add_argument("-c", required=True, help="configuration")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (log-risks and "
                        "probabilities are averaged over them; the spread is reported)")
    parser.add_argument("-chk", default="checkpoint_final.pth",
                        help="checkpoint file name in each fold folder (default checkpoint_final.pth; the measured "
                             "choice, BENCHMARKS.md c.8)")
    parser.add_argument("-step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size (nnU-Net's default 0.5)")
    parser.add_argument("--disable_tta", action="store_true",
                        help="no test-time mirroring (up to 8x faster in 3-D; as nnUNetv2_predict)")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                        help="where to run the network (default cuda; cpu uses every core)")
    parser.add_argument("-npp", type=int, default=int(os.environ.get("nnUNet_npp", 3)),
                        help="preprocessing worker processes (default $nnUNet_npp or 3; 0 with -nps 0: nnU-Net's "
                             "sequential path, no workers)")
    parser.add_argument("-nps", type=int, default=int(os.environ.get("nnUNet_nps", 3)),
                        help="segmentation export worker processes (default $nnUNet_nps or 3)")
    parser.add_argument("--clinical", default=None, help="CSV with the new cases' clinical rows keyed by case_id "
                        "(case_id, centre and the model's clinical columns; default: the dataset's clinical table)")
    parser.add_argument("--impute-missing-clinical", action="store_true",
                        help="a case without a clinical row is imputed as in training (flagged clinical_imputed "
                             "in the CSV) instead of being an error")
    parser.add_argument("--allow-missing-series", action="store_true",
                        help="cases may lack series other than T2 (e.g. no Dapp/Kapp): they are filled as at "
                             "conversion and flagged to a model trained for it (MultiRecTrainer_ModalityDropout); "
                             "predictions.csv names each case's series (series_available)")
    parser.add_argument("--resample-to-first", action="store_true",
                        help="a channel whose grid (size, spacing, origin or direction) differs from the case's first "
                             "channel's is resampled onto it (linear) instead of refused; predictions.json lists them")
    parser.add_argument("--continue", dest="continue_prediction", action="store_true",
                        help="pick up a run into the same -o that was killed (as nnUNetv2_predict's "
                             "--continue_prediction): its finished cases are not predicted again; the run must use "
                             "the same model, folds, flags, inputs and clinical table")
    parser.add_argument("--keep-going", action="store_true",
                        help="a case that fails while it is predicted or exported (after the up-front checks) is "
                             "written to failures.csv with its reason and the other cases are published; exit "
                             f"status {EXIT_FINISHED_WITH_FAILURES} says the run finished with failures (each case "
                             "is predicted on its own, on nnU-Net's sequential path)")
    parser.add_argument("--recalibrated", action="store_true",
                        help="apply the model folder's recalibration.json (python -m nnunet_multitask.recalibration, "
                             "fitted on the development patients' out-of-sample predictions): p_recurrence_<H>m and "
                             "surv_prob_<t>m recalibrated, the raw values kept as *_uncalibrated, risk_score "
                             "unchanged, column recalibrated = True; refused when the file is absent or fitted on "
                             "other folds")
    parser.add_argument("--dicom-out", action="store_true",
                        help="with -i a cohort folder made by multirec_import_dicom: also write <output>/dicom/ with "
                             "each patient's predicted tumour as DICOM-SEG and the risk outputs as a structured report "
                             "(research use only), both referencing the patient's T2 series; these DICOM objects "
                             "carry the source study's patient identifiers, as DICOM must")
    # split inference as in nnUNetv2_predict, and the merge of its parts (nnunet_multitask.prediction_parts)
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (run each "
                        "part on its own machine, each into its own output folder, then merge them with --merge)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this run predicts, 0..num_parts-1: the "
                        "cases sorted(cases)[part_id::num_parts], as nnUNetv2_predict")
    parser.add_argument("--merge", nargs="+", metavar="PART_DIR", default=None,
                        help="instead of predicting: merge the output folders of every part of a -num_parts run "
                             "into -o (predictions.csv, predictions.json, segmentations copied); refuses parts of "
                             "different models or settings and overlapping or missing cases. Takes -o, and "
                             "optionally --report [-i IMAGES] [--seg-gt MASKS]")
    # per-patient report (nnunet_multitask.report) and occlusion saliency (nnunet_multitask.saliency)
    parser.add_argument("--report", action="store_true",
                        help="also write <output>/report/: one PNG per case (T2 through the tumour with the "
                             "segmentation outlined, survival curve, risk percentile and group, both heads' "
                             "recurrence probabilities, clinical values used) and index.html, the cases sorted by "
                             "risk")
    parser.add_argument("--seg-gt", default=None, help="with --report: reference masks <case><ending> to outline too")
    parser.add_argument("--saliency", action="store_true",
                        help="with --report: occlusion saliency of the risk score over the tumour, drawn on T2 "
                             "(costs (1 + --saliency-blocks) x folds extra predictions per case)")
    parser.add_argument("--saliency-blocks", type=int, default=DEFAULT_MAX_BLOCKS,
                        help=f"at most this many occluded blocks per case (default {DEFAULT_MAX_BLOCKS})")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--verbose", action="store_true", help="nnU-Net's verbose prediction and preprocessing output")
    return parser


def _check_part_and_report_options(parser: argparse.ArgumentParser, args) -> None:
    """``-num_parts``/``-part_id`` and the report's options, refused (exit status 2) before anything
    is loaded or predicted."""
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        parser.error(f"-part_id {args.part_id} -num_parts {args.num_parts}: need -num_parts >= 1 and "
                     f"0 <= -part_id < -num_parts (parts are counted from 0, as in nnUNetv2_predict)")
    if (args.saliency or args.seg_gt is not None) and not args.report:
        parser.error("--saliency and --seg-gt are drawn in the per-patient report: add --report")
    if args.saliency_blocks < 1:
        parser.error(f"--saliency-blocks {args.saliency_blocks}: must be at least 1")
    if args.report:
        try:
            check_report_inputs(args.i, args.seg_gt)
        except ReportError as e:
            parser.error(str(e))


def _check_report_against_cases(args, cases: Sequence[str], ending: str) -> None:
    """The report's inputs against the cases to predict, before any is predicted."""
    try:
        check_report_inputs(args.i, args.seg_gt, cases, ending)
    except ReportError as e:
        raise MultitaskPredictionError(str(e)) from None


def _finished_message(args, table: pd.DataFrame) -> str:
    if (args.part_id, args.num_parts) == (0, 1):
        return f"Wrote {len(table)} patient-level predictions to {join(args.o, PREDICTIONS_CSV)}"
    return (f"Wrote part {args.part_id} of {args.num_parts}: {len(table)} patient-level predictions to "
            f"{join(args.o, PREDICTIONS_CSV)}; when every part has finished, merge their output folders with "
            f"nnUNetv2_predict_multitask --merge PART_DIR [PART_DIR ...] -o OUT")


def _early_dataset_json(model_folder: str) -> Optional[dict]:
    """The model folder's dataset.json when it can be read (channels and file ending), so the inputs
    are checked before any checkpoint is loaded; None: the model initialisation reports why."""
    path = join(model_folder, "dataset.json")
    if not isfile(path):
        return None
    try:
        with open(path) as f:
            early = json.load(f)
        early["channel_names"], early["file_ending"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return early


def _load_predictor(args, device, model_folder: str, folds) -> MultiTaskPredictor:
    predictor = MultiTaskPredictor(tile_step_size=args.step_size, use_gaussian=True,
                                   use_mirroring=not args.disable_tta,
                                   perform_everything_on_device=args.device == "cuda", device=device,
                                   verbose=args.verbose, verbose_preprocessing=args.verbose,
                                   allow_tqdm=not args.disable_progress_bar)
    predictor.initialize_from_trained_model_folder(model_folder, folds, args.chk)
    if args.clinical is not None and not predictor.uses_clinical_data:
        print(f"Note: {args.tr} uses no clinical data; --clinical {args.clinical} is not read")
    return predictor


def _dicom_references(args, prepared) -> Dict[str, list]:
    """``--dicom-out``: each new patient's T2 DICOM files (through the importer's
    ``dicom_mapping.csv``), found before anything is predicted; empty without the option."""
    if not args.dicom_out:
        return {}
    if prepared is None or not isfile(join(args.i, "dicom_mapping.csv")):
        raise MultitaskPredictionError(f"--dicom-out: -i {args.i} is not a cohort folder made by multirec_import_dicom "
                                       f"(no dicom_mapping.csv): the DICOM objects must reference the T2 series the "
                                       f"patient came from")
    references = {}
    for case_id, patient_id in zip(prepared.mapping["case_id"], prepared.mapping["patient_id"]):
        try:
            references[case_id] = t2_files_from_mapping(args.i, patient_id)
            t2_reference_grid(read_t2_series(references[case_id]))  # the checks the writers make, up front
        except (MultitaskError, OSError, AttributeError, ValueError) as e:
            raise MultitaskPredictionError(f"--dicom-out: patient {patient_id}: its T2 DICOM series cannot be "
                                           f"referenced: {e}") from None
    return references


def _write_dicom_outputs(output_folder: str, table: pd.DataFrame, t2_files: Mapping[str, list],
                         ending: str) -> None:
    """``<output>/dicom/<case>_seg.dcm`` (the predicted tumour as DICOM-SEG) and ``<case>_sr.dcm``
    (the risk outputs as a structured report marked research use), staged and moved into place."""
    with staging_folder(output_folder, "dicom_") as staging:
        for _, row in table.iterrows():
            case = row["case_id"]
            values = {c: float(row[c]) for c in column_sources(table.columns)
                      if pd.notna(row[c]) and np.isfinite(float(row[c]))}
            try:
                write_dicom_seg(sitk.ReadImage(join(output_folder, case + ending)), t2_files[case],
                                join(staging, f"{case}_seg.dcm"))
                write_risk_report(values, t2_files[case], join(staging, f"{case}_sr.dcm"))
            except (MultitaskError, OSError, AttributeError, ValueError, RuntimeError) as e:
                # highdicom / pydicom / SimpleITK errors too: the predictions are published already
                raise MultitaskPredictionError(
                    f"--dicom-out: case {case}: {type(e).__name__}: {e}; the predictions in {output_folder} are "
                    f"complete, the dicom/ folder was not written") from None
        publish_folder(staging, join(output_folder, "dicom"))


def _recalibration_for(args, model_folder: str, folds) -> dict:
    """``--recalibrated``: the model folder's ``recalibration.json``, read before anything is
    predicted; it must have been fitted on the folds this run ensembles."""
    try:
        recal = load_recalibration(model_folder)
    except RecalibrationError as e:
        raise MultitaskPredictionError(f"--recalibrated: {e}") from None
    if sorted(map(str, recal["folds"])) != sorted(map(str, folds)):
        raise MultitaskPredictionError(
            f"--recalibrated: {recal['path']} was fitted on the out-of-sample predictions of folds {recal['folds']}, "
            f"this run ensembles folds {[str(f) for f in folds]}: fit it again for these folds "
            f"(python -m nnunet_multitask.recalibration --model-folder {model_folder} -f ...)")
    return recal


def _run_prediction(args, folds, device, work: str) -> pd.DataFrame:
    """Check the inputs, load the model and predict (inside the CLI's error handling)."""
    model_folder = get_output_folder(args.d, args.tr, args.p, args.c)
    if not isdir(model_folder):
        raise MultitaskPredictionError(f"no trained model at {model_folder}")
    early_json = _early_dataset_json(model_folder)
    recalibration = _recalibration_for(args, model_folder, folds) if args.recalibrated else None
    images, clinical, source_label, prepared = args.i, args.clinical, None, None
    if is_cohort_folder(args.i):  # new patients in the cohort layout: checked and resampled as the converter does
        if early_json is None:
            raise MultitaskPredictionError(f"{model_folder}: dataset.json missing or unreadable")
        prepared = prepare_new_patients(args.i, early_json, work, clinical=args.clinical,
                                        allow_missing_series=args.allow_missing_series)
        images, clinical, source_label = prepared.images, prepared.clinical, os.path.abspath(args.i)
    dicom_t2 = _dicom_references(args, prepared)
    # the input images are checked (in full) before any checkpoint is loaded
    checked_cases = None
    if early_json is not None:
        checked_cases = check_inputs(images, early_json, args.allow_missing_series, args.resample_to_first)
        if args.report:
            _check_report_against_cases(args, checked_cases, early_json["file_ending"])
    with output_folder_lock(args.o, resume=args.continue_prediction):
        predictor = _load_predictor(args, device, model_folder, folds)
        predictor.recalibration = recalibration
        if predictor.dataset_json.get("channel_names") != (early_json or {}).get("channel_names") or \
                predictor.dataset_json.get("file_ending") != (early_json or {}).get("file_ending"):
            checked_cases = None  # predict_folder checks against the loaded model's own dataset.json
        if source_label is not None:
            predictor.input_label = source_label
            predictor.clinical_table_label = prepared.clinical_source
        table = predict_folder(predictor, images, args.o, clinical=clinical,
                               impute_missing_clinical=args.impute_missing_clinical,
                               num_processes_preprocessing=args.npp, num_processes_segmentation_export=args.nps,
                               checked_cases=checked_cases, allow_missing_series=args.allow_missing_series,
                               part_id=args.part_id, num_parts=args.num_parts,
                               resample_to_first=args.resample_to_first, resume=args.continue_prediction,
                               keep_going=args.keep_going)
        if source_label is not None:
            prepared.publish_mapping(args.o)
        if dicom_t2:
            _write_dicom_outputs(args.o, table, dicom_t2, predictor.dataset_json["file_ending"])
        if args.report:
            report_for_prediction(predictor, images, args.o, table, seg_gt_folder=args.seg_gt,
                                  saliency=args.saliency, saliency_blocks=args.saliency_blocks)
    return table


def predict_entry_point(argv: Optional[List[str]] = None):
    """Console script ``nnUNetv2_predict_multitask``; errors are printed (naming the case, file and
    problem) with exit status 2, without a traceback; a ``--keep-going`` run that finished with
    failed cases exits with :data:`EXIT_FINISHED_WITH_FAILURES`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--merge" in argv:  # merging parts needs no model and no input folder: its own flags
        _merge_main(argv)
        return
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_part_and_report_options(parser, args)
    if os.path.realpath(args.o) == os.path.realpath(args.i):
        parser.error(f"-o {args.o} is the input folder -i: predictions, plans and segmentations would be written "
                     f"among the input images (and a second run would read them as input); use another folder")
    try:
        folds = [f if f == "all" else int(f) for f in args.f]
    except ValueError:
        parser.error(f"-f: folds must be integers or 'all', got {args.f}")
    try:
        refuse_duplicate_folds(folds)
    except MultitaskPredictionError as e:
        parser.error(f"-f: {e}")
    work = tempfile.mkdtemp(prefix="nnunet_multitask_inputs_")
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise MultitaskPredictionError("-device cuda: no CUDA device is available (use -device cpu)")
        device = torch.device(args.device)
        if args.device == "cpu":
            torch.set_num_threads(multiprocessing.cpu_count())
        table = _run_prediction(args, folds, device, work)
    except MultitaskError as e:  # every project error: prediction, checkpoint, schema, table, conversion, DICOM
        print(f"nnUNetv2_predict_multitask: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(_finished_message(args, table))
    failed = _failed_cases(args.o)
    if failed:
        print(f"nnUNetv2_predict_multitask: finished with failures: {len(failed)} case(s) could not be predicted "
              f"({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}); their reasons are in "
              f"{join(args.o, FAILURES_CSV)}", file=sys.stderr)
        sys.exit(EXIT_FINISHED_WITH_FAILURES)


def _failed_cases(output_folder: str) -> List[str]:
    return PredictionRecord.read(join(output_folder, PREDICTIONS_JSON)).failed


def _merge_main(argv: Sequence[str]) -> None:
    """``nnUNetv2_predict_multitask --merge PART_DIR [PART_DIR ...] -o OUT [--report [-i IMAGES]
    [--seg-gt MASKS]]``: refusals exit with status 2 and ``nnUNetv2_predict_multitask: error: ...``."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_multitask",
        description="Merge the output folders of a -num_parts N run (parts 0..N-1) into one predictions.csv, "
                    "predictions.json and the segmentations, refusing parts of different models or settings and "
                    "overlapping or missing cases.")
    parser.add_argument("--merge", nargs="+", required=True, metavar="PART_DIR", help="every part's output folder")
    parser.add_argument("-o", required=True, help="output folder of the merged run")
    parser.add_argument("--report", action="store_true", help="also write the per-patient report of all cases")
    parser.add_argument("-i", default=None, help="with --report: the input image folder (default: the one the "
                                                 "parts recorded)")
    parser.add_argument("--seg-gt", default=None, help="with --report: reference masks <case><ending>")
    args = parser.parse_args(list(argv))
    try:
        table = merge_parts(args.merge, args.o)
    except MultitaskPredictionError as e:
        parser.error(str(e))
    print(f"Merged {len(args.merge)} parts: {len(table)} patient-level predictions in {join(args.o, PREDICTIONS_CSV)} "
          f"(segmentations copied beside it)")
    record = PredictionRecord.read(join(args.o, PREDICTIONS_JSON))
    failed = record.failed
    if args.report:
        images = args.i
        if images is None:
            images = (record.merged_from or [{}])[0].get("input_folder")
        try:
            if not images:
                raise ReportError("--report: give the input image folder with -i")
            write_report(args.o, images, args.seg_gt)
        except (ReportError, OSError) as e:
            print(f"nnUNetv2_predict_multitask: error: {e}", file=sys.stderr)
            sys.exit(2)
    if failed:
        print(f"nnUNetv2_predict_multitask: merged with failures: {len(failed)} case(s) were not predicted "
              f"({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}); the merged table is not complete "
              f"(predictions.json 'complete': false) and {join(args.o, FAILURES_CSV)} lists them", file=sys.stderr)
        sys.exit(EXIT_FINISHED_WITH_FAILURES)


if __name__ == "__main__":
    predict_entry_point()
