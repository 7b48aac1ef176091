"""The image pathway against the hand-made tumour quantities on cohorts where the image risk lies
where those quantities cannot see it (issue 19). Head-level experiment at equal budget.

Each cohort is drawn by the synthetic generator, converted by ``convert_larc`` and preprocessed by
the real ``nnUNetv2_plan_and_preprocess`` (the test cases by nnU-Net's own preprocessor), so the
arrays are exactly what the network reads. Every arm reads the *reference* mask, standing in for a
converged segmentation: this isolates what each head input can learn from the U-Net's training,
which a 2-core CPU cannot run 3 seeds x several arms x several 400-patient cohorts of (a full
quality run costs about 50 min). The image-only arms (no clinical data):

* ``heads_quantities``: the network's heads (``MultiTaskUNet.heads``, ``"tumour_quantities"``) on
  the standardised tumour quantities (log volume, mean of each channel in the tumour);
* ``heads_roi``: the learned pathway (``"tumour_roi"``: the same quantities plus the ROI encoder on
  the tumour box, with the trainer's centre shift and mirroring) — ``MultiTaskUNet.roi_heads``;
* ``coxph_quantities``: scikit-survival's CoxPH (ridge 0.1) on the same quantities (a full-batch
  fit of the heads' input);
* ``coxph_texture``: elastic-net Cox on the texture-aware radiomics (``evaluation.radiomics``: first
  order, GLCM, shape, peritumoural ring), penalty by internal CV on the development cases;
* ``oracle_*``: the generator's image terms (what the inputs can reach).

The heads train with the trainer's losses (discrete-time NLL + masked BCE at 0.5 each; time bins
and output biases from the training cases), AdamW at the trainer's ``head_lr``, batch 8, for
``--epochs`` epochs. Selection: 20 % of the development cases (stratified by event) are held out as
validation; the epoch with the best validation C-index is kept (the checkpoint rule); the test sets
are scored once, afterwards. Harrell's C with a 95 % bootstrap CI, and per seed the paired
bootstrap difference roi - quantities (``evaluation.metrics.bootstrap_harrell_c``).

    python benchmarks/bench_image_pathway.py --cohorts findings,permuted,today --patients 600 --seeds 0,1,2
    python benchmarks/bench_image_pathway.py --cohorts mixed --clinical -o bench_run/image_pathway_mixed.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH_RUN, bin_of, machine_info, nnunet_env, run_command, write_result  # noqa: E402

BEYOND = ("heterogeneity", "margin", "extension", "emvi", "nodes")
#: follow-up at study end of the benchmark cohorts: longer than the generator's default (36-84 months),
#: so a 600-patient cohort has about 40 events per test set (the default gives about 15)
FOLLOW_UP_MONTHS = (84.0, 120.0)
#: cohort name -> (dataset id, generator options)
COHORTS = {
    "findings": (531, dict(findings=BEYOND, image_risk=BEYOND, radiologist_columns=False)),
    "permuted": (532, dict(findings=BEYOND, image_risk=BEYOND, radiologist_columns=False, permute_findings=True)),
    "today": (533, {}),
    "mixed": (534, dict(findings=BEYOND, image_risk=("volume", "adc") + BEYOND, radiologist_columns=False)),
}
SHAPE = (48, 48, 12)   # the demo's field of view: a CPU can afford it
N_BOOT = 1000


# ------------------------------------------------------------------------------------ data
def prepare(name: str, patients: int, seed: int, root: Path) -> Path:
    """Cohort -> converted dataset -> preprocessed, under ``root/<name>_seed<seed>`` (once: a record of
    what was prepared is kept and compared)."""
    import shutil
    from dataset_conversion.synthetic_larc import generate_cohort
    dataset_id, options = COHORTS[name]
    home = root / f"{name}_seed{seed}"
    key = {"patients": patients, "seed": seed, "follow_up_months": list(FOLLOW_UP_MONTHS), "shape": list(SHAPE),
           "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    stamp = home / "prepared.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return home
    shutil.rmtree(home, ignore_errors=True)
    env = nnunet_env(home)
    cohort = home / "cohort"
    generate_cohort(cohort, patients, seed=seed, shape=SHAPE, admin_censoring_months=FOLLOW_UP_MONTHS, **options)
    schema = ["--schema", str(cohort / "schema.json")] if (cohort / "schema.json").is_file() else []
    run_command([sys.executable, "-m", "dataset_conversion.convert_larc", "--cohort", str(cohort), "--dataset-id",
                 str(dataset_id), "--name", f"PATHWAY{name.upper()}", *schema], env)
    run_command([bin_of("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2",
                 "-npfp", "2"], env, timeout=3600)
    stamp.write_text(json.dumps(key))
    return home


def load(home: Path, test_sets: bool = True) -> dict:
    """Preprocessed arrays, masks, outcomes and set membership of every case (``test_sets=False``: the
    development cases only; the test outcomes are then not read)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_multitask.contract import DatasetContract
    raw = next((home / "nnUNet_raw").iterdir())
    pre = home / "nnUNet_preprocessed" / raw.name
    dj = json.loads((raw / "dataset.json").read_text())
    contract = DatasetContract.from_dataset_json(dj)
    plans = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    cm = plans.get_configuration("3d_fullres")
    folder = pre / cm.data_identifier
    dev_ids = sorted(f.name[:-5] for f in folder.glob("*.b2nd") if not f.name.endswith("_seg.b2nd"))
    ds = infer_dataset_class(str(folder))(str(folder), dev_ids)
    cases = {}
    for k in dev_ids:
        d, s, _, _ = ds.load_case(k)
        cases[k] = (np.asarray(d[:], dtype=np.float32), np.asarray(s[:])[0] > 0)
    prep = DefaultPreprocessor(verbose=False)
    n_ch = len(dj["channel_names"])
    for k in sorted(contract.held_out_cases) if test_sets else []:
        files = [str(raw / "imagesTs" / f"{k}_{c:04d}.nii.gz") for c in range(n_ch)]
        d, s, _ = prep.run_case(files, str(raw / "labelsTs" / f"{k}.nii.gz"), plans, cm, dj)
        cases[k] = (np.asarray(d, dtype=np.float32), np.asarray(s)[0] > 0)
    tables = [contract.outcomes_table] + ([contract.test_outcomes_table] if test_sets else [])
    out = pd.concat([pd.read_csv(raw / t, dtype={"case_id": str}) for t in tables]).set_index("case_id")
    sets = {k: "dev" for k in dev_ids}
    if test_sets:
        sets.update({k: "internal" for k in contract.internal_test})
        sets.update({k: "external" for k in contract.external_test})
    return {"cases": cases, "time": out[contract.time_column].astype(float).to_dict(),
            "event": out[contract.event_column].astype(float).to_dict(), "sets": sets, "raw": raw,
            "cohort": home / "cohort", "patch": tuple(int(p) for p in cm.patch_size),
            "spacing": tuple(float(s) for s in cm.spacing), "horizon": contract.horizon_months}


