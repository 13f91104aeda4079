"""Classical baselines and the reference pix2pix generator: fast checks on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from confocalize import baselines
from confocalize.metrics import compare
from confocalize.nets.reference import REFERENCE_GENERATOR, ReferenceUNet, build_reference
from confocalize.predict import predict_array
from confocalize.simulate import SimulationParams


def _structure(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Smooth blobs in [0, 1]."""
    image = ndimage.gaussian_filter(rng.random((size, size)), 4)
    return (image - image.min()) / (image.max() - image.min())


def test_gaussian_tuning_picks_a_sigma_that_lowers_the_error(rng: np.random.Generator) -> None:
    pairs = []
    for _ in range(2):
        clean = _structure(rng)
        pairs.append((clean + rng.normal(0, 0.2, clean.shape), clean))
    tuned = baselines.tune(baselines.gaussian, baselines.GAUSSIAN_GRID, pairs)
    noisy, clean = pairs[0]
    assert tuned.params["sigma"] >= 1.0
    assert tuned.score == max(score for _, score in tuned.grid)
    assert baselines.tune(baselines.gaussian, baselines.GAUSSIAN_GRID, pairs, metric="ssim").params["sigma"] >= 1.0
    assert baselines.tune(baselines.gaussian, baselines.GAUSSIAN_GRID, pairs, workers=2).grid == tuned.grid
    filtered = compare(baselines.gaussian(noisy, **tuned.params), clean)["plain"]
    assert filtered["mse"] < compare(noisy, clean)["plain"]["mse"] / 2


def test_nlm_denoises(rng: np.random.Generator) -> None:
    clean = _structure(rng)
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    assert baselines.noise_sigma(noisy - clean) == pytest.approx(0.1, rel=0.1)
    out = baselines.nlm(noisy, h=0.8, patch_size=5)
    assert compare(out, clean)["plain"]["ssim"] > compare(noisy, clean)["plain"]["ssim"] + 0.1


def test_bm3d_denoises_and_its_sigma_is_tuned(rng: np.random.Generator) -> None:
    clean = _structure(rng, 64)
    noisy = clean + rng.normal(0, 0.15, clean.shape)
    tuned = baselines.tune(baselines.bm3d, baselines.BM3D_GRID[1::3], [(noisy, clean)])
    assert tuned.params["sigma"] >= 0.08  # the weakest setting leaves most of the noise
    out = baselines.bm3d(noisy, **tuned.params)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert compare(out, clean)["plain"]["psnr"] > compare(noisy, clean)["plain"]["psnr"] + 6


def test_richardson_lucy_sharpens_a_blurred_bead() -> None:
    bead = np.zeros((63, 63))
    bead[31, 31] = 1.0
    psf = baselines.gaussian_psf(2.0)
    blurred = ndimage.convolve(bead, psf, mode="constant") + 1e-3
    out = baselines.richardson_lucy(blurred, psf, iterations=30)

    def width(image: np.ndarray) -> float:
        return float(np.sum(image > image.max() / 2))  # pixels above half maximum

    assert out.argmax() == bead.argmax()
    assert width(out) < width(blurred) / 3


def test_fitted_gaussian_psf_recovers_the_blur(rng: np.random.Generator) -> None:
    hq = [_structure(rng, 64) ** 4 for _ in range(2)]  # sparse bright structure
    pairs = [(ndimage.gaussian_filter(h, 1.5), h) for h in hq]
    assert baselines.fit_gaussian_psf(pairs) == 1.5


def test_widefield_psf_is_normalised_and_centred() -> None:
    psf = baselines.widefield_psf(SimulationParams(), radius_px=5)
    assert psf.shape == (11, 11)
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(psf.argmax(), psf.shape) == (5, 5)


def test_reference_unet_is_unet_256() -> None:
    net = build_reference(REFERENCE_GENERATOR)
    assert sum(p.numel() for p in net.parameters()) == 54_407_873  # as Isola et al.'s unet_256 with one channel in and out
    assert net.multiple == 256


def test_reference_unet_shapes_and_receptive_field() -> None:
    torch.manual_seed(0)
    net = ReferenceUNet(depth=3, ngf=4, dropout=0.0).eval()
    out = net(torch.rand(2, 1, 30, 44))
    assert out.shape == (2, 1, 30, 44)
    assert out.abs().max() <= 1  # tanh output
    x = torch.rand(1, 1, 96, 96, requires_grad=True)
    net(x)[0, 0, 50, 45].backward()
    rows, cols = np.nonzero(x.grad[0, 0].numpy())
    assert max(np.ptp(rows), np.ptp(cols)) + 1 <= net.receptive_field


@pytest.mark.filterwarnings("ignore::confocalize.predict.TilingWarning")  # small tiles on purpose: many seams
def test_reference_unet_tiles_like_the_whole_image() -> None:
    torch.manual_seed(0)
    net = ReferenceUNet(depth=3, ngf=4, dropout=0.0).eval()
    x = np.random.default_rng(0).random((1, 96, 160), dtype=np.float32)
    whole = predict_array(net, x, tile=10**4)
    tiled = predict_array(net, x, tile=64)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
