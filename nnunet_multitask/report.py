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
import json
import math
import os
import sys
from os.path import isdir, isfile, join
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

from clinical.errors import MultitaskError
from nnunet_multitask.contract import DatasetContract, recurrence_column, survival_column, survival_times
from nnunet_multitask.prediction_artifact import (PREDICTIONS_CSV, PREDICTIONS_JSON, MultitaskPredictionError,
                                                  PredictionFormatError, PredictionRecord)
from nnunet_multitask.prediction_artifact import read_predictions as read_prediction_files
from nnunet_multitask.publish import publish_folder, staging_folder
from nnunet_multitask.report_pages import plot_case, summary_html
from nnunet_multitask.report_reference import REFERENCE_CHECKPOINT, ReferenceDistribution, reference_distribution
from nnunet_multitask.saliency import DEFAULT_MAX_BLOCKS, read_saliency, saliency_for_cases

REPORT_FOLDER = "report"
SUMMARY_HTML = "index.html"
SUMMARY_CSV = "summary.csv"
SALIENCY_FOLDER = "saliency"


class ReportError(MultitaskPredictionError):
    """The report cannot be made (missing predictions, images or reference masks); names the file."""



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
                      "sd": _num(row.get(survival_column(t) + "_sd"))}
                     for t in survival_times(horizon) if survival_column(t) in row.index],
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
    except (MultitaskError, OSError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