def quantities(data: dict) -> dict:
    from nnunet_multitask.network import tumour_quantities
    vox = float(np.prod(data["spacing"]))
    return {k: tumour_quantities(torch.from_numpy(m[None]).float(), torch.from_numpy(d[None]), vox)[0].numpy()
            for k, (d, m) in data["cases"].items()}


def boxes(data: dict) -> dict:
    """Each case's un-augmented tumour box (image [C, *box], mask [*box]) and its mask centre."""
    from nnunet_multitask.roi import largest_component_centre
    return {k: (torch.from_numpy(d), torch.from_numpy(m.astype(np.float32)), largest_component_centre(m))
            for k, (d, m) in data["cases"].items()}


# ------------------------------------------------------------------------------------ heads
class _NoSdEncoder(torch.nn.Module):
    """Ablation: the product RoiEncoder without its standard-deviation pooling (mean and max only)."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.spacing_mm = base.spacing_mm
        self.out_features = base.out_features - 3 * base.width

    def forward(self, image, prob):
        pooled = self.base(image, prob)
        n = 3 * self.base.width   # [means, sds, maxes], each 3 regions x width
        return torch.cat([pooled[:, :n], pooled[:, 2 * n:]], 1)


def _with_encoder(net, encoder, norm: bool = False):
    hidden = net.image_embedding[0].out_features
    net.roi_encoder = encoder
    layers = [torch.nn.LayerNorm(net.n_quantities + encoder.out_features)] if norm else []
    net.image_embedding = torch.nn.Sequential(*layers, torch.nn.Linear(net.n_quantities + encoder.out_features,
                                                                       hidden), torch.nn.LeakyReLU(0.01))


#: design variants of the ROI encoder (benchmarks/design_image_pathway.py): name -> edit of the network
ENCODER_VARIANTS = {
    "nosd": lambda net: _with_encoder(net, _NoSdEncoder(net.roi_encoder)),
    "norm": lambda net: _with_encoder(net, net.roi_encoder, norm=True),
}


def clinical_vectors(data: dict) -> dict:
    """Each case's clinical vector (pretreatment + postoperative), the transform fitted on the development
    cases only (``evaluation.radiomics_baseline.clinical_features``, as the trainer does)."""
    from evaluation.radiomics_baseline import clinical_features, load_contract
    dev = sorted(k for k, s in data["sets"].items() if s == "dev")
    frame = clinical_features(data["raw"], load_contract(data["raw"]), dev, sorted(data["sets"]))
    return {k: frame.loc[k].to_numpy(dtype=np.float32) for k in frame.index}


def _clinical(clinical: Optional[dict], keys) -> Optional[torch.Tensor]:
    """The cases' clinical vectors as a batch (None for image-only arms)."""
    return None if clinical is None else torch.as_tensor(np.stack([clinical[k] for k in keys]))


