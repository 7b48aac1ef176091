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


# ----------------------------------------------------------------- image findings
FINDINGS_SHAPE = (24, 24, 8)
FINDINGS_SEED = 3
BEYOND_QUANTITIES = ("heterogeneity", "margin", "extension", "emvi", "nodes")


def _cohort_digest(folder: Path) -> str:
    """One hash over the CSVs and every image array (with its grid) of a cohort folder."""
    import hashlib
    digest = hashlib.sha256()
    for name in ("clinical.csv", "ground_truth.csv", "missing_series.csv"):
        digest.update((folder / name).read_bytes())
    for patient in sorted((folder / "images").iterdir()):
        for path in sorted(patient.iterdir()):
            image, array = _read(path)
            digest.update(f"{patient.name}/{path.name}{array.dtype}{array.shape}{image.GetOrigin()}"
                          f"{image.GetSpacing()}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# Computed with the generator as it was before the findings existed (commit 51d98e5).
DEFAULT_DIGESTS = {
    ((24, 24, 8), 4, 3): "5304a4fc031154dad93f5c62f78abde36e81b21d0cc98f69e0e2bb4d301b03db",
    ((40, 40, 10), 2, 11): "00f0a03c038a75792bfe7c0ff202525fec8c9b19ef522fe0b6ba32ef2e2c6cf6",
}
DEFAULT_MODEL_DIGEST = "412d4804e227c2892e323f17b6c2e628af9946bc85fd7db8d56f705cfd85030f"


def test_default_cohort_is_byte_identical_to_before_the_findings(tmp_path):
    import hashlib
    for (shape, n, seed), expected in DEFAULT_DIGESTS.items():
        out = tmp_path / f"default{shape[0]}"
        syn.generate_cohort(out, n, seed=seed, shape=shape)
        assert _cohort_digest(out) == expected, (shape, n, seed)
        # The options at their defaults are the default.
        again = tmp_path / f"explicit{shape[0]}"
        syn.generate_cohort(again, n, seed=seed, shape=shape, findings=(), image_risk=None, permute_findings=False,
                            radiologist_columns=True)
        assert _cohort_digest(again) == expected
    model = syn.sample_outcome_model(50, seed=7)
    assert hashlib.sha256(model.to_csv(index=False).encode()).hexdigest() == DEFAULT_MODEL_DIGEST


def _patient(index, findings=(), **kwargs):
    return syn.simulate_patient(FINDINGS_SEED, index, 3, FINDINGS_SHAPE, syn.DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                                syn.DEFAULT_ADMIN_CENSORING_MONTHS, findings=findings, **kwargs)


def _array(patient, series):
    return sitk.GetArrayFromImage(patient["images"][series])


def _first_patient(condition, limit=40):
    return next(i for i in range(limit) if condition(syn.finding_amplitudes(FINDINGS_SEED, i)))


def test_heterogeneity_and_kurtosis_keep_the_mask_and_the_quantities():
    """(a) The foci change the images but neither the mask nor any series' noise-free tumour mean;
    (e) kurtosis moves only the Kapp tumour value, by its own amplitude."""
    for index in (0, 1, 2):
        plain, textured, kurtotic = _patient(index), _patient(index, ("heterogeneity",)), _patient(index, ("kurtosis",))
        np.testing.assert_array_equal(_array(plain, "mask"), _array(textured, "mask"))
        for series in syn.SERIES:
            assert textured["tumour_means"][series] == pytest.approx(plain["tumour_means"][series], rel=1e-9)
            assert not np.array_equal(_array(plain, series), _array(textured, series)), series
        np.testing.assert_array_equal(_array(plain, "mask"), _array(kurtotic, "mask"))
        for series in ("T2", "ADC", "Dapp"):
            assert kurtotic["tumour_means"][series] == plain["tumour_means"][series]
            np.testing.assert_array_equal(_array(plain, series), _array(kurtotic, series))
        shift = syn.KURTOSIS_SHIFT * kurtotic["finding_amplitudes"]["kurtosis"]
        assert kurtotic["tumour_means"]["Kapp"] - plain["tumour_means"]["Kapp"] == pytest.approx(shift, rel=0.02)
        # Drawn without risk: the same hazard, so the same outcome.
        assert textured["ground_truth_row"]["linear_predictor"] == plain["ground_truth_row"]["linear_predictor"]


def test_margin_and_extension_change_the_shape_at_the_same_volume():
    """(b), (c) A different mask of the same voxel count; the tumour means move only by the sampling
    of the risk-free texture (a few per cent at most)."""
    for index in (0, 1, 2):
        plain, margin = _patient(index), _patient(index, ("margin",))
        confined, extended = _patient(index, ("nodes",)), _patient(index, ("extension", "nodes"))
        for before, after in ((plain, margin), (confined, extended)):
            mask_before, mask_after = _array(before, "mask"), _array(after, "mask")
            assert mask_after.sum() == mask_before.sum() and not np.array_equal(mask_before, mask_after)
            for series in syn.SERIES:
                assert after["tumour_means"][series] == pytest.approx(before["tumour_means"][series], rel=0.04)
        # The confined body has the volume of today's tumour too.
        assert _array(confined, "mask").sum() == _array(plain, "mask").sum()


def test_extension_reaches_the_fascia_exactly_when_mrf_is_read():
    deep = _first_patient(lambda a: a["extension"] > 1.5)
    shallow = _first_patient(lambda a: a["extension"] < -1.0)
    for index, expected in ((deep, 1), (shallow, 0)):
        patient = _patient(index, ("extension",))
        assert patient["complete_clinical"]["mrf"] == expected == syn.mrf_from_extension(
            patient["finding_amplitudes"]["extension"])


@pytest.mark.parametrize("finding, other", [("emvi", "nodes"), ("nodes", "emvi")])
def test_nodes_and_vessel_lie_outside_the_unchanged_mask(finding, other):
    """(c) emvi, (d) nodes: drawn outside the tumour label; the mask and the tumour means do not move."""
    index = _first_patient(lambda a: a["emvi"] > 0.5)   # a patient with EMVI, so the vessel is drawn
    without, with_it = _patient(index, (other,)), _patient(index, (finding, other))
    np.testing.assert_array_equal(_array(without, "mask"), _array(with_it, "mask"))
    assert with_it["tumour_means"] == without["tumour_means"]
    label = syn.TISSUES.index("vessel" if finding == "emvi" else "node")
    drawn = with_it["tissue_labels"] == label
    assert drawn.sum() > 0 and not (drawn & _array(with_it, "mask").astype(bool)).any()
    assert not np.array_equal(_array(without, "T2"), _array(with_it, "T2"))
    if finding == "emvi":
        assert with_it["complete_clinical"]["emvi"] == 1
        absent = _first_patient(lambda a: a["emvi"] < 0)
        patient = _patient(absent, ("emvi",))
        assert patient["complete_clinical"]["emvi"] == 0
        assert not (patient["tissue_labels"] == label).any()


def test_every_finding_renders_at_the_smallest_shape():
    patient = syn.simulate_patient(1, 0, 3, syn.MIN_SHAPE, 0.04, (36.0, 84.0), findings="all", image_risk="all")
    assert _array(patient, "mask").sum() > 0
    assert set(patient["ground_truth_row"]) >= {f"finding_{f}" for f in syn.FINDINGS}


def test_finding_amplitudes_are_independent_of_volume_and_tumour_adc():
    """The amplitudes against the rendered log volume and tumour mean ADC of 800 tiny patients."""
    rows = []
    for index in range(800):
        patient = syn.simulate_patient(0, index, 3, syn.MIN_SHAPE, 0.04, (36.0, 84.0), findings="all")
        truth = patient["ground_truth_row"]
        rows.append({"log_volume": np.log(truth["tumour_volume_ml"]), "adc": truth["tumour_mean_adc"],
                     **patient["finding_amplitudes"]})
    table = pd.DataFrame(rows)
    correlations = table.corr().loc[list(syn.FINDINGS), ["log_volume", "adc"]]
    assert (correlations.abs() < 0.1).all().all(), correlations
    # Standardised amplitudes, and the five findings beyond the quantities give an image term of SD ~0.8.
    assert table[list(syn.FINDINGS)].mean().abs().max() < 0.1
    assert table[list(syn.FINDINGS)].std().between(0.9, 1.1).all()
    term = sum(syn.FINDING_COEFFICIENTS[f] * table[f] for f in BEYOND_QUANTITIES)
    assert 0.72 < term.std() < 0.9


def test_image_risk_follows_the_options():
    index = 4
    plain = _patient(index)
    drawn = _patient(index, BEYOND_QUANTITIES)
    risky = _patient(index, BEYOND_QUANTITIES, image_risk=BEYOND_QUANTITIES)
    mixed = _patient(index, BEYOND_QUANTITIES, image_risk=("volume", "adc") + BEYOND_QUANTITIES)
    # Drawn without risk: volume and ADC terms as today, finding terms 0.
    terms = drawn["image_terms"]
    assert all(terms[f] == 0.0 for f in syn.FINDINGS) and terms["volume"] != 0.0
    # In image_risk: the coefficient times the amplitude; volume and ADC carry none.
    terms = risky["image_terms"]
    assert terms["volume"] == terms["adc"] == 0.0
    for f in BEYOND_QUANTITIES:
        assert terms[f] == pytest.approx(syn.FINDING_COEFFICIENTS[f] * risky["finding_amplitudes"][f])
    # The findings' risk does not change the images; volume and ADC left out of the risk are redrawn.
    for series in ("T2", "ADC", "mask"):
        np.testing.assert_array_equal(_array(drawn, series), _array(mixed, series))
    assert risky["ground_truth_row"]["tumour_volume_ml"] != drawn["ground_truth_row"]["tumour_volume_ml"]
    assert plain["ground_truth_row"].keys() == set(syn.GROUND_TRUTH_COLUMNS)


def test_quantities_without_risk_are_independent_of_the_hazard():
    """Volume and ADC left out of image_risk are redrawn apart from the disease burden: in today's cohort
    they correlate with the clinical part of the hazard, in a findings-only cohort they do not."""
    def table(**kwargs):
        rows = []
        for i in range(400):
            p = syn.simulate_patient(FINDINGS_SEED, i, 3, FINDINGS_SHAPE, syn.DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                                     syn.DEFAULT_ADMIN_CENSORING_MONTHS, render=False, **kwargs)
            truth = p["ground_truth_row"]
            clinical = sum(v for k, v in syn.linear_predictor_terms(
                p["complete_clinical"], 8.0, syn.ADC_POPULATION_MEAN).items() if k not in syn.IMAGE_TERMS)
            rows.append({"log_volume": np.log(truth["tumour_volume_ml"]), "adc": truth["tumour_mean_adc"],
                         "clinical_lp": clinical, "centre3": float(truth["centre"] == 3)})
        return pd.DataFrame(rows).corr()
    today = table()
    assert today.loc["log_volume", "clinical_lp"] > 0.3 and today.loc["adc", "clinical_lp"] < -0.15
    only = table(findings=BEYOND_QUANTITIES, image_risk=BEYOND_QUANTITIES)
    assert only.loc[["log_volume", "adc"], ["clinical_lp", "centre3"]].abs().max().max() < 0.1


def test_image_risk_refuses_an_undrawn_finding(tmp_path, capsys):
    with pytest.raises(ValueError, match="not drawn"):
        syn.generate_cohort(tmp_path / "a", 2, shape=FINDINGS_SHAPE, findings=("margin",),
                            image_risk=("margin", "nodes"))
    # a permutation of one patient is the identity; MRF / EMVI risk must be shown by table or images
    with pytest.raises(ValueError, match="at least 2 patients"):
        syn.generate_cohort(tmp_path / "b", 1, shape=FINDINGS_SHAPE, findings=("margin",), permute_findings=True)
    with pytest.raises(ValueError, match="extension and emvi"):
        syn.generate_cohort(tmp_path / "c", 2, shape=FINDINGS_SHAPE, findings=("margin", "emvi"),
                            radiologist_columns=False)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown"):
        syn.generate_cohort(tmp_path / "b", 2, shape=FINDINGS_SHAPE, findings=("texture",))
    with pytest.raises(ValueError, match="permute"):
        syn.generate_cohort(tmp_path / "c", 2, shape=FINDINGS_SHAPE, permute_findings=True)
    args = ["--out", str(tmp_path / "d"), "--patients", "2", "--shape", "16", "16", "4", "--no-progress"]
    assert syn.main(args + ["--findings", "margin", "--image-risk", "volume,nodes"]) == 2
    assert "not drawn" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert syn.parse_term_list("all", syn.FINDINGS, "findings") == syn.FINDINGS
    assert syn.parse_term_list("nodes, margin", syn.FINDINGS, "findings") == ("margin", "nodes")
    assert syn.parse_term_list("none", syn.IMAGE_RISK_TERMS, "image_risk") == ()


@pytest.fixture(scope="module")
def findings_cohorts(tmp_path_factory):
    """The same findings cohort with the finding risk, and with it permuted."""
    root = tmp_path_factory.mktemp("findings")
    options = {"shape": FINDINGS_SHAPE, "seed": FINDINGS_SEED, "findings": BEYOND_QUANTITIES,
               "image_risk": BEYOND_QUANTITIES}
    syn.generate_cohort(root / "risk", 6, **options)
    syn.generate_cohort(root / "permuted", 6, permute_findings=True, **options)
    return root / "risk", root / "permuted"


def test_ground_truth_reports_amplitudes_and_terms(findings_cohorts):
    cohort, _ = findings_cohorts
    truth = pd.read_csv(cohort / "ground_truth.csv")
    assert list(truth.columns) == (syn.GROUND_TRUTH_COLUMNS + [f"finding_{f}" for f in BEYOND_QUANTITIES]
                                   + [f"term_{t}" for t in syn.IMAGE_RISK_TERMS])
    for f in BEYOND_QUANTITIES:
        np.testing.assert_allclose(truth[f"term_{f}"], syn.FINDING_COEFFICIENTS[f] * truth[f"finding_{f}"],
                                   atol=2e-6)
    assert (truth[["term_volume", "term_adc", "term_kurtosis"]] == 0).all().all()
    for index, pid in enumerate(truth["patient_id"]):
        amplitudes = syn.finding_amplitudes(FINDINGS_SEED, index)   # without rendering
        assert truth.loc[index, "finding_margin"] == pytest.approx(amplitudes["margin"], abs=1e-6), pid
    # MRF and EMVI are what the images show.
    clinical = pd.read_csv(cohort / "clinical.csv")
    emvi = [syn.emvi_from_vessel(a) for a in truth["finding_emvi"]]
    known = clinical["emvi"].notna()
    assert (clinical.loc[known, "emvi"].astype(int) == np.array(emvi)[known]).all()


def test_permutation_control_keeps_the_images_and_moves_the_risk(findings_cohorts):
    cohort, permuted = findings_cohorts
    for patient in sorted((cohort / "images").iterdir()):
        for path in patient.iterdir():
            np.testing.assert_array_equal(_read(path)[1], _read(permuted / "images" / patient.name / path.name)[1])
    truth, control = pd.read_csv(cohort / "ground_truth.csv"), pd.read_csv(permuted / "ground_truth.csv")
    finding_columns = [f"finding_{f}" for f in BEYOND_QUANTITIES]
    pd.testing.assert_frame_equal(truth[finding_columns], control[finding_columns])
    # Each hazard uses another patient's amplitudes, a permutation of the cohort.
    source = control["findings_hazard_from"]
    assert sorted(source) == sorted(truth["patient_id"]) and (source != control["patient_id"]).all()
    term_columns = [f"term_{f}" for f in BEYOND_QUANTITIES]
    expected = truth.set_index("patient_id").loc[source, term_columns].to_numpy()
    np.testing.assert_allclose(control[term_columns].to_numpy(), expected)
    assert not np.allclose(truth["linear_predictor"], control["linear_predictor"])
    np.testing.assert_allclose(control["linear_predictor"] - control[term_columns].sum(axis=1),
                               truth["linear_predictor"] - truth[term_columns].sum(axis=1), atol=1e-5)


def test_without_radiologist_columns_the_converter_reads_the_written_schema(tmp_path, monkeypatch):
    from dataset_conversion.convert_larc import main as convert_main
    cohort = tmp_path / "cohort"
    assert syn.main(["--out", str(cohort), "--patients", "10", "--seed", "2", "--shape", "16", "16", "4",
                     "--no-progress", "--findings", "extension,emvi", "--image-risk", "extension,emvi",
                     "--no-radiologist-columns"]) == 0
    clinical = pd.read_csv(cohort / "clinical.csv")
    assert list(clinical.columns) == [c for c in syn.CLINICAL_COLUMNS if c not in ("mrf", "emvi")]
    schema = ClinicalSchema.load(cohort / "schema.json")
    assert list(schema.columns) == [c for c in ClinicalSchema.load().columns if c not in ("mrf", "emvi")]
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    with contextlib.redirect_stdout(io.StringIO()):
        assert convert_main(["--cohort", str(cohort), "--schema", str(cohort / "schema.json"), "--dataset-id", "577",
                             "--name", "NORAD", "--folds", "2", "--raw-root", str(tmp_path / "raw")]) == 0
    import json
    dataset = json.loads((tmp_path / "raw" / "Dataset577_NORAD" / "dataset.json").read_text())
    assert "mrf" not in dataset["multitask"]["clinical_columns"]
