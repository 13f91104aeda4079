"""Percentile normalisation and its inverse (CSBDeep style); stored in every model package."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

EPS = 1e-8
PERCENTILE_SAMPLES = 1 << 20  # values an inference-time percentile estimate reads at most (see percentile_sample)
Array = TypeVar("Array")


@dataclass(frozen=True)
class Normalization:
    """Affine map ``(x - lo) / (hi - lo)`` that sends the chosen percentiles to 0 and 1."""

    lo: float
    hi: float

    @property
    def scale(self) -> float:
        """Width of the mapped intensity range (never zero)."""
        return max(self.hi - self.lo, EPS)

    def apply(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Map raw intensities to normalised float32 units (into ``out``, float32 of ``x``'s shape, if given)."""
        y = np.subtract(x, np.float32(self.lo), out=out, dtype=np.float32)
        y /= np.float32(self.scale)
        return y

    def invert(self, y: np.ndarray) -> np.ndarray:
        """Map normalised units back to raw intensities (float32)."""
        return (np.asarray(y, dtype=np.float32) * self.scale + self.lo).astype(np.float32)


def percentile_normalization(x: np.ndarray, low: float = 1.0, high: float = 99.8) -> Normalization:
    """The :class:`Normalization` that maps the ``low``/``high`` percentiles of ``x`` to 0/1."""
    lo, hi = np.percentile(np.asarray(x, dtype=np.float32), [low, high])
    if hi <= lo:  # constant (or nearly) image: fall back to its full range
        lo, hi = float(np.min(x)), float(np.max(x))
    return Normalization(float(lo), float(hi))


def percentile_sample(x: Array, max_samples: int = PERCENTILE_SAMPLES, window: int = 1) -> Array:
    """Values whose percentiles stand for ``x``'s: every ``s``-th row and column (all planes), ``s`` the
    smallest stride leaving about ``max_samples`` values, each the mean of the ``window`` x ``window``
    pixels from there on (``window`` 1: the pixels themselves).

    ``x`` itself when it is no larger and ``window`` is 1. Slicing and sums only: numpy, zarr and dask
    arrays give views or lazy arrays, so an image larger than memory is never loaded to estimate its
    percentiles. Local means make a noisy image's range follow its signal rather than its noise peaks.
    """
    stride = max(1, math.ceil(math.sqrt(math.prod(x.shape) / max_samples)))  # type: ignore[attr-defined]
    window = max(1, min(window, *x.shape[-2:]))  # type: ignore[attr-defined]
    if window == 1:
        return x[..., ::stride, ::stride]  # type: ignore[index]
    ny, nx = ((n - window) // stride + 1 for n in x.shape[-2:])  # type: ignore[attr-defined]
    total = None
    for dy in range(window):
        for dx in range(window):
            part = x[..., dy : dy + (ny - 1) * stride + 1 : stride, dx : dx + (nx - 1) * stride + 1 : stride]  # type: ignore[index]
            total = part.astype(np.float32) if total is None else total + part
    return total / np.float32(window * window)  # type: ignore[operator]


def sampled_normalization(x: np.ndarray, low: float, high: float, window: int = 1) -> Normalization:
    """The :class:`Normalization` of one channel (its whole stack) as training and enhance make it:
    the percentiles of :func:`percentile_sample` (``window``-pixel local means; exact up to a million values)."""
    return percentile_normalization(percentile_sample(x, window=window), low, high)


def normalize(x: np.ndarray, low: float = 1.0, high: float = 99.8, clip: bool = False) -> np.ndarray:
    """Percentile-normalise ``x`` to float32 (optionally clipped to [0, 1])."""
    y = percentile_normalization(x, low, high).apply(x)
    return np.clip(y, 0.0, 1.0) if clip else y