def _net(kind: str, data: dict, n_channels: int):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_multitask.network import MultiTaskUNet
    base = PlainConvUNet(n_channels, 2, (4, 8), torch.nn.Conv3d, 3, (1, 2), (1, 1), 2, (1,), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)  # unused: heads only
    n_clin = 0 if data.get("clinical") is None else len(next(iter(data["clinical"].values())))
    return MultiTaskUNet(base, None, n_clin, 1, survival_head="discrete", n_time_bins=10,
                         image_features="tumour_roi" if kind == "roi" else "tumour_quantities",
                         voxel_volume_mm3=float(np.prod(data["spacing"])), roi_box=data["patch"],
                         spacing_mm=data["spacing"])


def _standardised(net, q: dict, keys) -> torch.Tensor:
    """Precomputed tumour quantities standardised as the network standardises its own."""
    x = torch.as_tensor(np.stack([q[k] for k in keys]), dtype=torch.float32)
    return (x - net.quantity_mean) / net.quantity_std


def _horizon_risk(net, heads, edges, horizon) -> np.ndarray:
    from nnunet_multitask.aggregation import survival_at_times
    hl = heads["hazard_logits"].double().numpy()
    return np.array([-np.log(max(survival_at_times(h, edges, [horizon])[0], 1e-12)) for h in hl])


def _predict(net, kind, keys, q, bx, edges, horizon, clinical: Optional[dict] = None) -> np.ndarray:
    from nnunet_multitask.roi import training_box
    net.eval()
    risks = []
    with torch.no_grad():
        for i in range(0, len(keys), 16):
            chunk = keys[i:i + 16]
            if kind == "roi":
                ims, ps = [], []
                for k in chunk:
                    image, mask, centre = bx[k]
                    both = training_box(torch.cat([image, mask[None]]), centre, net.roi_box, jitter=0)
                    ims.append(both[:-1])
                    ps.append(both[-1])
                heads = net.roi_heads(torch.stack(ims), torch.stack(ps), _clinical(clinical, chunk))
            else:
                heads = net.heads(_standardised(net, q, chunk), _clinical(clinical, chunk))
            risks.append(_horizon_risk(net, heads, edges, horizon))
    return np.concatenate(risks)


