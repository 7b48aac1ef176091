"""Losses of the multitask heads: Cox partial likelihood (batch + risk-set memory + all DDP ranks),
discrete-time survival likelihood, and masked BCE for recurrence-within-horizon.

Every function here is small and pure (torchsurv style): tensors in, a scalar loss out. They are
hand-written because scikit-survival and lifelines fit models with numpy and give no autograd; the
tests check them against those libraries on the same data.

Conventions shared by all losses
--------------------------------
* ``weights`` is a per-sample mask/weight; a weight of 0 removes the sample completely (the trainer
  uses it for patches without tumour and for unknown labels).
* Removed samples still appear in the autograd graph with a zero coefficient, and a loss with nothing
  to learn from (no event, no known label) is a finite ``0`` that carries a graph. nnU-Net wraps the
  network in DDP with ``find_unused_parameters=False``, which requires every head parameter to get a
  gradient (possibly zero) at every step; skipping a term would hang or crash DDP.
* Nothing returns NaN for a legal input: illegal inputs (shapes, non-finite values, non-positive
  times, unknown tie methods) raise ``ValueError`` with the offending values named.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "cox_partial_likelihood",
    "RiskSetMemory",
    "head_consistency",
    "gather_across_ranks",
    "discrete_time_nll",
    "make_bin_edges",
    "discrete_time_baseline_logits",
    "discrete_time_survival",
    "survival_at",
    "masked_bce_with_logits",
]

_TIE_METHODS = ("breslow", "efron")


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_vector(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``x`` as a 1-D tensor; accepts [N] or [N, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape [N] or [N, 1], got {tuple(x.shape)}")
    return x


def _first_bad(values: torch.Tensor, bad: torch.Tensor) -> str:
    """Describe the first offending entries for an error message."""
    idx = torch.nonzero(bad).flatten()[:5].tolist()
    return f"indices {idx}, values {[values[i].item() for i in idx]}"


def _check_finite(x: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name} has non-finite values at {_first_bad(x.detach(), bad)}")


def _prepare_weights(weights: Optional[torch.Tensor], n: int, like: torch.Tensor, binary: bool) -> torch.Tensor:
    """Weights as a float vector on ``like``'s device; ones when None."""
    if weights is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    weights = _as_vector(weights, "weights").to(device=like.device, dtype=like.dtype)
    if weights.shape[0] != n:
        raise ValueError(f"weights has {weights.shape[0]} entries, expected {n}")
    _check_finite(weights, "weights")
    if binary:
        bad = (weights != 0) & (weights != 1)
        if bool(bad.any()):
            raise ValueError(f"weights must be 0 or 1 (a mask), got {_first_bad(weights, bad)}")
    elif bool((weights < 0).any()):
        raise ValueError(f"weights must be >= 0, got {_first_bad(weights, weights < 0)}")
    return weights


