"""MultiRecNet's model combinations as nnU-Net trainers (found through ``nnUNet_extTrainer``).

Each class states what differs; the logic lives in ``nnunet_multitask.trainer``.
"""
from nnunet_multitask.trainer import MultiRecTrainerBase


class MultiRecTrainer(MultiRecTrainerBase):
    """"All": four MRI series + pretreatment + postoperative clinical data."""
    clinical_groups = ("pretreatment", "postoperative")


class MultiRecTrainer_Pre(MultiRecTrainer):
    """Four MRI series + pretreatment clinical data."""
    clinical_groups = ("pretreatment",)


class MultiRecTrainer_MRI(MultiRecTrainer):
    """Four MRI series, no clinical data."""
    clinical_groups = ()


class MultiRecTrainer_T2(MultiRecTrainer_MRI):
    """T2-weighted series only, no clinical data (same preprocessed dataset)."""
    input_channels = (0,)
