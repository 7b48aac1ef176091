"""Input reading of the evaluation: prediction CSVs, outcomes (CSV or converted dataset), options.

Outcomes are read by :func:`clinical.tables.read_follow_up_table`, the project's one outcomes
validator (time a finite number > 0, event 0/1, unique ids; the message names the file, the case
and the column), the same rules the converter and the trainer apply. Prediction files are not
outcome tables and are read here. Every problem is an :class:`EvaluationInputError` naming the
file, the case and the problem; the command line turns it into ``error: ...`` and exit status 2.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from clinical.errors import MultitaskError
from clinical.tables import ClinicalTableError, read_follow_up_table
from nnunet_multitask import contract
from nnunet_multitask.contract import ContractError, DatasetContract

#: Times (months) of the ``surv_prob_<t>m`` columns read from prediction files.
SURV_PROB_TIMES = contract.SURVIVAL_TIMES

PathLike = str | os.PathLike


class EvaluationInputError(MultitaskError, ValueError):
    """Bad input (file, column, case); the message names the file, case and problem."""


def horizon_tag(horizon: float) -> str:
    """``36`` for 36.0, ``18.5`` for 18.5: the <H> in ``p_recurrence_<H>m`` and ``auc_<H>m`` (the
    predictor names its columns with the same function)."""
    return contract.horizon_tag(horizon)


def check_positive_months(value: object, what: str) -> float:
    """``value`` as a finite float > 0, or an EvaluationInputError naming ``what``."""
    try:
        months = float(value)
    except (TypeError, ValueError):
        months = float("nan")
    if not (math.isfinite(months) and months > 0):
        raise EvaluationInputError(f"{what} must be a finite number of months > 0, got {value!r}")
    return months


# --------------------------------------------------------------------------------------------
# Prediction files
# --------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> pd.DataFrame:
    """A prediction CSV with a complete, unique ``case_id`` column and at least one row."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype={"case_id": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise EvaluationInputError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise EvaluationInputError(f"{path}: cannot be read as CSV: {str(error).strip().splitlines()[0]}") from None
    if "case_id" not in frame.columns:
        hint = ""
        if len(frame.columns) == 1 and (";" in str(frame.columns[0]) or "\t" in str(frame.columns[0])):
            hint = "; the file looks ';'- or tab-delimited, it must be comma-separated"
        raise EvaluationInputError(f"{path}: no 'case_id' column (columns: {list(frame.columns)}){hint}")
    if len(frame) == 0:
        raise EvaluationInputError(f"{path}: a header and no rows: nothing to evaluate")
    frame["case_id"] = frame["case_id"].astype(str).str.strip()
    empty = frame["case_id"].isin(["", "nan", "None"])
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 2).tolist()
        raise EvaluationInputError(f"{path}: empty case_id on line(s) {rows[:10]}")
    duplicated = frame["case_id"][frame["case_id"].duplicated()].unique().tolist()
    if duplicated:
        raise EvaluationInputError(f"{path}: duplicate rows for case(s) {duplicated[:10]} "
                                   f"({len(duplicated)} case(s) in total)")
    return frame


