"""The prediction engine: nnU-Net's predictor plus the heads' patient-level outputs, fold by fold.

:class:`MultiTaskPredictor` is an ``nnUNetPredictor``: nnU-Net's sliding window (tiles and
mirrors) stitches the whole-image segmentation, the heads run once on tumour-level features of the
whole image (:func:`nnunet_multitask.aggregation.patient_level_prediction`), so one pass yields the
segmentation and the heads; folds are ensembled by averaging log-risks (risk scores) and
probabilities. Each prediction carries its case id explicitly (nnU-Net's ``ofile``), checked
against the cases nnU-Net was asked to predict. The rows and the provenance record it builds are
the types of :mod:`nnunet_multitask.prediction_artifact`; the model folder is read by
:mod:`nnunet_multitask.prediction_model`.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from os.path import basename, isfile, join
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from clinical.preprocessing import ClinicalPreprocessingError, ClinicalPreprocessor
from clinical.schema import ClinicalSchema, SchemaError
from clinical.tables import CASE_ID_COLUMN, read_case_table
from nnunet_multitask.aggregation import patient_level_prediction, survival_at_times
from nnunet_multitask.checkpoints import file_sha256
from nnunet_multitask.contract import (SERIES_COLUMN, DatasetContract, HeadConfig, recurrence_column,
                                       survival_column, survival_times)
from nnunet_multitask.dataset_tables import MultitaskDatasetError, dataset_table_path
from nnunet_multitask.network import build_multitask_network
from nnunet_multitask.prediction_artifact import (ColumnSources,
                                                  MultitaskPredictionError, PartRecord, PredictionRecord,
                                                  prediction_texts)
from nnunet_multitask.prediction_model import (load_fold_checkpoints, read_model_folder, refuse_duplicate_folds,
                                               unwrap_network)
from nnunet_multitask.publish import atomic_write
from nnunet_multitask.recalibration import apply_recalibration

def _version_or_unknown(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


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
        #: the case being predicted (its output name, nnU-Net's ``ofile``); None between cases
        self.current_case: Optional[str] = None
        #: the cases nnU-Net was asked to predict, in its order (``_manage_input_and_output_lists``)
        self._expected_cases: List[str] = []
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
        #: the clinical table the user named when its rows were re-keyed elsewhere (a cohort folder's)
        self.clinical_table_label: Optional[str] = None
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
        refuse_duplicate_folds(use_folds)
        if not use_folds:
            raise MultitaskPredictionError(f"{model_training_output_dir}: no fold folder has {checkpoint_name}")
        dataset_json, plans, cfg = read_model_folder(model_training_output_dir)
        ckpt_paths = [join(model_training_output_dir, f"fold_{f}", checkpoint_name) for f in use_folds]
        absent = [p for p in ckpt_paths if not isfile(p)]
        if absent:
            raise MultitaskPredictionError(f"checkpoint(s) not found: {absent}")

        plans_manager = PlansManager(plans)
        parameters, trainer_name, configuration_name, mirroring = load_fold_checkpoints(ckpt_paths)
        configuration_manager = plans_manager.get_configuration(configuration_name)
        # the plans' multitask_model block describes the whole network: no trainer class is looked up,
        # so a model folder predicts without the trainers' folder on nnUNet_extTrainer
        network = build_multitask_network(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        unwrap_network(network)
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
        net = unwrap_network(self.network)
        with net.capture("tiles") as tiles:  # each tile's record, for the whole-tumour features
            logits = self.predict_sliding_window_return_logits(data)
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
        """nnU-Net's fold loop for :attr:`current_case`, with each fold's clinical transform and head
        outputs kept per fold. The case id is set explicitly from nnU-Net's ``ofile`` on the
        data-iterator path (:meth:`predict_from_data_iterator`); nnU-Net's sequential path names no
        case, so there it is the next case of the list nnU-Net itself iterates."""
        if self.current_case is None:
            if not self._expected_cases:
                raise MultitaskPredictionError("case id unknown: predict through predict_from_files / "
                                               "predict_from_files_sequential / predict_folder")
            self.current_case = self._expected_cases.pop(0)
        try:
            return self._predict_case(self.current_case, data)
        finally:
            self.current_case = None

    def _predict_case(self, case_id: str, data: torch.Tensor) -> torch.Tensor:
        availability = self.case_availability.get(case_id)
        n_threads = torch.get_num_threads()
        prediction, per_fold = None, []
        imputed, n_missing = False, 0
        net = unwrap_network(self.network)
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
            atomic_write(join(self.case_record_folder, case_id + ".json"), json.dumps(self.case_row(case_id)))
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
        self._expected_cases, self.current_case = [basename(o) for o in outs], None
        return lists, outs, prev

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        """nnU-Net's loop; each item's case id (its ``ofile``) becomes :attr:`current_case` before
        nnU-Net predicts it, after checking that it is a case nnU-Net was asked to predict (once), so
        head outputs can never be attributed to another patient."""
        def named(items):
            for item in items:
                got = basename(item["ofile"]) if item.get("ofile") is not None else None
                if got is None or got not in self._expected_cases:
                    raise MultitaskPredictionError(
                        f"preprocessed case {got!r} arrived, which is not one of the cases still to predict "
                        f"{self._expected_cases[:5]}: refusing to mix up patients")
                self._expected_cases.remove(got)
                self.current_case = got
                yield item
        return super().predict_from_data_iterator(named(data_iterator), save_probabilities,
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

    def provenance_record(self, table: pd.DataFrame, part: Optional[PartRecord] = None) -> PredictionRecord:
        """The :class:`~nnunet_multitask.prediction_artifact.PredictionRecord` of a table this
        predictor made; ``part``: the record of one part of a ``-num_parts`` run, for ``--merge``."""
        cfg = self.head_config
        prov = self.provenance
        return PredictionRecord(
            model_folder=prov.get("model_folder"), trainer=prov.get("trainer"), plans=prov.get("plans"),
            configuration=prov.get("configuration"), folds=tuple(prov.get("folds") or ()),
            checkpoint=prov.get("checkpoint"), checkpoint_sha256=prov.get("checkpoint_sha256"),
            nnunetv2_version=_version_or_unknown("nnunetv2"),
            nnunet_multitask_version=_version_or_unknown("nnunet-multitask"),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            n_cases=len(table), horizon_months=cfg.horizon_months, survival_head=cfg.survival_head,
            clinical_table=self.clinical_table_label or self.clinical_table_source,
            clinical_columns=tuple(self.model_clinical_columns()),
            impute_missing_clinical=self.impute_missing_clinical, allow_missing_series=self.allow_missing_series,
            resampled_to_first_channel={c: [self.dataset_json["channel_names"][str(i)] for i in chans]
                                        for c, chans in sorted(self.misaligned_channels.items())},
            channel_availability=cfg.channel_availability,
            patient_level="heads once on tumour-level features of the stitched whole-image segmentation "
                          "(nnunet_multitask.aggregation.patient_level_prediction); image_features="
                          + cfg.image_features,
            fold_ensemble="mean of risk scores (log-risks) and of probabilities; *_sd = sample sd over folds "
                          "(NaN for one fold)",
            tile_step_size=self.tile_step_size, use_mirroring=self.use_mirroring, columns=tuple(table.columns),
            column_sources=ColumnSources.from_columns(table.columns), part=part)

    def write_predictions(self, output_folder: str, table: Optional[pd.DataFrame] = None,
                          failures: Optional[Mapping[str, str]] = None,
                          part: Optional[PartRecord] = None) -> pd.DataFrame:
        """Write ``failures.csv`` (when cases failed), ``predictions.json`` then ``predictions.csv``
        (each atomically) into a folder; ``predictions.json`` holds the SHA-256 of the tables, so an
        edit made afterwards is found (``--merge`` checks it). ``part``: see :meth:`provenance_record`."""
        table = self.predictions_table() if table is None else table
        if self.recalibration is not None:  # --recalibrated: the raw values stay as *_uncalibrated
            table = apply_recalibration(table, self.recalibration)
        record = self.provenance_record(table, part)
        if self.recalibration is not None:
            fit = dict(table.attrs["recalibration"])
            fit.pop("file", None)  # a path of this machine; the digest says which file it was
            fit["sha256"] = file_sha256(self.recalibration["path"])
            record = replace(record, recalibration=fit)
        _, texts = prediction_texts(table, record, failures)
        for name, text in texts.items():
            atomic_write(join(output_folder, name), text)
        return table
