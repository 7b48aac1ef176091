"""A trained multitask model folder, read and checked for prediction.

:func:`read_model_folder` (dataset.json, plans.json and the heads' configuration, with the checks
that the folder is a multitask model of a converted dataset), :func:`load_fold_checkpoints`
(every fold's weights, loaded safely, from one trainer and configuration, fitted),
:func:`refuse_duplicate_folds`, and :func:`unwrap_network` (the multitask network inside a
compiled or distributed wrapper, refused when the model has no heads).
"""
from __future__ import annotations

from os.path import isfile, join
from typing import Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json
from torch._dynamo import OptimizedModule

from nnunet_multitask.checkpoints import load_checkpoint_safely
from nnunet_multitask.contract import ContractError, DatasetContract, HeadConfig
from nnunet_multitask.network import MultiTaskUNet
from nnunet_multitask.prediction_artifact import MultitaskPredictionError


def unwrap_network(network) -> MultiTaskUNet:
    net = network._orig_mod if isinstance(network, OptimizedModule) else network
    net = getattr(net, "module", net)
    if not isinstance(net, MultiTaskUNet):
        raise MultitaskPredictionError(f"the network is a {type(net).__name__}, not a multitask network: this "
                                       f"model was trained without heads (use nnUNetv2_predict for it)")
    return net


def read_model_folder(folder: str) -> tuple:
    """(dataset.json, plans.json, :class:`HeadConfig`) of a model folder, with the checks that it
    is a multitask model of a converted dataset whose channels the heads were trained with."""
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


def load_fold_checkpoints(ckpt_paths: Sequence[str]) -> tuple:
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


def refuse_duplicate_folds(folds: Sequence) -> None:
    seen, repeated = set(), []
    for f in folds:
        if f in seen and f not in repeated:
            repeated.append(f)
        seen.add(f)
    if repeated:
        raise MultitaskPredictionError(
            f"fold(s) {', '.join(map(str, repeated))} given more than once in -f {' '.join(map(str, folds))}: the "
            f"same checkpoint twice is not an ensemble (it would report a spread of zero); name each fold once")
