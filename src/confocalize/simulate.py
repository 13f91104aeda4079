"""Physical forward model: one fluorescent 3D object imaged by a wide-field and a confocal microscope.

The object is a volume of fluorophore amounts per voxel (axes ZYX, the focal plane is the middle
plane). Both images are its focal-plane image: the sum over object planes of the plane convolved
with the system's 3D PSF at that plane's defocus (``psfmodels``), integrated over the camera or
scan pixel, sampled on the system's own pixel grid and exposed with photon and read noise.

* LQ (wide-field): ``psfmodels.make_psf``; every plane keeps all its light, so out-of-focus
  structure becomes haze.
* HQ (confocal): excitation PSF x (emission PSF convolved with a pinhole), the formula of
  ``psfmodels.confocal_psf``; out-of-focus light falls off (optical sectioning). It comes from
  another microscope: another pixel size, a shift, a small rotation and optionally a flip.

Geometry: pixel centres sit at integer coordinates (x = column, y = row). ``lq_from_hq`` maps
HQ pixel coordinates to LQ pixel coordinates; both images are rendered from those very matrices.

Time-lapses (``frames`` > 1): the sample drifts by ``drift`` µm per frame (a phase ramp on the
object's spectra, the same motion seen by both microscopes), its fluorescence bleaches by
``bleaching`` per frame, and photon and read noise are drawn anew for every frame; the photon scale
is that of the first frame. Images then have axes TYX and record ``frame_interval`` as their time increment.

Output of :func:`simulate`::

    OUT/lq/fieldNNN.ome.tif      wide-field, uint16, LQ pixel size in the metadata
    OUT/hq/fieldNNN.ome.tif      confocal, uint16, HQ pixel size in the metadata
    OUT/clean/fieldNNN.ome.tif   noise-free confocal on the LQ grid, float32 (ground truth)
    OUT/truth.json               pixel sizes, parameters, frames and each field's ``lq_from_hq``
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psfmodels
import scipy.fft
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage, signal

from confocalize.config import SystemDescription
from confocalize.errors import ConfocalizeError
from confocalize.io import write_image, write_json

TRUTH = "truth.json"
_KINDS = ("lq", "hq", "clean")  # sub-folders of a simulation
_UINT16_MAX = 65535
_PSF_MARGIN = 1.0  # µm of PSF kept beyond the geometric blur radius of the most defocused plane
_PEAK_PERCENTILE = 99.9  # the "peak" of an image for photon budgets


class SimulationParams(BaseModel):
    """Every physical setting of the simulation. Lengths in µm, angles in degrees.

    Ranges ``(low, high)`` are drawn uniformly per field; give ``(v, v)`` for a fixed value.
    Invalid settings raise :class:`ConfocalizeError` with a one-line message.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Grids
    size: int = Field(256, description="LQ image edge, pixels (square field)")
    lq_pixel_size: float = Field(0.1, description="wide-field camera pixel in the sample, µm")
    hq_pixel_size: float = Field(0.07, description="confocal scan pixel, µm")
    hq_field_ratio: float = Field(1.1, description="HQ field edge / LQ field edge")
    z_range: float = Field(5.0, description="object depth centred on the focal plane, µm")
    z_step: float = Field(0.25, description="object plane spacing, µm")
    object_oversampling: float = Field(2.0, description="finest pixel size / lateral object voxel size")
    margin: float = Field(1.0, description="object beyond the fields on each side, µm")
    # Optics
    psf_model: Literal["vectorial", "scalar"] = "vectorial"
    lq_na: float = Field(1.3, description="numerical aperture of the wide-field objective")
    hq_na: float = Field(1.4, description="numerical aperture of the confocal objective")
    emission_wavelength: float = Field(0.52, description="µm")
    excitation_wavelength: float = Field(0.488, description="confocal laser, µm")
    refractive_index: float = Field(1.515, description="immersion oil and (index-matched) mounting medium")
    pinhole_au: float = Field(1.0, description="confocal pinhole diameter, Airy units")
    # Cameras: photons at the 99.9th percentile of the noise-free signal, background photons/pixel,
    # read noise in electrons, gain in ADU per electron, offset in ADU
    lq_peak_photons: float = 500.0
    lq_background: float = 100.0
    lq_read_noise: float = 1.6
    lq_gain: float = 1.0
    lq_offset: float = 100.0
    hq_peak_photons: float = 2000.0
    hq_background: float = 2.0
    hq_read_noise: float = 0.5
    hq_gain: float = 2.0
    hq_offset: float = 20.0
    # Misregistration of the HQ field relative to the LQ field
    shift_range: tuple[float, float] = Field((-2.0, 2.0), description="HQ field centre offset per axis, µm")
    rotation_range: tuple[float, float] = Field((-3.0, 3.0), description="HQ pixel axes vs LQ axes, degrees")
    flip_probability: float = Field(0.0, description="chance that HQ columns are mirrored")
    # Time-lapses (frames > 1)
    drift: tuple[float, float] = Field((0.0, 0.0), description="sample motion per frame (x, y), µm; (0, 0): a static sample")
    bleaching: float = Field(0.0, description="fraction of the fluorescence lost per frame")
    frame_interval: float = Field(1.0, description="time between frames, s")
    # Synthetic cells (fluorophore amounts: per µm of filament, per µm² of membrane, per punctum,
    # per µm³ of nucleus)
    n_cells: tuple[int, int] = (3, 5)
    cell_radius: tuple[float, float] = Field((6.0, 10.0), description="µm")
    cell_height: tuple[float, float] = Field((3.0, 4.5), description="µm")
    cell_base: tuple[float, float] = Field((-2.4, -1.0), description="z of the cell bottom, µm")
    filaments_per_cell: int = 30
    puncta_per_cell: int = 60
    filament_brightness: float = 1.0
    membrane_brightness: float = 1.0
    puncta_brightness: float = 1.0
    nucleus_brightness: float = 0.3

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "params"
            raise ConfocalizeError(f"simulation setting '{where}': {err['msg']}; fix or remove it") from None

    @model_validator(mode="after")
    def _check(self) -> SimulationParams:
        positive = ("size", "lq_pixel_size", "hq_pixel_size", "hq_field_ratio", "z_step", "lq_na", "hq_na",
                    "emission_wavelength", "excitation_wavelength", "refractive_index", "pinhole_au",
                    "lq_gain", "hq_gain", "frame_interval")
        not_negative = ("z_range", "margin", "lq_peak_photons", "lq_background", "lq_read_noise", "lq_offset",
                        "hq_peak_photons", "hq_background", "hq_read_noise", "hq_offset", "filaments_per_cell",
                        "puncta_per_cell", "filament_brightness", "membrane_brightness", "puncta_brightness",
                        "nucleus_brightness")
        for name in positive:
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                _bad(name, getattr(self, name), "must be > 0")
        for name in not_negative:
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                _bad(name, getattr(self, name), "must be >= 0")
        for name in ("shift_range", "rotation_range", "n_cells", "cell_radius", "cell_height", "cell_base"):
            low, high = getattr(self, name)
            if not (np.isfinite(low) and np.isfinite(high)) or low > high:
                _bad(name, (low, high), "must be (low, high) with low <= high")
        if self.size < 8:
            _bad("size", self.size, "must be at least 8 pixels")
        if self.object_oversampling < 1:
            _bad("object_oversampling", self.object_oversampling, "must be >= 1 (2 or more recommended)")
        if max(abs(r) for r in self.rotation_range) > 180:
            _bad("rotation_range", self.rotation_range, "must lie within [-180, 180] degrees")
        if not all(np.isfinite(self.drift)):
            _bad("drift", self.drift, "must be finite (µm per frame)")
        if not 0 <= self.bleaching < 1:
            _bad("bleaching", self.bleaching, "must be at least 0 and below 1 (a fraction per frame)")
        if not 0 <= self.flip_probability <= 1:
            _bad("flip_probability", self.flip_probability, "must be between 0 and 1")
        for name in ("lq_na", "hq_na"):
            if getattr(self, name) >= self.refractive_index:
                _bad(name, getattr(self, name), f"must be below the refractive index {self.refractive_index}")
        if self.n_cells[0] < 0 or self.cell_radius[0] <= 0 or self.cell_height[0] <= 0:
            _bad("n_cells/cell_radius/cell_height", "", "need n_cells >= 0 and positive cell sizes")
        return self


