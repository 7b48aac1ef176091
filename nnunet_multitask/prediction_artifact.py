"""The prediction artifact: ``predictions.csv`` and its provenance ``predictions.json``, typed.

One module owns what a prediction folder holds (the model of :mod:`nnunet_multitask.contract` for
the dataset side): the file names, the column description (:class:`ColumnSources`), the
provenance record (:class:`PredictionRecord`, with the part record :class:`PartRecord` of a
``-num_parts`` run), the format version, and their reading (:func:`read_predictions`) and
serialisation (:func:`prediction_texts`). The predictor, the merge of parts, the report and the
saliency read and write through it; readers ask ``record.horizon_months`` instead of
``meta.get("horizon_months", 36)``.

``predictions.json`` carries ``"format_version"`` (:data:`FORMAT_VERSION`); a file without it was
written before the field existed and is read as version 1; a file of another version is refused
with a message naming it. The record's keys are the JSON keys, in the order they are written.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from os.path import basename, dirname, isdir, isfile, join
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from clinical.errors import MultitaskError
from nnunet_multitask.contract import HeadConfig

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
#: Cases that failed in a ``--keep-going`` run, with the reason.
FAILURES_CSV = "failures.csv"
#: New patients predicted from a cohort folder: case id -> patient id, the only file naming patients.
PATIENT_MAPPING_CSV = "patient_mapping.csv"
#: Exit status of a ``--keep-going`` run (or a merge) that finished with failed cases (2: refused, nothing written).
EXIT_FINISHED_WITH_FAILURES = 3
#: Version of the ``predictions.json`` layout this module writes and reads.
FORMAT_VERSION = 1
#: ``--recalibrated`` keeps the head's own value of a recalibrated column as ``<column>_uncalibrated``.
UNCALIBRATED = "_uncalibrated"
#: The horizon (months) of a prediction whose record does not state it: the model's default
#: (:class:`nnunet_multitask.contract.HeadConfig`), stated there and nowhere on the prediction side.
DEFAULT_HORIZON_MONTHS = HeadConfig.horizon_months


class MultitaskPredictionError(MultitaskError, RuntimeError):
    """The model, an input case, the clinical table or the output folder cannot be used; the
    message names the case / file and the problem."""


class PredictionFormatError(MultitaskPredictionError):
    """A ``predictions.json`` / ``predictions.csv`` that cannot be read as a prediction artifact
    (unknown format version, unknown or missing keys); the message names the file."""


# ---------------------------------------------------------------------- columns
def _head_source(column: str) -> Optional[str]:
    if column.startswith("p_recurrence_"):
        return "classification head: sigmoid of its logit (P(recurrence by the horizon))"
    if column == "risk_score":
        return "survival head: log-risk (Cox) or -log S(horizon) (discrete-time); higher = higher risk"
    if column.startswith("surv_prob_"):
        return "survival head (discrete-time): predicted recurrence-free survival S(t)"
    return None


@dataclass(frozen=True)
class ColumnSources:
    """Which head each head-output column of ``predictions.csv`` comes from (``predictions.json``
    ``column_sources``): column -> description, in column order."""

    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_columns(cls, columns: Sequence[str]) -> "ColumnSources":
        """The description of the given columns; a ``<column>_sd`` is that column's spread over
        folds; with ``--recalibrated`` (a ``recalibrated`` column) the probabilities are
        recalibrated and ``<column>_uncalibrated`` holds the head's own value."""
        recalibrated = "recalibrated" in columns
        sources = {}
        for column in columns:
            base = column[:-3] if column.endswith("_sd") else column
            raw = base.endswith(UNCALIBRATED)
            head = base[:-len(UNCALIBRATED)] if raw else base
            source = _head_source(head)
            if source is None:
                continue
            if raw:
                source = "before --recalibrated: " + source
            elif recalibrated and head.startswith("surv_prob_"):
                source = ("survival head, recalibrated: S0'(t) ** exp(slope * (lp - centre)) with the refitted "
                          "baseline (predictions.json 'recalibration')")
            elif recalibrated and head != "risk_score":
                source += "; recalibrated (predictions.json 'recalibration')"
            sources[column] = source + ("; sample sd over folds" if base != column else "")
        return cls(sources)

    @classmethod
    def from_dict(cls, block: Optional[Mapping[str, str]]) -> "ColumnSources":
        return cls(dict(block or {}))

    def to_dict(self) -> Dict[str, str]:
        return dict(self.sources)


def column_sources(columns: Sequence[str]) -> dict:
    """``ColumnSources.from_columns(columns).to_dict()``."""
    return ColumnSources.from_columns(columns).to_dict()


