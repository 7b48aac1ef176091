"""Reading and validating clinical tables: the one set of readers of the project.

Four readers share one validator (one CSV reader, one id check, one cell parser per declared type
and one follow-up check):

* :func:`read_clinical_table` reads a cohort's ``clinical.csv`` (one row per patient, keyed by
  ``patient_id``, with the outcome columns ``dfs_months``/``dfs_event``): the converter.
* :func:`read_case_table` reads a converted nnU-Net dataset's ``clinical.csv`` (keyed by
  ``case_id``, features only: outcome columns there are an error, outcomes live in their own files):
  training and prediction.
* :func:`read_outcomes_table` reads a converted dataset's ``outcomes.csv`` / ``outcomes_test.csv``
  against its schema: training.
* :func:`read_follow_up_table` reads any outcomes CSV (id, time, event; other columns ignored)
  without a schema: the evaluation (``evaluation.inputs``).

The follow-up rule is :func:`parse_follow_up` (time a finite number > 0, event 0/1) and the feature
rule is :func:`parse_feature_column`, which :class:`clinical.preprocessing.ClinicalPreprocessor`
also applies, so a frame from these readers is what the preprocessor expects.

The schema readers return a :class:`pandas.DataFrame` indexed by its id column (index name = the
id column), with the columns in a fixed order: centre, the schema's feature columns in schema
order, then the outcome columns where present. Types of the returned columns:

* numeric feature -> float64 (NaN = missing); a value outside the domain of the column's declared
  transform (``log``: > 0, ``log1p``: > -1) is a problem, so it is refused where the table is read
  (the converter: every development and test patient) rather than at training
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
import numbers
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

import numpy as np
import pandas as pd

from clinical.schema import TRANSFORM_DOMAINS, ClinicalSchema, ColumnSpec, SchemaError, outside_transform_domain

__all__ = [
    "ClinicalTableError",
    "CASE_ID_COLUMN",
    "read_clinical_table",
    "read_case_table",
    "read_outcomes_table",
    "read_follow_up_table",
    "parse_follow_up",
    "parse_feature_column",
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


def _read_csv_as_text(path: Path, what: str = "clinical table") -> pd.DataFrame:
    """Read every column as text; typed parsing happens per column afterwards.

    ``what`` names the file in the not-found message (``"clinical table"``, ``"file"``).
    """
    if not path.is_file():
        raise ClinicalTableError(f"{path}: {what} not found")
    _check_layout(path)
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ClinicalTableError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ClinicalTableError(f"{path}: cannot be read as CSV: {e}") from None
    # Header cells and values with stray spaces are common in spreadsheet exports.
    table.columns = [str(c).strip() for c in table.columns]
    for column in table.columns:
        stripped = table[column].str.strip()
        table[column] = stripped.mask(stripped == "")
    return table


def _check_ids(table: pd.DataFrame, path: Path, id_column: str) -> pd.DataFrame:
    """Every id present and unique (the error names the file and the lines); returns the table
    indexed by its ids, in file order."""
    ids = table[id_column]
    lines = np.arange(len(table)) + 2  # 1-based, after the header line
    if ids.isna().any():
        raise ClinicalTableError(f"{path}: empty '{id_column}' on line(s) {lines[ids.isna().to_numpy()].tolist()}")
    duplicated = sorted(ids[ids.duplicated()].unique())
    if duplicated:
        on_lines = lines[ids.isin(duplicated).to_numpy()].tolist()
        raise ClinicalTableError(f"{path}: duplicate {id_column}(s) {_ids_text(duplicated)} "
                                 f"(lines {_ids_text(on_lines)})")
    return table.set_index(id_column)


def _parse_zero_one(values: pd.Series) -> pd.Series:
    """Text or numbers -> 0.0/1.0 (NaN where empty); values that are not 0 or 1 become a sentinel of -1."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & ~numbers.isin([0.0, 1.0])
    return numbers.where(~bad, -1.0)


