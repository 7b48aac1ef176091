"""The typed contract (issue 11.1): the dataset.json "multitask" block and the plans' "multitask_model"
block read into frozen dataclasses, with their defaults in one place."""
from __future__ import annotations

import dataclasses

import pytest

from nnunet_multitask.contract import ContractError, DatasetContract, HeadConfig, recurrence_column

BLOCK = {
    "version": 1, "case_id_column": "case_id", "clinical_table": "clinical.csv", "outcomes_table": "outcomes.csv",
    "test_outcomes_table": "outcomes_test.csv", "series_availability_table": "series_availability.csv",
    "time_column": "dfs_months", "event_column": "dfs_event", "time_unit": "months", "horizon_months": 18.5,
    "centre_column": "centre", "clinical_columns": {"age": {"group": "pretreatment", "type": "numeric"}},
    "clinical_groups": {"pretreatment": ["age"], "postoperative": []}, "internal_test": ["X_0003"],
    "external_test": ["X_0007", "X_0008"], "splits_file": "splits_final.json",
    "split_stratification": {"internal_test": "event"}, "patient_mapping": "patient_mapping.csv",
    "source_cohort": "/data/cohort",
}

MODEL = {
    "trainer": "MultiRecTrainer", "input_channels": None, "channel_names": {"0": "T2", "1": "ADC"},
    "clinical_groups": ["pretreatment"], "clinical_columns": {"age": {"group": "pretreatment", "type": "numeric"}},
    "clinical_feature_names": ["age"], "n_clinical_features": 1, "clinical_state_size": 2,
    "survival_head": "discrete", "n_time_bins": 10, "head_hidden": 64, "image_features": "tumour_quantities",
    "n_input_channels": 2, "voxel_volume_mm3": 1.47, "risk_memory_size": 0, "horizon_months": 36.0,
    "time_unit": "months",
}


def test_dataset_block_round_trip_and_accessors():
    contract = DatasetContract.from_dataset_json({"multitask": BLOCK})
    assert contract.to_dict() == BLOCK
    assert contract.horizon_months == 18.5 and recurrence_column(contract.horizon_months) == "p_recurrence_18.5m"
    assert contract.held_out_cases == {"X_0003", "X_0007", "X_0008"}
    assert contract.schema().time_column == "dfs_months"
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.horizon_months = 36  # type: ignore[misc]


def test_dataset_block_defaults_and_refusals():
    old = {k: v for k, v in BLOCK.items() if k not in ("series_availability_table", "horizon_months")}
    contract = DatasetContract.from_block(old)
    assert contract.series_availability_table is None and contract.horizon_months == 36.0
    with pytest.raises(ContractError, match=r"unknown key\(s\) \['horizon'\]"):
        DatasetContract.from_block(dict(BLOCK, horizon=36))
    with pytest.raises(ContractError, match="lacks"):
        DatasetContract.from_block({k: v for k, v in BLOCK.items() if k != "event_column"})
    with pytest.raises(ContractError, match="no 'multitask' block"):
        DatasetContract.from_dataset_json({"channel_names": {}})


def test_head_config_defaults_for_models_trained_before_a_field_existed():
    cfg = HeadConfig.from_plans({"multitask_model": MODEL})
    assert cfg.channel_availability is False and cfg.modality_dropout_rate == 0.0
    assert cfg.uses_clinical_data and cfg.used_channels(2) == (0, 1)
    assert HeadConfig.from_plans({"multitask_model": cfg.to_dict()}) == cfg
    first_design = {k: v for k, v in MODEL.items() if k not in ("image_features", "voxel_volume_mm3")}
    assert HeadConfig.from_plans({"multitask_model": first_design}).image_features == "global_pool"
    t2 = HeadConfig.from_plans({"multitask_model": dict(MODEL, input_channels=[0], n_clinical_features=0)})
    assert t2.used_channels(4) == (0,) and not t2.uses_clinical_data
    with pytest.raises(ContractError, match="unknown key"):
        HeadConfig.from_plans({"multitask_model": dict(MODEL, n_bins=3)})
    with pytest.raises(ContractError, match="incomplete"):
        HeadConfig.from_plans({"multitask_model": {k: v for k, v in MODEL.items() if k != "n_time_bins"}})
    with pytest.raises(ContractError, match="not trained with a MultiRec trainer"):
        HeadConfig.from_plans({"configurations": {}})
