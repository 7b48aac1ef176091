"""Reading and validating clinical tables against a :class:`~clinical.schema.ClinicalSchema`.

Three readers share one validator:

* :func:`read_clinical_table` reads a cohort's ``clinical.csv`` (one row per patient, keyed by
  ``patient_id``, with the outcome columns ``dfs_months``/``dfs_event``).
* :func:`read_case_table` reads a converted nnU-Net dataset's ``clinical.csv`` (keyed by
  ``case_id``, features only: outcome columns there are an error, outcomes live in their own files).
* :func:`read_outcomes_table` reads a converted dataset's ``outcomes.csv`` / ``outcomes_test.csv``.

Every reader returns a :class:`pandas.DataFrame` indexed by its id column (index name = the id
column), with the columns in a fixed order: centre, the schema's feature columns in schema order,
then the outcome columns where present. Types of the returned columns:

* numeric feature -> float64 (NaN = missing)
* binary feature -> float64 with values 0.0/1.0 (NaN = missing); the file may write 0/1 or 0.0/1.0
* categorical feature -> object, one of the declared category strings (NaN = missing)
* centre -> str (never missing)
* ``dfs_months`` -> float64 (> 0), ``dfs_event`` -> int64 (0/1)

Categorical, binary, id and centre columns are read as text, so a category ``"0"`` or ``"T2"``
is never turned into a number. Empty cells (and pandas' usual NA tokens such as ``NA``) in feature
columns are missing values, imputed later by the fold-fitted preprocessor; they are never an error.
All problems of a table are collected and raised together as one :class:`ClinicalTableError`
whose message names the file, the patient/case ids, the column and the problem.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from clinical.schema import ClinicalSchema, SchemaError

__all__ = [
    "ClinicalTableError",
    "CASE_ID_COLUMN",
    "read_clinical_table",
    "read_case_table",
    "read_outcomes_table",
    "write_case_table",
]

#: Id column of the tables written into a converted nnU-Net dataset.
CASE_ID_COLUMN = "case_id"

# How many offending ids a message lists before it summarises the rest.
_MAX_IDS_IN_MESSAGE = 10


class ClinicalTableError(SchemaError):
    """A clinical table does not match its schema (a ``ValueError``)."""


# ---------------------------------------------------------------------------- helpers
def _ids_text(ids: Iterable) -> str:
    ids = [str(i) for i in ids]
    shown = ", ".join(ids[:_MAX_IDS_IN_MESSAGE])
    if len(ids) > _MAX_IDS_IN_MESSAGE:
        shown += f", ... ({len(ids)} in all)"
    return shown


def _check_layout(path: Path) -> None:
    """Refuse a file whose rows do not line up with its header, before pandas guesses around it.

    pandas turns the first column into the index when the first data row has one field more than
    the header (e.g. an unquoted decimal comma, ``62,5``), so every later check would see the
    wrong columns (``duplicate patient_id(s) 1, 2, 3``). A header of one field holding ``;`` or
    a tab means the file uses another delimiter.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(reader_line, row) for reader_line, row in _numbered_rows(csv.reader(f)) if any(
                cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error):
        return  # pandas' reader reports these with its own message
    if not rows:
        return
    header = rows[0][1]
    if len(header) == 1:
        for delimiter, name in ((";", "semicolon"), ("\t", "tab")):
            if delimiter in header[0]:
                raise ClinicalTableError(
                    f"{path}: the header is a single column {header[0][:80]!r}: the file looks {name}-delimited "
                    f"({delimiter!r}); clinical tables must be comma-separated with a decimal point (export the "
                    f"spreadsheet as CSV with ',' as delimiter)")
    longer = [(line, row) for line, row in rows[1:] if len(row) > len(header)]
    if longer:
        shown = ", ".join(f"line {line} (first value {row[0].strip()!r}: {len(row)} fields)"
                          for line, row in longer[:5])
        more = f", ... ({len(longer)} lines in all)" if len(longer) > 5 else ""
        raise ClinicalTableError(
            f"{path}: {shown}{more} hold more fields than the header ({len(header)}): an unquoted decimal comma "
            f"(62,5 instead of 62.5) or a stray comma in a value? Write numbers with a decimal point, or quote "
            f"values that contain commas")


def _numbered_rows(reader):
    for row in reader:
        yield reader.line_num, row


def _read_csv_as_text(path: Path) -> pd.DataFrame:
    """Read every column as text; typed parsing happens per column afterwards."""
    if not path.is_file():
        raise ClinicalTableError(f"{path}: clinical table not found")
    _check_layout(path)
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ClinicalTableError(f"{path}: cannot be read as CSV: {e}") from None
    # Header cells and values with stray spaces are common in spreadsheet exports.
    table.columns = [str(c).strip() for c in table.columns]
    for column in table.columns:
        stripped = table[column].str.strip()
        table[column] = stripped.mask(stripped == "")
    return table


