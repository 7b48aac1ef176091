"""Patient-level inference: nnU-Net's predictor plus the heads' risk, recurrence probability and
survival curve, with fold ensembling.

``nnUNetv2_predict_multitask`` mirrors ``nnUNetv2_predict`` (same flags) and adds ``--clinical``.
Segmentations are written by nnU-Net's own export; ``predictions.csv`` and ``predictions.json``
hold the patient-level outputs (see :data:`SURVIVAL_TIMES` and the README for the columns).

The patient-level definition is :func:`nnunet_multitask.aggregation.patient_prediction`: every
sliding-window tile and test-time mirror contributes its head outputs weighted by the tile's
predicted tumour mass, so one pass yields the segmentation and the heads.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
from collections import deque
from datetime import datetime, timezone
from importlib.metadata import version
from os.path import basename, isdir, join
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch._dynamo import OptimizedModule

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.file_path_utilities import get_output_folder
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from clinical.preprocessing import ClinicalPreprocessor
from nnunet_multitask.aggregation import patient_prediction, survival_at_times
from nnunet_multitask.dataset import dataset_table_path, read_features, schema_from_block
from nnunet_multitask.network import MultiTaskUNet, head_config_from_plans

SURVIVAL_TIMES = (12, 24, 36, 60)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds objects outside the allow-list (it could run code when unpickled)."""


class MultitaskPredictionError(RuntimeError):
    pass


def _allowed_globals() -> list:
    # what nnU-Net's own checkpoints contain besides tensors and builtins: numpy scalars and arrays
    # in the training log, and torch.device in init_args. Nothing callable beyond these constructors.
    import numpy.dtypes as ndt
    core = np._core if hasattr(np, "_core") else np.core
    allowed = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype, torch.device]
    allowed += [getattr(ndt, n) for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                          "Int32DType", "BoolDType", "UInt8DType") if hasattr(ndt, n)]
    return allowed


