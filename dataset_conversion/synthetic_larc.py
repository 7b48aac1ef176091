"""Synthetic locally advanced rectal cancer (LARC) cohort with known ground truth.

Writes a cohort folder in the hospital-export layout the converter reads (README, "Your cohort")::

    DIR/clinical.csv                     one row per patient (columns of clinical/larc_schema.json)
    DIR/ground_truth.csv                 patient_id, centre, linear_predictor, tumour_volume_ml,
                                         tumour_mean_adc   (for evaluation only, never a feature;
                                         with findings also finding_* and term_* columns)
    DIR/images/<patient_id>/T2.nii.gz    float32, anisotropic (about 0.7 x 0.7 x 3.0 mm)
    DIR/images/<patient_id>/ADC.nii.gz   float32, own grid (about 1.6 x 1.6 x 4.5 mm)
    DIR/images/<patient_id>/Dapp.nii.gz  float32, same grid as ADC
    DIR/images/<patient_id>/Kapp.nii.gz  float32, same grid as ADC
    DIR/images/<patient_id>/mask.nii.gz  uint8 tumour mask {0, 1} on the T2 grid
    DIR/missing_series.csv               patient_id, missing_series (e.g. "Dapp;Kapp"): the series
                                         left out by --missing-series (header only when none)
    DIR/schema.json                      only with --no-radiologist-columns: the clinical schema
                                         without mrf and emvi

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

Image findings
--------------
By default the image-borne risk is exactly log tumour volume + tumour mean ADC, which the
hand-made tumour quantities (soft volume and the mean of T2 / ADC / Dapp / Kapp inside the tumour
mask) compute; nothing else in the images carries prognosis.  ``--findings LIST`` (comma list of
:data:`FINDINGS`, or ``all``) draws findings into the images whose prognosis those quantities
cannot see, and ``--image-risk LIST`` (comma list of :data:`IMAGE_RISK_TERMS`, or ``none``; default
``volume,adc``) says which image terms enter the hazard.  A finding named in ``--image-risk`` must be
drawn (else exit 2); ``--findings`` alone draws them without risk (the images show them, the
hazard ignores them).

Each finding has its own standardised amplitude (population mean 0, SD 1), the covariate of its
term ``FINDING_COEFFICIENTS[name] x amplitude``:

``heterogeneity`` (0.40)
    Necrotic / mucinous foci inside the tumour: where a smooth random field is high (about a
    quarter of the tumour), T2 brighter (+80 % x contrast), ADC and Dapp higher (+60 %), Kapp lower
    (-40 %); the contrast grows with the amplitude (0.05 .. 0.8).  The foci pattern is re-centred on
    the T2-grid tumour voxels, so each series' tumour mean (of the noise-free field over the mask,
    as ``tumour_mean_adc`` is measured) is unchanged; the mask is unchanged.
``margin`` (0.30)
    An irregular, spiculated border: a higher-frequency shape field (wavelength 3-7 mm) added to
    the tumour's implicit function, amplitude 0.02 .. 0.32.  The threshold search keeps the mask
    volume at the target.
``extension`` (0.35)
    Extramural extension: a tapered finger of tumour from the body outwards through the wall
    and the mesorectal fat; its tip lies 4.5 mm .. -1 mm (through the fascia) from the mesorectal
    fascia as the amplitude rises.  Part of the tumour label; the threshold keeps the volume.
``emvi`` (0.35)
    Extramural venous invasion: in 40 % of patients a vessel-like tube of intermediate T2 and
    tumour-like (low) ADC leaves the tumour into the mesorectum and runs craniocaudally, 4-20 mm
    and thicker as the score rises; outside the tumour label (the mask is unchanged).  The
    amplitude is the standardised score (0 when absent, else growing with the vessel's length).
``nodes`` (0.40)
    Mesorectal lymph nodes outside the tumour label, away from the tumour: two small homogeneous
    benign-looking nodes in every patient, and up to four suspicious ones whose number, size,
    border irregularity and tumour-like heterogeneous signal grow with the node score.
``kurtosis`` (0.30)
    Kapp of the tumour gets a component of its own (+0.10 per unit), so it is no longer a
    near-function of ADC.  Unlike the others it IS visible to the Kapp tumour mean, so it is not
    part of a "findings beyond the quantities" cohort (use the other five for that).

The five findings beyond the quantities give an image term of SD 0.81 (log hazard) together.

Independence: the amplitudes come from each patient's own findings stream
(``SeedSequence(seed, spawn_key=(index, 2))``, :func:`finding_amplitudes`), never from the disease
burden, so they are independent of the burden, the clinical variables, the target volume and the
tumour ADC / Dapp / Kapp by construction; the look of each finding (positions, fields) comes from
further streams ``(index, 2, k)``.  Rendering keeps the mask volume (threshold search) and, for
heterogeneity, every tumour mean exactly; margin and extension change which voxels are tumour at
the same volume, so a tumour mean moves only by the sampling of the (risk-free) texture, unrelated
to the amplitude.  When extension, emvi or nodes is drawn the tumour body is confined to the inner
40 % of the mesorectum (a wall-hugging ellipsoid of the same volume; otherwise most tumours of this
anatomy cross the fascia and would hide the mesorectal findings); the largest tumours (about 5 %)
then fall short of their target volume, whatever their findings.  What the hand-made quantities
can and cannot see: volume and the noise-free tumour means carry none of the five findings; the
means of the DWI maps resampled onto the mask do pick up some of the margin through partial volume
at the border (an irregular border has more border voxels: correlation about -0.25 with the Kapp
mean, +0.15 with the ADC mean, 200 patients at the default shape), as on real scans, and so may a
long extension finger (a few mm across against 1.6 x 1.6 x 4.5 mm DWI voxels: fat lowers the
mask-mean ADC and Kapp as it grows); where the threshold search hits its bound (about 5 % of the
largest tumours) the mask volume also grows a little with the margin and the extension. Kurtosis is
read by the Kapp mean by design. ``evaluation/null_check.py`` measures what all of this leaves the
quantities on a given cohort.

A tumour quantity left out of ``--image-risk`` (``volume``, ``adc``) is also redrawn independently of
the disease burden (:func:`decouple_quantities`): otherwise it would still rank patients through the
burden it shares with the clinical terms of the hazard, and a cohort whose image risk lies only in
the findings would not be one.

With extension / emvi drawn, clinical ``mrf`` is read off the images (a tumour voxel within 1 mm,
at real size, of the fascia: in practice the extension's tip) and ``emvi`` off the drawn vessel,
replacing their latent draws, so table and images agree; their own hazard terms are then 0 (their
prognosis is the finding's term, so the permutation control leaves none in table or images).
``--no-radiologist-columns`` leaves ``mrf`` and ``emvi`` out of clinical.csv and writes
``schema.json`` (clinical/larc_schema.json without them) for ``convert_larc --schema DIR/schema.json``.

``--permute-findings`` (the permutation control): the images show each patient's own findings,
but the hazard uses the finding amplitudes of another patient (a random cyclic permutation of the
cohort from its own stream, :func:`finding_permutation`), so the images carry no finding risk.

With any of these options ``ground_truth.csv`` gains ``finding_<name>`` (the amplitude each drawn
finding has in the images), ``term_<name>`` for volume, adc and every finding (its contribution to
the linear predictor, 0 where not in ``--image-risk``) and, with ``--permute-findings``,
``findings_hazard_from`` (whose amplitudes the hazard used); ``oracle.py --terms image / quantities
/ findings`` reads them.  Without them every file is byte-identical to a cohort drawn before the
findings existed (the findings streams are never drawn from, the patient's stream is used as
before).

Command line::

    python -m dataset_conversion.synthetic_larc --out DIR --patients N --seed S \
        [--shape X Y Z] [--centres 3] [--censoring-rate R] [--follow-up-months MIN MAX] [--overwrite] \
        [--missing-series SERIES[,SERIES...]:FRACTION|centre=C ...] \
        [--findings LIST|all] [--image-risk LIST|none] [--permute-findings] [--no-radiologist-columns]
        [--dicom-out DIR]   (also the cohort as DICOM: dataset_conversion.synthetic_dicom)

or the same flags after the console script ``multirec_synthetic_cohort``; bad input exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
from nnunet_multitask.publish import publish_folder

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
TISSUES = ("fat", "muscle", "fascia", "wall", "lumen", "tumour", "node", "vessel")   # the last two: findings
TISSUE_T2 = {"fat": 800.0, "muscle": 230.0, "fascia": 180.0, "wall": 330.0, "lumen": 950.0}
TISSUE_ADC = {"fat": 550.0, "muscle": 1400.0, "fascia": 1300.0, "wall": 1600.0, "lumen": 2300.0}
TISSUE_DAPP = {"fat": 750.0, "muscle": 1750.0, "fascia": 1600.0, "wall": 2000.0, "lumen": 2700.0}
TISSUE_KAPP = {"fat": 0.50, "muscle": 0.70, "fascia": 0.72, "wall": 0.62, "lumen": 0.30}
TUMOUR_T2 = 560.0   # intermediate: between muscle-dark and fat-bright
TUMOUR_THRESHOLD_BOUND = 0.35   # |threshold| of the implicit tumour function, keeps it ellipsoid-like

# Image findings (module docstring, "Image findings").
FINDINGS = ("heterogeneity", "margin", "extension", "emvi", "nodes", "kurtosis")
IMAGE_RISK_TERMS = ("volume", "adc") + FINDINGS
DEFAULT_IMAGE_RISK = ("volume", "adc")
#: Log hazard ratio per unit of each finding's standardised amplitude (population mean 0, SD 1;
#: drawn independently of each other), when the finding is named in ``image_risk``.  The five
#: findings beyond the hand-made quantities (all but kurtosis) give an image term of SD
#: sqrt(0.40^2 + 0.30^2 + 0.35^2 + 0.35^2 + 0.40^2) = 0.81.
FINDING_COEFFICIENTS: Dict[str, float] = {
    "heterogeneity": 0.40, "margin": 0.30, "extension": 0.35, "emvi": 0.35, "nodes": 0.40, "kurtosis": 0.30}
#: Second spawn-key word of a patient's findings stream (0: images, 1: outcome and blanking).
FINDINGS_STREAM = 2
#: Second seed word of the ``--permute-findings`` stream.
PERMUTATION_STREAM = 0x5045524D   # "PERM"
#: Clinical columns that a radiologist reads off the images (``--no-radiologist-columns`` drops them).
RADIOLOGIST_COLUMNS = ("mrf", "emvi")
MRF_DISTANCE_MM = 1.0            # MRF involved: tumour within this distance of the fascia
EXTENSION_TIP_RANGE_MM = 5.5     # tip-to-fascia distance runs from 4.5 mm down to -1 mm (through it)
#: EMVI present in 40 %; its score is max(0, U - 0.6) / 0.4 with U uniform (0 with probability 0.6,
#: else uniform on (0, 1)), standardised with these exact population moments.
EMVI_PREVALENCE = 0.4
EMVI_SCORE_MEAN = EMVI_PREVALENCE / 2.0
EMVI_SCORE_SD = math.sqrt(EMVI_PREVALENCE / 3.0 - EMVI_SCORE_MEAN ** 2)
KURTOSIS_SHIFT = 0.10            # Kapp per unit of the kurtosis amplitude
NODE_IRREGULARITY = 0.2          # border irregularity of a node per unit of its malignancy
#: Relative signal change in a necrotic / mucinous focus (bright T2, free diffusion, low kurtosis).
HETEROGENEITY_CONTRAST = {"T2": 0.8, "ADC": 0.6, "Dapp": 0.6, "Kapp": -0.4}
#: Lymph-node signal: (benign, malignant-looking, relative spread of the malignant texture).
NODE_SIGNAL = {"T2": (420.0, 560.0, 0.30), "ADC": (1150.0, 950.0, 0.20), "Dapp": (1500.0, 1300.0, 0.20),
               "Kapp": (0.72, 0.95, 0.12)}


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


#: Third seed word of the stream that redraws a tumour quantity carrying no risk (below).
QUANTITY_STREAM = 3


def decouple_quantities(latents: dict, seed: int, patient_index: int, image_risk: Sequence[str]) -> dict:
    """Redraw the tumour volume (if ``"volume"`` is not in ``image_risk``) and the tumour ADC, with the
    Dapp and Kapp that follow it (if ``"adc"`` is not), independently of the disease burden.

    In today's cohort volume and ADC share part of their variation with the burden, which also drives
    the clinical variables of the hazard; a quantity that carries no risk of its own would still rank
    patients through that shared part (a Cox model on volume and the tumour means reached C about 0.58
    on a cohort whose image risk lay only in the findings). Redrawn from a stream of their own
    (``SeedSequence(seed, spawn_key=(index, QUANTITY_STREAM))``), with the same marginal distribution
    as the burden-linked draw at a case mix of 0, they are independent of everything in the hazard, so
    a cohort whose image risk lies only in the findings gives the hand-made quantities nothing to find.
    The clinical variables keep their draws (cT still follows the burden-linked volume it was drawn
    with, which the images no longer show).
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(patient_index), QUANTITY_STREAM)))
    volume_std, adc_std, dapp_ratio, kapp_noise = rng.normal(), rng.normal(), rng.uniform(1.28, 1.42), \
        rng.normal(0.0, 0.04)
    out = dict(latents)
    if "volume" not in image_risk:
        out["target_volume_ml"] = float(np.exp(np.log(VOLUME_MEDIAN_ML) + VOLUME_LOG_SD * volume_std))
    if "adc" not in image_risk:
        adc = float(np.clip(ADC_POPULATION_MEAN + ADC_POPULATION_SD * adc_std, 600.0, 1450.0))
        out["tumour_adc"] = adc
        out["tumour_dapp"] = float(adc * dapp_ratio)
        out["tumour_kapp"] = float(np.clip(1.0 - 0.0005 * (adc - 1000.0) + kapp_noise, 0.8, 1.3))
    return out


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


