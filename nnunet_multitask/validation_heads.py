"""Patient-level head predictions of preprocessed cases, for the trainer's validation.

:func:`predict_heads` takes a network, its plans and the cases' preprocessed inputs;
:func:`predict_heads_for_preprocessed_cases` reads them from a trainer. Both predict by the
predictor's definition (:class:`~nnunet_multitask.prediction_engine.MultiTaskPredictor`: nnU-Net's
sliding window, then :func:`~nnunet_multitask.aggregation.patient_level_prediction`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_multitask.prediction_engine import MultiTaskPredictor


def predict_heads(network, plans_manager: PlansManager, configuration_manager, dataset_json: dict,
                  case_inputs: Mapping[str, Mapping[str, np.ndarray]], load_case: Callable[[str], torch.Tensor],
                  device: torch.device, use_mirroring: bool = True, mirroring_axes=None,
                  trainer_name: str = "unknown") -> pd.DataFrame:
    """Patient-level head predictions of preprocessed cases with a network's current weights, by the
    predictor's definition (nnU-Net's sliding window, then ``patient_level_prediction``).

    ``case_inputs``: ``{case id: {"clinical": preprocessed clinical vector, "availability": 0/1 per
    channel}}``; ``load_case(case id)``: the case's preprocessed image (float32 tensor, channels
    first). Returns one row per case as :meth:`MultiTaskPredictor.predictions_table` (without
    ``n_clinical_values_imputed``: every clinical vector is given).
    """
    predictor = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                   perform_everything_on_device=True, device=device, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, None, dataset_json, trainer_name,
                                    mirroring_axes)
    for k, inputs in case_inputs.items():
        _, pred = predictor.predict_case_with_current_weights(load_case(k), inputs["clinical"],
                                                              inputs.get("availability"))
        predictor.head_results[k] = {"folds": [pred], "clinical_imputed": False,
                                     "availability": inputs.get("availability")}
    # the trainer's lookup requires every row (nothing imputed per row); it does not count empty cells
    return predictor.predictions_table().drop(columns=["n_clinical_values_imputed"])


def predict_heads_for_preprocessed_cases(trainer, case_inputs: Mapping[str, Mapping[str, np.ndarray]],
                                         use_mirroring: bool = True, cache: Optional[dict] = None,
                                         cache_limit_bytes: int = 2 ** 30) -> pd.DataFrame:
    """:func:`predict_heads` with a trainer's current network, plans and preprocessed folder.

    Used by the trainer's final validation (with test-time mirroring, as the predictor) and by its
    per-epoch whole-fold validation (``use_mirroring=False``, 8x fewer forward passes in 3-D).
    ``cache``: a dict kept by the caller; preprocessed images are read into it (as float32 tensors,
    up to ``cache_limit_bytes`` in all; the rest is read again at every call) and reused by later calls.
    """
    case_ids = list(case_inputs)
    cache = {} if cache is None else cache
    missing = [k for k in case_ids if k not in cache]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, missing,
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage) \
        if missing else None

    def load_case(k: str) -> torch.Tensor:
        data = cache.get(k)
        if data is None:
            data = torch.from_numpy(np.asarray(dataset.load_case(k)[0][:], dtype=np.float32))
            if sum(v.numel() * v.element_size() for v in cache.values()) + data.numel() * 4 <= cache_limit_bytes:
                cache[k] = data
        return data

    return predict_heads(trainer.mt_network(), trainer.plans_manager, trainer.configuration_manager,
                         trainer.dataset_json, {k: case_inputs[k] for k in case_ids}, load_case, trainer.device,
                         use_mirroring=use_mirroring, mirroring_axes=trainer.inference_allowed_mirroring_axes,
                         trainer_name=type(trainer).__name__)
