"""dataset_conversion.diffusion_fit: ADC / Dapp / Kapp from multi-b DWI.

References: the closed-form signal model S = S0 exp(-b D + b^2 D^2 K / 6) (noise-free and with
Rician noise), numpy's polyfit for the log-linear ADC, dipy's MeanDiffusionKurtosisModel (an
independent WLS implementation, fed a gradient table with three directions per shell), and scipy's
bounded least_squares for the refinement.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.optimize import least_squares

from dataset_conversion.diffusion_fit import (DiffusionFitError, DiffusionFitWarning, fit_diffusion,
                                              fit_diffusion_images)

B_RECTAL = np.array([0.0, 50.0, 800.0, 1500.0, 2000.0])     # the benchmark's protocol


def dki_signal(b, d_1e6, k, s0=1000.0):
    """Closed-form DKI signal; b (n_b,) in s/mm^2, D in 1e-6 mm^2/s (arrays broadcast over voxels)."""
    b = np.asarray(b, float)[:, None]
    d = np.atleast_1d(np.asarray(d_1e6, float)) * 1e-6
    return np.atleast_1d(s0) * np.exp(-b * d + b ** 2 * d ** 2 * np.atleast_1d(k) / 6.0)


def rician(clean, sigma, rng):
    return np.abs(clean + sigma * rng.standard_normal(clean.shape) + 1j * sigma * rng.standard_normal(clean.shape))


TRUE_D = np.array([700.0, 1000.0, 1350.0, 2000.0, 2700.0])
TRUE_K = np.array([1.3, 1.0, 0.8, 0.62, 0.3])
TRUE_S0 = np.array([300.0, 1000.0, 50.0, 2500.0, 800.0])


@pytest.mark.parametrize("refine", [True, False])
def test_noise_free_model_recovered(refine):
    signal = dki_signal(B_RECTAL, TRUE_D, TRUE_K, TRUE_S0)
    fit = fit_diffusion(signal, B_RECTAL, refine=refine, mask=np.ones(5, bool))
    np.testing.assert_allclose(fit.dapp, TRUE_D, rtol=1e-4)      # 1e-6 mm^2/s, not mm^2/s
    np.testing.assert_allclose(fit.kapp, TRUE_K, rtol=1e-4, atol=1e-5)   # the b^2 D^2 K / 6 term
    assert not fit.clipped.any()
    np.testing.assert_allclose(fit.dki_quality, 1.0, atol=1e-6)
    for name in ("adc", "dapp", "kapp", "adc_quality", "dki_quality"):
        assert getattr(fit, name).dtype == np.float32
    assert fit.record["dki"]["b_values"] == list(B_RECTAL)


def test_adc_units_and_default_b_values():
    b = np.array([0.0, 500.0, 1000.0])
    fit = fit_diffusion(np.exp(-b * 1e-3)[:, None] * np.array([[1000.0, 7.0]]), b, mask=np.ones(2, bool))
    np.testing.assert_allclose(fit.adc, 1000.0, rtol=1e-5)        # 1e-3 mm^2/s -> 1000 x 1e-6 mm^2/s
    np.testing.assert_allclose(fit.adc_quality, 1.0, atol=1e-6)
    # the default ADC set is b <= 1000: the log-linear fit of b = 0, 50, 800 only (numpy polyfit reference)
    signal = dki_signal(B_RECTAL, TRUE_D, TRUE_K, TRUE_S0)
    fit = fit_diffusion(signal, B_RECTAL, mask=np.ones(5, bool))
    expected = [-np.polyfit(B_RECTAL[:3], np.log(signal[:3, i]), 1)[0] * 1e6 for i in range(5)]
    np.testing.assert_allclose(fit.adc, expected, rtol=1e-5)
    assert fit.record["adc"]["b_values"] == [0.0, 50.0, 800.0]
    assert np.all(fit.adc < TRUE_D)                                 # kurtosis lowers the mono-exponential ADC
    # adc_b_values overrides the set
    fit = fit_diffusion(signal, B_RECTAL, adc_b_values=[0, 1500], mask=np.ones(5, bool))
    expected = np.log(signal[0] / signal[3]) / 1500 * 1e6
    np.testing.assert_allclose(fit.adc, expected, rtol=1e-5)
    assert any("uninformative" in w for w in fit.record["warnings"])


def test_rician_noise_snr30():
    """SNR 30 at b=0 (Rician, sigma = S0 / 30; about 8 at b=2000 for D=1000, K=1): over 3000 voxels the
    median Dapp is within 2 % and the median Kapp within 0.05 of the truth, and 90 % of voxels' Dapp
    lie within 25 %."""
    rng = np.random.default_rng(0)
    n = 3000
    for d_true, k_true in ((1000.0, 1.0), (1600.0, 0.7)):
        clean = dki_signal(B_RECTAL, np.full(n, d_true), np.full(n, k_true))
        fit = fit_diffusion(rician(clean, 1000.0 / 30, rng), B_RECTAL, mask=np.ones(n, bool))
        assert abs(np.median(fit.dapp) / d_true - 1) < 0.02
        assert abs(np.median(fit.kapp) - k_true) < 0.05
        lo, hi = np.percentile(fit.dapp, [5, 95])
        assert d_true * 0.75 < lo and hi < d_true * 1.25
        adc_clean = fit_diffusion(clean[:, :1], B_RECTAL, mask=np.ones(1, bool)).adc[0]
        assert abs(np.median(fit.adc) / adc_clean - 1) < 0.02
        assert fit.record["dki"]["clipped_fraction"] < 0.05


def _trace_protocol():
    """Two b=0 images and three orthogonal directions per shell (dipy rounds b-values to 100 s/mm^2
    here, so the shells are multiples of 100)."""
    shells = [600.0, 1000.0, 1500.0, 2000.0]
    bvals = np.array([0.0, 0.0] + [s for s in shells for _ in range(3)])
    bvecs = np.array([[0, 0, 0], [0, 0, 0]] + [list(v) for _ in shells for v in np.eye(3)], float)
    return bvals, bvecs


def test_matches_dipy_msdki():
    """Directional (anisotropic) noisy data: dipy's MSDKI powder-averages the directions and fits by
    WLS; our refine=False fit of the same images (replicates averaged, weights n_b S_b^2) is the same
    estimator. The refined fit differs (signal-domain least squares) but only by the noise."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.msdki import MeanDiffusionKurtosisModel

    bvals, bvecs = _trace_protocol()
    rng = np.random.default_rng(1)
    n = 400
    d = rng.uniform(600, 2500, n) * 1e-6
    k = rng.uniform(0.3, 1.3, n)
    factor = np.where(bvals[:, None] > 0, (bvecs @ np.array([0.8, 1.0, 1.25]))[:, None], 1.0)   # per direction
    clean = 1000 * np.exp(-bvals[:, None] * d * factor + bvals[:, None] ** 2 * (d * factor) ** 2 * k / 6)
    data = rician(clean, 10.0, rng)                                   # (n_images, n_voxels)
    ref = MeanDiffusionKurtosisModel(gradient_table(bvals, bvecs=bvecs)).fit(data.T)
    ours = fit_diffusion(data, bvals, refine=False, mask=np.ones(n, bool))
    assert not ours.clipped.any()
    np.testing.assert_allclose(ours.dapp, ref.msd * 1e6, rtol=1e-5)
    np.testing.assert_allclose(ours.kapp, ref.msk, rtol=1e-5, atol=1e-6)
    assert ours.record["b_values_distinct"][0] == {"b": 0.0, "n_images": 2}
    refined = fit_diffusion(data, bvals, mask=np.ones(n, bool))
    assert np.median(np.abs(refined.dapp / (ref.msd * 1e6) - 1)) < 0.01
    assert np.median(np.abs(refined.kapp - ref.msk)) < 0.02


