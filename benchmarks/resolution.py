"""Fourier ring correlation (FRC): how far in spatial frequency an image agrees with a reference.

Pixel metrics reward smoothness; FRC asks up to which frequency the two images still correlate.
The resolution is the period at which the FRC first falls below the fixed 1/7 threshold.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 1 / 7
FIRST_RING = 2  # rings below this (the lowest frequencies) never count as a crossing


def frc_curve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ring frequencies (cycles/pixel, up to Nyquist 0.5) and the FRC of two 2D images.

    Both are cropped to their central square, mean-subtracted and Hann-windowed; rings are one
    frequency step (1/edge) wide.
    """
    fa, fb = (np.fft.fft2(_prepare(x)) for x in (a, b))
    n = fa.shape[0]
    f = np.fft.fftfreq(n)
    ring = np.rint(np.hypot(f[:, None], f[None, :]) * n).astype(np.int64).ravel()
    keep = ring <= n // 2
    ring = ring[keep]

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring, values.ravel()[keep], minlength=n // 2 + 1)

    cross = ring_sum(np.real(fa * np.conj(fb)))
    power = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        frc = np.where(power > 0, cross / power, 0.0)
    return np.arange(n // 2 + 1) / n, frc


def _prepare(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"FRC needs 2D images, got shape {x.shape}")
    n = min(x.shape)
    y0, x0 = (x.shape[0] - n) // 2, (x.shape[1] - n) // 2
    x = x[y0 : y0 + n, x0 : x0 + n]
    window = np.hanning(n)
    return (x - x.mean()) * np.outer(window, window)


def frc_resolution(a: np.ndarray, b: np.ndarray, pixel_size: float | None = None) -> dict[str, float | None]:
    """Resolution of ``a`` against ``b`` at the 1/7 threshold: period in pixels (and µm with ``pixel_size``).

    The crossing frequency is interpolated linearly between rings; a curve that never falls below
    the threshold gives the Nyquist period, 2 pixels.
    """
    freqs, frc = frc_curve(a, b)
    below = np.flatnonzero(frc[FIRST_RING:] < THRESHOLD)
    if below.size == 0:
        crossing = freqs[-1]
    else:
        k = FIRST_RING + int(below[0])
        f0, f1, c0, c1 = freqs[k - 1], freqs[k], frc[k - 1], frc[k]
        crossing = f1 if c0 == c1 else f0 + (c0 - THRESHOLD) / (c0 - c1) * (f1 - f0)
    period = float(1 / crossing)
    return {"px": period, "um": period * pixel_size if pixel_size else None}
