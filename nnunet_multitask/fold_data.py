"""The per-fold data of :class:`nnunet_multitask.trainer.MultiRecTrainerBase` (a mixin of it): the fold's
clinical transform, time bins, tumour statistics and output-bias start fitted on the training cases,
the per-case lookup (clinical vector, follow-up, label, IPCW weight, series availability), the
tumour boxes of the ``"tumour_roi"`` pathway, and each step's table on the device."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from clinical.outcomes import ipcw_event_rate, ipcw_weights, recurrence_label
from clinical.preprocessing import ClinicalPreprocessor
from nnunet_multitask import losses as L
from nnunet_multitask.dataset_tables import (MultitaskDatasetError, dataset_table_path, lookup_rows, read_features,
                                             read_outcomes, read_series_availability)
from nnunet_multitask.network import MultiTaskUNet, tumour_quantities
from nnunet_multitask.roi import (CENTRE_JITTER_VOXELS, crop_box, largest_component_centre, random_flips, roi_start,
                                  training_box, tumour_probability)
from nnunet_multitask.trainer_parts import quantity_statistics


class FoldData:
    """Per-fold data methods of the MultiRec trainer (they read the trainer's nnU-Net state: split,
    dataset class, network, device)."""

    def _read_tables(self):
        name = self.plans_manager.dataset_name
        features_path = dataset_table_path(name, self.contract.clinical_table)
        outcomes_path = dataset_table_path(name, self.contract.outcomes_table)
        features = read_features(features_path, self.schema)
        outcomes = read_outcomes(outcomes_path, self.schema)
        return features, features_path, outcomes, outcomes_path

    def prepare_fold_data(self) -> None:
        """Fit the fold's clinical transform and time bins (unless restored from a checkpoint) and
        build the per-case lookup (clinical vector, time, event, label) of this fold's cases."""
        if self._case_data is not None:
            return
        tr_keys, val_keys = self.do_split()
        leaked = self.contract.held_out_cases & (set(tr_keys) | set(val_keys))
        if leaked:
            raise RuntimeError(f"test case(s) {sorted(leaked)} appear in fold {self.fold} of splits_final.json: "
                               f"test patients must never enter training or model selection")
        features, fpath, outcomes, opath = self._read_tables()
        availability = self._fold_availability(list(tr_keys) + list(val_keys))
        net = self.mt_network()
        tr_feat = lookup_rows(features, tr_keys, "clinical table", fpath)
        tr_out = lookup_rows(outcomes, tr_keys, "outcomes table", opath)
        tcol, ecol = self.contract.time_column, self.contract.event_column
        groups = tuple(self.clinical_groups)
        quantities = self._reference_tumour_quantities(tr_keys, val_keys)
        if not bool(net.fold_state_fitted):
            prep = ClinicalPreprocessor(self.schema, groups).fit(tr_feat.reset_index())
            times, events = tr_out[tcol].values, tr_out[ecol].values
            with torch.no_grad():
                net.clinical_state.copy_(torch.as_tensor(prep.state_vector(), dtype=torch.float64))
                net.time_bin_edges.copy_(self._fit_time_bins(times, events))
                mean, std = quantity_statistics(np.stack([quantities[k] for k in tr_keys]),
                                                np.stack([availability[k][self.used_channels] for k in tr_keys]))
                net.quantity_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
                net.quantity_std.copy_(torch.as_tensor(std, dtype=torch.float32))
                self._initialise_output_biases(net, times, events)
                net.fold_state_fitted.fill_(True)
            self.print_to_log_file(f"Fitted the clinical transform ({prep.n_features} features from groups "
                                   f"{list(groups)}), {self.n_time_bins} time bins, the tumour-quantity "
                                   f"standardisation (reference masks) and the heads' output biases on the "
                                   f"{len(tr_keys)} training cases of fold {self.fold}")
        else:
            self.print_to_log_file("Clinical transform and time bins restored from the checkpoint")
        prep = ClinicalPreprocessor.from_state_vector(self.schema, groups, net.clinical_state.cpu().numpy())
        keys = list(tr_keys) + [k for k in val_keys if k not in set(tr_keys)]
        feats = lookup_rows(features, keys, "clinical table", fpath)
        vectors = prep.transform(feats.reset_index(), id_column="case_id")
        outs = lookup_rows(outcomes, keys, "outcomes table", opath)
        labels = recurrence_label(outs[tcol].values, outs[ecol].values, self.horizon)
        cls_weights = self.classification_weights(outs[tcol].values, outs[ecol].values,
                                                  tr_out[tcol].values, tr_out[ecol].values)
        self._case_index = {k: i for i, k in enumerate(keys)}
        self._case_data = {k: {"clinical": vectors[i].astype(np.float32), "time": float(outs[tcol].values[i]),
                               "event": float(outs[ecol].values[i]), "label": float(labels[i]),
                               "cls_weight": float(cls_weights[i]),
                               "availability": availability[k]}
                           for i, k in enumerate(keys)}
        self._val_keys = list(val_keys)
        tr_w = cls_weights[:len(tr_keys)]
        known = ~np.isnan(labels[:len(tr_keys)])
        self.print_to_log_file(
            f"Classification loss: {self.classification_censoring}; {int(known.sum())} of {len(tr_keys)} training "
            f"cases have a known status at {self.horizon:g} {self.contract.time_unit}"
            + (f", IPCW weights {tr_w[known].min():.2f}..{tr_w[known].max():.2f} (censoring Kaplan-Meier of the "
               f"training fold, floored at {self.min_censoring_survival})"
               if self.classification_censoring == "ipcw" and known.any() else ""))

    def classification_weights(self, time, event, train_time, train_event) -> np.ndarray:
        """Per-case censoring weights of the classification loss: ``ipcw_weights`` with the censoring
        distribution of the training fold (``train_time``, ``train_event``) for ``"ipcw"``; 1 for a
        known label and 0 for an unknown one for ``"complete_case"`` (then unused)."""
        if self.classification_censoring == "ipcw":
            return ipcw_weights(time, event, self.horizon, train_time, train_event,
                                min_censoring_survival=self.min_censoring_survival)
        return (~np.isnan(recurrence_label(time, event, self.horizon))).astype(float)

    def _fold_availability(self, keys) -> Dict[str, np.ndarray]:
        """0/1 availability over the dataset's channels of every fold case (all ones for a dataset
        without an availability table); refuses a dataset with missing series that this model uses
        unless it was built for them (``channel_availability``)."""
        table = read_series_availability(self.plans_manager.dataset_name, self.contract,
                                         self.dataset_json["channel_names"])
        ones = np.ones(len(self.channel_names), dtype=np.float32)
        if table is None:
            return {str(k): ones for k in keys}
        rows = lookup_rows(table, keys, "series availability table")
        out = {str(k): rows.loc[str(k)].to_numpy(np.float32) for k in keys}
        lacking = {k: [self.channel_names[c] for c in self.used_channels if a[c] == 0] for k, a in out.items()}
        lacking = {k: v for k, v in lacking.items() if v}
        if lacking and not self.channel_availability:
            first = sorted(lacking)[:5]
            raise MultitaskDatasetError(
                f"{type(self).__name__} uses series that {len(lacking)} case(s) of fold {self.fold} lack ("
                + "; ".join(f"{k}: {', '.join(lacking[k])}" for k in first)
                + "): this model would learn from the zero filler as if it were an image. Train "
                  "MultiRecTrainer_ModalityDropout (or a variant with channel_availability = True), or a model "
                  "that does not use those series (MultiRecTrainer_T2)")
        return out

    def _reference_tumour_quantities(self, tr_keys, val_keys) -> Dict[str, np.ndarray]:
        """Tumour quantities of every fold case measured on its reference mask (the same function
        the network applies to its own soft segmentation); also records each case's tumour voxel
        count for the whole-tumour supervision rule. Training-fold values standardise the heads'
        input; validation cases only get their voxel count."""
        net = self.mt_network()
        keys = list(tr_keys) + [k for k in val_keys if k not in set(tr_keys)]
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys,
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        out, cached = {}, 0
        for k in keys:
            data, seg, _, _ = dataset.load_case(k)
            mask = torch.from_numpy(np.asarray(seg[:])[0] > 0)
            self._case_tumour_voxels[k] = float(mask.sum())
            whole = torch.from_numpy(np.asarray(data[:], dtype=np.float32))
            image = net.select_channels(whole[None])
            if net.image_features == "tumour_roi":
                # measured as the heads will measure it: in the box, on the largest component (and margin)
                centre = largest_component_centre(mask.numpy())
                self._roi_centres[k] = centre
                start = roi_start(centre, mask.shape, net.roi_box)
                prob = tumour_probability(crop_box(mask[None].float(), start, net.roi_box), net.roi_encoder.spacing_mm)
                out[k] = tumour_quantities(prob, crop_box(image, start, net.roi_box), net.voxel_volume_mm3)[0].numpy()
                if cached + whole.numel() * 4 <= self.roi_cache_bytes:
                    self._roi_images[k] = whole
                    cached += whole.numel() * 4
            else:
                out[k] = tumour_quantities(mask[None].float(), image, net.voxel_volume_mm3)[0].numpy()
        return out

    def _roi_case_image(self, key: str) -> torch.Tensor:
        """The case's un-augmented preprocessed image ``[C_all, *sp]`` (cached or read again)."""
        image = self._roi_images.get(key)
        if image is None:
            if self._roi_dataset is None:
                self._roi_dataset = self.dataset_class(
                    self.preprocessed_dataset_folder, list(self._case_data),
                    folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
            image = torch.from_numpy(np.asarray(self._roi_dataset.load_case(key)[0][:], dtype=np.float32))
        return image

    def roi_batch(self, keys: Sequence[str], availability: torch.Tensor, augment: bool) -> tuple:
        """Tumour boxes ``[B, C_all, *box]`` of the cases (un-augmented images, centred on the reference
        mask; with ``augment`` shifted by up to ``CENTRE_JITTER_VOXELS`` per axis and mirrored along
        nnU-Net's mirroring axes) and the U-Net's tumour probability on them ``[B, *box]``, without
        gradient. A missing or dropped series (``availability`` 0) is zero, as the converter's filler."""
        net = self.mt_network()
        boxes = torch.stack([
            training_box(self._roi_case_image(str(k)), self._roi_centres[str(k)], net.roi_box,
                         CENTRE_JITTER_VOXELS if augment else 0) for k in keys]).to(self.device, non_blocking=True)
        boxes = boxes * availability.to(boxes.dtype)[(...,) + (None,) * len(net.roi_box)]
        if augment:
            boxes = random_flips(boxes, self.inference_allowed_mirroring_axes or ())
        return boxes, net.box_probability(boxes)

    def _initialise_output_biases(self, net: MultiTaskUNet, times, events):
        """Start the heads at the training fold's baseline: discrete-time output bias = the
        covariate-free hazard logits, classification bias = logit of the known-status event rate
        (``"ipcw"``: of the IPCW event rate, ``clinical.outcomes.ipcw_event_rate``)."""
        if net.survival_head == "discrete":
            logits = L.discrete_time_baseline_logits(times, events, net.time_bin_edges.cpu().numpy())
            net.survival_output.bias.copy_(torch.as_tensor(logits, dtype=net.survival_output.bias.dtype))
        labels = recurrence_label(times, events, self.horizon)
        known = labels[~np.isnan(labels)]
        if known.size:
            rate = known.mean() if self.classification_censoring != "ipcw" else ipcw_event_rate(
                times, events, self.horizon, min_censoring_survival=self.min_censoring_survival)
            rate = float(np.clip(rate, 1e-3, 1 - 1e-3))
            net.classification_head.bias.fill_(float(np.log(rate / (1 - rate))))

    def _fit_time_bins(self, times, events) -> torch.Tensor:
        """Discrete-time interval edges from the training fold: event-time quantiles (make_bin_edges);
        when the fold has too few distinct event times for ``n_time_bins`` intervals, equal-width
        intervals up to the longest follow-up instead, so the head's width stays fixed."""
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                edges = L.make_bin_edges(times, events, self.n_time_bins, dtype=torch.float64)
            except ValueError:  # no event in the training fold
                edges = torch.zeros(0)
        if edges.numel() != self.n_time_bins + 1:
            self.print_to_log_file(f"WARNING: too few distinct event times for {self.n_time_bins} quantile "
                                   f"intervals; using equal-width intervals up to {float(np.max(times)):.1f}")
            edges = torch.linspace(0, float(np.max(times)), self.n_time_bins + 1, dtype=torch.float64)
        return edges

    def batch_availability(self, keys, drop: bool) -> np.ndarray:
        """``[B, C]`` 0/1 availability of the batch's cases over the dataset's channels; with
        ``drop`` (training steps of a model with ``modality_dropout_rate``), each sample loses a
        random non-empty subset of its droppable series with probability ``modality_dropout_rate``
        (torch's generator, so ``MULTIREC_SEED`` repeats it)."""
        avail = np.stack([self._case_data[str(k)]["availability"] for k in keys]).astype(np.float32)
        n_drop = len(self.droppable_channels)
        if drop and self.modality_dropout_rate > 0 and n_drop:
            hit = torch.rand(len(keys)) < self.modality_dropout_rate
            # a non-empty subset, uniformly among the 2^n - 1: a random integer in [1, 2^n) as a bit mask
            masks = torch.randint(1, 2 ** n_drop, (len(keys),))
            for b in torch.nonzero(hit).flatten().tolist():
                for j, c in enumerate(self.droppable_channels):
                    if (int(masks[b]) >> j) & 1:
                        avail[b, c] = 0.0
        return avail

    def _batch_context(self, keys, availability: np.ndarray) -> dict:
        """The step's per-case table on the device; ``availability`` from :meth:`batch_availability`."""
        rows = [self._case_data[str(k)] for k in keys]
        n_ch = availability.shape[1]
        # one host-to-device copy per step (on a GPU, every small copy is a synchronisation)
        table = np.concatenate([np.stack([r["clinical"] for r in rows]).reshape(len(rows), -1),
                                np.array([[r["time"], r["event"], r["label"],
                                           self._case_tumour_voxels.get(str(k), 0.0), r.get("cls_weight", 1.0)]
                                          for r, k in zip(rows, keys)], dtype=np.float32),
                                availability], axis=1)
        table = torch.from_numpy(table).to(self.device, non_blocking=True)
        n = table.shape[1] - 5 - n_ch
        return {"clinical": table[:, :n], "time": table[:, n], "event": table[:, n + 1], "label": table[:, n + 2],
                "tumour_voxels": table[:, n + 3], "cls_weight": table[:, n + 4],
                "availability": table[:, n + 5:], "keys": [str(k) for k in keys],
                # integer identity of each case inside this fold, for the Cox memory's one entry per case
                "case_index": torch.tensor([self._case_index[str(k)] for k in keys], dtype=torch.long)}