def test_refinement_matches_scipy_bounded_least_squares():
    """Refinement = min sum_b (S0 exp(-bD + b^2 D^2 K/6) - S_b)^2 with D, K bounded; scipy's
    least_squares per voxel is the reference, including voxels whose K ends on a bound."""
    rng = np.random.default_rng(2)
    d_true = np.array([900.0, 1200.0, 1800.0, 800.0, 1500.0, 2200.0])
    k_true = np.array([0.9, 1.1, 0.5, 1.4, 0.05, 0.7])
    data = rician(dki_signal(B_RECTAL, d_true, k_true), 40.0, rng)
    bounds = (0.0, 1.2)
    fit = fit_diffusion(data, B_RECTAL, mask=np.ones(6, bool), k_bounds=bounds)
    beta = B_RECTAL / 1000
    for i in range(6):
        y = data[:, i] / data[0, i]

        def resid(p, y=y):
            return np.exp(p[0] - beta * p[1] + beta ** 2 * p[1] ** 2 * p[2] / 6) - y
        best = least_squares(resid, [0.0, 1.0, 0.6], bounds=([-5, 1e-3, bounds[0]], [5, 5.0, bounds[1]]),
                             xtol=1e-14, ftol=1e-14, gtol=1e-14)
        assert fit.dapp[i] == pytest.approx(best.x[1] * 1000, rel=1e-3)
        assert fit.kapp[i] == pytest.approx(best.x[2], abs=1e-3)
        on_bound = best.x[2] <= bounds[0] + 1e-6 or best.x[2] >= bounds[1] - 1e-6
        assert bool(fit.clipped[i]) == on_bound
    assert fit.clipped.any()


