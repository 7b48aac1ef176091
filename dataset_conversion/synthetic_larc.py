"""Synthetic locally advanced rectal cancer (LARC) cohort with known ground truth.

Writes a cohort folder in the hospital-export layout the converter reads (README, "Your cohort")::

    DIR/clinical.csv                     one row per patient (columns of clinical/larc_schema.json)
    DIR/ground_truth.csv                 patient_id, centre, linear_predictor, tumour_volume_ml,
                                         tumour_mean_adc   (for evaluation only, never a feature)
    DIR/images/<patient_id>/T2.nii.gz    float32, anisotropic (about 0.7 x 0.7 x 3.0 mm)
    DIR/images/<patient_id>/ADC.nii.gz   float32, own grid (about 1.6 x 1.6 x 4.5 mm)
    DIR/images/<patient_id>/Dapp.nii.gz  float32, same grid as ADC
    DIR/images/<patient_id>/Kapp.nii.gz  float32, same grid as ADC
    DIR/images/<patient_id>/mask.nii.gz  uint8 tumour mask {0, 1} on the T2 grid
    DIR/missing_series.csv               patient_id, missing_series (e.g. "Dapp;Kapp"): the series
                                         left out by --missing-series (header only when none)

How a patient is made
---------------------
1. Latent disease burden ``z`` (shifted upwards at the external centre: more advanced case mix)
   drives the clinical variables (cT, cN, MRF, EMVI, CEA, response to chemoradiotherapy and
   hence TRG, ypT, ypN) and, partly, the tumour volume and tumour ADC.  Every clinical variable
   carries its own noise, so none is a deterministic function of the tumour.
2. A continuous pelvis-like anatomy in physical millimetres (mesorectal fat, fascia, pelvic
   side-wall muscle, a gently curved rectum with lumen and wall, and an irregular tumour
   arising from the wall) is *sampled* at the voxel centres of each grid: the T2 grid and the
   diffusion grid, so one physical point carries the same tissue in every series.
3. The tumour volume (from the mask) and the tumour mean ADC (of the noise-free ADC field at
   the mask voxels) enter a proportional-hazards model together with the clinical terms.
   Disease-free survival times are drawn from a Weibull baseline and censored by the end of
   the study (uniform accrual) and by random loss to follow-up.

Units: ADC and Dapp in 1e-6 mm^2/s (what scanners export; tumour ADC about 1000), Kapp is
dimensionless, T2 is arbitrary scanner units.

Every patient has its own random stream (``SeedSequence(seed, spawn_key=(index,))``) and its
centre depends on its index only, so patient ``P0007`` is the same whatever the cohort size.

Missing series
--------------
Real cohorts lack series: many centres acquire no diffusion kurtosis imaging (no Dapp, no
Kapp), some no usable ADC.  ``--missing-series SPEC`` (repeatable) leaves series out:

``SERIES[,SERIES...]:FRACTION``
    e.g. ``Dapp,Kapp:0.3``: ``round(FRACTION * N)`` patients (halves rounded up, so possibly
    none in a tiny cohort), drawn at random from the whole cohort, lack these series.  Unlike
    everything else about a patient, whether it is drawn depends on the cohort size ``N``.
``SERIES[,SERIES...]:centre=C``
    e.g. ``Dapp,Kapp:centre=3``: every patient of centre ``C`` (the label of clinical.csv's
    ``centre`` column, 1..``--centres``; with 3 or more centres the last is the external one)
    lacks them.

Only ADC, Dapp and Kapp can be removed; T2 and the mask never.  Several specs combine (a
patient lacks the union of what the specs that pick it remove).  A removed series is simply
not written.  The patients are drawn from a stream of their own (``default_rng([seed,
MISSING_SERIES_STREAM])``), so the choice is reproducible from ``--seed`` and everything else
(clinical.csv, ground_truth.csv, every series that is written) is byte-identical to the cohort
without ``--missing-series``.

Command line::

    python -m dataset_conversion.synthetic_larc --out DIR --patients N --seed S \
        [--shape X Y Z] [--centres 3] [--censoring-rate R] [--follow-up-months MIN MAX] [--overwrite] \
        [--missing-series SERIES[,SERIES...]:FRACTION|centre=C ...]

or the same flags after the console script ``multirec_synthetic_cohort``; bad input exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import SimpleITK as sitk

from clinical.schema import ClinicalSchema

# --------------------------------------------------------------------------- constants
T2_SPACING_MM = (0.7, 0.7, 3.0)              # x, y, z
T2_SPACING_EXTERNAL_MM = (0.75, 0.75, 3.0)   # the external centre's protocol differs slightly
DWI_SPACING_MM = (1.6, 1.6, 4.5)
DEFAULT_SHAPE = (80, 80, 16)
MIN_SHAPE = (16, 16, 4)

#: Population constants used to standardise the image-borne prognostic factors.  They are
#: fixed (not cohort statistics) so a patient's linear predictor does not depend on who else
#: is in the cohort.
VOLUME_MEDIAN_ML = 8.0
VOLUME_LOG_SD = 0.6
ADC_POPULATION_MEAN = 1000.0
ADC_POPULATION_SD = 150.0

#: Proportional-hazards coefficients (log hazard ratio per unit).  Ordinal categories enter
#: as their index in the schema's category list.  Chosen so that the oracle Harrell C-index is
#: about 0.8 and the image-borne terms carry about a third of the linear predictor's variance.
COEFFICIENTS: Dict[str, float] = {
    "ct_index": 0.15,
    "cn_index": 0.20,
    "mrf": 0.25,
    "emvi": 0.35,
    "log_cea": 0.15,          # natural log of CEA / 3 ng/mL
    "ypt_index": 0.12,
    "ypn_index": 0.35,
    "trg_index": 0.15,
    "log_volume_std": 0.55,   # (ln volume - ln median) / log-sd
    "adc_std": -0.65,         # (ADC - mean) / sd : lower ADC = worse
}
IMAGE_TERMS = ("log_volume_std", "adc_std")

#: Weibull baseline hazard h0(t) = (k / lam) (t / lam)^(k-1), t in months.
WEIBULL_SHAPE = 0.9
WEIBULL_SCALE_MONTHS = 260.0
BASELINE_LP_OFFSET = 1.4     # mean of the linear predictor in the population; centres it

DEFAULT_LOSS_TO_FOLLOW_UP_RATE = 0.04        # per year (exponential hazard of dropping out)
DEFAULT_ADMIN_CENSORING_MONTHS = (36.0, 84.0)  # follow-up at study end, uniform accrual

MISSING_RATE = {"cea": 0.04, "emvi": 0.05, "distance_av_cm": 0.03, "trg": 0.04}

CLINICAL_COLUMNS = ["patient_id", "centre", "age", "sex", "cea", "ct", "cn", "mrf", "emvi",
                    "distance_av_cm", "ypt", "ypn", "trg", "dfs_months", "dfs_event"]
GROUND_TRUTH_COLUMNS = ["patient_id", "centre", "linear_predictor", "tumour_volume_ml",
                        "tumour_mean_adc"]
SERIES = ("T2", "ADC", "Dapp", "Kapp")

#: Series that ``--missing-series`` may remove.  T2 defines the case grid and the mask is the
#: reference segmentation, so every patient keeps both.
REMOVABLE_SERIES = ("ADC", "Dapp", "Kapp")
#: Second seed word of the stream that picks which patients lack series: a stream of its own,
#: so removing series never changes a draw of the patients' own streams.
MISSING_SERIES_STREAM = 0x4D495353   # "MISS"
MISSING_SERIES_COLUMNS = ["patient_id", "missing_series"]

# Tissue properties: T2 signal (scanner units before the centre's scale), ADC and Dapp
# (1e-6 mm^2/s), Kapp.  Fat is fat-suppressed on DWI, so its fitted ADC is low and noisy.
TISSUES = ("fat", "muscle", "fascia", "wall", "lumen", "tumour")
TISSUE_T2 = {"fat": 800.0, "muscle": 230.0, "fascia": 180.0, "wall": 330.0, "lumen": 950.0}
TISSUE_ADC = {"fat": 550.0, "muscle": 1400.0, "fascia": 1300.0, "wall": 1600.0, "lumen": 2300.0}
TISSUE_DAPP = {"fat": 750.0, "muscle": 1750.0, "fascia": 1600.0, "wall": 2000.0, "lumen": 2700.0}
TISSUE_KAPP = {"fat": 0.50, "muscle": 0.70, "fascia": 0.72, "wall": 0.62, "lumen": 0.30}
TUMOUR_T2 = 560.0   # intermediate: between muscle-dark and fat-bright
TUMOUR_THRESHOLD_BOUND = 0.35   # |threshold| of the implicit tumour function, keeps it ellipsoid-like


@dataclass(frozen=True)
class CentreProtocol:
    """Scanner/protocol differences of one centre."""

    t2_scale: float
    t2_noise_sd: float
    dwi_noise_scale: float
    t2_spacing: Tuple[float, float, float]
    case_mix_shift: float      # added to the latent disease burden


def centre_protocol(centre: int, n_centres: int) -> CentreProtocol:
    """Protocol of ``centre``; the highest-numbered centre is the external one when n_centres >= 3."""
    if n_centres >= 3 and centre == n_centres:
        return CentreProtocol(1.3, 28.0, 1.4, T2_SPACING_EXTERNAL_MM, 0.35)
    t2_scale = 1.0 if centre % 2 == 1 else 0.9
    return CentreProtocol(t2_scale, 16.0, 1.0, T2_SPACING_MM, 0.0)


def assign_centre(patient_index: int, n_centres: int) -> int:
    """Centre of the patient with 0-based ``patient_index``, independent of the cohort size.

    With 3 or more centres one patient in five comes from the external (last) centre and the
    others cycle over the internal centres, so any cohort of five or more patients has an
    external test set; with fewer centres they simply cycle.
    """
    if n_centres < 3:
        return patient_index % n_centres + 1
    if patient_index % 5 == 4:
        return n_centres
    internal_rank = (patient_index // 5) * 4 + patient_index % 5
    return internal_rank % (n_centres - 1) + 1


# --------------------------------------------------------------------------- clinical model
def _ordinal(score: float, thresholds: Sequence[float]) -> int:
    """Index of the interval of ``thresholds`` (ascending) that ``score`` falls into."""
    return int(np.searchsorted(np.asarray(thresholds), score))


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def sample_patient_latents(rng: np.random.Generator, centre_shift: float) -> dict:
    """Latent disease burden, target tumour volume, tumour ADC and the clinical variables.

    Parameters
    ----------
    rng : numpy.random.Generator
        The patient's own stream.
    centre_shift : float
        Added to the latent burden (case mix of the centre).

    Returns
    -------
    dict
        ``clinical`` (complete feature values, schema categories as strings / 0-1 ints),
        ``target_volume_ml``, ``tumour_adc`` (patient-level tumour ADC before rendering),
        ``tumour_dapp``, ``tumour_kapp``.
    """
    burden = rng.normal(centre_shift, 1.0)
    # Volume and ADC share part of their variation with the burden, the rest is their own:
    # that own part is what an image model can add over the clinical variables.
    log_volume_std = 0.6 * burden + 0.8 * rng.normal()
    target_volume_ml = float(np.exp(np.log(VOLUME_MEDIAN_ML) + VOLUME_LOG_SD * log_volume_std))
    adc_std = -0.3 * burden + 0.95 * rng.normal()
    tumour_adc = float(np.clip(ADC_POPULATION_MEAN + ADC_POPULATION_SD * adc_std, 600.0, 1450.0))
    tumour_dapp = float(tumour_adc * rng.uniform(1.28, 1.42))
    tumour_kapp = float(np.clip(1.0 - 0.0005 * (tumour_adc - 1000.0) + rng.normal(0.0, 0.04), 0.8, 1.3))

    ct_index = _ordinal(0.55 * burden + 0.35 * log_volume_std + 0.6 * rng.normal(), [-1.25, 0.75])
    cn_index = _ordinal(0.6 * burden + 0.8 * rng.normal(), [-0.5, 0.55])
    mrf = int(rng.random() < _sigmoid(-1.3 + 1.3 * (ct_index == 2) + 0.6 * burden))
    emvi = int(rng.random() < _sigmoid(-1.0 + 0.9 * burden))
    cea = float(np.clip(np.exp(np.log(3.0) + 0.45 * burden + 0.8 * rng.normal()), 0.3, 400.0))
    # Response to neoadjuvant chemoradiotherapy: better in smaller, less advanced tumours.
    response = -0.5 * burden + 0.87 * rng.normal()
    trg_index = _ordinal(-response + 0.4 * rng.normal(), [-1.0, -0.2, 0.75])
    if trg_index == 0:
        ypt_index = 0
        ypn_index = int(rng.random() < 0.06)
    else:
        ypt_index = 1 + _ordinal(0.5 * ct_index - 0.6 * response + 0.6 * rng.normal(), [-0.2, 0.5, 1.7])
        ypn_index = _ordinal(0.4 * cn_index - 0.6 * response + 0.7 * rng.normal(), [0.55, 1.45])
    age = int(np.clip(round(rng.normal(60.0, 10.0)), 28, 88))
    sex = "M" if rng.random() < 0.65 else "F"
    distance_av_cm = float(np.clip(rng.normal(6.5, 2.5), 1.0, 15.0))

    clinical = {
        "age": age, "sex": sex, "cea": round(cea, 1),
        "ct": ["T2", "T3", "T4"][ct_index], "cn": ["N0", "N1", "N2"][cn_index],
        "mrf": mrf, "emvi": emvi, "distance_av_cm": round(distance_av_cm, 1),
        "ypt": ["T0", "T1", "T2", "T3", "T4"][ypt_index], "ypn": ["N0", "N1", "N2"][ypn_index],
        "trg": str(trg_index),
    }
    return {"clinical": clinical, "target_volume_ml": target_volume_ml, "tumour_adc": tumour_adc,
            "tumour_dapp": tumour_dapp, "tumour_kapp": tumour_kapp}


def linear_predictor_terms(clinical: dict, tumour_volume_ml: float, tumour_mean_adc: float) -> Dict[str, float]:
    """Per-term contributions (coefficient x covariate) to the true log hazard ratio.

    Parameters
    ----------
    clinical : dict
        Complete clinical values as returned by :func:`sample_patient_latents`.
    tumour_volume_ml, tumour_mean_adc : float
        Image-borne factors as measured on the rendered patient.
    """
    covariates = {
        "ct_index": ["T2", "T3", "T4"].index(clinical["ct"]),
        "cn_index": ["N0", "N1", "N2"].index(clinical["cn"]),
        "mrf": clinical["mrf"],
        "emvi": clinical["emvi"],
        "log_cea": float(np.log(clinical["cea"] / 3.0)),
        "ypt_index": ["T0", "T1", "T2", "T3", "T4"].index(clinical["ypt"]),
        "ypn_index": ["N0", "N1", "N2"].index(clinical["ypn"]),
        "trg_index": int(clinical["trg"]),
        "log_volume_std": (np.log(tumour_volume_ml) - np.log(VOLUME_MEDIAN_ML)) / VOLUME_LOG_SD,
        "adc_std": (tumour_mean_adc - ADC_POPULATION_MEAN) / ADC_POPULATION_SD,
    }
    return {name: COEFFICIENTS[name] * float(value) for name, value in covariates.items()}


def sample_outcome(rng: np.random.Generator, linear_predictor: float,
                   loss_to_follow_up_rate: float = DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                   admin_censoring_months: Tuple[float, float] = DEFAULT_ADMIN_CENSORING_MONTHS) -> dict:
    """Draw a censored disease-free survival outcome from the proportional-hazards model.

    The event time has survival ``S(t) = exp(-(t/lam)^k * exp(lp - offset))`` (Weibull
    baseline); it is censored by the end of the study (follow-up uniform in
    ``admin_censoring_months``: uniform accrual) and by exponential loss to follow-up with
    ``loss_to_follow_up_rate`` per year.

    Returns
    -------
    dict
        ``dfs_months`` (observed time, > 0, one decimal, never beyond ``follow_up_months``),
        ``dfs_event`` (0/1), ``event_time_months`` (latent), ``follow_up_months`` (study end
        for this patient, one decimal), ``loss_time_months`` (latent).
    """
    low, high = admin_censoring_months
    if not 0 < low <= high:
        raise ValueError(f"admin_censoring_months must satisfy 0 < min <= max, got {admin_censoring_months}")
    if loss_to_follow_up_rate < 0:
        raise ValueError(f"loss_to_follow_up_rate must be >= 0 per year, got {loss_to_follow_up_rate}")
    unit = rng.random()
    relative_hazard = np.exp(linear_predictor - BASELINE_LP_OFFSET)
    event_time = WEIBULL_SCALE_MONTHS * (-np.log1p(-unit) / relative_hazard) ** (1.0 / WEIBULL_SHAPE)
    # Study end on the 0.1-month grid, so the rounded observed time cannot pass it.
    follow_up = round(float(rng.uniform(low, high)), 1)
    loss_draw = rng.exponential()   # always drawn: the stream does not depend on the rate
    loss_time = np.inf if loss_to_follow_up_rate == 0 else 12.0 * loss_draw / loss_to_follow_up_rate
    censor_time = min(follow_up, loss_time)
    event = int(event_time <= censor_time)
    observed = min(event_time, censor_time)
    dfs_months = min(max(round(float(observed), 1), 0.1), follow_up)
    return {"dfs_months": dfs_months, "dfs_event": event, "event_time_months": float(event_time),
            "follow_up_months": follow_up, "loss_time_months": float(loss_time)}


# --------------------------------------------------------------------------- anatomy
class SmoothField:
    """Smooth random field of about unit variance, defined at any physical point.

    A sum of random plane waves: unlike noise on a voxel grid it can be evaluated at the T2
    and the DWI voxel centres alike, so both series see the same continuous anatomy.
    """

    def __init__(self, rng: np.random.Generator, wavelength_mm: Tuple[float, float], n_waves: int = 8):
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_mm, size=n_waves)
        self.wave_vectors = directions * (2.0 * np.pi / wavelengths)[:, None]
        self.phases = rng.uniform(0.0, 2.0 * np.pi, size=n_waves)
        self.amplitude = np.sqrt(2.0 / n_waves)
        self.max_abs = self.amplitude * n_waves   # bound on |field|, used to skip far points

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field at ``points`` (..., 3) in mm."""
        # Element-wise products rather than a matrix product: no BLAS, so the same bits on any
        # machine and for any number of points.
        k = self.wave_vectors
        phase = (points[..., 0:1] * k[:, 0] + points[..., 1:2] * k[:, 1] + points[..., 2:3] * k[:, 2]
                 + self.phases)
        return self.amplitude * np.cos(phase).sum(axis=-1)