def _numeric_column(frame: pd.DataFrame, column: str, path: Path, low: float | None = None,
                    high: float | None = None) -> np.ndarray:
    """Column as float; an error names the case(s) with a non-numeric, NaN or out-of-range value."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        cases = frame["case_id"].to_numpy()[bad].tolist()
        raw = frame[column].to_numpy()[bad].tolist()
        raise EvaluationInputError(f"{path}: column '{column}' is NaN, infinite or not a number for "
                                   f"case(s) {cases[:10]} (values {raw[:10]})")
    outside = np.zeros(values.shape, dtype=bool)
    if low is not None:
        outside |= values < low
    if high is not None:
        outside |= values > high
    if outside.any():
        cases = frame["case_id"].to_numpy()[outside].tolist()
        raise EvaluationInputError(f"{path}: column '{column}' outside [{low}, {high}] for case(s) "
                                   f"{cases[:10]} (values {values[outside][:10].tolist()})")
    return values


def load_predictions(path: PathLike, horizon: float) -> pd.DataFrame:
    """Read and validate a prediction CSV.

    Returns a frame sorted by case_id with ``case_id``, ``risk_score``, ``p_recurrence`` (NaN
    column when the file has no ``p_recurrence_<H>m``) and every ``surv_prob_<t>m`` present (t in
    :data:`SURV_PROB_TIMES`, and t = H for the survival-head AUC at the horizon). Any
    NaN / non-numeric value in those columns, or a duplicate case, is an error naming case and file.
    ``attrs`` hold ``p_recurrence_column`` and ``surv_prob_horizon_column`` (None when absent).
    """
    path = Path(path)
    frame = _read_csv(path)
    if "risk_score" not in frame.columns:
        raise EvaluationInputError(f"{path}: no 'risk_score' column (columns: {list(frame.columns)})")
    out = pd.DataFrame({"case_id": frame["case_id"],
                        "risk_score": _numeric_column(frame, "risk_score", path)})
    p_column = f"p_recurrence_{horizon_tag(horizon)}m"
    out["p_recurrence"] = (_numeric_column(frame, p_column, path, 0.0, 1.0)
                           if p_column in frame.columns else np.nan)
    out.attrs["p_recurrence_column"] = p_column if p_column in frame.columns else None
    horizon_column = f"surv_prob_{horizon_tag(horizon)}m"  # for the survival-head AUC at any horizon
    for column in dict.fromkeys([f"surv_prob_{t}m" for t in SURV_PROB_TIMES] + [horizon_column]):
        if column in frame.columns:
            out[column] = _numeric_column(frame, column, path, 0.0, 1.0)
    out.attrs["surv_prob_horizon_column"] = horizon_column if horizon_column in frame.columns else None
    out.attrs["path"] = str(path)
    check_survival_monotone(out, path)
    return out.sort_values("case_id", kind="stable").reset_index(drop=True)


#: Survival probabilities may rise with time by at most this much (float rounding) before a row is refused.
MONOTONE_TOLERANCE = 1e-6


def check_survival_monotone(frame: pd.DataFrame, path: Path) -> None:
    """Refuse a row whose ``surv_prob_<t>m`` increase with t by more than :data:`MONOTONE_TOLERANCE`
    (a survival curve cannot rise; the IBS and the calibration would score a backwards curve)."""
    columns = sorted((c for c in frame.columns if c.startswith("surv_prob_") and c.endswith("m")),
                     key=lambda c: float(c[len("surv_prob_"):-1]))
    if len(columns) < 2:
        return
    values = frame[columns].to_numpy(dtype=float)
    rises = np.diff(values, axis=1) > MONOTONE_TOLERANCE
    bad = np.flatnonzero(rises.any(axis=1))
    if bad.size:
        row = bad[0]
        k = int(np.flatnonzero(rises[row])[0])
        raise EvaluationInputError(
            f"{path}: case {frame['case_id'].iloc[row]}: survival probability increases with time: "
            f"{columns[k]} = {values[row, k]:.6g} < {columns[k + 1]} = {values[row, k + 1]:.6g} (a survival curve "
            f"cannot rise; {bad.size} case(s) in total: {frame['case_id'].iloc[bad].tolist()[:10]})")


def load_group_table(path: PathLike, columns: list[str], what: str) -> pd.DataFrame:
    """``case_id`` and the named columns of a CSV as text (empty cells -> ``"missing"``), for the results
    per centre and subgroup; a requested column that is not there is an error naming file and column."""
    path = Path(path)
    frame = _read_csv(path)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise EvaluationInputError(f"{path}: no column {absent} for {what} (columns: {list(frame.columns)})")
    text_frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # as written: "1" stays "1", not 1.0
    out = frame[["case_id"]].copy()
    for column in columns:
        text = text_frame[column].str.strip()
        text = text.mask(text.isin(["NA", "NaN", "nan", "N/A", "null", "None"]), "")
        out[column] = text.mask(text == "", "missing").to_numpy()
    return out


# --------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------
def load_outcomes_csv(path: PathLike, time_column: str = "dfs_months", event_column: str = "dfs_event",
                      default_set: str = "all") -> pd.DataFrame:
    """Read and validate an outcomes CSV into ``case_id, time, event, set`` (file order).

    The file, the ids, the time (a finite number > 0) and the event (0/1) are checked by
    :func:`clinical.tables.read_follow_up_table`; other columns are ignored. A missing ``set``
    column puts every case in ``default_set``; an empty ``set`` cell is an error.
    """
    path = Path(path)
    try:
        table = read_follow_up_table(path, time_column, event_column, id_column="case_id", keep_columns=("set",))
    except ClinicalTableError as error:
        raise EvaluationInputError(str(error)) from None
    if len(table) == 0:
        raise EvaluationInputError(f"{path}: a header and no rows: nothing to evaluate")
    if "set" in table.columns:
        missing = table["set"].isna()
        if missing.any():
            raise EvaluationInputError(f"{path}: empty 'set' for case(s) {table.index[missing].tolist()[:10]}")
        sets = table["set"].to_numpy()
    else:
        sets = np.full(len(table), default_set, dtype=object)
    return pd.DataFrame({"case_id": table.index.to_numpy(), "time": table[time_column].to_numpy(dtype=float),
                         "event": table[event_column].to_numpy().astype(int), "set": sets})


def find_dataset_json(dataset_id: int, raw_dir: PathLike | None = None) -> Path:
    """``$nnUNet_raw/DatasetXXX_*/dataset.json`` for a numeric dataset id."""
    raw_dir = raw_dir or os.environ.get("nnUNet_raw")
    if not raw_dir:
        raise EvaluationInputError("--dataset needs the nnUNet_raw environment variable "
                                   "(or use --outcomes CSV)")
    matches = sorted(Path(raw_dir).glob(f"Dataset{int(dataset_id):03d}_*/dataset.json"))
    if len(matches) != 1:
        raise EvaluationInputError(f"expected one {raw_dir}/Dataset{int(dataset_id):03d}_*/dataset.json, "
                                   f"found {[str(m) for m in matches]}")
    return matches[0]


def _test_outcomes(json_path: Path, dataset: DatasetContract) -> pd.DataFrame:
    """The test cases of ``test_outcomes_table``, their set checked against the block's lists."""
    listed = {"internal_test": set(dataset.internal_test), "external_test": set(dataset.external_test)}
    test_path = json_path.parent / dataset.test_outcomes_table
    test = load_outcomes_csv(test_path, dataset.time_column, dataset.event_column, default_set="")
    if (test["set"] == "").any():  # no set column: assign from the lists in the block
        for name, ids in listed.items():
            test.loc[test["case_id"].isin(ids), "set"] = name
        unassigned = test["case_id"][test["set"] == ""].tolist()
        if unassigned:
            raise EvaluationInputError(f"{test_path}: case(s) {unassigned[:10]} have no 'set' and "
                                       f"are in neither internal_test nor external_test of {json_path}")
    for name, ids in listed.items():
        in_table = set(test["case_id"][test["set"] == name])
        if ids and in_table != ids:
            raise EvaluationInputError(
                f"{test_path}: set '{name}' disagrees with {json_path}: only in table "
                f"{sorted(in_table - ids)[:10]}, only in dataset.json {sorted(ids - in_table)[:10]}")
    return test


