"""Clinical table schema: which column belongs to which group, and its declared type.

Nothing about a column is guessed from the data: a column the schema does not name is an
error where a table is validated, and a categorical column lists its categories up front so
the encoded width is fixed before any patient is seen (it then does not depend on the fold).

Keys of a column entry (``"columns": {"<name>": {...}}``)
--------------------------------------------------------
``group``      ``"pretreatment"`` or ``"postoperative"`` (required)
``type``       ``"numeric"``, ``"binary"`` or ``"categorical"`` (required)
``categories`` the declared categories, required for (and only allowed on) ``categorical``
``unit``       free text, documentation only
``transform``  optional, ``numeric`` only: ``"log"`` (``x -> ln(x)``, needs ``x > 0``) or
               ``"log1p"`` (``x -> ln(1 + x)``, needs ``x > -1``) for a skewed value whose effect
               is on a log scale (CEA); :class:`clinical.preprocessing.ClinicalPreprocessor`
               applies it before imputation and standardisation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from clinical.errors import MultitaskError

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("larc_schema.json")
COLUMN_TYPES = ("numeric", "categorical", "binary")
#: Transforms a ``numeric`` column may declare (``"transform"``): ``log`` = ln(x), ``log1p`` = ln(1 + x).
NUMERIC_TRANSFORMS = ("log", "log1p")
#: Domain of each transform: a value must be strictly greater than the bound; the domain in words.
TRANSFORM_DOMAINS = {"log": (0.0, "values > 0"), "log1p": (-1.0, "values > -1")}
assert set(TRANSFORM_DOMAINS) == set(NUMERIC_TRANSFORMS)
GROUPS = ("pretreatment", "postoperative")


class SchemaError(MultitaskError, ValueError):
    """The schema itself is malformed, or a table does not match it."""


class _DuplicateKey(Exception):
    pass


def _object_without_duplicates(pairs) -> dict:
    """``json.loads`` object hook: a key given twice in one object raises (the default keeps the last)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_kind(value) -> str:
    """What a parsed JSON value is, in words (for the "must be a JSON object" message)."""
    if value is None:
        return "null"
    kind = {bool: "a boolean", list: "a list", str: "a string", int: "a number", float: "a number"}.get(type(value))
    text = json.dumps(value) if kind else repr(value)
    return f"{kind or type(value).__name__} ({text[:60]}{'...' if len(text) > 60 else ''})"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    group: str
    type: str
    categories: Optional[tuple] = None
    unit: Optional[str] = None
    transform: Optional[str] = None  # one of NUMERIC_TRANSFORMS, numeric columns only

    def to_dict(self) -> dict:
        d = {"group": self.group, "type": self.type}
        if self.categories is not None:
            d["categories"] = list(self.categories)
        if self.unit is not None:
            d["unit"] = self.unit
        if self.transform is not None:
            d["transform"] = self.transform
        return d


def outside_transform_domain(spec: "ColumnSpec", values) -> np.ndarray:
    """Where observed values of a numeric column lie outside its declared transform's domain.

    Parameters
    ----------
    spec : ColumnSpec
        The column; without a ``transform`` nothing is outside.
    values : array-like of float
        The parsed values (NaN = missing: never outside, it is imputed).

    Returns
    -------
    numpy.ndarray of bool
        True where a value is observed and not strictly greater than the domain's bound
        (:data:`TRANSFORM_DOMAINS`: ``log`` needs ``x > 0``, ``log1p`` needs ``x > -1``).
    """
    values = np.asarray(values, dtype=float)
    if spec.transform is None:
        return np.zeros(values.shape, dtype=bool)
    if spec.transform not in TRANSFORM_DOMAINS:
        raise SchemaError(f"column '{spec.name}': unknown transform {spec.transform!r}, expected one of "
                          f"{NUMERIC_TRANSFORMS}")
    bound = TRANSFORM_DOMAINS[spec.transform][0]
    return ~np.isnan(values) & ~(values > bound)


