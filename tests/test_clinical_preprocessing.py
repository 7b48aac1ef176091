"""Tests of clinical.preprocessing.ClinicalPreprocessor on small in-memory tables (default LARC schema)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from clinical.preprocessing import ClinicalPreprocessingError, ClinicalPreprocessor
from clinical.schema import ClinicalSchema, SchemaError

ALL = ("pretreatment", "postoperative")


@pytest.fixture(scope="module")
def schema() -> ClinicalSchema:
    return ClinicalSchema.load()


def make_table(schema: ClinicalSchema, n: int, seed: int, missing_rate: float = 0.15,
               prefix: str = "case") -> pd.DataFrame:
    """Random clinical table as tables.py delivers it: numeric floats, categorical/binary strings,
    NaN for missing; plus columns the preprocessor must ignore (outcomes, centre)."""
    rng = np.random.default_rng(seed)
    data = {"case_id": [f"{prefix}_{i:03d}" for i in range(n)],
            "centre": rng.choice(["A", "B"], n), "dfs_months": rng.uniform(1, 60, n),
            "dfs_event": rng.integers(0, 2, n)}
    for name, spec in schema.columns.items():
        if spec.type == "numeric":
            col = rng.normal(60 if name == "age" else 5, 10, n)
            if spec.transform is not None:  # inside the log's domain (CEA is declared "log")
                col = np.abs(col) + 0.1
            col = col.astype(object)
        elif spec.type == "binary":
            col = rng.choice(["0", "1"], n).astype(object)
        else:
            col = rng.choice(list(spec.categories), n).astype(object)
        observed_first = col[0]
        col[rng.random(n) < missing_rate] = np.nan
        col[0] = observed_first  # every column observed at least once, so it can be imputed
        data[name] = col.astype(float) if spec.type == "numeric" else col
    return pd.DataFrame(data)


# ---------------------------------------------------------------------- layout known before fit
def test_layout_known_before_fit(schema):
    pre = ClinicalPreprocessor(schema, ALL)
    assert pre.n_features == 25 == len(pre.feature_names)
    assert pre.feature_names[:7] == ["age", "sex=F", "sex=M", "cea", "ct=T2", "ct=T3", "ct=T4"]
    assert "trg=0" in pre.feature_names and "mrf" in pre.feature_names
    # header 2 + 3 numeric * 3 + 2 binary + 6 categorical
    assert pre.state_size == 2 + 9 + 2 + 6
    assert not pre.is_fitted
    with pytest.raises(NotFittedError):
        pre.transform(make_table(schema, 3, 0))
    with pytest.raises(NotFittedError):
        pre.state_vector()


def test_pretreatment_group_uses_only_pretreatment_columns(schema):
    pre = ClinicalPreprocessor(schema, ("pretreatment",))
    pretreatment = schema.group_columns(["pretreatment"])
    assert pre.columns == pretreatment
    assert all(name.split("=")[0] in pretreatment for name in pre.feature_names)
    assert pre.n_features == 13
    train = make_table(schema, 20, 1)
    # Postoperative columns are not needed, and their content does not matter.
    post = schema.group_columns(["postoperative"])
    x = pre.fit_transform(train.drop(columns=post))
    changed = train.copy()
    changed["ypt"] = "not even a category"
    np.testing.assert_array_equal(pre.transform(changed), x)
    assert x.shape == (20, 13)


def test_empty_groups_give_empty_features(schema):
    pre = ClinicalPreprocessor(schema, ())
    assert pre.n_features == 0 and pre.feature_names == [] and pre.state_size == 2
    df = make_table(schema, 7, 2)
    x = pre.fit_transform(df)
    assert x.shape == (7, 0) and x.dtype == np.float32
    again = ClinicalPreprocessor.from_state_vector(schema, (), pre.state_vector())
    assert again.transform(df).shape == (7, 0)


# ---------------------------------------------------------------------- the encoding itself
def test_encoding_values_by_hand(schema):
    df = pd.DataFrame({
        "case_id": ["a", "b", "c", "d"],
        "age": [50.0, np.nan, 70.0, 60.0], "sex": ["F", "M", np.nan, "M"],
        "cea": [3.0, 3.0, 3.0, np.nan],  # zero spread -> scale 1, all zeros
        "ct": ["T3", "T3", "T4", np.nan], "cn": ["N0", "N1", "N1", "N1"],
        "mrf": ["1", np.nan, "1", "0"], "emvi": ["0", "0", "0", "0"], "distance_av_cm": [4.0, 6.0, 8.0, 10.0],
        "ypt": ["T0", "T1", "T2", "T3"], "ypn": ["N0", "N0", "N0", "N0"], "trg": ["1", "2", np.nan, "2"],
    })
    pre = ClinicalPreprocessor(schema, ALL)
    x = pre.fit_transform(df)
    f = {name: x[:, i] for i, name in enumerate(pre.feature_names)}
    # age: median 60 fills b; mean 60, population std of [50, 60, 70, 60]
    std = np.std([50.0, 60.0, 70.0, 60.0])
    np.testing.assert_allclose(f["age"], (np.array([50, 60, 70, 60]) - 60) / std, rtol=1e-6)
    np.testing.assert_array_equal(f["cea"], 0.0)
    # sex: mode "M" fills c; ct: mode "T3" fills d; T2 declared but never seen -> zero column
    np.testing.assert_array_equal(f["sex=F"], [1, 0, 0, 0])
    np.testing.assert_array_equal(f["sex=M"], [0, 1, 1, 1])
    np.testing.assert_array_equal(f["ct=T2"], 0)
    np.testing.assert_array_equal(f["ct=T3"], [1, 1, 0, 1])
    # binary kept 0/1, mode "1" fills b
    np.testing.assert_array_equal(f["mrf"], [1, 1, 1, 0])
    np.testing.assert_array_equal(f["emvi"], 0)
    np.testing.assert_array_equal(f["trg=2"], [0, 1, 1, 1])
    np.testing.assert_array_equal(f["trg=3"], 0)
    # every categorical column is one-hot: exactly one 1 per row and column group
    for col in ("sex", "ct", "cn", "ypt", "ypn", "trg"):
        block = np.stack([f[n] for n in pre.feature_names if n.startswith(col + "=")], axis=1)
        np.testing.assert_array_equal(block.sum(axis=1), 1)


def test_numpy_transform_matches_fitted_sklearn(schema):
    train = make_table(schema, 40, 3)
    pre = ClinicalPreprocessor(schema, ALL).fit(train)
    frame = pre._validated_frame(train, "case_id")
    sk = pre.sklearn_transformer_.transform(frame)
    assert sk.shape == (40, pre.n_features)
    np.testing.assert_allclose(pre.transform(train), sk, rtol=1e-6, atol=1e-6)
    # fitted on training rows: numeric features have mean 0 (imputed values included)
    x = pre.transform(train)
    np.testing.assert_allclose(x[:, pre.feature_names.index("age")].mean(), 0.0, atol=1e-5)


def test_nan_handling_and_finite_output(schema):
    train = make_table(schema, 30, 4, missing_rate=0.4)
    assert train[list(schema.columns)].isna().any().all()
    pre = ClinicalPreprocessor(schema, ALL).fit(train)
    test = make_table(schema, 10, 5, missing_rate=0.0)
    for name in schema.columns:
        test[name] = np.nan  # a validation row with everything missing is imputed, not dropped
    for x in (pre.transform(train), pre.transform(test)):
        assert x.dtype == np.float32
        assert np.isfinite(x).all()
    all_missing = pre.transform(test)
    np.testing.assert_array_equal(all_missing, np.repeat(all_missing[:1], 10, axis=0))


def test_accepts_numbers_for_binary_and_integer_coded_categories(schema):
    strings = make_table(schema, 12, 6, missing_rate=0.0)
    numbers = strings.copy()
    numbers["mrf"] = strings["mrf"].astype(int)
    numbers["trg"] = strings["trg"].astype(float)  # e.g. read from CSV without dtype=str
    numbers["age"] = strings["age"].astype(str)  # numeric strings parse
    pre = ClinicalPreprocessor(schema, ALL)
    np.testing.assert_array_equal(pre.fit_transform(strings), ClinicalPreprocessor(schema, ALL).fit_transform(numbers))


# ---------------------------------------------------------------------- leakage and determinism
def test_no_leakage_from_validation_rows(schema):
    train = make_table(schema, 30, 7, prefix="train")
    val = make_table(schema, 10, 8, prefix="val")
    base = ClinicalPreprocessor(schema, ALL).fit(train).transform(val)

    # Changing (only) validation rows must not change how other validation rows are encoded:
    # transform is row-wise and uses nothing but the training fit.
    val_changed = val.copy()
    val_changed.loc[5:, "age"] = 1e4
    val_changed.loc[5:, "ct"] = "T2"
    encoded_changed = ClinicalPreprocessor(schema, ALL).fit(train).transform(val_changed)
    np.testing.assert_array_equal(encoded_changed[:5], base[:5])
    # Fitting on train + an irrelevant transform of other rows first gives the same numbers.
    pre = ClinicalPreprocessor(schema, ALL).fit(train)
    pre.transform(val_changed)
    np.testing.assert_array_equal(pre.transform(val), base)

    # Changing training rows changes the validation encoding (the fit sees them and only them).
    train_changed = train.copy()
    train_changed["age"] = train_changed["age"] + 25.0
    shifted = ClinicalPreprocessor(schema, ALL).fit(train_changed).transform(val)
    age = ClinicalPreprocessor(schema, ALL).feature_names.index("age")
    assert not np.allclose(shifted[:, age], base[:, age])
    other = [i for i in range(base.shape[1]) if i != age]
    np.testing.assert_array_equal(shifted[:, other], base[:, other])

    # Fitting on train + val differs from fitting on train alone (so the test above can fail).
    leaky = ClinicalPreprocessor(schema, ALL).fit(pd.concat([train, val_changed])).transform(val)
    assert not np.allclose(leaky, base)


def test_fit_is_deterministic(schema):
    train = make_table(schema, 25, 9)
    a = ClinicalPreprocessor(schema, ALL).fit(train)
    b = ClinicalPreprocessor(schema, ALL).fit(train.copy())
    np.testing.assert_array_equal(a.state_vector(), b.state_vector())
    np.testing.assert_array_equal(a.transform(train), b.transform(train))
    # refitting the same object on other rows replaces the fit entirely
    a.fit(make_table(schema, 25, 10)).fit(train)
    np.testing.assert_array_equal(a.state_vector(), b.state_vector())


# ---------------------------------------------------------------------- serialisation
@pytest.mark.parametrize("groups", [ALL, ("pretreatment",), ("postoperative",)])
def test_state_vector_round_trip(schema, groups):
    train = make_table(schema, 30, 11)
    val = make_table(schema, 12, 12, missing_rate=0.3)
    pre = ClinicalPreprocessor(schema, groups).fit(train)
    vec = pre.state_vector()
    assert vec.dtype == np.float64 and vec.shape == (ClinicalPreprocessor(schema, groups).state_size,)
    # as it comes back from a torch buffer: maybe float64 but a fresh copy
    loaded = ClinicalPreprocessor.from_state_vector(schema, groups, vec.copy())
    assert loaded.is_fitted and loaded.sklearn_transformer_ is None
    np.testing.assert_array_equal(loaded.transform(val), pre.transform(val))
    np.testing.assert_array_equal(loaded.transform(train), pre.transform(train))
    np.testing.assert_array_equal(loaded.state_vector(), vec)
    # the full schema or its subset both work as the schema argument
    via_subset = ClinicalPreprocessor.from_state_vector(schema.subset(groups), groups, vec)
    np.testing.assert_array_equal(via_subset.transform(val), pre.transform(val))


def test_state_vector_through_a_torch_state_dict(schema, tmp_path):
    """The trainer's use: a float64 buffer in a module, saved, strictly loaded into a fresh module."""
    import torch

    train, val = make_table(schema, 30, 27), make_table(schema, 9, 28)
    pre = ClinicalPreprocessor(schema, ALL).fit(train)

    class Holder(torch.nn.Module):
        def __init__(self, size: int):
            super().__init__()
            self.register_buffer("clinical_state", torch.zeros(size, dtype=torch.float64))

    saved = Holder(pre.state_size)
    saved.clinical_state.copy_(torch.from_numpy(pre.state_vector()))
    torch.save(saved.state_dict(), tmp_path / "checkpoint.pth")
    fresh = Holder(ClinicalPreprocessor(schema, ALL).state_size)  # built before any data is seen
    fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pth"), strict=True)
    loaded = ClinicalPreprocessor.from_state_vector(schema, ALL, fresh.clinical_state)
    np.testing.assert_array_equal(loaded.transform(val), pre.transform(val))


