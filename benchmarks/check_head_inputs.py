"""What the heads learn from in training, patch pathway against box pathway (issue 19.3, before/after).

The ``"tumour_quantities"`` pathway supervises the heads on nnU-Net's augmented training patches that
hold at least ``min_tumour_fraction`` (90 %) of the case's *un-augmented* reference tumour voxels. This
samples real training batches from nnU-Net's own data loader (``MultiRecTrainer_MRI``, augmentation
on, fold 0) and reports, for that rule:

* the share of samples that supervise the heads, overall and per quartile of reference tumour volume
  (a zoomed-in tumour grows past the 90 % line, a zoomed-out one shrinks below it, a large one is cut
  by the patch edge);
* the mean reference log volume of the supervised samples against all samples (the bias the rule puts
  on what the heads learn volume from), and the heads' own input, the soft log volume of the
  augmented patch, against the un-augmented reference;
* the share of cases that never supervised in the sampled batches.

The ``"tumour_roi"`` pathway reads instead a box around every sampled case's tumour cut from the
un-augmented image (``MultiRecTrainer.roi_batch``): every sample supervises, and the box's tumour
voxels equal the reference (up to the patch size) whatever nnU-Net's augmentation did. Both numbers
are measured here on the same batches.

    python benchmarks/check_head_inputs.py --dataset 533 [--batches 100]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="a preprocessed dataset id (nnU-Net variables set)")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--trainer", default="MultiRecTrainer_MRI_ROI")
    p.add_argument("-o", default=None, help="result JSON (default bench_run/head_inputs.json)")
    a = p.parse_args(argv)
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_multitask.roi import crop_box, roi_start
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = get_trainer_from_args(a.dataset, "3d_fullres", 0, a.trainer, "nnUNetPlans", device=torch.device("cpu"))
    trainer.on_train_start()
    net = trainer.mt_network()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(trainer._case_data),
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    vox_mm3 = net.voxel_volume_mm3
    rows = []
    for _ in range(a.batches):
        batch = next(trainer.dataloader_train)
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        keys = [str(k) for k in batch["keys"]]
        patch_voxels = (target > 0).flatten(1).sum(1).float()
        ref = torch.tensor([trainer._case_tumour_voxels[k] for k in keys])
        supervised = trainer.head_supervision_weights(target, keys, ref) > 0
        box_voxels = []
        for k in keys:   # the reference mask cut by the box rule (centre without the training shift)
            seg = torch.from_numpy(np.asarray(dataset.load_case(k)[1][:], dtype=np.float32) > 0).float()
            box_voxels.append(float(crop_box(seg, roi_start(trainer._roi_centres[k], seg.shape[1:], net.roi_box),
                                             net.roi_box).sum()))
        for i, k in enumerate(keys):
            rows.append({"case": k, "ref_voxels": float(ref[i]), "patch_voxels": float(patch_voxels[i]),
                         "supervised": bool(supervised[i]), "box_voxels": box_voxels[i]})
    ref = np.array([r["ref_voxels"] for r in rows])
    sup = np.array([r["supervised"] for r in rows])
    patch = np.array([r["patch_voxels"] for r in rows])
    log_ref = np.log1p(ref * vox_mm3)
    log_patch = np.log1p(patch * vox_mm3)
    quart = np.quantile(log_ref, [0.25, 0.5, 0.75])
    q_idx = np.searchsorted(quart, log_ref)
    cases = sorted({r["case"] for r in rows})
    ever = {c: any(r["supervised"] for r in rows if r["case"] == c) for c in cases}
    result = {
        "trainer": a.trainer, "dataset": a.dataset, "samples": len(rows), "cases_sampled": len(cases),
        "patch_size": list(trainer.configuration_manager.patch_size), "roi_box": list(net.roi_box),
        "patch_rule": {
            "min_tumour_fraction": trainer.min_tumour_fraction,
            "supervised_share": float(sup.mean()),
            "supervised_share_by_volume_quartile": [float(sup[q_idx == q].mean()) for q in range(4)],
            "mean_log_volume_all": float(log_ref.mean()),
            "mean_log_volume_supervised": float(log_ref[sup].mean()) if sup.any() else None,
            "mean_patch_minus_reference_log_volume_supervised": float((log_patch - log_ref)[sup].mean())
            if sup.any() else None,
            "sd_patch_minus_reference_log_volume_supervised": float((log_patch - log_ref)[sup].std())
            if sup.any() else None,
            "cases_never_supervised": int(sum(not v for v in ever.values())),
        },
        "box_rule": {"supervised_share": 1.0, "note": "every sampled case reads its box (tumour_roi)",
                     "box_equals_reference_share": float(np.mean([r["box_voxels"] == r["ref_voxels"] for r in rows]))},
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result(a.o, result, 'head_inputs')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
