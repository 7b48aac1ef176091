"""Tests of the cohort -> nnU-Net raw dataset converter and the clinical table readers."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from clinical.schema import ClinicalSchema
from clinical.tables import (ClinicalTableError, read_case_table, read_clinical_table, read_outcomes_table,
                             write_case_table)
from dataset_conversion.convert_larc import (CHANNELS, EXIT_BAD_INPUT, ConversionError, build_parser, convert_cohort,
                                            main, make_folds)

try:
    from cohort_factory import (T2_ORIGIN, T2_SPACING, physical_points, t2_centre_mm, write_cohort,
                                write_image)
except ImportError:  # tests/ imported as a package
    from tests.cohort_factory import (T2_ORIGIN, T2_SPACING, physical_points, t2_centre_mm, write_cohort,
                                      write_image)

FOLDER = "Dataset501_LARC"
N_PATIENTS = 10
T2_SHAPE = (20, 18, 6)  # x, y, z
SCHEMA = ClinicalSchema.load()


# ---------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Separate nnU-Net roots under tmp_path, so nothing outside the test is read or written."""
    roots = {}
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        roots[sub] = tmp_path / sub
        roots[sub].mkdir()
        monkeypatch.setenv(var, str(roots[sub]))
    return roots


@pytest.fixture
def cohort(tmp_path):
    path = tmp_path / "cohort"
    write_cohort(path, N_PATIENTS, t2_shape_xyz=T2_SHAPE)
    return path


def convert(cohort_dir, **kwargs):
    kwargs.setdefault("n_folds", 2)
    return convert_cohort(cohort_dir, 501, "LARC", **kwargs)