def test_state_vector_length_fixed_by_schema_and_groups(schema):
    sizes = {ClinicalPreprocessor(schema, ALL).fit(make_table(schema, n, seed)).state_vector().shape
             for n, seed in ((5, 1), (40, 2), (17, 3))}
    assert sizes == {(ClinicalPreprocessor(schema, ALL).state_size,)}


def test_state_vector_rejects_wrong_input(schema):
    pre = ClinicalPreprocessor(schema, ALL).fit(make_table(schema, 20, 13))
    vec = pre.state_vector()
    with pytest.raises(ClinicalPreprocessingError, match="length"):
        ClinicalPreprocessor.from_state_vector(schema, ("pretreatment",), vec)
    with pytest.raises(ClinicalPreprocessingError, match="not marked fitted"):
        ClinicalPreprocessor.from_state_vector(schema, ALL, np.zeros_like(vec))
    # same length, different categories -> fingerprint mismatch
    d = schema.to_dict()
    d["columns"]["sex"]["categories"] = ["M", "F"]
    with pytest.raises(ClinicalPreprocessingError, match="different column layout"):
        ClinicalPreprocessor.from_state_vector(ClinicalSchema.from_dict(d), ALL, vec)
    with pytest.raises(ClinicalPreprocessingError, match="float64"):
        ClinicalPreprocessor.from_state_vector(schema, ALL, vec.astype(np.float32))
    bad = vec.copy()
    bad[-1] = 99  # category index out of range (trg is last)
    with pytest.raises(ClinicalPreprocessingError, match="trg"):
        ClinicalPreprocessor.from_state_vector(schema, ALL, bad)