@pytest.mark.parametrize("refine", [True, False])
def test_bounds_and_clipping(refine):
    signal = dki_signal(B_RECTAL, [1000.0, 1000.0, 1000.0], [1.0, 2.0, 0.3])
    fit = fit_diffusion(signal, B_RECTAL, mask=np.ones(3, bool), k_bounds=(0.5, 1.5), refine=refine)
    assert fit.kapp[0] == pytest.approx(1.0, abs=1e-4) and not fit.clipped[0]
    assert fit.kapp[1] == pytest.approx(1.5) and fit.clipped[1]
    assert fit.kapp[2] == pytest.approx(0.5) and fit.clipped[2]
    record = fit.record["dki"]
    assert record["bounds"] == {"Dapp": [1.0, 5000.0], "Kapp": [0.5, 1.5]}
    assert record["n_clipped"] == 2 and record["clipped_fraction"] == pytest.approx(2 / 3)
    with pytest.raises(DiffusionFitError, match="k_bounds"):
        fit_diffusion(signal, B_RECTAL, k_bounds=(1.0, 0.5))


def test_fewer_than_three_b_values_no_dki():
    b = np.array([0.0, 800.0])
    with pytest.warns(DiffusionFitWarning, match="NO DKI"):
        fit = fit_diffusion(dki_signal(b, [1000.0], [1.0]), b, mask=np.ones(1, bool))
    assert fit.dapp is None and fit.kapp is None and fit.dki_quality is None and fit.clipped is None
    assert fit.record["dki"]["fitted"] is False and "NO DKI" in fit.record["warnings"][-1]
    assert fit.adc[0] > 0
    # three b-values acquired, but only two <= max_b
    b = np.array([0.0, 800.0, 1500.0, 2000.0])
    with pytest.warns(DiffusionFitWarning, match=r"max_b=1000 s/mm\^2, acquired \[0, 800\]"):
        fit = fit_diffusion(dki_signal(b, [1000.0], [1.0]), b, max_b=1000.0, mask=np.ones(1, bool))
    assert fit.dapp is None


def test_missing_low_b_and_too_few_adc_b_values_raise():
    b = np.array([500.0, 1000.0, 1500.0])
    with pytest.raises(DiffusionFitError, match=r"no b=0 or low-b image.*\[500, 1000, 1500\]"):
        fit_diffusion(dki_signal(b, [1000.0], [1.0]), b)
    b = np.array([0.0, 1500.0, 2000.0])
    with pytest.raises(DiffusionFitError, match="at least 2 distinct b-values <= 1000"):
        fit_diffusion(dki_signal(b, [1000.0], [1.0]), b)
    with pytest.raises(DiffusionFitError, match=r"adc_b_values \[1000\] s/mm\^2 not acquired"):
        fit_diffusion(dki_signal(b, [1000.0], [1.0]), b, adc_b_values=[0, 1000])
    with pytest.raises(DiffusionFitError, match="3 b-value"):
        fit_diffusion(np.ones((2, 4)), b)
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(DiffusionFitError, match=r"image\(s\) \[1\].*NaN"):
        fit_diffusion(bad, b)


def test_background_and_nonpositive_voxels_are_zero_never_nan():
    signal = dki_signal(B_RECTAL, np.full(6, 1200.0), np.full(6, 0.9))
    signal[:, 0] = 0.0                  # background
    signal[:, 1] = 1.0                  # faint (below 10 % of the 99th percentile)
    signal[3, 2] = 0.0                  # a zero at b=1500: not in the ADC set, left out of the DKI fit
    signal[1, 3] = -5.0                 # negative at b=50: left out of both
    fit = fit_diffusion(signal, B_RECTAL)
    for name in ("adc", "dapp", "kapp", "adc_quality", "dki_quality"):
        values = getattr(fit, name)
        assert np.isfinite(values).all()
        assert values[0] == 0 and values[1] == 0 and values[3] == 0
    assert fit.adc[2] > 0 and fit.dapp[2] == 0
    assert fit.dapp[4] == pytest.approx(1200.0, rel=1e-4)
    rec = fit.record
    assert rec["foreground"]["n_foreground"] == 4
    assert rec["adc"]["n_fitted"] == 3 and rec["adc"]["n_foreground_not_fitted"] == 1
    assert rec["dki"]["n_fitted"] == 2 and rec["dki"]["n_foreground_not_fitted"] == 2
    json.dumps(rec)
    with pytest.raises(DiffusionFitError, match="empty mask"):
        fit_diffusion(signal, B_RECTAL, mask=np.zeros(6, bool))
    with pytest.raises(DiffusionFitError, match="mask has shape"):
        fit_diffusion(signal, B_RECTAL, mask=np.zeros(5, bool))


