"""Rigid registration of one MR series onto another (e.g. the DWI / ADC onto the T2), and moving a
series' header to where the registration puts it without resampling.

:func:`register_rigid` (SimpleITK)
    Mattes mutual information (series of different contrast), ``Euler3DTransform``, three resolution
    levels (shrink 4 / 2 / 1, smoothing 2 / 1 / 0 mm), regular-step gradient descent with scales from
    physical shifts, random metric sampling seeded by ``seed`` (reproducible), an optional metric mask
    on the fixed image dilated by ``mask_dilation_mm`` (exactly, in millimetres: a distance map).

    Initialisation: ``CenteredTransformInitializer`` (``GEOMETRY``) gives the centre of rotation (the
    fixed image's centre); by default (``initial="header"``) its translation is then reset to zero,
    because series of one MR session share the scanner's patient frame: the misalignment to recover
    is patient motion of a few millimetres, while the shift between the centres of a T2 and a DWI
    field of view is a difference of planning, not of position. ``initial="geometry"`` keeps the
    centre-to-centre translation (images from different frames), ``initial="moments"`` the centres
    of mass.

    SimpleITK's Mattes metric is the *negative* mutual information: lower is better, so a successful
    registration has ``metric_after < metric_before`` (``metric_before`` is at the initial transform).

:func:`apply_rigid_to_geometry`
    The transform returned maps points of the fixed image to points of the moving image (ITK's
    convention): ``T(x) = R (x - c) + c + t``. A moving-image voxel at physical point ``p = O + D S i``
    (origin ``O``, direction ``D``, spacing ``S``, index ``i``) shows the anatomy that sits at
    ``T^-1(p) = R^-1 (p - c - t) + c`` in the fixed frame, so the corrected header is::

        direction' = R^-1 D          origin' = R^-1 (O - c - t) + c          (spacing unchanged)

    No voxel is interpolated; resampling the corrected image onto the fixed grid with the identity
    equals resampling the original with ``T`` (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from clinical.errors import MultitaskError

__all__ = ["RigidRegistration", "RegistrationError", "register_rigid", "apply_rigid_to_geometry",
           "dilate_mask_mm", "SHRINK_FACTORS", "SMOOTHING_SIGMAS_MM"]

SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS_MM = (2.0, 1.0, 0.0)
HISTOGRAM_BINS = 32
SAMPLING_PERCENTAGE = 0.2
MAX_ITERATIONS = 200
#: optimizer: regular-step gradient descent, first step and the smallest step (mm of physical shift)
LEARNING_RATE = 2.0
MIN_STEP = 1e-3
#: a transform matrix further than this from a rotation (max |R^T R - I|, |det - 1|) cannot be absorbed
ROTATION_ATOL = 1e-6
INITIALISATIONS = ("header", "geometry", "moments")


class RegistrationError(MultitaskError, ValueError):
    """The images, mask or transform cannot be used; the message says which and why."""


@dataclass(frozen=True)
class RigidRegistration:
    """Result of :func:`register_rigid`.

    Attributes
    ----------
    transform : SimpleITK.Euler3DTransform
        Maps fixed-image physical points to moving-image points (resample the moving image with it,
        or absorb it with :func:`apply_rigid_to_geometry`).
    metric_before, metric_after : float
        Mattes metric (negative mutual information: lower is better) at the initial and final transform.
    iterations : int
        Optimizer iterations over all resolution levels.
    stop_condition : str
        The optimizer's stop condition at the last level.
    settings : dict
        Metric, levels, sampling, seed, initialisation, mask use.
    """

    transform: sitk.Euler3DTransform
    metric_before: float
    metric_after: float
    iterations: int
    stop_condition: str
    settings: dict = field(default_factory=dict)

    def record(self) -> dict:
        """JSON-able account: Euler angles (degrees) and translation (mm), centre, total rotation angle,
        metric before / after, iterations, stop condition and settings."""
        tx = self.transform
        matrix = np.array(tx.GetMatrix()).reshape(3, 3)
        total = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(matrix) - 1.0) / 2.0))))
        return {
            "transform": "Euler3DTransform, fixed -> moving physical points: T(x) = R (x - c) + c + t",
            "angles_deg": {"x": math.degrees(tx.GetAngleX()), "y": math.degrees(tx.GetAngleY()),
                           "z": math.degrees(tx.GetAngleZ())},
            "angle_order": "ZYX" if tx.GetComputeZYX() else "ZXY (ITK default: R = Rz Rx Ry)",
            "rotation_total_deg": total,
            "translation_mm": list(tx.GetTranslation()),
            "centre_mm": list(tx.GetCenter()),
            "matrix": matrix.ravel().tolist(),
            "metric": "Mattes mutual information (SimpleITK: negative MI, lower is better)",
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "iterations": self.iterations,
            "stop_condition": self.stop_condition,
            "settings": dict(self.settings),
        }


def _check_image(image, name: str) -> None:
    if not isinstance(image, sitk.Image):
        raise RegistrationError(f"{name} is a {type(image).__name__}, not a SimpleITK image")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise RegistrationError(f"{name} must be a 3-D scalar image (dimension {image.GetDimension()}, "
                                f"{image.GetNumberOfComponentsPerPixel()} components)")
    if min(image.GetSize()) < 2:
        raise RegistrationError(f"{name} has size {image.GetSize()}: at least 2 voxels per axis are needed")


def dilate_mask_mm(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Binary mask (non-zero = inside) grown by ``radius_mm`` in physical millimetres (exact for
    anisotropic voxels: a signed Maurer distance map in mm, not a kernel in voxels). uint8 {0, 1}."""
    if not (math.isfinite(radius_mm) and radius_mm >= 0):
        raise RegistrationError(f"mask dilation must be a finite number of mm >= 0, got {radius_mm}")
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    if radius_mm == 0:
        return binary
    distance = sitk.SignedMaurerDistanceMap(binary, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return sitk.Cast(distance <= radius_mm, sitk.sitkUInt8)


def _metric_mask(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    _check_image(mask, "mask")
    grown = dilate_mask_mm(mask, radius_mm)
    if not np.any(sitk.GetArrayViewFromImage(grown)):
        raise RegistrationError("the metric mask is empty (no non-zero voxel)")
    return grown


def _initial_transform(fixed: sitk.Image, moving: sitk.Image, initial: str) -> sitk.Euler3DTransform:
    mode = (sitk.CenteredTransformInitializerFilter.MOMENTS if initial == "moments"
            else sitk.CenteredTransformInitializerFilter.GEOMETRY)
    tx = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode))
    if initial == "header":
        tx.SetTranslation((0.0, 0.0, 0.0))
    return tx


