"""Does nnU-Net's per-case z-score cost the tumour's absolute ADC its prognostic value?

On the quality dataset's development cases (Dataset503, preprocessed by nnU-Net with its default
per-case z-score on every channel): Spearman of the tumour mean of each z-scored channel and of the
raw ADC (reference masks) with the true tumour ADC (``ground_truth.csv``, read here only), and the
cross-validated C-index (5 folds x 20 repeats, scikit-survival CoxPH, ridge 0.1) of the true image
terms, of log volume + z-scored tumour means, and of log volume + raw tumour ADC.

    python benchmarks/check_diffusion_normalisation.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_RUN  # noqa: E402

DATASET = "Dataset503_LARCQUALITY"


def main() -> int:
    import SimpleITK as sitk
    from scipy.stats import spearmanr
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from clinical.outcomes import survival_array
    root = BENCH_RUN / "quality" / "dataset"
    folder = root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    raw = root / "nnUNet_raw" / DATASET
    ids = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
    ds = infer_dataset_class(str(folder))(str(folder), ids)
    mapping = pd.read_csv(raw / "patient_mapping.csv", dtype=str).set_index("case_id")
    truth = pd.read_csv(root / "cohort" / "ground_truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    outcomes = pd.read_csv(raw / "outcomes.csv").set_index("case_id")
    feats, true = [], []
    for k in ids:
        d, s, _, _ = ds.load_case(k)
        d, m = np.asarray(d[:]), np.asarray(s[:])[0] > 0
        adc_raw = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{k}_0001.nii.gz")))
        g = truth.loc[mapping.loc[k, "patient_id"]]
        feats.append([np.log1p(m.sum())] + [d[c][m].mean() for c in range(d.shape[0])] + [adc_raw[m].mean()])
        true.append([np.log(g.tumour_volume_ml), g.tumour_mean_adc])
    x, true = np.array(feats), np.array(true)
    y = survival_array(outcomes.loc[ids, "dfs_months"], outcomes.loc[ids, "dfs_event"])
    names = ["T2", "ADC", "Dapp", "Kapp"]
    for c, n in enumerate(names):
        print(f"Spearman(tumour mean of z-scored {n}, true ADC): {spearmanr(x[:, 1 + c], true[:, 1])[0]:.3f}")
    print(f"Spearman(tumour mean of raw ADC, true ADC): {spearmanr(x[:, 5], true[:, 1])[0]:.3f}")

    def cv(f, reps=20):
        cs = []
        for r in range(reps):
            risk = np.zeros(len(f))
            for tr, te in StratifiedKFold(5, shuffle=True, random_state=r).split(f, y["event"]):
                mu, sd = f[tr].mean(0), f[tr].std(0) + 1e-9
                risk[te] = CoxPHSurvivalAnalysis(alpha=0.1).fit((f[tr] - mu) / sd, y[tr]).predict((f[te] - mu) / sd)
            cs.append(concordance_index_censored(y["event"], y["time"], risk)[0])
        return np.mean(cs)
    print(f"CV C, CoxPH on true log volume + true ADC: {cv(true):.3f}")
    print(f"CV C, CoxPH on log volume + z-scored tumour means of the 4 channels: {cv(x[:, :5]):.3f}")
    print(f"CV C, CoxPH on log volume + z-scored tumour ADC: {cv(x[:, [0, 2]]):.3f}")
    print(f"CV C, CoxPH on log volume + raw tumour ADC: {cv(x[:, [0, 5]]):.3f}")
    print(f"CV C, CoxPH on log volume alone: {cv(x[:, [0]]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
