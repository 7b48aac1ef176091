"""Leakage-safe preprocessing of the clinical table: fitted on the training fold only, serialisable.

What each declared column type becomes
--------------------------------------
* ``numeric``     -> the column's declared ``transform`` if any (see below), then median
  imputation, then standardisation with the training fold's mean and standard deviation
  (``StandardScaler``: a column with zero spread gets scale 1, so it maps to 0, never to inf/NaN).
  One feature, named after the column.
* ``binary``      -> most-frequent imputation, kept as 0/1 (not standardised: a 0/1 input is already
  on a unit scale, and keeping it readable makes the fitted state easy to audit). One feature.
* ``categorical`` -> most-frequent imputation, then one-hot over the categories DECLARED in the
  schema (never the ones seen in the fold), so the width is fixed before any data is seen. A
  declared category absent from the training fold simply gives an all-zero column there; a value
  not declared is an error naming the case, the column and the value. Features ``"col=cat"``.

Features follow schema order, column by column (``age, sex=F, sex=M, cea, ct=T2, ...``).

Input
-----
The preprocessor trusts the table readers: its input is a frame as
:func:`clinical.tables.read_case_table` returns it (training and prediction read their tables with
it). It parses no cell itself; every column goes through
:func:`clinical.tables.parse_feature_column`, the readers' own parser, which leaves such a frame as
it is and holds a frame built in memory (numbers, integer-coded categories, numeric text) to the same
rules, with an error naming the column, the case and the value.

Declared transforms of numeric columns
--------------------------------------
A skewed value whose effect is on a log scale (CEA in the LARC schema) declares
``"transform": "log"`` or ``"log1p"`` in the schema. With ``x`` the observed value::

    log   : x -> ln(x)        (numpy.log,   needs x > 0)
    log1p : x -> ln(1 + x)    (numpy.log1p, needs x > -1)

and the feature is then ``(t - mean) / scale`` with ``t = transform(x)``, or ``t = median`` where
``x`` is missing; median, mean and scale are those of the transformed training values. The
transform is applied while the table is validated, before imputation and scaling, so fitting and
every transform path see the same transformed values; a missing value (NaN) stays missing and is
imputed; a value outside the domain is an error naming the column, the case and the value. The
table readers of :mod:`clinical.tables` refuse such a value already (the converter for every
development and test patient, so it never first shows at training). The
transform is part of the schema (which travels with the ``dataset.json`` multitask block and the
plans' ``clinical_columns``), so the state vector keeps its length; it is part of the layout
fingerprint, so a vector fitted with a transform is refused by a schema without it and vice versa.

Why one numpy transform
-----------------------
The fitting is done by scikit-learn (``SimpleImputer``, ``StandardScaler`` and
``OneHotEncoder(categories=declared, handle_unknown="error")`` in a ``ColumnTransformer``). The
fitted numbers (medians, means, scales, modes) are then copied out, and one small numpy function,
:meth:`ClinicalPreprocessor._apply`, applies them in every path: right after ``fit``, after
:meth:`from_state_vector`. Rebuilding fitted scikit-learn objects by
setting their private attributes is fragile across scikit-learn versions, and a second code path
for inference could drift from the training one; with a single transform the training and the
inference outputs cannot differ. The test suite checks that this transform equals the fitted
scikit-learn ``ColumnTransformer`` output on the training rows.

Why a fixed-length state vector
-------------------------------
The trainer stores :meth:`state_vector` as a registered buffer of the network, so it travels inside
nnU-Net's checkpoint and a strict state-dict load works at inference. Its length
(:attr:`state_size`) depends only on the schema columns of the chosen groups. Layout::

    [0]  1.0 when fitted (a freshly created zero buffer that was never filled is refused)
    [1]  CRC32 fingerprint of the column layout (names, types, declared categories, declared
         transforms), so a vector is never applied to a schema it was not fitted for
    then, per column in schema order:
         numeric     -> median, mean, scale          (3 values, of the transformed values)
         binary      -> most frequent value (0 or 1)  (1 value)
         categorical -> index of the most frequent category among the declared ones (1 value)
"""
from __future__ import annotations

