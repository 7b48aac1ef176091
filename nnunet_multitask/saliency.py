"""Where in the image the risk comes from: occlusion saliency of the risk score (``--saliency``).

Method: **occlusion over the tumour's bounding box, through the exact prediction path.** The box
around the predicted tumour (fold-ensembled segmentation), widened by a margin, is cut into at
most ``max_blocks`` blocks; each block in turn is replaced, in every channel, by the mean of the
region's non-tumour voxels (what the tissue around the tumour looks like on average, in the
preprocessed intensities the network sees), and the case is predicted again exactly as the predictor does it
(:meth:`MultiTaskPredictor.predict_case_with_current_weights`: nnU-Net's sliding window with the
run's tile step and mirroring, then :func:`~nnunet_multitask.aggregation.patient_level_prediction`,
every fold, fold risks averaged as in ``predictions.csv``). A block's value is

    saliency = risk(unoccluded) - risk(block occluded)

(positive: the block raises the risk; negative: it lowers it), painted over the block's voxels,
and mapped back onto the T2 grid with nnU-Net's own export steps (resampling, cropping,
transposition reverted). Voxels outside the occluded region were not measured (NaN in memory, 0 in
the written NIfTI; the region is recorded).

Why occlusion and not gradient x input: the heads read the tumour through the network's own
segmentation, *detached* (``p.detach()``: head losses must not move the segmentation), and the
tumour quantities (volume, channel means inside ``p``) dominate the risk. A gradient would only see
the path through the channel means and miss how the risk follows the segmentation (the volume),
and it would need gradients through nnU-Net's stitched sliding window. Occlusion needs neither: it
is model-agnostic and, by construction, the same patient-level definition as the prediction. The
unoccluded risk it starts from is checked against ``predictions.csv`` (a case whose risk differs is
reported as "saliency unavailable", never drawn from another definition).

Cost, bounded and known in advance: ``(1 + number of blocks) x number of folds`` sliding-window
predictions of the case plus one preprocessing (``max_blocks`` defaults to
:data:`DEFAULT_MAX_BLOCKS`); each map records its wall time and number of forward passes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from os.path import isfile, join
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

from nnunet_multitask.prediction_engine import MultiTaskPredictor
from nnunet_multitask.prediction_inputs import prepare_input_folder
from nnunet_multitask.prediction_model import unwrap_network

DEFAULT_MAX_BLOCKS = 12
#: the box around the predicted tumour is widened by this fraction of its extent on each side (at
#: least one voxel), so occluding the rim shows whether the tumour's border matters
MARGIN_FRACTION = 0.25
#: |unoccluded risk - predictions.csv risk| allowed (relative to 1 + |risk|): the same definition
#: on the same input reproduces the value up to float rounding
BASELINE_TOLERANCE = 1e-5


@dataclass
class SaliencyMap:
    """Occlusion saliency of one case (module docstring)."""
    case_id: str
    values: np.ndarray                  # on the T2 grid (array order z, y, x); NaN outside the region
    baseline_risk: float                # the unoccluded fold-ensembled risk score
    baseline_risk_per_fold: List[float]
    n_blocks: int
    block_shape: Tuple[int, ...]        # voxels, preprocessed space
    region_preprocessed: List[List[int]]  # [[start, stop] per axis] in preprocessed space
    n_forward: int                      # sliding-window predictions run
    seconds: float
    fill_values: List[float] = field(default_factory=list)

    def record(self) -> dict:
        """JSON-safe description (written beside the map as ``<case>.json``)."""
        finite = self.values[np.isfinite(self.values)]
        return {"case_id": self.case_id, "method": "occlusion over the tumour bounding box through the prediction "
                                                   "path; value = risk(unoccluded) - risk(block occluded)",
                "baseline_risk": self.baseline_risk, "baseline_risk_per_fold": self.baseline_risk_per_fold,
                "n_blocks": self.n_blocks, "block_shape_voxels_preprocessed": list(self.block_shape),
                "region_preprocessed": self.region_preprocessed, "fill_values": self.fill_values,
                "n_forward_passes": self.n_forward, "seconds": round(self.seconds, 3),
                "max_abs": float(np.abs(finite).max()) if finite.size else None}


def occlusion_blocks(region: Sequence[Tuple[int, int]], max_blocks: int) -> List[Tuple[slice, ...]]:
    """Cut a box into at most ``max_blocks`` blocks of one cubic edge length (clipped to the box).

    The edge is the smallest whole number of voxels for which the grid has no more than
    ``max_blocks`` blocks, so thin axes (a few thick slices) get one block and the in-plane axes
    share the budget.
    """
    if max_blocks < 1:
        raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
    extent = [stop - start for start, stop in region]
    edge = 1
    while math.prod(math.ceil(e / edge) for e in extent) > max_blocks:
        edge += 1
    grids = [[(s, min(s + edge, stop)) for s in range(start, stop, edge)] for start, stop in region]
    blocks = [()]
    for axis in grids:
        blocks = [b + (slice(a, z),) for b in blocks for a, z in axis]
    return blocks


def _region_around(mask: np.ndarray) -> List[Tuple[int, int]]:
    """The tumour's bounding box widened by :data:`MARGIN_FRACTION`; the whole volume without tumour."""
    if not mask.any():
        return [(0, s) for s in mask.shape]
    region = []
    for axis, size in enumerate(mask.shape):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        margin = max(1, int(round(MARGIN_FRACTION * (hi - lo))))
        region.append((max(0, lo - margin), min(size, hi + margin)))
    return region