def assert_fails_cleanly(cohort_dir, raw_root, expected_parts, **kwargs):
    """The conversion raises a ValueError naming every expected part and leaves nothing behind."""
    with pytest.raises(ValueError) as info:
        convert(cohort_dir, **kwargs)
    message = str(info.value)
    for part in expected_parts:
        assert part in message, f"{part!r} not in error message: {message}"
    assert not (raw_root / FOLDER).exists()
    assert not [p for p in raw_root.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    return message


def edit_table(cohort_dir, edit):
    path = cohort_dir / "clinical.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table = edit(table)
    table.to_csv(path, index=False)


def set_cell(patient_id, column, value):
    def edit(table):
        table.loc[table["patient_id"] == patient_id, column] = value
        return table
    return edit


def rewrite_mask(cohort_dir, patient_id, **geometry):
    path = cohort_dir / "images" / patient_id / "mask.nii.gz"
    mask = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(mask)
    write_image(array if "array" not in geometry else geometry["array"], path,
                geometry.get("spacing", mask.GetSpacing()), geometry.get("origin", mask.GetOrigin()),
                geometry.get("direction", mask.GetDirection()))


def patient_image(cohort_dir, patient_id, series):
    return cohort_dir / "images" / patient_id / f"{series}.nii.gz"


def modify_voxels(path, change):
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    change(array)
    write_image(array, path, image.GetSpacing(), image.GetOrigin(), image.GetDirection())


# ---------------------------------------------------------------------------- bad input: images
def _missing_modality(c):
    patient_image(c, "HX002", "Dapp").unlink()


def _unreadable_modality(c):
    patient_image(c, "HX002", "Kapp").write_bytes(b"this is not a NIfTI file")


def _mask_size(c):
    rewrite_mask(c, "HX002", array=np.ones((T2_SHAPE[2], T2_SHAPE[1], T2_SHAPE[0] + 1), np.uint8))


def _mask_spacing(c):
    rewrite_mask(c, "HX002", spacing=(0.7, 0.7, 3.5))


def _mask_origin(c):
    rewrite_mask(c, "HX002", origin=(T2_ORIGIN[0] + 0.7, T2_ORIGIN[1], T2_ORIGIN[2]))


def _mask_direction(c):
    rewrite_mask(c, "HX002", direction=(1, 0, 0, 0, -1, 0, 0, 0, -1))


def _mask_labels(c):
    modify_voxels(patient_image(c, "HX002", "mask"), lambda a: a.__setitem__((0, 0, 0), 2))


def _mask_empty(c):
    modify_voxels(patient_image(c, "HX002", "mask"), lambda a: a.fill(0))


def _nan_t2(c):
    modify_voxels(patient_image(c, "HX002", "T2"), lambda a: a.__setitem__((1, 2, 3), np.nan))


def _inf_adc(c):
    modify_voxels(patient_image(c, "HX002", "ADC"), lambda a: a.__setitem__((1, 2, 3), np.inf))


def _diffusion_fov_too_small(c):
    path = patient_image(c, "HX002", "Kapp")
    image = sitk.ReadImage(str(path))
    # 12 mm along z against a 4.5 mm margin: the lowest two of the 6 T2 slices are no longer covered.
    shifted = np.array(image.GetOrigin()) + np.array([0.0, 0.0, 4 * T2_SPACING[2]])
    write_image(sitk.GetArrayFromImage(image), path, image.GetSpacing(), shifted, image.GetDirection())


def _nan_mask(c):
    path = patient_image(c, "HX002", "mask")
    mask = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(mask).astype(np.float32)
    array[0, 0, 0] = np.nan  # SimpleITK would read this back as 0 (background)
    write_image(array, path, mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection())


IMAGE_PROBLEMS = {
    "missing modality": (_missing_modality, ["HX002", "Dapp.nii.gz", "missing file"]),
    "unreadable modality": (_unreadable_modality, ["HX002", "Kapp.nii.gz", "cannot read"]),
    "mask size": (_mask_size, ["HX002", "mask.nii.gz", "not on the T2 grid", "size"]),
    "mask spacing": (_mask_spacing, ["HX002", "mask.nii.gz", "not on the T2 grid", "spacing"]),
    "mask origin": (_mask_origin, ["HX002", "mask.nii.gz", "not on the T2 grid", "origin"]),
    "mask direction": (_mask_direction, ["HX002", "mask.nii.gz", "not on the T2 grid", "direction"]),
    "mask labels": (_mask_labels, ["HX002", "mask.nii.gz", "labels [2] other than {0, 1}"]),
    "empty mask": (_mask_empty, ["HX002", "mask.nii.gz", "empty"]),
    "NaN in T2": (_nan_t2, ["HX002", "T2.nii.gz", "1 NaN or infinite voxel"]),
    "inf in ADC": (_inf_adc, ["HX002", "ADC.nii.gz", "1 NaN or infinite voxel"]),
    "NaN in mask": (_nan_mask, ["HX002", "mask.nii.gz", "1 NaN or infinite voxel"]),
    "diffusion FOV": (_diffusion_fov_too_small, ["HX002", "Kapp.nii.gz", "covers only", "T2 volume"]),
}


@pytest.mark.parametrize("problem", list(IMAGE_PROBLEMS))
def test_bad_image_input_is_refused_and_nothing_is_written(problem, cohort, nnunet_env):
    damage, expected = IMAGE_PROBLEMS[problem]
    damage(cohort)
    assert_fails_cleanly(cohort, nnunet_env["raw"], expected)
    assert not (nnunet_env["preprocessed"] / FOLDER).exists()


# ---------------------------------------------------------------------------- bad input: clinical table
def _duplicate_id(table):
    return pd.concat([table, table[table["patient_id"] == "HX002"]], ignore_index=True)


def _unknown_column(table):
    table["smoker"] = "0"
    return table


TABLE_PROBLEMS = {
    "duplicate patient id": (_duplicate_id, ["clinical.csv", "duplicate patient_id", "HX002"]),
    "images without table row": (lambda t: t[t["patient_id"] != "HX003"],
                                 ["HX003", "images", "no row", "clinical.csv"]),
    "dfs_months missing": (set_cell("HX004", "dfs_months", ""),
                           ["clinical.csv", "HX004", "dfs_months", "missing follow-up time"]),
    "dfs_months zero": (set_cell("HX004", "dfs_months", "0"), ["clinical.csv", "HX004", "dfs_months", "> 0"]),
    "dfs_months negative": (set_cell("HX004", "dfs_months", "-3"), ["clinical.csv", "HX004", "dfs_months", "> 0"]),
    "dfs_event not 0/1": (set_cell("HX004", "dfs_event", "2"), ["clinical.csv", "HX004", "dfs_event", "'2'"]),
    "dfs_event missing": (set_cell("HX004", "dfs_event", ""), ["clinical.csv", "HX004", "dfs_event", "missing"]),
    "unknown column": (_unknown_column, ["clinical.csv", "smoker", "unknown column"]),
    "undeclared category": (set_cell("HX004", "ct", "T5"), ["clinical.csv", "HX004", "'ct'", "'T5'"]),
    "binary not 0/1": (set_cell("HX004", "mrf", "yes"), ["clinical.csv", "HX004", "'mrf'", "'yes'"]),
    "numeric not a number": (set_cell("HX004", "age", "old"), ["clinical.csv", "HX004", "'age'", "'old'"]),
    "missing schema column": (lambda t: t.drop(columns=["trg"]), ["clinical.csv", "trg", "missing"]),
}


@pytest.mark.parametrize("problem", list(TABLE_PROBLEMS))
def test_bad_clinical_table_is_refused_and_nothing_is_written(problem, cohort, nnunet_env):
    edit, expected = TABLE_PROBLEMS[problem]
    edit_table(cohort, edit)
    assert_fails_cleanly(cohort, nnunet_env["raw"], expected)


def test_table_row_without_images_is_refused(cohort, nnunet_env):
    shutil.rmtree(cohort / "images" / "HX003")
    assert_fails_cleanly(cohort, nnunet_env["raw"], ["HX003", "clinical.csv", "no folder"])


def test_unknown_external_centre_is_refused(cohort, nnunet_env):
    assert_fails_cleanly(cohort, nnunet_env["raw"], ["'9'", "not found", "centre"], external_centres=("9",))


def test_fewer_development_patients_than_folds_is_refused(cohort, nnunet_env):
    assert_fails_cleanly(cohort, nnunet_env["raw"], ["development cohort has", "fewer than the 8 folds"], n_folds=8)


def test_other_dataset_with_same_id_is_refused(cohort, nnunet_env):
    (nnunet_env["preprocessed"] / "Dataset501_Other").mkdir()
    assert_fails_cleanly(cohort, nnunet_env["raw"], ["Dataset501_Other", "dataset id 501"])


def test_same_id_lookup_covers_the_raw_root_written_to(cohort, nnunet_env, tmp_path):
    """nnU-Net's lookup (find_candidate_datasets) runs over --raw-root, not $nnUNet_raw, and the
    environment is left as it was."""
    other_raw = tmp_path / "other_raw"
    (other_raw / "Dataset501_Other").mkdir(parents=True)
    with pytest.raises(ConversionError, match="dataset id 501") as info:
        convert(cohort, raw_root=other_raw)
    assert str(other_raw / "Dataset501_Other") in str(info.value)
    assert sorted(p.name for p in other_raw.iterdir()) == ["Dataset501_Other"]
    assert os.environ["nnUNet_raw"] == str(nnunet_env["raw"])
    (nnunet_env["raw"] / "Dataset501_Elsewhere").mkdir()  # not where this dataset goes
    fresh_raw = tmp_path / "fresh_raw"
    assert convert(cohort, raw_root=fresh_raw) == fresh_raw / FOLDER
    assert os.environ["nnUNet_raw"] == str(nnunet_env["raw"])


def test_existing_target_needs_overwrite(cohort, nnunet_env):
    target = convert(cohort)
    marker = target / "marker.txt"
    marker.write_text("from the first conversion")
    with pytest.raises(ConversionError, match="already exists.*--overwrite"):
        convert(cohort)
    assert marker.read_text() == "from the first conversion"
    # With overwrite the folder is replaced as a whole.
    assert convert(cohort, overwrite=True) == target
    assert not marker.exists() and (target / "dataset.json").is_file()
    assert not [p for p in nnunet_env["raw"].iterdir() if p.name.startswith(".")]


def test_differing_preprocessed_splits_need_overwrite(cohort, nnunet_env):
    splits_file = nnunet_env["preprocessed"] / FOLDER / "splits_final.json"
    splits_file.parent.mkdir()
    splits_file.write_text(json.dumps([{"train": ["LARC_0001"], "val": ["LARC_0002"]}]))
    assert_fails_cleanly(cohort, nnunet_env["raw"], [str(splits_file), "different folds", "--overwrite"])
    target = convert(cohort, overwrite=True)
    assert json.loads(splits_file.read_text()) == json.loads((target / "splits_final.json").read_text())


def test_every_flag_has_help_and_usage_errors_exit_2(capsys):
    parser = build_parser()
    assert [a.dest for a in parser._actions if not a.help] == []
    with pytest.raises(SystemExit) as info:  # argparse's usage error: the same status as bad input
        main(["--dataset-id", "501"])
    assert info.value.code == EXIT_BAD_INPUT == 2
    capsys.readouterr()


def test_command_line(cohort, nnunet_env, capsys):
    arguments = ["--cohort", str(cohort), "--dataset-id", "501", "--name", "LARC", "--folds", "2"]
    assert main(arguments + ["--external-centres", "7"]) == 2  # bad input: 2, as argparse's usage errors
    assert "error: external centre(s) ['7'] not found" in capsys.readouterr().err
    assert not (nnunet_env["raw"] / FOLDER).exists()
    assert main(arguments + ["--external-centres", "2", "3", "--horizon", "60"]) == 0
    assert "wrote" in capsys.readouterr().out
    block = json.loads((nnunet_env["raw"] / FOLDER / "dataset.json").read_text())["multitask"]
    assert block["horizon_months"] == 60
    assert block["external_test"] == ["LARC_0002", "LARC_0003", "LARC_0005", "LARC_0006", "LARC_0008", "LARC_0009"]


# ---------------------------------------------------------------------------- the converted dataset
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One conversion of a 10-patient cohort (centre 3 external), shared by the content tests."""
    base = tmp_path_factory.mktemp("converted")
    cohort_dir = base / "cohort"
    write_cohort(cohort_dir, N_PATIENTS, t2_shape_xyz=T2_SHAPE)
    # A file the converter must never read or copy.
    (cohort_dir / "ground_truth.csv").write_text("patient_id,linear_predictor\nHX001,0.5\n")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(var, str(base / var))
        target = convert_cohort(cohort_dir, 501, "LARC", raw_root=base / "raw", n_folds=2, seed=3,
                                internal_test_fraction=0.3, horizon_months=24)
    return target, cohort_dir, base


def test_dataset_json_and_multitask_block(converted):
    target, cohort_dir, _ = converted
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T2", "1": "ADC", "2": "Dapp", "3": "Kapp"}
    assert dataset["labels"] == {"background": 0, "tumour": 1}
    assert dataset["file_ending"] == ".nii.gz" and dataset["name"] == "LARC" and dataset["description"]
    # written by nnU-Net's generate_dataset_json, which adds these two
    assert dataset["licence"] and dataset["converted_by"].startswith("dataset_conversion.convert_larc")
    block = dataset["multitask"]
    assert block["version"] == 1 and block["case_id_column"] == "case_id"
    assert (block["clinical_table"], block["outcomes_table"], block["test_outcomes_table"],
            block["series_availability_table"]) == \
        ("clinical.csv", "outcomes.csv", "outcomes_test.csv", "series_availability.csv")
    assert (block["time_column"], block["event_column"], block["time_unit"]) == ("dfs_months", "dfs_event", "months")
    assert block["horizon_months"] == 24 and block["centre_column"] == "centre"
    assert block["clinical_columns"] == SCHEMA.to_dict()["columns"]
    assert block["clinical_groups"] == {"pretreatment": SCHEMA.group_columns(["pretreatment"]),
                                        "postoperative": SCHEMA.group_columns(["postoperative"])}
    assert block["splits_file"] == "splits_final.json" and block["patient_mapping"] == "patient_mapping.csv"
    assert block["source_cohort"] == "cohort"
    # Centre 3 holds patients 3, 6, 9; the internal test is 30% of the 7 others (2 patients).
    assert block["external_test"] == ["LARC_0003", "LARC_0006", "LARC_0009"]
    assert len(block["internal_test"]) == 2 and not set(block["internal_test"]) & set(block["external_test"])
    training = sorted(p.name[:-len("_0000.nii.gz")] for p in (target / "imagesTr").glob("*_0000.nii.gz"))
    assert dataset["numTraining"] == len(training) == N_PATIENTS - 3 - 2
    testing = sorted(p.name[:-len("_0000.nii.gz")] for p in (target / "imagesTs").glob("*_0000.nii.gz"))
    assert testing == sorted(block["internal_test"] + block["external_test"])
    for folder, cases in (("imagesTr", training), ("imagesTs", testing)):
        assert sorted(p.name for p in (target / folder).iterdir()) == \
            sorted(f"{c}_{i:04d}.nii.gz" for c in cases for i in range(len(CHANNELS)))
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in training]
    assert sorted(p.name for p in (target / "labelsTs").iterdir()) == [f"{c}.nii.gz" for c in testing]


def test_test_cases_are_never_in_a_split(converted):
    target, _, base = converted
    block = json.loads((target / "dataset.json").read_text())["multitask"]
    splits = json.loads((target / "splits_final.json").read_text())
    assert splits == json.loads((base / "nnUNet_preprocessed" / FOLDER / "splits_final.json").read_text())
    development = sorted(p.name[:-len(".nii.gz")] for p in (target / "labelsTr").iterdir())
    assert len(splits) == 2
    test_cases = set(block["internal_test"]) | set(block["external_test"])
    for fold in splits:
        assert not (set(fold["train"]) | set(fold["val"])) & test_cases
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == development
    assert sorted(c for fold in splits for c in fold["val"]) == development  # each case validated once


def test_patient_ids_only_in_the_mapping_file(converted):
    target, _, _ = converted
    mapping = pd.read_csv(target / "patient_mapping.csv", dtype=str)
    assert list(mapping.columns) == ["case_id", "patient_id"]
    assert mapping["patient_id"].tolist() == [f"HX{i:03d}" for i in range(1, N_PATIENTS + 1)]
    assert mapping["case_id"].tolist() == [f"LARC_{i:04d}" for i in range(1, N_PATIENTS + 1)]
    # The factory writes patient ids into every image header too (as scanner exports do).
    for path in target.rglob("*"):
        if path.is_file() and path.name != "patient_mapping.csv":
            content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            assert b"HX0" not in content, f"patient id found in {path}"
    assert not (target / "ground_truth.csv").exists()


def test_outcome_tables_separate_training_and_test_cases(converted):
    target, cohort_dir, _ = converted
    block = json.loads((target / "dataset.json").read_text())["multitask"]
    development = sorted(p.name[:-len(".nii.gz")] for p in (target / "labelsTr").iterdir())
    outcomes = read_outcomes_table(target / "outcomes.csv", SCHEMA)
    assert list(outcomes.index) == development and list(outcomes.columns) == ["dfs_months", "dfs_event"]
    test_outcomes = read_outcomes_table(target / "outcomes_test.csv", SCHEMA, extra_columns=("set",))
    expected_sets = {**{c: "internal_test" for c in block["internal_test"]},
                     **{c: "external_test" for c in block["external_test"]}}
    assert test_outcomes["set"].to_dict() == expected_sets
    features = read_case_table(target / "clinical.csv", SCHEMA)
    assert list(features.index) == [f"LARC_{i:04d}" for i in range(1, N_PATIENTS + 1)]
    assert list(features.columns) == ["centre", *SCHEMA.columns]
    # Values travel unchanged from the cohort table, keyed through the mapping.
    source = read_clinical_table(cohort_dir / "clinical.csv", SCHEMA)
    mapping = pd.read_csv(target / "patient_mapping.csv", dtype=str).set_index("case_id")["patient_id"]
    source.index = [mapping.index[mapping == p][0] for p in source.index]
    pd.testing.assert_frame_equal(features, source[features.columns], check_names=False)
    all_outcomes = pd.concat([outcomes, test_outcomes[["dfs_months", "dfs_event"]]]).sort_index()
    pd.testing.assert_frame_equal(all_outcomes, source[["dfs_months", "dfs_event"]].sort_index(), check_names=False)


def test_written_images_are_float32_labels_uint8_on_the_t2_grid(converted):
    target, cohort_dir, _ = converted
    t2 = sitk.ReadImage(str(cohort_dir / "images" / "HX001" / "T2.nii.gz"))
    for i in range(len(CHANNELS)):
        channel = sitk.ReadImage(str(target / "imagesTr" / f"LARC_0001_{i:04d}.nii.gz"))
        assert channel.GetPixelID() == sitk.sitkFloat32
        assert channel.GetSize() == t2.GetSize()
        np.testing.assert_allclose(channel.GetSpacing(), t2.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(channel.GetOrigin(), t2.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / "LARC_0001_0000.nii.gz"))),
        sitk.GetArrayFromImage(t2))
    label = sitk.ReadImage(str(target / "labelsTr" / "LARC_0001.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / "images/HX001/mask.nii.gz"))))
    # ADC in the factory is a linear function of physical position: linear resampling reproduces
    # it exactly at every T2 voxel centre.
    adc = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / "LARC_0001_0001.nii.gz")))
    points = physical_points(T2_SHAPE, T2_SPACING, T2_ORIGIN, np.eye(3).ravel())
    expected = 1000.0 * (1.0 + 0.01 * points[..., 0] + 0.02 * points[..., 1] - 0.005 * points[..., 2])
    np.testing.assert_allclose(adc, expected, rtol=1e-4)


def test_bright_blob_in_adc_lands_at_the_same_physical_position(tmp_path, nnunet_env):
    """A Gaussian blob at a known physical point of a (flipped-direction) ADC map is found at the
    same physical point in channel 1, the ADC resampled onto the T2 grid."""
    cohort_dir = tmp_path / "cohort"
    write_cohort(cohort_dir, 6, t2_shape_xyz=T2_SHAPE, flip_diffusion_x=True)
    blob_mm = t2_centre_mm(T2_SHAPE) + np.array([2.3, -1.7, 1.1])  # off any voxel centre
    adc_path = patient_image(cohort_dir, "HX001", "ADC")
    adc = sitk.ReadImage(str(adc_path))
    assert adc.GetDirection()[0] == -1.0
    points = physical_points(adc.GetSize(), adc.GetSpacing(), adc.GetOrigin(), adc.GetDirection())
    sigma_mm = 3.0
    blob = 1000.0 * np.exp(-np.sum((points - blob_mm) ** 2, axis=-1) / (2 * sigma_mm ** 2))
    write_image(blob.astype(np.float32), adc_path, adc.GetSpacing(), adc.GetOrigin(), adc.GetDirection())

    target = convert_cohort(cohort_dir, 501, "LARC", n_folds=2, external_centres=())
    channel = sitk.ReadImage(str(next(target.rglob("LARC_0001_0001.nii.gz"))))
    values = sitk.GetArrayFromImage(channel).astype(float)
    t2_points = physical_points(channel.GetSize(), channel.GetSpacing(), channel.GetOrigin(),
                                channel.GetDirection())
    # Intensity-weighted centroid. Ignoring the flipped direction would mirror the blob about the
    # diffusion FOV centre (about the T2 centre), 4.6 mm away in x: far outside the tolerance.
    centroid = (values[..., None] * t2_points).sum(axis=(0, 1, 2)) / values.sum()
    np.testing.assert_allclose(centroid, blob_mm, atol=0.6)
    brightest = t2_points[np.unravel_index(np.argmax(values), values.shape)]
    assert np.all(np.abs(brightest - blob_mm) <= np.array(T2_SPACING)), (brightest, blob_mm)


# ---------------------------------------------------------------------------- missing MRI series
AVAILABILITY_FILE = "series_availability.csv"


def read_availability(target):
    """series_availability.csv as text, so the check covers the exact values written (1/0, no 1.0)."""
    return pd.read_csv(target / AVAILABILITY_FILE, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def converted_with_missing_series(tmp_path_factory):
    """A 10-patient cohort in which two development patients and two test patients lack series,
    converted with ``allow_missing_series``.

    Which patient lands where is read from a first, complete conversion of the same cohort (the
    split depends on the clinical table only), so the test does not hard-code the split.
    """
    base = tmp_path_factory.mktemp("missing_series")
    cohort_dir = base / "cohort"
    write_cohort(cohort_dir, N_PATIENTS, t2_shape_xyz=T2_SHAPE)
    kwargs = dict(n_folds=2, seed=3, internal_test_fraction=0.3)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(var, str(base / var))
        complete = convert_cohort(cohort_dir, 501, "LARC", raw_root=base / "raw_complete", **kwargs)
        block = json.loads((complete / "dataset.json").read_text())["multitask"]
        patient_of = pd.read_csv(complete / "patient_mapping.csv", dtype=str).set_index("case_id")["patient_id"]
        development = sorted(p.name[:-len(".nii.gz")] for p in (complete / "labelsTr").iterdir())
        missing = {development[0]: ("Dapp", "Kapp"), development[1]: ("ADC",),
                   block["internal_test"][0]: ("Dapp", "Kapp"), block["external_test"][0]: ("ADC",)}
        for case_id, series in missing.items():
            for name in series:
                patient_image(cohort_dir, patient_of[case_id], name).unlink()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            target = convert_cohort(cohort_dir, 501, "LARC", raw_root=base / "raw", allow_missing_series=True,
                                    **kwargs)
    return target, cohort_dir, missing, patient_of, stderr.getvalue()


def test_missing_training_series_are_all_zero_float32_on_the_t2_grid(converted_with_missing_series):
    target, cohort_dir, missing, patient_of, _ = converted_with_missing_series
    training = {p.name[:-len(".nii.gz")] for p in (target / "labelsTr").iterdir()}
    filled = 0
    for case_id, series in missing.items():
        if case_id not in training:
            continue
        t2 = sitk.ReadImage(str(patient_image(cohort_dir, patient_of[case_id], "T2")))
        for index, name in enumerate(CHANNELS):
            channel = sitk.ReadImage(str(target / "imagesTr" / f"{case_id}_{index:04d}.nii.gz"))
            assert channel.GetPixelID() == sitk.sitkFloat32
            assert channel.GetSize() == t2.GetSize()
            np.testing.assert_allclose(channel.GetSpacing(), t2.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(channel.GetOrigin(), t2.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(channel.GetDirection(), t2.GetDirection(), atol=1e-6)
            voxels = sitk.GetArrayFromImage(channel)
            if name in series:
                assert not voxels.any(), f"{case_id} channel {name}: filler is not all zero"
                filled += 1
            else:  # the real series of the same case are converted as usual
                assert (voxels > 0).all(), f"{case_id} channel {name}"
    assert filled == 3  # Dapp + Kapp of one development case, ADC of another
    # Every training case still has all four channel files (nnU-Net's planning needs them).
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == \
        sorted(f"{c}_{i:04d}.nii.gz" for c in training for i in range(len(CHANNELS)))


def test_missing_test_series_are_not_written(converted_with_missing_series):
    target, _, missing, _, _ = converted_with_missing_series
    testing = sorted(p.name[:-len(".nii.gz")] for p in (target / "labelsTs").iterdir())
    assert {c for c in missing if c in testing} and len(testing) == 5
    expected = sorted(f"{c}_{i:04d}.nii.gz" for c in testing for i, name in enumerate(CHANNELS)
                      if name not in missing.get(c, ()))
    assert sorted(p.name for p in (target / "imagesTs").iterdir()) == expected
    assert len(expected) == 4 * len(testing) - 3


def test_series_availability_table_is_exact_and_listed(converted_with_missing_series):
    target, _, missing, _, _ = converted_with_missing_series
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["multitask"]["series_availability_table"] == AVAILABILITY_FILE
    table = read_availability(target)
    assert list(table.columns) == ["case_id", *[dataset["channel_names"][str(i)] for i in range(len(CHANNELS))]]
    cases = [f"LARC_{i:04d}" for i in range(1, N_PATIENTS + 1)]  # every case, training and test, sorted
    assert table["case_id"].tolist() == cases
    expected = [[c, *["0" if name in missing.get(c, ()) else "1" for name in CHANNELS]] for c in cases]
    assert table.values.tolist() == expected
    assert "HX0" not in (target / AVAILABILITY_FILE).read_text()


def test_missing_series_summary_line(converted_with_missing_series):
    *_, stderr = converted_with_missing_series
    lines = [line for line in stderr.splitlines() if "missing series" in line]
    assert len(lines) == 1, stderr
    assert "training: 2 of 5 patient(s) (ADC 1, Dapp 1, Kapp 1)" in lines[0]
    assert "test: 2 of 5 patient(s) (ADC 1, Dapp 1, Kapp 1)" in lines[0]
    assert AVAILABILITY_FILE in lines[0]


def test_complete_conversion_writes_an_all_ones_availability_table(converted):
    target, _, _ = converted
    assert json.loads((target / "dataset.json").read_text())["multitask"]["series_availability_table"] == \
        AVAILABILITY_FILE
    table = read_availability(target)
    assert list(table.columns) == ["case_id", *CHANNELS]
    assert table["case_id"].tolist() == [f"LARC_{i:04d}" for i in range(1, N_PATIENTS + 1)]
    assert (table[list(CHANNELS)] == "1").all().all()


@pytest.mark.parametrize("series", ["ADC", "Kapp"])
def test_missing_series_without_the_flag_is_refused_with_a_hint(series, cohort, nnunet_env):
    patient_image(cohort, "HX004", series).unlink()
    assert_fails_cleanly(cohort, nnunet_env["raw"],
                         ["patient HX004", f"{series}.nii.gz", "missing file", "--allow-missing-series"])


@pytest.mark.parametrize("series", ["T2", "mask"])
def test_missing_t2_or_mask_is_refused_even_with_the_flag(series, cohort, nnunet_env):
    patient_image(cohort, "HX004", series).unlink()
    assert_fails_cleanly(cohort, nnunet_env["raw"],
                         ["patient HX004", f"{series}.nii.gz", "missing file",
                          "T2 and the mask are required even with --allow-missing-series"],
                         allow_missing_series=True)


def test_misnamed_series_is_not_taken_for_a_missing_one(cohort, nnunet_env):
    """``adc.nii.gz`` for ``ADC.nii.gz`` is a naming problem, not a missing series: never a filler."""
    path = patient_image(cohort, "HX004", "ADC")
    path.rename(path.with_name("adc.nii.gz"))
    message = assert_fails_cleanly(cohort, nnunet_env["raw"], ["patient HX004", "ADC.nii.gz", "adc.nii.gz",
                                                               "case-sensitive"], allow_missing_series=True)
    assert "--allow-missing-series" not in message


def test_command_line_allow_missing_series(cohort, nnunet_env, capsys):
    patient_image(cohort, "HX001", "Dapp").unlink()
    arguments = ["--cohort", str(cohort), "--dataset-id", "501", "--name", "LARC", "--folds", "2"]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "error: patient HX001: missing file" in err and "--allow-missing-series" in err
    assert not (nnunet_env["raw"] / FOLDER).exists()
    assert main(arguments + ["--allow-missing-series"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "missing series" in captured.err
    table = read_availability(nnunet_env["raw"] / FOLDER).set_index("case_id")
    assert table.loc["LARC_0001"].tolist() == ["1", "1", "0", "1"]


# ---------------------------------------------------------------------------- splitting functions
def test_folds_are_seeded_and_stratified():
    ids = [f"C{i:03d}" for i in range(40)]
    events = np.array([i % 4 == 0 for i in range(40)], dtype=int)  # 10 events
    centres = np.array(["1", "2"] * 20)
    splits, how = make_folds(ids, events, centres, 5, seed=1)
    assert how == "event+centre"
    assert splits == make_folds(ids, events, centres, 5, seed=1)[0]
    assert splits != make_folds(ids, events, centres, 5, seed=2)[0]
    event_of = dict(zip(ids, events))
    assert [sum(event_of[c] for c in fold["val"]) for fold in splits] == [2] * 5
    shuffled = np.random.default_rng(0).permutation(40)  # the caller's order does not matter
    assert make_folds([ids[i] for i in shuffled], events[shuffled], centres[shuffled], 5, seed=1)[0] == splits
    # A stratum smaller than the number of folds (a single event) is merged instead of failing.
    events_tiny = np.zeros(10, int)
    events_tiny[0] = 1
    splits_tiny, _ = make_folds(ids[:10], events_tiny, centres[:10], 5, seed=0)
    assert sorted(c for fold in splits_tiny for c in fold["val"]) == ids[:10]
    with pytest.raises(ConversionError, match="4 patients, fewer than the 5 folds"):
        make_folds(ids[:4], events[:4], centres[:4], 5, seed=0)


# ---------------------------------------------------------------------------- clinical table readers
def test_clinical_table_types_and_missing_values(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text(
        "patient_id,centre,age,sex,cea,ct,cn,mrf,emvi,distance_av_cm,ypt,ypn,trg,dfs_months,dfs_event\n"
        "007,1,60,F,,T2,N0,1,,5,T0,N0,0,12.5,1\n"
        "010, 2 ,71.5,M,3.2,T3,N1,0,1,,T2,N1,3,40,0\n")
    table = read_clinical_table(path, SCHEMA)
    assert list(table.index) == ["007", "010"]  # ids stay text: leading zeros kept
    assert table.loc["007", "trg"] == "0" and table.loc["010", "ct"] == "T3"  # categories stay text
    assert table.loc["010", "centre"] == "2"
    assert table.loc["007", "mrf"] == 1.0 and np.isnan(table.loc["007", "emvi"]) and np.isnan(table.loc["007", "cea"])
    assert table["dfs_event"].dtype == np.int64 and table.loc["007", "dfs_months"] == 12.5
    # Round trip through the converted-dataset writer and reader keeps values and types.
    cases = table.drop(columns=["dfs_months", "dfs_event"])
    cases.index = ["LARC_0001", "LARC_0002"]
    cases.index.name = "case_id"
    write_case_table(cases, tmp_path / "cases.csv", SCHEMA)
    assert "1.0" not in (tmp_path / "cases.csv").read_text()
    pd.testing.assert_frame_equal(read_case_table(tmp_path / "cases.csv", SCHEMA), cases)


def test_case_table_refuses_outcome_columns_and_reports_every_problem(tmp_path):
    path = tmp_path / "clinical.csv"
    header = "case_id,centre,age,sex,cea,ct,cn,mrf,emvi,distance_av_cm,ypt,ypn,trg"
    path.write_text(header + ",dfs_months\nLARC_0001,1,60,F,,T2,N0,1,,5,T0,N0,0,12\n")
    with pytest.raises(ClinicalTableError, match="outcome column.*dfs_months"):
        read_case_table(path, SCHEMA)
    path.write_text(header + "\nLARC_0001,1,60,X,,T2,N0,2,,5,T0,N0,0\nLARC_0002,,inf,F,,T9,N0,1,,5,T0,N0,0\n")
    with pytest.raises(ClinicalTableError) as info:
        read_case_table(path, SCHEMA)
    message = str(info.value)
    for part in (str(path), "5 problem(s)", "case_id LARC_0001: column 'sex'", "case_id LARC_0001: column 'mrf'",
                 "LARC_0002: column 'centre'", "case_id LARC_0002: column 'age'", "case_id LARC_0002: column 'ct'"):
        assert part in message, message


def test_clinical_table_without_outcomes_when_not_required(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text("patient_id,centre,age,sex,cea,ct,cn,mrf,emvi,distance_av_cm,ypt,ypn,trg\n"
                    "P1,1,60,F,,T2,N0,1,,5,T0,N0,0\n")
    assert list(read_clinical_table(path, SCHEMA, require_outcomes=False).columns) == ["centre", *SCHEMA.columns]
    with pytest.raises(ClinicalTableError, match="dfs_months"):
        read_clinical_table(path, SCHEMA)


# ---------------------------------------------------------------------------- end to end with nnU-Net
def test_synthetic_cohort_passes_nnunet_plan_and_preprocess(preprocessed_dataset):
    """The session's 14 synthetic patients -> converter CLI -> the real nnUNetv2_plan_and_preprocess with
    --verify_dataset_integrity (tests/conftest.py runs the commands; shared with the trainer tests)."""
    target = preprocessed_dataset["raw"]
    for image_path in sorted(target.glob("images*/*_0000.nii.gz")):
        case_id = image_path.name[:-len("_0000.nii.gz")]
        labels = image_path.parent.parent / image_path.parent.name.replace("images", "labels")
        files = [image_path.with_name(f"{case_id}_{i:04d}.nii.gz") for i in range(len(CHANNELS))]
        files.append(labels / f"{case_id}.nii.gz")
        geometries = []
        for path in files:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            geometries.append((reader.GetSize(), np.round(reader.GetSpacing(), 5), np.round(reader.GetOrigin(), 4),
                               np.round(reader.GetDirection(), 5)))
        for geometry in geometries[1:]:
            assert geometry[0] == geometries[0][0], case_id
            for a, b in zip(geometry[1:], geometries[0][1:]):
                np.testing.assert_array_equal(a, b, err_msg=case_id)

    output = preprocessed_dataset["plan_output"]
    assert "verify_dataset_integrity Done" in output
    assert "Error" not in output and "Warning: " not in output, output[-4000:]
    preprocessed = preprocessed_dataset["preprocessed"]
    # nnU-Net kept our folds and copied the multitask block along with dataset.json.
    assert json.loads((preprocessed / "splits_final.json").read_text()) == \
        json.loads((target / "splits_final.json").read_text())
    assert json.loads((preprocessed / "dataset.json").read_text())["multitask"] == \
        json.loads((target / "dataset.json").read_text())["multitask"]
    n_training = json.loads((target / "dataset.json").read_text())["numTraining"]
    assert len(list((preprocessed / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == n_training
