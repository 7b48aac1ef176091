"""Tests of nnunet_multitask.losses against independent references on the same data.

References: scikit-survival's CoxPHSurvivalAnalysis (Breslow and Efron coefficients), lifelines'
CoxPHFitter (Efron log-likelihood), hand-worked tiny examples, and per-subject loops written
differently from the vectorised code (explicit risk sets, explicit interval walks).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nnunet_multitask.losses import (
    RiskSetMemory,
    cox_partial_likelihood,
    discrete_time_nll,
    discrete_time_survival,
    gather_across_ranks,
    make_bin_edges,
    masked_bce_with_logits,
    survival_at,
)

DT = torch.float64


# ------------------------------------------------------------------------------ references
def reference_cox_nll(eta, time, event, ties):
    """Negative log partial likelihood / n_events with explicit risk sets (python loops)."""
    eta, time, event = list(map(float, eta)), list(map(float, time)), [bool(e) for e in event]
    n_events = sum(event)
    if n_events == 0:
        return 0.0
    log_lik = 0.0
    for tk in sorted({t for t, e in zip(time, event) if e}):
        risk = sum(math.exp(h) for h, t in zip(eta, time) if t >= tk)
        tied = [h for h, t, e in zip(eta, time, event) if e and t == tk]
        d = len(tied)
        tied_sum = sum(math.exp(h) for h in tied)
        log_lik += sum(tied)
        for ell in range(d):
            if ties == "breslow":
                log_lik -= math.log(risk)
            else:
                log_lik -= math.log(risk - ell / d * tied_sum)
    return -log_lik / n_events


def survival_data(n=80, seed=0):
    """Two covariates, proportional hazards, integer-rounded times (many ties), ~30% censored."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    beta = np.array([0.8, -0.5])
    t_event = rng.exponential(scale=10.0 * np.exp(-x @ beta))
    t_cens = rng.exponential(scale=20.0, size=n)
    time = np.ceil(np.minimum(t_event, t_cens))  # ceil keeps time > 0 and creates ties
    event = t_event <= t_cens
    return x, time, event


def fit_linear_cox(x, time, event, ties):
    beta = torch.zeros(x.shape[1], dtype=DT, requires_grad=True)
    xt, tt, et = torch.tensor(x, dtype=DT), torch.tensor(time, dtype=DT), torch.tensor(event)
    opt = torch.optim.LBFGS([beta], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = cox_partial_likelihood(xt @ beta, tt, et, ties=ties)
        loss.backward()
        return loss

    opt.step(closure)
    return beta.detach().numpy()


# ------------------------------------------------------------------------------ Cox: hand-worked
@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_tiny_hand_worked(ties):
    # times 1, 2, 2, 3; events 1, 1, 1, 0: one event at t=1, two tied events at t=2
    eta = [0.5, -0.2, 0.3, 1.0]
    a, b, c, d = (math.exp(v) for v in eta)
    if ties == "breslow":
        log_lik = (0.5 - math.log(a + b + c + d)) + (-0.2 + 0.3 - 2 * math.log(b + c + d))
    else:
        log_lik = (0.5 - math.log(a + b + c + d)) + (
            -0.2 + 0.3 - math.log(b + c + d) - math.log(b + c + d - 0.5 * (b + c)))
    loss = cox_partial_likelihood(torch.tensor(eta, dtype=DT), torch.tensor([1.0, 2, 2, 3], dtype=DT),
                                  torch.tensor([1, 1, 1, 0]), ties=ties)
    assert loss.item() == pytest.approx(-log_lik / 3, rel=1e-12)


def test_cox_breslow_and_efron_agree_without_ties():
    eta = torch.tensor([0.1, -1.0, 2.0, 0.4], dtype=DT)
    t = torch.tensor([4.0, 1.0, 3.0, 2.0], dtype=DT)
    e = torch.tensor([True, True, False, True])
    assert cox_partial_likelihood(eta, t, e, ties="breslow").item() == pytest.approx(
        cox_partial_likelihood(eta, t, e, ties="efron").item(), rel=1e-12)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_matches_loop_reference_with_ties(ties):
    x, time, event = survival_data(n=60, seed=3)
    eta = np.random.default_rng(4).normal(scale=2.0, size=60)
    loss = cox_partial_likelihood(torch.tensor(eta), torch.tensor(time), torch.tensor(event), ties=ties)
    assert len(np.unique(time)) < 60  # ties present
    assert loss.item() == pytest.approx(reference_cox_nll(eta, time, event, ties), rel=1e-10)


# ------------------------------------------------------------------------------ Cox: libraries
@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_fit_matches_scikit_survival(ties):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = survival_data()
    assert len(np.unique(time[event])) < event.sum()  # tied event times
    ours = fit_linear_cox(x, time, event, ties)
    ref = CoxPHSurvivalAnalysis(alpha=0, ties=ties).fit(x, Surv.from_arrays(event=event, time=time)).coef_
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_cox_loss_matches_lifelines_efron_log_likelihood():
    from lifelines import CoxPHFitter

    x, time, event = survival_data(seed=1)
    df = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "T": time, "E": event.astype(int)})
    cph = CoxPHFitter().fit(df, duration_col="T", event_col="E")
    beta = cph.params_[["x0", "x1"]].to_numpy()
    loss = cox_partial_likelihood(torch.tensor(x @ beta), torch.tensor(time), torch.tensor(event), ties="efron")
    # lifelines' log_likelihood_ is the (positive-sense) log partial likelihood, Efron ties
    assert loss.item() == pytest.approx(-cph.log_likelihood_ / event.sum(), rel=1e-8)
    # and our own fit reaches the same optimum
    np.testing.assert_allclose(fit_linear_cox(x, time, event, "efron"), beta, atol=1e-4)