def train_heads(kind: str, data: dict, q: dict, bx: dict, train: list, val: list, seed: int, epochs: int,
                lr: float = 2e-3, batch: int = 8, encoder: Optional[str] = None) -> tuple:
    """Heads trained as the trainer trains them; returns (network at the best validation epoch, edges,
    validation C per epoch)."""
    from clinical.outcomes import recurrence_label
    from evaluation.metrics import harrell_c
    from nnunet_multitask import losses as L
    from nnunet_multitask.roi import random_flips, training_box
    from nnunet_multitask.trainer import quantity_statistics
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_ch = next(iter(data["cases"].values()))[0].shape[0]
    net = _net(kind, data, n_ch)
    if encoder not in (None, "base"):
        ENCODER_VARIANTS[encoder](net)
    t = np.array([data["time"][k] for k in train])
    e = np.array([data["event"][k] for k in train])
    lab = recurrence_label(t, e, data["horizon"])
    edges = L.make_bin_edges(t, e.astype(bool), 10, dtype=torch.float64)
    mean, std = quantity_statistics(np.stack([q[k] for k in train]), np.ones((len(train), n_ch)))
    with torch.no_grad():
        net.time_bin_edges.copy_(edges)
        net.quantity_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        net.quantity_std.copy_(torch.as_tensor(std, dtype=torch.float32))
        net.survival_output.bias.copy_(torch.as_tensor(L.discrete_time_baseline_logits(t, e, edges.numpy()),
                                                       dtype=torch.float32))
        known = lab[~np.isnan(lab)]
        rate = float(np.clip(known.mean(), 1e-3, 1 - 1e-3))
        net.classification_head.bias.fill_(float(np.log(rate / (1 - rate))))
    opt = torch.optim.AdamW(net.head_parameters(), lr=lr, weight_decay=1e-4)
    vt = np.array([data["time"][k] for k in val])
    ve = np.array([data["event"][k] for k in val])
    best, best_c, curve = None, -np.inf, []
    for _ in range(epochs):
        net.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order) - batch + 1, batch):
            b = order[i:i + batch]
            keys = [train[j] for j in b]
            if kind == "roi":
                # the mask box must follow the image box: cut both from one stacked array
                both = torch.stack([training_box(torch.cat([bx[k][0], bx[k][1][None]]), bx[k][2], net.roi_box)
                                    for k in keys])
                both = random_flips(both, (0, 1, 2))
                ims, prob = both[:, :-1], both[:, -1]
                heads = net.roi_heads(ims, prob, _clinical(data.get("clinical"), keys))
            else:
                heads = net.heads(_standardised(net, q, keys), _clinical(data.get("clinical"), keys))
            w = torch.ones(len(b))
            loss = 0.5 * L.masked_bce_with_logits(heads["cls_logit"], torch.as_tensor(lab[b], dtype=torch.float32),
                                                  weights=w) \
                + 0.5 * L.discrete_time_nll(heads["hazard_logits"], torch.as_tensor(t[b], dtype=torch.float32),
                                            torch.as_tensor(e[b], dtype=torch.float32), edges.float(), weights=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        c = harrell_c(vt, ve, _predict(net, kind, val, q, bx, edges.numpy(), data["horizon"], data.get("clinical")))
        curve.append(float(c))
        if c > best_c:
            best_c, best = c, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best)
    return net, edges.numpy(), curve


