"""Tests of the synthetic LARC cohort generator (dataset_conversion/synthetic_larc.py).

Images are tiny (40 x 40 x 10 voxels, 8 patients); the statistical checks of the outcome
model run on the model alone (no images), which is what makes them cheap enough for 1500
patients.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sksurv.metrics import concordance_index_censored

from clinical.outcomes import recurrence_label
from clinical.schema import ClinicalSchema
from dataset_conversion import synthetic_larc as syn

SMALL_SHAPE = (40, 40, 10)
N_SMALL = 8
SEED = 11


def _read(path: Path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _physical_bounds(image: sitk.Image):
    """Physical positions of the first and last voxel centres (identity direction)."""
    first = np.array(image.TransformIndexToPhysicalPoint([0, 0, 0]))
    last = np.array(image.TransformIndexToPhysicalPoint([s - 1 for s in image.GetSize()]))
    return first, last


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "cohort"
    table = syn.generate_cohort(out, N_SMALL, seed=SEED, shape=SMALL_SHAPE)
    assert len(table) == N_SMALL
    return out


# ----------------------------------------------------------------- layout and determinism
def test_layout_is_the_cohort_contract(cohort):
    assert sorted(p.name for p in cohort.iterdir()) == ["clinical.csv", "ground_truth.csv", "images",
                                                        "missing_series.csv"]
    # Nothing removed: header only.
    assert (cohort / "missing_series.csv").read_text() == "patient_id,missing_series\n"
    clinical = pd.read_csv(cohort / "clinical.csv", dtype=str)
    assert list(clinical.columns) == syn.CLINICAL_COLUMNS
    assert list(clinical["patient_id"]) == [f"P{i:04d}" for i in range(1, N_SMALL + 1)]
    for pid in clinical["patient_id"]:
        files = sorted(p.name for p in (cohort / "images" / pid).iterdir())
        assert files == ["ADC.nii.gz", "Dapp.nii.gz", "Kapp.nii.gz", "T2.nii.gz", "mask.nii.gz"]
    truth = pd.read_csv(cohort / "ground_truth.csv")
    assert list(truth.columns) == ["patient_id", "centre", "linear_predictor", "tumour_volume_ml", "tumour_mean_adc"]
    assert list(truth["patient_id"]) == list(clinical["patient_id"])
    # No staging folders left next to the cohort.
    assert [p.name for p in cohort.parent.iterdir()] == ["cohort"]


def test_same_seed_same_cohort_other_seed_differs(cohort, tmp_path):
    again = tmp_path / "again"
    syn.generate_cohort(again, N_SMALL, seed=SEED, shape=SMALL_SHAPE)
    for name in ("clinical.csv", "ground_truth.csv"):
        assert (again / name).read_bytes() == (cohort / name).read_bytes()
    for pid in ("P0001", "P0005"):
        for series in ("T2", "ADC", "Dapp", "Kapp", "mask"):
            first, first_array = _read(cohort / "images" / pid / f"{series}.nii.gz")
            second, second_array = _read(again / "images" / pid / f"{series}.nii.gz")
            np.testing.assert_array_equal(first_array, second_array)
            assert first.GetOrigin() == second.GetOrigin() and first.GetSpacing() == second.GetSpacing()

    other = tmp_path / "other"
    syn.generate_cohort(other, N_SMALL, seed=SEED + 1, shape=SMALL_SHAPE)
    assert (other / "clinical.csv").read_bytes() != (cohort / "clinical.csv").read_bytes()
    _, a = _read(cohort / "images" / "P0001" / "T2.nii.gz")
    _, b = _read(other / "images" / "P0001" / "T2.nii.gz")
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_patient_does_not_depend_on_cohort_size(cohort, tmp_path):
    smaller = tmp_path / "three"
    syn.generate_cohort(smaller, 3, seed=SEED, shape=SMALL_SHAPE)
    full = pd.read_csv(cohort / "clinical.csv", dtype=str)
    part = pd.read_csv(smaller / "clinical.csv", dtype=str)
    pd.testing.assert_frame_equal(part, full.iloc[:3])
    _, a = _read(cohort / "images" / "P0003" / "ADC.nii.gz")
    _, b = _read(smaller / "images" / "P0003" / "ADC.nii.gz")
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------- geometry
def test_geometry_of_t2_dwi_and_mask(cohort):
    clinical = pd.read_csv(cohort / "clinical.csv")
    for pid, centre in zip(clinical["patient_id"], clinical["centre"]):
        folder = cohort / "images" / pid
        t2, t2_array = _read(folder / "T2.nii.gz")
        assert t2.GetSize() == SMALL_SHAPE
        assert t2_array.dtype == np.float32
        expected_spacing = syn.centre_protocol(int(centre), 3).t2_spacing
        np.testing.assert_allclose(t2.GetSpacing(), expected_spacing)
        assert 0.6 <= t2.GetSpacing()[0] <= 0.8 and t2.GetSpacing()[2] == pytest.approx(3.0)

        mask, mask_array = _read(folder / "mask.nii.gz")
        assert mask_array.dtype == np.uint8
        assert set(np.unique(mask_array)) == {0, 1}
        assert mask.GetSize() == t2.GetSize()
        np.testing.assert_allclose(mask.GetOrigin(), t2.GetOrigin())
        np.testing.assert_allclose(mask.GetSpacing(), t2.GetSpacing())

        t2_first, t2_last = _physical_bounds(t2)
        dwi_grids = []
        for series in ("ADC", "Dapp", "Kapp"):
            dwi, dwi_array = _read(folder / f"{series}.nii.gz")
            assert dwi_array.dtype == np.float32 and np.isfinite(dwi_array).all() and (dwi_array >= 0).all()
            np.testing.assert_allclose(dwi.GetSpacing(), syn.DWI_SPACING_MM)
            assert dwi.GetSize() != t2.GetSize()
            # Own origin, shifted by a few mm, and the DWI voxel centres enclose the T2 ones:
            # linear resampling onto T2 never extrapolates.
            shift = np.abs(np.array(dwi.GetOrigin()) - np.array(t2.GetOrigin()))
            assert (shift > 0.5).all() and (shift < 15.0).all()
            dwi_first, dwi_last = _physical_bounds(dwi)
            assert (dwi_first < t2_first).all() and (dwi_last > t2_last).all()
            dwi_grids.append((dwi.GetSize(), dwi.GetOrigin()))
        assert dwi_grids[0] == dwi_grids[1] == dwi_grids[2]


def test_resampling_dwi_onto_t2_needs_no_extrapolation(cohort):
    folder = cohort / "images" / "P0002"
    t2 = sitk.ReadImage(str(folder / "T2.nii.gz"))
    adc = sitk.ReadImage(str(folder / "ADC.nii.gz"))
    on_t2 = sitk.GetArrayFromImage(sitk.Resample(adc, t2, sitk.Transform(), sitk.sitkLinear, -1.0))
    assert (on_t2 >= 0).all(), "some T2 voxel fell outside the ADC grid (default value -1 was used)"


# ----------------------------------------------------------------- clinical table
def _check_against_schema(table: pd.DataFrame, schema: ClinicalSchema) -> None:
    for name, spec in schema.columns.items():
        values = table[name].dropna()
        if spec.type == "categorical":
            bad = set(values) - set(spec.categories)
            assert not bad, f"{name}: values {bad} not in {spec.categories}"
        elif spec.type == "binary":
            assert set(values) <= {"0", "1"}, f"{name}: {set(values)}"
        else:
            pd.to_numeric(values, errors="raise")


def test_clinical_table_matches_schema(cohort):
    schema = ClinicalSchema.load()
    table = pd.read_csv(cohort / "clinical.csv", dtype=str, keep_default_na=False, na_values=[""])
    assert set(table.columns) - {"patient_id", "centre", "dfs_months", "dfs_event"} == set(schema.columns)
    _check_against_schema(table, schema)
    for column in ("patient_id", "centre", "dfs_months", "dfs_event"):
        assert table[column].notna().all()
    assert set(table["centre"].astype(int)) <= {1, 2, 3} and 3 in set(table["centre"].astype(int))
    months = table["dfs_months"].astype(float)
    assert (months > 0).all() and (months.round(1) == months).all()
    assert set(table["dfs_event"]) <= {"0", "1"}
    age = table["age"].dropna().astype(float)
    assert age.between(18, 100).all()
    assert table["cea"].dropna().astype(float).gt(0).all()


def test_missing_values_are_few_and_never_in_key_columns():
    rows = [syn.simulate_patient(5, i, 3, syn.DEFAULT_SHAPE, 0.04, (36.0, 84.0), render=False)["clinical_row"]
            for i in range(600)]
    # Through CSV text, as the generator writes it.
    text = io.StringIO()
    syn._clinical_frame(rows).to_csv(text, index=False)
    text.seek(0)
    table = pd.read_csv(text, dtype=str, keep_default_na=False, na_values=[""])
    schema = ClinicalSchema.load()
    _check_against_schema(table, schema)
    for column in ("patient_id", "centre", "dfs_months", "dfs_event"):
        assert table[column].notna().all()
    missing = table[list(schema.columns)].isna().mean()
    assert (missing <= 0.10).all(), missing
    assert missing[list(syn.MISSING_RATE)].between(0.005, 0.10).all(), missing


# ----------------------------------------------------------------- images vs ground truth
def test_ground_truth_volume_and_adc_are_what_the_images_show(cohort):
    truth = pd.read_csv(cohort / "ground_truth.csv")
    for row in truth.itertuples():
        folder = cohort / "images" / row.patient_id
        t2 = sitk.ReadImage(str(folder / "T2.nii.gz"))
        _, mask = _read(folder / "mask.nii.gz")
        tumour = mask.astype(bool)
        assert tumour.sum() >= 8
        mask_ml = tumour.sum() * np.prod(t2.GetSpacing()) / 1000.0
        assert row.tumour_volume_ml == pytest.approx(mask_ml, rel=1e-3)
        adc = sitk.ReadImage(str(folder / "ADC.nii.gz"))
        adc_on_t2 = sitk.GetArrayFromImage(sitk.Resample(adc, t2, sitk.Transform(), sitk.sitkLinear, 0.0))
        # Noise and partial volume at the coarse DWI grid move the measured mean a little.
        assert adc_on_t2[tumour].mean() == pytest.approx(row.tumour_mean_adc, rel=0.12)
    assert truth["tumour_mean_adc"].std() > 30, "tumour ADC should vary across patients"


def test_tumour_contrast_against_rectal_wall(cohort):
    clinical = pd.read_csv(cohort / "clinical.csv")
    wall_label, tumour_label = syn.TISSUES.index("wall"), syn.TISSUES.index("tumour")
    for index, (pid, _centre) in enumerate(zip(clinical["patient_id"], clinical["centre"])):
        patient = syn.simulate_patient(SEED, index, 3, SMALL_SHAPE, syn.DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                                       syn.DEFAULT_ADMIN_CENSORING_MONTHS)
        labels = patient["tissue_labels"]
        folder = cohort / "images" / pid
        t2 = sitk.ReadImage(str(folder / "T2.nii.gz"))
        _, mask = _read(folder / "mask.nii.gz")
        np.testing.assert_array_equal(mask.astype(bool), labels == tumour_label)
        t2_array = sitk.GetArrayFromImage(t2)
        tumour, wall = labels == tumour_label, labels == wall_label
        fat = labels == syn.TISSUES.index("fat")
        assert wall.sum() > 10
        # Intermediate T2 signal: brighter than the wall, darker than fat.
        assert t2_array[wall].mean() < t2_array[tumour].mean() < t2_array[fat].mean(), pid
        maps = {s: sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(folder / f"{s}.nii.gz")), t2,
                                                        sitk.Transform(), sitk.sitkLinear, 0.0))
                for s in ("ADC", "Dapp", "Kapp")}
        # Restricted diffusion: low ADC and Dapp, high kurtosis.
        assert maps["ADC"][tumour].mean() < maps["ADC"][wall].mean(), pid
        assert maps["Dapp"][tumour].mean() < maps["Dapp"][wall].mean(), pid
        assert maps["Kapp"][tumour].mean() > maps["Kapp"][wall].mean(), pid


def test_external_centre_has_its_own_scanner_scale():
    def tissue_t2_median(index):
        patient = syn.simulate_patient(2, index, 3, (40, 40, 10), 0.04, (36.0, 84.0))
        fat = patient["tissue_labels"] == syn.TISSUES.index("fat")
        return np.median(sitk.GetArrayFromImage(patient["images"]["T2"])[fat])

    assert syn.assign_centre(4, 3) == 3 and syn.assign_centre(0, 3) == 1
    internal = [tissue_t2_median(i) for i in (0, 2, 10)]          # centre 1
    external = [tissue_t2_median(i) for i in (4, 9, 14)]          # centre 3
    assert np.mean(external) > 1.15 * np.mean(internal)


# ----------------------------------------------------------------- outcome model
@pytest.fixture(scope="module")
def outcome_sample() -> pd.DataFrame:
    return syn.sample_outcome_model(1500, seed=3)


def test_event_rate_and_known_three_year_status(outcome_sample):
    d = outcome_sample
    assert 0.22 <= d["dfs_event"].mean() <= 0.38
    known = ~np.isnan(recurrence_label(d["dfs_months"], d["dfs_event"], 36.0))
    assert known.mean() > 0.5
    by_centre = d.groupby("centre")["dfs_event"].mean()
    assert by_centre[3] > by_centre[[1, 2]].mean(), "external centre should have more events"
    t4_share = d.groupby("centre")["ct"].apply(lambda s: (s == "T4").mean())
    assert t4_share[3] > t4_share[[1, 2]].mean()


def test_oracle_concordance_and_image_share(outcome_sample):
    d = outcome_sample
    event, months = d["dfs_event"].astype(bool).to_numpy(), d["dfs_months"].to_numpy()
    image = d["term_log_volume_std"] + d["term_adc_std"]
    clinical_only = d["linear_predictor"] - image
    oracle_c = concordance_index_censored(event, months, d["linear_predictor"].to_numpy())[0]
    clinical_c = concordance_index_censored(event, months, clinical_only.to_numpy())[0]
    image_c = concordance_index_censored(event, months, image.to_numpy())[0]
    assert 0.75 <= oracle_c <= 0.87
    # Both parts matter: each alone is informative, and the images add over the clinical terms.
    assert clinical_c > 0.65 and image_c > 0.65
    assert oracle_c > clinical_c + 0.02
    share = image.var() / d["linear_predictor"].var()
    assert 0.2 <= share <= 0.6
    # Tumour volume goes with cT, and lower ADC with a worse prognosis.
    assert d.groupby("ct")["tumour_volume_ml"].median().is_monotonic_increasing
    assert syn.COEFFICIENTS["adc_std"] < 0


def test_censoring_never_beyond_follow_up(outcome_sample):
    d = outcome_sample
    assert (d["dfs_months"] > 0).all()
    assert (d["dfs_months"] <= d["follow_up_months"]).all()
    assert d["follow_up_months"].between(36.0, 84.0).all()
    events = d[d["dfs_event"] == 1]
    assert np.allclose(events["dfs_months"], events["event_time_months"].clip(lower=0.1), atol=0.051)
    censored = d[d["dfs_event"] == 0]
    assert (censored["event_time_months"] > censored["dfs_months"] - 0.051).all()
    lost = censored["loss_time_months"] < censored["follow_up_months"]
    assert 0 < lost.mean() < 0.5, "some, not most, censored patients are lost to follow-up"


def test_rendered_outcome_follows_the_model(cohort):
    # The rendered images measure the image-borne factors the outcome model was built on.
    truth = pd.read_csv(cohort / "ground_truth.csv")
    model = syn.sample_outcome_model(N_SMALL, seed=SEED)
    assert np.corrcoef(truth["linear_predictor"], model["linear_predictor"])[0, 1] > 0.95


# ----------------------------------------------------------------- folder handling and CLI
def test_refuses_non_empty_folder_and_overwrites_on_request(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        syn.generate_cohort(out, 2, shape=(16, 16, 4))
    assert (out / "keep.txt").exists()
    syn.generate_cohort(out, 2, shape=(16, 16, 4), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "clinical.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        syn.generate_cohort(tmp_path / "a", 2, shape=(8, 8, 2))
    with pytest.raises(ValueError, match="n_patients"):
        syn.generate_cohort(tmp_path / "b", 0)
    with pytest.raises(ValueError, match="admin_censoring_months"):
        syn.generate_cohort(tmp_path / "c", 1, shape=(16, 16, 4), admin_censoring_months=(50.0, 20.0))
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--patients", "3", "--seed", "4", "--shape", "16", "16", "4", "--no-progress"]
    assert syn.main(args) == 0
    assert len(pd.read_csv(out / "clinical.csv")) == 3
    assert syn.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert syn.main(args + ["--overwrite", "--centres", "1"]) == 0
    assert set(pd.read_csv(out / "clinical.csv")["centre"]) == {1}


def test_every_flag_has_help():
    assert [a.dest for a in syn.build_parser()._actions if not a.help] == []


# ----------------------------------------------------------------- missing series
MISSING_N = 10
MISSING_SHAPE = ("16", "16", "6")
MISSING_SPECS = ["Dapp,Kapp:0.3", "ADC,Kapp:centre=3"]


def _cli_cohort(out: Path, extra=()) -> str:
    """Run the command line on a small cohort; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = syn.main(["--out", str(out), "--patients", str(MISSING_N), "--seed", str(SEED),
                         "--shape", *MISSING_SHAPE, "--no-progress", *extra])
    assert code == 0
    return printed.getvalue()


