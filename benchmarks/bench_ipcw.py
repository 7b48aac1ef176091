"""Complete-case against IPCW for the classification head's 36-month risk (issue 21, item 3).

Head-level experiment on the synthetic cohort, where the truth is known. Each seed draws a cohort with
the generator's own outcome model (``dataset_conversion.synthetic_larc.simulate_patient`` with
``render=False``: the target tumour volume and ADC stand in for the measured ones; no image is
needed because only the heads are trained), with short follow-up so that censoring before the
horizon is common: study-end follow-up uniform in ``--follow-up`` months (the generator's
``--follow-up-months``; default here 12-60, the generator's own default is 36-84) plus its loss to
follow-up (4 %/year). The first ``--dev`` patients are the development set, the next ``--test``
the test set (a fresh draw of the same population, never used for a choice).

Features, as the trainer builds them: the clinical table (pretreatment + postoperative) through
``ClinicalPreprocessor`` fitted on the development set, and the two tumour quantities (log volume,
tumour ADC) standardised on it. The network's heads (``MultiTaskUNet.heads``, discrete-time survival
head, hidden 64, dropout 0.2) train as ``MultiRecTrainer`` trains them: AdamW (lr 2e-3, weight decay
1e-4), batch 2, 80 % of samples supervised at random (the whole-tumour rule), loss 0.5 x BCE + 0.5 x
discrete-time NLL, output biases started at the training baseline, a fixed ``--steps`` (no
selection). Arms differ only in the BCE (same initialisation, same batches):

* ``complete_case``: ``masked_bce_with_logits`` over the known labels (today's trainer);
* ``ipcw``: the same with ``censoring_weights = ipcw_weights`` (censoring Kaplan-Meier of the
  development set, G floored at 0.05), Horvitz-Thompson normalisation (the trainer's ``"ipcw"``);
* ``ipcw_ratio``: the IPCW weights folded into ``weights`` (normalised by the batch's sum of
  weights; shows why the trainer does not do that at batch size 2).

Scored on the test set at 36 months: calibration-in-the-large against the truth (mean predicted
probability - mean true probability ``1 - S(36 | lp)`` of the generator's Weibull model), the
calibration intercept and slope against the latent (uncensored) 36-month status, the cumulative /
dynamic AUC (IPCW, ``sksurv.metrics.cumulative_dynamic_auc``) and the Brier score at 36 months
(IPCW, ``sksurv.metrics.brier_score``) on the censored test data, and the AUC / Brier against the
latent status. ``abs_citl_truth`` = |calibration-in-the-large|: a negative ipcw - complete_case
difference means IPCW's mean prediction is closer to the truth. Per seed a paired bootstrap (1000
resamples of the test patients) of ipcw - complete_case; across seeds mean +- sd.

With ``--recalibration``, the ipcw arm is also cross-validated on the development set and the
recalibration of ``nnunet_multitask.recalibration`` fitted on its out-of-sample predictions and scored
on the test set (:func:`recalibration_check`).

    python benchmarks/bench_ipcw.py --seeds 0,1,2,3,4 -o bench_run/ipcw.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, write_result  # noqa: E402

HORIZON = 36.0
ARMS = ("complete_case", "ipcw", "ipcw_ratio")
METRICS = ("citl_truth", "abs_citl_truth", "cal_intercept_latent", "cal_slope_latent", "auc_cd", "brier_ipcw",
           "auc_latent", "brier_latent", "c_index_survival")
#: metrics with a paired bootstrap difference
PAIRED = ("citl_truth", "abs_citl_truth", "auc_cd", "brier_ipcw", "brier_latent")
N_BOOT = 1000


# ------------------------------------------------------------------------------------ cohort
def cohort(seed: int, n: int, follow_up: tuple) -> pd.DataFrame:
    """One row per patient: clinical values, outcome, latent event time, true 36-month probability."""
    from dataset_conversion import synthetic_larc as S
    rows = []
    for i in range(n):
        p = S.simulate_patient(seed, i, 3, (48, 48, 12), S.DEFAULT_LOSS_TO_FOLLOW_UP_RATE, follow_up, render=False)
        row = dict(p["clinical_row"])
        lp = p["ground_truth_row"]["linear_predictor"]
        row.update(case_id=row.pop("patient_id"), volume_ml=p["ground_truth_row"]["tumour_volume_ml"],
                   adc=p["ground_truth_row"]["tumour_mean_adc"], latent_time=p["outcome"]["event_time_months"],
                   true_p=1.0 - np.exp(-(HORIZON / S.WEIBULL_SCALE_MONTHS) ** S.WEIBULL_SHAPE
                                       * np.exp(lp - S.BASELINE_LP_OFFSET)))
        rows.append(row)
    return pd.DataFrame(rows)


def features(dev: pd.DataFrame, test: pd.DataFrame):
    """(image quantities, clinical vectors) of dev and test, transforms fitted on dev."""
    from clinical.preprocessing import ClinicalPreprocessor
    from clinical.schema import ClinicalSchema
    prep = ClinicalPreprocessor(ClinicalSchema.load(), ("pretreatment", "postoperative")).fit(dev)

    def quantities(df):
        return np.stack([np.log1p(df["volume_ml"].to_numpy() * 1000.0), df["adc"].to_numpy()], 1)
    q_dev = quantities(dev)
    mu, sd = q_dev.mean(0), q_dev.std(0)
    out = {}
    for name, df in (("dev", dev), ("test", test)):
        out[name] = (torch.as_tensor((quantities(df) - mu) / sd, dtype=torch.float32),
                     torch.as_tensor(prep.transform(df), dtype=torch.float32))
    return out


# ------------------------------------------------------------------------------------ heads
def _net(n_clin: int):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_multitask.network import MultiTaskUNet
    base = PlainConvUNet(1, 2, (4, 8), torch.nn.Conv3d, 3, (1, 2), (1, 1), 2, (1,), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)  # unused: heads only
    return MultiTaskUNet(base, None, n_clin, 1, survival_head="discrete", n_time_bins=10, hidden=64)


def train(arm: str, x, t, e, seed: int, steps: int, batch: int = 2, keep: float = 0.8, lr: float = 2e-3):
    """Heads trained as the trainer trains them (module docstring); returns (network, bin edges)."""
    from clinical.outcomes import MIN_CENSORING_SURVIVAL, ipcw_event_rate, ipcw_weights, recurrence_label
    from nnunet_multitask import losses as L
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    q, clin = x
    net = _net(clin.shape[1])
    lab = recurrence_label(t, e, HORIZON)
    v = ipcw_weights(t, e, HORIZON, min_censoring_survival=MIN_CENSORING_SURVIVAL)
    edges = L.make_bin_edges(t, e.astype(bool), 10, dtype=torch.float64)
    rate = np.nanmean(lab) if arm == "complete_case" else ipcw_event_rate(t, e, HORIZON)
    with torch.no_grad():
        net.time_bin_edges.copy_(edges)
        net.survival_output.bias.copy_(torch.as_tensor(L.discrete_time_baseline_logits(t, e, edges.numpy()),
                                                       dtype=torch.float32))
        net.classification_head.bias.fill_(float(np.log(rate / (1 - rate))))
    opt = torch.optim.AdamW(net.head_parameters(), lr=lr, weight_decay=1e-4)
    lab_t, v_t = torch.as_tensor(lab, dtype=torch.float32), torch.as_tensor(v, dtype=torch.float32)
    t_t, e_t = torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(e, dtype=torch.float32)
    net.train()
    for _ in range(steps):
        b = torch.as_tensor(rng.choice(len(t), batch))
        w = torch.as_tensor((rng.random(batch) < keep).astype(np.float32))
        h = net.heads(q[b], clin[b])
        if arm == "complete_case":
            cls = L.masked_bce_with_logits(h["cls_logit"], lab_t[b], weights=w)
        elif arm == "ipcw":
            cls = L.masked_bce_with_logits(h["cls_logit"], lab_t[b], weights=w, censoring_weights=v_t[b])
        else:
            cls = L.masked_bce_with_logits(h["cls_logit"], lab_t[b], weights=w * v_t[b])
        loss = 0.5 * cls + 0.5 * L.discrete_time_nll(h["hazard_logits"], t_t[b], e_t[b], edges.float(), weights=w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net, edges.numpy()


def predict(net, x, edges) -> tuple:
    """(p_recurrence at 36 months, survival-head risk -log S(36))."""
    from nnunet_multitask.aggregation import survival_at_times
    with torch.no_grad():
        h = net.heads(*x)
    p = torch.sigmoid(h["cls_logit"]).double().numpy()
    hl = h["hazard_logits"].double().numpy()
    risk = np.array([-np.log(max(survival_at_times(r, edges, [HORIZON])[0], 1e-12)) for r in hl])
    return p, risk


# ------------------------------------------------------------------------------------ scoring
def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calibration_latent(p, y) -> tuple:
    """(intercept, slope) of the logistic calibration model y ~ a + b logit(p), by statsmodels."""
    import statsmodels.api as sm
    fit = sm.GLM(y, sm.add_constant(_logit(p)), family=sm.families.Binomial()).fit()
    return float(fit.params[0]), float(fit.params[1])


def metrics(p, risk, test: pd.DataFrame, y_dev, idx=None, slope: bool = True) -> dict:
    """The scores of module docstring on the test patients ``idx`` (default all)."""
    from sksurv.metrics import brier_score, concordance_index_censored, cumulative_dynamic_auc
    from sklearn.metrics import roc_auc_score
    from clinical.outcomes import survival_array
    idx = np.arange(len(test)) if idx is None else idx
    p, risk, df = p[idx], risk[idx], test.iloc[idx]
    y = survival_array(df["dfs_months"].to_numpy(), df["dfs_event"].to_numpy())
    latent = (df["latent_time"].to_numpy() <= HORIZON).astype(float)
    out = {"citl_truth": float(p.mean() - df["true_p"].mean()),
           "abs_citl_truth": float(abs(p.mean() - df["true_p"].mean())),
           "auc_cd": float(cumulative_dynamic_auc(y_dev, y, p, [HORIZON])[0][0]),
           "brier_ipcw": float(brier_score(y_dev, y, 1 - p[:, None], [HORIZON])[1][0]),
           "brier_latent": float(np.mean((p - latent) ** 2))}
    if slope:
        out["cal_intercept_latent"], out["cal_slope_latent"] = calibration_latent(p, latent)
        out["auc_latent"] = float(roc_auc_score(latent, p))
        out["c_index_survival"] = float(concordance_index_censored(y["event"], y["time"], risk)[0])
    return out


def run_seed(seed: int, args) -> dict:
    from clinical.outcomes import survival_array
    from evaluation.metrics import km_survival_at, percentile_ci
    df = cohort(seed, args.dev + args.test, tuple(args.follow_up))
    dev, test = df.iloc[:args.dev].reset_index(drop=True), df.iloc[args.dev:].reset_index(drop=True)
    x = features(dev, test)
    t, e = dev["dfs_months"].to_numpy(float), dev["dfs_event"].to_numpy(float)
    y_dev = survival_array(t, e)
    known = ~((e == 0) & (t < HORIZON))
    res = {"n_dev": len(dev), "dev_events": int(e.sum()), "dev_censored_before_horizon": int((~known).sum()),
           "dev_known_status": int(known.sum()), "n_test": len(test),
           "test_censored_before_horizon": int(((test["dfs_event"] == 0) & (test["dfs_months"] < HORIZON)).sum()),
           "test_true_p_mean": float(test["true_p"].mean()),
           "test_latent_rate": float((test["latent_time"] <= HORIZON).mean()),
           "test_km_risk": float(1 - km_survival_at(test["dfs_months"], test["dfs_event"], HORIZON)),
           "dev_known_status_rate": float(np.mean(e[known] * (t[known] <= HORIZON))), "arms": {}}
    preds = {}
    for arm in ARMS:
        t0 = time.time()
        net, edges = train(arm, x["dev"], t, e, seed, args.steps)
        preds[arm] = predict(net, x["test"], edges)
        res["arms"][arm] = {**metrics(*preds[arm], test, y_dev), "mean_p": float(preds[arm][0].mean()),
                            "seconds": round(time.time() - t0, 1)}
        print(f"seed {seed} {arm}: " + ", ".join(f"{k} {v:.4f}" for k, v in res["arms"][arm].items()), flush=True)
    rng = np.random.default_rng(seed)
    boot = {m: [] for m in PAIRED}
    for _ in range(args.boot):
        idx = rng.integers(0, len(test), len(test))
        a = metrics(*preds["ipcw"], test, y_dev, idx, slope=False)
        b = metrics(*preds["complete_case"], test, y_dev, idx, slope=False)
        for m in PAIRED:
            boot[m].append(a[m] - b[m])
    res["paired_ipcw_minus_complete_case"] = {
        m: {"delta": res["arms"]["ipcw"][m] - res["arms"]["complete_case"][m], "ci": list(percentile_ci(boot[m]))}
        for m in PAIRED}
    if args.recalibration:
        res["recalibration"] = recalibration_check(seed, dev, test, x, t, e, args)
        print(f"seed {seed} recalibration: {res['recalibration']}", flush=True)
    return res


def _subset(x, idx):
    return tuple(v[torch.as_tensor(idx)] for v in x)


def recalibration_check(seed: int, dev: pd.DataFrame, test: pd.DataFrame, x: dict, t, e, args) -> dict:
    """Item 6 on the synthetic cohort: 5-fold cross-validation of the ``ipcw`` arm on the development set
    gives out-of-sample predictions (as ``fold_<f>/validation/head_predictions.csv``); the recalibration
    (``nnunet_multitask.recalibration``: IPCW logistic + Cox slope and Breslow baseline of log(risk)) is
    fitted on them and applied to the test predictions of the fold ensemble (mean of the folds'
    probabilities and risk scores, as the predictor averages them), and to each fold's own test predictions
    (``*_one_fold``: a single-fold prediction, scores averaged over the folds). Test scores, raw and
    recalibrated, of the classification head and of the survival head's 1 - S(36)."""
    from sklearn.model_selection import StratifiedKFold
    from clinical.outcomes import ipcw_weights, recurrence_label
    from nnunet_multitask import recalibration as R
    oof_p, oof_r = np.zeros(len(t)), np.zeros(len(t))
    test_p, test_r, test_s = [], [], []
    for f, (tr, va) in enumerate(StratifiedKFold(5, shuffle=True, random_state=seed).split(t, e)):
        net, edges = train("ipcw", _subset(x["dev"], tr), t[tr], e[tr], seed + 100 * f, args.steps)
        oof_p[va], oof_r[va] = predict(net, _subset(x["dev"], va), edges)
        p, r = predict(net, x["test"], edges)
        test_p.append(p), test_r.append(r), test_s.append(np.exp(-r))
    label = recurrence_label(t, e, HORIZON)
    known = ~np.isnan(label)
    cls = R.fit_logistic_recalibration(oof_p[known], label[known], ipcw_weights(t, e, HORIZON)[known])
    surv = R.fit_cox_recalibration(R.survival_linear_predictor(oof_r, "discrete"), t, e)
    recal = {"classification": {"column": "p_recurrence_36m", "weighting": "ipcw", **cls},
             "survival": {"linear_predictor": "log(risk_score)", **surv}, "horizon_months": HORIZON,
             "survival_head": "discrete", "folds": [str(f) for f in range(5)]}
    table = pd.DataFrame({"risk_score": np.mean(test_r, 0), "p_recurrence_36m": np.mean(test_p, 0),
                          "surv_prob_36m": np.mean(test_s, 0)})
    out = R.apply_recalibration(table, recal)
    latent = (test["latent_time"].to_numpy() <= HORIZON).astype(float)

    def scores(p):
        a, b = calibration_latent(p, latent)
        return {"citl_truth": float(p.mean() - test["true_p"].mean()), "cal_intercept_latent": a,
                "cal_slope_latent": b, "brier_latent": float(np.mean((p - latent) ** 2))}
    # each fold's own test predictions, recalibrated alone (a single-fold prediction), scores averaged
    single = {k: [] for k in ("classification_raw_one_fold", "classification_recalibrated_one_fold",
                              "survival_raw_one_fold", "survival_recalibrated_one_fold")}
    for p, r in zip(test_p, test_r):
        one = R.apply_recalibration(pd.DataFrame({"risk_score": r, "p_recurrence_36m": p}), recal)
        single["classification_raw_one_fold"].append(scores(p))
        single["classification_recalibrated_one_fold"].append(scores(one["p_recurrence_36m"].to_numpy()))
        single["survival_raw_one_fold"].append(scores(1 - np.exp(-r)))
        single["survival_recalibrated_one_fold"].append(scores(1 - one["surv_prob_36m"].to_numpy()))
    return {"fit": {"cls_intercept": cls["intercept"], "cls_slope": cls["slope"], "surv_slope": surv["slope"]},
            "classification_raw": scores(table["p_recurrence_36m"].to_numpy()),
            "classification_recalibrated": scores(out["p_recurrence_36m"].to_numpy()),
            "survival_raw": scores(1 - table["surv_prob_36m"].to_numpy()),
            "survival_recalibrated": scores(1 - out["surv_prob_36m"].to_numpy()),
            **{k: {m: float(np.mean([d[m] for d in v])) for m in v[0]} for k, v in single.items()}}


