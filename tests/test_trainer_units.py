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
