"""Diagnosis of the image pathway (issue: the image-only models ranked patients at chance).

For a trained MultiRec model (fold 0 of the quality benchmark's dataset) and the cases of its fold:

* Spearman correlation of the model's patient-level risk with the true log tumour volume and the
  true tumour mean ADC (``ground_truth.csv``: read here, by the benchmark, never by training);
* linear probes (scikit-learn ``RidgeCV``, fitted on the training cases, scored on the validation
  cases) of the true log volume and ADC from (a) the bottleneck's last convolution output, globally
  average- and max-pooled, *before* its InstanceNorm; (b) the same after the norm and nonlinearity
  (what the first design's heads read); (c) the tumour quantities the new heads read (soft volume
  and tumour means of each channel from the model's own segmentation);
* the head-loss curves of the training log (per epoch).

    python benchmarks/diagnose_image_pathway.py --model-folder DIR [--out FILE]

DIR is ``<nnUNet_results>/Dataset503_LARCQUALITY/<trainer>__nnUNetPlans__3d_fullres``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_RUN, write_result  # noqa: E402

DATASET = "Dataset503_LARCQUALITY"


def _last_conv_block(encoder):
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
    blocks = [m for m in encoder.stages[-1].modules() if isinstance(m, ConvDropoutNormReLU)]
    if not blocks:
        raise RuntimeError("no ConvDropoutNormReLU in the last encoder stage")
    return blocks[-1]


def _pool(t: torch.Tensor) -> np.ndarray:
    dims = tuple(range(2, t.ndim))
    return torch.cat([t.mean(dim=dims), t.amax(dim=dims)], 1)[0].double().numpy()


def collect(model_folder: Path, dataset_root: Path) -> tuple:
    import os
    repo = Path(__file__).resolve().parents[1]
    os.environ.setdefault("nnUNet_extTrainer", os.pathsep.join([str(repo / "trainers"),
                                                                str(repo / "benchmarks" / "trainers")]))
    from nnunet_multitask.predictor import MultiTaskPredictor
    from nnunet_multitask.network import foreground_probability, tumour_quantities
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    predictor = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                   perform_everything_on_device=False, device=torch.device("cpu"),
                                   verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), [0], "checkpoint_final.pth")
    net = predictor.network
    net.eval()
    splits = json.loads((dataset_root / "nnUNet_preprocessed" / DATASET / "splits_final.json").read_text())[0]
    folder = dataset_root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    keys = list(splits["train"]) + list(splits["val"])
    ds = infer_dataset_class(str(folder))(str(folder), keys)
    block = _last_conv_block(net.encoder)
    grabbed = {}
    h1 = block.conv.register_forward_hook(lambda m, i, o: grabbed.__setitem__("pre", o.detach()))
    h2 = block.register_forward_hook(lambda m, i, o: grabbed.__setitem__("post", o.detach()))
    rows, pre, post, quant = [], [], [], []
    try:
        for k in keys:
            data, seg, _, _ = ds.load_case(k)
            x = torch.from_numpy(np.asarray(data[:], dtype=np.float32))
            logits, pred = predictor.predict_case_with_current_weights(x, np.zeros(0, dtype=np.float32))
            # the sliding window ran the last tile last; with a whole-image patch there is one tile
            pre.append(_pool(grabbed["pre"]))
            post.append(_pool(grabbed["post"]))
            prob = foreground_probability(logits[None].float())
            quant.append(tumour_quantities(prob, net.select_channels(x[None]),
                                           net.voxel_volume_mm3)[0].double().numpy())
            rows.append({"case_id": k, "split": "train" if k in splits["train"] else "val",
                         "risk_score": pred["risk_score"]})
    finally:
        h1.remove(), h2.remove()
    return pd.DataFrame(rows), np.array(pre), np.array(post), np.array(quant)


def truth_of(dataset_root: Path, case_ids) -> pd.DataFrame:
    mapping = pd.read_csv(dataset_root / "nnUNet_raw" / DATASET / "patient_mapping.csv", dtype=str).set_index("case_id")
    gt = pd.read_csv(dataset_root / "cohort" / "ground_truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    t = gt.loc[mapping.loc[list(case_ids), "patient_id"]]
    return pd.DataFrame({"log_volume": np.log(t.tumour_volume_ml.to_numpy()), "adc": t.tumour_mean_adc.to_numpy()},
                        index=list(case_ids))


def probe(features: np.ndarray, target: np.ndarray, train: np.ndarray) -> dict:
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    model.fit(features[train], target[train])
    pred = model.predict(features[~train])
    resid = target[~train] - pred
    r2 = 1 - float((resid ** 2).sum() / ((target[~train] - target[~train].mean()) ** 2).sum())
    return {"val_r2": round(r2, 3), "val_spearman": round(float(spearmanr(pred, target[~train])[0]), 3)}


def main(argv=None) -> int:
    from scipy.stats import spearmanr
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-folder", required=True)
    p.add_argument("--dataset-root", default=str(BENCH_RUN / "quality" / "dataset"))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    model_folder, root = Path(a.model_folder), Path(a.dataset_root)
    table, pre, post, quant = collect(model_folder, root)
    truth = truth_of(root, table.case_id)
    train = (table.split == "train").to_numpy()
    result = {"benchmark": "diagnose_image_pathway", "model_folder": str(model_folder),
              "n_train": int(train.sum()), "n_val": int((~train).sum()), "risk_spearman": {}, "probes": {}}
    for split, m in (("train", train), ("val", ~train)):
        result["risk_spearman"][split] = {
            q: round(float(spearmanr(table.risk_score.to_numpy()[m], truth[q].to_numpy()[m])[0]), 3)
            for q in ("log_volume", "adc")}
    for name, feats in (("bottleneck_pooled_before_norm", pre), ("bottleneck_pooled_after_norm", post),
                        ("tumour_quantities", quant)):
        result["probes"][name] = {q: probe(feats, truth[q].to_numpy(), train) for q in ("log_volume", "adc")}
    # what the InstanceNorm leaves of the channel means: their spread across patients
    half = post.shape[1] // 2
    result["bottleneck_channel_mean_sd_across_patients"] = {
        "before_norm": round(float(pre[:, :half].std(0).mean()), 4),
        "after_norm": round(float(post[:, :half].std(0).mean()), 4)}
    ckpt = torch.load(model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logs = ckpt["logging"]
    result["head_loss_curves"] = {k: [round(float(v), 4) for v in logs[k]]
                                  for k in ("train_cls_losses", "train_surv_losses", "train_seg_losses", "val_c_index")
                                  if k in logs}
    out = write_result(a.out, result, f"diagnose_{model_folder.name.split('__')[0]}")
    print(json.dumps({k: result[k] for k in ("risk_spearman", "probes", "bottleneck_channel_mean_sd_across_patients")},
                     indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
