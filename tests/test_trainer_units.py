"""Trainer pieces that need no training run: whole-tumour supervision, the SGD carrying the heads'
optimiser, seeding."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from nnunet_multitask.trainer import MultiRecTrainerBase, SGDWithHeadOptimizer, seed_everything


def test_heads_are_supervised_only_on_patches_showing_the_whole_tumour():
    trainer = SimpleNamespace(min_tumour_fraction=0.9, _case_tumour_voxels={"a": 100.0, "b": 100.0, "c": 0.0})
    target = torch.zeros(4, 1, 4, 10, 10)
    target[0].view(-1)[:95] = 1      # case a: 95 of its 100 voxels -> supervised
    target[1].view(-1)[:50] = 1      # case b: half its tumour -> not
    target[2].view(-1)[:3] = 1       # case c: count unknown (0) -> any tumour voxel suffices
    w = MultiRecTrainerBase.head_supervision_weights(trainer, target, ["a", "b", "c", "a"])
    assert w.tolist() == [1.0, 0.0, 1.0, 0.0]  # the last patch shows no tumour
    trainer.min_tumour_fraction = 0.0
    assert MultiRecTrainerBase.head_supervision_weights(trainer, target, ["a", "b", "c", "a"]).tolist() == [1, 1, 1, 0]


def test_sgd_state_dict_carries_the_head_optimiser():
    unet, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    heads = torch.optim.AdamW(head.parameters(), lr=1e-3)
    sgd = SGDWithHeadOptimizer(unet.parameters(), heads, lr=0.01, momentum=0.99, nesterov=True)
    (unet(torch.ones(1, 3)).sum() + head(torch.ones(1, 3)).sum()).backward()
    sgd.step(), heads.step()
    state = sgd.state_dict()
    assert "head_optimizer" in state and state["head_optimizer"]["state"]
    heads2 = torch.optim.AdamW(head.parameters(), lr=1e-3)
    sgd2 = SGDWithHeadOptimizer(unet.parameters(), heads2, lr=0.01, momentum=0.99, nesterov=True)
    sgd2.load_state_dict(state)
    for k, v in heads.state_dict()["state"][0].items():
        torch.testing.assert_close(heads2.state_dict()["state"][0][k], v)
    assert len(sgd2.param_groups) == 1 and sgd2.param_groups[0]["lr"] == 0.01  # nnU-Net's poly LR sees the U-Net only


def test_seed_everything_repeats_torch_and_numpy():
    seed_everything(7)
    a = torch.rand(3), np.random.rand(3)
    seed_everything(7)
    b = torch.rand(3), np.random.rand(3)
    torch.testing.assert_close(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_loss_gets_the_step_context_explicitly_or_bound_for_nnunets_calls():
    from nnunet_multitask.trainer import MultiTaskLoss
    seen = []

    def head_losses(target, ctx):
        seen.append(ctx["name"])
        return torch.tensor(2.0), torch.tensor(3.0)

    def consistency(ctx):
        return torch.tensor(10.0)

    seg = torch.nn.L1Loss()
    out, target = torch.ones(2), torch.zeros(2)
    loss = MultiTaskLoss(seg, head_losses, lambda_cls=0.5, lambda_surv=0.25, consistency=consistency)
    assert float(loss(out, target)) == 1.0 and seen == []          # no context: segmentation only
    assert float(loss(out, target, {"name": "explicit"})) == 1.0 + 1.0 + 0.75
    with loss.bind({"name": "bound"}):
        assert float(loss(out, target)) == 2.75                    # nnU-Net's loss(output, target)
    assert float(loss(out, target)) == 1.0 and seen == ["explicit", "bound"]
    loss.lambda_consistency = 0.1
    assert float(loss(out, target, {"name": "x"})) == 2.75 + 1.0 and float(loss.last["cons"]) == 10.0


def test_best_selection_score_rule_and_resume_from_the_log():
    from nnunet_multitask.trainer import best_score_from_log, is_new_best
    assert is_new_best(0.1, None) and is_new_best(0.6, 0.5) and not is_new_best(0.5, 0.5)
    assert best_score_from_log([0.5, 0.7, 0.6, 0.65], legacy=0.42) == 0.7     # from the restored log
    assert best_score_from_log([float("nan")] * 3, legacy=0.42) == 0.42       # a log from before the score
    assert best_score_from_log([]) is None


def test_cap_batch_size_logs_and_leaves_ddp_alone():
    from nnunet_multitask.trainer import cap_batch_size
    logged = []
    t = SimpleNamespace(is_ddp=False, batch_size=8, print_to_log_file=logged.append)
    cap_batch_size(t, 2)
    assert t.batch_size == 2 and logged == ["Batch size capped at 2 (plan: 8)"]
    cap_batch_size(t, 4)
    assert t.batch_size == 2 and len(logged) == 1
    ddp = SimpleNamespace(is_ddp=True, batch_size=8, print_to_log_file=logged.append)
    cap_batch_size(ddp, 2)
    assert ddp.batch_size == 8
