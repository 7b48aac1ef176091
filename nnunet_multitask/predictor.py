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
* ``surv_prob_<t>m`` for t in :data:`SURVIVAL_TIMES`: **survival head**, discrete-time head only,
  the predicted recurrence-free survival S(t); ``1 - surv_prob_<H>m`` is the survival head's risk
  by the horizon, not ``p_recurrence_<H>m``;
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
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections import deque
from dataclasses import replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from os.path import basename, isdir, isfile, join
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch._dynamo import OptimizedModule

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.file_path_utilities import get_output_folder
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from clinical.preprocessing import ClinicalPreprocessingError, ClinicalPreprocessor
from clinical.schema import ClinicalSchema, SchemaError
from clinical.tables import CASE_ID_COLUMN, read_case_table
from dataset_conversion.convert_larc import ConversionError
from dataset_conversion.nifti_integrity import (IncompleteImageError, check_nifti_size, is_nifti, itk_error_reason,
                                               read_nifti_completely, split_image_name)
from nnunet_multitask.aggregation import patient_level_prediction, survival_at_times
from nnunet_multitask.contract import (REQUIRED_SERIES, SERIES_COLUMN, SURVIVAL_TIMES, ContractError,  # noqa: F401
                                       DatasetContract, HeadConfig, missing_series_filler, recurrence_column,
                                       survival_column, survival_times)
from nnunet_multitask.dataset_tables import MultitaskDatasetError, dataset_table_path
from nnunet_multitask.checkpoints import CheckpointError, file_sha256, load_checkpoint_safely
from nnunet_multitask.network import MultiTaskUNet, build_multitask_network
from nnunet_multitask.recalibration import UNCALIBRATED

#: File endings SimpleITK reads, checked for stray files and headers.
_ITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Largest difference between the channels' grids still taken as one grid (mm; direction cosines):
#: NIfTI stores the geometry in float32, so equal grids written by two programs differ by ~1e-5.
GEOMETRY_TOLERANCE = {"spacing_mm": 1e-3, "origin_mm": 1e-3, "direction": 1e-4}
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
_STAGING_PREFIX = ".nnunet_multitask_partial_"
#: The staging folder of a prediction run; a killed run leaves it for ``--continue``.
_RUN_STAGING = _STAGING_PREFIX + "run"
_RUN_RECORD = "run.json"
_CASE_RECORDS = "case_records"
#: Cases that failed in a ``--keep-going`` run, with the reason.
FAILURES_CSV = "failures.csv"
#: Exit status of a ``--keep-going`` run that finished with failed cases (2: refused, nothing written).
EXIT_FINISHED_WITH_FAILURES = 3
#: Held (flock) by the run writing into an output folder; removed when the run ends.
_LOCK_NAME = ".nnunet_multitask.lock"
_held_locks: Dict[str, int] = {}


class MultitaskPredictionError(RuntimeError):
    """The model, an input case, the clinical table or the output folder cannot be used; the
    message names the case / file and the problem."""


def _unwrap(network) -> MultiTaskUNet:
    net = network._orig_mod if isinstance(network, OptimizedModule) else network
    net = getattr(net, "module", net)
    if not isinstance(net, MultiTaskUNet):
        raise MultitaskPredictionError(f"the network is a {type(net).__name__}, not a multitask network: this "
                                       f"model was trained without heads (use nnUNetv2_predict for it)")
    return net