# ------------------------------------------------------------------------------ Cox: edge cases
@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_batch_of_one(ties):
    for ev in (1, 0):
        eta = torch.tensor([0.7], dtype=DT, requires_grad=True)
        loss = cox_partial_likelihood(eta, torch.tensor([5.0]), torch.tensor([ev]), ties=ties)
        loss.backward()
        assert torch.isfinite(loss) and loss.item() == 0.0  # the risk set is the sample itself
        assert eta.grad is not None and eta.grad.item() == 0.0
    # with a memory the single sample is ranked against the memory entries
    eta = torch.tensor([0.7], dtype=DT, requires_grad=True)
    loss = cox_partial_likelihood(eta, torch.tensor([5.0], dtype=DT), torch.tensor([1]), ties=ties,
                                  extra_log_risk=torch.tensor([0.0, 1.0], dtype=DT),
                                  extra_time=torch.tensor([6.0, 2.0], dtype=DT), extra_event=torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(
        reference_cox_nll([0.7, 0.0, 1.0], [5.0, 6.0, 2.0], [1, 0, 1], ties), rel=1e-12)
    loss.backward()
    assert eta.grad.item() != 0.0


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_no_events_is_finite_zero_with_grad(ties):
    eta = torch.tensor([0.3, -2.0, 1.0], requires_grad=True)
    for extra in ({}, {"extra_log_risk": torch.tensor([0.5]), "extra_time": torch.tensor([2.0]),
                       "extra_event": torch.tensor([False])}):
        loss = cox_partial_likelihood(eta, torch.tensor([1.0, 2, 3]), torch.zeros(3), ties=ties, **extra)
        loss.backward()
        assert torch.isfinite(loss) and loss.item() == 0.0
        assert eta.grad is not None and torch.equal(eta.grad, torch.zeros(3))
        eta.grad = None


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_zero_weight_equals_removing_the_sample(ties):
    eta = torch.tensor([0.2, 1.5, -0.3, 0.9, -1.1], dtype=DT, requires_grad=True)
    t = torch.tensor([3.0, 2.0, 2.0, 5.0, float("nan")], dtype=DT)  # masked sample may lack a time
    e = torch.tensor([1, 1, 1, 0, 1])
    w = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=DT)
    loss = cox_partial_likelihood(eta, t, e, weights=w, ties=ties)
    keep = [0, 2, 3]
    assert loss.item() == pytest.approx(
        reference_cox_nll(eta[keep].tolist(), t[keep].tolist(), e[keep].tolist(), ties), rel=1e-12)
    loss.backward()
    assert eta.grad[1].item() == 0.0 and eta.grad[4].item() == 0.0
    assert eta.grad[0].item() != 0.0
    # all weights 0: finite zero, every sample still in the graph
    eta.grad = None
    loss = cox_partial_likelihood(eta, t, e, weights=torch.zeros(5, dtype=DT), ties=ties)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(eta.grad, torch.zeros(5, dtype=DT))


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_memory_equals_concatenation_with_memory_detached(ties):
    rng = np.random.default_rng(7)
    eta = torch.tensor(rng.normal(size=4), requires_grad=True)
    t = torch.tensor([2.0, 4.0, 4.0, 7.0], dtype=DT)
    e = torch.tensor([1, 0, 1, 1])
    m_eta = torch.tensor(rng.normal(size=5), requires_grad=True)  # must be treated as a constant
    m_t = torch.tensor([1.0, 4.0, 6.0, 7.0, 9.0], dtype=DT)
    m_e = torch.tensor([1, 1, 0, 1, 0])
    with_memory = cox_partial_likelihood(eta, t, e, ties=ties, extra_log_risk=m_eta, extra_time=m_t,
                                         extra_event=m_e)
    eta_ref = eta.detach().clone().requires_grad_(True)
    concatenated = cox_partial_likelihood(torch.cat([eta_ref, m_eta.detach()]), torch.cat([t, m_t]),
                                          torch.cat([e, m_e]), ties=ties)
    assert with_memory.item() == pytest.approx(concatenated.item(), rel=1e-12)
    assert with_memory.item() == pytest.approx(
        reference_cox_nll(eta.tolist() + m_eta.tolist(), t.tolist() + m_t.tolist(), e.tolist() + m_e.tolist(), ties),
        rel=1e-12)
    with_memory.backward()
    concatenated.backward()
    torch.testing.assert_close(eta.grad, eta_ref.grad)
    assert m_eta.grad is None
    # the memory actually changes the loss (enlarged risk sets and extra event terms)
    assert with_memory.item() != pytest.approx(cox_partial_likelihood(eta, t, e, ties=ties).item())


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_batch_normalisation_divides_by_the_batch_events(ties):
    """Issue 10.3: with ``normalise="batch"`` the union's summed log-likelihood is divided by the
    batch's own (weighted) events, so a memory of many events does not dilute the batch's gradient."""
    rng = np.random.default_rng(3)
    eta = torch.tensor(rng.normal(size=4), requires_grad=True)
    t = torch.tensor([2.0, 4.0, 4.0, 7.0], dtype=DT)
    e = torch.tensor([1, 0, 1, 0])  # 2 batch events
    w = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=DT)
    m_eta, m_t = torch.tensor(rng.normal(size=6)), torch.tensor([1.0, 3.0, 4.0, 5.0, 6.0, 9.0], dtype=DT)
    m_e = torch.tensor([1, 1, 1, 1, 1, 0])  # 5 memory events
    kw = dict(ties=ties, weights=w, extra_log_risk=m_eta, extra_time=m_t, extra_event=m_e)
    union = cox_partial_likelihood(eta, t, e, normalise="all", **kw)
    batch = cox_partial_likelihood(eta, t, e, normalise="batch", **kw)
    assert batch.item() == pytest.approx(union.item() * 7 / 2, rel=1e-12)
    g_union, = torch.autograd.grad(union, eta)
    g_batch, = torch.autograd.grad(cox_partial_likelihood(eta, t, e, normalise="batch", **kw), eta)
    torch.testing.assert_close(g_batch, g_union * 7 / 2)
    # without a memory both normalisations are the textbook per-event average
    assert cox_partial_likelihood(eta, t, e, ties=ties, normalise="batch").item() == pytest.approx(
        cox_partial_likelihood(eta, t, e, ties=ties).item(), rel=1e-12)
    # a batch without events is divided by 1: its samples still get gradient from memory events
    no_ev = cox_partial_likelihood(eta, t, torch.zeros(4), normalise="batch", **{k: v for k, v in kw.items()})
    assert no_ev.item() == pytest.approx(-reference_cox_log_lik_sum(
        eta.tolist() + m_eta.tolist(), t.tolist() + m_t.tolist(), [0] * 4 + m_e.tolist(), ties), rel=1e-12)
    with pytest.raises(ValueError, match="normalise"):
        cox_partial_likelihood(eta, t, e, normalise="events")


