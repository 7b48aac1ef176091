"""The reference distribution a new patient's risk is ranked against in the per-patient report.

The pooled *out-of-sample* risks of the development patients (module docstring of
:mod:`nnunet_multitask.report`): ``fold_<f>/validation/head_predictions.csv`` of the folds the
prediction used; unavailable, with the reason, for fold ``all``, another checkpoint, or absent files.
"""
from __future__ import annotations

from dataclasses import dataclass
from os.path import isdir, isfile, join
from typing import Optional, Sequence

import numpy as np
import pandas as pd

REFERENCE_FILE = join("validation", "head_predictions.csv")
#: the checkpoint the final validation (and so the reference distribution) was computed with
REFERENCE_CHECKPOINT = "checkpoint_final.pth"


@dataclass
class ReferenceDistribution:
    """Risks a case's risk is ranked against (module docstring); ``risks`` is None when unavailable."""
    risks: Optional[np.ndarray]
    description: str
    reason_unavailable: Optional[str] = None

    @property
    def available(self) -> bool:
        return self.risks is not None and len(self.risks) > 0

    @property
    def threshold(self) -> Optional[float]:
        """The high-risk threshold: the reference median."""
        return float(np.median(self.risks)) if self.available else None

    def percentile(self, risk: float) -> Optional[float]:
        """Mid-rank percentile (0-100) of ``risk`` among the reference risks; None when unavailable."""
        if not self.available or not np.isfinite(risk):
            return None
        below = float(np.sum(self.risks < risk))
        ties = float(np.sum(self.risks == risk))
        return 100.0 * (below + 0.5 * ties) / len(self.risks)

    def group(self, risk: float) -> Optional[str]:
        """``"high"`` when the risk is above the reference median, else ``"low"``; None when unavailable."""
        if not self.available or not np.isfinite(risk):
            return None
        return "high" if risk > self.threshold else "low"

    def record(self) -> dict:
        return {"available": self.available, "n": 0 if self.risks is None else int(len(self.risks)),
                "median": self.threshold, "description": self.description,
                "reason_unavailable": self.reason_unavailable}


def reference_distribution(model_folder: Optional[str], folds: Sequence, checkpoint: str = REFERENCE_CHECKPOINT
                           ) -> ReferenceDistribution:
    """The pooled out-of-sample validation risks of the folds a prediction used.

    Parameters
    ----------
    model_folder : str or None
        ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``.
    folds : sequence
        The folds of the prediction (``predictions.json`` ``folds``).
    checkpoint : str
        The checkpoint the prediction used; the reference was computed with
        :data:`REFERENCE_CHECKPOINT`, so another one makes it unavailable.

    Returns
    -------
    ReferenceDistribution
        With ``reason_unavailable`` set (and no risks) when it cannot be used.
    """
    folds = [str(f) for f in folds]
    description = (f"out-of-sample risks of the development patients: each fold's validation patients predicted by "
                   f"that fold's model, which never trained on them (fold_<f>/{REFERENCE_FILE}, folds "
                   f"{', '.join(folds)} pooled); not the training patients' own risks, which the model has fitted "
                   f"(overfit, spread too wide)")

    def unavailable(reason: str) -> ReferenceDistribution:
        return ReferenceDistribution(None, description, reason)

    if not model_folder or not isdir(model_folder):
        return unavailable(f"the model folder {model_folder} is not available")
    if "all" in folds:
        return unavailable("fold 'all' trains on every development patient, so no patient is out of sample to "
                           "compare with")
    if checkpoint != REFERENCE_CHECKPOINT:
        return unavailable(f"the validation risks come from {REFERENCE_CHECKPOINT}, this prediction used {checkpoint}")
    risks = []
    for f in folds:
        path = join(model_folder, f"fold_{f}", REFERENCE_FILE)
        if not isfile(path):
            return unavailable(f"{path} not found: the trainer's final validation did not run for fold {f} "
                               f"(benchmark variants skip it; or training has not finished)")
        try:
            table = pd.read_csv(path, dtype={"case_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            return unavailable(f"{path} cannot be read: {e}")
        if "risk_score" not in table.columns or table.empty:
            return unavailable(f"{path} has no risk scores")
        values = pd.to_numeric(table["risk_score"], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            return unavailable(f"{path} has risk scores that are not finite numbers")
        risks.append(values)
    return ReferenceDistribution(np.concatenate(risks), description)