def register_rigid(fixed: sitk.Image, moving: sitk.Image, *, mask: Optional[sitk.Image] = None,
                   mask_dilation_mm: float = 10.0, seed: int = 0, initial: str = "header") -> RigidRegistration:
    """Rigid (6 degrees of freedom) registration of ``moving`` onto ``fixed`` by mutual information.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        3-D scalar images in physical space (any grids, any contrasts).
    mask : SimpleITK.Image, optional
        Region of the fixed image the metric uses (non-zero inside; e.g. the tumour or the mesorectum),
        grown by ``mask_dilation_mm`` so the boundary of the region, which carries the alignment, is in.
    mask_dilation_mm : float
        Growth of the mask in millimetres (0: as given).
    seed : int
        Seed of the metric's random sampling, >= 0 (same inputs and seed: the same result, up to the
        order of multi-threaded sums, about 1e-12).
    initial : {"header", "geometry", "moments"}
        Start: the scanner frame as is (default), image centres aligned, or centres of mass aligned.

    Returns
    -------
    RigidRegistration
    """
    _check_image(fixed, "fixed image")
    _check_image(moving, "moving image")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 31:
        raise RegistrationError(f"seed must be an integer in [0, 2^31), got {seed!r}")
    if initial not in INITIALISATIONS:
        raise RegistrationError(f"initial must be one of {INITIALISATIONS}, got {initial!r}")
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    tx = _initial_transform(fixed_f, moving_f, initial)

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # ITK reads a sampling seed of 0 as "seed from the wall clock" (not reproducible): pass seed + 1
    reg.SetMetricSamplingPercentage(SAMPLING_PERCENTAGE, int(seed) + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    if mask is not None:
        reg.SetMetricFixedMask(_metric_mask(mask, float(mask_dilation_mm)))
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=LEARNING_RATE, minStep=MIN_STEP,
                                                 numberOfIterations=MAX_ITERATIONS, relaxationFactor=0.5,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    reg.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS_MM))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tx, inPlace=True)
    iterations: List[int] = []

    def count_iteration() -> None:
        iterations.append(1)
    reg.AddCommand(sitk.sitkIterationEvent, count_iteration)
    try:
        metric_before = reg.MetricEvaluate(fixed_f, moving_f)
        reg.Execute(fixed_f, moving_f)
        metric_after = reg.MetricEvaluate(fixed_f, moving_f)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise RegistrationError(f"registration failed (do the images overlap in physical space?): {first}") from None
    settings = {"metric": "MattesMutualInformation", "histogram_bins": HISTOGRAM_BINS,
                "sampling": "random", "sampling_percentage": SAMPLING_PERCENTAGE, "seed": int(seed),
                "shrink_factors": list(SHRINK_FACTORS), "smoothing_sigmas_mm": list(SMOOTHING_SIGMAS_MM),
                "optimizer": "RegularStepGradientDescent", "learning_rate": LEARNING_RATE, "min_step": MIN_STEP,
                "max_iterations_per_level": MAX_ITERATIONS, "initial": initial,
                "mask": mask is not None, "mask_dilation_mm": float(mask_dilation_mm) if mask is not None else None}
    return RigidRegistration(transform=tx, metric_before=float(metric_before), metric_after=float(metric_after),
                             iterations=len(iterations), stop_condition=reg.GetOptimizerStopConditionDescription(),
                             settings=settings)


