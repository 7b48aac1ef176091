"""nnU-Net code the trainer mirrors (fast): the installed originals are the ones the copies were made from.

``nnunet_multitask.trainer`` copies ``nnUNetTrainer.train_step`` (to step the heads' own optimiser beside
nnU-Net's SGD) and ``nnUNetTrainer.on_epoch_end`` (to choose the best checkpoint on the selection score).
When nnU-Net's source of either changes, this test fails: compare the copy with the new original, carry
the change over, and record the new hash in ``NNUNET_COPIES``.
"""
from __future__ import annotations

import hashlib
import inspect

import pytest

from nnunet_multitask.trainer import NNUNET_COPIES
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


@pytest.mark.parametrize("name", sorted(NNUNET_COPIES))
def test_mirrored_nnunet_method_is_unchanged(name):
    digest = hashlib.sha256(inspect.getsource(getattr(nnUNetTrainer, name)).encode()).hexdigest()
    assert digest == NNUNET_COPIES[name], (
        f"nnUNetTrainer.{name} differs from the nnU-Net 2.8.1 source the trainer's copy mirrors: update the copy "
        f"in nnunet_multitask/trainer.py, then NNUNET_COPIES[{name!r}] = {digest!r}")