def _version_or_unknown(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _read_model_folder(folder: str) -> tuple:
    """(dataset.json, plans.json, :class:`HeadConfig`) of a model folder, with the checks that it
    is a multitask model of a converted dataset whose channels the heads were trained with."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    for name in ("dataset.json", "plans.json"):
        if not isfile(join(folder, name)):
            raise MultitaskPredictionError(f"{folder}: {name} missing: not an nnU-Net model folder")
    dataset_json = load_json(join(folder, "dataset.json"))
    plans = load_json(join(folder, "plans.json"))
    if "multitask_model" not in plans:
        raise MultitaskPredictionError(f"{join(folder, 'plans.json')} has no 'multitask_model' block: this model "
                                       f"was trained without heads (use nnUNetv2_predict for it)")
    if not dataset_json.get("multitask"):
        raise MultitaskPredictionError(f"{join(folder, 'dataset.json')} has no 'multitask' block: the model "
                                       f"folder does not come from a converted LARC dataset")
    try:
        cfg = HeadConfig.from_plans(plans, source=join(folder, "plans.json"))
        DatasetContract.from_dataset_json(dataset_json, source=join(folder, "dataset.json"))
    except ContractError as e:
        raise MultitaskPredictionError(str(e)) from None
    if cfg.channel_names is not None and dict(cfg.channel_names) != dataset_json["channel_names"]:
        raise MultitaskPredictionError(
            f"{folder}: the heads were trained with channels {dict(cfg.channel_names)} but dataset.json declares "
            f"{dataset_json['channel_names']}")
    return dataset_json, plans, cfg


def _load_fold_checkpoints(ckpt_paths: Sequence[str]) -> tuple:
    """(network weights per fold, trainer name, configuration, mirroring axes), loaded safely; every
    fold must come from the same trainer and configuration and carry a fitted clinical transform."""
    parameters, trainer_name, configuration_name, mirroring = [], None, None, None
    for i, path in enumerate(ckpt_paths):
        ckpt = load_checkpoint_safely(path)
        if i == 0:
            trainer_name = ckpt["trainer_name"]
            configuration_name = ckpt["init_args"]["configuration"]
            mirroring = ckpt.get("inference_allowed_mirroring_axes")
        elif (ckpt["trainer_name"], ckpt["init_args"]["configuration"]) != (trainer_name, configuration_name):
            raise MultitaskPredictionError(
                f"{path}: trained with {ckpt['trainer_name']} / {ckpt['init_args']['configuration']}, but "
                f"{ckpt_paths[0]} with {trainer_name} / {configuration_name}: folds of different models "
                f"cannot be ensembled")
        weights = ckpt["network_weights"]
        if "fold_state_fitted" in weights and not bool(weights["fold_state_fitted"]):
            raise MultitaskPredictionError(f"{path}: the clinical transform and time bins were never fitted "
                                           f"(the checkpoint was saved before training started)")
        parameters.append(weights)
    return parameters, trainer_name, configuration_name, mirroring


class MultiTaskPredictor(nnUNetPredictor):
    """nnUNetPredictor that also returns patient-level head outputs, fold by fold.

    Use as nnU-Net's predictor (``initialize_from_trained_model_folder``, then
    ``predict_from_files`` / ``predict_from_files_sequential``), with :meth:`set_clinical_table`
    in between; :meth:`predictions_table` then holds one row per predicted case.
    :func:`predict_folder` does all of it with the checks and the all-or-nothing output.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_results: Dict[str, dict] = {}
        self._pending_cases: deque = deque()
        self.clinical_table: Optional[pd.DataFrame] = None
        self.clinical_table_source: Optional[str] = None
        self.impute_missing_clinical = False
        self.provenance: dict = {}
        #: 0/1 per channel of the cases being predicted (which series are real); empty: all real
        self.case_availability: Dict[str, np.ndarray] = {}
        self.allow_missing_series = False
        #: per case, channels on another grid than the first channel's, resampled onto it (--resample-to-first)
        self.misaligned_channels: Dict[str, List[int]] = {}
        #: where each finished case's row is kept during a run (for --continue); None: not kept
        self.case_record_folder: Optional[str] = None
        #: the folder the user named when the images were prepared elsewhere (a cohort folder)
        self.input_label: Optional[str] = None
        #: --recalibrated: the model folder's recalibration.json (nnunet_multitask.recalibration), applied
        #: to the table when it is written
        self.recalibration: Optional[dict] = None

    # ------------------------------------------------------------------ loading
    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds, checkpoint_name: str = "checkpoint_final.pth"):
        """nnU-Net's initialisation with checkpoints loaded safely (``weights_only``) and checked:
        the folder has the heads' configuration, every fold's checkpoint exists, comes from the same
        trainer and configuration, carries a fitted clinical transform, and loads strictly into the
        network the plans describe."""
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        if isinstance(use_folds, (str, int)):
            use_folds = [use_folds]
        use_folds = [f if f == "all" else int(f) for f in use_folds]
        _refuse_duplicate_folds(use_folds)
        if not use_folds:
            raise MultitaskPredictionError(f"{model_training_output_dir}: no fold folder has {checkpoint_name}")
        dataset_json, plans, cfg = _read_model_folder(model_training_output_dir)
        ckpt_paths = [join(model_training_output_dir, f"fold_{f}", checkpoint_name) for f in use_folds]
        absent = [p for p in ckpt_paths if not isfile(p)]
        if absent:
            raise MultitaskPredictionError(f"checkpoint(s) not found: {absent}")

        plans_manager = PlansManager(plans)
        parameters, trainer_name, configuration_name, mirroring = _load_fold_checkpoints(ckpt_paths)
        configuration_manager = plans_manager.get_configuration(configuration_name)
        # the plans' multitask_model block describes the whole network: no trainer class is looked up,
        # so a model folder predicts without the trainers' folder on nnUNet_extTrainer
        network = build_multitask_network(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        _unwrap(network)
        # a strict load of every fold now, so a mismatch (other channels, other clinical width, a plain
        # U-Net checkpoint) is reported here with its file, not in the middle of a prediction run
        for path, weights in zip(ckpt_paths, parameters):
            try:
                network.load_state_dict(weights)
            except RuntimeError as e:
                raise MultitaskPredictionError(
                    f"{path}: the weights do not fit the network described by plans.json's 'multitask_model' "
                    f"block (input channels {cfg.input_channels or dataset_json['channel_names']}, "
                    f"{cfg.n_clinical_features} clinical features): {str(e).splitlines()[0]} "
                    f"{' '.join(str(e).splitlines()[1:3])}") from None
        self._check_fold_clinical_states(plans_manager, dataset_json, ckpt_paths, parameters)
        network.load_state_dict(parameters[0])
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                   trainer_name, mirroring)
        self.provenance = {"model_folder": os.path.abspath(model_training_output_dir), "trainer": trainer_name,
                           "plans": plans_manager.plans_name, "configuration": configuration_name,
                           "folds": [str(f) for f in use_folds], "checkpoint": checkpoint_name,
                           "checkpoint_sha256": {str(f): file_sha256(p) for f, p in zip(use_folds, ckpt_paths)}}

    @staticmethod
    def _check_fold_clinical_states(plans_manager, dataset_json, ckpt_paths, parameters):
        """Each fold's fitted clinical transform must match the clinical columns (names, types,
        categories) the plans declare, so a mismatch is reported now, naming the checkpoint."""
        cfg = HeadConfig.from_plans(plans_manager.plans)
        if not cfg.uses_clinical_data:
            return
        try:
            schema = replace(DatasetContract.from_dataset_json(dataset_json),
                             clinical_columns=cfg.clinical_columns).schema()
        except SchemaError as e:
            raise MultitaskPredictionError(f"plans.json 'multitask_model' clinical columns: {e}") from None
        for path, weights in zip(ckpt_paths, parameters):
            try:
                ClinicalPreprocessor.from_state_vector(schema, cfg.clinical_groups,
                                                       weights["clinical_state"].cpu().numpy())
            except (ClinicalPreprocessingError, SchemaError) as e:
                raise MultitaskPredictionError(
                    f"{path}: its fitted clinical transform does not match the clinical columns of plans.json "
                    f"({list(cfg.clinical_columns)}): {e}") from None

    # ------------------------------------------------------------------ clinical data
    @property
    def head_config(self) -> HeadConfig:
        """The model's ``multitask_model`` block (:class:`nnunet_multitask.contract.HeadConfig`)."""
        return HeadConfig.from_plans(self.plans_manager.plans)

    @property
    def contract(self) -> DatasetContract:
        """The model's dataset contract (its dataset.json ``multitask`` block)."""
        return DatasetContract.from_dataset_json(self.dataset_json)

    @property
    def uses_clinical_data(self) -> bool:
        return self.head_config.uses_clinical_data

    def model_clinical_columns(self) -> List[str]:
        """The clinical columns the model was trained with (empty for an image-only model)."""
        return list(self.head_config.clinical_columns) if self.uses_clinical_data else []

    def _clinical_schema(self, extra_columns: Sequence[str] = ()) -> ClinicalSchema:
        """The model's clinical columns (types and categories as trained, from plans.json), plus any
        other column the dataset declares that a table happens to carry (validated, not used)."""
        contract = self.contract
        declared = dict(contract.clinical_columns)
        columns = {n: declared[n] for n in extra_columns if n in declared}
        columns.update(self.head_config.clinical_columns)
        return replace(contract, clinical_columns=columns).schema()

    def set_clinical_table(self, table: Optional[pd.DataFrame | str] = None, impute_missing: bool = False):
        """Clinical rows of the cases to predict.

        Parameters
        ----------
        table : DataFrame, str or None
            A frame indexed by case id (as :func:`clinical.tables.read_case_table` returns), a CSV
            path (``case_id``, ``centre`` and the model's clinical columns; further columns must be
            declared in the dataset's schema), or None for the dataset's own clinical table.
        impute_missing : bool
            A case without a row is imputed entirely with the fold's fitted values (flagged
            ``clinical_imputed``) instead of being an error.

        Raises
        ------
        MultitaskPredictionError
            The table lacks a column the model was trained with, or cannot be read.
        clinical.tables.ClinicalTableError
            A value does not match its declared type or categories (names file, case, column).
        """
        self.impute_missing_clinical = impute_missing
        if not self.uses_clinical_data:
            self.clinical_table, self.clinical_table_source = None, None
            return
        needed = self.model_clinical_columns()
        if table is None:
            try:
                table = str(dataset_table_path(self.plans_manager.dataset_name, self.contract.clinical_table))
            except MultitaskDatasetError as e:
                raise MultitaskPredictionError(f"{e}; pass the new cases' clinical rows with --clinical") from None
        if isinstance(table, pd.DataFrame):
            source = "<DataFrame>"
            frame = table
        else:
            source = str(table)
            if not isfile(source):
                raise MultitaskPredictionError(f"clinical table not found: {source}")
            try:
                header = [str(c).strip() for c in pd.read_csv(source, nrows=0).columns]
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise MultitaskPredictionError(f"{source}: cannot be read as CSV: {e}") from None
            lacking = [c for c in needed if c not in header]
            if lacking:
                raise MultitaskPredictionError(
                    f"{source}: lacks clinical column(s) {lacking} that the model was trained with "
                    f"({self.head_config.trainer}, groups {list(self.head_config.clinical_groups)})")
            frame = read_case_table(source, self._clinical_schema(extra_columns=header))
        lacking = [c for c in needed if c not in frame.columns]
        if lacking:
            raise MultitaskPredictionError(f"{source}: lacks clinical column(s) {lacking} that the model was "
                                           f"trained with")
        self.clinical_table, self.clinical_table_source = frame, source

    def check_clinical_rows(self, case_ids: Sequence[str]) -> List[str]:
        """Cases without a clinical row; an error unless imputation was asked for."""
        if not self.uses_clinical_data:
            return []
        if self.clinical_table is None:
            self.set_clinical_table(impute_missing=self.impute_missing_clinical)
        missing = [c for c in case_ids if c not in self.clinical_table.index]
        if missing and not self.impute_missing_clinical:
            raise MultitaskPredictionError(
                f"case(s) {missing} have no row in the clinical table {self.clinical_table_source}; add them, or "
                f"pass --impute-missing-clinical to impute every clinical value as in training (flagged "
                f"clinical_imputed in predictions.csv)")
        return missing

    def clinical_vector(self, case_id: str, clinical_state: torch.Tensor) -> tuple:
        """(vector, row imputed, number of clinical values imputed) for one case with the fold's
        fitted transform (``clinical_state``, the network buffer)."""
        if not self.uses_clinical_data:
            return np.zeros((0,), dtype=np.float32), False, 0
        cfg = self.head_config
        prep = ClinicalPreprocessor.from_state_vector(self._clinical_schema(), cfg.clinical_groups,
                                                      clinical_state.cpu().numpy())
        if self.clinical_table is None:
            self.set_clinical_table(impute_missing=self.impute_missing_clinical)
        imputed = case_id not in self.clinical_table.index
        if imputed and not self.impute_missing_clinical:
            raise MultitaskPredictionError(
                f"case {case_id}: no row in the clinical table {self.clinical_table_source}; add it, or pass "
                f"--impute-missing-clinical to impute every clinical value as in training (flagged in "
                f"predictions.csv)")
        columns = self.model_clinical_columns()
        row = (pd.DataFrame(np.nan, index=pd.Index([case_id], name=CASE_ID_COLUMN), columns=columns, dtype=object)
               if imputed else self.clinical_table.loc[[case_id], columns])
        n_missing = int(row.isna().to_numpy().sum())
        vector = prep.transform(row.reset_index(), id_column=CASE_ID_COLUMN)[0].astype(np.float32)
        return vector, imputed, n_missing

    # ------------------------------------------------------------------ heads
    def predict_case_with_current_weights(self, data: torch.Tensor, clinical: np.ndarray,
                                          availability: Optional[np.ndarray] = None):
        """(segmentation logits, patient-level head prediction) with the network's current weights:
        nnU-Net's sliding window, then :func:`~nnunet_multitask.aggregation.patient_level_prediction`.
        ``availability``: 0/1 per channel, which series are real (None: all)."""
        net = _unwrap(self.network)
        net.head_sink, net.sink_kind = [], "tiles"
        try:
            logits = self.predict_sliding_window_return_logits(data)
            tiles = net.head_sink
        finally:
            net.head_sink, net.clinical_input, net.sink_kind = None, None, "heads"
        clinical_t = torch.as_tensor(clinical, dtype=torch.float32) if len(clinical) else None
        cfg = self.head_config
        avail_t = None if availability is None else torch.as_tensor(np.asarray(availability), dtype=torch.float32)
        pred = patient_level_prediction(net, logits, data, tiles, clinical_t, cfg.horizon_months,
                                        availability=avail_t)
        if pred["survival_logits"] is not None:
            edges = net.time_bin_edges.cpu().numpy()
            times = survival_times(cfg.horizon_months)
            pred["survival"] = dict(zip(times, survival_at_times(pred["survival_logits"], edges, times)))
        return logits, pred

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's fold loop, with each fold's clinical transform and head outputs kept per fold."""
        if not self._pending_cases:
            raise MultitaskPredictionError("case id unknown: predict through predict_from_files / "
                                           "predict_from_files_sequential / predict_folder")
        case_id = self._pending_cases.popleft()
        availability = self.case_availability.get(case_id)
        n_threads = torch.get_num_threads()
        prediction, per_fold = None, []
        imputed, n_missing = False, 0
        net = _unwrap(self.network)
        try:
            for params in self.list_of_parameters:
                net.load_state_dict(params)
                clinical, imputed, n_missing = self.clinical_vector(case_id, net.clinical_state)
                logits, pred = self.predict_case_with_current_weights(data, clinical, availability)
                # sliding-window logits are inference tensors: accumulate into a normal tensor
                logits = logits.to("cpu").clone()
                prediction = logits if prediction is None else prediction + logits
                per_fold.append(pred)
        except MultitaskPredictionError:
            raise
        except Exception as e:
            raise MultitaskPredictionError(f"case {case_id}: prediction failed: {type(e).__name__}: {e}") from e
        prediction /= len(self.list_of_parameters)
        torch.set_num_threads(n_threads)
        self.head_results[case_id] = {"folds": per_fold, "clinical_imputed": imputed,
                                      "n_clinical_values_imputed": n_missing, "availability": availability}
        if self.case_record_folder is not None:  # the case's row, kept for --continue
            _atomic_write(join(self.case_record_folder, case_id + ".json"), json.dumps(self.case_row(case_id)))
        return prediction

    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder,
                                       output_folder_or_list_of_truncated_output_files,
                                       folder_with_segs_from_prev_stage=None, overwrite=True, part_id=0, num_parts=1,
                                       save_probabilities=False):
        lists, outs, prev = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
            folder_with_segs_from_prev_stage, overwrite, part_id, num_parts, save_probabilities)
        if outs is None:
            raise MultitaskPredictionError("patient-level outputs need output file names (the case ids)")
        # both of nnU-Net's prediction paths process cases in this order; predict_from_data_iterator
        # below checks it case by case
        self._pending_cases = deque(basename(o) for o in outs)
        return lists, outs, prev

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        """nnU-Net's loop; each item's case id (its ``ofile``) is checked against the next pending
        case, so head outputs can never be attributed to another patient."""
        def checked(items):
            for item in items:
                expected = self._pending_cases[0] if self._pending_cases else None
                got = basename(item["ofile"]) if item.get("ofile") is not None else None
                if got is None or got != expected:
                    raise MultitaskPredictionError(f"preprocessed case {got!r} arrived when {expected!r} was "
                                                   f"expected: refusing to mix up patients")
                yield item
        return super().predict_from_data_iterator(checked(data_iterator), save_probabilities,
                                                  num_processes_segmentation_export)

    # ------------------------------------------------------------------ outputs
    def predictions_table(self) -> pd.DataFrame:
        """One row per case: fold-ensembled outputs (log-risks and probabilities averaged) and their
        spread over folds (sample sd; NaN for a single fold)."""
        return pd.DataFrame([self.case_row(case_id) for case_id in sorted(self.head_results)])

    def case_row(self, case_id: str) -> dict:
        """The ``predictions.csv`` row of one predicted case (see :meth:`predictions_table`)."""
        horizon = self.head_config.horizon_months
        res = self.head_results[case_id]
        folds = res["folds"]
        row = {"case_id": case_id}
        cols = {"risk_score": [f["risk_score"] for f in folds],
                recurrence_column(horizon): [f["p_recurrence"] for f in folds]}
        if "survival" in folds[0]:
            for t in survival_times(horizon):
                cols[survival_column(t)] = [f["survival"][t] for f in folds]
        for name, vals in cols.items():
            row[name] = float(np.mean(vals))
        for name, vals in cols.items():
            row[f"{name}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        row["n_folds"] = len(folds)
        row["tumour_found"] = all(f["tumour_found"] for f in folds)
        row["clinical_imputed"] = bool(res["clinical_imputed"])
        row["n_clinical_values_imputed"] = int(res.get("n_clinical_values_imputed", 0))
        row[SERIES_COLUMN] = self.series_text(res.get("availability"))
        return row

    def series_text(self, availability: Optional[np.ndarray]) -> str:
        """The real series of a case, ``;``-joined in channel order (``T2;ADC;Dapp;Kapp``)."""
        names = [self.dataset_json["channel_names"][str(i)] for i in range(len(self.dataset_json["channel_names"]))]
        if availability is None:
            return ";".join(names)
        return ";".join(n for n, a in zip(names, availability) if a > 0)

    def provenance_record(self, table: pd.DataFrame) -> dict:
        cfg = self.head_config
        meta = dict(self.provenance)
        meta.update({"nnunetv2_version": _version_or_unknown("nnunetv2"),
                     "nnunet_multitask_version": _version_or_unknown("nnunet-multitask"),
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "n_cases": len(table), "horizon_months": cfg.horizon_months,
                     "survival_head": cfg.survival_head,
                     "clinical_table": self.clinical_table_source,
                     "clinical_columns": self.model_clinical_columns(),
                     "impute_missing_clinical": self.impute_missing_clinical,
                     "allow_missing_series": self.allow_missing_series,
                     "resampled_to_first_channel": {c: [self.dataset_json["channel_names"][str(i)] for i in chans]
                                                    for c, chans in sorted(self.misaligned_channels.items())},
                     "channel_availability": cfg.channel_availability,
                     "patient_level": "heads once on tumour-level features of the stitched whole-image "
                                      "segmentation (nnunet_multitask.aggregation.patient_level_prediction); "
                                      "image_features=" + cfg.image_features,
                     "fold_ensemble": "mean of risk scores (log-risks) and of probabilities; *_sd = sample sd "
                                      "over folds (NaN for one fold)",
                     "tile_step_size": self.tile_step_size, "use_mirroring": self.use_mirroring,
                     "columns": list(table.columns),
                     "column_sources": column_sources(table.columns)})
        part = getattr(self, "part_record", None)
        if part:  # one part of a -num_parts run (nnunet_multitask.prediction_parts), for --merge
            meta["part"] = part
        return meta

    def write_predictions(self, output_folder: str, table: Optional[pd.DataFrame] = None,
                          failures: Optional[Mapping[str, str]] = None) -> pd.DataFrame:
        """Write ``failures.csv`` (when cases failed), ``predictions.json`` then ``predictions.csv``
        (each atomically) into a folder; ``predictions.json`` holds the SHA-256 of the tables, so an
        edit made afterwards is found (``--merge`` checks it)."""
        table = self.predictions_table() if table is None else table
        if self.recalibration is not None:  # --recalibrated: the raw values stay as *_uncalibrated
            from nnunet_multitask.recalibration import apply_recalibration
            table = apply_recalibration(table, self.recalibration)
        meta = self.provenance_record(table)
        if self.recalibration is not None:
            record = dict(table.attrs["recalibration"])
            record.pop("file", None)  # a path of this machine; the digest says which file it was
            record["sha256"] = file_sha256(self.recalibration["path"])
            meta["recalibration"] = record
        text = table.to_csv(index=False)
        digests = {PREDICTIONS_CSV: hashlib.sha256(text.encode()).hexdigest()}
        if failures:
            failed = pd.DataFrame({"case_id": sorted(failures), "reason": [failures[c] for c in sorted(failures)]})
            failed_text = failed.to_csv(index=False)
            _atomic_write(join(output_folder, FAILURES_CSV), failed_text)
            digests[FAILURES_CSV] = hashlib.sha256(failed_text.encode()).hexdigest()
        meta["failed_cases"] = sorted(failures or {})
        meta["complete"] = not failures
        meta["tables_sha256"] = digests
        _atomic_write(join(output_folder, PREDICTIONS_JSON), json.dumps(meta, indent=2))
        _atomic_write(join(output_folder, PREDICTIONS_CSV), text)
        return table


def _head_source(column: str) -> Optional[str]:
    if column.startswith("p_recurrence_"):
        return "classification head: sigmoid of its logit (P(recurrence by the horizon))"
    if column == "risk_score":
        return "survival head: log-risk (Cox) or -log S(horizon) (discrete-time); higher = higher risk"
    if column.startswith("surv_prob_"):
        return "survival head (discrete-time): predicted recurrence-free survival S(t)"
    return None


def column_sources(columns: Sequence[str]) -> dict:
    """Which head each head-output column of ``predictions.csv`` comes from (``predictions.json``
    ``column_sources``); a ``<column>_sd`` is that column's spread over folds; with
    ``--recalibrated`` the probabilities are recalibrated and ``<column>_uncalibrated`` holds the
    head's own value."""
    recalibrated = "recalibrated" in columns
    sources = {}
    for column in columns:
        base = column[:-3] if column.endswith("_sd") else column
        raw = base.endswith(UNCALIBRATED)
        head = base[:-len(UNCALIBRATED)] if raw else base
        source = _head_source(head)
        if source is None:
            continue
        if raw:
            source = "before --recalibrated: " + source
        elif recalibrated and head.startswith("surv_prob_"):
            source = ("survival head, recalibrated: S0'(t) ** exp(slope * (lp - centre)) with the refitted baseline "
                      "(predictions.json 'recalibration')")
        elif recalibrated and head != "risk_score":
            source += "; recalibrated (predictions.json 'recalibration')"
        sources[column] = source + ("; sample sd over folds" if base != column else "")
    return sources