def _column_spec(name: str, spec, source: str) -> ColumnSpec:
    """One validated entry of a schema's ``"columns"`` mapping."""
    if not isinstance(spec, dict):
        raise SchemaError(f"{source}: column '{name}': expected an object, got {spec!r}")
    group, typ = spec.get("group"), spec.get("type")
    if group not in GROUPS:
        raise SchemaError(f"{source}: column '{name}': group must be one of {GROUPS}, got {group!r}")
    if typ not in COLUMN_TYPES:
        raise SchemaError(f"{source}: column '{name}': type must be one of {COLUMN_TYPES}, got {typ!r}")
    cats = spec.get("categories")
    if typ == "categorical":
        if not isinstance(cats, list) or not cats or len(set(map(str, cats))) != len(cats):
            raise SchemaError(f"{source}: categorical column '{name}' must declare distinct 'categories' (a "
                              f"non-empty list), got {cats!r}")
        cats = tuple(str(c) for c in cats)
    elif cats is not None:
        raise SchemaError(f"{source}: column '{name}' of type {typ} cannot declare categories")
    unknown = set(spec) - {"group", "type", "categories", "unit", "transform"}
    if unknown:
        raise SchemaError(f"{source}: column '{name}': unknown keys {sorted(unknown)}")
    transform = spec.get("transform")
    if transform is not None:
        if not isinstance(transform, str) or transform not in NUMERIC_TRANSFORMS:
            raise SchemaError(f"{source}: column '{name}': transform must be one of "
                              f"{NUMERIC_TRANSFORMS}, got {transform!r}")
        if typ != "numeric":
            raise SchemaError(f"{source}: column '{name}' of type {typ} cannot declare a transform "
                              f"({transform!r}): only numeric columns can")
    return ColumnSpec(name, group, typ, cats, spec.get("unit"), transform)


@dataclass(frozen=True)
class ClinicalSchema:
    columns: Dict[str, ColumnSpec]
    id_column: str = "patient_id"
    centre_column: str = "centre"
    time_column: str = "dfs_months"
    event_column: str = "dfs_event"
    time_unit: str = "months"
    source: str = field(default="<dict>", compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "ClinicalSchema":
        if not isinstance(d, dict):
            raise SchemaError(f"{source}: a schema must be a JSON object ({{\"columns\": {{...}}, ...}}), got "
                              f"{_json_kind(d)}")
        if "columns" not in d or not isinstance(d["columns"], dict) or not d["columns"]:
            raise SchemaError(f"{source}: schema needs a non-empty 'columns' mapping")
        cols = {name: _column_spec(str(name), spec, source) for name, spec in d["columns"].items()}
        kw = {k: d[k] for k in ("id_column", "centre_column", "time_column", "event_column", "time_unit") if k in d}
        for key, value in kw.items():
            if not isinstance(value, str) or not value.strip():
                raise SchemaError(f"{source}: '{key}' must be a non-empty string, got {value!r}")
        reserved = {kw.get("id_column", "patient_id"), kw.get("centre_column", "centre"),
                    kw.get("time_column", "dfs_months"), kw.get("event_column", "dfs_event"), "case_id"}
        clash = reserved & set(cols)
        if clash:
            raise SchemaError(f"{source}: feature columns {sorted(clash)} clash with id/centre/outcome columns")
        return cls(columns=cols, source=source, **kw)

    @classmethod
    def load(cls, path: Optional[str | Path] = None) -> "ClinicalSchema":
        """Read and validate a schema file (default :data:`DEFAULT_SCHEMA_PATH`).

        Raises
        ------
        SchemaError
            The file is missing or unreadable, is not JSON, its JSON is not an object (``null``, a
            list, a number, a string), or the object is not a valid schema; the message names the file.
        """
        path = Path(path) if path is not None else DEFAULT_SCHEMA_PATH
        try:
            # utf-8-sig: a byte-order mark (Windows editors) is not an error; duplicate keys are (JSON keeps the last)
            d = json.loads(Path(path).read_text(encoding="utf-8-sig"), object_pairs_hook=_object_without_duplicates)
        except _DuplicateKey as e:
            raise SchemaError(f"schema file {path} declares the key '{e}' more than once in one object (JSON would "
                              f"keep only the last): remove the duplicate") from None
        except FileNotFoundError:
            raise SchemaError(f"schema file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise SchemaError(f"schema file {path} is not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise SchemaError(f"schema file {path} is not UTF-8 text: {e}") from None
        except OSError as e:  # a folder, no permission
            raise SchemaError(f"schema file {path} cannot be read: {e}") from None
        if not isinstance(d, dict):
            raise SchemaError(f"schema file {path} must be a JSON object ({{\"columns\": {{...}}, ...}}), but it "
                              f"holds {_json_kind(d)}")
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        return {"id_column": self.id_column, "centre_column": self.centre_column,
                "time_column": self.time_column, "event_column": self.event_column,
                "time_unit": self.time_unit,
                "columns": {n: c.to_dict() for n, c in self.columns.items()}}

    # ------------------------------------------------------------------ queries
    def group_columns(self, groups: Sequence[str]) -> List[str]:
        """Feature columns of the given groups, in schema order."""
        bad = set(groups) - set(GROUPS)
        if bad:
            raise SchemaError(f"unknown clinical group(s) {sorted(bad)}; known: {GROUPS}")
        return [n for n, c in self.columns.items() if c.group in groups]

    def subset(self, groups: Sequence[str]) -> "ClinicalSchema":
        keep = set(self.group_columns(groups))
        return ClinicalSchema({n: c for n, c in self.columns.items() if n in keep}, self.id_column,
                              self.centre_column, self.time_column, self.event_column, self.time_unit,
                              self.source)