def systems(params: SimulationParams) -> tuple[SystemDescription, SystemDescription]:
    """The simulated wide-field (LQ) and confocal (HQ) microscopes, as a model package records them."""
    common = {"immersion": "oil", "emission_nm": params.emission_wavelength * 1000, "notes": "simulated by confocalize.simulate"}
    lq = SystemDescription(modality="wide-field", objective_na=params.lq_na, pixel_size_um=params.lq_pixel_size,
                           detector="camera (simulated)", **common)  # fmt: skip
    hq = SystemDescription(modality="confocal", objective_na=params.hq_na, pixel_size_um=params.hq_pixel_size,
                           excitation_nm=params.excitation_wavelength * 1000, pinhole_au=params.pinhole_au,
                           detector="point detector (simulated)", **common)  # fmt: skip
    return lq, hq


def _bad(name: str, value: object, rule: str) -> None:
    raise ConfocalizeError(f"simulation setting '{name}' = {value} {rule}; change it")


@dataclass(frozen=True)
class SimulatedPair:
    """One rendered field: the two camera images and the true geometry between them."""

    lq: np.ndarray  # wide-field, uint16, YX (TYX for a time-lapse) on the LQ grid
    hq: np.ndarray  # confocal, uint16, YX (TYX) on the HQ grid
    lq_from_hq: np.ndarray  # 3x3: HQ pixel (x, y, 1) -> LQ pixel (x, y, 1)
    hq_clean: np.ndarray  # noise-free confocal on the LQ grid, float32, in HQ units (ADU), YX (TYX)


