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

import numpy as np
from scipy import ndimage, signal

from confocalize.config import SystemDescription
from confocalize.errors import ConfocalizeError
from confocalize.io import read_image
from confocalize.stacks import as_czyx

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
    detail = ndimage.convolve(np.asarray(plane, dtype=np.float64), _SECOND_DIFFERENCE, mode="reflect")
    return float(_MAD_TO_SIGMA * np.median(np.abs(detail - np.median(detail))) / 6.0)


def check(output: np.ndarray, output_axes: str, lq: np.ndarray, lq_axes: str, psf: np.ndarray, where: str) -> Consistency:
    """The residual map and score of ``output`` against the input ``lq`` it was enhanced from (same grid)."""
    out_czyx, lq_czyx = as_czyx(output, output_axes), as_czyx(lq, lq_axes)
    if out_czyx.shape != lq_czyx.shape:
        raise ConfocalizeError(
            f"{where}: output {output.shape} and input {lq.shape} are not on one grid; the consistency check needs one "
            "output channel per input channel, without --resample changing the grid"
        )
    residual = np.empty(out_czyx.shape, dtype=np.float32)
    for index in np.ndindex(*out_czyx.shape[:2]):
        residual[index] = _plane_residual(out_czyx[index], lq_czyx[index], psf)
    score = float(np.sqrt(np.mean(np.square(residual, dtype=np.float64))))
    return Consistency(residual.reshape(output.shape), score)


def _plane_residual(output: np.ndarray, lq: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``(input - a · output ⊛ PSF) / noise`` of one plane, both high-passed; 0 where the input is flat."""
    lq = np.asarray(lq, dtype=np.float64)
    noise = noise_level(lq)
    sigma_bg = max(MIN_BACKGROUND_PX, BACKGROUND_PSF_SIGMAS * _psf_sigma(psf))
    target = lq - ndimage.gaussian_filter(lq, sigma_bg, mode="reflect")
    blurred = _blur(np.asarray(output, dtype=np.float64), psf)
    blurred -= ndimage.gaussian_filter(blurred, sigma_bg, mode="reflect")
    energy = float(np.sum(blurred * blurred))
    a = float(np.sum(target * blurred)) / energy if energy > 0 else 0.0
    target -= a * blurred
    residual = _blur(target, psf)  # matched filter: noise is white, a disagreement has the PSF's size at least
    scale = noise * float(np.sqrt(np.sum(psf * psf)))  # the noise's standard deviation after that filter
    return (residual / scale if scale > 0 else np.zeros_like(residual)).astype(np.float32)


def _blur(plane: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``plane ⊛ psf`` on ``plane``'s grid, edges reflected."""
    py, px = psf.shape[0] // 2, psf.shape[1] // 2
    padded = np.pad(plane, ((py, psf.shape[0] - 1 - py), (px, psf.shape[1] - 1 - px)), mode="reflect")
    return signal.fftconvolve(padded, psf, mode="valid")


def _psf_sigma(psf: np.ndarray) -> float:
    """The RMS radius of a normalised PSF per axis (the sigma of a Gaussian), pixels."""
    yy, xx = np.indices(psf.shape, dtype=np.float64)
    cy, cx = float(np.sum(yy * psf)), float(np.sum(xx * psf))
    return float(np.sqrt(np.sum(((yy - cy) ** 2 + (xx - cx) ** 2) * psf) / 2))