def load_outcomes_from_dataset(dataset_id: int, raw_dir: PathLike | None = None) -> tuple[pd.DataFrame, dict]:
    """Outcomes and set membership from the ``"multitask"`` block of a converted dataset.

    Test cases come from ``test_outcomes_table`` (set = internal_test / external_test, checked
    against the ``internal_test`` / ``external_test`` lists), development cases from
    ``outcomes_table`` (set = development; evaluated only when predictions include them).

    Returns
    -------
    outcomes : DataFrame ``case_id, time, event, set``
    info : dict with the dataset.json path, horizon_months and the time / event column names
    """
    json_path = find_dataset_json(dataset_id, raw_dir)
    block = json.loads(json_path.read_text()).get("multitask")
    if not isinstance(block, dict):
        raise EvaluationInputError(f"{json_path}: no 'multitask' block")
    try:
        dataset = DatasetContract.from_block(block, source=str(json_path))
    except ContractError as e:
        raise EvaluationInputError(str(e)) from None
    time_column, event_column = dataset.time_column, dataset.event_column
    frames = [_test_outcomes(json_path, dataset)]
    if "outcomes_table" in block:  # development cases are evaluated only when predictions include them
        development = load_outcomes_csv(json_path.parent / dataset.outcomes_table, time_column, event_column,
                                        default_set="development")
        development["set"] = "development"
        frames.append(development)
    outcomes = pd.concat(frames, ignore_index=True)
    in_two = outcomes["case_id"][outcomes["case_id"].duplicated()].unique().tolist()
    if in_two:
        raise EvaluationInputError(f"{json_path}: case(s) {in_two[:10]} appear in more than one outcomes "
                                   "table / set")
    info = {"dataset_json": str(json_path), "horizon_months": block.get("horizon_months"),  # checked by the caller
            "time_column": time_column, "event_column": event_column,
            "clinical_table": str(json_path.parent / dataset.clinical_table), "centre_column": dataset.centre_column,
            "clinical_columns": dict(dataset.clinical_columns)}
    return outcomes, info
