"""Radiomics features (known answers) and the radiomics baseline end to end on a tiny converted dataset."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluation.radiomics import (FEATURE_SETS, RadiomicsInputError, extract_dataset_features, feature_names,
                                  quantity_features, texture_features)

SPACING_1MM = (1.0, 1.0, 1.0)


def sphere(radius: float, n: int = 24) -> np.ndarray:
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2.0
    return (x ** 2 + y ** 2 + z ** 2) <= radius ** 2


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------
def test_sphere_volume_sphericity_and_axes():
    radius = 8.0
    features = texture_features(np.ones((1,) + (24,) * 3), sphere(radius), SPACING_1MM)
    assert features["shape_volume_mm3"] == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.03)
    assert features["shape_log1p_volume"] == pytest.approx(math.log1p(features["shape_volume_mm3"]))
    assert features["shape_surface_mm2"] == pytest.approx(4 * math.pi * radius ** 2, rel=0.15)
    assert 0.85 < features["shape_sphericity"] <= 1.0  # a voxelised sphere's mesh is slightly rough
    assert features["shape_max_diameter_mm"] == pytest.approx(2 * radius, abs=1.5)
    for axis in ("major", "minor", "least"):  # IBSI: 4 sqrt(lambda) = 4 r / sqrt(5) for a ball
        assert features[f"shape_{axis}_axis_mm"] == pytest.approx(4 * radius / math.sqrt(5), rel=0.03)


def test_ellipsoid_on_anisotropic_grid_orders_its_axes():
    spacing = (2.0, 0.5, 0.5)  # thick slices, as in rectal T2
    z, y, x = np.mgrid[:20, :50, :50]
    zc, yc, xc = (z - 9.5) * spacing[0], (y - 24.5) * spacing[1], (x - 24.5) * spacing[2]
    semi = (14.0, 9.0, 5.0)  # mm along z, y, x
    mask = (zc / semi[0]) ** 2 + (yc / semi[1]) ** 2 + (xc / semi[2]) ** 2 <= 1
    features = texture_features(np.ones((1,) + mask.shape), mask, spacing)
    assert features["shape_volume_mm3"] == pytest.approx(4 / 3 * math.pi * np.prod(semi), rel=0.05)
    for axis, a in zip(("major", "minor", "least"), semi):
        assert features[f"shape_{axis}_axis_mm"] == pytest.approx(4 * a / math.sqrt(5), rel=0.08)
    assert features["shape_sphericity"] < 0.9  # elongated


def test_constant_image_has_no_spread_and_homogeneous_texture():
    features = texture_features(np.full((2,) + (24,) * 3, 7.0), sphere(6.0), SPACING_1MM, ["A", "B"])
    for c in ("A", "B"):
        assert features[f"{c}_mean"] == 7.0 and features[f"{c}_sd"] == 0.0
        assert features[f"{c}_p10"] == features[f"{c}_p90"] == 7.0
        assert features[f"{c}_entropy"] == 0.0 and features[f"{c}_skewness"] == 0.0
        assert features[f"{c}_glcm_homogeneity"] == 1.0 and features[f"{c}_glcm_energy"] == 1.0
        assert features[f"{c}_glcm_contrast"] == 0.0 and features[f"{c}_glcm_dissimilarity"] == 0.0


def test_first_order_matches_scipy():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 3.0, size=(1, 20, 20, 20))
    mask = sphere(7.0, 20)
    features = texture_features(image, mask, SPACING_1MM, ["X"])
    values = image[0][mask]
    assert features["X_mean"] == pytest.approx(values.mean())
    assert features["X_sd"] == pytest.approx(values.std(ddof=0))
    assert features["X_skewness"] == pytest.approx(stats.skew(values, bias=True))
    assert features["X_kurtosis"] == pytest.approx(stats.kurtosis(values, fisher=True, bias=True))
    assert (features["X_p10"], features["X_p90"]) == pytest.approx(tuple(np.percentile(values, [10, 90])))
    assert 0 < features["X_entropy"] <= math.log2(32)


def test_glcm_of_stripes_counts_only_pairs_inside_the_mask():
    """Columns alternating between two values: horizontal and diagonal neighbours differ by the whole
    grey range (levels 1 and 32), vertical ones not; pairs with a voxel outside the mask never count."""
    h, w = 4, 7
    image = np.full((1, 3, 12, 12), 500.0)  # outside the mask: a value that must not enter
    mask = np.zeros((3, 12, 12), bool)
    mask[1, 3:3 + h, 2:2 + w] = True
    image[0, 1, 3:3 + h, 2:2 + w] = np.arange(w)[None, :] % 2
    features = texture_features(image, mask, (3.0, 0.7, 0.7), ["S"])
    differ = h * (w - 1) + 2 * (h - 1) * (w - 1)  # horizontal + two diagonals
    same = (h - 1) * w  # vertical
    assert features["S_glcm_dissimilarity"] == pytest.approx(31 * differ / (differ + same))
    assert features["S_glcm_contrast"] == pytest.approx(31 ** 2 * differ / (differ + same))
    assert features["S_glcm_homogeneity"] == pytest.approx((same + differ / (1 + 31 ** 2)) / (differ + same))


def test_ring_is_the_shell_outside_the_mask():
    spacing = (3.0, 0.7, 0.7)
    mask = np.zeros((9, 30, 30), bool)
    mask[3:6, 10:20, 12:18] = True
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(mask.shape, spacing)), indexing="ij"), -1)
    from scipy.spatial import cKDTree
    distance, _ = cKDTree(grid[mask]).query(grid.reshape(-1, 3))
    shell = ((distance.reshape(mask.shape) <= 3.0) & ~mask)
    rng = np.random.default_rng(1)
    marker = np.where(mask, 0.0, np.where(shell, 1.0, 100.0))
    noise = rng.normal(size=mask.shape)
    features = texture_features(np.stack([marker, noise]), mask, spacing, ["marker", "noise"])
    assert features["marker_ring_mean"] == 1.0 and features["marker_ring_sd"] == 0.0  # never inside, never beyond
    assert features["noise_ring_mean"] == pytest.approx(noise[shell].mean())  # and all of the shell
    assert features["noise_ring_sd"] == pytest.approx(noise[shell].std())


def test_quantity_features_equal_the_networks_tumour_quantities():
    torch = pytest.importorskip("torch")
    from nnunet_multitask.network import tumour_quantities

    rng = np.random.default_rng(2)
    image = rng.normal(size=(4, 6, 10, 12))
    mask = np.zeros((6, 10, 12), np.uint8)
    mask[2:5, 3:8, 4:9] = 1
    mask[1, 1, 1] = 1
    spacing = (3.0, 0.7, 0.7)
    mine = quantity_features(image, mask, spacing, ["T2", "ADC", "Dapp", "Kapp"])
    theirs = tumour_quantities(torch.from_numpy(mask[None].astype(np.float64)), torch.from_numpy(image[None]),
                               float(np.prod(spacing)))[0].double().numpy()
    assert list(mine) == feature_names("quantities", ["T2", "ADC", "Dapp", "Kapp"])
    np.testing.assert_allclose(list(mine.values()), theirs, rtol=1e-5)


def test_empty_mask_gives_zero_volume_and_nan_elsewhere():
    image, mask = np.ones((2, 4, 8, 8)), np.zeros((4, 8, 8))
    q = quantity_features(image, mask, SPACING_1MM)
    assert q["log1p_volume_mm3"] == 0.0 and np.isnan(q["mean_0"]) and np.isnan(q["mean_1"])
    t = texture_features(image, mask, SPACING_1MM)
    assert t["shape_volume_mm3"] == 0.0 and t["shape_log1p_volume"] == 0.0
    assert all(np.isnan(v) for k, v in t.items() if k not in ("shape_volume_mm3", "shape_log1p_volume"))


@pytest.mark.parametrize("image, mask, spacing, match", [
    (np.ones((1, 4, 4, 4)), np.ones((4, 4, 5)), SPACING_1MM, "mask shape"),
    (np.ones((1, 4, 4, 4)), np.full((4, 4, 4), 2), SPACING_1MM, "only 0 and 1"),
    (np.ones((4, 4, 4)), np.ones((4, 4, 4)), SPACING_1MM, r"\[C, z, y, x\]"),
    (np.ones((1, 4, 4, 4)), np.ones((4, 4, 4)), (1.0, 0.0, 1.0), "spacing"),
    (np.full((1, 4, 4, 4), np.nan), np.ones((4, 4, 4)), SPACING_1MM, "NaN"),
])
def test_bad_arrays_are_refused(image, mask, spacing, match):
    for function in (quantity_features, texture_features):
        with pytest.raises(RadiomicsInputError, match=match):
            function(image, mask, spacing)


# --------------------------------------------------------------------------------------------
# Dataset level and the baseline command line
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_dataset(tmp_path_factory):
    """A 40-patient synthetic cohort (24 x 24 x 8 voxels) converted by the real converter."""
    from dataset_conversion.convert_larc import convert_cohort
    from dataset_conversion.synthetic_larc import generate_cohort

    root = tmp_path_factory.mktemp("radiomics")
    generate_cohort(root / "cohort", n_patients=40, seed=1, shape=(24, 24, 8))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("nnUNet_preprocessed", raising=False)
        return convert_cohort(root / "cohort", 611, "RAD", raw_root=root / "raw")


def test_extractor_reads_every_mask_of_a_folder(raw_dataset):
    import SimpleITK as sitk

    frame = extract_dataset_features(raw_dataset, raw_dataset / "labelsTs", "quantities")
    cases = sorted(p.name[:-len(".nii.gz")] for p in (raw_dataset / "labelsTs").glob("*.nii.gz"))
    assert frame.index.name == "case_id" and list(frame.index) == cases
    assert list(frame.columns) == ["log1p_volume_mm3", "mean_T2", "mean_ADC", "mean_Dapp", "mean_Kapp"]
    label = sitk.ReadImage(str(raw_dataset / "labelsTs" / f"{cases[0]}.nii.gz"))
    voxels = int(sitk.GetArrayFromImage(label).sum())
    assert frame.iloc[0, 0] == pytest.approx(math.log1p(voxels * np.prod(label.GetSpacing())))
    texture = extract_dataset_features(raw_dataset, raw_dataset / "labelsTs", "texture", cases=cases[:2])
    assert list(texture.columns) == feature_names("texture", ["T2", "ADC", "Dapp", "Kapp"])
    assert not texture.isna().any().any() and texture.attrs["empty_masks"] == []


def test_extractor_names_the_case_and_file_of_a_bad_mask(raw_dataset, tmp_path):
    import SimpleITK as sitk

    masks = tmp_path / "masks"
    shutil.copytree(raw_dataset / "labelsTs", masks)
    bad = sorted(masks.glob("*.nii.gz"))[0]
    label = sitk.ReadImage(str(bad))
    wrong = sitk.GetImageFromArray(sitk.GetArrayFromImage(label) * 2)
    wrong.CopyInformation(label)
    sitk.WriteImage(wrong, str(bad))
    case = bad.name[:-len(".nii.gz")]
    with pytest.raises(RadiomicsInputError, match=f"case {case}: mask {bad}"):
        extract_dataset_features(raw_dataset, masks, "quantities")
    with pytest.raises(RadiomicsInputError, match="no mask for case"):
        extract_dataset_features(raw_dataset, masks, "quantities", cases=["RAD_9999"])


def test_extractor_names_the_case_and_file_of_an_unreadable_channel(raw_dataset, tmp_path):
    copy = tmp_path / raw_dataset.name
    shutil.copytree(raw_dataset, copy)
    case = sorted(p.name[:-len(".nii.gz")] for p in (copy / "labelsTs").glob("*.nii.gz"))[0]
    broken = copy / "imagesTs" / f"{case}_0002.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    with pytest.raises(RadiomicsInputError, match=f"case {case}: cannot read {broken}: "):
        extract_dataset_features(copy, copy / "labelsTs", "quantities")


def _predicted_masks(raw_dataset, folder):
    """labelsTs as a prediction folder (with nnUNetv2_predict's side files), one mask emptied."""
    import SimpleITK as sitk

    shutil.copytree(raw_dataset / "labelsTs", folder)
    (folder / "predictions.csv").write_text("case_id,risk_score\n")
    (folder / "plans.json").write_text("{}")
    emptied = sorted(folder.glob("*.nii.gz"))[1]
    label = sitk.ReadImage(str(emptied))
    blank = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(label)))
    blank.CopyInformation(label)
    sitk.WriteImage(blank, str(emptied))
    return emptied.name[:-len(".nii.gz")]