# ---------------------------------------------------------------------- errors
def test_undeclared_category_names_case_column_value(schema):
    pre = ClinicalPreprocessor(schema, ALL).fit(make_table(schema, 20, 16))
    val = make_table(schema, 5, 17, prefix="val")
    val.loc[3, "ct"] = "T5"
    with pytest.raises(ValueError, match=r"'ct'.*val_003.*'T5'"):
        pre.transform(val)
    # also at fit time, and with another id column
    train = make_table(schema, 6, 18).rename(columns={"case_id": "patient_id"})
    train.loc[2, "sex"] = "X"
    with pytest.raises(ValueError, match=r"'sex'.*case_002.*'X'"):
        ClinicalPreprocessor(schema, ALL).fit(train, id_column="patient_id")
    # without an id column, the row index is named
    val2 = make_table(schema, 5, 19).drop(columns="case_id")
    val2.loc[4, "mrf"] = "yes"
    with pytest.raises(ValueError, match=r"'mrf'.*row index 4.*'yes'"):
        pre.transform(val2)


def test_bad_numeric_value_is_named(schema):
    pre = ClinicalPreprocessor(schema, ALL).fit(make_table(schema, 20, 20))
    val = make_table(schema, 4, 21, prefix="val")
    val["cea"] = val["cea"].astype(object)
    val.loc[1, "cea"] = "<5"
    with pytest.raises(ValueError, match=r"'cea'.*val_001.*'<5'"):
        pre.transform(val)
    val.loc[1, "cea"] = np.inf
    with pytest.raises(ValueError, match=r"'cea'.*val_001.*inf"):
        pre.transform(val)