def reference_cox_log_lik_sum(eta, time, event, ties):
    """Summed log partial likelihood (reference_cox_nll x number of events, sign flipped)."""
    return -reference_cox_nll(eta, time, event, ties) * sum(event)


def test_cox_gradient_matches_finite_differences():
    x, time, event = survival_data(n=20, seed=5)
    eta = torch.tensor(np.random.default_rng(0).normal(size=20), requires_grad=True)
    for ties in ("breslow", "efron"):
        assert torch.autograd.gradcheck(
            lambda v, ties=ties: cox_partial_likelihood(v, torch.tensor(time), torch.tensor(event), ties=ties), (eta,))


def test_cox_numerically_stable_and_shift_invariant():
    t = torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0])
    e = torch.tensor([1, 1, 1, 0, 1])
    eta = torch.tensor([-300.0, 250.0, 80.0, -40.0, 300.0], requires_grad=True)  # float32: exp overflows
    for ties in ("breslow", "efron"):
        loss = cox_partial_likelihood(eta, t, e, ties=ties)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(eta.grad).all()
        ref = reference_cox_nll((eta.detach().double() - 300).tolist(), t.tolist(), e.tolist(), ties)
        assert loss.item() == pytest.approx(ref, rel=1e-5)
        shifted = cox_partial_likelihood(eta.detach() + 1000.0, t, e, ties=ties)
        assert shifted.item() == pytest.approx(loss.item(), rel=1e-5)
        eta.grad = None