# --------------------------------------------------------------------------- image findings
def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(float(x) / math.sqrt(2.0)))


def _wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angle difference wrapped into [-pi, pi)."""
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def finding_amplitudes(seed: int, patient_index: int) -> Dict[str, float]:
    """The standardised finding amplitudes of a patient (population mean 0, SD 1 each).

    Drawn from the patient's findings stream ``SeedSequence(seed, spawn_key=(index, 2))``
    alone: independent of the disease burden, the tumour volume and every tumour mean by
    construction, the same whichever findings a cohort draws, and computable without
    rendering the patient.  Each is the covariate of its term (``term = coefficient x
    amplitude``), and ``ground_truth.csv`` reports it as ``finding_<name>``.
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(patient_index), FINDINGS_STREAM)))
    z = rng.standard_normal(len(FINDINGS))
    amplitudes = dict(zip(FINDINGS, (float(v) for v in z)))
    # EMVI: present in 40 % (z above the 60th centile); its score (0 when absent, then the
    # visible length) is the covariate, standardised with its exact population mean and SD.
    amplitudes["emvi"] = (_emvi_score(amplitudes["emvi"]) - EMVI_SCORE_MEAN) / EMVI_SCORE_SD
    return amplitudes


def _emvi_score(z: float) -> float:
    """0 (no EMVI) or (0, 1] (present; visible vessel length grows with it)."""
    return max(0.0, _normal_cdf(z) - (1.0 - EMVI_PREVALENCE)) / EMVI_PREVALENCE