import json
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from clinical.errors import MultitaskError
from clinical.schema import (NUMERIC_TRANSFORMS, TRANSFORM_DOMAINS, ClinicalSchema, ColumnSpec,
                            outside_transform_domain)
from clinical.tables import parse_feature_column

__all__ = ["ClinicalPreprocessor", "ClinicalPreprocessingError"]

_HEADER_SIZE = 2  # fitted marker, layout fingerprint
_STATE_WIDTH = {"numeric": 3, "binary": 1, "categorical": 1}
_MAX_LISTED_BAD_VALUES = 20  # how many offending cells one error message lists
# What a bad cell is, per declared type (categorical: not among the declared categories).
_BAD_VALUE_TEXT = {"numeric": "not a finite number", "binary": "binary value must be '0' or '1'"}
# Declared numeric transforms: name -> numpy function; their domains are the schema's
# (clinical.schema.TRANSFORM_DOMAINS), which the table readers check too (at conversion, before training).
_TRANSFORMS = {"log": np.log, "log1p": np.log1p}
assert set(_TRANSFORMS) == set(NUMERIC_TRANSFORMS) == set(TRANSFORM_DOMAINS)


class ClinicalPreprocessingError(MultitaskError, ValueError):
    """The clinical table (or a saved state) does not fit the preprocessor."""