# ------------------------------------------------------------------------------------ baselines
def coxph(x: dict, train: list, test: list, data: dict) -> np.ndarray:
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from clinical.outcomes import survival_array
    xt = np.stack([x[k] for k in train])
    mu, sd = xt.mean(0), xt.std(0) + 1e-9
    y = survival_array(np.array([data["time"][k] for k in train]), np.array([data["event"][k] for k in train]))
    model = CoxPHSurvivalAnalysis(alpha=0.1).fit((xt - mu) / sd, y)
    return model.predict((np.stack([x[k] for k in test]) - mu) / sd)


def coxnet(x: dict, train: list, test: list, data: dict) -> np.ndarray:
    """The radiomics baseline's elastic-net Cox (``evaluation.radiomics_baseline``: penalty by internal
    cross-validation on the development cases only): many correlated texture features."""
    from evaluation.radiomics_baseline import fit_penalised_cox, predict_baseline
    from clinical.outcomes import survival_array
    frame = pd.DataFrame({k: x[k] for k in train + test}).T.astype(float)
    y = survival_array(np.array([data["time"][k] for k in train]), np.array([data["event"][k] for k in train]))
    model = fit_penalised_cox(frame.loc[train], y)
    return predict_baseline(model, frame.loc[test], data["horizon"])["risk_score"].to_numpy()


def texture(data: dict) -> dict | None:
    """Texture-aware radiomics per case on the reference mask, or None where the module is absent."""
    try:
        from evaluation.radiomics import texture_features
    except ImportError:
        return None
    rows = {k: texture_features(d, m, data["spacing"]) for k, (d, m) in data["cases"].items()}
    frame = pd.DataFrame(rows).T.astype(float)
    return {k: frame.loc[k].to_numpy() for k in frame.index}


def oracle(data: dict, terms: str) -> dict:
    from dataset_conversion.oracle import oracle_predictions
    table = oracle_predictions(data["cohort"], data["raw"], data["horizon"], terms)
    return dict(zip(table["case_id"], table["risk_score"]))


# ------------------------------------------------------------------------------------ scoring
def score(data: dict, keys: list, risk: np.ndarray, seed: int) -> dict:
    from evaluation.metrics import bootstrap_harrell_c, harrell_c, percentile_ci
    t = np.array([data["time"][k] for k in keys])
    e = np.array([data["event"][k] for k in keys]).astype(bool)
    boot = bootstrap_harrell_c(t, e, risk[None], N_BOOT, seed)[0]
    return {"c": float(harrell_c(t, e, risk)), "ci": list(percentile_ci(boot) or []), "n": len(keys),
            "events": int(e.sum())}


