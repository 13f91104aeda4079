"""Per-pixel uncertainty: the spread of the model's output over the 8 flips and rotations of its input.

A U-Net is not equivariant to the dihedral group of the square, and where it invents structure the
8 transformed inputs (4 rotations by 90°, each with and without a mirror) disagree most: the
invented detail is painted differently each time, while structure fixed by the input comes back the
same. :func:`enhance_with_uncertainty` applies the model through :func:`confocalize.predict.enhance_image`
to each transformed input, undoes the transform, and returns the mean of the 8 outputs (the
test-time-augmented result) and their standard deviation, smoothed and calibrated with the
package's ``model.json`` ``uncertainty`` (fitted by :func:`calibrate`; the raw smoothed spread when
the package has none).
The calibrated uncertainty is in output units and predicts the RMS error of the pixels that carry
it; it adds an error that grows with the signal and a floor to the spread (the variance model of
:mod:`confocalize.calibration`). Memory: the running mean and sum of squares (Welford) and
one output, besides what ``enhance_image`` holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from confocalize import calibration
from confocalize.engine import Backend, Runner, make_runner
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, refuse_time_lapse
from confocalize.package import ModelPackage, UncertaintyCalibration
from confocalize.pairs import PairPaths
from confocalize.predict import DEFAULT_BATCH, DEFAULT_TILE, enhance_image

UNCERTAINTY = "uncertainty"  # the key of the map beside an output: NAME.uncertainty.ome.tif / .ome.zarr
DIHEDRAL = tuple((turns, mirror) for mirror in (False, True) for turns in range(4))  # (90° turns, mirrored x)
OUTSIDE_PERCENTILE = 95.0  # an image whose median uncertainty exceeds this percentile of the calibration images' is flagged


@dataclass(frozen=True)
class Enhanced:
    """A test-time-augmented result and its per-pixel uncertainty (same grid and axes, float32)."""

    image: Image
    uncertainty: Image
    calibrated: bool  # False: the package has no calibration, the uncertainty is the raw spread

    @property
    def median(self) -> float:
        """Median uncertainty over the image."""
        return float(np.median(self.uncertainty.data))


def enhance_with_uncertainty(
    package: ModelPackage, image: Image, tile: int = DEFAULT_TILE, batch_size: int = DEFAULT_BATCH, resample: bool = False,
    backend: Backend | Runner = "auto",
) -> Enhanced:
    """Enhance ``image`` in its 8 dihedral orientations: their mean and (calibrated) standard deviation
    (``backend`` as :func:`confocalize.engine.make_runner` takes it)."""
    refuse_time_lapse(image, "estimate uncertainty (it takes single time points)")
    runner = make_runner(package, backend)
    identity: list[Image] = []  # the first result (DIHEDRAL's identity): the output grid and metadata

    def apply(data: np.ndarray) -> np.ndarray:
        result = enhance_image(package, image.with_data(data), tile, batch_size, resample, runner)
        if not identity:
            identity.append(result)
        return result.data

    mean, spread = dihedral_spread(apply, image.data)
    grid = identity[0]
    return Enhanced(grid.with_data(mean), grid.with_data(calibrate_spread(package.uncertainty, spread, mean)), package.uncertainty is not None)


def dihedral_spread(apply: Callable[[np.ndarray], np.ndarray], data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``apply`` to ``data`` in its 8 orientations (last two axes), each turned back: their mean and
    their standard deviation smoothed in-plane (:func:`confocalize.calibration.smooth`), float32."""
    mean = np.array(apply(data), dtype=np.float32)  # the identity comes first in DIHEDRAL
    sum_sq = np.zeros_like(mean)
    for n, (turns, mirror) in enumerate(DIHEDRAL[1:], start=2):
        pred = np.array(_untransform(apply(_transform(data, turns, mirror)), turns, mirror), dtype=np.float32)
        pred -= mean  # Welford: pred is now the deviation from the old mean
        mean += pred / n
        pred *= pred
        sum_sq += pred * ((n - 1) / n)
    sum_sq /= len(DIHEDRAL)
    return mean, calibration.smooth(np.sqrt(sum_sq, out=sum_sq))