def _rigid_parts(transform) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotation matrix, centre and translation of a 3-D rigid matrix-offset transform."""
    if isinstance(transform, sitk.Transform) and type(transform) is sitk.Transform:
        transform = transform.Downcast()
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0).Downcast()     # what ImageRegistrationMethod.Execute returns
    if not all(hasattr(transform, a) for a in ("GetMatrix", "GetCenter", "GetTranslation")):
        raise RegistrationError(f"a {type(transform).__name__} is not a rigid matrix transform "
                                f"(Euler3DTransform or VersorRigid3DTransform expected)")
    matrix = np.array(transform.GetMatrix(), float)
    if matrix.size != 9:
        raise RegistrationError(f"the transform is not 3-D (matrix of {matrix.size} elements)")
    matrix = matrix.reshape(3, 3)
    off = float(np.max(np.abs(matrix.T @ matrix - np.eye(3))))
    if off > ROTATION_ATOL or abs(np.linalg.det(matrix) - 1.0) > ROTATION_ATOL:
        raise RegistrationError(f"the transform's matrix is not a rotation (max |R^T R - I| = {off:.3g}, det = "
                                f"{np.linalg.det(matrix):.6g}): scaling, shear or reflection cannot be absorbed "
                                f"into a header")
    return matrix, np.array(transform.GetCenter(), float), np.array(transform.GetTranslation(), float)


def apply_rigid_to_geometry(image: sitk.Image, transform) -> sitk.Image:
    """A copy of ``image`` (the moving image of a registration) whose origin and direction put it where
    ``transform`` (fixed -> moving points) says, voxels untouched (see the module docstring).

    Parameters
    ----------
    image : SimpleITK.Image
        3-D image on the moving image's frame (e.g. the DWI, or ADC / Dapp / Kapp on the DWI grid).
    transform : SimpleITK transform
        Rigid: ``Euler3DTransform`` (as :func:`register_rigid` returns), ``VersorRigid3DTransform``, or a
        generic ``Transform`` or one-element ``CompositeTransform`` holding one.

    Returns
    -------
    SimpleITK.Image
        Same voxels and spacing; direction ``R^-1 D``, origin ``R^-1 (O - c - t) + c``.
    """
    if not isinstance(image, sitk.Image) or image.GetDimension() != 3:
        raise RegistrationError("apply_rigid_to_geometry needs a 3-D SimpleITK image")
    rotation, centre, translation = _rigid_parts(transform)
    inverse = rotation.T
    direction = inverse @ np.array(image.GetDirection(), float).reshape(3, 3)
    origin = inverse @ (np.array(image.GetOrigin(), float) - centre - translation) + centre
    out = sitk.Image(image)
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin(origin.tolist())
    return out