def _series_on_disk(cohort: Path) -> dict:
    return {folder.name: {p.name[:-len(".nii.gz")] for p in folder.iterdir()}
            for folder in sorted((cohort / "images").iterdir())}


@pytest.fixture(scope="module")
def complete_and_missing(tmp_path_factory):
    """The same small cohort without and with --missing-series, and what the latter printed."""
    root = tmp_path_factory.mktemp("missing")
    _cli_cohort(root / "complete")
    printed = _cli_cohort(root / "missing", [arg for spec in MISSING_SPECS for arg in ("--missing-series", spec)])
    return root / "complete", root / "missing", printed


def test_missing_series_fraction_and_centre_specs(complete_and_missing):
    _, cohort, printed = complete_and_missing
    on_disk = _series_on_disk(cohort)
    clinical = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    centre_3 = set(clinical.loc[clinical["centre"] == 3, "patient_id"])
    assert centre_3 == {"P0005", "P0010"}   # one patient in five is external
    lacking = {series: {pid for pid, present in on_disk.items() if series not in present}
               for series in ("T2", "ADC", "Dapp", "Kapp", "mask")}
    assert lacking["T2"] == lacking["mask"] == set()
    # Centre spec: exactly the centre's patients; fraction spec: round(0.3 * 10) patients.
    assert lacking["ADC"] == centre_3
    assert len(lacking["Dapp"]) == 3
    # Kapp is named by both specs: the union.
    assert lacking["Kapp"] == lacking["Dapp"] | centre_3
    assert "missing series:" in printed and f"ADC: 2, Dapp: 3, Kapp: {len(lacking['Kapp'])}" in printed


