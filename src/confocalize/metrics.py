"""Image-quality metrics, computed in exactly one place so every printed number means the same.

Convention (``NORMALISATION``): each image is normalised on its own, the 0.1th percentile to 0 and
the 99.9th to 1, clipped to [0, 1]; metrics use ``data_range=1``. The affine-matched variant first
fits ``a * x + b`` to the target by least squares (CSBDeep's ``normalize_minmse`` idea), so that a
method is not punished for its intensity scale alone. Flicker of a time-lapse (:func:`frame_change`)
uses the same normalisation, once over the whole movie.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from skimage.metrics import structural_similarity

from confocalize.normalize import normalize

LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9
DATA_RANGE = 1.0
NORMALISATION = (
    f"each image percentile-normalised on its own ({LOW_PERCENTILE}th -> 0, {HIGH_PERCENTILE}th -> 1), "
    f"clipped to [0, 1]; data_range={DATA_RANGE:g}"
)
METRIC_NAMES = ("mse", "ssim", "psnr", "nrmse")


def to_unit_range(x: np.ndarray) -> np.ndarray:
    """Apply the metric normalisation: percentiles to [0, 1], clipped, float32."""
    return normalize(x, LOW_PERCENTILE, HIGH_PERCENTILE, clip=True)


def affine_match(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``a * x + b`` with ``a, b`` minimising the squared error to ``target``, clipped to [0, 1]."""
    x64, t64 = x.astype(np.float64).ravel(), target.astype(np.float64).ravel()
    var = x64.var()
    a = np.mean((x64 - x64.mean()) * (t64 - t64.mean())) / var if var > 0 else 0.0
    b = t64.mean() - a * x64.mean()
    return np.clip(a * x + b, 0.0, 1.0).astype(np.float32)


def image_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE, SSIM, PSNR (dB) and NRMSE of two images already in [0, 1] (``data_range=1``)."""
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    pred = pred.astype(np.float64)
    target = target.astype(np.float64)
    mse = float(np.mean((pred - target) ** 2))
    psnr = float(10 * np.log10(DATA_RANGE**2 / mse)) if mse > 0 else float("inf")
    rms_target = float(np.sqrt(np.mean(target**2)))
    nrmse = float(np.sqrt(mse) / rms_target) if rms_target > 0 else float("inf")
    ssim = float(structural_similarity(pred, target, data_range=DATA_RANGE))
    return {"mse": mse, "ssim": ssim, "psnr": psnr, "nrmse": nrmse}


def compare(pred_raw: np.ndarray, target_raw: np.ndarray) -> dict[str, dict[str, float]]:
    """Metrics of raw images under the project's normalisation, plain and affine-matched.

    Returns ``{"plain": {...}, "affine": {...}}``, each with the keys of :data:`METRIC_NAMES`.
    """
    pred = to_unit_range(pred_raw)
    target = to_unit_range(target_raw)
    return {"plain": image_metrics(pred, target), "affine": image_metrics(affine_match(pred, target), target)}


def frame_change(movie: np.ndarray, drift_px: tuple[int, int] = (0, 0)) -> dict[str, float]:
    """How much a ``(T, Y, X)`` movie changes from frame to frame: the mean and median over pixels and frame pairs
    of ``|x_t - x_{t-1}|``, the movie normalised once as a whole (:func:`to_unit_range`: bleaching counts, a
    frame's own brightness jump too).

    ``drift_px`` (dy, dx): whole pixels the sample moves per frame; frame ``t - 1`` is moved by it before the
    difference, on the pixels both frames hold.
    """
    if movie.ndim != 3 or movie.shape[0] < 2:
        raise ValueError(f"expected a (T, Y, X) movie of 2 or more frames, got shape {movie.shape}")
    x = to_unit_range(movie)
    (dy, dx), (h, w) = drift_px, x.shape[1:]
    now = x[1:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    before = x[:-1, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    change = np.abs(now - before)
    return {"mean": float(change.mean(dtype=np.float64)), "median": float(np.median(change))}


def relative_change(lq: Mapping[str, float | None], generated: Mapping[str, float | None]) -> dict[str, float | None]:
    """``(generated - lq) / |lq|`` per metric; ``None`` where a value is missing or the LQ value is 0 or not finite."""
    change: dict[str, float | None] = {}
    for m in METRIC_NAMES:
        before, after = lq[m], generated[m]
        if before is None or after is None or before == 0 or not np.isfinite(before):
            change[m] = None
        else:
            change[m] = (after - before) / abs(before)
    return change
