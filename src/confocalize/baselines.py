"""Classical restoration baselines: what a user can do today without a trained model.

Every method maps a raw 2D LQ image to a float32 image on its own intensity scale (metrics
re-normalise each image, see :mod:`confocalize.metrics`). Inputs are first percentile-normalised
(1st -> 0, 99.8th -> 1) so that parameters such as the NLM filter strength mean the same on every
image. Parameters are chosen on training pairs only with :func:`tune`, which maximises a median
metric of :func:`confocalize.metrics.compare` (PSNR by default: least squares) over a grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import bm3d as bm3d_package
import numpy as np
import psfmodels
from scipy import ndimage
from skimage import restoration

from confocalize.metrics import compare
from confocalize.normalize import normalize
from confocalize.simulate import SimulationParams

Method = Callable[..., np.ndarray]
Pair = tuple[np.ndarray, np.ndarray]  # (raw LQ, raw HQ) on one grid

GAUSSIAN_GRID = [{"sigma": s} for s in (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)]
NLM_GRID = [{"h": h, "patch_size": p} for h in (0.4, 0.6, 0.8, 1.0, 1.3, 1.7) for p in (5, 7)]  # h in noise sigmas
RL_GRID = [{"iterations": n} for n in (1, 2, 5, 10, 20, 40)]
BM3D_GRID = [{"sigma": s} for s in (0.03, 0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.32)]  # noise sigma of the normalised image
PSF_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)  # px, candidates of a fitted Gaussian PSF
RL_FLOOR = 1e-3  # RL needs positive data: normalised intensities are clipped to at least this


def _unit(image: np.ndarray) -> np.ndarray:
    """Percentile-normalised float32 (1st -> 0, 99.8th -> 1), not clipped."""
    return normalize(np.asarray(image, dtype=np.float32), 1.0, 99.8)


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass filter of standard deviation ``sigma`` pixels."""
    return ndimage.gaussian_filter(_unit(image), sigma)


def nlm(image: np.ndarray, h: float, patch_size: int, patch_distance: int = 6) -> np.ndarray:
    """Non-local means (scikit-image, fast mode); ``h`` in units of the estimated noise sigma."""
    x = _unit(image)
    sigma = noise_sigma(x)
    return restoration.denoise_nl_means(
        x, h=h * sigma, sigma=sigma, patch_size=patch_size, patch_distance=patch_distance, fast_mode=True
    ).astype(np.float32)


def bm3d(image: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D (Mäkinen et al., both stages) with white-noise ``sigma`` on the normalised image.

    The noise of a fluorescence camera depends on the signal, so no single estimated sigma fits an
    image: ``sigma`` is tuned on training pairs like the other methods' parameters.
    """
    return np.asarray(bm3d_package.bm3d(_unit(image), sigma), dtype=np.float32)


def noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of white noise in ``image`` (Immerkær 1996: a Laplacian difference that cancels smooth signal)."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = ndimage.convolve(np.asarray(image, dtype=np.float64), kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.mean(np.abs(response)) / 6)


def richardson_lucy(image: np.ndarray, psf: np.ndarray, iterations: int) -> np.ndarray:
    """Richardson-Lucy deconvolution with ``psf`` (normalised to sum 1) for ``iterations`` steps."""
    x = np.clip(_unit(image), RL_FLOOR, None)
    return restoration.richardson_lucy(x, psf / psf.sum(), num_iter=iterations, clip=False).astype(np.float32)


def gaussian_psf(sigma: float) -> np.ndarray:
    """A normalised 2D Gaussian kernel reaching 4 sigma from its centre (odd edge)."""
    radius = max(1, int(np.ceil(4 * sigma)))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    kernel = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def widefield_psf(params: SimulationParams, radius_px: int = 7, oversampling: int = 3) -> np.ndarray:
    """In-focus wide-field PSF of the simulator's LQ optics on its pixel grid, integrated over each pixel."""
    edge = 2 * radius_px + 1
    fine = psfmodels.make_psf(
        z=[0.0], nx=edge * oversampling, dxy=params.lq_pixel_size / oversampling, NA=params.lq_na,
        wvl=params.emission_wavelength, ns=params.refractive_index, ni=params.refractive_index,
        ni0=params.refractive_index, model=params.psf_model,
    )[0]  # fmt: skip
    binned = fine.reshape(edge, oversampling, edge, oversampling).sum(axis=(1, 3))
    return (binned / binned.sum()).astype(np.float32)


def fit_gaussian_psf(pairs: Sequence[Pair], sigmas: Sequence[float] = PSF_SIGMAS) -> float:
    """The Gaussian blur (px) that best turns HQ into LQ: least median MSE after an affine intensity match."""
    errors = [np.median([compare(ndimage.gaussian_filter(_unit(hq), s), lq)["affine"]["mse"] for lq, hq in pairs]) for s in sigmas]
    return float(sigmas[int(np.argmin(errors))])


@dataclass(frozen=True)
class Tuned:
    """The best parameters of a method on the tuning pairs, their median score, and every grid point's."""

    params: dict[str, Any]
    score: float
    metric: str
    grid: list[tuple[dict[str, Any], float]]


def tune(method: Method, grid: Sequence[Mapping[str, Any]], pairs: Sequence[Pair], metric: str = "psnr", workers: int = 1) -> Tuned:
    """Grid search of ``method``'s parameters maximising the median plain ``metric`` ("psnr" or "ssim") on ``pairs``.

    ``workers`` > 1 scores the grid points in that many processes (``method`` must be picklable).
    """
    if not grid or not pairs:
        raise ValueError("tuning needs a non-empty grid and at least one pair")
    if metric not in ("psnr", "ssim"):
        raise ValueError(f"tuning maximises 'psnr' or 'ssim', not {metric!r}")
    score = partial(_median_score, method, pairs=pairs, metric=metric)
    params = [dict(p) for p in grid]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(params))) as pool:
            scores = list(pool.map(score, params))
    else:
        scores = [score(p) for p in params]
    scored = list(zip(params, scores, strict=True))
    best = max(scored, key=lambda item: item[1])
    return Tuned(best[0], best[1], metric, scored)


def _median_score(method: Method, params: Mapping[str, Any], pairs: Sequence[Pair], metric: str) -> float:
    """Median plain ``metric`` of ``method(lq, **params)`` against ``hq`` over ``pairs``."""
    return float(np.median([compare(method(lq, **params), hq)["plain"][metric] for lq, hq in pairs]))