@dataclass(frozen=True)
class SimulatedField:
    """Where :func:`simulate` wrote one field (absolute paths) and its true transform."""

    name: str
    lq: Path
    hq: Path
    clean: Path
    lq_from_hq: np.ndarray


# --- the physics of one field -------------------------------------------------------------------


def render_pair(
    volume: np.ndarray, voxel_size: tuple[float, float], params: SimulationParams, rng: np.random.Generator, frames: int = 1
) -> SimulatedPair:
    """Image a ZYX object (fluorophore amount per voxel, voxel ``(dz, dxy)`` µm) with both systems.

    The LQ field is centred on the volume; the HQ field is shifted, rotated and maybe flipped as
    drawn from ``params``. Parts of a field outside the volume are dark (background only). With
    ``frames`` > 1 every image is a time-lapse (TYX) of the drifting, bleaching sample (module docstring);
    drift beyond ``params.margin`` brings the far side of the volume in.
    """
    volume = _check_volume(volume, voxel_size)
    dxy = float(voxel_size[1])
    obj_shape = volume.shape[1:]
    lq_shape = (params.size, params.size)
    hq_edge = int(round(params.size * params.lq_pixel_size * params.hq_field_ratio / params.hq_pixel_size))
    hq_shape = (hq_edge, hq_edge)
    lq_to_obj = _lq_to_object(params, lq_shape, obj_shape, dxy)
    hq_to_obj = _hq_to_object(params, hq_shape, obj_shape, dxy, rng)
    (wf_spec, cf_spec), fft_shape = _focal_spectra(volume, (float(voxel_size[0]), dxy), params)

    images: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for t in range(frames):
        ramp = _drift_ramp(fft_shape, t * np.asarray(params.drift) / dxy) if t else None
        wf, cf = (wf_spec, cf_spec) if ramp is None else (wf_spec * ramp, cf_spec * ramp)
        wf_lq = _sample(_pixel_image(wf, lq_to_obj, fft_shape, obj_shape), lq_to_obj, lq_shape)
        cf_hq = _sample(_pixel_image(cf, hq_to_obj, fft_shape, obj_shape), hq_to_obj, hq_shape)
        cf_lq = _sample(_pixel_image(cf, lq_to_obj, fft_shape, obj_shape), lq_to_obj, lq_shape)
        if t == 0:
            lq_scale = _photon_scale(wf_lq, params.lq_peak_photons)
            hq_scale = _photon_scale(cf_hq, params.hq_peak_photons)
        left = (1 - params.bleaching) ** t
        lq = _expose(wf_lq * (lq_scale * left) + params.lq_background, params.lq_read_noise, params.lq_gain, params.lq_offset, rng)
        hq = _expose(cf_hq * (hq_scale * left) + params.hq_background, params.hq_read_noise, params.hq_gain, params.hq_offset, rng)
        hq_clean = (params.hq_offset + params.hq_gain * (cf_lq * (hq_scale * left) + params.hq_background)).astype(np.float32)
        images.append((lq, hq, hq_clean))
    lq, hq, hq_clean = images[0] if frames == 1 else (np.stack(kind) for kind in zip(*images))
    return SimulatedPair(lq=lq, hq=hq, lq_from_hq=np.linalg.inv(lq_to_obj) @ hq_to_obj, hq_clean=hq_clean)


def _drift_ramp(fft_shape: tuple[int, int], shift_xy: np.ndarray) -> np.ndarray:
    """The phase ramp that moves an image by ``shift_xy`` (x, y) voxels, on the real-FFT grid of ``fft_shape``."""
    fy = scipy.fft.fftfreq(fft_shape[0])[:, None]
    fx = scipy.fft.rfftfreq(fft_shape[1])[None, :]
    return np.exp(-2j * np.pi * (fx * shift_xy[0] + fy * shift_xy[1])).astype(np.complex64)


def _check_volume(volume: np.ndarray, voxel_size: tuple[float, float]) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ConfocalizeError(f"object volume of shape {volume.shape}: need a ZYX array; add a z axis to 2D objects")
    if len(voxel_size) != 2 or not all(np.isfinite(v) and v > 0 for v in voxel_size):
        raise ConfocalizeError(f"voxel size {voxel_size}: need (dz, dxy) in µm, both > 0")
    volume = volume.astype(np.float32, copy=False)
    if not np.all(np.isfinite(volume)) or volume.min() < 0:
        raise ConfocalizeError("object volume: holds negative, NaN or Inf values; give fluorophore amounts >= 0")
    return volume