def test_missing_required_column_is_named(schema):
    train = make_table(schema, 10, 22).drop(columns=["emvi", "trg"])
    with pytest.raises(ValueError, match=r"\['emvi', 'trg'\]"):
        ClinicalPreprocessor(schema, ALL).fit(train)
    pre = ClinicalPreprocessor(schema, ALL).fit(make_table(schema, 10, 23))
    with pytest.raises(ValueError, match="ypn"):
        pre.transform(make_table(schema, 3, 24).drop(columns="ypn"))


def test_column_entirely_missing_in_training_fold(schema):
    train = make_table(schema, 10, 25)
    train["distance_av_cm"] = np.nan
    with pytest.raises(ValueError, match=r"distance_av_cm.*cannot impute"):
        ClinicalPreprocessor(schema, ALL).fit(train)
    train = make_table(schema, 10, 25)
    train["ypn"] = np.nan
    with pytest.raises(ValueError, match=r"ypn.*cannot impute"):
        ClinicalPreprocessor(schema, ALL).fit(train)
    # ...but a postoperative gap does not matter to the pretreatment-only model
    assert ClinicalPreprocessor(schema, ("pretreatment",)).fit(train).is_fitted


def test_other_bad_arguments(schema):
    with pytest.raises(ValueError, match="zero training rows"):
        ClinicalPreprocessor(schema, ALL).fit(make_table(schema, 3, 26).iloc[:0])
    with pytest.raises(ValueError, match="unknown clinical group"):
        ClinicalPreprocessor(schema, ("radiology",))
    with pytest.raises(TypeError):
        ClinicalPreprocessor(schema, "pretreatment")