def calibrate_spread(cal: UncertaintyCalibration | None, spread: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The uncertainty that ``cal`` (a package's) makes of a smoothed ``spread`` (overwritten) and its mean; the spread itself without one."""
    return spread if cal is None else calibration.calibrated(spread, mean, cal.scale, cal.signal, cal.floor)


def outside_calibration(package: ModelPackage, median_uncertainty: float) -> bool | None:
    """Whether an image's median uncertainty lies above what the package was calibrated on (``None``: no calibration)."""
    cal = package.uncertainty
    return None if cal is None else median_uncertainty > cal.median_p95


def calibration_pairs(package: ModelPackage, pairs: Sequence[PairPaths], limit: int) -> list[PairPaths]:
    """At most ``limit`` of ``pairs``, evenly spread, to calibrate ``package`` on; refuses a pair that the
    package's recorded split names as a training pair (its errors would be too small)."""
    data = package.provenance.training_data
    trained = set(data.split.get("train", {}).get("names", [])) if data else set()
    if seen := [p.name for p in pairs if p.name in trained]:
        raise ConfocalizeError(f"{seen[0]}: the model trained on this pair (its split names it); calibrate on held-out pairs only")
    if not pairs:
        raise ConfocalizeError("no pairs to calibrate on; give held-out LQ/HQ pairs the model never trained on")
    if len(pairs) <= limit:
        return list(pairs)
    return [pairs[round(i)] for i in np.linspace(0, len(pairs) - 1, limit)]


def calibrate(
    package: ModelPackage, pairs: Sequence[PairPaths], data: str = "", tile: int = DEFAULT_TILE, lq_pixel_size: float | None = None,
    backend: Backend = "auto", progress: Callable[[int, int], None] | None = None,
) -> UncertaintyCalibration:
    """Fit the variance model on registered ``pairs`` (validation fields, never test fields), and the flag threshold
    (``progress(done, total)`` after each pair).

    The package's current calibration is ignored: the raw spread is fitted. Holds every pair's
    images until the fit: give a validation set, not a whole data set.
    """
    raw = replace(package, uncertainty=None)
    spreads, means, errors = [], [], []
    for done, pair in enumerate(pairs, start=1):
        result = enhance_with_uncertainty(raw, read_image(pair.lq, pixel_size=lq_pixel_size), tile, backend=backend)
        errors.append(calibration.absolute_error(result.image.data, read_image(pair.hq).data, result.image.axes, package.normalization))
        spreads.append(result.uncertainty.data)
        means.append(result.image.data)
        if progress is not None:
            progress(done, len(pairs))
    return fit_calibration(spreads, means, errors, data)


def fit_calibration(
    spreads: Sequence[np.ndarray], means: Sequence[np.ndarray], errors: Sequence[np.ndarray], data: str = ""
) -> UncertaintyCalibration:
    """The calibration of raw (smoothed) ``spreads`` with their test-time-augmented ``means`` and absolute ``errors``."""
    coef = calibration.fit(spreads, means, errors)
    rhos, medians = [], []
    for spread, mean, error in zip(spreads, means, errors, strict=True):
        u = calibration.calibrated(spread.copy(), mean, **coef)
        rhos.append(calibration.spearman(u, error))
        medians.append(float(np.median(u)))
    return UncertaintyCalibration(
        **coef,
        median_p95=float(np.percentile(medians, OUTSIDE_PERCENTILE)),
        spearman=float(np.nanmedian(rhos)) if np.isfinite(rhos).any() else None,
        n_images=len(spreads),
        data=data,
    )


def _transform(data: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """Mirror the last axis (x), then turn the last two axes ``turns`` x 90°: a view."""
    return np.rot90(data[..., ::-1] if mirror else data, turns, axes=(-2, -1))


def _untransform(data: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """The inverse of :func:`_transform`."""
    back = np.rot90(data, -turns, axes=(-2, -1))
    return back[..., ::-1] if mirror else back
