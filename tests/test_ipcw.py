"""Inverse-probability-of-censoring weights of the 36-month label (issue 21, item 3): the censoring
Kaplan-Meier against lifelines, the weights against a hand case, the floor, the training-fold rule,
the weighted BCE and the trainer's plumbing."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lifelines import KaplanMeierFitter

from clinical.outcomes import (MIN_CENSORING_SURVIVAL, censoring_km, censoring_survival_at, ipcw_event_rate,
                               ipcw_weights, recurrence_label)
from nnunet_multitask.losses import masked_bce_with_logits
from nnunet_multitask.trainer import MultiRecTrainerBase


def _lifelines_g(time, event):
    return KaplanMeierFitter().fit(time, 1 - np.asarray(event, dtype=int))


def test_censoring_km_matches_lifelines_with_ties_and_left_limits():
    rng = np.random.default_rng(3)
    time = rng.integers(1, 40, 300).astype(float)     # many ties, events and censorings at one time
    event = rng.random(300) < 0.4
    km = censoring_km(time, event)
    kmf = _lifelines_g(time, event)
    grid = np.array([0.5, 1.0, 7.0, 12.5, 36.0, 39.0, 45.0])
    np.testing.assert_allclose(censoring_survival_at(km, grid), kmf.predict(grid).to_numpy(), atol=1e-12)
    np.testing.assert_allclose(censoring_survival_at(km, grid, left=True), kmf.predict(grid - 1e-9).to_numpy(),
                               atol=1e-12)


def test_ipcw_weights_hand_case():
    # times 10(event) 20(censored) 30(event) 40(censored) 50(event); horizon 35
    # G: at 20, 4 at risk, 1 censored -> 3/4; at 40, 2 at risk, 1 censored -> 3/4 * 1/2
    time = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    event = np.array([1, 0, 1, 0, 1])
    w = ipcw_weights(time, event, 35.0)
    # event at 10: G(10-) = 1; censored at 20 < 35: 0; event at 30: G(30-) = 3/4;
    # known event-free at 35 (T = 40, 50): G(35-) = 3/4
    np.testing.assert_allclose(w, [1.0, 0.0, 4 / 3, 4 / 3, 4 / 3])
    # a patient censored exactly at the horizon is known event-free, weighted by 1/G(H-) = P(C >= H)^-1
    w = ipcw_weights(np.array([10.0, 20.0, 35.0, 50.0]), np.array([1, 0, 0, 1]), 35.0)
    np.testing.assert_allclose(w, [1.0, 0.0, 1.5, 1.5])


def test_ipcw_weights_against_lifelines_and_event_rate_equals_one_minus_km():
    rng = np.random.default_rng(0)
    t_event, t_cens = rng.exponential(60, 500), rng.uniform(5, 70, 500)
    time, event = np.minimum(t_event, t_cens), t_event <= t_cens
    w = ipcw_weights(time, event, 36.0)
    label = recurrence_label(time, event, 36.0)
    g = _lifelines_g(time, event).predict(np.minimum(time, 36.0) - 1e-9).to_numpy()
    expect = np.where(np.isnan(label), 0.0, 1.0 / np.maximum(g, MIN_CENSORING_SURVIVAL))
    np.testing.assert_allclose(w, expect, rtol=1e-12)
    # without ties the IPCW event rate is the Kaplan-Meier risk (Satten & Datta 2001)
    km = KaplanMeierFitter().fit(time, event).predict(36.0)
    assert ipcw_event_rate(time, event, 36.0) == pytest.approx(1 - km, abs=1e-10)
    # while the complete-case rate is biased upwards under censoring
    assert np.nanmean(label) > 1 - km + 0.03


def test_floor_caps_weights_where_censoring_survival_reaches_zero():
    # the last patient's censoring makes G = 0 after it; a later validation patient would get 1/0
    tr_time, tr_event = np.array([5.0, 10.0, 20.0]), np.array([1, 0, 0])
    g = censoring_survival_at(censoring_km(tr_time, tr_event), [25.0])[0]
    assert g == 0.0
    w = ipcw_weights(np.array([30.0, 40.0]), np.array([1, 0]), 36.0, tr_time, tr_event)
    np.testing.assert_allclose(w, [1 / MIN_CENSORING_SURVIVAL, 1 / MIN_CENSORING_SURVIVAL])
    assert ipcw_weights(np.array([40.0]), np.array([0]), 36.0, tr_time, tr_event,
                        min_censoring_survival=0.25)[0] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        ipcw_weights(tr_time, tr_event, 36.0, min_censoring_survival=0.0)


def test_weights_come_from_the_training_fold_only():
    tr_time, tr_event = np.array([5.0, 8.0, 40.0, 50.0]), np.array([0, 0, 1, 0])     # G(36-) = 3/4 * 2/3 = 1/2
    val_time, val_event = np.array([37.0, 38.0]), np.array([0, 0])                   # own G would be 1
    np.testing.assert_allclose(ipcw_weights(val_time, val_event, 36.0, tr_time, tr_event), [2.0, 2.0])
    np.testing.assert_allclose(ipcw_weights(val_time, val_event, 36.0), [1.0, 1.0])


def test_ipcw_bce_is_horvitz_thompson_over_every_supervised_sample():
    logit = torch.tensor([0.3, -1.0, 2.0, 0.5], requires_grad=True)
    label = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    v = torch.tensor([1.5, 0.0, 2.0, 1.0])
    sup = torch.tensor([1.0, 1.0, 1.0, 0.0])
    loss = masked_bce_with_logits(logit, label, weights=sup, censoring_weights=v)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit.detach(), torch.nan_to_num(label),
                                                               reduction="none")
    expect = (1.5 * bce[0] + 2.0 * bce[2]) / 3.0     # denominator: the three supervised samples
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    loss.backward()
    assert logit.grad[1] == 0 and logit.grad[3] == 0
    # all known, unit weights: the complete-case loss
    known = torch.tensor([1.0, 0.0, 1.0])
    a = masked_bce_with_logits(logit[:3].detach(), known, censoring_weights=torch.ones(3))
    assert a.item() == pytest.approx(masked_bce_with_logits(logit[:3].detach(), known).item())
    # nothing known: a finite 0 with a graph
    z = masked_bce_with_logits(logit, torch.full((4,), float("nan")), censoring_weights=torch.zeros(4))
    assert z.item() == 0.0 and z.requires_grad
    with pytest.raises(ValueError):
        masked_bce_with_logits(logit, label, censoring_weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_trainer_weights_and_batch_table_carry_the_censoring_weight():
    time, event = np.array([10.0, 20.0, 30.0, 40.0, 50.0]), np.array([1, 0, 1, 0, 1])
    ns = SimpleNamespace(classification_censoring="ipcw", horizon=35.0, min_censoring_survival=0.05)
    w = MultiRecTrainerBase.classification_weights(ns, time, event, time, event)
    np.testing.assert_allclose(w, [1.0, 0.0, 4 / 3, 4 / 3, 4 / 3])
    ns.classification_censoring = "complete_case"
    np.testing.assert_allclose(MultiRecTrainerBase.classification_weights(ns, time, event, time, event),
                               [1, 0, 1, 1, 1])
    case_data = {k: {"clinical": np.array([0.1, 0.2], np.float32), "time": t, "event": float(e),
                     "label": float(lab), "cls_weight": float(cw), "availability": np.ones(4, np.float32)}
                 for k, t, e, lab, cw in zip("abcde", time, event, recurrence_label(time, event, 35.0), w)}
    trainer = SimpleNamespace(_case_data=case_data, _case_tumour_voxels={}, device=torch.device("cpu"),
                              _case_index={k: i for i, k in enumerate("abcde")})
    ctx = MultiRecTrainerBase._batch_context(trainer, ["c", "b", "a"], np.ones((3, 4), np.float32))
    np.testing.assert_allclose(ctx["cls_weight"].numpy(), [4 / 3, 0.0, 1.0], rtol=1e-6)
    assert ctx["clinical"].shape == (3, 2) and ctx["availability"].shape == (3, 4)
    np.testing.assert_allclose(ctx["time"].numpy(), [30.0, 20.0, 10.0])


def test_head_losses_use_the_censoring_weights_only_for_ipcw():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_multitask.network import MultiTaskUNet
    torch.manual_seed(0)
    base = PlainConvUNet(1, 2, (4, 8), torch.nn.Conv3d, 3, (1, 2), (1, 1), 2, (1,), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    net = MultiTaskUNet(base, None, 0, 1, survival_head="discrete", n_time_bins=3)
    with torch.no_grad():
        net.time_bin_edges.copy_(torch.tensor([0.0, 15.0, 30.0, 60.0], dtype=torch.float64))
    time, event = np.array([10.0, 20.0, 30.0, 40.0, 50.0]), np.array([1, 0, 1, 0, 1])
    labels = recurrence_label(time, event, 35.0)
    ns = SimpleNamespace(classification_censoring="ipcw", horizon=35.0, min_censoring_survival=0.05)
    w = MultiRecTrainerBase.classification_weights(ns, time, event, time, event)
    case_data = {k: {"clinical": np.zeros(0, np.float32), "time": t, "event": float(e), "label": float(lab),
                     "cls_weight": float(cw), "availability": np.ones(1, np.float32)}
                 for k, t, e, lab, cw in zip("abcde", time, event, labels, w)}
    keys = ["a", "b", "c", "d", "e"]
    losses = {}
    for mode in ("complete_case", "ipcw"):
        trainer = SimpleNamespace(_case_data=case_data, _case_tumour_voxels={}, device=torch.device("cpu"),
                                  _case_index={k: i for i, k in enumerate(keys)}, classification_censoring=mode,
                                  is_ddp=False, network=SimpleNamespace(training=True), mt_network=lambda: net,
                                  head_supervision_weights=lambda target, k, v: torch.ones(len(k)))
        ctx = MultiRecTrainerBase._batch_context(trainer, keys, np.ones((5, 1), np.float32))
        heads = net.heads(torch.linspace(-1, 1, 10).reshape(5, 2), None)
        ctx["sink"] = [heads]
        cls, _ = MultiRecTrainerBase.head_losses(trainer, torch.zeros(5, 1, 2, 2, 2), ctx)
        logit = heads["cls_logit"].detach()
        lab = torch.as_tensor(labels, dtype=torch.float32)
        expect = masked_bce_with_logits(logit, lab, censoring_weights=torch.as_tensor(w, dtype=torch.float32)) \
            if mode == "ipcw" else masked_bce_with_logits(logit, lab)
        assert cls.item() == pytest.approx(expect.item(), rel=1e-6)
        losses[mode] = cls.item()
    assert losses["ipcw"] != pytest.approx(losses["complete_case"])