@pytest.mark.parametrize("features, extra", [("texture", []), ("quantities", ["--clinical", "--feature-columns",
                                                                               "log1p_volume_mm3", "mean_ADC"])])
def test_baseline_cli_end_to_end_without_test_outcomes(raw_dataset, tmp_path, capsys, features, extra):
    """Fit on the development cases with outcomes_test.csv deleted, predict predicted masks (one empty),
    and the evaluation accepts the file."""
    from evaluation import radiomics_baseline, survival_eval

    dataset = tmp_path / raw_dataset.name
    shutil.copytree(raw_dataset, dataset)
    (dataset / "outcomes_test.csv").unlink()  # the fit must never need it
    emptied = _predicted_masks(dataset, tmp_path / "pred")
    out = tmp_path / "predictions.csv"
    rc = radiomics_baseline.main(["--raw-dataset", str(dataset), "--test-masks", str(tmp_path / "pred"),
                                  "--features", features, *extra, "-o", str(out), "--fit-json",
                                  str(tmp_path / "fit.json")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "empty mask" in captured.err and emptied in captured.err
    predictions = pd.read_csv(out, dtype={"case_id": str}).set_index("case_id")
    test_cases = pd.read_csv(raw_dataset / "outcomes_test.csv", dtype={"case_id": str})["case_id"]
    assert sorted(predictions.index) == sorted(test_cases)
    assert predictions["risk_score"].notna().all()
    assert predictions.loc[emptied, "mask_empty"] == 1 and predictions.loc[emptied, "n_imputed_features"] > 0
    assert (predictions.drop(index=emptied)["n_imputed_features"] == 0).all()
    assert predictions["p_recurrence_36m"].between(0, 1).all()
    if extra:
        assert any(c.startswith("clinical_") for c in pd.read_json(tmp_path / "fit.json", typ="series")["coefficients"])
    rc = survival_eval.main(["--predictions", str(out), "--outcomes", str(raw_dataset / "outcomes_test.csv"),
                             "--bootstrap", "20", "--no-figures", "-o", str(tmp_path / "report")])
    assert rc == 0, capsys.readouterr().err


def test_baseline_cli_names_a_missing_development_mask(raw_dataset, tmp_path, capsys):
    from evaluation import radiomics_baseline

    train = tmp_path / "train"
    shutil.copytree(raw_dataset / "labelsTr", train)
    victim = sorted(train.glob("*.nii.gz"))[0]
    victim.unlink()
    rc = radiomics_baseline.main(["--raw-dataset", str(raw_dataset), "--train-masks", str(train), "--test-masks",
                                  str(raw_dataset / "labelsTs"), "--features", "quantities", "-o",
                                  str(tmp_path / "p.csv")])
    assert rc == 2
    assert victim.name[:-len(".nii.gz")] in capsys.readouterr().err


def test_feature_sets_are_the_documented_ones():
    assert FEATURE_SETS == ("quantities", "texture")
    assert len(feature_names("texture", ["a", "b"])) == 8 + 2 * (7 + 5 + 2)
