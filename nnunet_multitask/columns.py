"""The prediction columns' names, in one place: the predictor writes them, the trainer's validation,
the synthetic oracle and the evaluation read them.

A horizon of 36 months gives ``p_recurrence_36m``; 18.5 gives ``p_recurrence_18.5m`` (``%g``), so a
non-integer horizon names the same column on both sides.
"""
from __future__ import annotations

from typing import Tuple

#: months at which the survival head's ``surv_prob_<t>m`` are written (the horizon is added when absent)
SURVIVAL_TIMES: Tuple[float, ...] = (12, 24, 36, 60)


def horizon_tag(months: float) -> str:
    """``"36"`` for 36.0, ``"18.5"`` for 18.5: the ``<H>`` in ``p_recurrence_<H>m`` and ``auc_<H>m``."""
    return f"{float(months):g}"


def recurrence_column(horizon: float) -> str:
    """The classification head's column: ``p_recurrence_<H>m``."""
    return f"p_recurrence_{horizon_tag(horizon)}m"


def survival_column(months: float) -> str:
    """The survival head's column at ``months``: ``surv_prob_<t>m``."""
    return f"surv_prob_{horizon_tag(months)}m"


def survival_times(horizon: float) -> Tuple[float, ...]:
    """:data:`SURVIVAL_TIMES` plus the horizon when it is not among them, ascending."""
    return tuple(sorted(set(float(t) for t in SURVIVAL_TIMES) | {float(horizon)}))