# ---------------------------------------------------------------------- records
def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks: checkpoints, tables, recalibration inputs."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def case_list_sha256(cases: Sequence[str]) -> str:
    """SHA-256 of the sorted case ids, one per line."""
    return hashlib.sha256("\n".join(sorted(cases)).encode()).hexdigest()


def _as_tuple(value):
    return None if value is None else tuple(value)


def _unknown_keys(cls, block: Mapping) -> List[str]:
    return sorted(set(block) - {f.name for f in fields(cls)})


@dataclass(frozen=True)
class PartRecord:
    """The ``"part"`` record of one part of a ``-num_parts`` run (:mod:`nnunet_multitask.prediction_parts`)."""

    part_id: int
    num_parts: int
    cases: Tuple[str, ...]
    all_cases: Tuple[str, ...]
    all_cases_sha256: str
    input_folder: Optional[str] = None
    clinical_table_sha256: Optional[str] = None

    REQUIRED = ("part_id", "num_parts", "cases", "all_cases", "all_cases_sha256")

    @classmethod
    def from_dict(cls, block: Mapping, source: str = PREDICTIONS_JSON) -> "PartRecord":
        missing = [k for k in cls.REQUIRED if k not in block]
        if missing:
            raise PredictionFormatError(f"{source}: the part record lacks {missing}")
        unknown = _unknown_keys(cls, block)
        if unknown:
            raise PredictionFormatError(f"{source}: unknown key(s) {unknown} in the part record")
        values = dict(block)
        values["cases"], values["all_cases"] = tuple(values["cases"]), tuple(values["all_cases"])
        return cls(**values)

    def to_dict(self) -> dict:
        return {"part_id": int(self.part_id), "num_parts": int(self.num_parts), "cases": list(self.cases),
                "all_cases": list(self.all_cases), "all_cases_sha256": self.all_cases_sha256,
                "input_folder": self.input_folder, "clinical_table_sha256": self.clinical_table_sha256}


#: keys written only when set (a part's record, a recalibrated run, a merge)
_OPTIONAL_KEYS = ("part", "recalibration", "merged_from", "merged_cases_sha256")
_TUPLE_KEYS = ("folds", "clinical_columns", "columns", "failed_cases")


