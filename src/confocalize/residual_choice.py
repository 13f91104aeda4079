"""Whether the generator should learn a correction of its input (``generator.residual: auto``).

A residual U-Net (output = input + learned correction) starts from the input, which is a head start
when the input is already the target up to noise (denoising with the same optics: W2S, +1.8 dB at
600 steps) and a handicap when it is not (wide-field -> confocal, where the input's haze and
brightness differ from the target: the demo's pairs, SSIM 0.38 instead of 0.87 at 300 steps).

The choice is read from the training pairs: how much of the normalised target's variance the
lightly blurred (Gaussian σ 1 px, to take out the noise) normalised input already explains,
``R² = 1 - mean((blur(lq) - hq)²) / var(hq)``, median over images. Measured with the default
normalisation: W2S avg1 -> avg400 0.96, DSCM confocal -> STED 0.60, the demo's simulated
wide-field -> confocal -2.0. At or above :data:`RESIDUAL_R2` the U-Net is residual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from confocalize.data import PairImages
from confocalize.nets.unet import centre_planes

RESIDUAL_R2 = 0.8  # between W2S (0.96) and confocal -> STED (0.60); see the module docstring
BLUR_SIGMA = 1.0  # px: enough to take the input's pixel noise out, little enough to keep its structure
MAX_EDGE = 512  # px: a centre crop of each image is plenty for a median and keeps the check to a second


def input_r2(images: Sequence[PairImages]) -> float:
    """Median over ``images`` of the share of the target's variance the blurred input explains (see the module)."""
    if not images:
        raise ValueError("input_r2 needs at least one training image")
    return float(np.median([_image_r2(image) for image in images]))


def choose_residual(images: Sequence[PairImages]) -> bool:
    """True when a residual U-Net suits these pairs: the input planes can be added to the output and
    already explain at least :data:`RESIDUAL_R2` of the target (see the module docstring)."""
    in_channels, out_channels = images[0].lq.shape[0], images[0].hq.shape[0]
    try:
        centre_planes(in_channels, out_channels)
    except ValueError:
        return False
    return input_r2(images) >= RESIDUAL_R2


def _image_r2(image: PairImages) -> float:
    planes = centre_planes(image.lq.shape[0], image.hq.shape[0])
    lq, hq = _centre_crop(image.lq[planes]), _centre_crop(image.hq)
    blurred = np.stack([gaussian_filter(plane, BLUR_SIGMA) for plane in lq])
    variance = float(hq.var())
    if variance == 0:
        return float("-inf")  # a flat target: nothing is explained, and nothing argues for the input
    return 1.0 - float(np.mean((blurred - hq) ** 2)) / variance


def _centre_crop(planes: np.ndarray) -> np.ndarray:
    y0 = max(0, (planes.shape[-2] - MAX_EDGE) // 2)
    x0 = max(0, (planes.shape[-1] - MAX_EDGE) // 2)
    return planes[..., y0 : y0 + MAX_EDGE, x0 : x0 + MAX_EDGE].astype(np.float32)