def finding_permutation(n_patients: int, seed: int) -> np.ndarray:
    """The ``--permute-findings`` map: patient ``i``'s hazard uses the findings of ``perm[i]``.

    A random cyclic permutation (Sattolo's algorithm: no patient keeps its own findings) from
    its own stream ``default_rng([seed, PERMUTATION_STREAM])``.  Unlike a patient's own draws it
    depends on the cohort size.
    """
    perm = np.arange(int(n_patients))
    rng = np.random.default_rng([int(seed), PERMUTATION_STREAM])
    for i in range(int(n_patients) - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def finding_rng(seed: int, patient_index: int, finding: str) -> np.random.Generator:
    """The stream that draws how ``finding`` looks in the patient (positions, fields)."""
    return np.random.default_rng(np.random.SeedSequence(
        int(seed), spawn_key=(int(patient_index), FINDINGS_STREAM, 1 + FINDINGS.index(finding))))


def mrf_from_extension(amplitude: float) -> int:
    """MRF as the extension is designed: its tip within 1 mm (at real size) of the fascia.

    Used where nothing is rendered (``render=False``); a rendered patient's MRF is read off its
    mask (:func:`_mrf_read`), which agrees with this in about 95 % of patients.
    """
    return int(_extension_tip_to_fascia_mm(amplitude) <= MRF_DISTANCE_MM)


def _extension_tip_to_fascia_mm(amplitude: float) -> float:
    """Designed distance (real-size mm) from the extension's tip to the mesorectal fascia; <= 0 crosses it."""
    return EXTENSION_TIP_RANGE_MM * (1.0 - _normal_cdf(amplitude)) - 1.0


def emvi_from_vessel(amplitude: float) -> int:
    """EMVI as the drawn vessel shows it: present or not."""
    return int(_emvi_score_from_amplitude(amplitude) > 0.0)


@dataclass
class FindingAnatomy(PatientAnatomy):
    """:class:`PatientAnatomy` with image findings drawn into it (see the module docstring).

    Built by :func:`_add_findings`; :meth:`finalise` completes it once the tumour threshold is
    known (the heterogeneity is re-centred on the T2-grid mask, the nodes are placed outside
    the tumour).  The plain class stays as it was, so a cohort without findings is unchanged.
    """

    drawn: Tuple[str, ...] = ()
    confine_radius: Optional[float] = None      # body level is -inf beyond this axis distance
    body_radius: float = 0.0                    # axis distance of the confined body's centre
    margin_field: Optional[SmoothField] = None
    margin_amplitude: float = 0.0
    tongue: Optional[dict] = None
    blob_field: Optional[SmoothField] = None
    heterogeneity: float = 0.0                  # relative contrast of the necrotic/mucinous foci
    blob_offset: float = 0.0                    # mean blob weight over the T2-grid mask
    vessel: Optional[dict] = None
    nodes: Tuple[dict, ...] = ()
    node_field: Optional[SmoothField] = None
    node_score: float = 0.0                     # 0..1, from the nodes amplitude
    node_rng: Optional[np.random.Generator] = None   # places the nodes in finalise

    # ------------------------------------------------------------------ tumour shape
    def _body_coordinates(self, points: np.ndarray):
        if self.confine_radius is None:
            offset = points - self.tumour_centre
            cos_a, sin_a = np.cos(self.tumour_angle), np.sin(self.tumour_angle)
            radial = offset[..., 0] * cos_a + offset[..., 1] * sin_a
            tangential = -offset[..., 0] * sin_a + offset[..., 1] * cos_a
            return radial, tangential, offset[..., 2]
        # Confined body: an ellipsoid in wall-following coordinates (radial distance from the
        # rectal axis, arc length along the wall, craniocaudal), so it hugs the rectum.
        axis_x, axis_y = self.rectal_axis(points[..., 2])
        dx, dy = points[..., 0] - axis_x, points[..., 1] - axis_y
        radial = np.hypot(dx, dy) - self.body_radius
        tangential = _wrap_angle(np.arctan2(dy, dx) - self.tumour_angle) * self.body_radius
        return radial, tangential, points[..., 2] - self.tumour_centre[2]

    def tumour_level(self, points: np.ndarray) -> np.ndarray:
        radial, tangential, craniocaudal = self._body_coordinates(points)
        rho = np.sqrt((radial / self.tumour_semi_axes[0]) ** 2 + (tangential / self.tumour_semi_axes[1]) ** 2
                      + (craniocaudal / self.tumour_semi_axes[2]) ** 2)
        reach = 1.0 + TUMOUR_THRESHOLD_BOUND + self.tumour_shape_amplitude * self.tumour_shape_field.max_abs
        if self.margin_field is not None:
            reach += self.margin_amplitude * self.margin_field.max_abs
        candidates = rho < reach
        near = points[candidates]
        level_near = 1.0 - rho[candidates] + self.tumour_shape_amplitude * self.tumour_shape_field(near)
        if self.margin_field is not None:
            level_near += self.margin_amplitude * self.margin_field(near)
        axis_x, axis_y = self.rectal_axis(near[:, 2])
        radius = np.hypot(near[:, 0] - axis_x, near[:, 1] - axis_y)
        level_near[radius < 0.45 * self.lumen_radius] = -np.inf
        if self.confine_radius is not None:
            level_near[radius > self.confine_radius] = -np.inf
        level = np.full(rho.shape, -np.inf)
        level[candidates] = level_near
        if self.tongue is not None:
            level = np.maximum(level, self._tongue_level(points))
        return level

    def _tongue_level(self, points: np.ndarray) -> np.ndarray:
        """Extramural extension: a tapered finger from the body centre out to ``r_tip``."""
        t = self.tongue
        axis_x, axis_y = self.rectal_axis(points[..., 2])
        dx, dy = points[..., 0] - axis_x, points[..., 1] - axis_y
        radius = np.hypot(dx, dy)
        dphi = _wrap_angle(np.arctan2(dy, dx) - t["angle"])
        along = radius * np.cos(dphi)
        across = radius * np.abs(np.sin(dphi))
        taper = np.clip((along - t["r_start"]) / (t["r_tip"] - t["r_start"]), 0.0, 1.0)
        width = t["width"] * (1.0 - 0.35 * taper)
        outside = np.maximum(along - t["r_tip"], 0.0) + np.maximum(t["r_start"] - along, 0.0)
        # A blunt tip: the finger ends within a few tenths of a millimetre of ``r_tip``.
        distance = np.sqrt((across / width) ** 2 + (outside / (0.3 * width)) ** 2
                           + ((points[..., 2] - t["z"]) / t["depth"]) ** 2)
        level = 1.0 - distance
        level[np.abs(dphi) > 0.5 * np.pi] = -np.inf
        return level

    # ------------------------------------------------------------------ after the threshold
    def finalise(self, t2_points: np.ndarray, mask: np.ndarray, fov_centre: np.ndarray, fov_size: np.ndarray,
                 spacing: np.ndarray) -> None:
        """Re-centre the heterogeneity on the T2-grid mask and place the nodes outside the tumour."""
        if self.blob_field is not None:
            self.blob_offset = float(self._blob_weight(t2_points[mask]).mean())
        if self.node_rng is not None:
            self.nodes = tuple(self._place_nodes(self.node_rng, fov_centre, fov_size, spacing))

    def _blob_weight(self, points: np.ndarray) -> np.ndarray:
        """0..1: necrotic / mucinous foci where the blob field is high (about a quarter of the tumour)."""
        return np.clip((self.blob_field(points) - 0.6) / 0.8, 0.0, 1.0)

    def _place_nodes(self, rng: np.random.Generator, fov_centre, fov_size, spacing) -> list:
        score = self.node_score
        scale = anatomy_scale(fov_size)
        malignancies = [0.1 * rng.random() for _ in range(2)]
        malignancies += [float(np.clip(0.35 + 0.65 * score + rng.normal(0.0, 0.08), 0.0, 1.0))
                         for _ in range(int(4.5 * score))]
        wall_outer = self.lumen_radius + self.wall_thickness
        gap = self.mesorectum_radius - wall_outer
        nodes = []
        for malignancy in malignancies:
            radius = max(scale * (1.2 + 2.6 * malignancy), 0.75 * spacing[0])
            depth = max(radius, 0.6 * spacing[2])
            for _attempt in range(20):   # a position clear of the tumour (the last try is kept)
                angle = self.tumour_angle + np.pi + rng.uniform(-0.45, 0.45) * np.pi
                room = max(gap - 2.0 * radius, 0.0)
                r = wall_outer + min(radius, 0.5 * gap) + rng.uniform(0.0, 1.0) * room
                z = fov_centre[2] + rng.uniform(-0.38, 0.38) * fov_size[2]
                axis_x, axis_y = self.rectal_axis(np.array([z]))
                centre = np.array([axis_x[0] + r * np.cos(angle), axis_y[0] + r * np.sin(angle), z])
                probe = centre + np.array([[0, 0, 0], [radius, 0, 0], [-radius, 0, 0], [0, radius, 0],
                                           [0, -radius, 0], [0, 0, depth], [0, 0, -depth]], dtype=float)
                if (self.tumour_level(probe) <= self.tumour_threshold - 0.05).all():
                    break
            nodes.append({"centre": centre, "radius": radius, "depth": depth, "malignancy": malignancy})
        return nodes

    # ------------------------------------------------------------------ tissues and signal
    def _node_index(self, points: np.ndarray) -> np.ndarray:
        index = np.full(points.shape[:-1], -1, dtype=np.int64)
        for j, node in enumerate(self.nodes):
            offset = points - node["centre"]
            reach = 1.0 + NODE_IRREGULARITY * node["malignancy"] * self.node_field.max_abs
            box = ((np.abs(offset[..., 0]) < reach * node["radius"]) & (np.abs(offset[..., 1]) < reach * node["radius"])
                   & (np.abs(offset[..., 2]) < reach * node["depth"]))
            near = points[box]
            o = offset[box]
            rho = np.sqrt((o[:, 0] ** 2 + o[:, 1] ** 2) / node["radius"] ** 2 + (o[:, 2] / node["depth"]) ** 2)
            inside = 1.0 - rho + NODE_IRREGULARITY * node["malignancy"] * self.node_field(near) > 0.0
            hit = np.zeros(points.shape[:-1], dtype=bool)
            hit[box] = inside
            index[hit] = j
        return index

    def _vessel_hit(self, points: np.ndarray) -> np.ndarray:
        v = self.vessel
        hit = np.zeros(points.shape[:-1], dtype=bool)
        for start, end in ((v["start"], v["bend"]), (v["bend"], v["end"])):
            segment = end - start
            t = np.clip(((points - start) * segment).sum(axis=-1) / float((segment ** 2).sum()), 0.0, 1.0)
            offset = points - (start + t[..., None] * segment)
            hit |= ((offset[..., 0] ** 2 + offset[..., 1] ** 2) / v["radius"] ** 2
                    + offset[..., 2] ** 2 / v["depth"] ** 2 < 1.0)
        return hit

    def tissue_labels(self, points: np.ndarray) -> np.ndarray:
        return self._labels(points)[0]

    def _labels(self, points: np.ndarray):
        labels = PatientAnatomy.tissue_labels(self, points)
        tumour = TISSUES.index("tumour")
        node_index = self._node_index(points) if self.nodes else np.full(points.shape[:-1], -1)
        node_index[labels != TISSUES.index("fat")] = -1      # nodes lie in the mesorectal fat
        labels[node_index >= 0] = TISSUES.index("node")
        if self.vessel is not None:
            # Leaves the tumour through the wall into the mesorectum; never inside the tumour label.
            vessel = self._vessel_hit(points) & (labels != tumour) & (labels != TISSUES.index("lumen"))
            labels[vessel] = TISSUES.index("vessel")
            node_index[vessel] = -1
        return labels, node_index

    def property_maps(self, points: np.ndarray) -> Dict[str, np.ndarray]:
        labels, node_index = self._labels(points)
        is_tumour = labels == TISSUES.index("tumour")
        tumour_points = points[is_tumour]
        texture = self.tumour_texture(tumour_points)
        blob = self._blob_weight(tumour_points) - self.blob_offset if self.blob_field is not None else None
        is_node = node_index >= 0
        node_points = points[is_node]
        malignancy = np.array([n["malignancy"] for n in self.nodes] + [0.0])[node_index[is_node]]
        node_texture = self.node_field(node_points) if self.nodes else np.zeros(0)
        maps = {}
        vessel_values = {"T2": 0.9 * TUMOUR_T2, "ADC": 0.95 * self.tumour_adc, "Dapp": 0.95 * self.tumour_dapp,
                         "Kapp": self.tumour_kapp}
        for series, table, tumour_value, texture_sd in (
                ("T2", TISSUE_T2, TUMOUR_T2, 0.10), ("ADC", TISSUE_ADC, self.tumour_adc, 0.08),
                ("Dapp", TISSUE_DAPP, self.tumour_dapp, 0.08), ("Kapp", TISSUE_KAPP, self.tumour_kapp, 0.05)):
            lookup = np.array([table.get(t, 0.0) for t in TISSUES])
            lookup[TISSUES.index("vessel")] = vessel_values[series]
            values = lookup[labels]
            relative = 1.0 + texture_sd * texture
            if blob is not None:
                relative = relative + self.heterogeneity * HETEROGENEITY_CONTRAST[series] * blob
            values[is_tumour] = tumour_value * relative
            benign, malignant, spread = NODE_SIGNAL[series]
            values[is_node] = ((1.0 - malignancy) * benign
                               + malignancy * malignant * (1.0 + spread * malignancy * node_texture))
            maps[series] = values
        maps["labels"] = labels
        return maps


def _confine_body(anatomy: PatientAnatomy, fov_size: np.ndarray, voxel_spacing: np.ndarray) -> dict:
    """Wall-hugging tumour body that stays in the inner 40 % of the mesorectum, same volume.

    Without findings most tumours of the default anatomy cross the mesorectal fascia; the
    mesorectal findings (extension depth, vessel, nodes) need room to be seen in.
    """
    wall_outer = anatomy.lumen_radius + anatomy.wall_thickness
    limit = wall_outer + 0.4 * (anatomy.mesorectum_radius - wall_outer)
    inner = 0.45 * anatomy.lumen_radius
    radial, tangential, craniocaudal = anatomy.tumour_semi_axes
    new_radial = min(radial, 0.5 * (limit - inner))
    centre = min(anatomy.lumen_radius + 0.5 * anatomy.wall_thickness + 0.25 * new_radial, limit - new_radial)
    stretch = np.sqrt(radial / new_radial)
    semi_axes = np.array([new_radial, min(tangential * stretch, 0.9 * np.pi * centre),
                          min(craniocaudal * stretch, 0.40 * fov_size[2])])
    semi_axes = np.maximum(semi_axes, np.maximum(1.5 * anatomy_scale(fov_size), 0.6 * voxel_spacing))
    return {"confine_radius": limit, "body_radius": centre, "tumour_semi_axes": semi_axes}


def _add_findings(anatomy: PatientAnatomy, plan: "FindingPlan", fov_size: np.ndarray,
                  voxel_spacing: np.ndarray) -> FindingAnatomy:
    """The patient's anatomy with ``plan``'s findings drawn in (no draw from the patient's stream)."""
    scale = anatomy_scale(fov_size)
    fields = {f.name: getattr(anatomy, f.name) for f in dataclasses.fields(PatientAnatomy)}
    extra: dict = {"drawn": plan.findings}
    amp = plan.amplitudes
    if {"extension", "emvi", "nodes"} & set(plan.findings):
        extra.update(_confine_body(anatomy, fov_size, voxel_spacing))
    if "kurtosis" in plan.findings:
        fields["tumour_kapp"] = max(0.3, anatomy.tumour_kapp + KURTOSIS_SHIFT * amp["kurtosis"])
    if "heterogeneity" in plan.findings:
        rng = finding_rng(plan.seed, plan.index, "heterogeneity")
        extra["blob_field"] = SmoothField(rng, (6.0 * scale, 14.0 * scale))
        extra["heterogeneity"] = 0.05 + 0.75 * _normal_cdf(amp["heterogeneity"])
    if "margin" in plan.findings:
        rng = finding_rng(plan.seed, plan.index, "margin")
        extra["margin_field"] = SmoothField(rng, (3.0 * scale, 7.0 * scale), n_waves=12)
        extra["margin_amplitude"] = 0.02 + 0.30 * _normal_cdf(amp["margin"])
    wall_outer = anatomy.lumen_radius + anatomy.wall_thickness
    gap = anatomy.mesorectum_radius - wall_outer
    body_radius = extra.get("body_radius", float(np.hypot(*(anatomy.tumour_centre[:2] - anatomy.rectum_centre))))
    semi_axes = extra.get("tumour_semi_axes", anatomy.tumour_semi_axes)
    spread_angle = min(1.0, semi_axes[1] / body_radius)
    if "extension" in plan.findings:
        rng = finding_rng(plan.seed, plan.index, "extension")
        tip = anatomy.mesorectum_radius - scale * _extension_tip_to_fascia_mm(amp["extension"])
        extra["tongue"] = {"angle": anatomy.tumour_angle + rng.uniform(-0.3, 0.3) * spread_angle,
                           "z": anatomy.tumour_centre[2] + rng.uniform(-0.3, 0.3) * semi_axes[2],
                           "r_start": body_radius, "r_tip": max(tip, body_radius + 1.0),
                           "width": max(1.8 * scale, 1.1 * voxel_spacing[0]),
                           "depth": max(2.5 * scale, 0.6 * voxel_spacing[2])}
    if "emvi" in plan.findings and emvi_from_vessel(amp["emvi"]):
        rng = finding_rng(plan.seed, plan.index, "emvi")
        score = _emvi_score_from_amplitude(amp["emvi"])
        angle = anatomy.tumour_angle + rng.uniform(-0.25, 0.25) * spread_angle
        z0 = anatomy.tumour_centre[2] + rng.uniform(-0.25, 0.25) * semi_axes[2]
        axis_x, axis_y = anatomy.rectal_axis(np.array([z0]))
        direction = np.array([np.cos(angle), np.sin(angle), 0.0])
        axis_point = np.array([axis_x[0], axis_y[0], z0])
        bend_radius = wall_outer + rng.uniform(0.55, 0.8) * gap
        # Runs craniocaudally along the mesorectum, drifting outwards and sideways.
        length = scale * (4.0 + 16.0 * score)
        sideways = np.array([-direction[1], direction[0], 0.0]) * rng.uniform(-0.3, 0.3) * length
        run = (0.15 * gap * direction + sideways
               + np.array([0.0, 0.0, length * (1.0 if rng.random() < 0.5 else -1.0)]))
        extra["vessel"] = {"start": axis_point + body_radius * direction,
                           "bend": axis_point + bend_radius * direction,
                           "end": axis_point + bend_radius * direction + run,
                           "radius": max(scale * (0.8 + 0.8 * score), 0.75 * voxel_spacing[0]),
                           "depth": max(scale * (0.8 + 0.8 * score), 0.55 * voxel_spacing[2])}
    if "nodes" in plan.findings:
        rng = finding_rng(plan.seed, plan.index, "nodes")
        extra["node_field"] = SmoothField(rng, (3.0 * scale, 6.0 * scale))
        extra["node_score"] = _normal_cdf(amp["nodes"])
        extra["node_rng"] = rng
    fields.update(extra)
    return FindingAnatomy(**fields)


def _emvi_score_from_amplitude(amplitude: float) -> float:
    """Inverse of the standardisation in :func:`finding_amplitudes` (absent: exactly 0)."""
    score = amplitude * EMVI_SCORE_SD + EMVI_SCORE_MEAN
    return score if score > 1e-9 else 0.0


@dataclass(frozen=True)
class FindingPlan:
    """Which findings a patient's images show, and its own amplitudes (what the images show)."""

    seed: int
    index: int
    findings: Tuple[str, ...]
    amplitudes: Dict[str, float]


def render_patient(rng: np.random.Generator, latents: dict, protocol: CentreProtocol,
                   shape_xyz: Tuple[int, int, int], findings: Optional[FindingPlan] = None) -> dict:
    """Render T2, ADC, Dapp, Kapp and the mask of one patient.

    ``findings`` draws image findings in (their own streams; ``rng`` is used exactly as without).

    Returns
    -------
    dict
        ``images`` (name -> SimpleITK image: T2, ADC, Dapp, Kapp, mask), ``tumour_volume_ml``
        (mask voxels x T2 voxel volume), ``equivalent_volume_ml`` (the same at real-world size,
        see :func:`anatomy_scale`; equal at the default shape), ``tumour_mean_adc`` (mean of
        the noise-free ADC field at the mask voxel centres: what the ADC map shows there, noise
        aside), ``tissue_labels`` (index into :data:`TISSUES` at each T2 voxel, array z, y, x) and
        ``mrf_read`` (with findings: 1 where the tumour mask reaches within 1 mm (real size) of the
        mesorectal fascia, else 0; None without findings) and ``tumour_means`` (series -> mean of its
        noise-free field at the mask voxels; T2 before the centre's scale and bias).
    """
    t2_spacing = np.array(protocol.t2_spacing)
    shape = np.array(shape_xyz)
    # Scanner coordinates: field of view roughly centred on the isocentre, with table offset.
    fov_size = shape * t2_spacing
    t2_origin = -0.5 * (shape - 1) * t2_spacing + rng.uniform(-10.0, 10.0, size=3)
    fov_centre = t2_origin + 0.5 * (shape - 1) * t2_spacing
    anatomy = _build_anatomy(rng, latents, fov_centre, fov_size, t2_spacing)
    if findings is not None:
        anatomy = _add_findings(anatomy, findings, fov_size, t2_spacing)

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

    mrf_read = None
    if findings is not None:
        tumour_voxels = anatomy.tumour_level(t2_points) > anatomy.tumour_threshold
        anatomy.finalise(t2_points, tumour_voxels, fov_centre, fov_size, t2_spacing)
        mrf_read = _mrf_read(anatomy, t2_points[tumour_voxels], scale)
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
            "equivalent_volume_ml": tumour_volume_ml / scale ** 3, "tissue_labels": t2_maps["labels"],
            "mrf_read": mrf_read, "tumour_means": {s: float(t2_maps[s][mask.astype(bool)].mean()) for s in SERIES}}


