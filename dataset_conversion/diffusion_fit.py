"""Diffusion maps (ADC, Dapp, Kapp) fitted from a multi-b trace-weighted DWI series.

Units (as :mod:`dataset_conversion.synthetic_larc` and what scanners export): b-values in s/mm^2,
ADC and Dapp in 1e-6 mm^2/s (tumour ADC about 1000), Kapp dimensionless.

Models
------
ADC (mono-exponential)
    ``S(b) = S0 * exp(-b * ADC)``, fitted by ordinary least squares of ``log S`` on ``b`` over the
    distinct b-values of the ADC set (closed form, vectorised over voxels).  Default ADC set: every
    acquired b <= :data:`ADC_DEFAULT_MAX_B` = 1000 s/mm^2, the range of the clinical rectal ADC (ESGAR
    consensus: a high b of 800-1000).  Above about 1000 s/mm^2 the log-signal of tissue curves
    (kurtosis), so a mono-exponential fit that includes b = 1500 or 2000 returns a lower ADC that depends
    on the protocol's highest b; keeping b <= 1000 keeps the ADC comparable with scanner maps.
    ``adc_b_values`` overrides the set.  Quality map: R^2 of the log-linear fit over the distinct
    b-values (1 with only two b-values, where it says nothing; the record warns).
Dapp / Kapp (diffusion kurtosis, as dipy's mean-signal DKI)
    ``S(b) = S0 * exp(-b * D + b^2 * D^2 * K / 6)`` over the b-values <= ``max_b`` (at least three
    distinct), in two steps:

    1. weighted least squares of ``log S`` (linear in ``log S0``, ``D`` and ``D^2 K``) with weights
       ``n_b * S_b^2`` (``n_b`` images averaged at b, ``S_b`` the measured mean signal): exactly the
       estimator of dipy's ``MeanDiffusionKurtosisModel`` (``wls_fit_msdki``);
    2. with ``refine=True`` (default), a bounded non-linear least-squares fit of the signal itself
       (residuals ``sqrt(n_b) * (S_model - S_b)``, parameters ``log S0``, ``D``, ``K``) started from
       step 1: vectorised Levenberg-Marquardt with an active set, ``D`` in :data:`DAPP_BOUNDS` and
       ``K`` in ``k_bounds``.  With ``refine=False`` the WLS estimate is clipped to the same bounds.

    A voxel whose estimate lies on a bound is flagged in ``clipped``.  Quality map: R^2 of the final
    fit in the log-signal domain over the distinct DKI b-values, clipped to [0, 1].

Replicates: several images at one b-value (directions of a trace acquisition exported separately, or
repeats) are averaged arithmetically first (the powder average of dipy's MSDKI); b-values closer than
:data:`B_VALUE_TOLERANCE` are one b-value.  ADC: unweighted fit of the per-b means; DKI: the number of
images per b is the weight ``n_b`` above.

Foreground: ``mask`` if given, otherwise the voxels whose lowest-b mean signal exceeds
``background_fraction`` x its 99th percentile (over positive voxels).  A foreground voxel with a
non-positive mean signal at a b-value of a fit is left out of that fit.  Voxels not fitted are 0 in
every map (never NaN) and are counted in the record.  The data must include a low b-value (b = 0 or
b <= :data:`LOW_B_MAX`): it anchors S0, the foreground threshold and the DKI normalisation.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from clinical.errors import MultitaskError

__all__ = ["DiffusionFit", "DiffusionFitError", "DiffusionFitWarning", "fit_diffusion", "fit_diffusion_images",
           "ADC_DEFAULT_MAX_B", "LOW_B_MAX", "B_VALUE_TOLERANCE", "DAPP_BOUNDS", "MAP_NAMES"]

#: default ADC set: every acquired b <= this (s/mm^2); see the module docstring for why
ADC_DEFAULT_MAX_B = 1000.0
#: the lowest acquired b must be at most this (s/mm^2): b = 0, or the b = 50-150 some protocols start at
LOW_B_MAX = 200.0
#: b-values closer than this (s/mm^2) are one b-value (nominal vs effective b of the directions)
B_VALUE_TOLERANCE = 5.0
#: bounds of Dapp in the DKI fit, 1e-6 mm^2/s: strictly positive, and below 5000 (free water at 37 C is
#: about 3000, so a larger value is noise or flow)
DAPP_BOUNDS = (1.0, 5000.0)
#: default foreground threshold: this fraction of the 99th percentile of the lowest-b signal
BACKGROUND_FRACTION = 0.1
#: voxels per block of the vectorised DKI fit (bounds the memory of the temporaries, ~20 MB each)
CHUNK_VOXELS = 1 << 18
#: Levenberg-Marquardt iterations of the bounded refinement (voxels that converge leave earlier)
LM_MAX_ITERATIONS = 30
#: names of the images :func:`fit_diffusion_images` returns
MAP_NAMES = ("ADC", "Dapp", "Kapp", "ADC_quality", "DKI_quality", "DKI_clipped")
#: geometry tolerances of the b-images (as convert_larc's grid check)
SPACING_RTOL = 1e-3
ORIGIN_TOL_VOXELS = 0.01
DIRECTION_ATOL = 1e-4
#: b in s/mm^2 times this is b in ms/um^2; D in um^2/ms times 1000 is D in 1e-6 mm^2/s
_B_SCALE = 1e-3
_D_UNIT = 1000.0


class DiffusionFitError(MultitaskError, ValueError):
    """The DWI cannot be fitted; the message names the b-values or images and the problem."""


class DiffusionFitWarning(UserWarning):
    """A fit was left out or is doubtful (e.g. no DKI with fewer than three b-values <= max_b)."""


@dataclass(frozen=True)
class DiffusionFit:
    """Maps fitted by :func:`fit_diffusion`, each with the spatial shape of the input.

    Attributes
    ----------
    adc : numpy.ndarray
        float32, 1e-6 mm^2/s (negative estimates set to 0); 0 where not fitted.
    dapp, kapp : numpy.ndarray or None
        float32, Dapp in 1e-6 mm^2/s and dimensionless Kapp; None when fewer than three distinct
        b-values <= ``max_b`` were acquired.  0 where not fitted.
    adc_quality : numpy.ndarray
        float32, R^2 of the log-linear ADC fit (0 where not fitted).
    dki_quality : numpy.ndarray or None
        float32, R^2 of the final DKI fit in the log-signal domain, clipped to [0, 1] (0 where not fitted).
    clipped : numpy.ndarray or None
        bool, voxels whose DKI estimate lies on a bound of Dapp or Kapp.
    record : dict
        JSON-able account of the fit: b-values of each fit, method, bounds, counts, warnings.
    """

    adc: np.ndarray
    dapp: Optional[np.ndarray]
    kapp: Optional[np.ndarray]
    adc_quality: np.ndarray
    dki_quality: Optional[np.ndarray]
    clipped: Optional[np.ndarray]
    record: dict


# ---------------------------------------------------------------------------- checks
def _check_b_values(b_values, n_images: int) -> np.ndarray:
    try:
        b = np.asarray(b_values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise DiffusionFitError(f"b-values must be numbers, got {b_values!r}") from None
    if b.size != n_images:
        raise DiffusionFitError(f"{b.size} b-value(s) given for {n_images} image(s): one b-value per image")
    bad = [float(v) for v in b if not math.isfinite(v) or v < 0]
    if bad:
        raise DiffusionFitError(f"b-values must be finite and >= 0 s/mm^2, got {bad}")
    return b


def _check_signal(signal) -> np.ndarray:
    signal = np.asarray(signal)
    if signal.ndim < 2:
        raise DiffusionFitError(f"signal must have shape (n_b, *spatial), got shape {signal.shape}")
    if signal.dtype.kind not in "uif":
        raise DiffusionFitError(f"signal must be real numbers, got dtype {signal.dtype}")
    if signal.dtype.kind == "f":
        finite = np.isfinite(signal.reshape(signal.shape[0], -1)).all(axis=1)
        if not finite.all():
            raise DiffusionFitError(f"signal image(s) {np.flatnonzero(~finite).tolist()} hold NaN or infinite values")
    return signal


def _check_options(max_b: float, k_bounds, background_fraction: float) -> Tuple[float, float]:
    if not (math.isfinite(max_b) and max_b > 0):
        raise DiffusionFitError(f"max_b must be a positive number of s/mm^2, got {max_b}")
    try:
        k_lo, k_hi = (float(k) for k in k_bounds)
    except (TypeError, ValueError):
        raise DiffusionFitError(f"k_bounds must be two numbers (low, high), got {k_bounds!r}") from None
    if not (math.isfinite(k_lo) and math.isfinite(k_hi) and k_lo < k_hi):
        raise DiffusionFitError(f"k_bounds must be finite with low < high, got {k_bounds!r}")
    if not 0 < background_fraction < 1:
        raise DiffusionFitError(f"background_fraction must be in (0, 1), got {background_fraction}")
    return k_lo, k_hi


def _group_b_values(b: np.ndarray) -> List[Tuple[float, np.ndarray]]:
    """Distinct b-values (sorted; b-values within B_VALUE_TOLERANCE of their neighbour are one) with
    the indices of their images."""
    order = np.argsort(b, kind="stable")
    groups: List[List[int]] = [[int(order[0])]]
    for i in order[1:]:
        if b[i] - b[groups[-1][-1]] <= B_VALUE_TOLERANCE:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [(float(np.mean(b[g])), np.asarray(sorted(g))) for g in groups]


def _select_adc_groups(groups, adc_b_values) -> List[int]:
    """Indices into ``groups`` of the ADC fit (default: every b <= ADC_DEFAULT_MAX_B)."""
    available = [g[0] for g in groups]
    if adc_b_values is None:
        chosen = [i for i, bv in enumerate(available) if bv <= ADC_DEFAULT_MAX_B + B_VALUE_TOLERANCE]
        if len(chosen) < 2:
            raise DiffusionFitError(
                f"the ADC needs at least 2 distinct b-values <= {ADC_DEFAULT_MAX_B:g} s/mm^2 (the default ADC "
                f"set); acquired b-values {_fmt(available)}. Pass adc_b_values to choose the set")
        return chosen
    wanted = np.asarray(adc_b_values, dtype=float).reshape(-1)
    chosen, missing = [], []
    for bv in wanted:
        near = [i for i, a in enumerate(available) if abs(a - bv) <= B_VALUE_TOLERANCE]
        if near:
            chosen.extend(near)
        else:
            missing.append(float(bv))
    if missing:
        raise DiffusionFitError(f"adc_b_values {_fmt(missing)} s/mm^2 not acquired; acquired b-values "
                                f"{_fmt(available)}")
    chosen = sorted(set(chosen))
    if len(chosen) < 2:
        raise DiffusionFitError(f"the ADC needs at least 2 distinct b-values, adc_b_values gives "
                                f"{_fmt([available[i] for i in chosen])}")
    return chosen


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _foreground(low_b: np.ndarray, mask, spatial: Tuple[int, ...], background_fraction: float):
    """Boolean foreground over the flattened voxels, and the record entry of the rule."""
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != spatial:
            raise DiffusionFitError(f"mask has shape {mask.shape}, the signal's spatial shape is {spatial}")
        foreground = mask.reshape(-1).astype(bool)
        rule = {"rule": "mask given"}
    else:
        positive = low_b[low_b > 0]
        if positive.size == 0:
            raise DiffusionFitError("the lowest-b image has no positive voxel: nothing to fit")
        threshold = background_fraction * float(np.percentile(positive, 99))
        foreground = low_b > threshold
        rule = {"rule": f"lowest-b signal > {background_fraction:g} x its 99th percentile over positive voxels",
                "threshold": threshold}
    if not foreground.any():
        raise DiffusionFitError("no foreground voxel to fit (empty mask)" if mask is not None
                                else "no foreground voxel to fit")
    rule["n_voxels"] = int(low_b.size)
    rule["n_foreground"] = int(np.count_nonzero(foreground))
    return foreground, rule


# ---------------------------------------------------------------------------- ADC
def _fit_adc(means: np.ndarray, beta: np.ndarray):
    """Log-linear OLS per voxel. means: (m, n) positive; beta: (m,) b in ms/um^2.
    Returns ADC in um^2/ms and R^2, each (n,)."""
    logs = np.log(means)
    bc = beta - beta.mean()
    slope = (bc @ logs) / float(bc @ bc)
    centred = logs - logs.mean(axis=0)
    residual = centred - np.outer(bc, slope)
    ss_tot = np.einsum("ij,ij->j", centred, centred)
    ss_res = np.einsum("ij,ij->j", residual, residual)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 1.0)
    return -slope, np.clip(r2, 0.0, 1.0)


# ---------------------------------------------------------------------------- DKI
def _solve_sym3(m00, m01, m02, m11, m12, m22, r0, r1, r2):
    """Solve the symmetric 3x3 systems [[m00 m01 m02] [m01 m11 m12] [m02 m12 m22]] x = r elementwise
    (adjugate / determinant: much faster than a batched LAPACK call for millions of 3x3 systems).
    Returns x0, x1, x2 and whether each system was solvable."""
    c00 = m11 * m22 - m12 * m12
    c01 = m02 * m12 - m01 * m22
    c02 = m01 * m12 - m02 * m11
    c11 = m00 * m22 - m02 * m02
    c12 = m01 * m02 - m00 * m12
    c22 = m00 * m11 - m01 * m01
    det = m00 * c00 + m01 * c01 + m02 * c02
    scale = np.abs(m00 * m11 * m22) + 1e-300
    ok = np.abs(det) > 1e-14 * scale
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    x0 = (c00 * r0 + c01 * r1 + c02 * r2) * inv
    x1 = (c01 * r0 + c11 * r1 + c12 * r2) * inv
    x2 = (c02 * r0 + c12 * r1 + c22 * r2) * inv
    return x0, x1, x2, ok


def _dki_wls(y: np.ndarray, beta: np.ndarray, n_b: np.ndarray):
    """dipy's MSDKI WLS: log y = s - beta D + beta^2 (D^2 K) / 6, weights n_b y^2.
    y: (m, n) positive, normalised. Returns s, D (um^2/ms), K (nan where D <= 0), ok."""
    a = np.stack([np.ones_like(beta), -beta, beta ** 2 / 6.0])               # (3, m) design, transposed
    products = np.stack([a[0] * a[0], a[0] * a[1], a[0] * a[2], a[1] * a[1], a[1] * a[2], a[2] * a[2]])
    w = n_b[:, None] * y * y
    normal = products @ w                                                     # (6, n)
    rhs = a @ (w * np.log(y))                                                 # (3, n)
    s, d, x, ok = _solve_sym3(*normal, *rhs)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(d > 0, x / (d * d), np.nan)
    return s, d, k, ok


def _dki_cost(y, beta, n_b, s, d, k):
    model = np.exp(s - np.outer(beta, d) + np.outer(beta ** 2 / 6.0, d * d * k))
    r = model - y
    return np.einsum("i,ij,ij->j", n_b, r, r), model


def _dki_refine(y, beta, n_b, s, d, k, d_bounds, k_bounds):
    """Bounded Levenberg-Marquardt of sum_b n_b (S_model - y_b)^2 over (s, D, K), vectorised with an
    active set: a parameter on a bound whose gradient points outwards is held for that step."""
    s, d, k = s.copy(), d.copy(), k.copy()
    lam = np.full(s.shape, 1e-3)
    cost, model = _dki_cost(y, beta, n_b, s, d, k)
    active = np.arange(s.size)
    b2 = beta ** 2
    for _ in range(LM_MAX_ITERATIONS):
        if active.size == 0:
            break
        ya, sa, da, ka, la, ca, ma = y[:, active], s[active], d[active], k[active], lam[active], cost[active], \
            model[:, active]
        r = ma - ya
        j0 = ma
        j1 = ma * (-beta[:, None] + np.outer(b2, da * ka) / 3.0)
        j2 = ma * np.outer(b2 / 6.0, da * da)
        g = [np.einsum("i,ij,ij->j", n_b, jj, r) for jj in (j0, j1, j2)]
        h = {(p, q): np.einsum("i,ij,ij->j", n_b, jp, jq)
             for p, jp in enumerate((j0, j1, j2)) for q, jq in enumerate((j0, j1, j2)) if q >= p}
        hold_d = ((da <= d_bounds[0]) & (g[1] > 0)) | ((da >= d_bounds[1]) & (g[1] < 0))
        hold_k = ((ka <= k_bounds[0]) & (g[2] > 0)) | ((ka >= k_bounds[1]) & (g[2] < 0))
        for (p, q) in list(h):
            if p != q:
                held = (hold_d if 1 in (p, q) else False) | (hold_k if 2 in (p, q) else False)
                h[(p, q)] = np.where(held, 0.0, h[(p, q)])
        diag = [h[(0, 0)] * (1 + la) + 1e-12, np.where(hold_d, 1.0, h[(1, 1)] * (1 + la) + 1e-12),
                np.where(hold_k, 1.0, h[(2, 2)] * (1 + la) + 1e-12)]
        rhs = [-g[0], np.where(hold_d, 0.0, -g[1]), np.where(hold_k, 0.0, -g[2])]
        x0, x1, x2, ok = _solve_sym3(diag[0], h[(0, 1)], h[(0, 2)], diag[1], h[(1, 2)], diag[2], *rhs)
        s_new = sa + x0
        d_new = np.clip(da + x1, *d_bounds)
        k_new = np.clip(ka + x2, *k_bounds)
        c_new, m_new = _dki_cost(ya, beta, n_b, s_new, d_new, k_new)
        accept = ok & (c_new < ca)
        idx = active[accept]
        s[idx], d[idx], k[idx], cost[idx], model[:, idx] = (s_new[accept], d_new[accept], k_new[accept],
                                                             c_new[accept], m_new[:, accept])
        lam[active] = np.where(accept, la / 3.0, la * 4.0)
        # a voxel leaves when its cost no longer falls, or damping has grown without an accepted step
        small = accept & (ca - c_new <= 1e-12 * ca + 1e-20)
        stuck = ~accept & (la > 1e8)
        active = active[~(small | stuck)]
    return s, d, k


def _fit_dki_block(y, beta, n_b, d_bounds, k_bounds, refine: bool):
    """DKI of one block of voxels (y: (m, n) normalised positive means).
    Returns D (um^2/ms), K, clipped (bool), R^2 in the log domain."""
    s, d, k, ok = _dki_wls(y, beta, n_b)
    out_of_bounds = ~ok | ~(d >= d_bounds[0]) | ~(d <= d_bounds[1]) | ~(k >= k_bounds[0]) | ~(k <= k_bounds[1])
    s = np.where(ok, s, 0.0)
    d = np.clip(np.where(ok & (d > 0), d, d_bounds[0]), *d_bounds)
    k = np.clip(np.where(np.isfinite(k), k, k_bounds[0]), *k_bounds)
    if refine:
        s, d, k = _dki_refine(y, beta, n_b, s, d, k, d_bounds, k_bounds)
        span_d, span_k = d_bounds[1] - d_bounds[0], k_bounds[1] - k_bounds[0]
        clipped = ((d <= d_bounds[0] + 1e-9 * span_d) | (d >= d_bounds[1] - 1e-9 * span_d)
                   | (k <= k_bounds[0] + 1e-9 * span_k) | (k >= k_bounds[1] - 1e-9 * span_k))
    else:
        clipped = out_of_bounds
    logs = np.log(y)
    predicted = s - np.outer(beta, d) + np.outer(beta ** 2 / 6.0, d * d * k)
    centred = logs - logs.mean(axis=0)
    ss_tot = np.einsum("ij,ij->j", centred, centred)
    ss_res = np.einsum("ij,ij->j", logs - predicted, logs - predicted)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 1.0)
    return d, k, clipped, np.clip(r2, 0.0, 1.0)


# ---------------------------------------------------------------------------- public
def fit_diffusion(signal, b_values, *, adc_b_values: Optional[Sequence[float]] = None, max_b: float = 2000.0,
                  refine: bool = True, mask=None, k_bounds: Tuple[float, float] = (0.0, 3.0),
                  background_fraction: float = BACKGROUND_FRACTION) -> DiffusionFit:
    """Fit ADC, and Dapp / Kapp where the b-values allow, from a multi-b DWI (see the module docstring).

    Parameters
    ----------
    signal : array_like, shape (n_b, *spatial)
        One image per entry of ``b_values`` (magnitude, any real dtype). Images of the same b are averaged.
    b_values : sequence of float
        b-value of each image, s/mm^2.
    adc_b_values : sequence of float, optional
        b-values of the ADC fit (each must be acquired). Default: every acquired b <= 1000 s/mm^2.
    max_b : float
        Highest b-value of the DKI fit (s/mm^2). Fewer than three distinct b-values <= ``max_b``: no DKI
        (``dapp``, ``kapp``, ``dki_quality``, ``clipped`` are None; the record says why, and a
        :class:`DiffusionFitWarning` is issued).
    refine : bool
        Bounded non-linear refinement of the DKI fit (True) or the clipped WLS estimate (False).
    mask : array_like of bool, shape ``spatial``, optional
        Voxels to fit. Default: lowest-b signal above ``background_fraction`` x its 99th percentile.
    k_bounds : (float, float)
        Bounds of Kapp.
    background_fraction : float
        Foreground threshold without a mask (see ``mask``).

    Returns
    -------
    DiffusionFit

    Raises
    ------
    DiffusionFitError
        b-values and images disagree; no low b-value (b <= 200 s/mm^2); fewer than two distinct ADC
        b-values; a requested ADC b-value not acquired; NaN / infinite signal; nothing to fit.
    """
    signal = _check_signal(signal)
    b = _check_b_values(b_values, signal.shape[0])
    k_lo, k_hi = _check_options(float(max_b), k_bounds, background_fraction)
    groups = _group_b_values(b)
    distinct = [g[0] for g in groups]
    if distinct[0] > LOW_B_MAX:
        raise DiffusionFitError(f"no b=0 or low-b image (b <= {LOW_B_MAX:g} s/mm^2) among b-values "
                                f"{_fmt(distinct)}: the fit needs one to anchor S0 and find the foreground")
    adc_idx = _select_adc_groups(groups, adc_b_values)
    dki_idx = [i for i, bv in enumerate(distinct) if bv <= max_b + B_VALUE_TOLERANCE]
    spatial = tuple(signal.shape[1:])
    flat = signal.reshape(signal.shape[0], -1)
    means = np.stack([flat[idx].mean(axis=0, dtype=np.float64) for _, idx in groups])     # (G, n)
    n_images = np.array([len(idx) for _, idx in groups], dtype=float)
    foreground, fg_record = _foreground(means[0], mask, spatial, background_fraction)
    warn: List[str] = []

    record = {
        "units": {"ADC": "1e-6 mm^2/s", "Dapp": "1e-6 mm^2/s", "Kapp": "dimensionless", "b": "s/mm^2"},
        "b_values_input": [float(v) for v in b],
        "b_values_distinct": [{"b": bv, "n_images": int(len(idx))} for bv, idx in groups],
        "replicates": "images of one b-value (within %g s/mm^2) averaged arithmetically" % B_VALUE_TOLERANCE,
        "foreground": fg_record,
        "warnings": warn,
    }
    adc, adc_q, record["adc"] = _adc_maps(means, adc_idx, distinct, foreground, adc_b_values, warn)
    n = means.shape[1]
    if len(dki_idx) < 3:
        message = (f"NO DKI: Dapp and Kapp need at least 3 distinct b-values <= max_b={float(max_b):g} s/mm^2, "
                   f"acquired {_fmt([distinct[i] for i in dki_idx])} (all b-values {_fmt(distinct)})")
        warn.append(message)
        warnings.warn(message, DiffusionFitWarning, stacklevel=2)
        record["dki"] = {"fitted": False, "reason": message}
        return DiffusionFit(adc=adc.reshape(spatial), dapp=None, kapp=None, adc_quality=adc_q.reshape(spatial),
                            dki_quality=None, clipped=None, record=record)
    dapp, kapp, dki_q, clipped = (np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32),
                                  np.zeros(n, bool))
    sub = means[dki_idx]
    fit_mask = foreground & (sub > 0).all(axis=0)
    voxels = np.flatnonzero(fit_mask)
    beta = np.array([distinct[i] for i in dki_idx]) * _B_SCALE
    n_b = n_images[dki_idx]
    d_bounds = (DAPP_BOUNDS[0] / _D_UNIT, DAPP_BOUNDS[1] / _D_UNIT)
    for start in range(0, voxels.size, CHUNK_VOXELS):
        v = voxels[start:start + CHUNK_VOXELS]
        y = sub[:, v] / sub[0, v]
        d, k, c, q = _fit_dki_block(y, beta, n_b, d_bounds, (k_lo, k_hi), refine)
        dapp[v], kapp[v], clipped[v], dki_q[v] = d * _D_UNIT, k, c, q
    n_fit = int(voxels.size)
    n_clipped = int(np.count_nonzero(clipped))
    record["dki"] = {
        "fitted": True,
        "b_values": [distinct[i] for i in dki_idx], "max_b": float(max_b),
        "model": "S = S0 exp(-b D + b^2 D^2 K / 6)",
        "method": ("WLS of log S, weights n_b S_b^2 (dipy MSDKI), then " +
                   ("bounded Levenberg-Marquardt of the signal (residuals sqrt(n_b) (S_model - S_b))" if refine
                    else "clipped to the bounds (refine=False)")),
        "refine": bool(refine),
        "bounds": {"Dapp": list(DAPP_BOUNDS), "Kapp": [k_lo, k_hi]},
        "quality": "R^2 of the final fit in the log-signal domain over the distinct b-values, clipped to [0, 1]",
        "n_fitted": n_fit,
        "n_foreground_not_fitted": int(np.count_nonzero(foreground) - n_fit),
        "n_clipped": n_clipped,
        "clipped_fraction": n_clipped / n_fit if n_fit else 0.0,
    }
    if record["dki"]["n_foreground_not_fitted"]:
        warn.append(f"DKI: {record['dki']['n_foreground_not_fitted']} foreground voxel(s) with a non-positive mean "
                    f"signal at a DKI b-value not fitted (0 in Dapp, Kapp)")
    if len(dki_idx) == 3:
        warn.append("DKI: exactly 3 b-values for 3 parameters: the fit is exact and its R^2 is uninformative")
    return DiffusionFit(adc=adc.reshape(spatial), dapp=dapp.reshape(spatial), kapp=kapp.reshape(spatial),
                        adc_quality=adc_q.reshape(spatial), dki_quality=dki_q.reshape(spatial),
                        clipped=clipped.reshape(spatial), record=record)


def _adc_maps(means, adc_idx, distinct, foreground, adc_b_values, warn: List[str]):
    """ADC and its R^2 over the flattened voxels, and the record entry."""
    n = means.shape[1]
    adc, quality = np.zeros(n, np.float32), np.zeros(n, np.float32)
    sub = means[adc_idx]
    fit_mask = foreground & (sub > 0).all(axis=0)
    voxels = np.flatnonzero(fit_mask)
    n_negative = 0
    for start in range(0, voxels.size, CHUNK_VOXELS):
        v = voxels[start:start + CHUNK_VOXELS]
        d, r2 = _fit_adc(sub[:, v], np.array([distinct[i] for i in adc_idx]) * _B_SCALE)
        n_negative += int(np.count_nonzero(d < 0))
        adc[v], quality[v] = np.maximum(d, 0.0) * _D_UNIT, r2
    entry = {
        "b_values": [distinct[i] for i in adc_idx],
        "b_values_rule": ("given (adc_b_values)" if adc_b_values is not None
                          else f"every acquired b <= {ADC_DEFAULT_MAX_B:g} s/mm^2 (default)"),
        "method": "log-linear least squares, S = S0 exp(-b ADC), unweighted over the distinct b-values",
        "quality": "R^2 of the log-linear fit",
        "n_fitted": int(voxels.size),
        "n_foreground_not_fitted": int(np.count_nonzero(foreground) - voxels.size),
        "n_negative_set_to_0": n_negative,
    }
    if entry["n_foreground_not_fitted"]:
        warn.append(f"ADC: {entry['n_foreground_not_fitted']} foreground voxel(s) with a non-positive mean signal "
                    f"at an ADC b-value not fitted (0 in ADC)")
    if len(adc_idx) == 2:
        warn.append("ADC: 2 b-values: the fit is exact and ADC_quality (R^2) is uninformative")
    return adc, quality, entry


def _geometry_difference(image: sitk.Image, reference: sitk.Image) -> Optional[str]:
    """How ``image``'s grid differs from ``reference``'s (None when equal within tolerance)."""
    if image.GetSize() != reference.GetSize():
        return f"size {image.GetSize()} != {reference.GetSize()}"
    spacing = np.array(reference.GetSpacing())
    if not np.allclose(image.GetSpacing(), spacing, rtol=SPACING_RTOL, atol=0):
        return f"spacing {image.GetSpacing()} != {reference.GetSpacing()}"
    shift = float(np.max(np.abs(np.subtract(image.GetOrigin(), reference.GetOrigin()))))
    if shift > ORIGIN_TOL_VOXELS * spacing.min():
        return f"origin {image.GetOrigin()} != {reference.GetOrigin()} (by {shift:.4g} mm)"
    if not np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return f"direction {image.GetDirection()} != {reference.GetDirection()}"
    return None


def _check_images(images: Sequence[sitk.Image], b: np.ndarray) -> None:
    if len(images) == 0:
        raise DiffusionFitError("no b-image given")
    for i, image in enumerate(images):
        if not isinstance(image, sitk.Image):
            raise DiffusionFitError(f"image {i} (b={b[i]:g}) is a {type(image).__name__}, not a SimpleITK image")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DiffusionFitError(f"image {i} (b={b[i]:g}) has {image.GetNumberOfComponentsPerPixel()} "
                                    f"components per voxel; one scalar image per b-value is needed")
    differing = []
    for i, image in enumerate(images[1:], start=1):
        why = _geometry_difference(image, images[0])
        if why:
            differing.append(f"b={b[i]:g} (image {i}): {why}")
    if differing:
        raise DiffusionFitError(f"the b-images do not share one geometry; compared with b={b[0]:g} (image 0): "
                                + "; ".join(differing))


def fit_diffusion_images(images: Sequence[sitk.Image], b_values, **kw) -> Tuple[Dict[str, sitk.Image], dict]:
    """:func:`fit_diffusion` on SimpleITK b-images that share one grid.

    Parameters
    ----------
    images : sequence of SimpleITK.Image
        One scalar image per b-value, all with the same size, spacing, origin and direction (within
        :data:`SPACING_RTOL`, :data:`ORIGIN_TOL_VOXELS` x the smallest spacing, :data:`DIRECTION_ATOL`).
    b_values : sequence of float
        b-value of each image, s/mm^2.
    **kw
        Options of :func:`fit_diffusion`; ``mask`` may be a SimpleITK image on the same grid.

    Returns
    -------
    maps : dict of str to SimpleITK.Image
        "ADC", "ADC_quality" (float32) and, when DKI was fitted, "Dapp", "Kapp", "DKI_quality" (float32)
        and "DKI_clipped" (uint8, 1 on a bound), each with the b-images' geometry.
    record : dict
        The fit's record (:attr:`DiffusionFit.record`) with the grid added under ``"geometry"``.
    """
    images = list(images)
    b = _check_b_values(b_values, len(images))
    _check_images(images, b)
    mask = kw.pop("mask", None)
    if isinstance(mask, sitk.Image):
        why = _geometry_difference(mask, images[0])
        if why:
            raise DiffusionFitError(f"the mask is not on the grid of the b-images: {why}")
        mask = sitk.GetArrayViewFromImage(mask) != 0
    signal = np.stack([sitk.GetArrayViewFromImage(image) for image in images])
    fit = fit_diffusion(signal, b, mask=mask, **kw)
    arrays = {"ADC": fit.adc, "ADC_quality": fit.adc_quality}
    if fit.dapp is not None:
        arrays.update({"Dapp": fit.dapp, "Kapp": fit.kapp, "DKI_quality": fit.dki_quality,
                       "DKI_clipped": fit.clipped.astype(np.uint8)})
    maps = {}
    for name in MAP_NAMES:
        if name in arrays:
            image = sitk.GetImageFromArray(arrays[name])
            image.CopyInformation(images[0])
            maps[name] = image
    record = dict(fit.record)
    ref = images[0]
    record["geometry"] = {"size": list(ref.GetSize()), "spacing": list(ref.GetSpacing()),
                          "origin": list(ref.GetOrigin()), "direction": list(ref.GetDirection())}
    return maps, record
