"""dataset_conversion.registration: rigid MI registration of a DWI-like series onto a T2-like series,
and absorbing the transform into the moving image's header.

The scene is defined in physical millimetres (a smooth elliptical body with smooth blobs of
different sizes) and sampled on two grids: "T2" (0.7 x 0.7 x 3 mm, fixed) and "DWI" (2 x 2 x 4 mm,
a larger field of view, moving). The two series show the blobs with different, partly inverted
contrasts (so intensity differences would fail and mutual information is needed), and the DWI
samples the scene moved by a known rotation and shift.
"""
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.registration import (RegistrationError, apply_rigid_to_geometry, dilate_mask_mm,
                                             register_rigid)

CENTRE = np.array([5.0, -12.0, 40.0])           # scanner-frame centre of the scene (mm)
BLOBS = [  # centre offset (mm), sd (mm), T2 amplitude, DWI amplitude
    ((-14.0, 8.0, -6.0), (9.0, 6.0, 10.0), 1.0, -0.6),
    ((12.0, -6.0, 4.0), (6.0, 9.0, 8.0), -0.7, 1.2),
    ((4.0, 14.0, 10.0), (5.0, 5.0, 7.0), 0.8, 0.9),
    ((-6.0, -14.0, -12.0), (7.0, 4.0, 9.0), -0.5, -0.8),
    ((18.0, 12.0, -2.0), (4.0, 6.0, 6.0), 0.6, -1.0),
]
TRUE_ANGLES_DEG = (3.0, -2.0, 4.0)
TRUE_SHIFT_MM = (4.0, -3.0, 2.5)


def scene(points: np.ndarray, contrast: int) -> np.ndarray:
    """Intensity of the scene at physical points (..., 3); contrast 0: T2-like, 1: DWI-like."""
    rel = points - CENTRE
    r = np.sqrt((rel[..., 0] / 38.0) ** 2 + (rel[..., 1] / 28.0) ** 2)       # an elliptic cylinder along z
    body = 1.0 / (1.0 + np.exp((r - 1.0) * 10.0))
    value = (0.8 if contrast == 0 else 0.5) * body
    for offset, sd, a_t2, a_dwi in BLOBS:
        d2 = sum(((rel[..., i] - offset[i]) / sd[i]) ** 2 for i in range(3))
        value = value + (a_t2 if contrast == 0 else a_dwi) * np.exp(-0.5 * d2) * body
    return value


def grid_points(size, spacing, origin, dz=0.0) -> np.ndarray:
    """Physical points (z, y, x, 3) of an identity-direction grid, in the array order of SimpleITK
    (``dz``: shift along z, for the sub-slices of the slice profile)."""
    idx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")       # z, y, x
    return np.stack([origin[i] + spacing[i] * idx[2 - i] + (dz if i == 2 else 0.0) for i in range(3)], axis=-1)


def sample_slices(size, spacing, origin, contrast, to_scene=None) -> np.ndarray:
    """The scene averaged over each slice's thickness (4 sub-slices: a slice profile, as MRI measures),
    at the points ``to_scene(points)`` (default: the points themselves)."""
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    total = 0.0
    for f in offsets:
        points = grid_points(size, spacing, origin, f * spacing[2])
        total = total + scene(points if to_scene is None else to_scene(points), contrast)
    return total / len(offsets)


def make_image(values: np.ndarray, spacing, origin) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def true_transform() -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter(CENTRE.tolist())
    tx.SetRotation(*[math.radians(a) for a in TRUE_ANGLES_DEG])
    tx.SetTranslation(TRUE_SHIFT_MM)
    return tx