# ---------------------------------------------------------------------- declared numeric transforms
def _without_transforms(schema: ClinicalSchema) -> ClinicalSchema:
    d = schema.to_dict()
    for spec in d["columns"].values():
        spec.pop("transform", None)
    return ClinicalSchema.from_dict(d)


def _with_transform(schema: ClinicalSchema, column: str, transform) -> dict:
    d = schema.to_dict()
    d["columns"][column]["transform"] = transform
    return d


def test_larc_schema_declares_log_cea(schema):
    assert schema.columns["cea"].transform == "log"
    assert [n for n, c in schema.columns.items() if c.transform is not None] == ["cea"]
    # the key survives the dataset.json multitask block (schema.to_dict()["columns"]) and JSON
    assert schema.to_dict()["columns"]["cea"]["transform"] == "log"
    assert ClinicalSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    assert "transform" not in schema.to_dict()["columns"]["age"]


def test_log_transform_carried_by_state_vector_to_prediction(schema):
    """Fit on a training fold, keep only the state vector (the checkpoint buffer), rebuild at
    prediction from the schema as dataset.json carries it: the log is applied there too."""
    from nnunet_multitask.contract import DatasetContract

    train = make_table(schema, 40, 30, missing_rate=0.2)
    new = make_table(schema, 12, 31, missing_rate=0.3, prefix="new")
    fitted = ClinicalPreprocessor(schema, ALL).fit(train)
    vec = fitted.state_vector()

    block = json.loads(json.dumps({"clinical_columns": schema.to_dict()["columns"],
                                   "time_column": schema.time_column, "event_column": schema.event_column}))
    at_prediction = DatasetContract.from_block(block).schema()
    assert at_prediction.columns["cea"].transform == "log"
    loaded = ClinicalPreprocessor.from_state_vector(at_prediction, ALL, vec.copy())
    x_new = loaded.transform(new)
    np.testing.assert_array_equal(x_new, fitted.transform(new))

    # by hand: log first, then the median / mean / population std of the transformed training fold
    t_train = np.log(train["cea"].to_numpy(dtype=float))
    median = np.nanmedian(t_train)
    imputed = np.where(np.isnan(t_train), median, t_train)
    mean, std = imputed.mean(), imputed.std()
    t_new = np.log(new["cea"].to_numpy(dtype=float))
    expected = (np.where(np.isnan(t_new), median, t_new) - mean) / std
    assert np.isnan(t_new).any()  # missing CEA is imputed in the log space
    cea = fitted.feature_names.index("cea")
    np.testing.assert_allclose(x_new[:, cea], expected, rtol=1e-5, atol=1e-6)
    # state layout: header 2, age 3, sex 1, then cea's median, mean, scale (of the logs)
    np.testing.assert_allclose(vec[6:9], [median, mean, std], rtol=1e-12)
    # the sklearn fit (on the transformed frame) agrees with the numpy transform
    np.testing.assert_allclose(fitted.transform(train),
                               fitted.sklearn_transformer_.transform(fitted._validated_frame(train, "case_id")),
                               rtol=1e-6, atol=1e-6)

    # without the declared transform the encoding differs (only in the cea feature) ...
    plain_schema = _without_transforms(schema)
    plain = ClinicalPreprocessor(plain_schema, ALL).fit(train)
    x_plain = plain.transform(new)
    assert not np.allclose(x_plain[:, cea], x_new[:, cea])
    other = [i for i in range(x_new.shape[1]) if i != cea]
    np.testing.assert_array_equal(x_plain[:, other], x_new[:, other])
    raw = new["cea"].to_numpy(dtype=float)
    raw_train = train["cea"].to_numpy(dtype=float)
    raw_imputed = np.where(np.isnan(raw_train), np.nanmedian(raw_train), raw_train)
    np.testing.assert_allclose(x_plain[:, cea], (np.where(np.isnan(raw), np.nanmedian(raw_train), raw)
                                                 - raw_imputed.mean()) / raw_imputed.std(), rtol=1e-5, atol=1e-6)
    # ... and a vector fitted with the transform is refused by a schema without it, and vice versa
    with pytest.raises(ClinicalPreprocessingError, match="different column layout"):
        ClinicalPreprocessor.from_state_vector(plain_schema, ALL, vec)
    with pytest.raises(ClinicalPreprocessingError, match="different column layout"):
        ClinicalPreprocessor.from_state_vector(schema, ALL, plain.state_vector())