def _atomic_write(path: str, text: str):
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def predict_heads_for_preprocessed_cases(trainer, case_inputs: Mapping[str, Mapping[str, np.ndarray]],
                                         use_mirroring: bool = True, cache: Optional[dict] = None,
                                         cache_limit_bytes: int = 2 ** 30) -> pd.DataFrame:
    """Patient-level head predictions of preprocessed cases with a trainer's current network, by the
    predictor's definition (nnU-Net's sliding window, then ``patient_level_prediction``).

    ``case_inputs``: ``{case id: {"clinical": preprocessed clinical vector, "availability": 0/1 per
    channel}}`` of the cases to predict (the caller's; the trainer's network, plans and preprocessed
    folder are read from ``trainer``).

    Used by the trainer's final validation (with test-time mirroring, as the predictor) and by its
    per-epoch whole-fold validation (``use_mirroring=False``, 8x fewer forward passes in 3-D).
    ``cache``: a dict kept by the caller; preprocessed images are read into it (as float32 tensors,
    up to ``cache_limit_bytes`` in all; the rest is read again at every call) and reused by later calls.
    """
    predictor = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                   perform_everything_on_device=True, device=trainer.device, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.mt_network(), trainer.plans_manager, trainer.configuration_manager,
                                    None, trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    case_ids = list(case_inputs)
    cache = {} if cache is None else cache
    missing = [k for k in case_ids if k not in cache]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, missing,
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage) \
        if missing else None
    for k in case_ids:
        data = cache.get(k)
        if data is None:
            data = torch.from_numpy(np.asarray(dataset.load_case(k)[0][:], dtype=np.float32))
            if sum(v.numel() * v.element_size() for v in cache.values()) + data.numel() * 4 <= cache_limit_bytes:
                cache[k] = data
        inputs = case_inputs[k]
        _, pred = predictor.predict_case_with_current_weights(data, inputs["clinical"], inputs.get("availability"))
        predictor.head_results[k] = {"folds": [pred], "clinical_imputed": False,
                                     "availability": inputs.get("availability")}
    # the trainer's lookup requires every row (nothing imputed per row); it does not count empty cells
    return predictor.predictions_table().drop(columns=["n_clinical_values_imputed"])