def _to_original_grid(values: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """A map in preprocessed space back onto the input grid, by nnU-Net's export steps
    (``convert_predicted_logits_to_segmentation_with_correct_shape``): resample, undo the crop, transpose."""
    spacing_transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape_after_crop = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = configuration_manager.spacing if len(configuration_manager.spacing) == len(shape_after_crop) \
        else [spacing_transposed[0], *configuration_manager.spacing]
    resampled = configuration_manager.resampling_fn_probabilities(values[None].astype(np.float32), shape_after_crop,
                                                                  current_spacing, spacing_transposed)
    resampled = np.asarray(resampled.cpu() if hasattr(resampled, "cpu") else resampled)[0]
    full = np.zeros(properties["shape_before_cropping"], dtype=np.float32)
    full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
    return np.asarray(full).transpose(plans_manager.transpose_backward)


def occlusion_saliency(predictor: MultiTaskPredictor, image_files: Sequence[str], case_id: str,
                       max_blocks: int = DEFAULT_MAX_BLOCKS, availability: Optional[np.ndarray] = None
                       ) -> SaliencyMap:
    """Occlusion saliency of one case's risk score with the predictor's model and settings.

    Parameters
    ----------
    predictor : nnunet_multitask.prediction_engine.MultiTaskPredictor
        Initialised (folds, tile step, mirroring as for the prediction) with its clinical table set.
    image_files : sequence of str
        The case's channel files, in channel order (as nnU-Net reads them).
    case_id : str
    max_blocks : int
        Upper bound on the number of occluded blocks (cost: ``(1 + blocks) x folds`` predictions).
    availability : array, optional
        0/1 per channel, which series are real, as the prediction passed it (``image_files`` then
        holds the filler for a missing series, as the prediction's input did).

    Returns
    -------
    SaliencyMap
    """
    t0 = time.time()
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case(list(image_files), None, predictor.plans_manager,
                                                predictor.configuration_manager, predictor.dataset_json)
    data = torch.from_numpy(np.asarray(data, dtype=np.float32))
    net = unwrap_network(predictor.network)
    n_threads = torch.get_num_threads()
    folds = []  # (parameters, clinical vector) per fold
    baseline, logits_sum = [], None
    try:
        for params in predictor.list_of_parameters:
            net.load_state_dict(params)
            clinical = predictor.clinical_vector(case_id, net.clinical_state)[0]
            folds.append((params, clinical))
            logits, pred = predictor.predict_case_with_current_weights(data, clinical, availability)
            logits = logits.to("cpu").float().clone()
            logits_sum = logits if logits_sum is None else logits_sum + logits
            baseline.append(float(pred["risk_score"]))
        tumour = (logits_sum.argmax(0) != 0).numpy()
        region = _region_around(tumour)
        # the fill: the non-tumour voxels of the region (the tissue around the tumour); of the whole
        # image when the tumour fills the region
        around = np.zeros_like(tumour)
        around[tuple(slice(lo, hi) for lo, hi in region)] = True
        around &= ~tumour
        if not around.any():
            around = ~tumour
        around_t = torch.from_numpy(around)
        fill = [float(data[c][around_t].mean()) if around.any() else 0.0 for c in range(data.shape[0])]
        fill_t = torch.tensor(fill, dtype=data.dtype)[:, None, None, None]
        blocks = occlusion_blocks(region, max_blocks)
        values = np.full(tumour.shape, np.nan, dtype=np.float32)
        base = float(np.mean(baseline))
        risks = np.zeros((len(blocks), len(folds)))
        # folds outside, blocks inside: each fold's weights are loaded once (the last fold is loaded already)
        for j in reversed(range(len(folds))):
            params, clinical = folds[j]
            if j != len(folds) - 1:
                net.load_state_dict(params)
            for i, block in enumerate(blocks):
                occluded = data.clone()
                occluded[(slice(None),) + block] = fill_t.expand(-1, *occluded[(slice(None),) + block].shape[1:])
                risks[i, j] = float(predictor.predict_case_with_current_weights(occluded, clinical, availability)[1]
                                    ["risk_score"])
        for i, block in enumerate(blocks):
            values[block] = base - float(np.mean(risks[i]))  # the fold ensemble, as predictions.csv
    finally:
        torch.set_num_threads(n_threads)
    measured = np.isfinite(values)
    on_grid = _to_original_grid(np.where(measured, values, 0.0), properties, predictor.plans_manager,
                                predictor.configuration_manager)
    inside = _to_original_grid(measured.astype(np.float32), properties, predictor.plans_manager,
                               predictor.configuration_manager) > 0.5
    edge = max(b.stop - b.start for blk in blocks for b in blk)
    return SaliencyMap(case_id=case_id, values=np.where(inside, on_grid, np.nan).astype(np.float32),
                       baseline_risk=base, baseline_risk_per_fold=baseline, n_blocks=len(blocks),
                       block_shape=tuple(min(edge, hi - lo) for lo, hi in region),
                       region_preprocessed=[[int(lo), int(hi)] for lo, hi in region],
                       n_forward=(1 + len(blocks)) * len(folds), seconds=time.time() - t0, fill_values=fill)


def case_image_files(input_folder: str, case_id: str, n_channels: int, file_ending: str) -> List[str]:
    """``<case>_<XXXX><ending>`` for every channel, in channel order (as nnU-Net lists them)."""
    return [join(input_folder, f"{case_id}_{c:04d}{file_ending}") for c in range(n_channels)]


def baseline_matches(saliency: SaliencyMap, risk_score: float) -> bool:
    """The unoccluded risk equals the prediction's (same definition, same input)."""
    return abs(saliency.baseline_risk - risk_score) <= BASELINE_TOLERANCE * (1.0 + abs(risk_score))


def write_saliency(folder: str, saliency: SaliencyMap, reference_image: str) -> str:
    """``<folder>/<case>.nii.gz`` (on the reference image's grid, 0 outside the measured region) and
    ``<folder>/<case>.json`` (:meth:`SaliencyMap.record`); returns the NIfTI path."""
    os.makedirs(folder, exist_ok=True)
    ref = sitk.ReadImage(reference_image)
    img = sitk.GetImageFromArray(np.nan_to_num(saliency.values, nan=0.0).astype(np.float32))
    img.CopyInformation(ref)
    path = join(folder, f"{saliency.case_id}.nii.gz")
    sitk.WriteImage(img, path)
    with open(join(folder, f"{saliency.case_id}.json"), "w") as f:
        json.dump(saliency.record(), f, indent=2)
    return path


def read_saliency(folder: Optional[str], case_id: str) -> Optional[Dict[str, object]]:
    """``{"values": array or None, "record": dict}`` of a case, or None when the folder has nothing
    for it. ``values`` is 0 outside the measured region (as written); None when the map was
    unavailable (the record says why)."""
    if not folder:
        return None
    nii, rec = join(folder, f"{case_id}.nii.gz"), join(folder, f"{case_id}.json")
    if not isfile(rec):
        return None
    with open(rec) as f:
        record = json.load(f)
    values = None
    if isfile(nii) and not record.get("unavailable"):
        values = sitk.GetArrayFromImage(sitk.ReadImage(nii)).astype(np.float32)
    return {"values": values, "record": record}


def saliency_for_cases(predictor: MultiTaskPredictor, input_folder: str, cases: Sequence[str],
                       risk_scores: Dict[str, float], folder: str, max_blocks: int = DEFAULT_MAX_BLOCKS,
                       log=print) -> Dict[str, dict]:
    """Occlusion saliency of several cases, written to ``folder``.

    A case whose unoccluded risk does not reproduce ``risk_scores[case]`` (``predictions.csv``) gets
    no map; its ``<case>.json`` says why. Returns ``{case: record}``.
    """
    ending = predictor.dataset_json["file_ending"]
    n_ch = len(predictor.dataset_json["channel_names"])
    # which series were real in the prediction (predict_folder keeps it on the predictor)
    run_availability = predictor.case_availability or {}
    records = {}
    for case in cases:
        availability = run_availability.get(case)
        misaligned = (predictor.misaligned_channels or {}).get(case)
        filled = None
        try:
            if (availability is not None and (np.asarray(availability) == 0).any()) or misaligned:
                # the prediction's input: the filler stands in for a missing series, a channel on
                # another grid resampled onto the first channel's
                filled = tempfile.mkdtemp(prefix="nnunet_multitask_saliency_input_")
                if availability is None:
                    availability = np.ones(n_ch, dtype=np.float32)
                prepare_input_folder(input_folder, filled, predictor.dataset_json, {case: availability},
                                     {case: misaligned} if misaligned else None)
            files = case_image_files(filled or input_folder, case, n_ch, ending)
            sal = occlusion_saliency(predictor, files, case, max_blocks, availability)
        finally:
            if filled is not None:
                shutil.rmtree(filled, ignore_errors=True)
        if not baseline_matches(sal, risk_scores[case]):
            os.makedirs(folder, exist_ok=True)
            rec = dict(sal.record(), unavailable=(
                f"its unoccluded risk {sal.baseline_risk:.6g} differs from predictions.csv's {risk_scores[case]:.6g}: "
                f"the input differs from what was predicted, so no map is drawn"))
            with open(join(folder, f"{case}.json"), "w") as f:
                json.dump(rec, f, indent=2)
            records[case] = rec
            log(f"saliency {case}: unavailable ({rec['unavailable']})")
            continue
        write_saliency(folder, sal, case_image_files(input_folder, case, n_ch, ending)[0])
        records[case] = sal.record()
        log(f"saliency {case}: {sal.n_blocks} blocks, {sal.n_forward} sliding-window predictions, "
            f"{sal.seconds:.1f} s")
    return records