def test_cox_accepts_column_vector_and_float_events():
    eta = torch.tensor([[0.1], [0.4], [-0.2]], dtype=DT)
    t = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32)
    loss = cox_partial_likelihood(eta, t, torch.tensor([1.0, 0.0, 1.0]))
    assert loss.item() == pytest.approx(reference_cox_nll([0.1, 0.4, -0.2], [1, 2, 3], [1, 0, 1], "efron"))


@pytest.mark.parametrize("kwargs, message", [
    ({"ties": "exact"}, "ties must be one of"),
    ({"log_risk": torch.tensor([0.0, float("nan"), 1.0])}, "log_risk has non-finite"),
    ({"log_risk": torch.zeros(3, 2)}, r"shape \[N\] or \[N, 1\]"),
    ({"time": torch.tensor([1.0, 0.0, 2.0])}, "time must be finite and > 0"),
    ({"time": torch.tensor([1.0, float("inf"), 2.0])}, "time must be finite and > 0"),
    ({"time": torch.tensor([1.0, 2.0])}, "lengths differ"),
    ({"event": torch.tensor([0, 2, 1])}, "event must be boolean or 0/1"),
    ({"weights": torch.tensor([1.0, 0.5, 1.0])}, "weights must be 0 or 1"),
    ({"extra_log_risk": torch.zeros(2)}, "must be given together"),
    ({"extra_log_risk": torch.zeros(1), "extra_time": torch.tensor([-1.0]), "extra_event": torch.ones(1)},
     "time must be finite and > 0"),
])
def test_cox_input_checks(kwargs, message):
    args = {"log_risk": torch.zeros(3), "time": torch.tensor([1.0, 2.0, 3.0]), "event": torch.tensor([1, 0, 1])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        cox_partial_likelihood(**args)


# ------------------------------------------------------------------------------ RiskSetMemory
def test_risk_set_memory_fifo_weights_and_overflow():
    mem = RiskSetMemory(4)
    assert len(mem) == 0 and all(x.numel() == 0 for x in mem.get())
    mem.update(torch.tensor([1.0, 2.0, 3.0], requires_grad=True), torch.tensor([10.0, 20, 30]),
               torch.tensor([1, 0, 1]), weights=torch.tensor([1.0, 0.0, 1.0]))  # the 0-weight entry is skipped
    risk, time, event = mem.get()
    assert risk.tolist() == [1.0, 3.0] and time.tolist() == [10.0, 30.0] and event.tolist() == [True, True]
    assert not risk.requires_grad
    mem.update(torch.tensor([4.0, 5.0, 6.0]), torch.tensor([40.0, 50, 60]), torch.tensor([0, 0, 1]))
    risk, time, event = mem.get()  # oldest (1.0) overwritten, oldest first
    assert risk.tolist() == [3.0, 4.0, 5.0, 6.0] and time.tolist() == [30.0, 40, 50, 60]
    assert event.tolist() == [True, False, False, True]
    mem.update(torch.arange(10.0), torch.arange(1.0, 11.0), torch.ones(10))  # more than size at once
    assert mem.get()[0].tolist() == [6.0, 7.0, 8.0, 9.0]
    assert len(mem) == 4


def test_risk_set_memory_state_dict_round_trip_inside_a_network():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 1)
            self.risk_memory = RiskSetMemory(5)

    net = Net()
    net.risk_memory.update(torch.tensor([0.5, -0.5, 2.0]), torch.tensor([3.0, 1.0, 8.0]), torch.tensor([1, 0, 1]))
    state = net.state_dict()
    assert {"risk_memory.log_risk", "risk_memory.time", "risk_memory.event", "risk_memory.valid",
            "risk_memory.ptr"} <= set(state)
    restored = Net()
    restored.load_state_dict(state, strict=True)
    for a, b in zip(net.risk_memory.get(), restored.risk_memory.get()):
        assert torch.equal(a, b)
    # the write pointer travels too: the next update continues where the saved one stopped
    for m in (net.risk_memory, restored.risk_memory):
        m.update(torch.tensor([7.0, 8.0, 9.0]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 0]))
    assert restored.risk_memory.get()[0].tolist() == net.risk_memory.get()[0].tolist() == [-0.5, 2.0, 7.0, 8.0, 9.0]