# ---------------------------------------------------------------------- checks before predicting
def _check_inputs(input_folder: str, dataset_json: dict, allow_missing_series: bool = False,
                  resample_to_first: bool = False) -> List[str]:
    """Check an nnU-Net input folder against the model's channels before anything is predicted.

    Every file must be named ``<case>_<XXXX><file_ending>`` with a channel the model was trained
    with, every case must have all channels (with ``allow_missing_series``: its required series,
    T2; :func:`input_availability` says which others it has), and (for formats SimpleITK reads)
    each case's channel images must be readable headers of one 3-D grid: size, spacing, origin and
    direction within :data:`GEOMETRY_TOLERANCE` of the first channel's (with ``resample_to_first``
    a channel on another grid is allowed: the prediction resamples it onto the first channel's).
    Image files with another ending than the model's are refused.

    Returns
    -------
    list of str
        The case ids, sorted.
    """
    ending = dataset_json["file_ending"]
    channel_names = dataset_json["channel_names"]
    n_ch = len(channel_names)
    if not isdir(input_folder):
        raise MultitaskPredictionError(f"input folder not found: {input_folder}")
    _refuse_other_image_endings(input_folder, ending)
    files = sorted(f for f in os.listdir(input_folder) if f.endswith(ending))
    if not files:
        raise MultitaskPredictionError(f"{input_folder}: no images ending in {ending}")
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    channels: Dict[str, set] = {}
    misnamed, beyond = [], []
    for f in files:
        m = pattern.fullmatch(f)
        if m is None:
            misnamed.append(f)
            continue
        case, ch = m.group(1), int(m.group(2))
        channels.setdefault(case, set()).add(ch)
        if ch >= n_ch:
            beyond.append(f)
    if misnamed:
        raise MultitaskPredictionError(f"{input_folder}: file(s) {misnamed[:5]} are not named <case>_<XXXX>{ending}")
    if beyond:
        raise MultitaskPredictionError(
            f"{input_folder}: file(s) {beyond[:5]} have a channel index the model was not trained with (it "
            f"expects {n_ch} channels 0..{n_ch - 1}: {channel_names})")
    cases = sorted(channels)
    required = [i for i in range(n_ch) if channel_names[str(i)] in REQUIRED_SERIES]
    for c in cases:
        missing = [f"{c}_{i:04d}{ending}" for i in range(n_ch) if i not in channels[c]]
        if not missing:
            continue
        if not allow_missing_series:
            raise MultitaskPredictionError(
                f"case {c}: missing channel file(s) {missing} in {input_folder} (the model expects {n_ch} channels: "
                f"{channel_names}); a model trained for missing series (MultiRecTrainer_ModalityDropout) predicts "
                f"such cases with --allow-missing-series")
        lacking = [f"{c}_{i:04d}{ending}" for i in required if i not in channels[c]]
        if lacking:
            raise MultitaskPredictionError(
                f"case {c}: missing channel file(s) {lacking} in {input_folder}: "
                f"{', '.join(channel_names[str(i)] for i in required)} is required even with --allow-missing-series")
    if ending in _ITK_ENDINGS:
        _check_image_headers(input_folder, cases, n_ch, ending, present=channels,
                             allow_misaligned=resample_to_first)
    return cases