def test_log1p_transform_by_hand(schema):
    log1p_schema = ClinicalSchema.from_dict(_with_transform(schema, "distance_av_cm", "log1p"))
    df = make_table(schema, 5, 32, missing_rate=0.0)
    df["distance_av_cm"] = [0.0, 3.0, np.nan, 7.0, -0.5]  # 0 and -0.5 are inside log1p's domain
    pre = ClinicalPreprocessor(log1p_schema, ("pretreatment",))
    x = pre.fit_transform(df)[:, pre.feature_names.index("distance_av_cm")]
    t = np.log1p([0.0, 3.0, 7.0, -0.5])
    median = np.median(t)
    t = np.array([t[0], t[1], median, t[2], t[3]])
    np.testing.assert_allclose(x, (t - t.mean()) / t.std(), rtol=1e-5, atol=1e-6)


def test_transform_domain_errors_name_column_case_and_value(schema):
    pre = ClinicalPreprocessor(schema, ALL).fit(make_table(schema, 20, 33))
    val = make_table(schema, 5, 34, prefix="val")
    val.loc[2, "cea"] = 0.0
    with pytest.raises(ValueError, match=r"'cea'.*transform 'log' needs values > 0.*val_002.*0\.0"):
        pre.transform(val)
    val.loc[2, "cea"] = -1.5
    val.loc[4, "cea"] = np.nan  # missing is not an error: it is imputed
    with pytest.raises(ValueError, match=r"'cea'.*val_002.*-1\.5") as info:
        pre.transform(val)
    assert "val_004" not in str(info.value)
    # at fit time too, and the row index is named without an id column
    train = make_table(schema, 8, 35).drop(columns="case_id")
    train.loc[6, "cea"] = -2.0
    with pytest.raises(ValueError, match=r"'cea'.*row index 6.*-2\.0"):
        ClinicalPreprocessor(schema, ALL).fit(train)
    # log1p: -1 is outside, anything above is inside
    log1p_schema = ClinicalSchema.from_dict(_with_transform(schema, "age", "log1p"))
    train = make_table(schema, 8, 36)
    train.loc[3, "age"] = -1.0
    with pytest.raises(ValueError, match=r"'age'.*transform 'log1p' needs values > -1.*case_003.*-1\.0"):
        ClinicalPreprocessor(log1p_schema, ALL).fit(train)


def test_schema_rejects_bad_transforms(schema):
    with pytest.raises(SchemaError, match=r"column 'cea'.*transform must be one of.*'sqrt'"):
        ClinicalSchema.from_dict(_with_transform(schema, "cea", "sqrt"))
    with pytest.raises(SchemaError, match=r"column 'cea'.*transform must be one of.*\['log'\]"):
        ClinicalSchema.from_dict(_with_transform(schema, "cea", ["log"]))
    with pytest.raises(ValueError, match=r"column 'trg' of type categorical cannot declare a transform"):
        ClinicalSchema.from_dict(_with_transform(schema, "trg", "log"))
    with pytest.raises(ValueError, match=r"column 'mrf' of type binary cannot declare a transform"):
        ClinicalSchema.from_dict(_with_transform(schema, "mrf", "log1p"))
    # the multitask block of dataset.json is validated by the same code
    from nnunet_multitask.contract import DatasetContract
    block = {"clinical_columns": _with_transform(schema, "age", "exp")["columns"],
             "time_column": "dfs_months", "event_column": "dfs_event"}
    with pytest.raises(ValueError, match=r"column 'age'.*'exp'"):
        DatasetContract.from_block(block).schema()