def summarise(results: dict) -> dict:
    seeds = results["seeds"]
    out = {}
    for arm in ARMS:
        out[arm] = {m: [float(np.mean([s["arms"][arm][m] for s in seeds.values()])),
                        float(np.std([s["arms"][arm][m] for s in seeds.values()], ddof=1))] for m in METRICS}
    if all("recalibration" in s for s in seeds.values()):
        out["recalibration"] = {
            part: {m: [float(np.mean(v)), float(np.std(v, ddof=1))]
                   for m in seeds[next(iter(seeds))]["recalibration"][part]
                   for v in [[s["recalibration"][part][m] for s in seeds.values()]]}
            for part in seeds[next(iter(seeds))]["recalibration"] if part != "fit"}
    out["ipcw_minus_complete_case"] = {
        m: [float(np.mean(d)), float(np.std(d, ddof=1))]
        for m in PAIRED for d in [[s["paired_ipcw_minus_complete_case"][m]["delta"] for s in seeds.values()]]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="cohort and training seeds (one cohort per seed)")
    p.add_argument("--dev", type=int, default=400, help="development patients per seed")
    p.add_argument("--test", type=int, default=2000, help="test patients per seed")
    p.add_argument("--follow-up", type=float, nargs=2, default=(12.0, 60.0), metavar=("MIN", "MAX"),
                   help="study-end follow-up, uniform (months); the generator's --follow-up-months")
    p.add_argument("--steps", type=int, default=4000, help="head training steps at batch 2")
    p.add_argument("--boot", type=int, default=N_BOOT)
    p.add_argument("--recalibration", action="store_true",
                   help="also check the recalibration (issue 21 item 6) on the ipcw arm: 5-fold out-of-sample fit "
                        "on the development set, scored on the test set raw and recalibrated")
    p.add_argument("-o", default=None, help="result JSON (default bench_run/ipcw.json)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    results = {"machine": machine_info(), "command": " ".join(["python"] + sys.argv), "follow_up": a.follow_up,
               "dev": a.dev, "test": a.test, "steps": a.steps, "seeds": {}}
    for s in [int(v) for v in a.seeds.split(",")]:
        results["seeds"][str(s)] = run_seed(s, a)
        results["summary"] = summarise(results) if len(results["seeds"]) > 1 else None
        write_result(a.o, results, "ipcw")
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
