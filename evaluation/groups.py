"""Results per centre and per subgroup (a categorical clinical column) within one set.

For each group: n, events, events by the horizon, Harrell's C of ``risk_score`` with its bootstrap CI,
the AUC at the horizon of the classification head on known-status cases (DeLong CI) and, for both heads,
calibration in the large (observed - predicted, O/E) and the calibration slope and intercept with their
bootstrap CIs (:mod:`evaluation.calibration`). A group with fewer than :data:`MIN_GROUP_CASES` cases or
fewer than :data:`MIN_GROUP_EVENTS` events is reported with its counts and n/a with the reason.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.calibration import calibration_at_horizon
from evaluation.inputs import horizon_tag
from evaluation.set_metrics import CI_LEVEL, add_harrell_c, head_risks, horizon_auc, horizon_score

MIN_GROUP_CASES = 10
MIN_GROUP_EVENTS = 3
#: The calibration numbers kept per group (each with ``_ci``).
GROUP_CALIBRATION_KEYS = ("observed_risk", "mean_predicted_risk", "observed_minus_predicted",
                          "observed_expected_ratio", "slope", "intercept")


def _group_calibration(frame: pd.DataFrame, horizon: float, n_bootstrap: int, seed: int) -> dict:
    risks, missing = head_risks(frame, horizon)
    time, event = frame["time"].to_numpy(dtype=float), frame["event"].to_numpy().astype(bool)
    out = {head: None for head in missing}
    out.update({f"{head}_reason": reason for head, reason in missing.items()})
    for head, risk in risks.items():
        full = calibration_at_horizon(time, event, risk, horizon, n_bootstrap, seed, CI_LEVEL)[0]
        out[head] = {k: full[k] for name in GROUP_CALIBRATION_KEYS for k in (name, f"{name}_ci", f"{name}_reason")
                     if k in full}
    return out


def group_result(frame: pd.DataFrame, horizon: float, n_bootstrap: int, seed: int) -> dict:
    """The numbers of one group (module docstring)."""
    tag = horizon_tag(horizon)
    time, event = frame["time"].to_numpy(dtype=float), frame["event"].to_numpy().astype(bool)
    out = {"n": int(len(frame)), "events": int(event.sum()),
           f"events_by_{tag}m": int((event & (time <= horizon)).sum())}
    if len(frame) < MIN_GROUP_CASES or event.sum() < MIN_GROUP_EVENTS:
        out["reason"] = (f"too small: {len(frame)} case(s), {int(event.sum())} event(s) (needs at least "
                         f"{MIN_GROUP_CASES} cases and {MIN_GROUP_EVENTS} events)")
        return out
    add_harrell_c(out, {}, time, event, frame["risk_score"].to_numpy(dtype=float), n_bootstrap, seed)
    score, column = horizon_score(frame, horizon)
    horizon_auc(out, frame, horizon, score, column)
    out[f"calibration_{tag}m"] = _group_calibration(frame, horizon, n_bootstrap, seed)
    return out


def results_by_group(frame: pd.DataFrame, column: str, horizon: float, n_bootstrap: int, seed: int) -> dict:
    """``{"column": column, "groups": {value: group_result}}`` over the values of ``column`` in the set
    (``missing`` for an empty cell), values sorted."""
    values = frame[column].astype(str)
    groups = {}
    for value in sorted(values.unique(), key=lambda v: (v == "missing", _sort_key(v))):
        member = frame[values == value].reset_index(drop=True)
        groups[value] = group_result(member, horizon, n_bootstrap, seed)
    return {"column": column, "groups": groups,
            "rule": f"groups with < {MIN_GROUP_CASES} cases or < {MIN_GROUP_EVENTS} events are n/a"}


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, np.inf, value)