def test_missing_series_csv_matches_files_on_disk(complete_and_missing):
    _, cohort, _ = complete_and_missing
    table = pd.read_csv(cohort / "missing_series.csv", dtype=str)
    assert list(table.columns) == ["patient_id", "missing_series"]
    listed = {pid: set(value.split(";")) for pid, value in zip(table["patient_id"], table["missing_series"])}
    assert list(table["patient_id"]) == sorted(listed)
    expected = {pid: {"ADC", "Dapp", "Kapp"} - present for pid, present in _series_on_disk(cohort).items()
                if {"ADC", "Dapp", "Kapp"} - present}
    assert listed == expected
    # Listed in the order of the series, e.g. "ADC;Dapp;Kapp".
    for value in table["missing_series"]:
        names = value.split(";")
        assert names == sorted(names, key=syn.SERIES.index)


def test_missing_series_changes_nothing_else(complete_and_missing):
    complete, cohort, _ = complete_and_missing
    for name in ("clinical.csv", "ground_truth.csv"):
        assert (cohort / name).read_bytes() == (complete / name).read_bytes()
    written = 0
    for pid, present in _series_on_disk(cohort).items():
        for series in present:
            path = Path("images") / pid / f"{series}.nii.gz"
            assert (cohort / path).read_bytes() == (complete / path).read_bytes(), path
            written += 1
    assert all(len(present) == 5 for present in _series_on_disk(complete).values())
    removed = pd.read_csv(cohort / "missing_series.csv")["missing_series"].str.split(";").str.len().sum()
    assert written == 5 * MISSING_N - removed


