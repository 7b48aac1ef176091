"""Locating and reading the multitask tables of a converted dataset (clinical table, outcomes,
series availability); what the tables are called is in :mod:`nnunet_multitask.contract`.

The converter writes ``clinical.csv`` (features of every case, no outcomes), ``outcomes.csv``
(follow-up of the development cohort only) and ``outcomes_test.csv`` (evaluation only) into the
raw dataset folder. Training reads the first two; nothing here ever opens the test outcomes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from clinical.errors import MultitaskError
from clinical.schema import ClinicalSchema
from nnunet_multitask.contract import REQUIRED_SERIES


class MultitaskDatasetError(MultitaskError, RuntimeError):
    pass


def dataset_table_path(dataset_name: str, file_name: str) -> Path:
    """Find a table of the dataset: ``$nnUNet_preprocessed/<name>/`` first, then ``$nnUNet_raw/<name>/``."""
    tried = []
    for var in ("nnUNet_preprocessed", "nnUNet_raw"):
        root = os.environ.get(var)
        if root:
            p = Path(root) / dataset_name / file_name
            tried.append(str(p))
            if p.is_file():
                return p
    raise MultitaskDatasetError(f"table '{file_name}' of {dataset_name} not found (looked in: "
                                f"{', '.join(tried) or 'nothing: set nnUNet_raw'})")


def read_features(path: Path, schema: ClinicalSchema) -> pd.DataFrame:
    """The clinical feature table keyed by case id (validated against the schema)."""
    from clinical.tables import read_case_table
    return read_case_table(path, schema)


def read_outcomes(path: Path, schema: ClinicalSchema) -> pd.DataFrame:
    """Development-cohort outcomes keyed by case id (validated as the converter wrote them)."""
    from clinical.tables import read_outcomes_table
    return read_outcomes_table(path, schema)


def lookup_rows(df: pd.DataFrame, keys, what: str, path: Optional[Path] = None) -> pd.DataFrame:
    keys = [str(k) for k in keys]
    missing = [k for k in keys if k not in df.index]
    if missing:
        raise MultitaskDatasetError(f"{what}{' in ' + str(path) if path else ''}: no row for case(s) {missing}")
    return df.loc[keys]


def read_series_availability(dataset_name: str, contract, channel_names: dict) -> Optional[pd.DataFrame]:
    """Which image series of each case are real (1) or filled in for a missing one (0).

    Reads the ``series_availability_table`` of the dataset's contract
    (:class:`nnunet_multitask.contract.DatasetContract`; written by the converter, a dataset
    converted before it existed has none: None, every series real). Columns are the dataset's
    channel names in channel order; rows are keyed by case id.

    Raises
    ------
    MultitaskDatasetError
        Columns that are not the dataset's channels, values other than 0/1, duplicate case ids or
        a case without its required series (T2).
    """
    name = contract.series_availability_table
    if not name:
        return None
    path = dataset_table_path(dataset_name, name)
    try:
        table = pd.read_csv(path, dtype={"case_id": str})
    except (OSError, ValueError) as e:
        raise MultitaskDatasetError(f"{path}: cannot be read as a CSV table: {e}") from None
    series = [channel_names[str(i)] for i in range(len(channel_names))]
    if list(table.columns) != ["case_id"] + series:
        raise MultitaskDatasetError(f"{path}: columns {list(table.columns)}, expected {['case_id'] + series}")
    duplicated = table["case_id"][table["case_id"].duplicated()].tolist()
    if duplicated:
        raise MultitaskDatasetError(f"{path}: case id(s) {duplicated[:5]} appear more than once")
    values = table[series]
    bad = ~values.isin([0, 1])
    if bad.to_numpy().any():
        row = int(np.flatnonzero(bad.to_numpy().any(1))[0])
        raise MultitaskDatasetError(f"{path}: case {table['case_id'].iloc[row]}: availability must be 0 or 1, got "
                                    f"{values.iloc[row].tolist()}")
    for required in REQUIRED_SERIES:
        if required in series and (values[required] != 1).any():
            cases = table["case_id"][values[required] != 1].tolist()
            raise MultitaskDatasetError(f"{path}: case(s) {cases[:5]} lack {required}, which every case needs")
    return table.set_index("case_id").astype(np.float32)
