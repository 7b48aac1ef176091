"""The one outcome / feature validator (clinical.tables) and the one Harrell's C (evaluation.metrics).

Every reader of follow-up data (the converter's cohort table, the trainer's outcomes table, the
evaluation's outcomes CSV and a converted dataset's test outcomes) goes through
``clinical.tables.parse_follow_up``: a time of 0, a negative or missing time, an event outside
{0, 1} and a duplicate id are refused with a message naming the file and the case / lines.
"""
from __future__ import annotations

import configparser
import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinical.preprocessing import ClinicalPreprocessor
from clinical.schema import ClinicalSchema
from clinical.tables import (ClinicalTableError, parse_feature_column, read_case_table, read_clinical_table,
                             read_follow_up_table, read_outcomes_table)
from evaluation import metrics as M
from evaluation import survival_eval as SE
from evaluation.inputs import EvaluationInputError, load_outcomes_csv, load_outcomes_from_dataset

REPO = Path(__file__).resolve().parents[1]
SCHEMA = ClinicalSchema.load()
FEATURES = {"centre": "1", "age": "60", "sex": "F", "cea": "3.2", "ct": "T3", "cn": "N1", "mrf": "1", "emvi": "0",
            "distance_av_cm": "5", "ypt": "T2", "ypn": "N0", "trg": "2"}

# (column, bad cell, what the message says about it); the bad cell is case "b" on line 3
BAD_CELLS = {
    "time 0": ("dfs_months", "0", "'0' is not a number > 0"),
    "time 0.0": ("dfs_months", "0.0", "'0.0' is not a number > 0"),
    "negative time": ("dfs_months", "-3", "'-3' is not a number > 0"),
    "NaN time": ("dfs_months", "NaN", "missing follow-up time"),
    "empty time": ("dfs_months", "", "missing follow-up time"),
    "infinite time": ("dfs_months", "inf", "'inf' is not a number > 0"),
    "text time": ("dfs_months", "ten", "'ten' is not a number > 0"),
    "event 2": ("dfs_event", "2", "'2' is not 0 or 1"),
    "event 0.5": ("dfs_event", "0.5", "'0.5' is not 0 or 1"),
    "event -1": ("dfs_event", "-1", "'-1' is not 0 or 1"),
    "event yes": ("dfs_event", "yes", "'yes' is not 0 or 1"),
    "NaN event": ("dfs_event", "NaN", "missing event indicator"),
}


def write_outcomes(path: Path, id_column: str = "case_id", change: tuple | None = None, ids=("a", "b", "c"),
                   features: bool = False, extra: dict | None = None) -> Path:
    rows = {id_column: list(ids), "dfs_months": ["10", "20.5", "30"], "dfs_event": ["1", "0", "1"]}
    if features:
        rows.update({name: [value] * 3 for name, value in FEATURES.items()})
    rows.update(extra or {})
    table = pd.DataFrame(rows)
    if change is not None:
        column, value = change
        table.loc[1, column] = value
    table.to_csv(path, index=False)
    return path


def readers(tmp_path: Path):
    """{name: (writer, reader, id column)} for every reader of follow-up data."""
    def outcomes_csv(change, ids=("a", "b", "c")):
        return write_outcomes(tmp_path / "o.csv", change=change, ids=ids)

    def cohort_csv(change, ids=("a", "b", "c")):
        return write_outcomes(tmp_path / "clinical.csv", "patient_id", change, ids, features=True)

    return {
        "evaluation outcomes CSV": (outcomes_csv, read_follow_up_table, "case_id"),
        "training outcomes table": (outcomes_csv, lambda p: read_outcomes_table(p, SCHEMA), "case_id"),
        "conversion cohort table": (cohort_csv, lambda p: read_clinical_table(p, SCHEMA), "patient_id"),
    }


READERS = ["evaluation outcomes CSV", "training outcomes table", "conversion cohort table"]