def test_missing_series_choice_is_reproducible_from_the_seed():
    first = syn.select_missing_series(["Dapp,Kapp:0.3"], 100, seed=SEED, n_centres=3)
    assert syn.select_missing_series(["Dapp,Kapp:0.3"], 100, seed=SEED, n_centres=3) == first
    assert len(first) == 30 and set(first.values()) == {("Dapp", "Kapp")}
    other = syn.select_missing_series(["Dapp,Kapp:0.3"], 100, seed=SEED + 1, n_centres=3)
    assert len(other) == 30 and set(other) != set(first)
    # Halves round up; a whole cohort for fraction 1.
    assert len(syn.select_missing_series(["ADC:0.25"], 10, seed=0, n_centres=3)) == 3
    assert len(syn.select_missing_series(["ADC:1"], 10, seed=0, n_centres=3)) == 10
    assert syn.select_missing_series([], 10, seed=0, n_centres=3) == {}


def test_missing_series_centre_spec_follows_the_centres_of_the_cohort():
    removed = syn.select_missing_series(["ADC:centre=2"], 12, seed=0, n_centres=4)
    assert set(removed) == {i for i in range(12) if syn.assign_centre(i, 4) == 2}
    with pytest.raises(ValueError, match="unknown centre 4"):
        syn.select_missing_series(["ADC:centre=4"], 12, seed=0, n_centres=3)