@pytest.fixture(scope="module")
def pair():
    """Fixed T2 (0.7 x 0.7 x 3 mm) and moving DWI (2 x 2 x 4 mm) showing the scene moved by the true transform."""
    rng = np.random.default_rng(0)
    t2_spacing, t2_size = (0.7, 0.7, 3.0), (120, 100, 22)
    t2_origin = tuple(CENTRE - 0.5 * np.array(t2_spacing) * (np.array(t2_size) - 1))
    t2 = sample_slices(t2_size, t2_spacing, t2_origin, 0)
    fixed = make_image(t2 + 0.02 * rng.standard_normal(t2.shape), t2_spacing, t2_origin)
    # DWI: larger, off-centre field of view; voxel q shows the scene at T^-1(q)
    dwi_spacing, dwi_size = (2.0, 2.0, 4.0), (56, 48, 22)
    dwi_origin = tuple(CENTRE + np.array([6.0, -4.0, 3.0]) - 0.5 * np.array(dwi_spacing) * (np.array(dwi_size) - 1))
    rotation = np.array(true_transform().GetMatrix()).reshape(3, 3)

    def inverse(q):                                                              # R^T (q - c - t) + c
        return (q - CENTRE - np.array(TRUE_SHIFT_MM)) @ rotation + CENTRE
    dwi = sample_slices(dwi_size, dwi_spacing, dwi_origin, 1, inverse)
    moving = make_image(dwi + 0.02 * rng.standard_normal(dwi.shape), dwi_spacing, dwi_origin)
    return fixed, moving


def check_points() -> np.ndarray:
    """27 points spread over the body (a 50 x 40 x 40 mm box around its centre)."""
    offsets = np.array(np.meshgrid([-25, 0, 25], [-20, 0, 20], [-20, 0, 20], indexing="ij")).reshape(3, -1).T
    return CENTRE + offsets


def point_errors(estimate, truth) -> np.ndarray:
    return np.array([np.linalg.norm(np.subtract(estimate.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist())))
                     for p in check_points()])


def rotation_error_deg(estimate, truth) -> float:
    r = np.array(estimate.GetMatrix()).reshape(3, 3).T @ np.array(truth.GetMatrix()).reshape(3, 3)
    return math.degrees(math.acos(min(1.0, (np.trace(r) - 1) / 2)))


def test_recovers_known_rotation_and_shift(pair):
    fixed, moving = pair
    truth = true_transform()
    identity_errors = point_errors(sitk.Euler3DTransform(), truth)
    assert identity_errors.min() > 3.0                        # the problem is not trivial
    result = register_rigid(fixed, moving, seed=0)
    errors = point_errors(result.transform, truth)
    assert errors.max() < 1.0, errors
    assert rotation_error_deg(result.transform, truth) < 1.0
    assert result.metric_after < result.metric_before         # negative MI: lower is better
    record = result.record()
    json.dumps(record)
    assert record["translation_mm"] == list(result.transform.GetTranslation())
    assert record["angles_deg"]["z"] == pytest.approx(math.degrees(result.transform.GetAngleZ()))
    assert record["rotation_total_deg"] == pytest.approx(math.degrees(math.acos((np.trace(
        np.array(truth.GetMatrix()).reshape(3, 3)) - 1) / 2)), abs=1.0)
    assert record["iterations"] > 0 and record["stop_condition"]
    assert record["settings"]["seed"] == 0 and record["settings"]["initial"] == "header"
    # the same seed gives the same result (seed 0 is not ITK's "wall clock" seed)
    again = register_rigid(fixed, moving, seed=0)
    np.testing.assert_allclose(again.transform.GetParameters(), result.transform.GetParameters(), atol=1e-9)


