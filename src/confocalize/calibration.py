"""From the spread of test-time-augmented outputs to a calibrated uncertainty, and how well it predicts the error.

numpy and scipy only. The calibrated uncertainty of a pixel is the square root of a variance model,

    u² = (scale · spread)² + signal · max(mean, 0) + floor²

``spread`` being the standard deviation over the 8 dihedral outputs smoothed over :data:`SMOOTH_PX`
(the model's own disagreement: where it paints structure the input does not fix), ``mean`` the
test-time-augmented output (errors that grow with the signal, as photon noise in input and target
does) and ``floor`` an error present everywhere. The three non-negative coefficients are fitted by
least squares to the squared errors of validation pixels (:func:`fit`). Errors are in the model's
output units: the HQ image normalised as training normalises its targets (each channel over its
whole stack, the package's percentiles), so an uncertainty of 0.02 is 2 % of the normalised HQ
range. Calibrated means that in the reliability bins the observed RMS error equals the RMS of ``u``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, optimize, stats

from confocalize.config import NormalizationConfig
from confocalize.normalize import sampled_normalization
from confocalize.stacks import as_czyx

MAX_PIXELS = 1 << 20  # pixels per image the rank correlation reads at most (an even subsample beyond)
N_BINS = 10  # reliability bins, equally populated by predicted uncertainty
SMOOTH_PX = 1.5  # Gaussian sigma (pixels, in-plane) applied to the spread: per-pixel spreads of 8 samples are noisy
SMOOTH_TRUNCATE = 4.0  # the Gaussian's extent in sigmas (scipy's default)
SMOOTH_RADIUS = int(SMOOTH_TRUNCATE * SMOOTH_PX + 0.5)  # pixels of neighbours a smoothed value depends on (chunked enhance keeps that margin)
FIT_PIXELS = 200_000  # pixels per image the fit reads at most


def smooth(spread: np.ndarray) -> np.ndarray:
    """The spread smoothed in-plane over :data:`SMOOTH_PX` (a new float32 array)."""
    sigma = (0.0,) * (spread.ndim - 2) + (SMOOTH_PX, SMOOTH_PX)
    return ndimage.gaussian_filter(np.asarray(spread, dtype=np.float32), sigma, output=np.float32, truncate=SMOOTH_TRUNCATE)


def calibrated(spread: np.ndarray, mean: np.ndarray, scale: float, signal: float, floor: float) -> np.ndarray:
    """``sqrt((scale·spread)² + signal·max(mean, 0) + floor²)``; overwrites ``spread`` when it is float32."""
    u = np.asarray(spread, dtype=np.float32)
    u *= np.float32(scale)
    u *= u
    if signal:
        u += np.float32(signal) * np.maximum(mean, 0, dtype=np.float32)
    u += np.float32(floor * floor)
    return np.sqrt(u, out=u)


def fit(spreads: Sequence[np.ndarray], means: Sequence[np.ndarray], errors: Sequence[np.ndarray], terms: Sequence[str] = ("spread", "signal", "floor")) -> dict[str, float]:
    """Non-negative least squares of the squared errors on the variance model's ``terms``; returns
    ``{"scale", "signal", "floor"}`` (0 for terms left out)."""
    columns = {
        "spread": lambda s, m: np.square(s, dtype=np.float64),
        "signal": lambda s, m: np.maximum(m, 0).astype(np.float64),
        "floor": lambda s, m: np.ones(s.size),
    }
    rows = [np.stack([columns[t](_subsample(s, FIT_PIXELS), _subsample(m, FIT_PIXELS)) for t in terms], axis=1)
            for s, m in zip(spreads, means, strict=True)]  # fmt: skip
    target = np.concatenate([np.square(_subsample(e, FIT_PIXELS), dtype=np.float64) for e in errors])
    weights, _ = optimize.nnls(np.concatenate(rows), target)
    coef = dict(zip(terms, weights.tolist(), strict=True))
    if coef.get("spread", 0) <= 0 and coef.get("signal", 0) <= 0 and coef.get("floor", 0) <= 0:
        raise ValueError("the uncertainty model fits no variance; nothing to calibrate")
    return {"scale": float(np.sqrt(coef.get("spread", 0.0))), "signal": float(coef.get("signal", 0.0)), "floor": float(np.sqrt(coef.get("floor", 0.0)))}


def absolute_error(prediction: np.ndarray, hq: np.ndarray, axes: str, normalization: NormalizationConfig) -> np.ndarray:
    """``|prediction - HQ|`` in output units, float32 of the prediction's shape (HQ normalised per channel)."""
    target = np.stack([sampled_normalization(c, normalization.low, normalization.high).apply(c) for c in as_czyx(hq, axes)])
    error = np.abs(as_czyx(np.asarray(prediction, dtype=np.float32), axes) - target)
    return error.reshape(np.shape(prediction))


def spearman(uncertainty: np.ndarray, error: np.ndarray) -> float:
    """Spearman rank correlation of two same-shape arrays over their pixels (subsampled to :data:`MAX_PIXELS`)."""
    u, e = _subsample(uncertainty), _subsample(error)
    if np.ptp(u) == 0 or np.ptp(e) == 0:
        return float("nan")
    return float(stats.spearmanr(u, e).statistic)


def reliability(uncertainties: Sequence[np.ndarray], errors: Sequence[np.ndarray], bins: int = N_BINS) -> list[dict[str, float]]:
    """Pixels of all images binned by predicted uncertainty (equal counts): per bin the RMS predicted
    uncertainty, the observed RMS error and the pixel count."""
    u = np.concatenate([_subsample(x) for x in uncertainties])
    e = np.concatenate([_subsample(x) for x in errors])
    order = np.argsort(u, kind="stable")
    return [
        {"predicted_rms": _rms(u[part]), "observed_rms": _rms(e[part]), "pixels": int(part.size)}
        for part in np.array_split(order, bins)
        if part.size
    ]


def calibration_error(table: Sequence[dict[str, float]]) -> float:
    """Pixel-weighted mean of ``|observed / predicted - 1|`` over reliability bins (0: perfectly calibrated)."""
    weights = np.array([b["pixels"] for b in table], dtype=np.float64)
    ratios = np.array([b["observed_rms"] / b["predicted_rms"] if b["predicted_rms"] > 0 else np.nan for b in table])
    ok = np.isfinite(ratios)
    return float(np.sum(weights[ok] * np.abs(ratios[ok] - 1)) / np.sum(weights[ok]))


def _subsample(x: np.ndarray, limit: int = MAX_PIXELS) -> np.ndarray:
    """At most ``limit`` values of ``x``, evenly strided over its pixels."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    return flat[:: max(1, -(-flat.size // limit))]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
