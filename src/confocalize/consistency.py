"""Physics consistency: the output imaged again through the LQ microscope, compared with the input.

Whatever the HQ image shows, the LQ microscope would have seen it blurred by its PSF. So the output,
blurred by the LQ PSF (at the input's sampling) and matched to the input's intensities, must give
the input back up to noise; structure the model invented where the input has none does not. Per
2D plane:

* ``blurred = output ⊛ PSF`` (reflecting edges). The PSF is a file (``--lq-psf``: a 2D image, or a
  stack whose brightest plane is taken, normalised to sum 1) or a Gaussian approximation of the
  wide-field PSF from the recorded LQ optics, ``sigma = 0.21 · emission / NA`` (Zhang, Zerubia and
  Olivo-Marin 2007), in pixels of the input. The HQ system's own blur is not removed from the
  output: it adds a little blur to ``blurred``, well below the LQ PSF's for a confocal HQ.
* The intensity match ``input ≈ a · blurred + background`` is fitted by least squares, the offset
  generalised to a smooth background: both images lose their content coarser than
  :data:`BACKGROUND_PSF_SIGMAS` PSF sigmas (a Gaussian high-pass) before ``a`` is fitted. A 2D
  output cannot account for out-of-focus light in a wide-field input, which is smooth, and the two
  images' intensity scales differ by an offset; both go there.
* ``residual = (input - a · blurred) / noise`` (high-passed), the noise level estimated from the
  input as the median absolute deviation of a second-difference filter (Immerkær 1996): a map in
  units of the input's noise, where ``|residual| > 3`` marks a place where output and input disagree.
* The image's score is the RMS of the residual map: about 1 when output and input agree to the
  noise level, more where the output is not what the LQ microscope saw (photon noise grows with
  the signal, so bright inputs score a little above 1 even for a perfect output).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from scipy import ndimage, signal

from confocalize.config import SystemDescription
from confocalize.errors import ConfocalizeError
from confocalize.io import read_image
from confocalize.normalize import percentile_sample
from confocalize.stacks import as_czyx

CONSISTENCY = "consistency"  # the key of the map beside an output: NAME.consistency.ome.tif / .ome.zarr
GAUSSIAN_SIGMA_PER_LAMBDA_NA = 0.21  # wide-field PSF sigma in units of emission wavelength / NA
BACKGROUND_PSF_SIGMAS = 5.0  # high-pass scale of the intensity match, in PSF sigmas
MIN_BACKGROUND_PX = 4.0  # ... and at least this many pixels
_MAD_TO_SIGMA = 1.4826  # the standard deviation of a normal distribution per median absolute deviation
_SECOND_DIFFERENCE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)  # norm 6


@dataclass(frozen=True)
class Consistency:
    """The residual map (the output's shape and axes, float32, units of the input's noise) and its RMS."""

    residual: np.ndarray
    score: float


def optics_sigma_um(system: SystemDescription, where: str) -> float:
    """The Gaussian sigma (µm) of the LQ system's wide-field PSF, from its NA and emission wavelength."""
    missing = [name for name in ("objective_na", "emission_nm") if getattr(system, name) is None]
    if missing or system.objective_na is None or system.emission_nm is None:
        raise ConfocalizeError(
            f"{where}: the model records no LQ {' and '.join(missing)} (provenance.lq_system); give the LQ microscope's "
            "PSF with --lq-psf FILE, or retrain with --lq-system objective_na=... --lq-system emission_nm=..."
        )
    return GAUSSIAN_SIGMA_PER_LAMBDA_NA * system.emission_nm / 1000 / system.objective_na


def gaussian_psf(sigma_px: float) -> np.ndarray:
    """A normalised 2D Gaussian kernel of ``sigma_px`` pixels, out to 4 sigma."""
    radius = max(1, int(np.ceil(4 * sigma_px)))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    kernel = np.exp(-(xx**2 + yy**2) / (2 * sigma_px**2))
    return kernel / kernel.sum()


def read_psf(path: str | os.PathLike) -> np.ndarray:
    """A PSF image (YX, or ZYX whose brightest plane is taken) normalised to sum 1."""
    image = read_image(path)
    if image.axes not in ("YX", "ZYX"):
        raise ConfocalizeError(f"{path}: a PSF has one channel, this file has axes {image.axes}; give a YX or ZYX PSF")
    psf = np.asarray(image.data, dtype=np.float64)
    if psf.ndim == 3:
        psf = psf[int(np.argmax(psf.sum(axis=(1, 2))))]
    total = psf.sum()
    if not np.isfinite(total) or total <= 0 or psf.min() < -1e-3 * psf.max():
        raise ConfocalizeError(f"{path}: not a PSF (its values must be finite, non-negative and not all zero); give the LQ PSF image")
    return np.clip(psf, 0, None) / total