def _mrf_read(anatomy: PatientAnatomy, tumour_points: np.ndarray, scale: float) -> int:
    """1 where a tumour voxel lies within 1 mm (real size) of the mesorectal fascia or beyond it."""
    if not len(tumour_points):
        return 0
    axis_x, axis_y = anatomy.rectal_axis(tumour_points[:, 2])
    radius = np.hypot(tumour_points[:, 0] - axis_x, tumour_points[:, 1] - axis_y)
    return int(radius.max() >= anatomy.mesorectum_radius - MRF_DISTANCE_MM * scale)


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
                     render: bool = True, findings: Sequence[str] = (), image_risk: Optional[Sequence[str]] = None,
                     hazard_index: Optional[int] = None) -> dict:
    """Everything about one patient: clinical row, ground-truth row and (optionally) images.

    With ``render=False`` no images are made and the image-borne factors are the target
    volume and patient-level ADC (the outcome model alone, for fast statistical checks).
    ``findings``, ``image_risk``: as for :func:`generate_cohort`.  ``hazard_index``: the
    patient whose finding amplitudes the hazard uses (``--permute-findings``); default its own.

    Returns
    -------
    dict
        ``clinical_row`` and ``ground_truth_row`` (as written to the CSVs, missing values as
        None), ``complete_clinical`` (before values were blanked), ``outcome`` (see
        :func:`sample_outcome`), ``images`` (name -> SimpleITK image, or None),
        ``tissue_labels`` (T2-grid tissue indices into :data:`TISSUES`, or None),
        ``tumour_means`` (noise-free tumour mean of each series, see :func:`render_patient`, or None),
        ``finding_amplitudes`` (what the images show; empty without findings) and
        ``image_terms`` (term name -> contribution to the linear predictor; empty in the default
        cohort, whose image terms are ``log_volume_std`` and ``adc_std`` of
        :func:`linear_predictor_terms`).
    """
    findings, image_risk = normalise_findings(findings, image_risk, hazard_index is not None)
    findings_mode = bool(findings) or image_risk is not None or hazard_index is not None
    rng = patient_rng(seed, patient_index)
    centre = assign_centre(patient_index, n_centres)
    protocol = centre_protocol(centre, n_centres)
    latents = sample_patient_latents(rng, protocol.case_mix_shift)
    if image_risk is not None and not {"volume", "adc"} <= set(image_risk):
        latents = decouple_quantities(latents, seed, patient_index, image_risk)
    pid = patient_id(patient_index)
    own = finding_amplitudes(seed, patient_index) if findings else {}
    plan = FindingPlan(int(seed), int(patient_index), findings, own) if findings else None
    mrf_read = None
    if render:
        try:
            rendered = render_patient(rng, latents, protocol, shape, plan)
        except RuntimeError as error:
            raise RuntimeError(f"patient {pid} (seed {seed}): {error}") from error
        volume_ml, mean_adc, images = rendered["tumour_volume_ml"], rendered["tumour_mean_adc"], rendered["images"]
        prognostic_volume_ml, tissue_labels = rendered["equivalent_volume_ml"], rendered["tissue_labels"]
        mrf_read, tumour_means = rendered["mrf_read"], rendered["tumour_means"]
    else:
        volume_ml, mean_adc, images = latents["target_volume_ml"], latents["tumour_adc"], None
        prognostic_volume_ml, tissue_labels, tumour_means = volume_ml, None, None
    complete = _clinical_with_findings(latents["clinical"], findings, own, mrf_read)
    # The outcome stream is separate from the rendering stream, so the outcome of a patient
    # does not change with the image shape.
    outcome_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient_index, 1)))
    terms = linear_predictor_terms(complete, prognostic_volume_ml, mean_adc)
    image_terms: Dict[str, float] = {}
    if findings_mode:
        hazard = own if hazard_index is None else finding_amplitudes(seed, hazard_index)
        image_terms = _image_terms(terms, findings, DEFAULT_IMAGE_RISK if image_risk is None else image_risk, hazard)
        lp = float(sum(terms.values()) + sum(image_terms[f] for f in FINDINGS))
    else:
        lp = float(sum(terms.values()))
    outcome = sample_outcome(outcome_rng, lp, loss_to_follow_up_rate, admin_censoring_months)
    clinical = dict(complete)
    for column, rate in MISSING_RATE.items():
        if outcome_rng.random() < rate:
            clinical[column] = None
    row = {"patient_id": pid, "centre": centre, **clinical,
           "dfs_months": outcome["dfs_months"], "dfs_event": outcome["dfs_event"]}
    truth = {"patient_id": pid, "centre": centre, "linear_predictor": round(lp, 6),
             "tumour_volume_ml": round(volume_ml, 4), "tumour_mean_adc": round(mean_adc, 2)}
    if findings_mode:
        truth.update({f"finding_{f}": round(own[f], 6) for f in findings})
        truth.update({f"term_{name}": round(value, 6) for name, value in image_terms.items()})
        if hazard_index is not None:
            truth["findings_hazard_from"] = patient_id(hazard_index)
    return {"clinical_row": row, "ground_truth_row": truth, "outcome": outcome, "images": images,
            "complete_clinical": complete, "tissue_labels": tissue_labels, "finding_amplitudes": own,
            "image_terms": image_terms, "tumour_means": tumour_means}