@pytest.mark.parametrize("spec, reason", [
    ("T2:0.5", "T2 cannot be removed"),
    ("Dapp,mask:centre=1", "mask cannot be removed"),
    ("DWI:0.3", "unknown series 'DWI'"),
    ("Dapp:0", "fraction must be in"),
    ("Dapp:1.5", "fraction must be in"),
    ("Dapp:-0.2", "fraction must be in"),
    ("Dapp:nan", "fraction must be in"),
    ("Dapp:centre=4", "unknown centre 4"),
    ("Dapp:centre=x", "centre must be an integer"),
    ("Dapp", "expected SERIES"),
    ("Dapp:0.3:1", "expected SERIES"),
    ("Dapp:abc", "expected a fraction"),
    (":0.3", "empty series name"),
])
def test_bad_missing_series_specs_are_refused(tmp_path, capsys, spec, reason):
    out = tmp_path / "refused"
    with pytest.raises(SystemExit) as stopped:
        syn.main(["--out", str(out), "--patients", "3", "--shape", "16", "16", "4", "--no-progress",
                  "--missing-series", "Kapp:0.5", "--missing-series", spec])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert repr(spec) in message and reason in message
    assert list(tmp_path.iterdir()) == []
    # The library refuses it too, before writing anything.
    with pytest.raises(ValueError, match="--missing-series"):
        syn.generate_cohort(out, 3, shape=(16, 16, 4), missing_series=[spec])
    assert list(tmp_path.iterdir()) == []