def _category_text(value):
    """A category as text: an integer-coded category (``2`` or ``2.0``, e.g. a CSV read without
    ``dtype=str``) means the string ``"2"``; anything else that is not text is returned as is."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return value


def parse_feature_column(spec: ColumnSpec, values: pd.Series) -> Tuple[np.ndarray, np.ndarray]:
    """Parse one feature column by its declared type: the only cell parser of the project.

    Used by the table readers (cells are text there) and by
    :class:`clinical.preprocessing.ClinicalPreprocessor` (a frame from the readers, or one built in
    memory with numbers). Missing cells (NaN, None, empty) stay missing.

    * ``numeric``: a number, or text that parses as one (``pd.to_numeric``, as pandas reads a CSV);
      booleans, infinities and unparseable text are bad. Returns float64.
    * ``binary``: 0 or 1 as text (``"0"``, ``"1"``, ``"1.0"``) or as a number / boolean. Returns
      float64 0.0/1.0.
    * ``categorical``: one of the declared categories; an integral number means its text
      (``2.0`` -> ``"2"``). Returns object (the category strings).

    Returns
    -------
    parsed : ndarray
        The typed values, NaN where missing or bad.
    bad : ndarray of bool
        Where a present value does not fit the declared type.
    """
    present = values.notna().to_numpy()
    if spec.type == "numeric":
        parsed = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        bad = present & ~np.isfinite(parsed)
        if values.dtype == object or values.dtype == bool:
            bad |= values.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
    elif spec.type == "binary":
        parsed = _parse_zero_one(values).to_numpy(dtype=float)
        bad = parsed == -1.0
    else:
        text = values.map(_category_text)
        bad = present & ~text.isin(spec.categories).to_numpy()
        parsed = text.to_numpy(dtype=object).copy()
    parsed[bad | ~present] = np.nan
    return parsed, bad


_BAD_VALUE_TEXT = {"numeric": "is not a finite number", "binary": "is not 0 or 1"}


def _feature_problems(table: pd.DataFrame, schema: ClinicalSchema, feature_columns: Sequence[str],
                      id_column: str, out: pd.DataFrame) -> List[str]:
    """Parse the feature columns into ``out``; one problem line per bad cell."""
    problems = []
    for name in feature_columns:
        spec = schema.columns[name]
        parsed, bad = parse_feature_column(spec, table[name])
        what = _BAD_VALUE_TEXT.get(spec.type, f"is not one of the declared categories {list(spec.categories or ())}")
        prefix = "binary value" if spec.type == "binary" else "value"
        for pid, value in zip(table.index[bad], table[name][bad], strict=True):
            problems.append(f"{id_column} {pid}: column '{name}': {prefix} {value!r} {what}")
        if spec.type == "numeric" and spec.transform is not None:
            outside = outside_transform_domain(spec, parsed)
            domain = TRANSFORM_DOMAINS[spec.transform][1]
            for pid, value in zip(table.index[outside], table[name][outside], strict=True):
                problems.append(f"{id_column} {pid}: column '{name}': value {value!r} is outside the domain of its "
                                f"declared transform: transform '{spec.transform}' needs {domain} (schema "
                                f"{schema.source}; fix the value, leave it empty as missing, or declare another "
                                f"transform)")
        out[name] = parsed if spec.type == "categorical" else parsed.astype(float)
    return problems


def parse_follow_up(table: pd.DataFrame, id_column: str, time_column: str, event_column: str,
                    required: bool = True) -> Tuple[pd.Series, pd.Series, List[str]]:
    """Validate the follow-up columns of an id-indexed text table: the one time/event check.

    The rule everywhere (conversion, training, prediction, evaluation): the time is a finite number
    **> 0** (a follow-up of 0 months is a data error, and a Cox / discrete-time likelihood has no
    interval for it) and the event is 0 or 1 (``1.0``/``0.0`` accepted).

    Parameters
    ----------
    table : DataFrame
        Indexed by the id column (as the readers build it), cells as text (numbers are accepted too).
    id_column, time_column, event_column : str
        Names used in the problem lines.
    required : bool
        If True, a missing time or event is a problem; if False, it stays missing (NaN).

    Returns
    -------
    time : Series of float64
    event : Series of int64 (float64 with NaN when ``required`` is False and some are missing)
    problems : list of str
        One line per bad cell, ``"<id_column> <id>: column '<name>': <problem>"``; the caller
        raises them together with the file name.
    """
    problems: List[str] = []
    raw_time = table[time_column]
    time = pd.to_numeric(raw_time, errors="coerce").astype(float)
    if required:
        problems += [f"{id_column} {pid}: column '{time_column}': missing follow-up time"
                     for pid in table.index[raw_time.isna()]]
    bad = raw_time.notna() & ~(np.isfinite(time) & (time > 0))
    problems += [f"{id_column} {pid}: column '{time_column}': {raw_time[pid]!r} is not a number > 0"
                 for pid in table.index[bad]]
    raw_event = table[event_column]
    event = _parse_zero_one(raw_event)
    if required:
        problems += [f"{id_column} {pid}: column '{event_column}': missing event indicator"
                     for pid in table.index[raw_event.isna()]]
    problems += [f"{id_column} {pid}: column '{event_column}': {raw_event[pid]!r} is not 0 or 1"
                 for pid in table.index[event == -1.0]]
    event = event.mask(event == -1.0)
    return time, (event if event.isna().any() else event.astype(np.int64)), problems


def _raise_problems(path: Path, problems: Sequence[str]) -> None:
    if problems:
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ClinicalTableError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)


def _check_columns(table: pd.DataFrame, path: Path, schema: ClinicalSchema, id_column: str, outcomes: str,
                   extra_columns: Sequence[str], feature_columns: Sequence[str], require_centre: bool) -> None:
    """All required columns present, none unknown (the user declares columns in the schema)."""
    time_col, event_col, centre_col = schema.time_column, schema.event_column, schema.centre_column
    if id_column not in table.columns:
        raise ClinicalTableError(f"{path}: id column '{id_column}' missing; columns are {list(table.columns)}")
    duplicated_headers = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if duplicated_headers:
        raise ClinicalTableError(f"{path}: column(s) {duplicated_headers} appear more than once in the header")
    outcome_columns = [time_col, event_col]
    allowed = {id_column, *feature_columns, *extra_columns}
    if require_centre or centre_col in table.columns:
        allowed.add(centre_col)
    if outcomes != "forbidden":
        allowed.update(outcome_columns)
    unknown = [c for c in table.columns if c not in allowed]
    if unknown and outcomes == "forbidden" and set(unknown) & set(outcome_columns):
        raise ClinicalTableError(
            f"{path}: outcome column(s) {[c for c in unknown if c in outcome_columns]} found in a feature "
            f"table; outcomes belong in the separate outcomes table")
    if unknown:
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
    time_col, event_col, centre_col = schema.time_column, schema.event_column, schema.centre_column
    feature_columns = list(schema.columns) if features else []
    _check_columns(table, path, schema, id_column, outcomes, extra_columns, feature_columns, require_centre)
    table = _check_ids(table, path, id_column)
    out = pd.DataFrame(index=table.index)
    out.index.name = id_column
    problems: List[str] = []

    # centre: text, never missing (stratification and external test use it)
    if centre_col in table.columns:
        empty = table.index[table[centre_col].isna()]
        if len(empty):
            problems.append(f"{id_column}(s) {_ids_text(empty)}: column '{centre_col}': empty centre")
        out[centre_col] = table[centre_col]
    problems += _feature_problems(table, schema, feature_columns, id_column, out)
    has_time, has_event = time_col in table.columns, event_col in table.columns
    if outcomes != "forbidden" and (has_time or has_event):
        if has_time and has_event:
            time, event, follow_up_problems = parse_follow_up(table, id_column, time_col, event_col,
                                                              required=outcomes == "required")
            problems += follow_up_problems
            out[time_col], out[event_col] = time, event
        else:
            problems.append(f"columns '{time_col}' and '{event_col}' must come together")
    for name in extra_columns:
        out[name] = table[name]
    _raise_problems(path, problems)
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


def read_follow_up_table(path: str | Path, time_column: str = "dfs_months", event_column: str = "dfs_event",
                         id_column: str = CASE_ID_COLUMN, keep_columns: Sequence[str] = ("set",)) -> pd.DataFrame:
    """Read and validate an outcomes CSV from any source, without a schema (the evaluation's reader).

    Same rules as :func:`read_outcomes_table` for what they share (the file, the ids, the time
    and the event, see :func:`parse_follow_up`), but other columns are allowed and ignored: a
    prediction-like or cohort table can serve as the outcomes.

    Parameters
    ----------
    path : str or Path
        CSV with ``id_column``, ``time_column`` and ``event_column``, each complete.
    time_column, event_column, id_column : str
        Column names.
    keep_columns : sequence of str
        Optional text columns returned when present (``"set"`` by default); empty cells are NaN.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``id_column`` in file order; columns ``time_column`` (float64 > 0),
        ``event_column`` (int64 0/1), then those of ``keep_columns`` that the file has. May have
        zero rows.

    Raises
    ------
    ClinicalTableError
        Naming the file and, for a bad value, the case and the column; a duplicate or empty id
        names the lines.
    """
    path = Path(path)
    table = _read_csv_as_text(path, what="file")
    missing = [c for c in (id_column, time_column, event_column) if c not in table.columns]
    if missing:
        raise ClinicalTableError(f"{path}: required column(s) {missing} missing (columns: {list(table.columns)})")
    table = _check_ids(table, path, id_column)
    time, event, problems = parse_follow_up(table, id_column, time_column, event_column, required=True)
    _raise_problems(path, problems)
    out = pd.DataFrame({time_column: time, event_column: event}, index=table.index)
    for name in keep_columns:
        if name in table.columns:
            out[name] = table[name]
    return out


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
