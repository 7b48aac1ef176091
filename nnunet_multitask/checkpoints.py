"""Loading nnU-Net checkpoints without running code from them, and file fingerprints.

``torch.load`` unpickles: a checkpoint from elsewhere could carry an object whose ``__reduce__``
runs a command. The predictor loads every checkpoint with :func:`load_checkpoint_safely`, and
records each file's SHA-256 (:func:`file_sha256`) in ``predictions.json``.
"""
from __future__ import annotations

import pickle
from os.path import isfile

import numpy as np
import torch

from clinical.errors import MultitaskError
# file_sha256 is defined with the prediction artifact (torch-free); the checkpoint checks use it from here
from nnunet_multitask.prediction_artifact import file_sha256  # noqa: F401


class CheckpointError(MultitaskError, RuntimeError):
    """A checkpoint is missing, unreadable or not an nnU-Net checkpoint (the message names the file)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects outside the allow-list (it could run code when unpickled)."""


def _allowed_globals() -> list:
    # what nnU-Net's own checkpoints contain besides tensors and builtins: numpy scalars and arrays
    # in the training log, and torch.device in init_args. Nothing callable beyond these constructors.
    import numpy.dtypes as ndt
    core = np._core if hasattr(np, "_core") else np.core
    allowed = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype, torch.device]
    allowed += [getattr(ndt, n) for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                          "Int32DType", "BoolDType", "UInt8DType") if hasattr(ndt, n)]
    return allowed


def load_checkpoint_safely(path: str) -> dict:
    """Load an nnU-Net checkpoint without executing code from it.

    ``torch.load(weights_only=True)`` with a small allow-list (numpy scalars/arrays, ``torch.device``):
    a checkpoint that carries any other pickled object (a callable, a class instance whose
    ``__reduce__`` would run a command) is refused before anything in it is called.

    Parameters
    ----------
    path : str
        ``<model folder>/fold_<f>/<checkpoint name>``.

    Returns
    -------
    dict
        The checkpoint (``network_weights``, ``trainer_name``, ``init_args``, ...).

    Raises
    ------
    UnsafeCheckpointError
        The checkpoint holds objects outside the allow-list.
    CheckpointError
        The file is missing, unreadable, or not an nnU-Net checkpoint.
    """
    if not isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            ckpt = torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message starts with general advice; the offending global is named further down
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        raise UnsafeCheckpointError(f"{path}: refused to load: the checkpoint holds objects outside the allow-list "
                                    f"that could execute code when unpickled ({reason}); nnU-Net checkpoints "
                                    f"hold only tensors, numbers and strings") from None
    except (RuntimeError, EOFError, OSError) as e:  # truncated / not a torch file
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    missing = [k for k in ("network_weights", "trainer_name", "init_args")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an nnU-Net checkpoint (lacks {missing})")
    return ckpt