def test_masked_registration_recovers_and_mask_is_dilated_in_mm(pair):
    fixed, moving = pair
    mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(fixed)
    inner = fixed.TransformPhysicalPointToIndex((CENTRE - np.array([20.0, 15.0, 12.0])).tolist())
    outer = fixed.TransformPhysicalPointToIndex((CENTRE + np.array([20.0, 15.0, 12.0])).tolist())
    mask[inner[0]:outer[0], inner[1]:outer[1], inner[2]:outer[2]] = 1
    result = register_rigid(fixed, moving, mask=mask, mask_dilation_mm=10.0, seed=1)
    assert point_errors(result.transform, true_transform()).max() < 1.0
    assert rotation_error_deg(result.transform, true_transform()) < 1.0
    assert result.metric_after < result.metric_before
    assert result.record()["settings"]["mask_dilation_mm"] == 10.0
    # dilation in millimetres on anisotropic voxels: one voxel grows 6 mm -> +-8 voxels in x, +-2 slices in z
    point = sitk.Image((40, 40, 11), sitk.sitkUInt8)
    point.SetSpacing((0.7, 0.7, 3.0))
    point[20, 20, 5] = 1
    grown = sitk.GetArrayFromImage(dilate_mask_mm(point, 6.0))
    assert np.flatnonzero(grown[5, 20, :]).tolist() == list(range(12, 29))
    assert np.flatnonzero(grown[:, 20, 20]).tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(RegistrationError, match="metric mask is empty"):
        register_rigid(fixed, moving, mask=mask * 0)


def test_apply_rigid_to_geometry_equals_resampling():
    """Absorbing T into the header (no interpolation) and resampling onto the fixed grid with the
    identity gives the same image as resampling the original with T."""
    rng = np.random.default_rng(5)
    moving = sitk.GetImageFromArray(rng.random((9, 12, 14)).astype(np.float32))
    moving.SetSpacing((2.0, 2.0, 4.0))
    moving.SetOrigin((-13.0, 4.0, 20.0))
    moving.SetDirection(sitk.VersorTransform((0.2, 0.1, 1.0), 0.3).GetMatrix())   # oblique acquisition
    reference = sitk.Image((30, 26, 10), sitk.sitkFloat32)
    reference.SetSpacing((0.7, 0.7, 3.0))
    reference.SetOrigin((-8.0, 8.0, 26.0))
    tx = sitk.Euler3DTransform((-1.0, 10.0, 36.0), 0.05, -0.08, 0.12, (1.5, -2.0, 0.7))
    corrected = apply_rigid_to_geometry(moving, tx)
    assert corrected.GetSpacing() == moving.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(corrected), sitk.GetArrayViewFromImage(moving))
    with_transform = sitk.GetArrayFromImage(sitk.Resample(moving, reference, tx, sitk.sitkLinear, -1.0))
    with_header = sitk.GetArrayFromImage(sitk.Resample(corrected, reference, sitk.Transform(), sitk.sitkLinear, -1.0))
    inside = with_transform != -1.0
    assert inside.mean() > 0.3
    np.testing.assert_allclose(with_header, with_transform, atol=1e-4)
    # the voxel -> point map of the corrected image is T^-1 of the original's
    index = (3, 7, 5)
    p_corrected = corrected.TransformIndexToPhysicalPoint(index)
    np.testing.assert_allclose(tx.TransformPoint(p_corrected), moving.TransformIndexToPhysicalPoint(index), atol=1e-9)
    # a generic Transform holding the Euler transform works; a scaling cannot be absorbed
    assert apply_rigid_to_geometry(moving, sitk.Transform(tx)).GetOrigin() == corrected.GetOrigin()
    assert apply_rigid_to_geometry(moving, sitk.CompositeTransform([tx])).GetDirection() == corrected.GetDirection()
    scaled = sitk.Similarity3DTransform()
    scaled.SetScale(1.1)
    with pytest.raises(RegistrationError, match="not a rotation"):
        apply_rigid_to_geometry(moving, scaled)
    with pytest.raises(RegistrationError, match="not a rigid matrix transform"):
        apply_rigid_to_geometry(moving, sitk.TranslationTransform(3))


def test_bad_inputs(pair):
    fixed, moving = pair
    with pytest.raises(RegistrationError, match="3-D scalar"):
        register_rigid(sitk.Image((8, 8), sitk.sitkFloat32), moving)
    with pytest.raises(RegistrationError, match="seed must be an integer"):
        register_rigid(fixed, moving, seed=-1)
    with pytest.raises(RegistrationError, match="initial must be one of"):
        register_rigid(fixed, moving, initial="centre")
    with pytest.raises(RegistrationError, match="mask dilation"):
        dilate_mask_mm(fixed, -1.0)