def test_replicates_are_averaged():
    clean = dki_signal(B_RECTAL, [1100.0, 900.0], [0.8, 1.1])
    split = np.concatenate([clean, clean[2:3] * 0.9, clean[2:3] * 1.1])     # b=800 three times, mean unchanged
    b = np.concatenate([B_RECTAL, [800.0, 800.0]])
    fit = fit_diffusion(split, b, refine=False, mask=np.ones(2, bool))
    ref = fit_diffusion(clean, B_RECTAL, refine=False, mask=np.ones(2, bool))
    np.testing.assert_allclose(fit.adc, ref.adc, rtol=1e-5)
    assert [g["n_images"] for g in fit.record["b_values_distinct"]] == [1, 1, 3, 1, 1]
    # b-values within 5 s/mm^2 are one b-value (nominal vs effective b of the directions): their mean
    fit = fit_diffusion(split, np.concatenate([B_RECTAL, [801.0, 802.0]]), mask=np.ones(2, bool))
    assert fit.record["b_values_distinct"][2] == {"b": pytest.approx(801.0), "n_images": 3}


def _images(b_values, shape=(4, 5, 6)):
    rng = np.random.default_rng(3)
    d = rng.uniform(800, 2000, shape)
    k = rng.uniform(0.5, 1.2, shape)
    signal = dki_signal(b_values, d.ravel(), k.ravel()).reshape((len(b_values),) + shape)
    images = []
    for plane in signal:
        image = sitk.GetImageFromArray(plane.astype(np.float32))
        image.SetSpacing((2.0, 2.0, 4.0))
        image.SetOrigin((-10.0, 5.0, 30.0))
        image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
        images.append(image)
    return images, d, k


def test_fit_diffusion_images_geometry_and_names():
    images, d, k = _images(B_RECTAL)
    maps, record = fit_diffusion_images(images, B_RECTAL)
    assert list(maps) == ["ADC", "Dapp", "Kapp", "ADC_quality", "DKI_quality", "DKI_clipped"]
    for image in maps.values():
        assert image.GetSize() == images[0].GetSize() and image.GetOrigin() == images[0].GetOrigin()
        assert image.GetSpacing() == images[0].GetSpacing() and image.GetDirection() == images[0].GetDirection()
    np.testing.assert_allclose(sitk.GetArrayFromImage(maps["Dapp"]), d, rtol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(maps["Kapp"]), k, rtol=1e-3, atol=1e-3)
    assert maps["DKI_clipped"].GetPixelID() == sitk.sitkUInt8
    assert record["geometry"]["spacing"] == [2.0, 2.0, 4.0]
    json.dumps(record)
    mask = sitk.Image(images[0].GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(images[0])
    mask[1, 1, 1] = 1
    maps, record = fit_diffusion_images(images, B_RECTAL, mask=mask)
    assert record["adc"]["n_fitted"] == 1 and np.count_nonzero(sitk.GetArrayFromImage(maps["ADC"])) == 1
    with pytest.warns(DiffusionFitWarning):
        maps, _ = fit_diffusion_images(images[:2], B_RECTAL[:2])
    assert sorted(maps) == ["ADC", "ADC_quality"]


def test_fit_diffusion_images_names_the_differing_b_values():
    images, _, _ = _images(B_RECTAL)
    images[2].SetOrigin((-10.0, 5.0, 32.0))
    images[4].SetSpacing((2.0, 2.0, 5.0))
    with pytest.raises(DiffusionFitError, match=r"b=800 \(image 2\): origin.*b=2000 \(image 4\): spacing"):
        fit_diffusion_images(images, B_RECTAL)
    images, _, _ = _images(B_RECTAL)
    with pytest.raises(DiffusionFitError, match="4 b-value"):
        fit_diffusion_images(images, B_RECTAL[:4])