def load_checkpoint_safely(path: str) -> dict:
    """``torch.load(weights_only=True)`` with a small allow-list: a checkpoint that carries any other
    pickled object (a callable, a class) is refused instead of executed."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{path}: refused to load a checkpoint with objects outside the allow-list "
                                    f"(it could execute code): {str(e).splitlines()[0]}") from None
    except FileNotFoundError:
        raise MultitaskPredictionError(f"checkpoint not found: {path}") from None


def _unwrap(network) -> MultiTaskUNet:
    net = network._orig_mod if isinstance(network, OptimizedModule) else network
    net = getattr(net, "module", net)
    if not isinstance(net, MultiTaskUNet):
        raise MultitaskPredictionError(f"the network is a {type(net).__name__}, not a multitask network: this "
                                       f"model was trained without heads (use nnUNetv2_predict for it)")
    return net


class MultiTaskPredictor(nnUNetPredictor):
    """nnUNetPredictor that also returns patient-level head outputs, fold by fold."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_results: Dict[str, dict] = {}
        self._pending_cases: deque = deque()
        self.clinical_table: Optional[pd.DataFrame] = None
        self.impute_missing_clinical = False
        self.provenance: dict = {}

    # ------------------------------------------------------------------ loading
    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds, checkpoint_name: str = "checkpoint_final.pth"):
        """nnU-Net's initialisation with checkpoints loaded safely (``weights_only``) and the heads checked."""
        from batchgenerators.utilities.file_and_folder_operations import load_json
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        if isinstance(use_folds, (str, int)):
            use_folds = [use_folds]
        dataset_json = load_json(join(model_training_output_dir, "dataset.json"))
        plans = load_json(join(model_training_output_dir, "plans.json"))
        if "multitask_model" not in plans:
            raise MultitaskPredictionError(f"{model_training_output_dir}: plans.json has no 'multitask_model' block: "
                                           f"this model was trained without heads (use nnUNetv2_predict for it)")
        plans_manager = PlansManager(plans)
        parameters, trainer_name, configuration_name, mirroring = [], None, None, None
        for i, f in enumerate(use_folds):
            f = int(f) if f != "all" else f
            ckpt = load_checkpoint_safely(join(model_training_output_dir, f"fold_{f}", checkpoint_name))
            if i == 0:
                trainer_name = ckpt["trainer_name"]
                configuration_name = ckpt["init_args"]["configuration"]
                mirroring = ckpt.get("inference_allowed_mirroring_axes")
            parameters.append(ckpt["network_weights"])
        configuration_manager = plans_manager.get_configuration(configuration_name)
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        _unwrap(network)
        network.load_state_dict(parameters[0])
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                   trainer_name, mirroring)
        self.provenance = {"model_folder": os.path.abspath(model_training_output_dir), "trainer": trainer_name,
                           "plans": plans_manager.plans_name, "configuration": configuration_name,
                           "folds": [str(f) for f in use_folds], "checkpoint": checkpoint_name}

    # ------------------------------------------------------------------ clinical data
    @property
    def head_config(self) -> dict:
        return head_config_from_plans(self.plans_manager.plans)

    def set_clinical_table(self, table: Optional[pd.DataFrame | str] = None, impute_missing: bool = False):
        """Clinical rows of the cases to predict (default: the dataset's clinical table)."""
        mt = self.dataset_json["multitask"]
        schema = schema_from_block(mt)
        if table is None:
            table = dataset_table_path(self.plans_manager.dataset_name, mt["clinical_table"])
        if not isinstance(table, pd.DataFrame):
            table = read_features(table, schema)
        self.clinical_table = table
        self.impute_missing_clinical = impute_missing

    def clinical_vector(self, case_id: str, clinical_state: torch.Tensor) -> tuple:
        """(vector, imputed) for one case with the fold's fitted transform."""
        cfg = self.head_config
        if cfg["n_clinical_features"] == 0:
            return np.zeros((0,), dtype=np.float32), False
        schema = schema_from_block(self.dataset_json["multitask"])
        prep = ClinicalPreprocessor.from_state_vector(schema, tuple(cfg["clinical_groups"]),
                                                      clinical_state.cpu().numpy())
        if self.clinical_table is None:
            self.set_clinical_table()
        imputed = case_id not in self.clinical_table.index
        if imputed and not self.impute_missing_clinical:
            raise MultitaskPredictionError(
                f"case {case_id}: no row in the clinical table; add it, or pass --impute-missing-clinical to "
                f"impute every clinical value as in training (flagged in predictions.csv)")
        row = (pd.DataFrame(index=pd.Index([case_id], name="case_id"), columns=self.clinical_table.columns)
               if imputed else self.clinical_table.loc[[case_id]])
        return prep.transform(row.reset_index(), id_column="case_id")[0].astype(np.float32), imputed

    # ------------------------------------------------------------------ heads
    def predict_case_with_current_weights(self, data: torch.Tensor, clinical: np.ndarray):
        """(segmentation logits, patient-level head prediction) with the network's current weights."""
        net = _unwrap(self.network)
        net.head_sink = []
        net.clinical_input = torch.as_tensor(clinical, dtype=torch.float32)[None] if len(clinical) else None
        try:
            logits = self.predict_sliding_window_return_logits(data)
            sink = net.head_sink
        finally:
            net.head_sink, net.clinical_input = None, None
        records = [{k: v.float().cpu().numpy() for k, v in r.items()} for r in sink]
        cfg = self.head_config
        edges = net.time_bin_edges.cpu().numpy()
        pred = patient_prediction(records, net.survival_head, cfg["horizon_months"], edges)
        if pred["survival_logits"] is not None:
            pred["survival"] = dict(zip(SURVIVAL_TIMES, survival_at_times(pred["survival_logits"], edges,
                                                                          SURVIVAL_TIMES)))
        return logits, pred

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's fold loop, with each fold's clinical transform and head outputs kept per fold."""
        case_id = self._pending_cases.popleft() if self._pending_cases else None
        n_threads = torch.get_num_threads()
        prediction, per_fold, imputed = None, [], False
        net = _unwrap(self.network)
        for params in self.list_of_parameters:
            net.load_state_dict(params)
            if case_id is None:
                raise MultitaskPredictionError("case id unknown: use predict_from_files / the CLI")
            clinical, imputed = self.clinical_vector(case_id, net.clinical_state)
            logits, pred = self.predict_case_with_current_weights(data, clinical)
            # sliding-window logits are inference tensors: accumulate into a normal tensor
            logits = logits.to("cpu").clone()
            prediction = logits if prediction is None else prediction + logits
            per_fold.append(pred)
        prediction /= len(self.list_of_parameters)
        torch.set_num_threads(n_threads)
        self.head_results[case_id] = {"folds": per_fold, "clinical_imputed": imputed}
        return prediction

    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       folder_with_segs_from_prev_stage=None, overwrite=True, part_id=0, num_parts=1,
                                       save_probabilities=False):
        lists, outs, prev = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
            folder_with_segs_from_prev_stage, overwrite, part_id, num_parts, save_probabilities)
        # both of nnU-Net's prediction paths process cases in this order
        self._pending_cases = deque(basename(o) for o in outs)
        return lists, outs, prev

    # ------------------------------------------------------------------ outputs
    def predictions_table(self) -> pd.DataFrame:
        """One row per case: fold-ensembled outputs (log-risks and probabilities averaged) and their spread."""
        horizon = int(self.head_config["horizon_months"])
        rows = []
        for case_id in sorted(self.head_results):
            res = self.head_results[case_id]
            folds = res["folds"]
            row = {"case_id": case_id}
            cols = {"risk_score": [f["risk_score"] for f in folds],
                    f"p_recurrence_{horizon}m": [f["p_recurrence"] for f in folds]}
            if "survival" in folds[0]:
                for t in SURVIVAL_TIMES:
                    cols[f"surv_prob_{t}m"] = [f["survival"][t] for f in folds]
            for name, vals in cols.items():
                row[name] = float(np.mean(vals))
            for name, vals in cols.items():
                row[f"{name}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            row["n_folds"] = len(folds)
            row["tumour_found"] = all(f["tumour_found"] for f in folds)
            row["clinical_imputed"] = bool(res["clinical_imputed"])
            rows.append(row)
        return pd.DataFrame(rows)

    def write_predictions(self, output_folder: str):
        table = self.predictions_table()
        _atomic_write(join(output_folder, "predictions.csv"), table.to_csv(index=False))
        meta = dict(self.provenance)
        meta.update({"nnunetv2_version": version("nnunetv2"), "nnunet_multitask_version": version("nnunet-multitask"),
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "n_cases": len(table), "horizon_months": self.head_config["horizon_months"],
                     "survival_head": self.head_config["survival_head"],
                     "patient_level": "tumour-mass-weighted mean over sliding-window tiles and mirrors; "
                                      "fold ensemble: mean of risk scores and probabilities, sd = spread over folds",
                     "tile_step_size": self.tile_step_size, "use_mirroring": self.use_mirroring,
                     "columns": list(table.columns)})
        _atomic_write(join(output_folder, "predictions.json"), json.dumps(meta, indent=2))
        return table


def _atomic_write(path: str, text: str):
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=os.path.basename(path))
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def predict_heads_for_preprocessed_cases(trainer, case_ids: Sequence[str]) -> pd.DataFrame:
    """Patient-level head predictions of preprocessed cases with a trainer's current network
    (used by the trainer's final validation)."""
    predictor = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                   perform_everything_on_device=True, device=trainer.device, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.mt_network(), trainer.plans_manager, trainer.configuration_manager,
                                    None, trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    net = trainer.mt_network()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(case_ids),
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    for k in dataset.identifiers:
        data, _, _, _ = dataset.load_case(k)
        clinical = trainer._case_data[k]["clinical"]
        _, pred = predictor.predict_case_with_current_weights(torch.from_numpy(np.asarray(data[:])), clinical)
        predictor.head_results[k] = {"folds": [pred], "clinical_imputed": False}
    return predictor.predictions_table()


# ---------------------------------------------------------------------- CLI
def _check_inputs(input_folder: str, dataset_json: dict):
    """Every case in the input folder has every channel the model was trained with."""
    ending = dataset_json["file_ending"]
    n_ch = len(dataset_json["channel_names"])
    if not isdir(input_folder):
        raise MultitaskPredictionError(f"input folder not found: {input_folder}")
    files = [f for f in os.listdir(input_folder) if f.endswith(ending)]
    cases = sorted({f[:-len(ending) - 5] for f in files})
    if not cases:
        raise MultitaskPredictionError(f"{input_folder}: no images ending in {ending}")
    for c in cases:
        missing = [f"{c}_{i:04d}{ending}" for i in range(n_ch) if f"{c}_{i:04d}{ending}" not in files]
        if missing:
            raise MultitaskPredictionError(f"case {c}: missing channel file(s) {missing} in {input_folder} "
                                           f"(the model expects {n_ch} channels: {dataset_json['channel_names']})")
    extra = [f for f in files if not any(f == f"{f[:-len(ending) - 5]}_{i:04d}{ending}" for i in range(n_ch))]
    if extra:
        raise MultitaskPredictionError(f"{input_folder}: file(s) {extra[:5]} do not match <case>_<XXXX>{ending} "
                                       f"for channels 0..{n_ch - 1}")
    return cases


def _check_clinical_columns(predictor: MultiTaskPredictor):
    cfg = predictor.head_config
    model_cols = cfg.get("clinical_columns", {})
    table = predictor.clinical_table
    missing = [c for c in model_cols if c not in table.columns]
    if missing:
        raise MultitaskPredictionError(f"clinical table lacks column(s) {missing} that the model was trained with")


def predict_entry_point(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(
        description="nnU-Net prediction with patient-level heads: writes nnU-Net's segmentations plus "
                    "predictions.csv (risk_score, p_recurrence_<H>m, survival probabilities, spread over folds) "
                    "and predictions.json (provenance).")
    parser.add_argument("-i", required=True, help="input folder (<case>_<XXXX>.nii.gz, as nnUNetv2_predict)")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-tr", default="MultiRecTrainer", help="trainer class used for training")
    parser.add_argument("-c", required=True, help="configuration")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (log-risks and "
                        "probabilities are averaged over them; the spread is reported)")
    parser.add_argument("-chk", default="checkpoint_final.pth")
    parser.add_argument("-step_size", type=float, default=0.5)
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    parser.add_argument("-npp", type=int, default=int(os.environ.get("nnUNet_npp", 3)))
    parser.add_argument("-nps", type=int, default=int(os.environ.get("nnUNet_nps", 3)))
    parser.add_argument("--clinical", default=None, help="CSV with the new cases' clinical rows keyed by case_id "
                        "(default: the dataset's clinical table)")
    parser.add_argument("--impute-missing-clinical", action="store_true",
                        help="a case without a clinical row is imputed as in training (flagged in the CSV) "
                             "instead of being an error")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    folds = [f if f == "all" else int(f) for f in args.f]
    if not os.environ.get("nnUNet_extTrainer"):
        # the trainers folder of this project, so checkpoints of our trainers resolve without extra set-up
        import trainers
        os.environ["nnUNet_extTrainer"] = os.path.dirname(trainers.__file__)

    device = torch.device(args.device)
    if args.device == "cpu":
        import multiprocessing
        torch.set_num_threads(multiprocessing.cpu_count())
    model_folder = get_output_folder(args.d, args.tr, args.p, args.c)
    if not isdir(model_folder):
        raise MultitaskPredictionError(f"no trained model at {model_folder}")
    predictor = MultiTaskPredictor(tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
                                   perform_everything_on_device=args.device == "cuda", device=device,
                                   verbose=args.verbose, verbose_preprocessing=args.verbose,
                                   allow_tqdm=not args.disable_progress_bar)
    predictor.initialize_from_trained_model_folder(model_folder, folds, args.chk)
    cases = _check_inputs(args.i, predictor.dataset_json)
    predictor.set_clinical_table(args.clinical, impute_missing=args.impute_missing_clinical)
    _check_clinical_columns(predictor)
    if predictor.head_config["n_clinical_features"] > 0 and not args.impute_missing_clinical:
        missing = [c for c in cases if c not in predictor.clinical_table.index]
        if missing:
            raise MultitaskPredictionError(f"case(s) {missing} have no row in the clinical table "
                                           f"{args.clinical or '(dataset default)'}; add them or pass "
                                           f"--impute-missing-clinical")
    try:
        os.makedirs(args.o, exist_ok=True)
        probe = join(args.o, ".write_test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise MultitaskPredictionError(f"output folder {args.o} cannot be written: {e}") from None

    if args.npp == 0 and args.nps == 0:
        predictor.predict_from_files_sequential(args.i, args.o, overwrite=True)
    else:
        predictor.predict_from_files(args.i, args.o, overwrite=True, num_processes_preprocessing=max(1, args.npp),
                                     num_processes_segmentation_export=max(1, args.nps))
    table = predictor.write_predictions(args.o)
    print(f"Wrote {len(table)} patient-level predictions to {join(args.o, 'predictions.csv')}")


if __name__ == "__main__":
    predict_entry_point()