@pytest.mark.parametrize("reader_name", READERS)
@pytest.mark.parametrize("problem", list(BAD_CELLS))
def test_bad_follow_up_is_refused_naming_file_case_and_column(tmp_path, reader_name, problem):
    column, value, says = BAD_CELLS[problem]
    write, read, id_column = readers(tmp_path)[reader_name]
    path = write((column, value))
    with pytest.raises(ClinicalTableError) as info:
        read(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{id_column} b: column '{column}': {says}" in message
    assert "1 problem(s)" in message  # cases a and c are fine


@pytest.mark.parametrize("reader_name", READERS)
def test_duplicate_and_empty_ids_are_refused_naming_the_lines(tmp_path, reader_name):
    write, read, id_column = readers(tmp_path)[reader_name]
    path = write(None, ids=("a", "b", "a"))
    with pytest.raises(ClinicalTableError, match=rf"{path}: duplicate {id_column}\(s\) a \(lines 2, 4\)"):
        read(path)
    path = write(None, ids=("a", "", "c"))
    with pytest.raises(ClinicalTableError, match=rf"{path}: empty '{id_column}' on line\(s\) \[3\]"):
        read(path)


@pytest.mark.parametrize("reader_name", READERS)
def test_good_follow_up_is_typed_alike_by_every_reader(tmp_path, reader_name):
    write, read, _ = readers(tmp_path)[reader_name]
    table = read(write(("dfs_event", "1.0")))
    assert table["dfs_months"].tolist() == [10.0, 20.5, 30.0] and table["dfs_months"].dtype == np.float64
    assert table["dfs_event"].tolist() == [1, 1, 1] and table["dfs_event"].dtype == np.int64
    assert list(table.index) == ["a", "b", "c"]


def test_follow_up_reader_ignores_other_columns_and_keeps_set(tmp_path):
    path = write_outcomes(tmp_path / "o.csv", extra={"age": ["50", "60", "70"], "set": ["x", " y ", "x"]})
    table = read_follow_up_table(path)
    assert list(table.columns) == ["dfs_months", "dfs_event", "set"]
    assert table["set"].tolist() == ["x", "y", "x"]
    path = write_outcomes(tmp_path / "renamed.csv")
    pd.read_csv(path).rename(columns={"dfs_months": "T"}).to_csv(path, index=False)
    with pytest.raises(ClinicalTableError, match=r"renamed.csv: required column\(s\) \['dfs_months'\] missing"):
        read_follow_up_table(path)
    assert read_follow_up_table(path, time_column="T")["T"].tolist() == [10.0, 20.5, 30.0]


# ---------------------------------------------------------------------------- the evaluation uses it
@pytest.mark.parametrize("problem", ["time 0", "negative time", "NaN time", "event 2"])
def test_evaluation_refuses_bad_follow_up_with_exit_status_2(tmp_path, capsys, problem):
    column, value, says = BAD_CELLS[problem]
    outcomes = write_outcomes(tmp_path / "outcomes.csv", change=(column, value))
    with pytest.raises(EvaluationInputError, match=rf"outcomes.csv: 1 problem\(s\):\n  case_id b: column '{column}'"):
        load_outcomes_csv(outcomes)
    predictions = tmp_path / "model.csv"
    pd.DataFrame({"case_id": ["a", "b", "c"], "risk_score": [1.0, 0.5, 2.0]}).to_csv(predictions, index=False)
    rc = SE.main(["--predictions", str(predictions), "--outcomes", str(outcomes), "--bootstrap", "5",
                  "--no-figures", "-o", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: {outcomes}: 1 problem(s)") and f"case_id b: column '{column}': {says}" in err
    assert not (tmp_path / "report").exists()


def test_evaluation_refuses_time_0_in_a_converted_dataset(tmp_path):
    folder = tmp_path / "raw" / "Dataset501_LARC"
    folder.mkdir(parents=True)
    write_outcomes(folder / "outcomes_test.csv", change=("dfs_months", "0"),
                   extra={"set": ["internal_test"] * 3})
    (folder / "dataset.json").write_text(json.dumps({"multitask": {
        "test_outcomes_table": "outcomes_test.csv", "internal_test": ["a", "b", "c"], "external_test": [],
        "time_column": "dfs_months", "event_column": "dfs_event", "clinical_columns": {}}}))
    with pytest.raises(EvaluationInputError, match=r"outcomes_test.csv: 1 problem\(s\):\n  case_id b: column "
                                                   r"'dfs_months': '0' is not a number > 0"):
        load_outcomes_from_dataset(501, tmp_path / "raw")


def test_evaluation_outcome_values_are_read_as_before(tmp_path):
    """The shared reader parses numbers as pandas reads a CSV: the same floats as before the change."""
    rng = np.random.default_rng(0)
    time = np.concatenate([rng.exponential(30, 500) + 0.01, np.round(rng.exponential(30, 500), 2) + 0.01])
    ids = [f"P{i:04d}" for i in range(len(time))]
    path = tmp_path / "outcomes.csv"
    pd.DataFrame({"case_id": ids, "dfs_months": time, "dfs_event": rng.integers(0, 2, len(time)),
                  "set": "x"}).to_csv(path, index=False)
    expected = pd.read_csv(path, dtype={"case_id": str})
    table = load_outcomes_csv(path)
    np.testing.assert_array_equal(table["time"].to_numpy(), expected["dfs_months"].to_numpy())
    np.testing.assert_array_equal(table["event"].to_numpy(), expected["dfs_event"].to_numpy())
    assert table["case_id"].tolist() == ids and set(table["set"]) == {"x"}


# ---------------------------------------------------------------------------- one feature parser
def test_preprocessor_takes_a_reader_frame_as_it_is(tmp_path):
    path = tmp_path / "clinical.csv"
    pd.DataFrame({"case_id": ["L1", "L2", "L3"], **{k: [v, v, ""] for k, v in FEATURES.items()}}).assign(
        centre="1").to_csv(path, index=False)
    frame = read_case_table(path, SCHEMA)
    pre = ClinicalPreprocessor(SCHEMA)
    typed = pre._validated_frame(frame.reset_index(), "case_id")
    for name, spec in SCHEMA.columns.items():
        expected = frame[name].to_numpy()
        if spec.transform == "log":
            expected = np.log(expected.astype(float))
        pd.testing.assert_series_equal(typed[name].reset_index(drop=True), pd.Series(expected, name=name),
                                       check_dtype=False)


def test_reader_and_preprocessor_apply_the_same_cell_rules():
    spec = SCHEMA.columns
    parsed, bad = parse_feature_column(spec["mrf"], pd.Series(["1", "0.0", 1, True, None, "2", "yes"], dtype=object))
    np.testing.assert_array_equal(bad, [False, False, False, False, False, True, True])
    np.testing.assert_array_equal(parsed[:4], [1.0, 0.0, 1.0, 1.0])
    parsed, bad = parse_feature_column(spec["trg"], pd.Series(["2", 2, 2.0, np.nan, 2.5, True, "9"], dtype=object))
    assert parsed[:3].tolist() == ["2", "2", "2"] and bad.tolist() == [False, False, False, False, True, True, True]
    parsed, bad = parse_feature_column(spec["age"], pd.Series(["63.5", 63.5, " 7", None, "<5", True, np.inf],
                                                              dtype=object))
    assert bad.tolist() == [False, False, False, False, True, True, True]
    np.testing.assert_array_equal(parsed[:3], [63.5, 63.5, 7.0])
    frame = pd.DataFrame({"case_id": ["x"], **{k: [v] for k, v in FEATURES.items()}})
    frame["mrf"] = "yes"
    with pytest.raises(ValueError, match=r"'mrf'.*case 'x'.*'yes'"):
        ClinicalPreprocessor(SCHEMA).fit(frame)


# ---------------------------------------------------------------------------- one Harrell's C
def test_harrell_c_is_nan_where_undefined_and_never_raises_for_it():
    from sksurv.metrics import concordance_index_censored

    time, event, risk = np.array([5.0, 8, 12, 20]), np.array([1, 0, 1, 0]), np.array([3.0, 1, 2, 0])
    assert M.harrell_c(time, event, risk) == concordance_index_censored(event.astype(bool), time, risk)[0]
    undefined = {
        "no event": (time, [0, 0, 0, 0], risk),
        "one case": ([5.0], [1], [1.0]),
        "every event at one time": ([20.0] * 4, [1] * 4, risk),
        "NaN risk": (time, event, [3.0, np.nan, 2, 0]),
        "infinite risk": (time, event, [3.0, np.inf, 2, 0]),
    }
    for why, args in undefined.items():
        assert np.isnan(M.harrell_c(*args)), why
        c, reason = M.harrell_c_with_reason(*args)
        assert np.isnan(c) and reason, why
    assert M.harrell_c_with_reason(time, event, risk)[1] is None
    with pytest.raises(ValueError, match="1-D of one length"):
        M.harrell_c(time, event, risk[:3])


def test_console_script_entry_point_is_declared_and_resolves():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    scripts = dict(line.split("=", 1) for line in config["options.entry_points"]["console_scripts"].split("\n")
                   if "=" in line)
    scripts = {k.strip(): v.strip() for k, v in scripts.items()}
    module, function = scripts["multitask_survival_eval"].split(":")
    assert getattr(importlib.import_module(module), function) is SE.main