def _parse_zero_one(values: pd.Series) -> pd.Series:
    """Text -> 0.0/1.0 (NaN where empty); values that are not 0 or 1 become a sentinel of -1."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & ~numbers.isin([0.0, 1.0])
    return numbers.where(~bad, -1.0)


def _validate(table: pd.DataFrame, path: Path, schema: ClinicalSchema, id_column: str,
              outcomes: str, extra_columns: Sequence[str] = (), features: bool = True,
              require_centre: bool = True) -> pd.DataFrame:
    """Validate a text table and return the typed, id-indexed frame.

    Parameters
    ----------
    outcomes : {"required", "forbidden", "optional"}
        Whether the time and event columns must be present (and complete), must be absent, or
        are validated only where present.
    extra_columns : sequence of str
        Further text columns allowed (and required) in the table, returned as they are.
    features : bool
        Whether the schema's feature columns are part of this table (False for outcome tables).
    """
    problems: List[str] = []
    time_col, event_col, centre_col = schema.time_column, schema.event_column, schema.centre_column

    # ---- columns: all present, none unknown (the user declares columns in the schema)
    if id_column not in table.columns:
        raise ClinicalTableError(f"{path}: id column '{id_column}' missing; columns are {list(table.columns)}")
    duplicated_headers = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if duplicated_headers:
        raise ClinicalTableError(f"{path}: column(s) {duplicated_headers} appear more than once in the header")
    feature_columns = list(schema.columns) if features else []
    outcome_columns = [time_col, event_col]
    allowed = {id_column, *feature_columns, *extra_columns}
    if require_centre or centre_col in table.columns:
        allowed.add(centre_col)
    if outcomes != "forbidden":
        allowed.update(outcome_columns)
    unknown = [c for c in table.columns if c not in allowed]
    if unknown:
        if outcomes == "forbidden" and set(unknown) & set(outcome_columns):
            raise ClinicalTableError(
                f"{path}: outcome column(s) {[c for c in unknown if c in outcome_columns]} found in a feature "
                f"table; outcomes belong in the separate outcomes table")
        raise ClinicalTableError(
            f"{path}: unknown column(s) {unknown}: not declared in the schema {schema.source} and not one of "
            f"the id/centre/time/event columns ({id_column}, {centre_col}, {time_col}, {event_col}); declare "
            f"them in the schema or remove them")
    required = [id_column, *feature_columns, *extra_columns]
    if require_centre:
        required.append(centre_col)
    if outcomes == "required":
        required += outcome_columns
    missing_columns = [c for c in required if c not in table.columns]
    if missing_columns:
        raise ClinicalTableError(f"{path}: required column(s) {missing_columns} missing (schema {schema.source})")

    # ---- ids: present and unique
    ids = table[id_column]
    if ids.isna().any():
        rows = [int(i) + 2 for i in np.flatnonzero(ids.isna())]  # +2: 1-based and the header line
        raise ClinicalTableError(f"{path}: empty '{id_column}' on line(s) {rows}")
    duplicated = sorted(ids[ids.duplicated()].unique())
    if duplicated:
        raise ClinicalTableError(f"{path}: duplicate {id_column}(s) {_ids_text(duplicated)}")
    table = table.set_index(id_column)

    out = pd.DataFrame(index=table.index)
    out.index.name = id_column

    # ---- centre: text, never missing (stratification and external test use it)
    if centre_col in table.columns:
        empty = table.index[table[centre_col].isna()]
        if len(empty):
            problems.append(f"{id_column}(s) {_ids_text(empty)}: column '{centre_col}': empty centre")
        out[centre_col] = table[centre_col]

    # ---- features, per declared type; empty cells are missing values
    for name in feature_columns:
        spec = schema.columns[name]
        values = table[name]
        if spec.type == "numeric":
            numbers = pd.to_numeric(values, errors="coerce")
            bad = values.notna() & ~np.isfinite(numbers)  # unparseable text became NaN
            for pid in table.index[bad]:
                problems.append(f"{id_column} {pid}: column '{name}': value {values[pid]!r} is not a finite number")
            out[name] = numbers.astype(float)
        elif spec.type == "binary":
            numbers = _parse_zero_one(values)
            for pid in table.index[numbers == -1.0]:
                problems.append(f"{id_column} {pid}: column '{name}': binary value {values[pid]!r} is not 0 or 1")
            out[name] = numbers.astype(float)
        else:  # categorical
            bad = values.notna() & ~values.isin(spec.categories)
            for pid in table.index[bad]:
                problems.append(f"{id_column} {pid}: column '{name}': value {values[pid]!r} is not one of the "
                                f"declared categories {list(spec.categories)}")
            out[name] = values.astype(object)

    # ---- outcomes
    if outcomes != "forbidden" and time_col in table.columns:
        raw_time = table[time_col]
        time = pd.to_numeric(raw_time, errors="coerce")
        for pid in table.index[raw_time.isna()]:
            if outcomes == "required":
                problems.append(f"{id_column} {pid}: column '{time_col}': missing follow-up time")
        bad = raw_time.notna() & ~(np.isfinite(time) & (time > 0))
        for pid in table.index[bad]:
            problems.append(f"{id_column} {pid}: column '{time_col}': {raw_time[pid]!r} is not a number > 0")
        out[time_col] = time.astype(float)
    if outcomes != "forbidden" and event_col in table.columns:
        raw_event = table[event_col]
        event = _parse_zero_one(raw_event)
        for pid in table.index[raw_event.isna()]:
            if outcomes == "required":
                problems.append(f"{id_column} {pid}: column '{event_col}': missing event indicator")
        for pid in table.index[event == -1.0]:
            problems.append(f"{id_column} {pid}: column '{event_col}': {raw_event[pid]!r} is not 0 or 1")
        out[event_col] = event if event.isna().any() else event.astype(np.int64)
    if outcomes == "optional" and (time_col in table.columns) != (event_col in table.columns):
        problems.append(f"columns '{time_col}' and '{event_col}' must come together")

    for name in extra_columns:
        out[name] = table[name]

    if problems:
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ClinicalTableError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)
    return out


# ---------------------------------------------------------------------------- public API
def read_clinical_table(path: str | Path, schema: ClinicalSchema,
                        require_outcomes: bool = True) -> pd.DataFrame:
    """Read and validate a cohort's per-patient clinical table.

    Parameters
    ----------
    path : str or Path
        CSV with the schema's id column (``patient_id``), centre column, every feature column of
        the schema and, when ``require_outcomes``, the time (``dfs_months``) and event
        (``dfs_event``) columns. No other column is accepted.
    schema : ClinicalSchema
        Declares the columns, their groups, types and categories.
    require_outcomes : bool
        If True, time and event must be present for every patient, time > 0 and event in {0, 1}.
        If False, they may be absent; where present they are validated, empty cells allowed.

    Returns
    -------
    pandas.DataFrame
        Indexed by the id column; columns centre, features (schema order), outcomes.

    Raises
    ------
    ClinicalTableError
        Naming the file, the patient id(s), the column and the problem.
    """
    path = Path(path)
    return _validate(_read_csv_as_text(path), path, schema, schema.id_column,
                     outcomes="required" if require_outcomes else "optional")


def read_case_table(path: str | Path, schema: ClinicalSchema) -> pd.DataFrame:
    """Read and validate a converted dataset's clinical feature table (``clinical.csv``).

    Same rules as :func:`read_clinical_table`, with ``case_id`` as the id column. The table holds
    features only: outcome columns there raise (they live in ``outcomes.csv`` and, for the test
    cases, ``outcomes_test.csv``, so it is auditable that training never reads test outcomes).

    Parameters
    ----------
    path : str or Path
        The dataset's clinical table, e.g. ``$nnUNet_raw/Dataset501_LARC/clinical.csv``.
    schema : ClinicalSchema
        The schema the dataset was converted with (``dataset.json`` ``multitask.clinical_columns``
        holds the same column specs).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``case_id``; columns centre, then the schema's feature columns.
    """
    path = Path(path)
    return _validate(_read_csv_as_text(path), path, schema, CASE_ID_COLUMN, outcomes="forbidden")


def read_outcomes_table(path: str | Path, schema: ClinicalSchema, id_column: str = CASE_ID_COLUMN,
                        extra_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read and validate an outcomes table (``outcomes.csv`` or ``outcomes_test.csv``).

    Parameters
    ----------
    path : str or Path
        CSV with ``id_column``, the schema's time and event columns (complete, time > 0,
        event in {0, 1}) and ``extra_columns`` (e.g. ``("set",)`` for ``outcomes_test.csv``).
    schema : ClinicalSchema
        Gives the time and event column names.
    id_column : str
        ``case_id`` for a converted dataset.
    extra_columns : sequence of str
        Further required text columns, returned unchanged.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``id_column``; columns time, event, then ``extra_columns``.
    """
    path = Path(path)
    return _validate(_read_csv_as_text(path), path, schema, id_column, outcomes="required",
                     extra_columns=tuple(extra_columns), features=False, require_centre=False)


def write_case_table(table: pd.DataFrame, path: str | Path, schema: ClinicalSchema) -> None:
    """Write an id-indexed table so that the readers above read it back unchanged.

    Binary and event columns are written as ``0``/``1`` (not ``1.0``), missing values as empty
    cells, so a round trip through CSV keeps every value and type.
    """
    out = table.copy()
    for name in out.columns:
        is_binary = name in schema.columns and schema.columns[name].type == "binary"
        if is_binary or name == schema.event_column:
            out[name] = out[name].astype("Int64")
    out.to_csv(path, index=True, na_rep="")
