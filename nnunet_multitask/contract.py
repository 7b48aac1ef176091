"""The data contract in one module: what the converter writes and the trainer, predictor and
evaluation read.

* :class:`DatasetContract`: the ``"multitask"`` block of a converted dataset's ``dataset.json``
  (tables, follow-up columns, horizon, clinical columns and groups, test-set membership).
* :class:`HeadConfig`: the ``"multitask_model"`` block the trainer writes into the plans (and so
  into the model folder's ``plans.json``): everything needed to rebuild the network and its heads.
* The output column names (``p_recurrence_<H>m``, ``surv_prob_<t>m``) and the survival time grid.

Both blocks are read into frozen dataclasses once, with their defaults stated here and nowhere
else (in the style of nnU-Net's ``PlansManager`` over plans.json): code asks ``contract.horizon_months``
instead of ``mt.get("horizon_months", 36)``. ``to_dict`` gives the JSON form back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Mapping, Optional, Tuple

from clinical.errors import MultitaskError

#: version of the ``"multitask"`` block the converter writes
MULTITASK_VERSION = 1

#: months at which the survival head's ``surv_prob_<t>m`` are written (the horizon is added when absent)
SURVIVAL_TIMES: Tuple[float, ...] = (12, 24, 36, 60)

#: predictions.csv column naming the series each case was predicted with (``T2;ADC;Dapp;Kapp``)
SERIES_COLUMN = "series_available"

#: the series every case must have, even in a dataset converted with --allow-missing-series
REQUIRED_SERIES = ("T2",)


class ContractError(MultitaskError, ValueError):
    """A ``multitask`` or ``multitask_model`` block that lacks a key or holds a wrong value."""


def missing_series_filler(reference):
    """What stands in for a missing series, at conversion and at prediction alike: an all-zero
    float32 image with the exact geometry of the case's T2 (``reference``, a SimpleITK image).
    Zero because nnU-Net crops to the union of the channels' nonzero voxels and its z-score maps a
    constant image to 0: the filler moves neither the crop nor the other channels."""
    import SimpleITK as sitk
    zeros = sitk.Image(reference.GetSize(), sitk.sitkFloat32)  # SimpleITK initialises voxels to 0
    zeros.CopyInformation(reference)
    return zeros


def resample_onto(moving, reference):
    """Linear resampling of ``moving`` onto the grid of ``reference`` (SimpleITK images; float32, 0
    outside its FOV): how the converter puts a diffusion map on T2 and how the predictor
    (``--resample-to-first``, new patients) does the same."""
    import SimpleITK as sitk
    return sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


# ---------------------------------------------------------------------- column names
def horizon_tag(months: float) -> str:
    """``"36"`` for 36.0, ``"18.5"`` for 18.5: the ``<H>`` in ``p_recurrence_<H>m`` and ``auc_<H>m``
    (``%g``, so a non-integer horizon names the same column on both sides)."""
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


def _refuse_unknown_keys(cls, block: Mapping, name: str, source: str) -> None:
    """A key the dataclass does not know is an error: a typo must not fall back to a default."""
    unknown = sorted(set(block) - {f.name for f in fields(cls)})
    if unknown:
        raise ContractError(f"{source}: unknown key(s) {unknown} in the '{name}' block")


# ---------------------------------------------------------------------- dataset.json "multitask"
@dataclass(frozen=True)
class DatasetContract:
    """The ``"multitask"`` block of ``dataset.json`` (written by ``dataset_conversion.convert_larc``).

    Table fields are file names inside the raw (or preprocessed) dataset folder.
    ``series_availability_table`` is None for datasets converted before it existed (every series real).
    """

    time_column: str
    event_column: str
    clinical_columns: Mapping[str, dict] = field(default_factory=dict)
    clinical_table: str = "clinical.csv"
    outcomes_table: str = "outcomes.csv"
    test_outcomes_table: str = "outcomes_test.csv"
    series_availability_table: Optional[str] = None
    case_id_column: str = "case_id"
    centre_column: str = "centre"
    time_unit: str = "months"
    horizon_months: float = 36.0
    clinical_groups: Mapping[str, List[str]] = field(default_factory=dict)
    internal_test: Tuple[str, ...] = ()
    external_test: Tuple[str, ...] = ()
    splits_file: str = "splits_final.json"
    split_stratification: Mapping[str, str] = field(default_factory=dict)
    patient_mapping: str = "patient_mapping.csv"
    source_cohort: Optional[str] = None
    version: int = MULTITASK_VERSION

    @classmethod
    def from_block(cls, block: Mapping, source: str = "dataset.json") -> "DatasetContract":
        """Read a ``"multitask"`` block; unknown keys are an error."""
        if not block:
            raise ContractError(f"{source} has no 'multitask' block: convert the cohort with "
                                f"`python -m dataset_conversion.convert_larc` (see README)")
        _refuse_unknown_keys(cls, block, "multitask", source)
        lacking = [k for k in ("time_column", "event_column") if k not in block]
        if lacking:
            raise ContractError(f"{source}: the 'multitask' block lacks {lacking}")
        values = dict(block)
        values["internal_test"] = tuple(str(c) for c in values.get("internal_test", ()))
        values["external_test"] = tuple(str(c) for c in values.get("external_test", ()))
        values["horizon_months"] = float(values.get("horizon_months", 36.0))
        return cls(**values)

    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping, source: str = "dataset.json") -> "DatasetContract":
        return cls.from_block(dataset_json.get("multitask") or {}, source)

    @property
    def held_out_cases(self) -> frozenset:
        """Case ids of the internal and external test sets: they never enter training or model selection."""
        return frozenset(self.internal_test) | frozenset(self.external_test)

    def schema(self):
        """The clinical schema the block carries (:class:`clinical.schema.ClinicalSchema`)."""
        from clinical.schema import ClinicalSchema
        return ClinicalSchema.from_dict({"columns": dict(self.clinical_columns), "id_column": self.case_id_column,
                                         "centre_column": self.centre_column, "time_column": self.time_column,
                                         "event_column": self.event_column, "time_unit": self.time_unit},
                                        source="dataset.json multitask block")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["internal_test"], out["external_test"] = list(self.internal_test), list(self.external_test)
        return out


# ---------------------------------------------------------------------- plans "multitask_model"
@dataclass(frozen=True)
class HeadConfig:
    """The ``"multitask_model"`` block of the plans: the heads' configuration of a trained model.

    Defaults are what models trained before a field existed used (``image_features`` was the
    global pool, ``channel_availability`` off), so their checkpoints still load.
    """

    clinical_groups: Tuple[str, ...]
    clinical_columns: Mapping[str, dict]
    n_clinical_features: int
    clinical_state_size: int
    survival_head: str
    n_time_bins: int
    head_hidden: int
    trainer: str = "unknown"
    input_channels: Optional[Tuple[int, ...]] = None
    channel_names: Optional[Mapping[str, str]] = None
    clinical_feature_names: Tuple[str, ...] = ()
    image_features: str = "global_pool"
    n_input_channels: Optional[int] = None
    voxel_volume_mm3: float = 1.0
    risk_memory_size: int = 0
    horizon_months: float = 36.0
    time_unit: str = "months"
    channel_availability: bool = False
    modality_dropout_rate: float = 0.0

    @classmethod
    def from_plans(cls, plans: Mapping, source: str = "plans") -> "HeadConfig":
        block = plans.get("multitask_model")
        if block is None:
            raise ContractError(f"{source} has no 'multitask_model' block: this model was not trained with a "
                                f"MultiRec trainer")
        _refuse_unknown_keys(cls, block, "multitask_model", source)
        values = dict(block)
        values["clinical_groups"] = tuple(values.get("clinical_groups", ()))
        values["clinical_feature_names"] = tuple(values.get("clinical_feature_names", ()))
        if values.get("input_channels") is not None:
            values["input_channels"] = tuple(int(c) for c in values["input_channels"])
        try:
            return cls(**values)
        except TypeError as e:
            raise ContractError(f"{source}: the 'multitask_model' block is incomplete: {e}") from None

    @property
    def uses_clinical_data(self) -> bool:
        return self.n_clinical_features > 0

    def used_channels(self, n_dataset_channels: int) -> Tuple[int, ...]:
        """Indices of the dataset's channels the model reads."""
        return tuple(range(n_dataset_channels)) if self.input_channels is None else self.input_channels

    def to_dict(self) -> Dict:
        out = asdict(self)
        out["clinical_groups"] = list(self.clinical_groups)
        out["clinical_feature_names"] = list(self.clinical_feature_names)
        out["input_channels"] = None if self.input_channels is None else list(self.input_channels)
        return out
