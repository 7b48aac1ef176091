"""Short trainers for the speed benchmarks (``benchmarks/``): one epoch of a few iterations, so a
model of the planned size exists to time inference with; its quality is not the point.

Not for users (the product trainers are in ``trainers/``). Both classes have the same length, so the
MultiRec model and the plain nnU-Net model are trained the same way. The final sliding-window
validation is skipped: the inference benchmark times the prediction commands themselves, and
validating would only add minutes to the benchmark.

nnU-Net finds these classes through ``nnUNet_extTrainer=<repo>/trainers:<repo>/benchmarks/trainers``.
Inside an ``nnUNet_extTrainer`` folder modules are imported as top-level names and removed afterwards,
so the bases come from the installed packages (stable class identity).
"""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from trainers.multirec import MultiRecTrainer

BENCH_EPOCHS = 1
BENCH_ITERATIONS = 4
BENCH_VAL_ITERATIONS = 1
_CUDA = torch.device("cuda")  # nnUNetTrainer's default device


class _BenchLength:
    """One epoch of four iterations."""
    epochs = BENCH_EPOCHS
    iterations_per_epoch = BENCH_ITERATIONS
    val_iterations_per_epoch = BENCH_VAL_ITERATIONS


class MultiRecTrainer_bench(_BenchLength, MultiRecTrainer):
    """``MultiRecTrainer``'s configuration (discrete-time head, pretreatment + postoperative
    clinical groups), one epoch of four iterations, no final validation."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("benchmark trainer: final validation skipped")


class nnUNetTrainer_bench(nnUNetTrainer):
    """Plain nnU-Net trainer of the same length as :class:`MultiRecTrainer_bench`, no final validation."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = BENCH_EPOCHS
        self.num_iterations_per_epoch = BENCH_ITERATIONS
        self.num_val_iterations_per_epoch = BENCH_VAL_ITERATIONS

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("benchmark trainer: final validation skipped")
