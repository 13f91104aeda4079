"""Invented and missed spots and filaments against an HQ reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from confocalize.structures import StructureCounts, compare_structures, median_shares


def _spots_and_line(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    image = np.zeros((size, size), np.float32)
    for y, x in rng.integers(8, size - 8, (12, 2)):
        image[y, x] = 1.0
    image[20:76, 48] = 0.5  # a vertical filament
    return gaussian_filter(image, 1.5) + 0.01 * rng.random((size, size)).astype(np.float32)


def test_an_image_matches_itself() -> None:
    hq = _spots_and_line(np.random.default_rng(0))
    counts = compare_structures(hq, hq)
    assert counts.hq_spots >= 8 and counts.hq_filament_px > 20
    assert counts.shares() == {"invented_spots": 0.0, "missed_spots": 0.0, "invented_filaments": 0.0, "missed_filaments": 0.0}


def test_a_planted_spot_is_invented_and_a_removed_filament_is_missed() -> None:
    hq = _spots_and_line(np.random.default_rng(1))
    out = hq.copy()
    spot = np.zeros((11, 11), np.float32)
    spot[5, 5] = 1.0
    out[81:92, 4:15] += gaussian_filter(spot, 1.5)  # a spot HQ does not have
    out[:, 40:57] = 0.005  # the filament's strip wiped to background
    counts = compare_structures(out, hq)
    assert counts.invented_spots >= 1
    assert counts.shares()["missed_filaments"] > 0.5  # the line's centre pixels (the rest: spots' ridges)


def test_shapes_must_agree_and_medians_skip_undefined_shares() -> None:
    with pytest.raises(ValueError, match="share a grid"):
        compare_structures(np.zeros((8, 8)), np.zeros((8, 9)))
    shares = median_shares([StructureCounts(spots=4, invented_spots=1), StructureCounts(spots=0), StructureCounts(spots=2, invented_spots=2)])
    assert shares["invented_spots"] == pytest.approx(0.625)
    assert shares["missed_spots"] is None


def test_multi_plane_images_add_up_their_planes() -> None:
    hq = _spots_and_line(np.random.default_rng(2))
    one = compare_structures(hq, hq)
    two = compare_structures(np.stack([hq, hq]), np.stack([hq, hq]))
    assert two.hq_spots == 2 * one.hq_spots