def test_risk_set_memory_keeps_one_entry_per_case_and_leaves_the_batch_out():
    """Issue 10.3: with case ids the memory holds each case's newest prediction once, and ``get``
    leaves out the current batch's cases."""
    mem = RiskSetMemory(4)
    mem.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20, 30]), torch.tensor([1, 0, 1]),
               case_ids=torch.tensor([7, 8, 9]))
    # case 8 again (newer prediction replaces it in place), case 5 new, case 7 twice in one batch
    mem.update(torch.tensor([20.0, 50.0, 70.0, 71.0]), torch.tensor([21.0, 50, 11, 12]),
               torch.tensor([1, 0, 0, 1]), case_ids=torch.tensor([8, 5, 7, 7]))
    assert len(mem) == 4
    held = dict(zip(mem.case_id.tolist(), mem.log_risk.tolist()))
    assert held == {7: 71.0, 8: 20.0, 9: 3.0, 5: 50.0}
    risk, time, event = mem.get(exclude_case_ids=torch.tensor([8, 5]))
    assert sorted(risk.tolist()) == [3.0, 71.0]
    # full: a new case evicts the case inserted longest ago (7, first slot), not a refreshed newer one
    mem.update(torch.tensor([6.0]), torch.tensor([6.0]), torch.tensor([0]), case_ids=torch.tensor([6]))
    assert sorted(mem.case_id.tolist()) == [5, 6, 8, 9]
    # zero-weight entries are not stored; ids must be non-negative integers and match the batch
    mem.update(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1]), weights=torch.tensor([0.0]),
               case_ids=torch.tensor([1]))
    assert 1 not in mem.case_id.tolist()
    with pytest.raises(ValueError, match="case_ids"):
        mem.update(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1]), case_ids=torch.tensor([-1]))
    with pytest.raises(ValueError, match="case_ids"):
        mem.update(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([1, 0]),
                   case_ids=torch.tensor([1]))


def test_risk_set_memory_loads_a_state_dict_without_case_ids():
    old = RiskSetMemory(3)
    old.update(torch.tensor([0.5, 1.5]), torch.tensor([2.0, 3.0]), torch.tensor([1, 0]))
    state = {k: v for k, v in old.state_dict().items() if k != "case_id"}
    new = RiskSetMemory(3)
    new.load_state_dict(state, strict=True)
    assert new.case_id.tolist() == [-1, -1, -1] and new.get()[0].tolist() == [0.5, 1.5]