def paired(data: dict, keys: list, a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    from evaluation.metrics import bootstrap_harrell_c, harrell_c, percentile_ci
    t = np.array([data["time"][k] for k in keys])
    e = np.array([data["event"][k] for k in keys]).astype(bool)
    boot = bootstrap_harrell_c(t, e, np.vstack([a, b]), N_BOOT, seed)
    return {"delta": float(harrell_c(t, e, a) - harrell_c(t, e, b)), "ci": list(percentile_ci(boot[0] - boot[1]))}


def run_cohort(name: str, args) -> dict:
    from sklearn.model_selection import train_test_split
    home = prepare(name, args.patients, args.cohort_seed, Path(args.root))
    data = load(home)
    if args.clinical:
        data["clinical"] = clinical_vectors(data)
    q, bx = quantities(data), boxes(data)
    dev = sorted(k for k, s in data["sets"].items() if s == "dev")
    tests = {s: sorted(k for k, v in data["sets"].items() if v == s) for s in ("internal", "external")}
    train, val = train_test_split(dev, test_size=0.2, random_state=0,
                                  stratify=[int(data["event"][k]) for k in dev])
    result = {"cohort": name, "dataset": str(data["raw"]), "n_dev": len(dev), "n_train": len(train), "n_val": len(val),
              "sets": {s: {"n": len(v), "events": int(sum(data["event"][k] for k in v))} for s, v in tests.items()},
              "arms": {}, "paired_roi_minus_quantities": {}}
    fixed = {"coxph_quantities": q}
    tex = texture(data)
    if tex is not None:
        fixed["coxph_texture"] = tex
    if args.clinical:   # the comparators of "All": clinical + volume + ADC (CoxPH), clinical + texture (coxnet)
        clin = data["clinical"]
        fixed = {"coxph_quantities": {k: np.concatenate([clin[k], q[k][[0, 2]]]) for k in q}}
        if tex is not None:
            fixed["coxph_texture"] = {k: np.concatenate([clin[k], tex[k]]) for k in tex}
    baseline_risks = {}
    for arm, feats in fixed.items():
        fit = coxph if arm == "coxph_quantities" else coxnet
        baseline_risks[arm] = {s: fit(feats, dev, v, data) for s, v in tests.items()}
        result["arms"][arm] = {s: score(data, v, baseline_risks[arm][s], 0) for s, v in tests.items()}
    for terms in ("image", "quantities", "findings"):
        try:
            o = oracle(data, terms)
        except (ValueError, KeyError) as error:
            result["arms"][f"oracle_{terms}"] = {"unavailable": str(error)}
            continue
        result["arms"][f"oracle_{terms}"] = {s: score(data, v, np.array([o[k] for k in v]), 0)
                                             for s, v in tests.items()}
    for seed in args.seeds:
        risks = {}
        for kind in ("quantities", "roi"):
            t0 = time.time()
            net, edges, curve = train_heads(kind, data, q, bx, train, val, seed, args.epochs)
            arm = result["arms"].setdefault(f"heads_{kind}", {})
            risks[kind] = {s: _predict(net, kind, v, q, bx, edges, data["horizon"], data.get("clinical"))
                           for s, v in tests.items()}
            arm[f"seed{seed}"] = {"val_c_curve": curve, "best_epoch": int(np.argmax(curve)) + 1,
                                  "seconds": round(time.time() - t0, 1),
                                  **{s: score(data, tests[s], risks[kind][s], seed) for s in tests}}
            print(f"{name} seed {seed} heads_{kind}: best val C {max(curve):.3f} at epoch "
                  f"{int(np.argmax(curve)) + 1}; " + ", ".join(f"{s} C {arm[f'seed{seed}'][s]['c']:.3f}"
                                                              for s in tests), flush=True)
        # each head arm against each hand-made baseline, paired (same resamples)
        result.setdefault("paired_heads_minus_baselines", {})[f"seed{seed}"] = {
            f"heads_{kind} - {arm}": {s: paired(data, tests[s], risks[kind][s], baseline_risks[arm][s], seed)
                                      for s in tests}
            for kind in risks for arm in baseline_risks}
        result["paired_roi_minus_quantities"][f"seed{seed}"] = {
            s: paired(data, tests[s], risks["roi"][s], risks["quantities"][s], seed) for s in tests}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohorts", default="findings,permuted,today")
    p.add_argument("--patients", type=int, default=600)
    p.add_argument("--cohort-seed", type=int, default=12,
                   help="generator seed of the final table (the design used seed 11: design_image_pathway.py)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--clinical", action="store_true",
                   help="every arm also reads the clinical table (the heads fuse it as MultiRecTrainer does; the "
                        "CoxPH arms become clinical + volume + ADC and clinical + texture)")
    p.add_argument("--root", default=str(BENCH_RUN / "image_pathway"))
    p.add_argument("-o", default=None, help="result JSON (default bench_run/image_pathway.json)")
    a = p.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    torch.set_num_threads(2)
    results = {"machine": machine_info(), "command": " ".join(sys.argv), "cohorts": {}}
    for name in a.cohorts.split(","):
        results["cohorts"][name] = run_cohort(name, a)
        write_result(a.o, results, "image_pathway")
    return 0


if __name__ == "__main__":
    sys.exit(main())
