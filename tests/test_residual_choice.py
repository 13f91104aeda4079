"""generator.residual "auto": a residual U-Net where the input already is the target up to noise."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from confocalize.data import PairImages
from confocalize.residual_choice import MAX_EDGE, RESIDUAL_R2, choose_residual, input_r2


def _sample(lq: np.ndarray, hq: np.ndarray) -> PairImages:
    return PairImages("a", "a", lq.astype(np.float32), hq[None].astype(np.float32))


def _structure(seed: int, size: int = 96) -> np.ndarray:
    image = gaussian_filter(np.random.default_rng(seed).random((size, size)), 2.0)
    return (image - image.min()) / np.ptp(image)


def test_noisy_copies_of_the_target_choose_residual() -> None:
    rng = np.random.default_rng(0)
    images = [_sample((hq + rng.normal(0, 0.15, hq.shape))[None], hq) for hq in map(_structure, range(3))]
    assert input_r2(images) > RESIDUAL_R2
    assert choose_residual(images)


def test_hazy_blurred_inputs_do_not() -> None:
    """Wide-field-like: the target's structure under a strong blur and a bright haze."""
    images = [_sample((0.4 * gaussian_filter(hq, 4.0) + 0.5)[None], hq) for hq in map(_structure, range(3))]
    assert input_r2(images) < RESIDUAL_R2
    assert not choose_residual(images)


def test_inputs_without_a_plane_per_output_are_never_residual() -> None:
    """Two input planes per output channel have no centre plane to add (an odd number is needed)."""
    hq = _structure(0)
    assert not choose_residual([_sample(np.stack([hq, hq]), hq)])


def test_large_images_are_judged_on_their_centre() -> None:
    """Only the centre MAX_EDGE square is compared: an input that is wrong outside it still counts as a copy."""
    hq = _structure(1, size=MAX_EDGE + 200)
    lq = np.zeros_like(hq)
    lq[100:-100, 100:-100] = hq[100:-100, 100:-100]
    assert input_r2([_sample(lq[None], hq)]) > RESIDUAL_R2