def _refuse_other_image_endings(input_folder: str, ending: str) -> None:
    """An image file in the input folder with another ending than the model's is refused: beside
    ``<case>_0001.nii.gz`` a ``<case>_0001.nii`` would leave it to chance which one is the
    channel, and on its own it would be silently ignored (nnU-Net lists the model's ending only)."""
    stray = []
    for name in sorted(os.listdir(input_folder)):
        split = split_image_name(name)
        if split is None or name.endswith(ending):
            continue
        twin = split[0] + ending
        stray.append(f"{name} (beside {twin})" if isfile(join(input_folder, twin)) else name)
    if stray:
        raise MultitaskPredictionError(
            f"{input_folder}: image file(s) {stray[:5]} do not end in {ending}, the model's file ending: one file per "
            f"case and channel, named <case>_<XXXX>{ending}; remove the stray file(s) or convert them")


def input_availability(input_folder: str, dataset_json: dict, cases: Sequence[str]) -> Dict[str, np.ndarray]:
    """0/1 per channel of every case: does ``<case>_<XXXX><ending>`` exist in the input folder."""
    ending, n_ch = dataset_json["file_ending"], len(dataset_json["channel_names"])
    return {c: np.array([isfile(join(input_folder, f"{c}_{i:04d}{ending}")) for i in range(n_ch)], dtype=np.float32)
            for c in cases}


def check_missing_series_support(predictor: "MultiTaskPredictor", availability: Mapping[str, np.ndarray]) -> None:
    """Refuse cases lacking a series the model uses when the model was not trained for missing
    series (``channel_availability``): it would read the filler as an image."""
    cfg = predictor.head_config
    if cfg.channel_availability:
        return
    names = predictor.dataset_json["channel_names"]
    used = cfg.used_channels(len(names))
    for case in sorted(availability):
        lacking = [names[str(c)] for c in used if availability[case][c] == 0]
        if lacking:
            raise MultitaskPredictionError(
                f"case {case} lacks {', '.join(lacking)}, which {cfg.trainer} uses, and the model "
                f"was trained without channel availability: it cannot tell a missing series from an image. Predict "
                f"it with a model trained for missing series (MultiRecTrainer_ModalityDropout) or one that does not "
                f"use {', '.join(lacking)} (MultiRecTrainer_T2)")


def _prepare_input_folder(input_folder: str, prepared_folder: str, dataset_json: dict,
                          availability: Mapping[str, np.ndarray],
                          misaligned: Optional[Mapping[str, Sequence[int]]] = None) -> None:
    """An input folder for nnU-Net in which every case has every channel file on one grid: links
    to the real files; for a missing series the converter's filler (zeros on the T2 grid: after
    nnU-Net's z-score normalisation the same zeros as the training data's filler); for a channel
    on another grid (``--resample-to-first``) the channel resampled onto the first channel's grid
    (linear, as the converter resamples the diffusion maps onto T2)."""
    import SimpleITK as sitk
    from dataset_conversion.convert_larc import resample_onto
    ending, n_ch = dataset_json["file_ending"], len(dataset_json["channel_names"])
    misaligned = misaligned or {}
    for case, avail in availability.items():
        reference = None
        for i in range(n_ch):
            name = f"{case}_{i:04d}{ending}"
            if avail[i] > 0 and i not in misaligned.get(case, ()):
                os.symlink(os.path.abspath(join(input_folder, name)), join(prepared_folder, name))
                continue
            if reference is None:
                reference = sitk.ReadImage(join(input_folder, f"{case}_0000{ending}"))
            image = (resample_onto(sitk.ReadImage(join(input_folder, name)), reference) if avail[i] > 0
                     else missing_series_filler(reference))
            sitk.WriteImage(image, join(prepared_folder, name))


def _grid_difference(reader, reference) -> Optional[str]:
    """How the grid read by ``reader`` differs from ``reference``'s (both ``ImageFileReader``
    after ``ReadImageInformation``), beyond :data:`GEOMETRY_TOLERANCE`; None when it does not."""
    if tuple(reader.GetSize()) != tuple(reference.GetSize()):
        return f"size {tuple(reader.GetSize())} vs {tuple(reference.GetSize())}"
    for what, key in (("spacing", "spacing_mm"), ("origin", "origin_mm"), ("direction", "direction")):
        a = np.asarray(getattr(reader, f"Get{what.capitalize()}")(), dtype=float)
        b = np.asarray(getattr(reference, f"Get{what.capitalize()}")(), dtype=float)
        if np.max(np.abs(a - b)) > GEOMETRY_TOLERANCE[key]:
            unit = "" if what == "direction" else " mm"
            return f"{what} {tuple(np.round(a, 4).tolist())} vs {tuple(np.round(b, 4).tolist())}{unit}"
    return None


def misaligned_channels(input_folder: str, dataset_json: dict, cases: Sequence[str]) -> Dict[str, List[int]]:
    """Per case, the channels (indices) whose grid differs from its first channel's (headers only)."""
    import SimpleITK as sitk
    ending, n_ch = dataset_json["file_ending"], len(dataset_json["channel_names"])
    result: Dict[str, List[int]] = {}
    for c in cases:
        reference = None
        for i in range(n_ch):
            path = join(input_folder, f"{c}_{i:04d}{ending}")
            if not isfile(path):
                continue
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            if reference is None:
                reference = reader
            elif _grid_difference(reader, reference) is not None:
                result.setdefault(c, []).append(i)
    return result


def _read_header(path: str, case: str):
    import SimpleITK as sitk
    if is_nifti(path):
        try:  # before ITK reads it: a header promising terabytes in a small file would make ITK allocate them
            check_nifti_size(path)
        except IncompleteImageError as e:
            raise MultitaskPredictionError(f"case {case}: {path}: {e}") from None
        except OSError as e:
            raise MultitaskPredictionError(f"case {case}: {path} cannot be read: {e}") from None
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise MultitaskPredictionError(f"case {case}: {path} cannot be read as an image: "
                                       f"{itk_error_reason(e)}") from None
    if reader.GetDimension() != 3:
        raise MultitaskPredictionError(f"case {case}: {path} is {reader.GetDimension()}-D, expected 3-D")
    return reader