@dataclass(frozen=True)
class PredictionRecord:
    """``predictions.json``: the provenance of a prediction folder, its settings and its tables.

    Every key the predictor writes, in the order it writes them. Fields a file lacks (an older or
    hand-made file) are None; :attr:`horizon` gives the horizon with its default.
    """

    format_version: int = FORMAT_VERSION
    model_folder: Optional[str] = None
    trainer: Optional[str] = None
    plans: Optional[str] = None
    configuration: Optional[str] = None
    folds: Optional[Tuple[str, ...]] = None
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[Mapping[str, str]] = None
    nnunetv2_version: Optional[str] = None
    nnunet_multitask_version: Optional[str] = None
    created: Optional[str] = None
    n_cases: Optional[int] = None
    horizon_months: Optional[float] = None
    survival_head: Optional[str] = None
    clinical_table: Optional[str] = None
    clinical_columns: Optional[Tuple[str, ...]] = None
    impute_missing_clinical: Optional[bool] = None
    allow_missing_series: Optional[bool] = None
    resampled_to_first_channel: Optional[Mapping[str, List[str]]] = None
    channel_availability: Optional[bool] = None
    patient_level: Optional[str] = None
    fold_ensemble: Optional[str] = None
    tile_step_size: Optional[float] = None
    use_mirroring: Optional[bool] = None
    columns: Optional[Tuple[str, ...]] = None
    column_sources: Optional[ColumnSources] = None
    part: Optional[PartRecord] = None
    recalibration: Optional[Mapping] = None
    failed_cases: Optional[Tuple[str, ...]] = None
    complete: Optional[bool] = None
    tables_sha256: Optional[Mapping[str, str]] = None
    merged_from: Optional[Tuple[Mapping, ...]] = None
    merged_cases_sha256: Optional[str] = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, meta: Mapping, source: str = PREDICTIONS_JSON) -> "PredictionRecord":
        """Read a ``predictions.json`` object; no version field: version 1; another version than
        :data:`FORMAT_VERSION` or a key this version does not know is an error naming ``source``."""
        if not isinstance(meta, Mapping):
            raise PredictionFormatError(f"{source}: not a JSON object but {type(meta).__name__}")
        version = meta.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise PredictionFormatError(
                f"{source}: format_version {version!r} is not one this nnunet_multitask reads (version "
                f"{FORMAT_VERSION}): it was written by another version of nnunet_multitask; read it with that "
                f"version, or predict again")
        unknown = _unknown_keys(cls, meta)
        if unknown:
            raise PredictionFormatError(f"{source}: unknown key(s) {unknown} for format_version {FORMAT_VERSION}")
        values = dict(meta)
        values["format_version"] = version
        for key in _TUPLE_KEYS:
            values[key] = _as_tuple(values.get(key))
        if values.get("column_sources") is not None:
            values["column_sources"] = ColumnSources.from_dict(values["column_sources"])
        if values.get("part") is not None:
            if not isinstance(values["part"], Mapping):
                raise PredictionFormatError(f"{source}: the part record is not an object")
            values["part"] = PartRecord.from_dict(values["part"], source)
        if values.get("merged_from") is not None:
            values["merged_from"] = tuple(values["merged_from"])
        return cls(**values)

    @classmethod
    def read(cls, path: str) -> "PredictionRecord":
        """The record of a ``predictions.json`` file."""
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise PredictionFormatError(f"{path} cannot be read: {e}") from None
        return cls.from_dict(meta, source=path)

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """The JSON object (keys in writing order; the optional blocks only when set)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL_KEYS:
                continue
            if f.name in _TUPLE_KEYS and value is not None:
                value = list(value)
            elif f.name in ("column_sources", "part") and value is not None:
                value = value.to_dict()
            elif f.name == "merged_from" and value is not None:
                value = [dict(m) for m in value]
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # ------------------------------------------------------------------ meaning
    @property
    def horizon(self) -> float:
        """The horizon (months) the prediction was made for (:data:`DEFAULT_HORIZON_MONTHS` when unstated)."""
        return float(DEFAULT_HORIZON_MONTHS if self.horizon_months is None else self.horizon_months)

    @property
    def fold_list(self) -> List[str]:
        return [str(f) for f in self.folds or ()]

    @property
    def model_columns(self) -> List[str]:
        """The clinical columns the model used (empty for an image-only model)."""
        return list(self.clinical_columns or ())

    @property
    def failed(self) -> List[str]:
        return list(self.failed_cases or ())

    def identity(self, per_run_keys: Sequence[str]) -> dict:
        """The JSON form without ``per_run_keys`` (what parts of one run must share)."""
        return {k: v for k, v in self.to_dict().items() if k not in per_run_keys}


# ---------------------------------------------------------------------- files
def prediction_texts(table: pd.DataFrame, record: PredictionRecord,
                     failures: Optional[Mapping[str, str]] = None) -> Tuple[PredictionRecord, Dict[str, str]]:
    """(the record with ``failed_cases``, ``complete`` and ``tables_sha256`` set, {file name: text})
    of a prediction: ``failures.csv`` (when cases failed), ``predictions.json``, ``predictions.csv``,
    in the order they are to be written (``predictions.csv`` last)."""
    text = table.to_csv(index=False)
    digests = {PREDICTIONS_CSV: hashlib.sha256(text.encode()).hexdigest()}
    texts = {}
    if failures:
        failed = pd.DataFrame({"case_id": sorted(failures), "reason": [failures[c] for c in sorted(failures)]})
        texts[FAILURES_CSV] = failed.to_csv(index=False)
        digests[FAILURES_CSV] = hashlib.sha256(texts[FAILURES_CSV].encode()).hexdigest()
    record = replace(record, failed_cases=tuple(sorted(failures or {})), complete=not failures,
                     tables_sha256=digests)
    texts[PREDICTIONS_JSON] = record.to_json()
    texts[PREDICTIONS_CSV] = text
    return record, texts


def read_predictions(folder_or_csv: str, dtype: Optional[Mapping] = None) -> Tuple[pd.DataFrame, PredictionRecord]:
    """(``predictions.csv`` as a frame, its :class:`PredictionRecord`) of a prediction folder, or of
    a ``predictions.csv`` path (its ``predictions.json`` beside it). ``dtype``: passed to
    ``read_csv`` (default: ``case_id`` as text)."""
    if isdir(folder_or_csv):
        csv_path, json_path = join(folder_or_csv, PREDICTIONS_CSV), join(folder_or_csv, PREDICTIONS_JSON)
    else:
        csv_path = folder_or_csv
        json_path = join(dirname(folder_or_csv), PREDICTIONS_JSON)
        if basename(csv_path) != PREDICTIONS_CSV and isfile(csv_path[:-4] + ".json"):
            json_path = csv_path[:-4] + ".json"
    for p in (csv_path, json_path):
        if not isfile(p):
            raise PredictionFormatError(f"{p} not found: a finished prediction folder holds {PREDICTIONS_CSV} and "
                                        f"{PREDICTIONS_JSON}")
    record = PredictionRecord.read(json_path)
    table = pd.read_csv(csv_path, dtype=dict(dtype) if dtype is not None else {"case_id": str})
    return table, record
