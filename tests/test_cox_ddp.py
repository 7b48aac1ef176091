"""The distributed Cox path in 2 real CPU processes (torch.distributed, gloo) with unequal batches.

Each rank holds a shard (3 and 2 samples, as nnU-Net's uneven split of the global batch), gathers
the global batch with ``gather_across_ranks`` and computes ``cox_partial_likelihood`` on it. Checked
against the single-process computation on the concatenated batch:

* the loss is the same on every rank and equals the single-process loss;
* the gradient reaching each rank's local ``log_risk`` is ``world_size x`` the matching slice of the
  single-process gradient (``AllGatherGrad`` sums over ranks), the documented relation;
* through a real ``DistributedDataParallel`` (``find_unused_parameters=False``, which averages over
  ranks) the parameter gradient equals the single-process gradient, so the loss must NOT be
  multiplied by the world size; a zero-weight sample and a risk-set memory updated with the gathered
  batch (identical on all ranks) are part of this run.
"""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_multitask.losses import RiskSetMemory, cox_partial_likelihood, gather_across_ranks

WORLD = 2
SHARDS = [slice(0, 3), slice(3, 5)]  # unequal local batch sizes
DT = torch.float64
TIES = ("efron", "breslow")


def global_batch():
    """Deterministic global batch of 5 (ties at t=4, one masked sample) and an initial memory."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, 3, generator=gen, dtype=DT)
    time = torch.tensor([4.0, 2.0, 7.0, 4.0, 9.0], dtype=DT)
    event = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=DT)
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0], dtype=DT)  # rank 1's first patch has no tumour
    eta = torch.randn(5, generator=gen, dtype=DT)
    memory = (torch.tensor([0.3, -0.8, 1.1]), torch.tensor([3.0, 4.0, 8.0]), torch.tensor([1, 1, 0]))
    return x, time, event, weights, eta, memory


#: case ids of the global batch (case 11 also sits in the memory) and of the memory's entries,
#: as the trainer passes them: the memory keeps one entry per case and leaves the batch's cases out
BATCH_IDS = torch.tensor([0, 11, 2, 3, 4])
MEMORY_IDS = torch.tensor([10, 11, 12])


def make_model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1, dtype=DT)


def worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for ties in TIES:  # one spawn for both tie methods: starting processes is the slow part
            run_rank(rank, out_dir, ties)
        # no rank tears gloo down while the other may still be in a collective (a SIGABRT at teardown
        # was seen once in ~10 runs without this barrier)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_rank(rank, out_dir, ties):
    """One rank's step for one tie method; results saved for the parent process."""
    x, time, event, weights, eta, memory = global_batch()
    shard = SHARDS[rank]
    # (a) a leaf log_risk per rank
    local_eta = eta[shard].clone().requires_grad_(True)
    g_eta, g_time, g_event, g_w = gather_across_ranks(local_eta, time[shard], event[shard], weights[shard])
    loss = cox_partial_likelihood(g_eta, g_time, g_event, weights=g_w, ties=ties)
    loss.backward()
    # (b) a real DDP model with a risk-set memory, one training step's loss
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    mem = RiskSetMemory(8)
    mem.update(*memory, case_ids=MEMORY_IDS)
    log_risk = model(x[shard])
    r, t, e, w, ids = gather_across_ranks(log_risk, time[shard], event[shard], weights[shard],
                                          case_ids=BATCH_IDS[shard])
    extra = mem.get(exclude_case_ids=ids)
    ddp_loss = cox_partial_likelihood(r, t, e, weights=w, ties=ties, extra_log_risk=extra[0],
                                      extra_time=extra[1], extra_event=extra[2], normalise="batch")
    ddp_loss.backward()
    mem.update(r.detach(), t, e, weights=w, case_ids=ids)
    torch.save({"loss": loss.detach(), "local_grad": local_eta.grad, "gathered_time": g_time, "gathered_ids": ids,
                "gathered_event": g_event, "gathered_weights": g_w, "ddp_loss": ddp_loss.detach(),
                "weight_grad": model.module.weight.grad, "bias_grad": model.module.bias.grad,
                "memory": mem.get()}, f"{out_dir}/{ties}_rank{rank}.pt")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cox_ddp")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return {ties: [torch.load(out_dir / f"{ties}_rank{r}.pt") for r in range(WORLD)] for ties in TIES}


@pytest.mark.parametrize("ties", TIES)
def test_distributed_cox_equals_single_process(distributed_results, ties):
    results = distributed_results[ties]
    x, time, event, weights, eta, memory = global_batch()

    # single process on the concatenated batch
    eta_single = eta.clone().requires_grad_(True)
    loss_single = cox_partial_likelihood(eta_single, time, event, weights=weights, ties=ties)
    loss_single.backward()
    model = make_model()
    mem = RiskSetMemory(8)
    mem.update(*memory, case_ids=MEMORY_IDS)
    extra = mem.get(exclude_case_ids=BATCH_IDS)
    assert len(extra[0]) == 2  # case 11's stale entry is not in the batch's risk sets
    ddp_loss_single = cox_partial_likelihood(model(x), time, event, weights=weights, ties=ties,
                                             extra_log_risk=extra[0], extra_time=extra[1], extra_event=extra[2],
                                             normalise="batch")
    ddp_loss_single.backward()
    mem.update(model(x).detach(), time, event, weights=weights, case_ids=BATCH_IDS)
    assert len(mem) == 6  # 3 memory cases + 4 weighted batch cases, case 11 once

    for rank, res in enumerate(results):
        assert res["gathered_time"].tolist() == time.tolist()  # rank order, padding removed
        assert res["gathered_ids"].tolist() == BATCH_IDS.tolist()
        assert res["gathered_event"].tolist() == event.bool().tolist()
        assert res["gathered_weights"].tolist() == weights.tolist()
        torch.testing.assert_close(res["loss"], loss_single.detach())
        # AllGatherGrad sums over ranks: local gradient = world_size x single-process slice
        torch.testing.assert_close(res["local_grad"], WORLD * eta_single.grad[SHARDS[rank]])
        torch.testing.assert_close(res["ddp_loss"], ddp_loss_single.detach())
        # DDP averaged the parameter gradients: equal to the single-process gradient, no rescaling
        torch.testing.assert_close(res["weight_grad"], model.weight.grad)
        torch.testing.assert_close(res["bias_grad"], model.bias.grad)
        for got, want in zip(res["memory"], mem.get()):  # every rank holds the same memory
            torch.testing.assert_close(got, want)
    assert eta_single.grad[3].item() == 0.0 and results[1]["local_grad"][0].item() == 0.0  # masked sample
    assert model.weight.grad.abs().sum() > 0