@dataclass
class PatientAnatomy:
    """Continuous pelvis-like anatomy of one patient, in physical millimetres."""

    rectum_centre: np.ndarray          # (x, y) of the rectal axis at z = fov_centre_z
    rectum_wobble: Tuple[float, float, float, float]   # amplitude x, y (mm), period (mm), phase
    fov_centre: np.ndarray
    lumen_radius: float
    wall_thickness: float
    mesorectum_radius: float
    fascia_thickness: float
    muscle_offset: float               # side-wall muscle begins this far beyond the fascia
    tumour_centre: np.ndarray
    tumour_angle: float
    tumour_semi_axes: np.ndarray       # radial, tangential, craniocaudal
    tumour_shape_field: SmoothField
    tumour_shape_amplitude: float
    tumour_threshold: float
    tumour_texture: SmoothField
    tumour_adc: float
    tumour_dapp: float
    tumour_kapp: float

    def rectal_axis(self, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        ax, ay, period, phase = self.rectum_wobble
        arg = 2.0 * np.pi * (z - self.fov_centre[2]) / period + phase
        return self.rectum_centre[0] + ax * np.sin(arg), self.rectum_centre[1] + ay * np.cos(arg)

    def tumour_level(self, points: np.ndarray) -> np.ndarray:
        """Implicit tumour function; the tumour is where it exceeds ``tumour_threshold``.

        Points whose ellipsoidal radius alone rules them out (level below the lowest allowed
        threshold whatever the shape field does) get -inf without evaluating the field: the
        result is the same and rendering is several times faster.
        """
        offset = points - self.tumour_centre
        cos_a, sin_a = np.cos(self.tumour_angle), np.sin(self.tumour_angle)
        radial = offset[..., 0] * cos_a + offset[..., 1] * sin_a
        tangential = -offset[..., 0] * sin_a + offset[..., 1] * cos_a
        rho = np.sqrt((radial / self.tumour_semi_axes[0]) ** 2 + (tangential / self.tumour_semi_axes[1]) ** 2
                      + (offset[..., 2] / self.tumour_semi_axes[2]) ** 2)
        reach = 1.0 + TUMOUR_THRESHOLD_BOUND + self.tumour_shape_amplitude * self.tumour_shape_field.max_abs
        candidates = rho < reach
        near = points[candidates]
        level_near = 1.0 - rho[candidates] + self.tumour_shape_amplitude * self.tumour_shape_field(near)
        # A narrowed residual lumen stays open: the tumour grows from the wall, it does not
        # fill the whole lumen.
        axis_x, axis_y = self.rectal_axis(near[:, 2])
        radius = np.hypot(near[:, 0] - axis_x, near[:, 1] - axis_y)
        level_near[radius < 0.45 * self.lumen_radius] = -np.inf
        level = np.full(rho.shape, -np.inf)
        level[candidates] = level_near
        return level

    def tissue_labels(self, points: np.ndarray) -> np.ndarray:
        """Index into :data:`TISSUES` of the tissue at each point (..., 3)."""
        axis_x, axis_y = self.rectal_axis(points[..., 2])
        dx, dy = points[..., 0] - axis_x, points[..., 1] - axis_y
        radius = np.hypot(dx, dy)
        labels = np.zeros(points.shape[:-1], dtype=np.uint8)          # fat
        # Pelvic side-wall muscle (levator / obturator): beyond the mesorectal fascia, laterally
        # and posteriorly.
        outer = self.mesorectum_radius + self.fascia_thickness + self.muscle_offset
        lateral_or_posterior = (np.abs(dx) > 0.55 * radius) | (dy > 0.5 * radius)
        labels[(radius > outer) & lateral_or_posterior] = TISSUES.index("muscle")
        fascia = (radius > self.mesorectum_radius) & (radius <= self.mesorectum_radius + self.fascia_thickness)
        labels[fascia] = TISSUES.index("fascia")
        labels[radius <= self.lumen_radius + self.wall_thickness] = TISSUES.index("wall")
        labels[radius <= self.lumen_radius] = TISSUES.index("lumen")
        labels[self.tumour_level(points) > self.tumour_threshold] = TISSUES.index("tumour")
        return labels

    def property_maps(self, points: np.ndarray) -> Dict[str, np.ndarray]:
        """Noise-free T2 (before the centre's scale), ADC, Dapp and Kapp at ``points``."""
        labels = self.tissue_labels(points)
        is_tumour = labels == TISSUES.index("tumour")
        texture = self.tumour_texture(points[is_tumour])   # only where it is used
        maps = {}
        for series, table, tumour_value, texture_sd in (
                ("T2", TISSUE_T2, TUMOUR_T2, 0.10), ("ADC", TISSUE_ADC, self.tumour_adc, 0.08),
                ("Dapp", TISSUE_DAPP, self.tumour_dapp, 0.08), ("Kapp", TISSUE_KAPP, self.tumour_kapp, 0.05)):
            lookup = np.array([table.get(t, 0.0) for t in TISSUES])
            values = lookup[labels]
            values[is_tumour] = tumour_value * (1.0 + texture_sd * texture)
            maps[series] = values
        maps["labels"] = labels
        return maps


def _voxel_centres(origin: np.ndarray, spacing: np.ndarray, shape_xyz: Sequence[int]) -> np.ndarray:
    """Physical voxel centres as an array (z, y, x, 3) matching SimpleITK's array order."""
    axes = [origin[d] + spacing[d] * np.arange(shape_xyz[d]) for d in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([xx, yy, zz], axis=-1)


def _make_image(array_zyx: np.ndarray, origin, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    return image


def anatomy_scale(fov_size_mm: Sequence[float]) -> float:
    """Size factor of the anatomy: 1 at the default field of view (56 x 56 x 48 mm) or larger.

    A smaller field of view (tiny test shapes) holds a uniformly scaled-down miniature of the
    pelvis and the tumour, so the tumour volume distribution keeps its log-normal shape instead
    of being clipped to a narrow range.  The outcome model then uses the real-world equivalent
    volume, ``mask volume / scale**3``: a constant shift of the linear predictor for a given
    shape, so the ranking of patients by their masks is unchanged.
    """
    fov = np.asarray(fov_size_mm, dtype=float)
    return float(min(1.0, fov[0] / 56.0, fov[1] / 56.0, fov[2] / 48.0))


def _build_anatomy(rng: np.random.Generator, latents: dict, fov_centre: np.ndarray,
                   fov_size: np.ndarray, voxel_spacing: np.ndarray) -> PatientAnatomy:
    """Random anatomy fitting a field of view of ``fov_size`` mm centred at ``fov_centre``."""
    scale = anatomy_scale(fov_size)
    lumen_radius = scale * rng.uniform(5.0, 8.0)
    wall_thickness = scale * rng.uniform(2.5, 4.0)
    mesorectum_radius = lumen_radius + wall_thickness + scale * rng.uniform(7.0, 11.0)
    rectum_centre = fov_centre[:2] + rng.uniform(-2.0, 2.0, size=2) * scale
    wobble = (scale * rng.uniform(0.5, 2.5), scale * rng.uniform(0.5, 2.5),
              rng.uniform(60.0, 120.0), rng.uniform(0.0, 2.0 * np.pi))

    angle = rng.uniform(0.0, 2.0 * np.pi)
    mid_wall = lumen_radius + 0.5 * wall_thickness
    tumour_z = fov_centre[2] + rng.uniform(-0.12, 0.12) * fov_size[2]
    circumferential = rng.uniform(1.0, 1.6)
    craniocaudal = rng.uniform(1.3, 2.0)
    # Semi-axes from the target volume, clipped so the tumour stays inside the field of view.
    target_volume_mm3 = latents["target_volume_ml"] * 1000.0 * scale ** 3
    radial = (3.0 * target_volume_mm3 / (4.0 * np.pi * circumferential * craniocaudal)) ** (1 / 3)
    semi_axes = np.array([radial, radial * circumferential, radial * craniocaudal])
    max_axes = np.array([0.26 * min(fov_size[:2]), 0.30 * min(fov_size[:2]), 0.40 * fov_size[2]])
    # At least about a voxel in each direction, so the smallest tumour still covers voxel centres.
    semi_axes = np.maximum(np.minimum(semi_axes, max_axes), np.maximum(1.5, 1.2 * voxel_spacing))
    # Tumour centre on the wall, displaced outwards a little: it grows into the mesorectum.
    centre_radius = mid_wall + 0.25 * semi_axes[0]
    axis_x, axis_y = (rectum_centre[0], rectum_centre[1])
    tumour_centre = np.array([axis_x + centre_radius * np.cos(angle), axis_y + centre_radius * np.sin(angle), tumour_z])
    return PatientAnatomy(
        rectum_centre=rectum_centre, rectum_wobble=wobble, fov_centre=fov_centre,
        lumen_radius=lumen_radius, wall_thickness=wall_thickness, mesorectum_radius=mesorectum_radius,
        fascia_thickness=max(1.0, scale * 1.5), muscle_offset=scale * rng.uniform(2.0, 6.0),
        tumour_centre=tumour_centre, tumour_angle=angle, tumour_semi_axes=semi_axes,
        tumour_shape_field=SmoothField(rng, (10.0 * scale, 25.0 * scale)),
        tumour_shape_amplitude=rng.uniform(0.15, 0.3),
        tumour_threshold=0.0, tumour_texture=SmoothField(rng, (5.0 * scale, 15.0 * scale)),
        tumour_adc=latents["tumour_adc"], tumour_dapp=latents["tumour_dapp"], tumour_kapp=latents["tumour_kapp"])


def _bias_field(rng: np.random.Generator, points: np.ndarray, centre: np.ndarray, strength: float) -> np.ndarray:
    """Smooth multiplicative receive-coil bias: exp of a long-wavelength random field.

    Equal to a per-patient gain (log-normal, 4 %) at the field-of-view centre, so the
    centre's scanner scale, not the bias, sets the overall intensity level.
    """
    field = SmoothField(rng, (120.0, 250.0), n_waves=4)
    gain = np.exp(rng.normal(0.0, 0.04))
    return gain * np.exp(strength * (field(points) - field(centre)))


def render_patient(rng: np.random.Generator, latents: dict, protocol: CentreProtocol,
                   shape_xyz: Tuple[int, int, int]) -> dict:
    """Render T2, ADC, Dapp, Kapp and the mask of one patient.

    Returns
    -------
    dict
        ``images`` (name -> SimpleITK image: T2, ADC, Dapp, Kapp, mask), ``tumour_volume_ml``
        (mask voxels x T2 voxel volume), ``equivalent_volume_ml`` (the same at real-world size,
        see :func:`anatomy_scale`; equal at the default shape), ``tumour_mean_adc`` (mean of
        the noise-free ADC field at the mask voxel centres: what the ADC map shows there, noise
        aside) and ``tissue_labels`` (index into :data:`TISSUES` at each T2 voxel, array z, y, x).
    """
    t2_spacing = np.array(protocol.t2_spacing)
    shape = np.array(shape_xyz)
    # Scanner coordinates: field of view roughly centred on the isocentre, with table offset.
    fov_size = shape * t2_spacing
    t2_origin = -0.5 * (shape - 1) * t2_spacing + rng.uniform(-10.0, 10.0, size=3)
    fov_centre = t2_origin + 0.5 * (shape - 1) * t2_spacing
    anatomy = _build_anatomy(rng, latents, fov_centre, fov_size, t2_spacing)

    t2_points = _voxel_centres(t2_origin, t2_spacing, shape_xyz)
    # Choose the tumour threshold so the mask volume matches the target (log-normal) volume;
    # the threshold is bounded so the shape stays a perturbed ellipsoid.
    level = anatomy.tumour_level(t2_points).ravel()
    voxel_ml = float(np.prod(t2_spacing)) / 1000.0
    scale = anatomy_scale(fov_size)
    target_voxels = int(np.clip(round(latents["target_volume_ml"] * scale ** 3 / voxel_ml), 8, level.size // 4))
    kth_largest = np.partition(level, level.size - target_voxels)[level.size - target_voxels]
    anatomy.tumour_threshold = float(np.clip(np.nextafter(kth_largest, -np.inf), -TUMOUR_THRESHOLD_BOUND,
                                             TUMOUR_THRESHOLD_BOUND))

    t2_maps = anatomy.property_maps(t2_points)
    mask = (t2_maps["labels"] == TISSUES.index("tumour")).astype(np.uint8)
    if not mask.any():
        raise RuntimeError("synthetic tumour mask came out empty; the field of view is too small "
                           f"for the anatomy (shape {tuple(shape_xyz)})")
    tumour_mean_adc = float(t2_maps["ADC"][mask.astype(bool)].mean())
    tumour_volume_ml = float(mask.sum()) * voxel_ml

    # T2: centre's intensity scale, smooth bias field, Rician noise (magnitude image).
    bias = _bias_field(rng, t2_points, fov_centre, strength=0.15)
    t2_clean = t2_maps["T2"] * bias * protocol.t2_scale
    noise_sd = protocol.t2_noise_sd * protocol.t2_scale
    t2 = np.hypot(t2_clean + rng.normal(0.0, noise_sd, t2_clean.shape), rng.normal(0.0, noise_sd, t2_clean.shape))

    # Diffusion grid: coarser, own origin (shifted by a few mm) and extent, covering the T2
    # voxel centres with a margin so resampling onto T2 never extrapolates.
    dwi_spacing = np.array(DWI_SPACING_MM)
    t2_first, t2_last = t2_origin, t2_origin + (shape - 1) * t2_spacing
    margin = dwi_spacing + rng.uniform(1.0, 4.0, size=3)
    dwi_origin = t2_first - margin
    dwi_shape = np.ceil((t2_last + dwi_spacing + 2.0 - dwi_origin) / dwi_spacing).astype(int) + 1
    dwi_points = _voxel_centres(dwi_origin, dwi_spacing, dwi_shape)
    # Partial volume: average the anatomy over 2x2x2 sub-positions inside each DWI voxel.
    dwi_sum: Dict[str, np.ndarray] = {}
    for sub in np.array(np.meshgrid([-0.25, 0.25], [-0.25, 0.25], [-0.25, 0.25], indexing="ij")).reshape(3, -1).T:
        maps = anatomy.property_maps(dwi_points + sub * dwi_spacing)
        for series in ("ADC", "Dapp", "Kapp"):
            dwi_sum[series] = dwi_sum.get(series, 0.0) + maps[series] / 8.0
    dwi_noise = {"ADC": 60.0, "Dapp": 80.0, "Kapp": 0.05}
    images = {"T2": _make_image(t2.astype(np.float32), t2_origin, t2_spacing)}
    for series in ("ADC", "Dapp", "Kapp"):
        noisy = dwi_sum[series] + rng.normal(0.0, dwi_noise[series] * protocol.dwi_noise_scale, dwi_sum[series].shape)
        images[series] = _make_image(np.maximum(noisy, 0.0).astype(np.float32), dwi_origin, dwi_spacing)
    images["mask"] = _make_image(mask, t2_origin, t2_spacing)
    return {"images": images, "tumour_volume_ml": tumour_volume_ml, "tumour_mean_adc": tumour_mean_adc,
            "equivalent_volume_ml": tumour_volume_ml / scale ** 3, "tissue_labels": t2_maps["labels"]}


# --------------------------------------------------------------------------- cohort
def patient_rng(seed: int, patient_index: int) -> np.random.Generator:
    """The random stream of the patient with 0-based ``patient_index``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient_index,)))


def patient_id(patient_index: int) -> str:
    return f"P{patient_index + 1:04d}"


def _check_schema_categories(row: dict, schema: ClinicalSchema, pid: str) -> None:
    # Guard against this generator drifting away from the schema file.
    for name, spec in schema.columns.items():
        value = row[name]
        if spec.type == "categorical" and str(value) not in spec.categories:
            raise AssertionError(f"{pid}: generated {name}={value!r} not in schema categories {spec.categories}")
        if spec.type == "binary" and value not in (0, 1):
            raise AssertionError(f"{pid}: generated {name}={value!r} is not 0/1")


def simulate_patient(seed: int, patient_index: int, n_centres: int, shape: Tuple[int, int, int],
                     loss_to_follow_up_rate: float, admin_censoring_months: Tuple[float, float],
                     render: bool = True) -> dict:
    """Everything about one patient: clinical row, ground-truth row and (optionally) images.

    With ``render=False`` no images are made and the image-borne factors are the target
    volume and patient-level ADC (the outcome model alone, for fast statistical checks).

    Returns
    -------
    dict
        ``clinical_row`` and ``ground_truth_row`` (as written to the CSVs, missing values as
        None), ``complete_clinical`` (before values were blanked), ``outcome`` (see
        :func:`sample_outcome`), ``images`` (name -> SimpleITK image, or None) and
        ``tissue_labels`` (T2-grid tissue indices into :data:`TISSUES`, or None).
    """
    rng = patient_rng(seed, patient_index)
    centre = assign_centre(patient_index, n_centres)
    protocol = centre_protocol(centre, n_centres)
    latents = sample_patient_latents(rng, protocol.case_mix_shift)
    pid = patient_id(patient_index)
    if render:
        try:
            rendered = render_patient(rng, latents, protocol, shape)
        except RuntimeError as error:
            raise RuntimeError(f"patient {pid} (seed {seed}): {error}") from error
        volume_ml, mean_adc, images = rendered["tumour_volume_ml"], rendered["tumour_mean_adc"], rendered["images"]
        prognostic_volume_ml, tissue_labels = rendered["equivalent_volume_ml"], rendered["tissue_labels"]
    else:
        volume_ml, mean_adc, images = latents["target_volume_ml"], latents["tumour_adc"], None
        prognostic_volume_ml, tissue_labels = volume_ml, None
    # The outcome stream is separate from the rendering stream, so the outcome of a patient
    # does not change with the image shape.
    outcome_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient_index, 1)))
    lp = float(sum(linear_predictor_terms(latents["clinical"], prognostic_volume_ml, mean_adc).values()))
    outcome = sample_outcome(outcome_rng, lp, loss_to_follow_up_rate, admin_censoring_months)
    clinical = dict(latents["clinical"])
    for column, rate in MISSING_RATE.items():
        if outcome_rng.random() < rate:
            clinical[column] = None
    row = {"patient_id": pid, "centre": centre, **clinical,
           "dfs_months": outcome["dfs_months"], "dfs_event": outcome["dfs_event"]}
    truth = {"patient_id": pid, "centre": centre, "linear_predictor": round(lp, 6),
             "tumour_volume_ml": round(volume_ml, 4), "tumour_mean_adc": round(mean_adc, 2)}
    return {"clinical_row": row, "ground_truth_row": truth, "outcome": outcome, "images": images,
            "complete_clinical": latents["clinical"], "tissue_labels": tissue_labels}


# --------------------------------------------------------------------------- missing series
@dataclass(frozen=True)
class MissingSeriesSpec:
    """One ``--missing-series`` rule: which series to remove, and from which patients.

    Exactly one of ``fraction`` and ``centre`` is set.

    Attributes
    ----------
    series : tuple of str
        Series to remove, a subset of :data:`REMOVABLE_SERIES` in that order.
    fraction : float or None
        Remove them from ``round(fraction * n_patients)`` patients (halves rounded up) drawn
        at random from the whole cohort.
    centre : int or None
        Remove them from every patient of this centre (the ``centre`` of ``clinical.csv``).
    text : str
        The spec as written, for messages.
    """

    series: Tuple[str, ...]
    fraction: Optional[float] = None
    centre: Optional[int] = None
    text: str = ""

    def __post_init__(self):
        if (self.fraction is None) == (self.centre is None):
            raise ValueError(f"--missing-series {self.text!r}: give exactly one of a fraction and a centre")


def parse_missing_series(text: str, n_centres: Optional[int] = None) -> MissingSeriesSpec:
    """Parse ``SERIES[,SERIES...]:FRACTION`` or ``SERIES[,SERIES...]:centre=C``.

    Parameters
    ----------
    text : str
        The spec, e.g. ``"Dapp,Kapp:0.3"`` or ``"ADC:centre=3"``.
    n_centres : int, optional
        Number of centres of the cohort; when given, ``C`` must be one of ``1..n_centres``.

    Returns
    -------
    MissingSeriesSpec

    Raises
    ------
    ValueError
        Malformed spec, a series other than ADC, Dapp or Kapp, a fraction outside (0, 1] or
        an unknown centre; the message names the spec.
    """
    prefix = f"--missing-series {text!r}"
    series_part, colon, rule = text.partition(":")
    if not colon or ":" in rule or not rule.strip():
        raise ValueError(f"{prefix}: expected SERIES[,SERIES...]:FRACTION or SERIES[,SERIES...]:centre=C")
    names = [name.strip() for name in series_part.split(",")]
    if not all(names):
        raise ValueError(f"{prefix}: empty series name (expected e.g. Dapp,Kapp:0.3)")
    for name in names:
        if name in ("T2", "mask"):
            raise ValueError(f"{prefix}: {name} cannot be removed (every patient keeps T2 and mask); "
                             f"removable series are {', '.join(REMOVABLE_SERIES)}")
        if name not in REMOVABLE_SERIES:
            raise ValueError(f"{prefix}: unknown series {name!r}; removable series are {', '.join(REMOVABLE_SERIES)}")
    series = tuple(name for name in REMOVABLE_SERIES if name in names)
    rule = rule.strip()
    if rule.startswith("centre="):
        try:
            centre = int(rule[len("centre="):])
        except ValueError:
            raise ValueError(f"{prefix}: centre must be an integer label as in clinical.csv, got {rule!r}") from None
        spec = MissingSeriesSpec(series, centre=centre, text=text)
        _check_missing_series_centre(spec, n_centres)
        return spec
    try:
        fraction = float(rule)
    except ValueError:
        raise ValueError(f"{prefix}: expected a fraction in (0, 1] or centre=C after ':', got {rule!r}") from None
    if not 0.0 < fraction <= 1.0:   # also refuses nan
        raise ValueError(f"{prefix}: fraction must be in (0, 1], got {rule}")
    return MissingSeriesSpec(series, fraction=fraction, text=text)


def _check_missing_series_centre(spec: MissingSeriesSpec, n_centres: Optional[int]) -> None:
    if spec.centre is None or n_centres is None:
        return
    if not 1 <= spec.centre <= int(n_centres):
        external = f", {int(n_centres)} the external one" if int(n_centres) >= 3 else ""
        raise ValueError(f"--missing-series {spec.text!r}: unknown centre {spec.centre}; "
                         f"this cohort has centres 1..{int(n_centres)}{external}")


def select_missing_series(specs: Sequence[Union[str, MissingSeriesSpec]], n_patients: int, seed: int,
                          n_centres: int) -> Dict[int, Tuple[str, ...]]:
    """Which series each patient lacks under ``specs`` (the union over all specs).

    Fraction specs draw, in the order given, from ``default_rng([seed, MISSING_SERIES_STREAM])``:
    a stream of its own, so the rest of the cohort is the same with or without them.  A
    fraction spec removes its series from exactly ``round(fraction * n_patients)`` patients
    (halves rounded up, so it may be none in a very small cohort); which patients depends on
    the seed and the cohort size.

    Parameters
    ----------
    specs : sequence of str or MissingSeriesSpec
        Specs as given to ``--missing-series`` (strings are parsed) or already parsed.
    n_patients, seed, n_centres : int
        As for :func:`generate_cohort`.

    Returns
    -------
    dict
        0-based patient index -> removed series in :data:`REMOVABLE_SERIES` order, only for
        patients who lack at least one.
    """
    parsed = [parse_missing_series(spec, n_centres) if isinstance(spec, str) else spec for spec in specs]
    for spec in parsed:
        _check_missing_series_centre(spec, n_centres)
    removed: Dict[int, set] = {}
    rng = np.random.default_rng([int(seed), MISSING_SERIES_STREAM])
    for spec in parsed:
        if spec.centre is not None:
            chosen = [i for i in range(int(n_patients)) if assign_centre(i, n_centres) == spec.centre]
        else:
            count = int(np.floor(spec.fraction * int(n_patients) + 0.5))
            chosen = rng.choice(int(n_patients), size=count, replace=False).tolist()
        for index in chosen:
            removed.setdefault(int(index), set()).update(spec.series)
    return {index: tuple(s for s in REMOVABLE_SERIES if s in removed[index]) for index in sorted(removed)}


def _missing_series_frame(removed: Dict[int, Tuple[str, ...]]) -> pd.DataFrame:
    rows = [{"patient_id": patient_id(index), "missing_series": ";".join(series)}
            for index, series in sorted(removed.items())]
    return pd.DataFrame(rows, columns=MISSING_SERIES_COLUMNS)


def missing_series_summary(removed: Dict[int, Tuple[str, ...]], n_patients: int) -> str:
    """One line: how many patients lack a series, and how many lack each.

    E.g. ``missing series: 4 of 10 patients lack at least one series (ADC: 2, Dapp: 3, Kapp: 4)``.
    """
    if not removed:
        return f"missing series: none (all {int(n_patients)} patients have every series)"
    per_series = {s: sum(s in series for series in removed.values()) for s in REMOVABLE_SERIES}
    counts = ", ".join(f"{s}: {n}" for s, n in per_series.items() if n)
    return f"missing series: {len(removed)} of {int(n_patients)} patients lack at least one series ({counts})"


def _clinical_frame(rows: list) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=CLINICAL_COLUMNS)
    # Nullable integers so 0/1 columns with gaps are written as "1" / "" rather than "1.0".
    for column in ("mrf", "emvi"):
        frame[column] = frame[column].astype("Int64")
    frame["age"] = frame["age"].astype("Int64")
    return frame


def _validate_arguments(n_patients: int, shape: Sequence[int], n_centres: int) -> Tuple[int, int, int]:
    if int(n_patients) < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if int(n_patients) > 9999:
        raise ValueError(f"n_patients must be <= 9999 (ids are P0001..P9999), got {n_patients}")
    if int(n_centres) < 1:
        raise ValueError(f"n_centres must be >= 1, got {n_centres}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < m for s, m in zip(shape, MIN_SHAPE)):
        raise ValueError(f"shape must be 3 voxel counts (x, y, z) of at least {MIN_SHAPE}, got {shape}")
    return shape


def generate_cohort(out_dir, n_patients: int, seed: int = 0, shape: Tuple[int, int, int] = DEFAULT_SHAPE,
                    n_centres: int = 3, loss_to_follow_up_rate: float = DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                    admin_censoring_months: Tuple[float, float] = DEFAULT_ADMIN_CENSORING_MONTHS,
                    progress: bool = False, overwrite: bool = False,
                    missing_series: Sequence[Union[str, MissingSeriesSpec]] = ()) -> pd.DataFrame:
    """Write a synthetic LARC cohort folder and return its clinical table.

    Parameters
    ----------
    out_dir : str or Path
        Cohort folder to create.  Written into a temporary sibling folder and renamed into
        place at the end, so it is never half-written.  An existing non-empty folder is
        refused unless ``overwrite``.
    n_patients : int
        Number of patients (ids ``P0001`` ...).
    seed : int
        Same seed, same files (CSV bytes and image arrays).  Patient ``i`` is the same for
        any ``n_patients``.
    shape : (int, int, int)
        T2 voxel counts (x, y, z); default (80, 80, 16) at about 0.7 x 0.7 x 3 mm.
    n_centres : int
        Number of centres; with 3 or more the last one is the external centre (different
        scanner scale and noise, more advanced case mix).
    loss_to_follow_up_rate : float
        Hazard of loss to follow-up per year.
    admin_censoring_months : (float, float)
        Range of follow-up at the end of the study (uniform accrual).
    progress : bool
        Show a tqdm progress bar.
    overwrite : bool
        Replace an existing non-empty ``out_dir``.
    missing_series : sequence of str or MissingSeriesSpec
        Series to leave out for some patients, as real cohorts lack them (see
        :func:`parse_missing_series` and :func:`select_missing_series`).  A removed series is
        simply not written; every other file is byte-identical to the cohort without it.
        ``missing_series.csv`` lists who lacks what (header only when nobody does).

    Returns
    -------
    pandas.DataFrame
        The clinical table as written to ``clinical.csv`` (missing values as <NA>/None).
    """
    shape = _validate_arguments(n_patients, shape, n_centres)
    # Before anything is written, so a bad spec leaves no folder behind.
    removed_series = select_missing_series(missing_series, n_patients, seed, n_centres)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    schema = ClinicalSchema.load()
    missing_from_schema = set(CLINICAL_COLUMNS[2:-2]) ^ set(schema.columns)
    if missing_from_schema:
        raise AssertionError(f"generator columns and {schema.source} disagree on {sorted(missing_from_schema)}")

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        clinical_rows, truth_rows = [], []
        indices = range(int(n_patients))
        if progress:
            from tqdm import tqdm
            indices = tqdm(indices, desc="synthetic LARC patients", unit="patient")
        for index in indices:
            patient = simulate_patient(seed, index, n_centres, shape, loss_to_follow_up_rate,
                                       tuple(admin_censoring_months))
            _check_schema_categories(patient["complete_clinical"], schema, patient_id(index))
            image_dir = staging / "images" / patient_id(index)
            image_dir.mkdir(parents=True)
            # Every series is still rendered (its noise draws come from the patient's stream),
            # only not written: the series that are written stay the same.
            for name, image in patient["images"].items():
                if name not in removed_series.get(index, ()):
                    sitk.WriteImage(image, str(image_dir / f"{name}.nii.gz"), True)
            clinical_rows.append(patient["clinical_row"])
            truth_rows.append(patient["ground_truth_row"])
        clinical_table = _clinical_frame(clinical_rows)
        clinical_table.to_csv(staging / "clinical.csv", index=False)
        pd.DataFrame(truth_rows, columns=GROUND_TRUTH_COLUMNS).to_csv(staging / "ground_truth.csv", index=False)
        _missing_series_frame(removed_series).to_csv(staging / "missing_series.csv", index=False)
        os.chmod(staging, 0o755)   # mkdtemp makes it private; a cohort folder is not
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, retired / out_dir.name)
            os.rename(staging, out_dir)
            shutil.rmtree(retired)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return clinical_table


def sample_outcome_model(n_patients: int, seed: int = 0, n_centres: int = 3,
                         loss_to_follow_up_rate: float = DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                         admin_censoring_months: Tuple[float, float] = DEFAULT_ADMIN_CENSORING_MONTHS) -> pd.DataFrame:
    """The clinical and outcome model alone, without images (fast; for calibration checks).

    Image-borne factors are the patient's target volume and tumour ADC instead of their
    rendered measurements (which follow them closely).  Returns one row per patient with the
    complete clinical values, ``linear_predictor``, each term of it (``term_<name>``),
    ``dfs_months``, ``dfs_event``, ``follow_up_months`` and ``event_time_months``.
    """
    _validate_arguments(n_patients, DEFAULT_SHAPE, n_centres)
    rows = []
    for index in range(int(n_patients)):
        rng = patient_rng(seed, index)
        centre = assign_centre(index, n_centres)
        latents = sample_patient_latents(rng, centre_protocol(centre, n_centres).case_mix_shift)
        terms = linear_predictor_terms(latents["clinical"], latents["target_volume_ml"], latents["tumour_adc"])
        lp = float(sum(terms.values()))
        outcome_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
        outcome = sample_outcome(outcome_rng, lp, loss_to_follow_up_rate, admin_censoring_months)
        rows.append({"patient_id": patient_id(index), "centre": centre, **latents["clinical"],
                     "tumour_volume_ml": latents["target_volume_ml"], "tumour_mean_adc": latents["tumour_adc"],
                     "linear_predictor": lp, **{f"term_{k}": v for k, v in terms.items()}, **outcome})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The command line (``python -m dataset_conversion.synthetic_larc`` or ``multirec_synthetic_cohort``)."""
    console_script = "multirec_synthetic_cohort"
    parser = argparse.ArgumentParser(
        prog=(console_script if Path(sys.argv[0]).name == console_script
              else "python -m dataset_conversion.synthetic_larc"),
        description="Write a synthetic rectal-cancer cohort (T2, ADC, Dapp, Kapp, tumour mask, clinical "
                    "table with disease-free survival) with known ground truth.")
    parser.add_argument("--out", required=True, help="cohort folder to create")
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of everything drawn: images, clinical values, outcomes, centres and "
                             "--missing-series fractions (default %(default)s)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("X", "Y", "Z"),
                        help="T2 voxel counts (default %(default)s)")
    parser.add_argument("--centres", type=int, default=3, help="number of centres; the last is external (default 3)")
    parser.add_argument("--censoring-rate", type=float, default=DEFAULT_LOSS_TO_FOLLOW_UP_RATE,
                        help="loss-to-follow-up hazard per year (default %(default)s)")
    parser.add_argument("--follow-up-months", type=float, nargs=2, default=list(DEFAULT_ADMIN_CENSORING_MONTHS),
                        metavar=("MIN", "MAX"), help="follow-up at study end, uniform (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--missing-series", action="append", default=[], metavar="SPEC",
                        help="remove series from some patients: SERIES[,SERIES...]:FRACTION (a random "
                             "fraction of all patients) or SERIES[,SERIES...]:centre=C (every patient of "
                             "centre C); only ADC, Dapp, Kapp; repeatable, specs combine "
                             "(e.g. Dapp,Kapp:centre=3)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the cohort as the command line says; 0 on success, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # A bad --centres is left to generate_cohort's own message, not reported as an unknown centre.
    try:
        missing_specs = [parse_missing_series(spec, args.centres if args.centres >= 1 else None)
                         for spec in args.missing_series]
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    try:
        table = generate_cohort(args.out, args.patients, seed=args.seed, shape=tuple(args.shape),
                                n_centres=args.centres, loss_to_follow_up_rate=args.censoring_rate,
                                admin_censoring_months=tuple(args.follow_up_months),
                                progress=not args.no_progress, overwrite=args.overwrite,
                                missing_series=missing_specs)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(table)} patients to {Path(args.out).resolve()} in {time.perf_counter() - start:.1f} s "
          f"(events: {int(table['dfs_event'].sum())}, "
          f"centres: {table['centre'].value_counts().sort_index().to_dict()})")
    if missing_specs:
        removed = select_missing_series(missing_specs, args.patients, args.seed, args.centres)
        print(missing_series_summary(removed, args.patients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