def _check_time_event(time: torch.Tensor, event: torch.Tensor, n: int,
                      active: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate time/event vectors of length ``n``; only ``active`` (weighted) samples must be valid."""
    time = _as_vector(time, "time")
    event = _as_vector(event, "event")
    if time.shape[0] != n or event.shape[0] != n:
        raise ValueError(f"log_risk/logits, time and event lengths differ: {n}, {time.shape[0]}, {event.shape[0]}")
    if not torch.is_floating_point(time):
        time = time.to(torch.float64)
    if event.dtype != torch.bool:
        bad_event = (event != 0) & (event != 1)
        if bool(bad_event.any()):
            raise ValueError(f"event must be boolean or 0/1, got {_first_bad(event, bad_event)}")
        event = event != 0
    time_a = time[active.to(time.device)]
    bad = ~torch.isfinite(time_a) | (time_a <= 0)
    if bool(bad.any()):
        raise ValueError(f"time must be finite and > 0 for every weighted sample, got {_first_bad(time_a, bad)}")
    return time, event


# --------------------------------------------------------------------------------------------
# Cox partial likelihood
# --------------------------------------------------------------------------------------------
def cox_partial_likelihood(
    log_risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    ties: str = "efron",
    extra_log_risk: Optional[torch.Tensor] = None,
    extra_time: Optional[torch.Tensor] = None,
    extra_event: Optional[torch.Tensor] = None,
    normalise: str = "all",
) -> torch.Tensor:
    r"""Negative log Cox partial likelihood, averaged over the number of events.

    With log-risks :math:`\eta_i`, distinct event times :math:`t_{(1)} < \dots < t_{(m)}`,
    :math:`D_k` the set of events at :math:`t_{(k)}` (:math:`d_k = |D_k|`) and
    :math:`R_k = \{j: t_j \ge t_{(k)}\}` the risk set,

    Breslow:

    .. math:: \ell = -\frac{1}{\sum_k d_k} \sum_k \Big[ \sum_{i \in D_k} \eta_i
              - d_k \log \sum_{j \in R_k} e^{\eta_j} \Big]

    Efron:

    .. math:: \ell = -\frac{1}{\sum_k d_k} \sum_k \Big[ \sum_{i \in D_k} \eta_i
              - \sum_{l=0}^{d_k - 1} \log\Big( \sum_{j \in R_k} e^{\eta_j}
              - \tfrac{l}{d_k} \sum_{j \in D_k} e^{\eta_j} \Big) \Big]

    Both equal the negative ``log_likelihood_`` of lifelines / scikit-survival divided by the number
    of events. Computed stably: samples are sorted by time descending and the risk-set log-sums come
    from ``torch.logcumsumexp``; the Efron correction is ``log R + log1p(-l/d * D/R)`` with
    ``D/R <= 1``.

    Parameters
    ----------
    log_risk : Tensor [N] or [N, 1]
        Predicted log-risk (higher = earlier event), with grad.
    time : Tensor [N]
        Event or censoring time, > 0 for every weighted sample.
    event : Tensor [N]
        Bool or 0/1; True = event observed.
    weights : Tensor [N], optional
        0/1 mask. A 0 removes the sample from risk sets and events (as if it were not in the batch);
        its time/event are then not checked (may be NaN). Default: all ones.
    ties : {"efron", "breslow"}
        Tie handling.
    extra_log_risk, extra_time, extra_event : Tensor [M], optional
        Risk-set memory (e.g. :meth:`RiskSetMemory.get`), all three or none. ``extra_log_risk`` is
        detached here (memory entries are constants). Following torchsurv's ``Momentum``, the loss is
        the partial likelihood of the union of batch and memory: memory entries enlarge every risk
        set *and* memory events contribute their own terms, so the batch's predictions are also
        ranked against memory events (they get gradient through those events' denominators).
        With ``normalise="all"`` the average is over all events of the union: this equals calling the
        function on the concatenation ``[batch, memory]`` with the memory part detached.
    normalise : {"all", "batch"}
        What the summed log-likelihood is divided by. ``"all"``: every event in the risk sets (batch
        and memory), the textbook per-event average. ``"batch"``: the weighted batch's own events
        (at least 1), so a batch sample's gradient has the size it has without a memory, whatever the
        memory holds: with ``"all"`` a memory of ~37 events against 1-2 in the batch shrinks the
        batch's gradient 20-40 fold below what the loss weight says. Without a memory both are
        equal. With ``"batch"`` and a memory, the value also carries the memory events' constant
        numerator terms, so its level is not comparable with the memory-free loss (its gradient is).

    Returns
    -------
    Tensor
        Scalar loss. Zero (finite, with a graph reaching ``log_risk``) when no contributing event.
        A batch of one with an event and no memory gives exactly 0 (its risk set is itself).

    Notes
    -----
    Under DDP, call this on :func:`gather_across_ranks` output (every rank computes the same loss on
    the global batch). Do **not** multiply the loss by the world size: ``AllGatherGrad`` sums the
    gradient of the gathered tensor over ranks, so each rank's local ``log_risk`` receives
    ``world_size x`` the single-process gradient slice, and DDP's averaging over ranks then yields
    exactly the gradient of the single-process loss on the concatenated batch.
    """
    if ties not in _TIE_METHODS:
        raise ValueError(f"ties must be one of {_TIE_METHODS}, got {ties!r}")
    if normalise not in ("all", "batch"):
        raise ValueError(f"normalise must be 'all' or 'batch', got {normalise!r}")
    log_risk = _as_vector(log_risk, "log_risk")
    if not torch.is_floating_point(log_risk):
        raise ValueError(f"log_risk must be a floating tensor, got {log_risk.dtype}")
    n = log_risk.shape[0]
    _check_finite(log_risk, "log_risk")
    weights = _prepare_weights(weights, n, log_risk, binary=True)
    active = weights > 0
    time, event = _check_time_event(time, event, n, active)
    time = time.to(log_risk.device)
    event = event.to(log_risk.device)
    # keeps every sample (and so every parameter) in the graph for DDP, see module docstring
    graph_anchor = 0.0 * log_risk.sum()

    eta = log_risk[active]
    t = time[active]
    e = event[active]
    n_batch_events = int(e.sum())

    extras = (extra_log_risk, extra_time, extra_event)
    if any(x is not None for x in extras):
        if any(x is None for x in extras):
            raise ValueError("extra_log_risk, extra_time and extra_event must be given together")
        m_eta = _as_vector(extra_log_risk, "extra_log_risk").detach().to(device=log_risk.device, dtype=log_risk.dtype)
        _check_finite(m_eta, "extra_log_risk")
        m_time, m_event = _check_time_event(
            extra_time, extra_event, m_eta.shape[0], torch.ones(m_eta.shape[0], dtype=torch.bool))
        eta = torch.cat([eta, m_eta])
        t = torch.cat([t, m_time.to(device=t.device, dtype=t.dtype)])
        e = torch.cat([e, m_event.to(e.device)])

    n_events = int(e.sum())
    if n_events == 0:
        return graph_anchor

    # group samples by distinct time; inverse[i] = group of sample i (groups ascending in time)
    unique_times, inverse, counts = torch.unique(t, return_inverse=True, return_counts=True)
    # risk-set log-sum per group: cumulative logsumexp from the latest time backwards; a group's
    # risk set includes its own tied members, so read the value at the group's last sorted position
    order = torch.argsort(t, descending=True)
    cum_lse = torch.logcumsumexp(eta[order], dim=0)
    last_pos_desc = torch.cumsum(counts.flip(0), dim=0) - 1
    risk_lse = cum_lse[last_pos_desc].flip(0)  # [G], ascending group order

    all_ev_eta = eta[e]
    all_ev_group = inverse[e]
    if ties == "breslow":
        log_lik = (all_ev_eta - risk_lse[all_ev_group]).sum()
    else:
        # Efron: tied events at a time leave the denominator fraction by fraction
        n_groups = unique_times.shape[0]
        group_max = torch.full((n_groups,), -torch.inf, dtype=eta.dtype, device=eta.device)
        group_max = group_max.scatter_reduce(0, all_ev_group, all_ev_eta.detach(), reduce="amax")
        shift = torch.where(torch.isfinite(group_max), group_max, torch.zeros_like(group_max))
        tie_sum = torch.zeros(n_groups, dtype=eta.dtype, device=eta.device).index_add(
            0, all_ev_group, torch.exp(all_ev_eta - shift[all_ev_group]))
        d_k = torch.zeros(n_groups, dtype=eta.dtype, device=eta.device).index_add(
            0, all_ev_group, torch.ones_like(all_ev_eta))
        # l = 0..d_k-1 per tied event: rank of each event inside its group (stable sort by group)
        sorted_group, _ = torch.sort(all_ev_group, stable=True)
        group_start = torch.cumsum(d_k, 0) - d_k
        l_rank = torch.arange(sorted_group.shape[0], device=eta.device, dtype=eta.dtype) - group_start[sorted_group]
        # ratio D/R in (0, 1]; only ratios of groups with events are used
        ratio = torch.exp(torch.log(tie_sum[sorted_group]) + shift[sorted_group] - risk_lse[sorted_group])
        efron_log_denominator = risk_lse[sorted_group] + torch.log1p(-(l_rank / d_k[sorted_group]) * ratio)
        log_lik = all_ev_eta.sum() - efron_log_denominator.sum()
    denominator = n_events if normalise == "all" else max(n_batch_events, 1)
    return -log_lik / denominator + graph_anchor


# --------------------------------------------------------------------------------------------
# risk-set memory
# --------------------------------------------------------------------------------------------
class RiskSetMemory(torch.nn.Module):
    """Memory bank of detached (log_risk, time, event) predictions that enlarges Cox risk sets.

    All state lives in registered buffers (``log_risk``, ``time``, ``event``, ``valid``, ``case_id``,
    ``ptr``), so it is saved in the network's ``state_dict`` and nnU-Net checkpoints and moves with
    ``.to()``.

    Use per training step: ``mem = memory.get(exclude_case_ids=batch_ids)`` -> loss with
    ``extra_*=mem`` -> ``memory.update(batch, case_ids=batch_ids)`` (read before writing, so the
    current batch is not counted twice). With case ids the memory keeps **one entry per case, the
    newest** (a case's new prediction replaces its old one in place), and ``get`` leaves out the cases
    of the current batch, so no patient meets its own stale prediction in its risk set. Without case
    ids it is a plain FIFO. Under DDP, update with the gathered batch (:func:`gather_across_ranks`)
    so every rank holds the same memory; DDP also broadcasts buffers from rank 0 at each forward,
    which is then harmless. The memory is not cleared between epochs; entries come from older
    weights, which is what bounds ``size`` in practice. Entries are stored as float32 (times
    included): pass batch times as float32 too, so a batch time and an equal memory time compare
    equal (ties) in the Cox loss.

    Parameters
    ----------
    size : int
        Capacity; 0 disables the memory (``update`` is a no-op and ``get`` returns empty tensors).
    """

    def __init__(self, size: int):
        super().__init__()
        if int(size) != size or size < 0:
            raise ValueError(f"RiskSetMemory size must be a non-negative integer, got {size!r}")
        self.size = int(size)
        self.register_buffer("log_risk", torch.zeros(self.size, dtype=torch.float32))
        self.register_buffer("time", torch.ones(self.size, dtype=torch.float32))
        self.register_buffer("event", torch.zeros(self.size, dtype=torch.bool))
        self.register_buffer("valid", torch.zeros(self.size, dtype=torch.bool))
        self.register_buffer("case_id", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before case ids existed: their entries carry no case (-1)
        key = prefix + "case_id"
        if key not in state_dict and prefix + "log_risk" in state_dict:
            state_dict[key] = torch.full((self.size,), -1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update(self, log_risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
               weights: Optional[torch.Tensor] = None, case_ids: Optional[torch.Tensor] = None) -> None:
        """Push detached entries with weight > 0.

        Without ``case_ids``: FIFO, overwriting the oldest when full; if more entries than ``size``
        arrive at once, only the last ``size`` are kept. With ``case_ids`` (integers >= 0): an entry
        whose case is already held replaces that case's entry in place; a new case takes the next
        slot in insertion order (when full, the case inserted longest ago leaves); a case twice in the
        batch keeps its last entry; of more than ``size`` cases at once, the last ``size`` are kept.
        """
        log_risk = _as_vector(log_risk, "log_risk").detach()
        n = log_risk.shape[0]
        _check_finite(log_risk, "log_risk")
        weights = _prepare_weights(weights, n, log_risk.float(), binary=False)
        active = weights > 0
        time, event = _check_time_event(time, event, n, active)
        if case_ids is not None:
            case_ids = _as_vector(case_ids, "case_ids")
            if case_ids.shape[0] != n:
                raise ValueError(f"case_ids has {case_ids.shape[0]} entries for a batch of {n}")
            if torch.is_floating_point(case_ids) or bool((case_ids < 0).any()):
                raise ValueError(f"case_ids must be non-negative integers, got {case_ids.tolist()}")
        if self.size == 0:
            return
        dev = self.log_risk.device
        active = active.to(dev)
        new_risk = log_risk.to(dev)[active]
        new_time = time.to(dev)[active]
        new_event = event.to(dev)[active]
        if case_ids is None:
            new_risk, new_time, new_event = new_risk[-self.size:], new_time[-self.size:], new_event[-self.size:]
            k = new_risk.shape[0]
            if k == 0:
                return
            slots = (self.ptr + torch.arange(k, device=dev)) % self.size
            self.ptr.copy_((self.ptr + k) % self.size)
            self.case_id[slots] = -1
        else:
            ids = case_ids.to(dev)[active].long().tolist()
            if not ids:
                return
            # slot assignment on the host: at most one global batch of entries per step
            held_ids = self.case_id.tolist()  # one device-to-host copy, not one per slot
            held = {c: i for i, (c, v) in enumerate(zip(held_ids, self.valid.tolist())) if c >= 0 and v}
            ptr = int(self.ptr)
            slot_of, keep = {}, {}
            for j, c in enumerate(ids):
                keep.pop(c, None)
                keep[c] = j  # the last entry of a case in this batch wins
            keep = dict(list(keep.items())[-self.size:])
            for c, j in keep.items():
                if c in held:
                    slot_of[j] = held[c]
                    continue
                # a fresh case takes the oldest slot that no entry of this batch has claimed
                for _ in range(self.size):
                    slot, ptr = ptr, (ptr + 1) % self.size
                    if slot not in slot_of.values():
                        break
                held.pop(held_ids[slot], None)
                slot_of[j] = slot
            self.ptr.fill_(ptr)
            rows = torch.tensor(sorted(slot_of), device=dev)
            slots = torch.tensor([slot_of[j] for j in sorted(slot_of)], device=dev)
            new_risk, new_time, new_event = new_risk[rows], new_time[rows], new_event[rows]
            self.case_id[slots] = torch.tensor([ids[j] for j in sorted(slot_of)], device=dev)
        self.log_risk[slots] = new_risk.to(self.log_risk.dtype)
        self.time[slots] = new_time.to(self.time.dtype)
        self.event[slots] = new_event
        self.valid[slots] = True

    def get(self, exclude_case_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_risk, time, event)`` of the valid entries, oldest first (copies, no grad), leaving
        out the entries of ``exclude_case_ids`` (the current batch's cases)."""
        order = (self.ptr + torch.arange(self.size, device=self.ptr.device)) % max(self.size, 1)
        keep = self.valid[order]
        if exclude_case_ids is not None and self.size > 0:
            ex = _as_vector(exclude_case_ids, "exclude_case_ids").to(self.case_id.device).long()
            keep = keep & ~torch.isin(self.case_id[order], ex)
        order = order[keep]
        return self.log_risk[order].clone(), self.time[order].clone(), self.event[order].clone()

    def __len__(self) -> int:
        return int(self.valid.sum())


# --------------------------------------------------------------------------------------------
# DDP gathering
# --------------------------------------------------------------------------------------------
def gather_across_ranks(
    log_risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    case_ids: Optional[torch.Tensor] = None,
):
    """Concatenate every rank's batch (rank order) so the Cox risk sets span the global batch.

    Gradient flows back to the local slice of ``log_risk`` through nnU-Net's ``AllGatherGrad``
    (which sums the gathered gradient over ranks; see :func:`cox_partial_likelihood` Notes: do not
    scale the loss by the world size). ``AllGatherGrad`` needs equal shapes, and nnU-Net splits the
    global batch unevenly over ranks, so each rank pads to the largest local batch; the padding is
    then removed by index, so the result is exactly the concatenation of the real samples.

    Collective: every rank must call it at every step (also with zero valid weights).
    When ``torch.distributed`` is not initialised it returns the inputs as vectors (weights = ones
    if None) and is a no-op.

    Returns
    -------
    (log_risk [N_total], time [N_total], event bool [N_total], weights [N_total]), and
    ``case_ids [N_total]`` (long) as a fifth element when ``case_ids`` is given (the risk-set memory's
    one-entry-per-case bookkeeping).
    """
    log_risk = _as_vector(log_risk, "log_risk")
    n = log_risk.shape[0]
    time = _as_vector(time, "time").to(log_risk.device)
    event = _as_vector(event, "event").to(log_risk.device)
    if time.shape[0] != n or event.shape[0] != n:
        raise ValueError(f"log_risk, time and event lengths differ: {n}, {time.shape[0]}, {event.shape[0]}")
    weights = _prepare_weights(weights, n, log_risk.detach(), binary=False)
    event = event if event.dtype == torch.bool else event != 0
    ids = None
    if case_ids is not None:
        ids = _as_vector(case_ids, "case_ids").to(log_risk.device).long()
        if ids.shape[0] != n:
            raise ValueError(f"case_ids has {ids.shape[0]} entries for a batch of {n}")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return (log_risk, time, event, weights) if ids is None else (log_risk, time, event, weights, ids)

    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    dist = torch.distributed
    world = dist.get_world_size()
    local_n = torch.tensor([n], dtype=torch.long, device=log_risk.device)
    sizes = [torch.zeros_like(local_n) for _ in range(world)]
    dist.all_gather(sizes, local_n)
    sizes = torch.cat(sizes)
    max_n = int(sizes.max())
    pad = max_n - n

    def padded(x: torch.Tensor, fill: float) -> torch.Tensor:
        return torch.cat([x, torch.full((pad,), fill, dtype=x.dtype, device=x.device)])

    all_risk = AllGatherGrad.apply(padded(log_risk, 0.0))  # [world, max_n], grad to local slice
    # time/event/weights need no gradient: plain all_gather, in float64 so times keep their
    # precision (ties must stay ties); event as float because gloo lacks bool
    # (case ids ride along as float64: exact for integers below 2**53)
    ids_or_zeros = ids if ids is not None else torch.zeros(n, dtype=torch.long, device=log_risk.device)
    side = torch.stack([padded(time.to(torch.float64), 1.0), padded(event.to(torch.float64), 0.0),
                        padded(weights.to(torch.float64), 0.0), padded(ids_or_zeros.to(torch.float64), 0.0)])
    side_all = [torch.zeros_like(side) for _ in range(world)]
    dist.all_gather(side_all, side.detach().contiguous())
    side_all = torch.stack(side_all)  # [world, 4, max_n]
    real = torch.arange(max_n, device=log_risk.device)[None, :] < sizes[:, None]  # [world, max_n]
    out_risk = all_risk[real]
    out_time = side_all[:, 0][real].to(time.dtype if torch.is_floating_point(time) else torch.float64)
    out_event = side_all[:, 1][real] != 0
    out_weights = side_all[:, 2][real].to(weights.dtype)
    if ids is None:
        return out_risk, out_time, out_event, out_weights
    return out_risk, out_time, out_event, out_weights, side_all[:, 3][real].long()


# --------------------------------------------------------------------------------------------
# discrete-time survival
# --------------------------------------------------------------------------------------------
def _check_bin_edges(bin_edges: torch.Tensor) -> torch.Tensor:
    if not isinstance(bin_edges, torch.Tensor):
        bin_edges = torch.as_tensor(bin_edges, dtype=torch.float64)
    if bin_edges.ndim != 1 or bin_edges.shape[0] < 2:
        raise ValueError(f"bin_edges must be 1-D with at least 2 edges, got shape {tuple(bin_edges.shape)}")
    _check_finite(bin_edges, "bin_edges")
    if float(bin_edges[0]) != 0.0:
        raise ValueError(f"bin_edges must start at 0, got {float(bin_edges[0])}")
    if bool((bin_edges[1:] <= bin_edges[:-1]).any()):
        raise ValueError(f"bin_edges must be strictly increasing, got {bin_edges.tolist()}")
    return bin_edges


def _check_hazard_logits(hazard_logits: torch.Tensor, n_intervals: int) -> None:
    if hazard_logits.ndim != 2 or hazard_logits.shape[1] != n_intervals:
        raise ValueError(f"hazard_logits must have shape [N, {n_intervals}] (one column per interval of "
                         f"bin_edges), got {tuple(hazard_logits.shape)}")


def discrete_time_nll(
    hazard_logits: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    bin_edges: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""Logistic-hazard (nnet-survival, Gensheimer & Narasimhan 2019) negative log-likelihood.

    Intervals are :math:`I_k = (e_k, e_{k+1}]` for :math:`k = 0..K-1` from ``bin_edges``
    :math:`e_0 = 0 < e_1 < \dots < e_K`; the last interval is open-ended, so a time beyond
    :math:`e_K` falls in :math:`I_{K-1}`. Hazard :math:`h_k = \sigma(x_k)` is the probability of the
    event in :math:`I_k` given survival to its start. For sample :math:`i` with time in
    :math:`I_{k_i}`:

    * event: :math:`\log L_i = \log h_{k_i} + \sum_{j<k_i} \log(1-h_j)`;
    * censored (half-interval convention of nnet-survival): the sample survived every interval it
      completed, and also its censoring interval when it was followed for at least half of it
      (:math:`t_i \ge (e_{k_i} + e_{k_i+1})/2`):
      :math:`\log L_i = \sum_{j<k_i} \log(1-h_j) + [t_i \ge mid_{k_i}] \log(1-h_{k_i})`.

    The loss is :math:`-\sum_i w_i \log L_i / \sum_i w_i` (log-sigmoids keep it stable).

    Parameters
    ----------
    hazard_logits : Tensor [N, K]
    time : Tensor [N], > 0 for weighted samples
    event : Tensor [N], bool or 0/1
    bin_edges : Tensor [K + 1], starts at 0, strictly increasing (see :func:`make_bin_edges`)
    weights : Tensor [N], optional, >= 0 (0 removes the sample; its term stays in the graph)

    Returns
    -------
    Tensor
        Scalar; finite 0 carrying a graph when every weight is 0. Batches without events are fine
        (censored samples still contribute survival terms).
    """
    bin_edges = _check_bin_edges(bin_edges)
    n_intervals = bin_edges.shape[0] - 1
    _check_hazard_logits(hazard_logits, n_intervals)
    _check_finite(hazard_logits, "hazard_logits")
    n = hazard_logits.shape[0]
    weights = _prepare_weights(weights, n, hazard_logits, binary=False)
    active = weights > 0
    time, event = _check_time_event(time, event, n, active)
    dev = hazard_logits.device
    # masked samples may carry NaN times; give them a harmless time so indexing stays defined
    time = torch.where(active.to(time.device), time, torch.ones_like(time)).to(device=dev, dtype=torch.float64)
    event = event.to(dev)
    edges = bin_edges.to(device=dev, dtype=torch.float64)

    interval = torch.bucketize(time, edges[1:-1], right=False)  # e_k < t <= e_{k+1}; beyond e_K -> K-1
    midpoint = (edges[interval] + edges[interval + 1]) / 2
    cols = torch.arange(n_intervals, device=dev)[None, :]
    survived = cols < interval[:, None]
    survived |= (cols == interval[:, None]) & (~event & (time >= midpoint))[:, None]
    failed = (cols == interval[:, None]) & event[:, None]
    log_lik = (survived * F.logsigmoid(-hazard_logits) + failed * F.logsigmoid(hazard_logits)).sum(1)
    total_weight = weights.sum()
    if float(total_weight) == 0.0:
        return 0.0 * hazard_logits.sum()
    return -(weights * log_lik).sum() / total_weight


def make_bin_edges(times, events, n_bins: int, max_time: Optional[float] = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Interval edges for :func:`discrete_time_nll`: 0, the event-time quantiles, and ``max_time``.

    Inner edges are the ``1/n_bins, ..., (n_bins-1)/n_bins`` quantiles (numpy linear interpolation)
    of the **event** times, so each interval holds about the same number of events (the
    nnet-survival / DeepHit practice); the last edge is ``max_time`` (default: the largest observed
    time, event or censored). Duplicate quantiles (heavily tied event times) and inner edges at or
    beyond ``max_time`` are dropped with a warning, so the result can have fewer than ``n_bins``
    intervals: size the hazard head from ``len(edges) - 1``.

    Parameters
    ----------
    times, events : array-like [N]
        Training-fold follow-up times (> 0) and event indicators.
    n_bins : int
        Requested number of intervals K (>= 1).
    max_time : float, optional
        Last edge; must exceed 0.

    Returns
    -------
    Tensor [K + 1] of ``dtype``, starting at 0, strictly increasing.
    """
    times = np.asarray(times.cpu() if isinstance(times, torch.Tensor) else times, dtype=float).reshape(-1)
    events = np.asarray(events.cpu() if isinstance(events, torch.Tensor) else events).reshape(-1).astype(bool)
    if times.shape != events.shape:
        raise ValueError(f"times and events lengths differ: {times.shape[0]} vs {events.shape[0]}")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise ValueError(f"times must be finite and > 0, got {times[~np.isfinite(times) | (times <= 0)][:5]}")
    if not events.any():
        raise ValueError("make_bin_edges needs at least one event time (got none)")
    if max_time is None:
        max_time = float(times.max())
    if not max_time > 0:
        raise ValueError(f"max_time must be > 0, got {max_time}")
    quantiles = np.quantile(times[events], np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.array([])
    inner = np.unique(quantiles)
    inner = inner[inner < max_time]
    if inner.shape[0] < n_bins - 1:
        warnings.warn(f"make_bin_edges: {n_bins} intervals requested, {inner.shape[0] + 1} kept "
                      f"(tied event-time quantiles or quantiles >= max_time={max_time})", stacklevel=2)
    return torch.as_tensor(np.concatenate([[0.0], inner, [max_time]]), dtype=dtype)


def discrete_time_baseline_logits(times, events, bin_edges, eps: float = 1e-3) -> np.ndarray:
    r"""Hazard logits of the covariate-free discrete-time model, fitted in closed form.

    With one hazard :math:`h_k` per interval and no covariates, :func:`discrete_time_nll` is a sum
    of independent Bernoulli likelihoods, maximised by :math:`h_k = d_k / (d_k + s_k)`, where
    :math:`d_k` counts the events in interval :math:`k` and :math:`s_k` the samples that survived
    it (with the same half-interval convention for censored samples). Used to initialise the
    survival head's output bias, so the head starts at the training fold's baseline hazard.

    Parameters
    ----------
    times, events : array-like [N]
        Training-fold follow-up (> 0) and event indicators.
    bin_edges : array-like [K + 1]
    eps : float
        Hazards are clipped to ``[eps, 1 - eps]`` (an interval without events or without
        survivors would otherwise give an infinite logit).

    Returns
    -------
    ndarray [K]
        ``logit(h_k)``.
    """
    t = np.asarray(times, dtype=float).reshape(-1)
    e = np.asarray(events).reshape(-1).astype(bool)
    edges = np.asarray(bin_edges, dtype=float).reshape(-1)
    if t.shape != e.shape:
        raise ValueError(f"times and events lengths differ: {t.shape[0]} vs {e.shape[0]}")
    if edges.ndim != 1 or edges.shape[0] < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin_edges must be strictly increasing with >= 2 entries, got {edges}")
    k = edges.shape[0] - 1
    interval = np.searchsorted(edges[1:-1], t, side="left")  # the bucketize of discrete_time_nll
    midpoint = (edges[interval] + edges[interval + 1]) / 2
    cols = np.arange(k)[None, :]
    survived = (cols < interval[:, None]) | ((cols == interval[:, None]) & (~e & (t >= midpoint))[:, None])
    failed = (cols == interval[:, None]) & e[:, None]
    d, s = failed.sum(0).astype(float), survived.sum(0).astype(float)
    h = np.where(d + s > 0, d / np.maximum(d + s, 1), eps)
    h = np.clip(h, eps, 1 - eps)
    return np.log(h) - np.log1p(-h)


def discrete_time_survival(hazard_logits: torch.Tensor) -> torch.Tensor:
    """Survival at the end of each interval, ``S_k = prod_{j<=k} (1 - sigmoid(x_j))``, shape [N, K]."""
    if hazard_logits.ndim != 2:
        raise ValueError(f"hazard_logits must have shape [N, K], got {tuple(hazard_logits.shape)}")
    return torch.exp(torch.cumsum(F.logsigmoid(-hazard_logits), dim=1))


def survival_at(hazard_logits: torch.Tensor, bin_edges: torch.Tensor, t) -> torch.Tensor:
    """Survival probability at arbitrary times, shape [N, T].

    ``S`` is known at the edges (``S(0) = 1``, ``S(e_{k+1}) = S_k``) and linearly interpolated within
    each interval (events spread uniformly within an interval, consistent with the half-interval
    censoring convention of :func:`discrete_time_nll`). Beyond the last edge ``S`` is held at its
    last value (no extrapolation). Monotone non-increasing in ``t``.

    Parameters
    ----------
    hazard_logits : Tensor [N, K]
    bin_edges : Tensor [K + 1]
    t : float or Tensor [T] of times >= 0
    """
    bin_edges = _check_bin_edges(bin_edges)
    _check_hazard_logits(hazard_logits, bin_edges.shape[0] - 1)
    dev = hazard_logits.device
    t = torch.as_tensor(t, dtype=torch.float64, device=dev).reshape(-1)
    _check_finite(t, "t")
    if bool((t < 0).any()):
        raise ValueError(f"survival_at: t must be >= 0, got {_first_bad(t, t < 0)}")
    edges = bin_edges.to(device=dev, dtype=torch.float64)
    surv_end = discrete_time_survival(hazard_logits)
    surv_edges = torch.cat([torch.ones_like(surv_end[:, :1]), surv_end], dim=1)  # [N, K+1]
    t = t.clamp(max=float(edges[-1]))
    left = (torch.searchsorted(edges, t, right=True) - 1).clamp(0, edges.shape[0] - 2)
    frac = ((t - edges[left]) / (edges[left + 1] - edges[left])).to(surv_edges.dtype)
    s_left = surv_edges[:, left]
    return s_left + frac[None, :] * (surv_edges[:, left + 1] - s_left)


def head_consistency(cls_logit: torch.Tensor, hazard_logits: torch.Tensor, bin_edges: torch.Tensor,
                     horizon: float, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Squared disagreement of the two horizon risks, averaged over weighted samples.

    .. math:: \ell = \frac{\sum_i w_i \big(\sigma(c_i) - (1 - S_i(H))\big)^2}{\sum_i w_i}

    with :math:`c_i` the classification logit and :math:`S_i(H)` the discrete-time head's survival at
    the horizon (:func:`survival_at`). Needs no outcome, so it also ties the heads on censored
    samples. Finite 0 with a graph when every weight is 0.

    Parameters
    ----------
    cls_logit : Tensor [N] or [N, 1]
    hazard_logits : Tensor [N, K]
    bin_edges : Tensor [K + 1]
    horizon : float, > 0
    weights : Tensor [N], optional, >= 0
    """
    logit = _as_vector(cls_logit, "cls_logit")
    n = logit.shape[0]
    if hazard_logits.ndim != 2 or hazard_logits.shape[0] != n:
        raise ValueError(f"hazard_logits must have shape [{n}, K], got {tuple(hazard_logits.shape)}")
    if not float(horizon) > 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    _check_finite(logit, "cls_logit")
    _check_finite(hazard_logits, "hazard_logits")
    weights = _prepare_weights(weights, n, logit, binary=False)
    risk_surv = 1.0 - survival_at(hazard_logits, bin_edges, float(horizon))[:, 0].to(logit.dtype)
    per_sample = (torch.sigmoid(logit) - risk_surv) ** 2
    total = weights.sum()
    if float(total) == 0.0:
        return 0.0 * (logit.sum() + hazard_logits.sum())
    return (weights * per_sample).sum() / total


# --------------------------------------------------------------------------------------------
# masked BCE
# --------------------------------------------------------------------------------------------
def masked_bce_with_logits(logit: torch.Tensor, label: torch.Tensor,
                           weights: Optional[torch.Tensor] = None,
                           censoring_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Binary cross-entropy for recurrence-within-horizon with unknown (NaN) labels masked out.

    ``label`` is 1/0/NaN as produced by ``clinical.outcomes.recurrence_label`` (NaN = censored
    before the horizon, status unknown, never treated as 0). Unknown or zero-weight samples get a
    zero coefficient (still in the graph).

    * Complete case (``censoring_weights`` None, the earlier behaviour):
      :math:`\ell = \sum_{i\,known} w_i\,bce_i / \sum_{i\,known} w_i`.
    * IPCW (``censoring_weights`` :math:`v_i` from ``clinical.outcomes.ipcw_weights``: 0 for an
      unknown label, :math:`1/\hat G(\min(T_i,H)-)` otherwise):
      :math:`\ell = \sum_{i\,known} w_i v_i\,bce_i / \sum_{i} w_i`, the denominator over *every*
      weighted sample, known or not (Horvitz-Thompson). Since :math:`E[v_i] = 1` this is an unbiased
      estimate, batch by batch, of the BCE the uncensored batch would have; normalising by
      :math:`\sum w_i v_i` instead would cancel the weights in small batches (at batch size 2 a
      batch with one known label would carry weight 1 whatever :math:`v_i` is).

    Finite 0 with a graph when nothing is known (or nothing weighted).

    Parameters
    ----------
    logit : Tensor [N] or [N, 1]
    label : Tensor [N] or [N, 1], values in [0, 1] or NaN
    weights : Tensor [N], optional, >= 0 (the supervision mask)
    censoring_weights : Tensor [N], optional, >= 0 (inverse probability of censoring weights)
    """
    logit = _as_vector(logit, "logit")
    label = _as_vector(label, "label").to(device=logit.device, dtype=logit.dtype)
    n = logit.shape[0]
    if label.shape[0] != n:
        raise ValueError(f"logit and label lengths differ: {n} vs {label.shape[0]}")
    _check_finite(logit, "logit")
    weights = _prepare_weights(weights, n, logit, binary=False)
    known = ~torch.isnan(label)
    bad = known & ((label < 0) | (label > 1))
    if bool(bad.any()):
        raise ValueError(f"label must be in [0, 1] or NaN, got {_first_bad(label, bad)}")
    coefficient = torch.where(known, weights, torch.zeros_like(weights))
    per_sample = F.binary_cross_entropy_with_logits(
        logit, torch.where(known, label, torch.zeros_like(label)), reduction="none")
    if censoring_weights is not None:
        censoring_weights = _prepare_weights(censoring_weights, n, logit, binary=False)
        total = weights.sum()
        if float(total) == 0.0 or float(coefficient.sum()) == 0.0:
            return 0.0 * logit.sum()
        return (coefficient * censoring_weights * per_sample).sum() / total
    total = coefficient.sum()
    if float(total) == 0.0:
        return 0.0 * logit.sum()
    return (coefficient * per_sample).sum() / total