def _plane_depths(nz: int, dz: float) -> np.ndarray:
    """Depth of each object plane relative to the focal (middle) plane, µm."""
    return (np.arange(nz) - (nz - 1) / 2) * dz


def _lq_to_object(params: SimulationParams, lq_shape: tuple[int, int], obj_shape: tuple[int, int], dxy: float) -> np.ndarray:
    """3x3 matrix: LQ pixel (x, y, 1) -> object voxel (x, y, 1); the LQ field centred on the object."""
    scale = params.lq_pixel_size / dxy
    centre_obj = np.array([(obj_shape[1] - 1) / 2, (obj_shape[0] - 1) / 2])
    centre_pix = np.array([(lq_shape[1] - 1) / 2, (lq_shape[0] - 1) / 2])
    matrix = np.eye(3)
    matrix[:2, :2] *= scale
    matrix[:2, 2] = centre_obj - scale * centre_pix
    return matrix


def _hq_to_object(
    params: SimulationParams, hq_shape: tuple[int, int], obj_shape: tuple[int, int], dxy: float, rng: np.random.Generator
) -> np.ndarray:
    """3x3 matrix: HQ pixel (x, y, 1) -> object voxel (x, y, 1), with a drawn shift, rotation, flip."""
    shift = rng.uniform(*params.shift_range, size=2) / dxy
    angle = np.deg2rad(rng.uniform(*params.rotation_range))
    flip = rng.random() < params.flip_probability
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.diag([-1.0 if flip else 1.0, 1.0]) * (params.hq_pixel_size / dxy)
    centre_obj = np.array([(obj_shape[1] - 1) / 2, (obj_shape[0] - 1) / 2]) + shift
    centre_pix = np.array([(hq_shape[1] - 1) / 2, (hq_shape[0] - 1) / 2])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre_obj - linear @ centre_pix
    return matrix


# --- PSFs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PsfSpec:
    """A PSF stack: wide-field when ``pinhole_au`` is 0, else confocal. Hashable for caching."""

    z: tuple[float, ...]  # depth of each object plane relative to the focal plane, µm
    nx: int
    dxy: float
    na: float
    em: float
    ex: float
    n: float
    pinhole_au: float
    model: str


def _psf_edge(z: tuple[float, ...], dxy: float, na: float, n: float) -> int:
    """Odd PSF edge (voxels) that holds the geometric blur disc of the most defocused plane."""
    radius = max(abs(v) for v in z) * np.tan(np.arcsin(na / n)) + _PSF_MARGIN
    return 2 * int(np.ceil(radius / dxy)) + 1


@functools.lru_cache(maxsize=4)
def _psf(spec: _PsfSpec) -> np.ndarray:
    """PSF stack (z, y, x) from psfmodels, scaled so the in-focus plane sums to 1.

    Wide-field planes are each scaled to sum 1: a defocused point still delivers all its light.
    Confocal: excitation x (emission convolved with the pinhole), as ``psfmodels.confocal_psf``
    computes it, but with the pinhole convolution done by FFT (confocal_psf convolves with an
    nx-by-nx kernel directly, minutes for the PSF sizes used here).
    """
    optics = dict(z=list(-np.asarray(spec.z)), nx=spec.nx, dxy=spec.dxy, NA=spec.na, ns=spec.n, ni=spec.n,
                  ni0=spec.n, model=spec.model)
    emission = psfmodels.make_psf(wvl=spec.em, **optics)
    if spec.pinhole_au == 0:
        return (emission / emission.sum(axis=(1, 2), keepdims=True)).astype(np.float32)
    excitation = psfmodels.make_psf(wvl=spec.ex, **optics)
    radius = spec.pinhole_au * 0.61 * spec.em / spec.na / spec.dxy
    half = int(np.floor(radius))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    pinhole = (np.hypot(xx, yy) <= radius).astype(np.float64)
    detected = signal.fftconvolve(emission, pinhole[None], mode="same", axes=(1, 2))
    psf = excitation * np.clip(detected, 0, None)
    return (psf / psf.sum(axis=(1, 2)).max()).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _otf(spec: _PsfSpec, fft_shape: tuple[int, int]) -> np.ndarray:
    """Real-FFT transfer functions of the PSF planes, PSF centred on voxel (0, 0); fft_shape >= nx."""
    psf = _psf(spec)
    half = spec.nx // 2
    padded = np.zeros((psf.shape[0], *fft_shape), np.float32)
    padded[:, : spec.nx, : spec.nx] = psf
    padded = np.roll(padded, (-half, -half), axis=(1, 2))
    return scipy.fft.rfft2(padded, workers=-1).astype(np.complex64)


# --- imaging ------------------------------------------------------------------------------------


