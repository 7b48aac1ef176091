"""The heads alone, trained as the trainer trains them, on reference tumour quantities.

Isolates the head optimisation from the U-Net: the tumour quantities of the quality dataset's
development cases (Dataset503, reference masks, the network's own ``tumour_quantities`` on the
preprocessed images), standardised on each training split, feed ``MultiTaskUNet.heads`` (image-only,
discrete-time head with the baseline-hazard bias start), trained with AdamW at batch 2 with the
discrete-time NLL + masked BCE (0.5 each), about 80 % of samples supervised (the whole-tumour rule),
for the quality budget's 400 steps. Scored by Harrell's C of the 36-month cumulative hazard over
repeated 5-fold cross-validation; beside it, scikit-survival's CoxPH (ridge 0.1) on the same
features: what a full-batch fit of the same inputs reaches. Seconds per configuration, so the
heads' learning rate, schedule, averaging and width can be chosen without training U-Nets.

    python benchmarks/sim_head_training.py [--reps 3]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_RUN  # noqa: E402

CONFIGS = [dict(lr=2e-3), dict(lr=5e-3), dict(lr=1e-2), dict(lr=2e-3, dropout=0.0), dict(lr=2e-3, steps=2000),
           dict(lr=2e-3, decay=True), dict(lr=5e-3, decay=True), dict(lr=2e-3, ema=0.98),
           dict(lr=5e-3, decay=True, ema=0.98), dict(lr=2e-3, hidden=16)]


def load(root: Path):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunet_multitask.network import tumour_quantities
    pre = root / "nnUNet_preprocessed" / "Dataset503_LARCQUALITY"
    folder = pre / "nnUNetPlans_3d_fullres"
    ids = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
    ds = infer_dataset_class(str(folder))(str(folder), ids)
    out = pd.read_csv(root / "nnUNet_raw" / "Dataset503_LARCQUALITY" / "outcomes.csv").set_index("case_id")
    x = []
    for k in ids:
        d, s, _, _ = ds.load_case(k)
        m = torch.from_numpy(np.asarray(s[:])[0] > 0).float()
        adc = torch.from_numpy(np.asarray(d[:], dtype=np.float32))
        x.append(tumour_quantities(m[None], adc[None], 1.47)[0].numpy())
    return np.array(x), out.loc[ids, "dfs_months"].to_numpy(float), out.loc[ids, "dfs_event"].to_numpy(float)


def _heads_net(hidden, dropout):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_multitask.network import MultiTaskUNet
    base = PlainConvUNet(4, 2, (4, 8), torch.nn.Conv3d, 3, (1, 2), (1, 1), 2, (1,), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    return MultiTaskUNet(base, None, 0, 1, survival_head="discrete", n_time_bins=10, hidden=hidden, dropout=dropout)


def cv_c(x, t, e, lr=2e-3, dropout=0.2, steps=400, decay=False, ema=None, hidden=64, reps=3, keep=0.8) -> float:
    from sklearn.model_selection import StratifiedKFold
    from sksurv.metrics import concordance_index_censored
    from clinical.outcomes import recurrence_label
    from nnunet_multitask import losses as L
    from nnunet_multitask.aggregation import survival_at_times
    lab = recurrence_label(t, e, 36.0)
    cs = []
    for r in range(reps):
        risk = np.zeros(len(x))
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=r).split(x, e):
            torch.manual_seed(r)
            rng = np.random.default_rng(r)
            net = _heads_net(hidden, dropout)
            edges = L.make_bin_edges(t[tr], e[tr].astype(bool), 10, dtype=torch.float64)
            with torch.no_grad():
                net.survival_output.bias.copy_(torch.as_tensor(
                    L.discrete_time_baseline_logits(t[tr], e[tr], edges.numpy()), dtype=torch.float32))
            params = net.head_parameters()
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
            avg = [p.detach().clone() for p in params]
            xs = torch.as_tensor((x - x[tr].mean(0)) / x[tr].std(0), dtype=torch.float32)
            net.train()
            for it in range(steps):
                if decay:
                    for g in opt.param_groups:
                        g["lr"] = lr * (1 - it / steps) ** 0.9
                b = rng.choice(tr, 2)
                w = torch.as_tensor((rng.random(2) < keep).astype(np.float32))
                h = net.heads(xs[b], None)
                loss = 0.5 * L.masked_bce_with_logits(h["cls_logit"], torch.as_tensor(lab[b], dtype=torch.float32),
                                                      weights=w) \
                    + 0.5 * L.discrete_time_nll(h["hazard_logits"], torch.as_tensor(t[b], dtype=torch.float32),
                                                torch.as_tensor(e[b]), edges.float(), weights=w)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if ema:
                    with torch.no_grad():
                        for a, p in zip(avg, params):
                            a.mul_(ema).add_(p.detach(), alpha=1 - ema)
            if ema:
                with torch.no_grad():
                    for a, p in zip(avg, params):
                        p.copy_(a)
            net.eval()
            with torch.no_grad():
                hl = net.heads(xs[te], None)["hazard_logits"].double().numpy()
            risk[te] = [-np.log(max(survival_at_times(h, edges.numpy(), [36.0])[0], 1e-12)) for h in hl]
        cs.append(concordance_index_censored(e.astype(bool), t, risk)[0])
    return float(np.mean(cs))


def cv_coxph(x, t, e, reps=3) -> float:
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from clinical.outcomes import survival_array
    y = survival_array(t, e)
    cs = []
    for r in range(reps):
        risk = np.zeros(len(x))
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=r).split(x, e):
            mu, sd = x[tr].mean(0), x[tr].std(0)
            risk[te] = CoxPHSurvivalAnalysis(alpha=0.1).fit((x[tr] - mu) / sd, y[tr]).predict((x[te] - mu) / sd)
        cs.append(concordance_index_censored(e.astype(bool), t, risk)[0])
    return float(np.mean(cs))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset-root", default=str(BENCH_RUN / "quality" / "dataset"))
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    x, t, e = load(Path(a.dataset_root))
    print(f"CoxPH (ridge 0.1) on the same quantities: CV C {cv_coxph(x, t, e, a.reps):.3f}", flush=True)
    for cfg in CONFIGS:
        print(f"heads {cfg}: CV C {cv_c(x, t, e, reps=a.reps, **cfg):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