def test_risk_set_memory_size_zero_is_disabled():
    mem = RiskSetMemory(0)
    mem.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))
    risk, time, event = mem.get()
    assert risk.numel() == time.numel() == event.numel() == 0 and len(mem) == 0
    eta = torch.tensor([0.3, 0.1], requires_grad=True)
    loss = cox_partial_likelihood(eta, torch.tensor([1.0, 2.0]), torch.tensor([1, 0]),
                                  extra_log_risk=risk, extra_time=time, extra_event=event)
    assert loss.item() == pytest.approx(reference_cox_nll([0.3, 0.1], [1, 2], [1, 0], "efron"), rel=1e-6)
    RiskSetMemory(0).load_state_dict(mem.state_dict())
    with pytest.raises(ValueError, match="non-negative integer"):
        RiskSetMemory(-1)


def test_gather_across_ranks_is_noop_without_distributed():
    assert not torch.distributed.is_initialized()
    eta = torch.tensor([[0.1], [0.2]], requires_grad=True)
    risk, time, event, w = gather_across_ranks(eta, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), None)
    assert risk.shape == (2,) and risk.grad_fn is not None
    assert time.tolist() == [1.0, 2.0] and event.tolist() == [True, False] and w.tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------ discrete time
def reference_discrete_nll_per_sample(logits, time, event, edges):
    """Walk the intervals one by one with probabilities (not log-sigmoids)."""
    hazards = [1.0 / (1.0 + math.exp(-v)) for v in logits]
    k_last = len(edges) - 2
    log_lik = 0.0
    for k in range(k_last + 1):
        lo, hi = edges[k], edges[k + 1]
        inside = lo < time <= hi or (k == k_last and time > hi)  # last interval open-ended
        if not inside:
            log_lik += math.log(1.0 - hazards[k])  # survived the whole interval
            continue
        if event:
            log_lik += math.log(hazards[k])
        elif time >= (lo + hi) / 2:  # censored after half the interval: counted as surviving it
            log_lik += math.log(1.0 - hazards[k])
        return -log_lik
    raise AssertionError("time beyond every interval")


def test_discrete_time_nll_matches_per_sample_walk():
    edges = [0.0, 6.0, 12.0, 24.0, 36.0]
    # events and censorings: inside intervals, exactly on edges, before/after midpoints, beyond the last edge
    time = [3.0, 6.0, 7.0, 11.0, 12.0, 18.0, 30.0, 40.0, 50.0, 2.0, 24.0]
    event = [1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0]
    logits = np.random.default_rng(1).normal(size=(len(time), 4))
    ref = [reference_discrete_nll_per_sample(logits[i], time[i], event[i], edges) for i in range(len(time))]
    loss = discrete_time_nll(torch.tensor(logits), torch.tensor(time), torch.tensor(event), torch.tensor(edges))
    assert loss.item() == pytest.approx(float(np.mean(ref)), rel=1e-12)
    w = np.array([1.0, 0, 2, 1, 0.5, 1, 1, 0, 3, 1, 1])
    loss_w = discrete_time_nll(torch.tensor(logits), torch.tensor(time), torch.tensor(event), torch.tensor(edges),
                               weights=torch.tensor(w))
    assert loss_w.item() == pytest.approx(float((w * ref).sum() / w.sum()), rel=1e-12)


def test_discrete_time_nll_edge_cases():
    edges = torch.tensor([0.0, 10.0, 20.0])
    logits = torch.tensor([[0.3, -0.4], [1.0, 2.0]], requires_grad=True)
    # no events: finite, nonzero (censored samples still carry survival terms)
    loss = discrete_time_nll(logits, torch.tensor([15.0, 25.0]), torch.tensor([0, 0]), edges)
    assert torch.isfinite(loss) and loss.item() > 0
    # batch of one
    one = discrete_time_nll(logits[:1], torch.tensor([5.0]), torch.tensor([1]), edges)
    assert one.item() == pytest.approx(-F.logsigmoid(torch.tensor(0.3)).item(), rel=1e-6)
    # all weights zero (masked sample may have NaN time): finite zero with a graph
    zero = discrete_time_nll(logits, torch.tensor([float("nan"), 3.0]), torch.tensor([0, 1]), edges,
                             weights=torch.zeros(2))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(logits.grad, torch.zeros(2, 2))
    # large logits stay finite
    big = discrete_time_nll(torch.tensor([[80.0, -80.0]]), torch.tensor([15.0]), torch.tensor([1]), edges)
    assert torch.isfinite(big)
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        discrete_time_nll(torch.zeros(2, 3), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), edges)
    with pytest.raises(ValueError, match="start at 0"):
        discrete_time_nll(torch.zeros(2, 2), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), torch.tensor([1.0, 2, 3]))
    with pytest.raises(ValueError, match="strictly increasing"):
        discrete_time_nll(torch.zeros(2, 2), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), torch.tensor([0.0, 2, 2]))
    with pytest.raises(ValueError, match="time must be finite and > 0"):
        discrete_time_nll(torch.zeros(2, 2), torch.tensor([0.0, 2.0]), torch.tensor([0, 1]), edges)