def _clinical_with_findings(clinical: dict, findings: Tuple[str, ...], own: Dict[str, float],
                            mrf_read: Optional[int]) -> dict:
    """The clinical values, with MRF and EMVI read off the drawn extension and vessel."""
    if "extension" not in findings and "emvi" not in findings:
        return clinical
    clinical = dict(clinical)
    if "extension" in findings:
        clinical["mrf"] = mrf_read if mrf_read is not None else mrf_from_extension(own["extension"])
    if "emvi" in findings:
        clinical["emvi"] = emvi_from_vessel(own["emvi"])
    return clinical


def _image_terms(terms: Dict[str, float], findings: Tuple[str, ...], image_risk: Tuple[str, ...],
                 hazard: Dict[str, float]) -> Dict[str, float]:
    """Image term contributions (``volume``, ``adc``, each finding; 0 where not in ``image_risk``).

    Edits ``terms`` in place: the volume and ADC terms are zeroed where not in ``image_risk``,
    and MRF / EMVI, read off a drawn extension / vessel, carry no risk of their own (their
    prognosis is the finding's term; so the permutation control leaves none in the images).
    """
    if "extension" in findings:
        terms["mrf"] = 0.0
    if "emvi" in findings:
        terms["emvi"] = 0.0
    for name, key in (("volume", "log_volume_std"), ("adc", "adc_std")):
        if name not in image_risk:
            terms[key] = 0.0
    image_terms = {"volume": terms["log_volume_std"], "adc": terms["adc_std"]}
    for finding in FINDINGS:
        image_terms[finding] = FINDING_COEFFICIENTS[finding] * hazard[finding] if finding in image_risk else 0.0
    return image_terms