class ClinicalPreprocessor:
    """Impute, standardise and one-hot encode the clinical columns of some groups.

    Parameters
    ----------
    schema : ClinicalSchema
        Declares each column's group, type, (for categorical columns) categories and (for numeric
        columns, optionally) a ``transform`` applied before imputation and scaling.
    groups : sequence of str
        Which clinical groups feed the model: ``("pretreatment", "postoperative")`` (All),
        ``("pretreatment",)`` (_Pre) or ``()`` (MRI-only: zero features).

    Attributes
    ----------
    columns : list of str
        Input columns used, in schema order.
    n_features : int
        Width of :meth:`transform`'s output; known before fitting.
    feature_names : list of str
        One name per output feature (``"age"``, ``"sex=F"``, ...); known before fitting.
    state_size : int
        Length of :meth:`state_vector`; known before fitting, depends only on schema + groups.
    sklearn_transformer_ : ColumnTransformer or None
        The fitted scikit-learn object the numbers were taken from (only after :meth:`fit` in
        this process; ``None`` after loading from a state vector or a dict).
    """

    def __init__(self, schema: ClinicalSchema, groups: Sequence[str] = ("pretreatment", "postoperative")):
        if isinstance(groups, str):  # a bare "pretreatment" would otherwise be read as letters
            raise TypeError(f"groups must be a sequence of group names, got the string {groups!r}")
        self.groups: tuple = tuple(groups)
        self.schema: ClinicalSchema = schema.subset(self.groups)  # raises on unknown groups
        self.columns: List[str] = list(self.schema.columns)
        self._specs: List[ColumnSpec] = [self.schema.columns[c] for c in self.columns]

        names: List[str] = []
        for spec in self._specs:
            if spec.type == "categorical":
                names.extend(f"{spec.name}={cat}" for cat in spec.categories)
            else:
                names.append(spec.name)
        self.feature_names: List[str] = names
        self.n_features: int = len(names)
        self.state_size: int = _HEADER_SIZE + sum(_STATE_WIDTH[s.type] for s in self._specs)
        self._fingerprint: int = self._layout_fingerprint()

        # Fitted numbers, per column name (set by fit / from_state_vector).
        self._numeric_stats: Optional[Dict[str, tuple]] = None  # name -> (median, mean, scale)
        self._binary_mode: Optional[Dict[str, float]] = None  # name -> 0.0 / 1.0
        self._categorical_mode: Optional[Dict[str, str]] = None  # name -> declared category
        self.sklearn_transformer_: Optional[ColumnTransformer] = None

    # ------------------------------------------------------------------ small helpers
    def __repr__(self) -> str:
        return (f"ClinicalPreprocessor(groups={self.groups}, n_features={self.n_features}, "
                f"fitted={self.is_fitted})")

    @property
    def is_fitted(self) -> bool:
        return self._numeric_stats is not None

    def _layout_fingerprint(self) -> int:
        layout = []
        for s in self._specs:
            entry = [s.name, s.type, list(s.categories) if s.categories else None]
            if s.transform is not None:  # only when declared: untransformed layouts keep their old CRC
                entry.append(s.transform)
            layout.append(entry)
        # CRC32 < 2**32, so it is exact in float64.
        return zlib.crc32(json.dumps(layout, sort_keys=True).encode("utf-8"))

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("ClinicalPreprocessor is not fitted: call fit() on the training fold, "
                                 "or load it with from_state_vector()")

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _case_labels(df: pd.DataFrame, id_column: str) -> List[str]:
        if id_column in df.columns:
            return [f"case {v!r}" for v in df[id_column].tolist()]
        return [f"row index {v!r} (no '{id_column}' column)" for v in df.index.tolist()]

    @staticmethod
    def _raise_bad_values(column: str, bad: List[tuple], what: str) -> None:
        listed = "; ".join(f"{case}: {value!r}" for case, value in bad[:_MAX_LISTED_BAD_VALUES])
        more = f" (and {len(bad) - _MAX_LISTED_BAD_VALUES} more)" if len(bad) > _MAX_LISTED_BAD_VALUES else ""
        raise ClinicalPreprocessingError(f"clinical column '{column}': {what}: {listed}{more}")

    def _validated_frame(self, df: pd.DataFrame, id_column: str) -> pd.DataFrame:
        """Return the used columns, typed for fitting: numeric/binary as float64 (numeric after the
        column's declared transform), categorical as object (declared category strings) with
        ``np.nan`` for missing. Raises on anything else.

        The cells are not parsed here: each column goes through
        :func:`clinical.tables.parse_feature_column`, the parser of the table readers, so a frame
        from :func:`clinical.tables.read_case_table` passes unchanged and any other frame is held
        to the same rules (the message names the column, the cases and their values)."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise ClinicalPreprocessingError(
                f"clinical table lacks required column(s) {missing} for groups {list(self.groups)}")
        cases = self._case_labels(df, id_column)
        out = {}
        for spec in self._specs:
            parsed, bad = parse_feature_column(spec, df[spec.name].reset_index(drop=True))
            if bad.any():
                values = df[spec.name].tolist()
                self._raise_bad_values(spec.name, [(cases[i], values[i]) for i in np.flatnonzero(bad)],
                                       _BAD_VALUE_TEXT[spec.type] if spec.type in _BAD_VALUE_TEXT else
                                       f"value not among the declared categories {list(spec.categories)}")
            if spec.transform is not None:
                parsed = self._transformed(spec, parsed, df[spec.name].tolist(), cases)
            out[spec.name] = parsed
        return pd.DataFrame(out, index=df.index, columns=self.columns)

    def _transformed(self, spec: ColumnSpec, parsed: np.ndarray, values: list, cases: List[str]) -> np.ndarray:
        """Apply the column's declared transform to its parsed values.

        ``log``: ``t = ln(x)`` (needs ``x > 0``); ``log1p``: ``t = ln(1 + x)`` (needs ``x > -1``).
        NaN (missing) stays NaN and is imputed later, in the transformed space.

        Raises
        ------
        ClinicalPreprocessingError
            When an observed value is outside the domain; the message names the column, the
            transform, and each offending case with its value.
        """
        try:
            function, domain = _TRANSFORMS[spec.transform], TRANSFORM_DOMAINS[spec.transform][1]
        except KeyError:  # ClinicalSchema.from_dict refuses these; guard a hand-built ColumnSpec
            raise ClinicalPreprocessingError(
                f"clinical column '{spec.name}': unknown transform {spec.transform!r}, "
                f"expected one of {NUMERIC_TRANSFORMS}") from None
        observed = ~np.isnan(parsed)
        outside = outside_transform_domain(spec, parsed)
        if outside.any():
            self._raise_bad_values(spec.name, [(cases[i], values[i]) for i in np.flatnonzero(outside)],
                                   f"transform '{spec.transform}' needs {domain}")
        out = np.full_like(parsed, np.nan)
        out[observed] = function(parsed[observed])
        return out

    # ------------------------------------------------------------------ fitting
    def _sklearn_transformer(self) -> ColumnTransformer:
        """One pipeline per column, in schema order, so the output columns follow ``feature_names``."""
        transformers = []
        for i, spec in enumerate(self._specs):
            if spec.type == "numeric":
                steps = [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
            elif spec.type == "binary":
                steps = [("impute", SimpleImputer(strategy="most_frequent"))]
            else:
                steps = [("impute", SimpleImputer(strategy="most_frequent")),
                         ("onehot", OneHotEncoder(categories=[list(spec.categories)],
                                                  handle_unknown="error", sparse_output=False,
                                                  dtype=np.float64))]
            # Indexed names: ColumnTransformer forbids "__" in names, schema column names do not.
            transformers.append((f"column{i}", Pipeline(steps), [spec.name]))
        return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)

    def fit(self, df: pd.DataFrame, id_column: str = "case_id") -> "ClinicalPreprocessor":
        """Fit imputation and scaling on ``df``, which must hold the training-fold rows only.

        Numeric columns with a declared ``transform`` are transformed first, so their median,
        mean and scale are those of the transformed values.

        Parameters
        ----------
        df : pandas.DataFrame
            Training rows; needs every column of the chosen groups (others are ignored).
        id_column : str
            Column naming the case in error messages (the row index is used when absent).

        Returns
        -------
        ClinicalPreprocessor
            ``self``, fitted.
        """
        frame = self._validated_frame(df, id_column)
        if len(frame) == 0:
            raise ClinicalPreprocessingError("cannot fit the clinical preprocessor on zero training rows")
        empty = [c for c in self.columns if frame[c].isna().all()]
        if empty:
            raise ClinicalPreprocessingError(
                f"clinical column(s) {empty} have no observed value in the {len(frame)} training rows: "
                "cannot impute them")

        numeric_stats: Dict[str, tuple] = {}
        binary_mode: Dict[str, float] = {}
        categorical_mode: Dict[str, str] = {}
        transformer = None
        if self._specs:  # groups=() (MRI-only): nothing to fit
            transformer = self._sklearn_transformer().fit(frame)
            for i, spec in enumerate(self._specs):
                pipeline = transformer.named_transformers_[f"column{i}"]
                statistic = pipeline.named_steps["impute"].statistics_[0]
                if spec.type == "numeric":
                    scaler = pipeline.named_steps["scale"]
                    numeric_stats[spec.name] = (float(statistic), float(scaler.mean_[0]), float(scaler.scale_[0]))
                elif spec.type == "binary":
                    binary_mode[spec.name] = float(statistic)
                else:
                    categorical_mode[spec.name] = str(statistic)
        self._numeric_stats, self._binary_mode, self._categorical_mode = numeric_stats, binary_mode, categorical_mode
        self.sklearn_transformer_ = transformer
        return self

    # ------------------------------------------------------------------ transforming
    def transform(self, df: pd.DataFrame, id_column: str = "case_id") -> np.ndarray:
        """Encode ``df`` with the fitted numbers.

        Returns
        -------
        numpy.ndarray
            float32 array of shape ``[len(df), n_features]`` in ``feature_names`` order, without
            NaN or inf.
        """
        self._require_fitted()
        return self._apply(self._validated_frame(df, id_column))

    def fit_transform(self, df: pd.DataFrame, id_column: str = "case_id") -> np.ndarray:
        """``fit(df)`` then ``transform(df)``."""
        return self.fit(df, id_column=id_column).transform(df, id_column=id_column)

    def _apply(self, frame: pd.DataFrame) -> np.ndarray:
        """The one transform used in every path (see the module docstring for why it is numpy)."""
        blocks = []
        for spec in self._specs:
            if spec.type == "numeric":
                median, mean, scale = self._numeric_stats[spec.name]
                x = frame[spec.name].to_numpy(dtype=np.float64)
                x = np.where(np.isnan(x), median, x)  # x is already transformed (_validated_frame)
                blocks.append(((x - mean) / scale)[:, None])  # same operations as StandardScaler
            elif spec.type == "binary":
                x = frame[spec.name].to_numpy(dtype=np.float64)
                blocks.append(np.where(np.isnan(x), self._binary_mode[spec.name], x)[:, None])
            else:
                x = frame[spec.name].to_numpy(dtype=object)
                x = np.where(pd.isna(x), self._categorical_mode[spec.name], x)
                blocks.append(np.stack([(x == cat) for cat in spec.categories], axis=1).astype(np.float64))
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        out = np.concatenate(blocks, axis=1).astype(np.float32)
        if not np.isfinite(out).all():  # cannot happen with validated input; guard the contract anyway
            raise ClinicalPreprocessingError("clinical preprocessing produced NaN/inf values")
        return out

    # ------------------------------------------------------------------ state vector
    def state_vector(self) -> np.ndarray:
        """All fitted numbers as a float64 vector of length :attr:`state_size` (layout in module doc)."""
        self._require_fitted()
        vec = np.zeros(self.state_size, dtype=np.float64)
        vec[0] = 1.0
        vec[1] = float(self._fingerprint)
        pos = _HEADER_SIZE
        for spec in self._specs:
            if spec.type == "numeric":
                vec[pos:pos + 3] = self._numeric_stats[spec.name]
            elif spec.type == "binary":
                vec[pos] = self._binary_mode[spec.name]
            else:
                vec[pos] = spec.categories.index(self._categorical_mode[spec.name])
            pos += _STATE_WIDTH[spec.type]
        return vec

    @classmethod
    def from_state_vector(cls, schema: ClinicalSchema, groups: Sequence[str], vec) -> "ClinicalPreprocessor":
        """Rebuild a fitted preprocessor from :meth:`state_vector` (e.g. a checkpoint buffer).

        Parameters
        ----------
        schema, groups
            The same schema and groups the vector was fitted with.
        vec : numpy.ndarray or torch.Tensor
            1-D float64 vector (a torch buffer may live on any device; float32 is refused because
            it cannot hold the fitted numbers exactly).
        """
        pre = cls(schema, groups)
        if hasattr(vec, "detach"):  # a torch buffer, possibly on the GPU (torch is not imported here)
            vec = vec.detach().cpu().numpy()
        vec = np.asarray(vec)
        if vec.dtype != np.float64:
            # float32 would round the medians/means/scales and the layout fingerprint, so the
            # transform would no longer be identical: register the buffer as torch.float64.
            raise ClinicalPreprocessingError(
                f"clinical state vector must be float64 to reproduce the fit exactly, got {vec.dtype}")
        vec = vec.reshape(-1)
        if vec.shape[0] != pre.state_size:
            raise ClinicalPreprocessingError(
                f"clinical state vector has length {vec.shape[0]}, expected {pre.state_size} for groups "
                f"{list(pre.groups)} of this schema")
        if vec[0] != 1.0:
            raise ClinicalPreprocessingError(
                "clinical state vector is not marked fitted (element 0 is not 1): it was never filled "
                "from a fitted preprocessor")
        if vec[1] != float(pre._fingerprint):
            raise ClinicalPreprocessingError(
                "clinical state vector was fitted for a different column layout (names, types or "
                f"categories) than this schema's groups {list(pre.groups)}")
        if not np.isfinite(vec).all():
            raise ClinicalPreprocessingError("clinical state vector contains NaN/inf")
        numeric_stats, binary_mode, categorical_mode = {}, {}, {}
        pos = _HEADER_SIZE
        for spec in pre._specs:
            if spec.type == "numeric":
                median, mean, scale = (float(v) for v in vec[pos:pos + 3])
                if scale <= 0:
                    raise ClinicalPreprocessingError(
                        f"clinical state vector: column '{spec.name}' has non-positive scale {scale}")
                numeric_stats[spec.name] = (median, mean, scale)
            elif spec.type == "binary":
                if vec[pos] not in (0.0, 1.0):
                    raise ClinicalPreprocessingError(
                        f"clinical state vector: binary column '{spec.name}' has mode {vec[pos]}, not 0/1")
                binary_mode[spec.name] = float(vec[pos])
            else:
                index = vec[pos]
                if not (float(index).is_integer() and 0 <= index < len(spec.categories)):
                    raise ClinicalPreprocessingError(
                        f"clinical state vector: column '{spec.name}' has category index {index}, "
                        f"outside 0..{len(spec.categories) - 1}")
                categorical_mode[spec.name] = spec.categories[int(index)]
            pos += _STATE_WIDTH[spec.type]
        pre._numeric_stats, pre._binary_mode, pre._categorical_mode = numeric_stats, binary_mode, categorical_mode
        return pre
