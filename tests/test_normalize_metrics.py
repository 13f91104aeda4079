"""Percentile normalisation and its inverse; metrics on the documented [0, 1] convention."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from confocalize.metrics import affine_match, compare, image_metrics, to_unit_range
from confocalize.normalize import normalize, percentile_normalization, percentile_sample


def test_normalisation_inverse_round_trips(rng):
    x = rng.gamma(2.0, 300.0, (64, 64)).astype(np.float32) + 100
    norm = percentile_normalization(x, 1, 99.8)
    np.testing.assert_allclose(norm.invert(norm.apply(x)), x, rtol=1e-5, atol=1e-2)
    y = norm.apply(x)
    assert np.percentile(y, 1) == pytest.approx(0, abs=1e-5)
    assert np.percentile(y, 99.8) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(("shape", "max_samples"), [((40, 50), 1 << 20), ((2, 90, 70), 500)])
def test_windowed_sample_holds_local_means_on_the_stride_grid(rng, shape, max_samples):
    x = rng.random(shape).astype(np.float32)
    sample = percentile_sample(x, max_samples, window=3)
    stride = max(1, math.ceil(math.sqrt(x.size / max_samples)))
    means = ndimage.uniform_filter(x, size=(1,) * (x.ndim - 2) + (3, 3))[..., 1:-1, 1:-1]  # valid 3x3 means
    np.testing.assert_allclose(sample, means[..., ::stride, ::stride][..., : sample.shape[-2], : sample.shape[-1]], atol=1e-6)
    lazy = percentile_sample(da.from_array(x, chunks=16), max_samples, window=3)
    np.testing.assert_allclose(lazy.compute(), sample, atol=1e-6)


def test_windowed_percentiles_follow_the_signal_not_the_noise(rng):
    """A noisy copy of an image gets nearly the clean image's range from local means, not from single pixels."""
    clean = np.zeros((128, 128), np.float32)
    clean[32:96, 32:96] = 100.0
    noisy = clean + rng.normal(0, 30, clean.shape).astype(np.float32)
    top = {w: percentile_normalization(percentile_sample(noisy, window=w), 1, 99.8).hi for w in (1, 5)}
    assert abs(top[5] - 100) < 0.5 * abs(top[1] - 100)


def test_constant_image_does_not_divide_by_zero():
    y = normalize(np.full((8, 8), 7.0), clip=True)
    assert np.all(np.isfinite(y))


def test_identical_images_score_perfectly(rng):
    x = rng.random((32, 32)).astype(np.float32)
    m = image_metrics(x, x)
    assert m["mse"] == 0 and m["ssim"] == pytest.approx(1) and m["psnr"] == float("inf") and m["nrmse"] == 0


def test_metrics_match_known_values(rng):
    target = np.full((32, 32), 0.5, np.float32)
    pred = target + 0.1
    m = image_metrics(pred, target)
    assert m["mse"] == pytest.approx(0.01, rel=1e-5)
    assert m["psnr"] == pytest.approx(20.0, rel=1e-5)
    assert m["nrmse"] == pytest.approx(0.2, rel=1e-5)


def test_affine_match_removes_intensity_scale_only(rng):
    target = rng.random((32, 32)).astype(np.float32)
    scaled = 0.3 * target + 0.2
    np.testing.assert_allclose(affine_match(scaled, target), target, atol=1e-5)
    result = compare(scaled * 1000, target)  # raw intensity scale is irrelevant after normalisation
    assert result["plain"]["ssim"] > 0.99 and result["affine"]["ssim"] > 0.99


def test_noise_lowers_every_score(rng):
    target = to_unit_range(rng.random((64, 64)))
    noisy = target + rng.normal(0, 0.2, target.shape)
    clean = compare(target, target)["plain"]
    bad = compare(noisy, target)["plain"]
    assert bad["ssim"] < clean["ssim"] and bad["psnr"] < clean["psnr"] and bad["mse"] > clean["mse"]
