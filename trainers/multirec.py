"""MultiRecNet's model combinations as nnU-Net trainers (found through ``nnUNet_extTrainer``).

Each class states what differs; the logic lives in ``nnunet_multitask.trainer``.
"""
from nnunet_multitask.trainer import MultiRecTrainerBase, cap_batch_size


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


# ---------------------------------------------------------------------------------------------
# training length (named like nnU-Net's nnUNetTrainer_Xepochs)

class MultiRecTrainer_5epochs(MultiRecTrainer):
    epochs = 5


class MultiRecTrainer_50epochs(MultiRecTrainer):
    epochs = 50


class MultiRecTrainer_100epochs(MultiRecTrainer):
    epochs = 100


class MultiRecTrainer_250epochs(MultiRecTrainer):
    epochs = 250


class MultiRecTrainer_smoke(MultiRecTrainer):
    """For tests: three epochs of three iterations, a checkpoint after every epoch."""
    epochs = 3
    iterations_per_epoch = 3
    val_iterations_per_epoch = 2
    save_every_epochs = 1


# ---------------------------------------------------------------------------------------------
# survival loss (the default is the discrete-time likelihood; see README "Choices")

class MultiRecTrainer_Cox(MultiRecTrainer):
    """Cox partial likelihood (Efron ties) over the batch plus a risk-set memory of 128 predictions."""
    survival_head = "cox"


class MultiRecTrainer_Cox_smoke(MultiRecTrainer_Cox):
    """For tests of the Cox path and its risk memory across --c."""
    epochs = 3
    iterations_per_epoch = 3
    val_iterations_per_epoch = 2
    save_every_epochs = 1


# ---------------------------------------------------------------------------------------------
# censoring before the horizon in the classification loss (the default is IPCW; BENCHMARKS.md)

class MultiRecTrainer_CompleteCase(MultiRecTrainer):
    """"All" with the earlier complete-case classification loss: patients censored before the horizon
    are left out and the known labels are not reweighted (biased towards early events when follow-up
    is short)."""
    classification_censoring = "complete_case"


DEMO_BATCH_SIZE = 2


class _DemoLength:
    """What `make demo` trains on the CPU: 30 epochs of 12 iterations at batch size 2."""
    epochs = 30
    iterations_per_epoch = 12
    val_iterations_per_epoch = 4

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        cap_batch_size(self, DEMO_BATCH_SIZE)


class MultiRecTrainer_demo(_DemoLength, MultiRecTrainer):
    """"All" at the demo's budget (what `make demo` trains)."""


class MultiRecTrainer_Pre_demo(_DemoLength, MultiRecTrainer_Pre):
    """Four MRI series + pretreatment data at the demo's budget."""


class MultiRecTrainer_MRI_demo(_DemoLength, MultiRecTrainer_MRI):
    """Four MRI series, no clinical data, at the demo's budget."""


class MultiRecTrainer_T2_demo(_DemoLength, MultiRecTrainer_T2):
    """T2 only, no clinical data, at the demo's budget."""


# ---------------------------------------------------------------------------------------------
# missing series (README "Missing series")

class MultiRecTrainer_ModalityDropout(MultiRecTrainer):
    """"All" for cohorts where some patients lack diffusion series: the heads are told which series
    are real, and half the training samples lose a random subset of ADC, Dapp, Kapp (never T2)."""
    channel_availability = True
    modality_dropout_rate = 0.5


class MultiRecTrainer_ModalityDropout_smoke(MultiRecTrainer_ModalityDropout):
    """For tests of the missing-series path."""
    epochs = 3
    iterations_per_epoch = 3
    val_iterations_per_epoch = 2
    save_every_epochs = 1


# ---------------------------------------------------------------------------------------------
# the learned image pathway (README "What the trainer does"; nnunet_multitask/roi.py)

class MultiRecTrainer_ROI(MultiRecTrainer):
    """"All" with the learned image pathway: the heads read the tumour quantities and a small CNN on a
    box around the tumour (border and mesorectal shells included), cut from the un-augmented image."""
    image_features = "tumour_roi"


class MultiRecTrainer_MRI_ROI(MultiRecTrainer_ROI):
    """Four MRI series with the learned image pathway, no clinical data."""
    clinical_groups = ()


class MultiRecTrainer_ROI_smoke(MultiRecTrainer_ROI):
    """For tests of the learned image pathway."""
    epochs = 3
    iterations_per_epoch = 3
    val_iterations_per_epoch = 2
    save_every_epochs = 1


class MultiRecTrainer_ROI_demo(_DemoLength, MultiRecTrainer_ROI):
    """"All" with the learned image pathway at the demo's budget."""


class MultiRecTrainer_MRI_ROI_demo(_DemoLength, MultiRecTrainer_MRI_ROI):
    """Four MRI series with the learned image pathway, no clinical data, at the demo's budget."""