def test_discrete_time_survival_and_survival_at():
    edges = torch.tensor([0.0, 10.0, 20.0, 40.0], dtype=DT)
    logits = torch.tensor(np.random.default_rng(2).normal(size=(3, 3)))
    hazard = torch.sigmoid(logits)
    s_end = discrete_time_survival(logits)
    torch.testing.assert_close(s_end, torch.cumprod(1 - hazard, dim=1))
    t = torch.linspace(0, 60, 121, dtype=DT)
    s = survival_at(logits, edges, t)
    assert s.shape == (3, 121)
    torch.testing.assert_close(s[:, 0], torch.ones(3, dtype=DT))
    assert (s[:, 1:] <= s[:, :-1] + 1e-12).all()  # monotone non-increasing
    torch.testing.assert_close(survival_at(logits, edges, edges[1:]), s_end)  # equals S_k at the edges
    torch.testing.assert_close(survival_at(logits, edges, 15.0)[:, 0], (s_end[:, 0] + s_end[:, 1]) / 2)  # linear
    torch.testing.assert_close(survival_at(logits, edges, 100.0)[:, 0], s_end[:, -1])  # held beyond last edge
    with pytest.raises(ValueError, match="t must be >= 0"):
        survival_at(logits, edges, -1.0)


def test_one_survival_function_for_training_and_prediction():
    """The patient-level S(t) of the predictor (aggregation.survival_at_times) is the loss's survival_at,
    and both match an independent numpy reference (np.interp over the interval ends)."""
    from nnunet_multitask.aggregation import survival_at_times
    rng = np.random.default_rng(5)
    for _ in range(50):
        k = int(rng.integers(1, 12))
        edges = np.concatenate([[0.0], np.cumsum(rng.uniform(0.5, 20, k))])
        logits = rng.normal(-2, 2, k)
        times = list(rng.uniform(0, edges[-1] * 1.2, 6)) + [float(edges[1]), float(edges[-1])]
        got = survival_at_times(logits, edges, times)
        want = survival_at(torch.as_tensor(logits)[None], torch.as_tensor(edges), torch.tensor(times, dtype=DT))[0]
        np.testing.assert_array_equal(got, want.numpy())
        grid = np.concatenate([[1.0], np.cumprod(1.0 - 1.0 / (1.0 + np.exp(-logits)))])
        np.testing.assert_allclose(got, np.interp(times, edges, grid), rtol=0, atol=1e-12)


def test_make_bin_edges():
    times = np.array([2.0, 5, 7, 9, 12, 15, 20, 26, 31, 40])
    events = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 0], dtype=bool)
    edges = make_bin_edges(times, events, 3)
    expected = np.concatenate([[0.0], np.quantile(times[events], [1 / 3, 2 / 3]), [40.0]])
    np.testing.assert_allclose(edges.numpy(), expected, rtol=1e-6)
    assert edges.dtype == torch.float32
    edges = make_bin_edges(torch.tensor(times), torch.tensor(events), 2, max_time=60.0, dtype=DT)
    assert edges.tolist() == [0.0, float(np.median(times[events])), 60.0]
    with pytest.warns(UserWarning, match="4 intervals requested, 2 kept"):
        tied = make_bin_edges([3.0, 3, 3, 3, 8], [1, 1, 1, 1, 1], 4)
    assert tied.tolist() == [0.0, 3.0, 8.0]
    with pytest.raises(ValueError, match="at least one event"):
        make_bin_edges([1.0, 2.0], [0, 0], 2)
    with pytest.raises(ValueError, match="times must be finite and > 0"):
        make_bin_edges([0.0, 2.0], [1, 1], 2)