def noise_level(plane: np.ndarray) -> float:
    """Robust noise standard deviation of a 2D image: MAD of its second differences (Immerkær), 0 if flat."""
    return _mad_sigma(_second_differences(plane))


@dataclass(frozen=True)
class LqPsf:
    """The LQ microscope's PSF for each image: a PSF file's, or the recorded optics' Gaussian at the image's pixel size."""

    file_psf: np.ndarray | None = None
    sigma_um: float | None = None
    default_pixel_size: float | None = None  # µm, for images that record none

    @classmethod
    def of(cls, system: SystemDescription, model_pixel_size: float | None, psf_file: str | os.PathLike | None, where: str) -> LqPsf:
        """From ``psf_file`` if given, else from the optics in ``system``; refuses (one line) when neither can give one."""
        if psf_file is not None:
            return cls(file_psf=read_psf(psf_file))
        return cls(sigma_um=optics_sigma_um(system, where), default_pixel_size=system.pixel_size_um or model_pixel_size)

    def for_image(self, pixel_size: float | None, where: str) -> np.ndarray:
        """The PSF on the grid of an image of ``pixel_size`` µm (None: the default pixel size)."""
        if self.file_psf is not None:
            return self.file_psf
        assert self.sigma_um is not None
        pixel_size = pixel_size or self.default_pixel_size
        if pixel_size is None:
            raise ConfocalizeError(f"{where}: pixel size unknown, the consistency check needs it; give --pixel-size")
        return gaussian_psf(self.sigma_um / pixel_size)


def check(output: np.ndarray, output_axes: str, lq: np.ndarray, lq_axes: str, psf: np.ndarray, where: str) -> Consistency:
    """The residual map and score of ``output`` against the input ``lq`` it was enhanced from (same grid)."""
    out_czyx, lq_czyx = as_czyx(output, output_axes), as_czyx(lq, lq_axes)
    _same_grid(out_czyx.shape, lq_czyx.shape, output.shape, lq.shape, where)
    residual = np.empty(out_czyx.shape, dtype=np.float32)
    filters = _Filters(psf)
    for index in np.ndindex(*out_czyx.shape[:2]):
        out_plane, lq_plane = out_czyx[index], np.asarray(lq_czyx[index], dtype=np.float64)
        target, blurred = filters.target(lq_plane), filters.blurred(out_plane)
        a = _fit(float(np.sum(target * blurred)), float(np.sum(blurred * blurred)))
        residual[index] = filters.residual(target - a * blurred, noise_level(lq_plane))
    return Consistency(residual.reshape(output.shape), rms(residual))


def lazy_residual(output: da.Array, lq: da.Array, psf: np.ndarray, where: str, scheduler: Any = None) -> da.Array:
    """:func:`check`'s residual map for dask arrays of one shape (any axes before YX, the same in both).

    One pass over both images (on ``scheduler``) fits each plane's intensity match and estimates its
    noise level; the map is then a lazy graph, each chunk with its neighbours' margin, equal to
    :func:`check`'s up to float rounding for a symmetric PSF. The noise level comes from
    :func:`~confocalize.normalize.percentile_sample` of the second differences: exact up to a million
    pixels per plane, a regular subsample beyond. The score is :func:`rms` of the map.
    """
    _same_grid(output.shape, lq.shape, output.shape, lq.shape, where)
    filters = _Filters(psf)
    planes = list(np.ndindex(*output.shape[:-2]))
    lq_planes = [lq[index].astype(np.float64) for index in planes]
    targets = [p.map_overlap(filters.target, depth=filters.target_margin, boundary="reflect", dtype=np.float64) for p in lq_planes]
    blurred = [output[index].map_overlap(filters.blurred, depth=filters.blurred_margin, boundary="reflect", dtype=np.float64)
               for index in planes]  # fmt: skip
    details = [percentile_sample(p.map_overlap(_second_differences, depth=1, boundary="reflect", dtype=np.float64)) for p in lq_planes]
    fits = [((t * b).sum(), (b * b).sum()) for t, b in zip(targets, blurred, strict=True)]
    (fits, details) = dask.compute(fits, details, scheduler=scheduler)
    maps = []
    for t, b, (tb, bb), detail in zip(targets, blurred, fits, details, strict=True):
        diff = t - _fit(float(tb), float(bb)) * b
        noise = _mad_sigma(np.asarray(detail))
        maps.append(diff.map_overlap(filters.residual, depth=filters.psf_margin, boundary="reflect", dtype=np.float32, noise=noise))
    return da.stack(maps).reshape(output.shape)