def _check_image_headers(input_folder: str, cases: Sequence[str], n_ch: int, ending: str,
                         present: Optional[Mapping[str, set]] = None, allow_misaligned: bool = False):
    """Readable headers, 3-D, one grid per case across channels (nnU-Net would otherwise fail in a
    preprocessing worker after other cases were predicted, or, for a shifted origin or another
    direction, only warn and read a diffusion map that does not lie on the tumour), and every NIfTI
    file complete: decompressed once in full and compared with the size its header promises (a file
    cut short would otherwise be read with its missing voxels as zeros)."""
    for c in cases:
        reference = None
        for i in range(n_ch):
            if present is not None and i not in present[c]:
                continue
            path = join(input_folder, f"{c}_{i:04d}{ending}")
            reader = _read_header(path, c)
            if is_nifti(path):
                # SimpleITK zero-fills a .nii.gz cut short; decompress it completely once to be sure
                try:
                    read_nifti_completely(path)
                except IncompleteImageError as e:
                    raise MultitaskPredictionError(f"case {c}: {path}: {e}") from None
            if reference is None:
                reference = (reader, path)
                continue
            why = _grid_difference(reader, reference[0])
            if why is not None and not allow_misaligned:
                raise MultitaskPredictionError(
                    f"case {c}: {basename(path)} is not on the grid of {basename(reference[1])} ({why}): every channel "
                    f"of a case must lie on one voxel grid, or the heads read a diffusion map that does not lie on "
                    f"the tumour; convert the case with nnUNetv2_convert_larc (it resamples the maps onto T2), give "
                    f"a cohort folder as -i, or pass --resample-to-first to resample it onto the first channel's grid")


def _check_output_folder(output_folder: str):
    """Create the folder if needed and prove it is writable."""
    try:
        os.makedirs(output_folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output_folder, prefix=".write_test_")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise MultitaskPredictionError(f"output folder {output_folder} cannot be written: {e}") from None


def _refuse_duplicate_folds(folds: Sequence) -> None:
    seen, repeated = set(), []
    for f in folds:
        if f in seen and f not in repeated:
            repeated.append(f)
        seen.add(f)
    if repeated:
        raise MultitaskPredictionError(
            f"fold(s) {', '.join(map(str, repeated))} given more than once in -f {' '.join(map(str, folds))}: the "
            f"same checkpoint twice is not an ensemble (it would report a spread of zero); name each fold once")


def _remove_stale_staging(output_folder: str, keep_run: bool = False) -> None:
    """Remove staging folders left by a run that was killed; only called with the folder's lock
    held, so no live run owns them. ``keep_run``: keep the killed run's own staging folder, which
    ``--continue`` picks up."""
    for name in sorted(os.listdir(output_folder)):
        path = join(output_folder, name)
        if keep_run and name == _RUN_STAGING:
            continue
        if name.startswith(_STAGING_PREFIX) and isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            print(f"nnUNetv2_predict_multitask: note: removed {path}, the hidden staging folder of an earlier "
                  f"prediction into this folder that was interrupted before it finished (its partial results were "
                  f"never moved into place{'; --continue would have resumed it' if name == _RUN_STAGING else ''})",
                  file=sys.stderr)
        elif name.startswith(".write_test_") and isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)


@contextlib.contextmanager
def output_folder_lock(output_folder: str, resume: bool = False):
    """Hold the output folder for one prediction run.

    Creates the folder if needed (and removes it again if it is left empty), takes an exclusive
    ``flock`` on ``<output>/.nnunet_multitask.lock`` (released by the kernel if the process is
    killed), refuses when another run holds it, and removes staging folders of killed runs (with
    ``resume``, all but the run's own, which ``--continue`` picks up).
    Re-entrant within one process (the CLI holds it around model loading and ``predict_folder``).
    """
    key = os.path.realpath(output_folder)
    if key in _held_locks:
        yield
        return
    created = not isdir(output_folder)
    _check_output_folder(output_folder)
    path = join(output_folder, _LOCK_NAME)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MultitaskPredictionError(f"output folder {output_folder} cannot be written: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 500).decode(errors="replace").strip() or "unknown process"
            finally:
                os.close(fd)
            raise MultitaskPredictionError(
                f"output folder {output_folder}: another nnUNetv2_predict_multitask run ({holder}) is writing into "
                f"it now ({path} is locked); wait for it to finish or use another output folder: two runs into "
                f"one folder would interleave their files") from None
        try:  # a run finishing in between may have removed the file we locked: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}, started "
                 f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n".encode())
    _held_locks[key] = fd
    try:
        _remove_stale_staging(output_folder, keep_run=resume)
        yield
    finally:
        del _held_locks[key]
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(output_folder)  # only succeeds when nothing was written


def predict_folder(predictor: MultiTaskPredictor, input_folder: str, output_folder: str,
                   clinical: Optional[pd.DataFrame | str] = None, impute_missing_clinical: bool = False,
                   num_processes_preprocessing: int = 0, num_processes_segmentation_export: int = 0,
                   checked_cases: Optional[List[str]] = None, allow_missing_series: bool = False,
                   part_id: int = 0, num_parts: int = 1, resample_to_first: bool = False,
                   resume: bool = False, keep_going: bool = False) -> pd.DataFrame:
    """Predict every case of an input folder: segmentations, ``predictions.csv``, ``predictions.json``.

    Everything that can be checked is checked first (input files and channels, clinical columns,
    types, categories and rows, the output folder); then the cases are predicted into a hidden
    staging folder inside ``output_folder``, and the files are moved into ``output_folder`` only
    when every case has succeeded (``predictions.csv`` last). On any error the staging folder is
    removed and ``output_folder`` keeps what it held before.

    Parameters
    ----------
    predictor : MultiTaskPredictor
        Initialised from a trained model folder.
    input_folder, output_folder : str
    clinical : DataFrame, str or None
        See :meth:`MultiTaskPredictor.set_clinical_table` (None: the dataset's clinical table).
    impute_missing_clinical : bool
    num_processes_preprocessing, num_processes_segmentation_export : int
        Both 0: nnU-Net's sequential path (no worker processes).
    checked_cases : list of str, optional
        The result of ``_check_inputs`` on this input folder when the caller has just run it (the CLI
        does, before loading the checkpoints), so the images are not read in full twice.
    allow_missing_series : bool
        Cases may lack series other than T2: they are filled as at conversion (zeros on the T2
        grid) and flagged to a model trained for it (``channel_availability``); a model trained
        without it refuses such cases unless it does not use the missing series. predictions.csv
        names each case's real series (``series_available``).
    part_id, num_parts : int
        Split inference (:mod:`nnunet_multitask.prediction_parts`): predict only the share
        ``sorted(cases)[part_id::num_parts]`` (nnU-Net's) and record the part in
        ``predictions.json`` for ``--merge``. Every case is still checked, so every part refuses
        what a single run would refuse.
    resample_to_first : bool
        A channel whose grid (size, spacing, origin, direction) differs from the case's first
        channel's is resampled onto it (linear) instead of refused; predictions.json lists them.
    resume : bool
        ``--continue``: pick up a run into this output folder that was killed, without predicting
        its finished cases again (it must have used the same model, settings and inputs).
    keep_going : bool
        ``--keep-going``: a case that fails while it is predicted or exported (after the checks)
        is written to ``failures.csv`` with its reason and the others are published;
        ``predictions.json`` then says ``"complete": false``.

    The output folder is held with :func:`output_folder_lock` for the run: a second run into it
    is refused, and staging folders of killed runs are removed.

    Returns
    -------
    pandas.DataFrame
        The table written to ``predictions.csv``.
    """
    cases = checked_cases if checked_cases is not None else \
        _check_inputs(input_folder, predictor.dataset_json, allow_missing_series, resample_to_first)
    if os.path.realpath(input_folder) == os.path.realpath(output_folder):
        raise MultitaskPredictionError(f"-o {output_folder} is the input folder -i: predictions, plans and "
                                       f"segmentations would be written among the input images; use another folder")
    availability = input_availability(input_folder, predictor.dataset_json, cases)
    check_missing_series_support(predictor, availability)
    split = (part_id, num_parts) != (0, 1)
    if split:
        from nnunet_multitask.prediction_parts import part_share, predict_part
        availability = {c: availability[c] for c in part_share(cases, part_id, num_parts)}
    predictor.case_availability, predictor.allow_missing_series = availability, allow_missing_series
    predictor.misaligned_channels = (misaligned_channels(input_folder, predictor.dataset_json, list(availability))
                                     if resample_to_first else {})
    predictor.set_clinical_table(clinical, impute_missing=impute_missing_clinical)
    predictor.check_clinical_rows(cases)
    _check_output_folder(output_folder)
    with output_folder_lock(output_folder, resume=resume):
        if split:
            return predict_part(predictor, input_folder, output_folder, cases, part_id, num_parts,
                                num_processes_preprocessing, num_processes_segmentation_export,
                                resume=resume, keep_going=keep_going)
        return _predict_into(predictor, input_folder, output_folder, cases, num_processes_preprocessing,
                             num_processes_segmentation_export, resume=resume, keep_going=keep_going)


def is_cohort_folder(folder: str) -> bool:
    """A folder in the cohort layout (``images/<patient_id>/``) rather than nnU-Net's flat one."""
    return isdir(join(folder, "images")) and not any(
        f.endswith(e) for f in os.listdir(folder) for e in _ITK_ENDINGS)


def run_fingerprint(predictor: MultiTaskPredictor, input_folder: str, cases: Sequence[str]) -> dict:
    """What a run must share with the killed run it continues (``--continue``): the model and its
    checkpoints, the settings, the inputs (case list, the clinical table's bytes)."""
    source = predictor.clinical_table_source
    prov = predictor.provenance
    return {"model_folder": prov.get("model_folder"), "checkpoint_sha256": prov.get("checkpoint_sha256"),
            "folds": prov.get("folds"), "checkpoint": prov.get("checkpoint"),
            "tile_step_size": predictor.tile_step_size, "use_mirroring": predictor.use_mirroring,
            "input_folder": predictor.input_label or os.path.abspath(input_folder),
            "cases_sha256": hashlib.sha256("\n".join(sorted(cases)).encode()).hexdigest(),
            "clinical_table_sha256": file_sha256(source) if source and isfile(source) else source,
            "impute_missing_clinical": predictor.impute_missing_clinical,
            "allow_missing_series": predictor.allow_missing_series,
            "resampled_channels": {c: list(v) for c, v in sorted(predictor.misaligned_channels.items())}}


def _open_run_staging(output_folder: str, fingerprint: dict, resume: bool) -> str:
    """The run's staging folder: reused with ``resume`` when a killed run with the same
    fingerprint left it, otherwise new."""
    staging = join(output_folder, _RUN_STAGING)
    record = join(staging, _RUN_RECORD)
    if resume and isdir(staging):
        try:
            with open(record) as f:
                earlier = json.load(f)
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict) and earlier == json.loads(json.dumps(fingerprint)):
            return staging
        differing = sorted(k for k in fingerprint if not isinstance(earlier, dict) or
                           earlier.get(k) != json.loads(json.dumps(fingerprint))[k])
        raise MultitaskPredictionError(
            f"--continue: the interrupted run in {output_folder} was started with other inputs or settings "
            f"(differing: {differing}); continue it with the same model, folds, flags, input folder and clinical "
            f"table, or run without --continue to start again (its finished cases are then discarded)")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(join(staging, _CASE_RECORDS))
    _atomic_write(record, json.dumps(fingerprint, indent=2))
    return staging