def parse_term_list(text: Union[str, Sequence[str]], allowed: Sequence[str], what: str) -> Tuple[str, ...]:
    """``"a,b"`` / ``"all"`` / ``"none"`` (or a sequence of names) -> names in ``allowed`` order."""
    if isinstance(text, str):
        text = text.strip()
        if text == "all":
            return tuple(allowed)
        names = [] if text in ("", "none") else [name.strip() for name in text.split(",")]
    else:
        names = [str(name).strip() for name in text]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{what}: unknown name(s) {unknown}; choose from {', '.join(allowed)} (or all / none)")
    return tuple(name for name in allowed if name in names)


def normalise_findings(findings: Union[str, Sequence[str]], image_risk: Optional[Union[str, Sequence[str]]],
                       permute_findings: bool = False) -> Tuple[Tuple[str, ...], Optional[Tuple[str, ...]]]:
    """Check the finding options; returns ``(findings, image_risk)`` in canonical order.

    ``image_risk`` stays None when not given (today's volume + ADC).  Raises ValueError for an
    unknown name, a finding in ``image_risk`` that is not drawn, or ``permute_findings`` without
    findings.
    """
    findings = parse_term_list(findings, FINDINGS, "findings")
    if image_risk is not None:
        image_risk = parse_term_list(image_risk, IMAGE_RISK_TERMS, "image_risk")
        undrawn = [name for name in image_risk if name in FINDINGS and name not in findings]
        if undrawn:
            raise ValueError(f"image_risk names finding(s) {undrawn} that are not drawn; add them to findings "
                             f"(--findings) so the images show the risk")
    if permute_findings and not findings:
        raise ValueError("permute_findings needs findings to permute (--findings)")
    return findings, image_risk


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