def rms(residual: Any) -> float:
    """The consistency score: the RMS of a residual map (numpy, or dask computed here)."""
    value = np.sqrt(np.mean(np.square(residual.astype(np.float64))))
    return float(value.compute() if isinstance(value, da.Array) else value)


def _same_grid(out_shape: tuple[int, ...], lq_shape: tuple[int, ...], output_shape: tuple[int, ...], input_shape: tuple[int, ...], where: str) -> None:
    if tuple(out_shape) != tuple(lq_shape):
        raise ConfocalizeError(
            f"{where}: output {tuple(output_shape)} and input {tuple(input_shape)} are not on one grid; the consistency "
            "check needs one output channel per input channel, without --resample changing the grid"
        )


def _fit(target_blurred: float, blurred_energy: float) -> float:
    """The least-squares ``a`` of ``target ≈ a · blurred`` from the two sums."""
    return target_blurred / blurred_energy if blurred_energy > 0 else 0.0


@dataclass(frozen=True)
class _Filters:
    """The filters of one PSF on 2D planes (edges reflected), and the margins a chunk needs for each."""

    psf: np.ndarray

    @property
    def sigma_background(self) -> float:
        return max(MIN_BACKGROUND_PX, BACKGROUND_PSF_SIGMAS * _psf_sigma(self.psf))

    @property
    def psf_margin(self) -> int:
        return max(self.psf.shape) // 2 + 1

    @property
    def target_margin(self) -> int:
        return int(4.0 * self.sigma_background + 0.5) + 1  # scipy's Gaussian radius at its default truncate of 4

    @property
    def blurred_margin(self) -> int:
        return self.target_margin + self.psf_margin

    def target(self, lq: np.ndarray) -> np.ndarray:
        """The input, high-passed: the background coarser than the intensity match removed."""
        return self._highpass(np.asarray(lq, dtype=np.float64))

    def blurred(self, output: np.ndarray) -> np.ndarray:
        """The output imaged through the LQ PSF, high-passed like the target."""
        return self._highpass(_blur(np.asarray(output, dtype=np.float64), self.psf))

    def residual(self, difference: np.ndarray, noise: float) -> np.ndarray:
        """``difference`` through the matched filter (noise is white, a disagreement has the PSF's size at least),
        in units of the noise's standard deviation after that filter; 0 where the input is flat."""
        scale = noise * float(np.sqrt(np.sum(self.psf * self.psf)))
        smoothed = _blur(difference, self.psf)
        return (smoothed / scale if scale > 0 else np.zeros_like(smoothed)).astype(np.float32)

    def _highpass(self, plane: np.ndarray) -> np.ndarray:
        return plane - ndimage.gaussian_filter(plane, self.sigma_background, mode="reflect")


def _second_differences(plane: np.ndarray) -> np.ndarray:
    return ndimage.convolve(np.asarray(plane, dtype=np.float64), _SECOND_DIFFERENCE, mode="reflect")


def _mad_sigma(detail: np.ndarray) -> float:
    """The noise standard deviation from second differences: their median absolute deviation, scaled."""
    return float(_MAD_TO_SIGMA * np.median(np.abs(detail - np.median(detail))) / 6.0)


def _blur(plane: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``plane ⊛ psf`` on ``plane``'s grid, edges reflected as scipy's ``reflect`` (and dask's) do."""
    py, px = psf.shape[0] // 2, psf.shape[1] // 2
    padded = np.pad(plane, ((py, psf.shape[0] - 1 - py), (px, psf.shape[1] - 1 - px)), mode="symmetric")
    return signal.fftconvolve(padded, psf, mode="valid")


def _psf_sigma(psf: np.ndarray) -> float:
    """The RMS radius of a normalised PSF per axis (the sigma of a Gaussian), pixels."""
    yy, xx = np.indices(psf.shape, dtype=np.float64)
    cy, cx = float(np.sum(yy * psf)), float(np.sum(xx * psf))
    return float(np.sqrt(np.sum(((yy - cy) ** 2 + (xx - cx) ** 2) * psf) / 2))