def _focal_spectra(
    volume: np.ndarray, voxel_size: tuple[float, float], params: SimulationParams
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Spectra of the wide-field and confocal focal-plane images (sum over planes of plane x OTF).

    The FFT grid is padded by half a PSF so that no light wraps around onto the object.
    """
    dz, dxy = voxel_size
    nz, ny, nx = volume.shape
    z = tuple(float(v) for v in _plane_depths(nz, dz))
    nx_psf = _psf_edge(z, dxy, max(params.lq_na, params.hq_na), params.refractive_index)
    fft_shape = tuple(scipy.fft.next_fast_len(max(n + nx_psf // 2 + 1, nx_psf), real=True) for n in (ny, nx))
    optics = dict(z=z, nx=nx_psf, dxy=dxy, em=params.emission_wavelength, n=params.refractive_index,
                  model=params.psf_model)
    otfs = (_otf(_PsfSpec(**optics, na=params.lq_na, ex=0.0, pinhole_au=0.0), fft_shape),
            _otf(_PsfSpec(**optics, na=params.hq_na, ex=params.excitation_wavelength, pinhole_au=params.pinhole_au),
                 fft_shape))
    spectra = [np.zeros(otf.shape[1:], np.complex64) for otf in otfs]
    for k, plane in enumerate(volume):
        if not plane.any():
            continue
        plane_spec = scipy.fft.rfft2(plane, s=fft_shape, workers=-1)
        for spectrum, otf in zip(spectra, otfs):
            spectrum += plane_spec * otf[k]
    return spectra, fft_shape


def _pixel_image(spectrum: np.ndarray, pix_to_obj: np.ndarray, fft_shape: tuple[int, int], obj_shape: tuple[int, int]) -> np.ndarray:
    """The focal image averaged over one pixel (any orientation) at every object voxel.

    The pixel is the unit square in pixel coordinates; in object voxels it is the parallelogram
    ``L @ square`` (``L`` the linear part of ``pix_to_obj``), whose transfer function is
    ``sinc((L^T f)_x) * sinc((L^T f)_y)``.
    """
    fy = scipy.fft.fftfreq(fft_shape[0])[:, None]
    fx = scipy.fft.rfftfreq(fft_shape[1])[None, :]
    lin = pix_to_obj[:2, :2]
    box = np.sinc(lin[0, 0] * fx + lin[1, 0] * fy) * np.sinc(lin[0, 1] * fx + lin[1, 1] * fy)
    image = scipy.fft.irfft2(spectrum * box.astype(np.float32), s=fft_shape, workers=-1)
    return image[: obj_shape[0], : obj_shape[1]]


def _sample(image: np.ndarray, pix_to_obj: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Values of ``image`` (object grid) at the pixel centres of a ``shape`` grid (cubic spline)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    obj_x = pix_to_obj[0, 0] * cols + pix_to_obj[0, 1] * rows + pix_to_obj[0, 2]
    obj_y = pix_to_obj[1, 0] * cols + pix_to_obj[1, 1] * rows + pix_to_obj[1, 2]
    values = ndimage.map_coordinates(image, [obj_y, obj_x], order=3, mode="constant", cval=0.0)
    return np.clip(values, 0, None)


def _photon_scale(clean: np.ndarray, peak_photons: float) -> float:
    """Photons per unit of the noise-free image so that its 99.9th percentile gets ``peak_photons``."""
    peak = float(np.percentile(clean, _PEAK_PERCENTILE))
    return peak_photons / peak if peak > 0 else 0.0


def _expose(photons: np.ndarray, read_noise: float, gain: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Camera: Poisson photon noise, Gaussian read noise (electrons), gain, offset, 16-bit ADU."""
    electrons = rng.poisson(photons) + rng.normal(0.0, read_noise, photons.shape)
    return np.clip(np.round(offset + gain * electrons), 0, _UINT16_MAX).astype(np.uint16)


# --- objects ------------------------------------------------------------------------------------


def object_voxel_size(params: SimulationParams) -> tuple[float, float]:
    """Voxel ``(dz, dxy)`` of synthetic objects: dxy = finest pixel size / ``object_oversampling``."""
    return params.z_step, min(params.lq_pixel_size, params.hq_pixel_size) / params.object_oversampling


def object_from_image(
    image2d: np.ndarray,
    pixel_size: float,
    params: SimulationParams,
    copies: int = 2,
    copy_step: float = 1.0,
    copy_brightness: float = 0.5,
) -> tuple[np.ndarray, tuple[float, float]]:
    """A thin object from a real 2D (HQ) image, for :func:`render_pair`.

    The image (percentile-normalised, resampled to the object voxel) is the focal plane; ``copies``
    planes above and below, ``copy_step`` µm apart, hold copies blurred by a Gaussian of sigma
    ``|z| / 2`` µm and dimmed by ``copy_brightness``. The LQ field (``params.size`` pixels) is
    centred on the image; choose it to fit the image extent.
    """
    image2d = np.asarray(image2d, dtype=np.float64)
    if image2d.ndim != 2 or min(image2d.shape) < 2:
        raise ConfocalizeError(f"object image of shape {image2d.shape}: need one 2D (YX) plane")
    if not np.all(np.isfinite(image2d)):
        raise ConfocalizeError("object image: holds NaN or Inf values; replace them first")
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise ConfocalizeError(f"object image: pixel size {pixel_size} µm is not positive; give its size in µm")
    if copies < 0 or copy_step <= 0 or copy_brightness < 0:
        raise ConfocalizeError("object image: need copies >= 0, copy_step > 0 and copy_brightness >= 0")
    _, dxy = object_voxel_size(params)
    low, high = np.percentile(image2d, [1.0, 99.8])
    focal = np.clip((image2d - low) / (high - low if high > low else 1.0), 0, None)
    out_shape = [int(np.floor((n - 1) * pixel_size / dxy)) + 1 for n in image2d.shape]
    grid = np.meshgrid(*(np.arange(n) * dxy / pixel_size for n in out_shape), indexing="ij")
    focal = np.clip(ndimage.map_coordinates(focal, grid, order=3, mode="nearest"), 0, None)
    depths = _plane_depths(2 * copies + 1, copy_step)
    planes = [focal if z == 0 else copy_brightness * ndimage.gaussian_filter(focal, abs(z) / 2 / dxy) for z in depths]
    return np.stack(planes).astype(np.float32), (copy_step, dxy)


def random_sample(params: SimulationParams, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
    """A random 3D field of cells: filaments, membranes, puncta and nuclei; ``(volume, (dz, dxy))``.

    The volume covers the LQ field and every HQ field that ``params`` can draw, plus ``margin``.
    """
    dz, dxy = object_voxel_size(params)
    nz = int(round(params.z_range / dz)) + 1
    edge = 2 * int(np.ceil(_object_half_extent(params) / dxy)) + 1
    volume = np.zeros((nz, edge, edge), np.float32)
    grid = _Grid(volume, dz, dxy)
    for _ in range(int(rng.integers(params.n_cells[0], params.n_cells[1] + 1))):
        cell = _random_cell(params, (edge - 1) * dxy, rng)
        _add_nucleus(grid, cell, params.nucleus_brightness, rng)
        _add_membrane(grid, cell, params.membrane_brightness)
        _add_filaments(grid, cell, params.filaments_per_cell, params.filament_brightness, rng)
        _add_puncta(grid, cell, params.puncta_per_cell, params.puncta_brightness, rng)
    grid.splat()
    return volume, (dz, dxy)


def _object_half_extent(params: SimulationParams) -> float:
    """Half edge (µm) of an object that holds the LQ field and any drawn HQ field, plus margin."""
    lq_half = params.size * params.lq_pixel_size / 2
    hq_half = lq_half * params.hq_field_ratio
    angle = np.deg2rad(min(max(abs(r) for r in params.rotation_range), 45.0))
    hq_reach = max(abs(s) for s in params.shift_range) + hq_half * (np.cos(angle) + np.sin(angle))
    return max(lq_half, hq_reach) + params.margin


@dataclass
class _Grid:
    """A volume with its voxel size; positions are µm, x/y from voxel (0, 0), z from the focal plane.

    Point amounts are collected by :meth:`add_points` and splatted at once by :meth:`splat`.
    """

    volume: np.ndarray
    dz: float
    dxy: float
    points: list[np.ndarray] = field(default_factory=list)

    def add_points(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, amount: np.ndarray) -> None:
        """Queue point amounts at (x, y, z)."""
        self.points.append(np.stack(np.broadcast_arrays(x, y, z, amount)).reshape(4, -1))

    def splat(self) -> None:
        """Add the queued points: nearest voxel in x/y (far below the resolution), linear in z."""
        if not self.points:
            return
        x, y, z, amount = np.concatenate(self.points, axis=1)
        self.points.clear()
        nz, ny, nx = self.volume.shape
        row, col = np.rint(y / self.dxy).astype(np.int64), np.rint(x / self.dxy).astype(np.int64)
        k = z / self.dz + (nz - 1) / 2
        k0 = np.floor(k).astype(np.int64)
        flat = self.volume.reshape(-1)  # a view: the volume is C-contiguous
        for plane, weight in ((k0, amount * (1 - (k - k0))), (k0 + 1, amount * (k - k0))):
            inside = (plane >= 0) & (plane < nz) & (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
            lin = np.ravel_multi_index((plane[inside], row[inside], col[inside]), self.volume.shape)
            np.add.at(flat, lin, weight[inside].astype(np.float32))


@dataclass(frozen=True)
class _Cell:
    """A dome-shaped cell: wavy outline ``radius(phi)`` around (cx, cy), bottom at z ``base``."""

    cx: float
    cy: float
    radius0: float
    harmonics: np.ndarray  # rows (k, amplitude, phase)
    base: float
    height: float

    def radius(self, phi: np.ndarray) -> np.ndarray:
        wave = sum(a * np.cos(k * phi + p) for k, a, p in self.harmonics)
        return self.radius0 * (1 + wave)

    def rho(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised radius of points: 0 at the centre, 1 on the outline."""
        return np.hypot(x - self.cx, y - self.cy) / self.radius(np.arctan2(y - self.cy, x - self.cx))

    def top(self, rho: np.ndarray) -> np.ndarray:
        """z of the dome surface above normalised radius ``rho``."""
        return self.base + self.height * np.sqrt(np.clip(1 - rho**2, 0, None))


def _random_cell(params: SimulationParams, extent: float, rng: np.random.Generator) -> _Cell:
    ks = np.arange(2, 5)
    harmonics = np.stack([ks, rng.uniform(0, 0.15, ks.size) / ks * 2, rng.uniform(0, 2 * np.pi, ks.size)], axis=1)
    return _Cell(
        cx=rng.uniform(0, extent), cy=rng.uniform(0, extent), radius0=rng.uniform(*params.cell_radius),
        harmonics=harmonics, base=rng.uniform(*params.cell_base), height=rng.uniform(*params.cell_height),
    )


def _add_membrane(grid: _Grid, cell: _Cell, brightness: float) -> None:
    """The dome surface, sampled about every 2 voxels with amounts proportional to its area."""
    step = 2 * grid.dxy
    r_max = cell.radius0 * (1 + cell.harmonics[:, 1].sum())
    phi, alpha = np.meshgrid(np.linspace(0, 2 * np.pi, int(2 * np.pi * r_max / step) + 3, endpoint=False),
                             np.linspace(0, np.pi / 2, int(np.pi / 2 * max(r_max, cell.height) / step) + 3),
                             indexing="ij")
    r = cell.radius(phi) * np.sin(alpha)
    pts = np.stack([cell.cx + r * np.cos(phi), cell.cy + r * np.sin(phi), cell.base + cell.height * np.cos(alpha)])
    d_phi = np.gradient(pts, axis=1)
    d_alpha = np.gradient(pts, axis=2)
    area = np.linalg.norm(np.cross(d_phi, d_alpha, axis=0), axis=0)
    grid.add_points(pts[0].ravel(), pts[1].ravel(), pts[2].ravel(), brightness * area.ravel())


def _add_nucleus(grid: _Grid, cell: _Cell, brightness: float, rng: np.random.Generator) -> None:
    """A filled, textured ellipsoid near the cell centre, resting just above the cell bottom."""
    radii = np.array([rng.uniform(0.3, 0.45), rng.uniform(0.25, 0.35)]) * cell.radius0
    rz = min(rng.uniform(0.3, 0.45) * cell.height, 2.0)
    angle = rng.uniform(0, np.pi)
    cx, cy = cell.cx + rng.normal(0, 0.5), cell.cy + rng.normal(0, 0.5)
    cz = cell.base + rz + 0.2
    nz, ny, nx = grid.volume.shape
    half = int(np.ceil(radii.max() / grid.dxy)) + 1
    x0, y0 = int(round(cx / grid.dxy)) - half, int(round(cy / grid.dxy)) - half
    xs, ys = slice(max(x0, 0), min(x0 + 2 * half + 1, nx)), slice(max(y0, 0), min(y0 + 2 * half + 1, ny))
    if xs.start >= xs.stop or ys.start >= ys.stop:
        return
    yy, xx = np.mgrid[ys, xs] * grid.dxy
    u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / radii[0]
    v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / radii[1]
    texture = ndimage.gaussian_filter(rng.standard_normal(u.shape), 0.4 / grid.dxy)
    texture = 1 + 0.4 * texture / (texture.std() + 1e-12)
    per_voxel = (brightness * grid.dxy**2 * grid.dz * np.clip(texture, 0.2, None)).astype(np.float32)
    in_plane = u**2 + v**2
    for k, z in enumerate(_plane_depths(nz, grid.dz)):
        if abs(z - cz) < rz:
            grid.volume[k, ys, xs] += per_voxel * (in_plane <= 1 - ((z - cz) / rz) ** 2)


def _add_filaments(grid: _Grid, cell: _Cell, count: int, brightness: float, rng: np.random.Generator) -> None:
    """Smooth random curves (persistent random walks) that start inside the cell and end at its edge."""
    step = grid.dxy
    for _ in range(count):
        length = rng.uniform(3.0, 2.0 * cell.radius0)
        n = max(int(length / step), 2)
        start_rho, start_phi = np.sqrt(rng.uniform(0, 0.8)), rng.uniform(0, 2 * np.pi)
        r0 = start_rho * cell.radius(np.array(start_phi))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25 * np.sqrt(step), n))
        x = cell.cx + r0 * np.cos(start_phi) + np.cumsum(step * np.cos(heading))
        y = cell.cy + r0 * np.sin(start_phi) + np.cumsum(step * np.sin(heading))
        rho = cell.rho(x, y)
        outside = np.flatnonzero(rho >= 0.97)
        keep = outside[0] if outside.size else n
        if keep < 2:
            continue
        x, y, rho = x[:keep], y[:keep], rho[:keep]
        z0 = cell.base + 0.15 + rng.uniform(0, 0.8) * cell.height * (1 - start_rho**2) ** 0.5
        z = z0 + rng.normal(0, 0.1) * np.arange(keep) * step
        z = np.clip(z, cell.base + 0.1, cell.top(rho) - 0.1)
        grid.add_points(x, y, z, brightness * rng.lognormal(0, 0.4) * step * np.ones(keep))


def _add_puncta(grid: _Grid, cell: _Cell, count: int, brightness: float, rng: np.random.Generator) -> None:
    """Point-like vesicles spread through the cell volume, log-normal brightness."""
    phi = rng.uniform(0, 2 * np.pi, count)
    rho = np.sqrt(rng.uniform(0, 0.9, count))
    r = rho * cell.radius(phi)
    z = cell.base + rng.uniform(0.05, 0.95, count) * (cell.top(rho) - cell.base)
    grid.add_points(cell.cx + r * np.cos(phi), cell.cy + r * np.sin(phi), z, brightness * rng.lognormal(0, 0.5, count))


# --- the data set -------------------------------------------------------------------------------


def simulate(
    out_dir: str | os.PathLike,
    n_fields: int = 8,
    params: SimulationParams | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    frames: int = 1,
) -> list[SimulatedField]:
    """Simulate ``n_fields`` wide-field/confocal pairs of synthetic cells into ``out_dir``.

    Field ``i`` depends only on ``(seed, i)`` (and ``frames``). ``progress(done, total)`` is called after each
    field. Fields listed by an earlier ``truth.json`` in ``out_dir`` and not rewritten are removed.
    ``frames`` > 1 makes every image a time-lapse (TYX) of that many frames (module docstring).
    """
    if isinstance(n_fields, bool) or not isinstance(n_fields, int | np.integer) or n_fields < 1:
        raise ConfocalizeError(f"number of fields {n_fields}: give a whole number >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfocalizeError(f"seed {seed}: give a whole number >= 0")
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 1:
        raise ConfocalizeError(f"number of frames {frames}: give a whole number >= 1")
    params = params or SimulationParams()
    out = Path(out_dir)
    stale = _previous_files(out)
    fields: list[SimulatedField] = []
    for i in range(n_fields):
        rng = np.random.default_rng([int(seed), i])
        pair = render_pair(*random_sample(params, rng), params, rng, frames)
        name = f"field{i:03d}"
        paths = {kind: out / kind / f"{name}.ome.tif" for kind in _KINDS}
        axes, dt = ("TYX", params.frame_interval) if frames > 1 else ("YX", None)
        write_image(paths["lq"], pair.lq, axes, pixel_size=params.lq_pixel_size, time_increment=dt)
        write_image(paths["hq"], pair.hq, axes, pixel_size=params.hq_pixel_size, time_increment=dt)
        write_image(paths["clean"], pair.hq_clean, axes, pixel_size=params.lq_pixel_size, time_increment=dt)
        fields.append(SimulatedField(name, paths["lq"], paths["hq"], paths["clean"], pair.lq_from_hq))
        if progress is not None:
            progress(i + 1, n_fields)
    write_json(out / TRUTH, {
        "lq_pixel_size": params.lq_pixel_size,
        "hq_pixel_size": params.hq_pixel_size,
        "seed": int(seed),
        "frames": int(frames),
        "params": params.model_dump(mode="json"),
        "fields": [
            {"name": f.name, "lq": f"lq/{f.name}.ome.tif", "hq": f"hq/{f.name}.ome.tif",
             "clean": f"clean/{f.name}.ome.tif", "lq_from_hq": f.lq_from_hq.tolist()}
            for f in fields
        ],
    })
    written = {p for f in fields for p in (f.lq, f.hq, f.clean)}
    for path in stale - written:
        path.unlink(missing_ok=True)
    _otf.cache_clear()  # a few hundred MB; a later simulate recomputes them in about a second
    return fields


def _previous_files(out: Path) -> set[Path]:
    """Field images an earlier simulation's truth.json in ``out`` lists (only names it would write)."""
    try:
        names = [entry["name"] for entry in json.loads((out / TRUTH).read_text())["fields"]]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {out / kind / f"{name}.ome.tif" for name in names if isinstance(name, str) and re.fullmatch(r"field\d+", name)
            for kind in _KINDS}