def _finished_cases(staging: str, cases: Sequence[str], ending: str) -> List[str]:
    """Cases a killed run finished: their head record and a complete segmentation in staging."""
    done = []
    for c in cases:
        seg = join(staging, c + ending)
        if not (isfile(join(staging, _CASE_RECORDS, c + ".json")) and isfile(seg)):
            continue
        if is_nifti(seg):
            try:  # an export killed half-way leaves a file cut short: predict that case again
                read_nifti_completely(seg)
            except (IncompleteImageError, OSError, ValueError):
                continue
        done.append(c)
    return done


def _case_links(source: str, cases: Sequence[str], ending: str, folder: str) -> str:
    """``folder`` filled with links to the given cases' channel files in ``source``."""
    wanted, pattern = set(cases), re.compile(r"(.+)_\d{4}" + re.escape(ending))
    for name in sorted(os.listdir(source)):
        m = pattern.fullmatch(name)
        if m is not None and m.group(1) in wanted:
            os.symlink(os.path.realpath(join(source, name)), join(folder, name))
    return folder


def _run_nnunet(predictor: MultiTaskPredictor, source: str, staging: str, npp: int, nps: int) -> None:
    if npp == 0 and nps == 0:
        predictor.predict_from_files_sequential(source, staging, overwrite=True)
    else:
        predictor.predict_from_files(source, staging, overwrite=True, num_processes_preprocessing=max(1, npp),
                                     num_processes_segmentation_export=max(1, nps))


def _predict_cases_isolated(predictor: MultiTaskPredictor, source: str, staging: str, cases: Sequence[str],
                            output_folder: str) -> Dict[str, str]:
    """``--keep-going``: each case on its own (nnU-Net's sequential path); a case that fails is
    recorded with its reason, its partial outputs are removed, and the others go on."""
    ending = predictor.dataset_json["file_ending"]
    failures = {}
    for case in cases:
        links = tempfile.mkdtemp(prefix=_STAGING_PREFIX + "case_", dir=output_folder)
        try:
            _run_nnunet(predictor, _case_links(source, [case], ending, links), staging, 0, 0)
        except Exception as e:  # noqa: BLE001 -- isolation is the point: any failure of one case
            failures[case] = f"{type(e).__name__}: {e}".replace("\n", " ")
            print(f"nnUNetv2_predict_multitask: case {case} failed, going on with the others: {failures[case]}",
                  file=sys.stderr)
            for path in (join(staging, case + ending), join(staging, _CASE_RECORDS, case + ".json")):
                with contextlib.suppress(OSError):
                    os.remove(path)
        finally:
            shutil.rmtree(links, ignore_errors=True)
    return failures


def _predict_into(predictor: MultiTaskPredictor, input_folder: str, output_folder: str, cases: List[str],
                  num_processes_preprocessing: int, num_processes_segmentation_export: int,
                  resume: bool = False, keep_going: bool = False) -> pd.DataFrame:
    """Predict ``cases`` into the run's staging folder and publish it (module docstring).

    Each finished case leaves its head record in the staging folder, so ``resume`` (``--continue``)
    predicts only the cases a killed run had not finished; ``keep_going`` isolates the cases and
    publishes the others with ``failures.csv``.
    """
    predictor.head_results = {}
    staging = _open_run_staging(output_folder, run_fingerprint(predictor, input_folder, cases), resume)
    ending = predictor.dataset_json["file_ending"]
    done = _finished_cases(staging, cases, ending) if resume else []
    if done:
        print(f"nnUNetv2_predict_multitask: --continue: {len(done)} of {len(cases)} cases were finished by the "
              f"interrupted run; predicting the other {len(cases) - len(done)}", file=sys.stderr)
    todo = [c for c in cases if c not in set(done)]
    # cases with missing series (or channels to resample) are predicted from a prepared folder; it
    # carries the staging prefix, so a killed run's copy is removed like a staging folder
    filled = None
    if any((a == 0).any() for a in predictor.case_availability.values()) or predictor.misaligned_channels:
        filled = tempfile.mkdtemp(prefix=_STAGING_PREFIX + "input_", dir=output_folder)
        _prepare_input_folder(input_folder, filled, predictor.dataset_json,
                              {c: predictor.case_availability[c] for c in todo if c in predictor.case_availability},
                              predictor.misaligned_channels)
    source, subset, failures = filled or input_folder, None, {}
    predictor.case_record_folder = join(staging, _CASE_RECORDS)
    try:
        if keep_going:
            failures = _predict_cases_isolated(predictor, source, staging, todo, output_folder)
        elif todo:
            if done:  # only the unfinished cases, from a folder of links to them
                subset = _case_links(source, todo, ending,
                                     tempfile.mkdtemp(prefix=_STAGING_PREFIX + "todo_", dir=output_folder))
            _run_nnunet(predictor, subset or source, staging, num_processes_preprocessing,
                        num_processes_segmentation_export)
        table = _publish_run(predictor, staging, output_folder, cases, failures, [input_folder, filled, subset])
    except Exception:
        # a failure (not a kill) leaves the output folder as it was; a killed run leaves its staging
        # folder for --continue
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        predictor.case_record_folder = None
        for folder in (filled, subset):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return table


