"""Invented and missed structures: spots and filaments found in an image and in its HQ reference.

A pixel metric cannot tell a blur from a hallucination; this counts objects. Both images are put
into the metrics' units first (:func:`confocalize.metrics.to_unit_range`), then per YX plane:

* **Spots**: local maxima of the scale-normalised Laplacian-of-Gaussian response (maximum over
  :data:`SPOT_SIGMAS`), at least ``min_distance`` pixels apart.
* **Filaments**: bright ridges of the Sato tubeness filter over :data:`RIDGE_SIGMAS`, thresholded
  and skeletonised to one-pixel centre lines.

Each threshold is set on the HQ image: :data:`THRESHOLD_SHARE` of the HQ response's
:data:`THRESHOLD_PERCENTILE`-th percentile, and that one value is applied to the image under test,
so every method is judged against the same definition of "a structure". A detected spot is
*invented* when no HQ spot lies within ``tolerance`` pixels, an HQ spot *missed* when no detected
spot does; for filaments the same holds for centre-line pixels. Reported as shares (0-1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.filters import sato
from skimage.morphology import skeletonize

from confocalize.metrics import to_unit_range

SPOT_SIGMAS = (1.0, 1.5, 2.0, 3.0)  # px: the LoG scales searched for spots
RIDGE_SIGMAS = (1.0, 2.0)  # px: the Sato filter's scales for filaments
THRESHOLD_PERCENTILE = 99.5  # of the HQ response ...
THRESHOLD_SHARE = 0.3  # ... times this share is the detection threshold
TOLERANCE = 3.0  # px: a structure within this distance of its counterpart is matched


@dataclass(frozen=True)
class StructureCounts:
    """Detected, invented and missed structures of one image (or a sum over images)."""

    spots: int = 0  # detected in the image under test
    hq_spots: int = 0
    invented_spots: int = 0  # detected, with no HQ spot within the tolerance
    missed_spots: int = 0  # in HQ, with no detected spot within the tolerance
    filament_px: int = 0  # centre-line pixels detected in the image under test
    hq_filament_px: int = 0
    invented_filament_px: int = 0
    missed_filament_px: int = 0

    def __add__(self, other: StructureCounts) -> StructureCounts:
        return StructureCounts(*(a + b for a, b in zip(self.counts(), other.counts(), strict=True)))

    def counts(self) -> tuple[int, ...]:
        """The eight counts in field order."""
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)

    def shares(self) -> dict[str, float | None]:
        """Invented and missed shares of spots and filament pixels (None where there is nothing to share)."""
        return {
            "invented_spots": _share(self.invented_spots, self.spots),
            "missed_spots": _share(self.missed_spots, self.hq_spots),
            "invented_filaments": _share(self.invented_filament_px, self.filament_px),
            "missed_filaments": _share(self.missed_filament_px, self.hq_filament_px),
        }


def spot_response(plane: np.ndarray) -> np.ndarray:
    """Scale-normalised LoG response (bright blobs positive), maximum over :data:`SPOT_SIGMAS`."""
    plane = plane.astype(np.float32)
    return np.max([-(s**2) * ndimage.gaussian_laplace(plane, s) for s in SPOT_SIGMAS], axis=0)


def ridge_response(plane: np.ndarray) -> np.ndarray:
    """Sato tubeness of bright ridges over :data:`RIDGE_SIGMAS`."""
    return sato(plane.astype(np.float32), sigmas=RIDGE_SIGMAS, black_ridges=False)


def hq_threshold(response: np.ndarray) -> float:
    """The detection threshold a response of the HQ image sets (see the module docstring)."""
    return THRESHOLD_SHARE * float(np.percentile(response, THRESHOLD_PERCENTILE))


def compare_structures(image: np.ndarray, hq: np.ndarray, tolerance: float = TOLERANCE, min_distance: int = 2) -> StructureCounts:
    """Spots and filaments of ``image`` against those of ``hq`` (same grid), summed over YX planes."""
    if image.shape != hq.shape:
        raise ValueError(f"image {image.shape} and HQ {hq.shape} must share a grid")
    a, b = to_unit_range(image), to_unit_range(hq)
    total = StructureCounts()
    for plane, ref in zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), strict=True):
        total = total + _plane_counts(plane, ref, tolerance, min_distance)
    return total


def median_shares(per_image: Iterable[StructureCounts]) -> dict[str, float | None]:
    """Median over images of each share (images where a share is undefined are left out)."""
    shares = [counts.shares() for counts in per_image]
    keys: Mapping[str, None] = dict.fromkeys(shares[0]) if shares else {}
    out: dict[str, float | None] = {}
    for key in keys:
        values = [s[key] for s in shares if s[key] is not None]
        out[key] = float(np.median(values)) if values else None
    return out


def _plane_counts(plane: np.ndarray, ref: np.ndarray, tolerance: float, min_distance: int) -> StructureCounts:
    ref_spots = spot_response(ref)
    threshold = hq_threshold(ref_spots)
    spots = _peaks(spot_response(plane), threshold, min_distance)
    hq_spots = _peaks(ref_spots, threshold, min_distance)
    ref_ridges = ridge_response(ref)
    ridge_threshold = hq_threshold(ref_ridges)
    lines = skeletonize(ridge_response(plane) > ridge_threshold)
    hq_lines = skeletonize(ref_ridges > ridge_threshold)
    return StructureCounts(
        spots=len(spots), hq_spots=len(hq_spots),
        invented_spots=_unmatched(spots, hq_spots, tolerance), missed_spots=_unmatched(hq_spots, spots, tolerance),
        filament_px=int(lines.sum()), hq_filament_px=int(hq_lines.sum()),
        invented_filament_px=_far_pixels(lines, hq_lines, tolerance), missed_filament_px=_far_pixels(hq_lines, lines, tolerance),
    )  # fmt: skip


def _peaks(response: np.ndarray, threshold: float, min_distance: int) -> np.ndarray:
    if threshold <= 0:
        return np.empty((0, 2), dtype=np.intp)
    return peak_local_max(response, min_distance=min_distance, threshold_abs=threshold, exclude_border=False)


def _unmatched(points: np.ndarray, reference: np.ndarray, tolerance: float) -> int:
    """How many of ``points`` have no ``reference`` point within ``tolerance``."""
    if len(points) == 0:
        return 0
    if len(reference) == 0:
        return len(points)
    distance, _ = cKDTree(reference).query(points, distance_upper_bound=tolerance)
    return int(np.isinf(distance).sum())


def _far_pixels(mask: np.ndarray, reference: np.ndarray, tolerance: float) -> int:
    """How many pixels of ``mask`` lie farther than ``tolerance`` from every pixel of ``reference``."""
    if not mask.any():
        return 0
    if not reference.any():
        return int(mask.sum())
    distance = ndimage.distance_transform_edt(~reference)
    return int((distance[mask] > tolerance).sum())


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None