# ------------------------------------------------------------------------------ masked BCE
def test_masked_bce_equals_torch_bce_on_known_subset():
    logit = torch.tensor([0.3, -1.2, 2.0, 0.0, -0.5], requires_grad=True)
    label = torch.tensor([1.0, float("nan"), 0.0, 1.0, float("nan")])
    loss = masked_bce_with_logits(logit, label)
    known = ~torch.isnan(label)
    ref = F.binary_cross_entropy_with_logits(logit.detach()[known], label[known])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert logit.grad[1].item() == 0.0 and logit.grad[4].item() == 0.0 and logit.grad[0].item() != 0.0
    # weights: zero weight removes a known sample
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    weighted = masked_bce_with_logits(logit.detach()[:, None], label, weights=w)
    ref = F.binary_cross_entropy_with_logits(logit.detach()[[0, 3]], label[[0, 3]])
    assert weighted.item() == pytest.approx(ref.item(), rel=1e-6)


def test_masked_bce_all_unknown_is_finite_zero_with_grad():
    logit = torch.tensor([0.3, -1.2], requires_grad=True)
    loss = masked_bce_with_logits(logit, torch.tensor([float("nan"), float("nan")]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logit.grad, torch.zeros(2))
    with pytest.raises(ValueError, match=r"label must be in \[0, 1\] or NaN"):
        masked_bce_with_logits(logit, torch.tensor([2.0, 0.0]))


def test_discrete_time_baseline_logits_maximise_the_covariate_free_likelihood():
    """The closed-form bias start is the optimum of discrete_time_nll with one logit per interval."""
    from nnunet_multitask.losses import discrete_time_baseline_logits, discrete_time_nll, make_bin_edges
    rng = np.random.default_rng(3)
    t = rng.exponential(40.0, 200) + 0.5
    e = rng.random(200) < 0.6
    edges = make_bin_edges(t, e, 6, dtype=torch.float64)
    closed = torch.as_tensor(discrete_time_baseline_logits(t, e, edges.numpy()))
    logits = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def nll():
        opt.zero_grad()
        loss = discrete_time_nll(logits.expand(200, 6), torch.as_tensor(t), torch.as_tensor(e), edges)
        loss.backward()
        return loss

    opt.step(nll)
    torch.testing.assert_close(closed, logits.detach(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="strictly increasing"):
        discrete_time_baseline_logits(t, e, np.array([0.0, 5.0, 5.0]))


def test_head_consistency_is_the_mean_squared_gap_of_the_two_horizon_risks():
    from nnunet_multitask.losses import head_consistency, survival_at
    edges = torch.tensor([0.0, 12.0, 24.0, 48.0])
    hz = torch.tensor([[-2.0, -1.5, -1.0], [0.5, 0.0, -0.5], [-3.0, -3.0, -3.0]], requires_grad=True)
    logit = torch.tensor([0.2, -1.0, 2.0], requires_grad=True)
    w = torch.tensor([1.0, 0.0, 1.0])
    loss = head_consistency(logit, hz, edges, 36.0, weights=w)
    s36 = survival_at(hz.detach(), edges, 36.0)[:, 0]
    gap = (torch.sigmoid(logit.detach()) - (1 - s36)) ** 2
    assert loss.item() == pytest.approx(float((gap[0] + gap[2]) / 2), rel=1e-6)
    loss.backward()
    assert logit.grad[1].item() == 0.0 and logit.grad[0].item() != 0.0 and hz.grad.abs().sum() > 0
    # agreeing heads: zero loss
    agree = torch.logit(1 - survival_at(hz.detach(), edges, 36.0)[:, 0])
    assert head_consistency(agree, hz.detach(), edges, 36.0).item() == pytest.approx(0.0, abs=1e-10)
    assert head_consistency(logit, hz, edges, 36.0, weights=torch.zeros(3)).item() == 0.0
    with pytest.raises(ValueError, match="horizon"):
        head_consistency(logit, hz, edges, 0.0)
    with pytest.raises(ValueError, match="hazard_logits"):
        head_consistency(logit, hz[:2], edges, 36.0)