def _publish_run(predictor: MultiTaskPredictor, staging: str, output_folder: str, cases: List[str],
                 failures: Mapping[str, str], inputs: Sequence[Optional[str]]) -> pd.DataFrame:
    """Check that every case is predicted or failed, write the tables into staging and move
    everything into the output folder (``predictions.csv`` last)."""
    ending = predictor.dataset_json["file_ending"]
    records = join(staging, _CASE_RECORDS)
    predicted = sorted(c for c in cases if isfile(join(records, c + ".json")))
    if failures and not predicted:
        raise MultitaskPredictionError(f"every case failed, nothing to publish: {dict(list(failures.items())[:3])}")
    if sorted(predicted + list(failures)) != sorted(cases):
        raise MultitaskPredictionError(f"predicted cases {predicted} and failed cases {sorted(failures)} differ "
                                       f"from the input cases {cases}")
    absent = [c for c in predicted if not isfile(join(staging, c + ending))]
    if absent:
        raise MultitaskPredictionError(f"nnU-Net wrote no segmentation for case(s) {absent}")
    args_json = join(staging, "predict_from_raw_data_args.json")
    if isfile(args_json):  # name the real folders, not the staging or prepared ones, in nnU-Net's record
        with open(args_json) as f:
            text = f.read()
        text = text.replace(staging, os.path.abspath(output_folder))
        for folder in inputs[1:]:
            if folder is not None:
                text = text.replace(folder, os.path.abspath(inputs[0]))
        _atomic_write(args_json, text)
    rows = []
    for c in predicted:
        with open(join(records, c + ".json")) as f:
            rows.append(json.load(f))
    table = pd.DataFrame(rows)
    predictor.write_predictions(staging, table, failures)
    shutil.rmtree(records)
    os.remove(join(staging, _RUN_RECORD))
    last = (PREDICTIONS_JSON, PREDICTIONS_CSV)
    names = [n for n in sorted(os.listdir(staging)) if n not in last] + list(last)
    stale_failures = join(output_folder, FAILURES_CSV)
    if not failures and isfile(stale_failures):  # an earlier run's failures do not describe this one
        os.remove(stale_failures)
    for name in names:
        os.replace(join(staging, name), join(output_folder, name))
    return table


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
    from nnunet_multitask.saliency import DEFAULT_MAX_BLOCKS
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
        from nnunet_multitask.report import ReportError, check_report_inputs
        try:
            check_report_inputs(args.i, args.seg_gt)
        except ReportError as e:
            parser.error(str(e))


def _check_report_against_cases(args, cases: Sequence[str], ending: str) -> None:
    """The report's inputs against the cases to predict, before any is predicted."""
    from nnunet_multitask.report import ReportError, check_report_inputs
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
    from dataset_conversion.import_dicom import DicomImportError, t2_files_from_mapping
    references = {}
    for case_id, patient_id in zip(prepared.mapping["case_id"], prepared.mapping["patient_id"]):
        try:
            references[case_id] = t2_files_from_mapping(args.i, patient_id)
        except (DicomImportError, OSError) as e:
            raise MultitaskPredictionError(f"--dicom-out: patient {patient_id}: {e}") from None
    return references


def _write_dicom_outputs(output_folder: str, table: pd.DataFrame, t2_files: Mapping[str, list],
                         ending: str) -> None:
    """``<output>/dicom/<case>_seg.dcm`` (the predicted tumour as DICOM-SEG) and ``<case>_sr.dcm``
    (the risk outputs as a structured report marked research use), staged and moved into place."""
    import SimpleITK as sitk
    from dataset_conversion.dicom_export import write_dicom_seg, write_risk_report
    staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX + "dicom_", dir=output_folder)
    try:
        for _, row in table.iterrows():
            case = row["case_id"]
            values = {c: float(row[c]) for c in column_sources(table.columns)
                      if pd.notna(row[c]) and np.isfinite(float(row[c]))}
            write_dicom_seg(sitk.ReadImage(join(output_folder, case + ending)), t2_files[case],
                            join(staging, f"{case}_seg.dcm"))
            write_risk_report(values, t2_files[case], join(staging, f"{case}_sr.dcm"))
        target = join(output_folder, "dicom")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _recalibration_for(args, model_folder: str, folds) -> dict:
    """``--recalibrated``: the model folder's ``recalibration.json``, read before anything is
    predicted; it must have been fitted on the folds this run ensembles."""
    from nnunet_multitask.recalibration import RecalibrationError, load_recalibration
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
        from dataset_conversion.new_patients import prepare_new_patients
        prepared = prepare_new_patients(args.i, early_json, work, clinical=args.clinical,
                                        allow_missing_series=args.allow_missing_series)
        images, clinical, source_label = prepared.images, prepared.clinical, os.path.abspath(args.i)
    dicom_t2 = _dicom_references(args, prepared)
    # the input images are checked (in full) before any checkpoint is loaded
    checked_cases = None
    if early_json is not None:
        checked_cases = _check_inputs(images, early_json, args.allow_missing_series, args.resample_to_first)
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
            from nnunet_multitask.report import report_for_prediction
            report_for_prediction(predictor, images, args.o, table, seg_gt_folder=args.seg_gt,
                                  saliency=args.saliency, saliency_blocks=args.saliency_blocks)
    return table


def predict_entry_point(argv: Optional[List[str]] = None):
    """Console script ``nnUNetv2_predict_multitask``; errors are printed (naming the case, file and
    problem) with exit status 2, without a traceback; a ``--keep-going`` run that finished with
    failed cases exits with :data:`EXIT_FINISHED_WITH_FAILURES`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--merge" in argv:  # merging parts needs no model and no input folder: its own flags
        from nnunet_multitask.prediction_parts import merge_main
        merge_main(argv)
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
        _refuse_duplicate_folds(folds)
    except MultitaskPredictionError as e:
        parser.error(f"-f: {e}")
    work = tempfile.mkdtemp(prefix="nnunet_multitask_inputs_")
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise MultitaskPredictionError("-device cuda: no CUDA device is available (use -device cpu)")
        device = torch.device(args.device)
        if args.device == "cpu":
            import multiprocessing
            torch.set_num_threads(multiprocessing.cpu_count())
        table = _run_prediction(args, folds, device, work)
    except (MultitaskPredictionError, CheckpointError, SchemaError, MultitaskDatasetError,
            ClinicalPreprocessingError, ConversionError) as e:
        # SchemaError covers clinical.tables.ClinicalTableError (bad values, undeclared categories)
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
    with open(join(output_folder, PREDICTIONS_JSON)) as f:
        return list(json.load(f).get("failed_cases") or [])


if __name__ == "__main__":
    predict_entry_point()