def _clinical_frame(rows: list, radiologist_columns: bool = True) -> pd.DataFrame:
    columns = [c for c in CLINICAL_COLUMNS if radiologist_columns or c not in RADIOLOGIST_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    # Nullable integers so 0/1 columns with gaps are written as "1" / "" rather than "1.0".
    for column in RADIOLOGIST_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    frame["age"] = frame["age"].astype("Int64")
    return frame


def schema_without_radiologist_columns(schema: Optional[ClinicalSchema] = None) -> dict:
    """The clinical schema (default: clinical/larc_schema.json) without ``mrf`` and ``emvi``, as a dict."""
    content = (schema or ClinicalSchema.load()).to_dict()
    content["columns"] = {name: spec for name, spec in content["columns"].items() if name not in RADIOLOGIST_COLUMNS}
    ClinicalSchema.from_dict(content)   # still a valid schema
    return content


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
                    missing_series: Sequence[Union[str, MissingSeriesSpec]] = (),
                    findings: Sequence[str] = (), image_risk: Optional[Sequence[str]] = None,
                    permute_findings: bool = False, radiologist_columns: bool = True) -> pd.DataFrame:
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
    findings : sequence of str
        Image findings to draw (names in :data:`FINDINGS`, or ``"all"``).  Drawn without risk
        unless named in ``image_risk``.  With extension / emvi drawn, clinical ``mrf`` / ``emvi``
        are read off the images (see the module docstring).
    image_risk : sequence of str, optional
        Image terms that enter the hazard (names in :data:`IMAGE_RISK_TERMS`; ``()`` none).
        None: today's ``("volume", "adc")``.  A finding named here must be in ``findings``.
    permute_findings : bool
        The hazard uses the finding amplitudes of another patient (:func:`finding_permutation`):
        the images show each patient's own findings, which then carry no risk.
    radiologist_columns : bool
        False drops ``mrf`` and ``emvi`` from clinical.csv and writes ``schema.json`` (the default
        schema without them) into the cohort folder for the converter's ``--schema``.

    Returns
    -------
    pandas.DataFrame
        The clinical table as written to ``clinical.csv`` (missing values as <NA>/None).
    """
    shape = _validate_arguments(n_patients, shape, n_centres)
    # Before anything is written, so a bad spec leaves no folder behind.
    removed_series = select_missing_series(missing_series, n_patients, seed, n_centres)
    findings, image_risk = normalise_findings(findings, image_risk, permute_findings)
    if permute_findings and int(n_patients) < 2:
        raise ValueError("permute_findings needs at least 2 patients (each patient's hazard comes from another's "
                         "findings)")
    if not radiologist_columns and not {"extension", "emvi"} <= set(findings):
        raise ValueError("--no-radiologist-columns needs the extension and emvi findings drawn (--findings): "
                         "otherwise the MRF and EMVI terms of the hazard would be shown by neither the table nor "
                         "the images")
    hazard_of = finding_permutation(n_patients, seed) if permute_findings else None
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
                                       tuple(admin_censoring_months), findings=findings, image_risk=image_risk,
                                       hazard_index=None if hazard_of is None else int(hazard_of[index]))
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
        clinical_table = _clinical_frame(clinical_rows, radiologist_columns)
        clinical_table.to_csv(staging / "clinical.csv", index=False)
        pd.DataFrame(truth_rows, columns=list(truth_rows[0])).to_csv(staging / "ground_truth.csv", index=False)
        if not radiologist_columns:
            (staging / "schema.json").write_text(json.dumps(schema_without_radiologist_columns(schema), indent=2)
                                                 + "\n")
        _missing_series_frame(removed_series).to_csv(staging / "missing_series.csv", index=False)
        publish_folder(str(staging), str(out_dir))  # readable (mkdtemp makes it private), swapped safely
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
    parser.add_argument("--findings", default="", metavar="LIST",
                        help=f"image findings to draw: a comma list of {','.join(FINDINGS)}, or all; drawn "
                             "without risk unless named in --image-risk (default: none, today's images)")
    parser.add_argument("--image-risk", default=None, metavar="LIST",
                        help=f"image terms in the hazard: a comma list of {','.join(IMAGE_RISK_TERMS)}, or none; "
                             "a finding named here must be drawn (default: volume,adc)")
    parser.add_argument("--permute-findings", action="store_true",
                        help="permutation control: the hazard uses the finding amplitudes of another patient "
                             "(a fixed seeded permutation), so the images carry no finding risk")
    parser.add_argument("--no-radiologist-columns", action="store_true",
                        help="leave mrf and emvi out of clinical.csv (with extension / emvi drawn only the "
                             "images then show them) and write schema.json, the clinical schema without them, "
                             "for convert_larc --schema")
    parser.add_argument("--dicom-out", default=None, metavar="DIR",
                        help="also write the cohort as DICOM into DIR (dataset_conversion.synthetic_dicom: T2 and "
                             "one multi-b DWI series per patient, default SNR and b-values, seed --seed)")
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
    if args.dicom_out and args.missing_series:
        parser.error("--dicom-out needs every series of every patient (leave out --missing-series)")
    start = time.perf_counter()
    try:
        table = generate_cohort(args.out, args.patients, seed=args.seed, shape=tuple(args.shape),
                                n_centres=args.centres, loss_to_follow_up_rate=args.censoring_rate,
                                admin_censoring_months=tuple(args.follow_up_months),
                                progress=not args.no_progress, overwrite=args.overwrite,
                                missing_series=missing_specs, findings=args.findings, image_risk=args.image_risk,
                                permute_findings=args.permute_findings,
                                radiologist_columns=not args.no_radiologist_columns)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(table)} patients to {Path(args.out).resolve()} in {time.perf_counter() - start:.1f} s "
          f"(events: {int(table['dfs_event'].sum())}, "
          f"centres: {table['centre'].value_counts().sort_index().to_dict()})")
    if missing_specs:
        removed = select_missing_series(missing_specs, args.patients, args.seed, args.centres)
        print(missing_series_summary(removed, args.patients))
    if args.dicom_out:
        from dataset_conversion.synthetic_dicom import write_cohort_dicom
        try:
            write_cohort_dicom(args.out, args.dicom_out, overwrite=args.overwrite, seed=args.seed)
        except (ValueError, FileExistsError) as error:
            print(f"error: --dicom-out: {error}", file=sys.stderr)
            return 2
        print(f"wrote the cohort as DICOM to {Path(args.dicom_out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
