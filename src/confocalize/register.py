"""Cross-system registration: put an HQ (confocal) image onto the pixel grid of its LQ (wide-field) partner.

Conventions: a transform is a 3x3 matrix on homogeneous pixel coordinates ``(x = column, y = row, 1)``
with pixel centres at integers; ``lq_from_hq`` maps HQ pixel coordinates to LQ pixel coordinates.

Method, all lengths in LQ pixels. Images are compared after a difference-of-Gaussians band-pass,
which removes wide-field haze and most noise, with normalised cross-correlation (NCC):

1. Scale from the two pixel sizes; when neither image has one, it is estimated in step 2.
2. Coarse: for each flip and each rotation of a sweep, the masked NCC (Padfield) over all shifts on
   a coarse grid; the best few distinct placements (ranked by the Fisher z of their NCC times the root
   of the pixels compared) become hypotheses. Without pixel sizes the sweep
   also runs over a geometric grid of scales (``scale_range``, ``scale_step``), on a grid half as
   fine with twice the angle step (the same displacement at the corners), so that the residual scale
   error is as small as the rotation's; the refinement then starts on that coarser grid.
3. Fine: each hypothesis is refined coarse to fine, the 6 affine parameters maximising the NCC by
   Gauss-Newton steps (ECC). The best plausible fit must clearly beat the best distinct one (also
   one at another scale of the sweep).
4. The finer image is blurred to match the other (a wide-field image is blurrier than a confocal
   one; unmatched, the fit trades scale and shear for sharpness) and the fit is refined once more.
5. Optional bead mode: point sources in both images, matched near the intensity solution, affine
   fitted with RANSAC; the residual is reported in nm.
6. Checks, else :class:`RegistrationError`: overlap, plausible scale/shear/rotation, no ambiguity,
   a jackknife standard error below ``max_uncertainty_px`` and an NCC far above chance (Fisher z
   with the effective number of independent pixels). A wrong transform is never returned knowingly.
   An estimated scale is checked against the sweep's scale, with ``max_scale_error`` widened by a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
from pydantic import Field, field_validator
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.measure import ransac
from skimage.transform import AffineTransform

from confocalize.config import Strict
from confocalize.errors import ConfocalizeError, RegistrationError
from confocalize.io import AXES, Image, atomic_write, check_pixels

DOG_RATIO = 2.5  # outer / inner sigma of the difference-of-Gaussians band-pass
HQ_MIN_SIGMA = 0.5  # the finest band-pass is at least this many HQ pixels (matters for ratios above 4)
EDGE = 1.5  # band-passed pixels closer than EDGE outer sigmas to an image edge are not compared
FIX = "check that both show the same field and the pixel sizes (--lq-pixel-size/--hq-pixel-size)"
MIN_RATIO, MAX_RATIO = 0.05, 20.0  # pixel-size ratios (HQ over LQ) that can be registered
MIN_LEVEL_PIXELS = 24  # a pyramid level keeps at least this many pixels along each image side
MIN_SIDE = 16  # pixels: smaller images are refused outright
JACKKNIFE_SIDE = 3  # the jackknife drops, in turn, each of JACKKNIFE_SIDE**2 interleaved sets of blocks
MAX_ITERATIONS = 50  # Gauss-Newton steps per refinement
CONVERGED = 1e-3  # grid pixels: a smaller step ends a refinement


class RegistrationOptions(Strict):
    """Settings of :func:`register_pair`; the defaults suit wide-field vs confocal pairs."""

    min_overlap: float = Field(0.3, gt=0, le=1, description="least overlap, as a fraction of the smaller footprint")
    max_rotation_deg: float = Field(15.0, ge=0, le=180, description="rotation sweep covers +- this angle")
    angle_step_deg: float = Field(2.0, gt=0, le=10, description="step of the coarse rotation sweep")
    allow_flip: bool = Field(True, description="also try the mirrored HQ (camera mounted flipped)")
    beads: bool = Field(False, description="fit the final affine to matched point sources (bead slides)")
    sigma_px: float = Field(1.25, ge=0.5, le=20, description="finest band-pass scale in LQ pixels (about the wide-field PSF sigma)")
    coarse_size: int = Field(192, ge=32, le=1024, description="pixels across the coarse search grid")
    max_points: int = Field(2**17, ge=1000, description="most pixels sampled per refinement level")
    max_scale_error: float = Field(0.05, gt=0, lt=1, description="refuse a fitted scale this far from the pixel-size ratio")
    scale_range: tuple[float, float] = Field(
        (0.5, 2.0), description="neither pixel size known: the scale sweep covers HQ pixels of this many LQ pixels (lowest, highest)"
    )
    scale_step: float = Field(0.07, gt=0, le=0.5, description="neither pixel size known: relative step of the scale sweep")
    max_shear: float = Field(0.08, ge=0, lt=1, description="refuse a fitted shear or anisotropy above this")
    min_ncc: float = Field(0.15, gt=0, lt=1, description="refuse a band-passed NCC after registration below this")
    min_z: float = Field(7.0, gt=0, description="refuse unless the NCC is this many chance standard deviations (Fisher z) above 0")
    min_ncc_ratio: float = Field(1.15, ge=1, description="the fit's Fisher z (atanh NCC) must beat the best distinct alternative's by this factor")
    max_uncertainty_px: float = Field(0.25, gt=0, description="refuse a fit whose jackknife standard error exceeds this (LQ pixels RMS)")
    hypotheses: int = Field(3, ge=2, le=10, description="distinct coarse placements refined and compared")
    min_beads: int = Field(6, ge=3, description="bead mode: least number of matched beads")

    @field_validator("scale_range")
    @classmethod
    def _ordered_ratios(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not MIN_RATIO <= value[0] <= value[1] <= MAX_RATIO:
            raise ValueError(f"needs {MIN_RATIO} <= lowest <= highest <= {MAX_RATIO}")
        return value


@dataclass
class Registration:
    """The HQ image on the LQ grid, where it is valid, and how it got there.

    ``quality``: ``ncc_before`` (band-passed NCC with the nominal scaling only), ``ncc_after``,
    ``z_score`` (Fisher z of ``ncc_after`` against chance), ``ncc_fit`` and ``ncc_alternative`` (best
    fit and best distinct alternative before blur matching), ``uncertainty_px`` (jackknife standard
    error, LQ pixels RMS), ``lq_extra_blur_px`` (Gaussian sigma by which LQ is blurrier than HQ),
    ``overlap_fraction`` (of the smaller footprint), ``rotation_deg``, ``flip``, ``scale`` (LQ pixels
    per HQ pixel), ``scale_error`` (against the pixel sizes; None when estimated), ``scale_estimated``
    (True when neither image had a pixel size and a scale sweep found it), ``anisotropy``, ``shear``,
    ``bead_residual_nm`` (bead mode) and ``status``.
    """

    hq_on_lq: np.ndarray  # float32, HQ's non-spatial axes + LQ's YX shape; 0 outside the overlap
    axes: str  # of hq_on_lq (the HQ image's axes)
    overlap: np.ndarray  # bool, LQ's YX shape
    crop: list[int]  # [y0, x0, y1, x1], half-open: lq[..., y0:y1, x0:x1] lies inside the overlap
    lq_from_hq: np.ndarray  # 3x3
    quality: dict[str, Any]


@dataclass(frozen=True)
class _Grid:
    """A band-passed image on a grid of ``factor`` original pixels per grid pixel.

    ``factor`` is a whole number (block means) or ``1 / n`` (an ``n`` times finer spline grid); grid
    pixels tile the original ones, so grid pixel ``i`` is centred at original ``factor * i + (factor - 1) / 2``.

    ``sigma`` is the inner band-pass scale in pixels of this grid.
    """

    image: np.ndarray
    factor: float
    sigma: float

    def to_level(self, xy: np.ndarray) -> np.ndarray:
        """Original pixel coordinates -> coordinates on this grid."""
        return (xy - (self.factor - 1) / 2) / self.factor

    def to_full(self, xy: np.ndarray) -> np.ndarray:
        """Coordinates on this grid -> original pixel coordinates."""
        return xy * self.factor + (self.factor - 1) / 2

    def inside(self, xy: np.ndarray) -> np.ndarray:
        """Which grid coordinates lie far enough from the edges for an undistorted band-pass."""
        margin = min(EDGE * DOG_RATIO * self.sigma, (min(self.image.shape) - 1) / 4)
        h, w = self.image.shape
        return (xy[0] >= margin) & (xy[0] <= w - 1 - margin) & (xy[1] >= margin) & (xy[1] <= h - 1 - margin)


@dataclass(frozen=True)
class _Level:
    """One pyramid level: LQ and HQ band-passed at the same physical scale ``sigma`` (LQ pixels)."""

    lq: _Grid
    hq: _Grid
    sigma: float


@dataclass(frozen=True)
class _Candidate:
    """A possible solution: its NCC, the transform it stands for and the scale its search assumed."""

    ncc: float
    lq_from_hq: np.ndarray
    nominal: float  # the pixel-size ratio, or the scale of the sweep it was found at
    samples: float = 1.0  # coarse search: grid pixels compared; refined fits compare by NCC alone

    @property
    def rank(self) -> float:
        """Fisher z of the NCC times the root of the pixels compared (how far from chance, up to a constant)."""
        return _fisher(self.ncc) * math.sqrt(self.samples)


# ----------------------------------------------------------------------------------------------
# Public API


def register_pair(lq: Image, hq: Image, options: RegistrationOptions | None = None) -> Registration:
    """Register ``hq`` onto the grid of ``lq``; raise :class:`RegistrationError` when not confident.

    Multi-plane images register on a projection (mean over time, maximum over Z, sum of normalised
    channels) and every plane of ``hq`` (every frame of a time-lapse) is resampled with the one
    transform. When neither image has a pixel size the scale is estimated
    (``quality["scale_estimated"]``). Raises :class:`ConfocalizeError` for unusable input (one pixel
    size missing, NaN, too small, time-lapses of different lengths).
    """
    opts = options or RegistrationOptions()
    names = f"{_label(lq)} vs {_label(hq)}"
    for image in (lq, hq):
        _check_input(image)
    n_lq, n_hq = (im.data.shape[0] if im.axes.startswith("T") else 1 for im in (lq, hq))
    if n_lq != n_hq:
        raise ConfocalizeError(f"{names}: {n_lq} vs {n_hq} time points; pair time-lapses of as many frames, or single frames")
    nominal = pixel_ratio(lq, hq)
    estimated = nominal is None
    lq2, hq2 = projection(lq), projection(hq)
    if nominal is None:  # a sweep over scales, on a grid half as fine with twice the angle step
        scales, angle_step = _sweep_scales(opts), 2 * opts.angle_step_deg
        coarsest = _sigmas(lq2.shape, hq2.shape, *opts.scale_range, opts.coarse_size // 2, opts)[0]
    else:
        scales, angle_step = [nominal], opts.angle_step_deg
        coarsest = _sigmas(lq2.shape, hq2.shape, nominal, nominal, opts.coarse_size, opts)[0]
    starts = _coarse_search(lq2, hq2, scales, coarsest, angle_step, opts)
    if not starts:
        raise RegistrationError(f"{names}: no placement overlapping by {opts.min_overlap:.0%} correlates at all (blank image?); {FIX}")
    pyramids = {c.nominal: _pyramid(lq2, hq2, c.nominal, opts, coarsest) for c in starts}
    fits = [(c.nominal, _refine_levels(pyramids[c.nominal], c.lq_from_hq, opts.max_points)) for c in starts]
    plausible = [_Candidate(_ncc(pyramids[s][-1], m, opts.max_points), m, s) for s, m in fits if _implausible(m, s, estimated, opts) is None]
    if not plausible:
        raise RegistrationError(f"{names}: {_implausible(fits[0][1], fits[0][0], estimated, opts)}; {FIX}")
    best, *rivals = _distinct(plausible, DOG_RATIO * coarsest, hq2.shape, lq2.shape, 2)
    scale, levels = best.nominal, pyramids[best.nominal]
    fine, blur = _match_blur(lq2, hq2, scale, levels[-1], best.lq_from_hq, opts.max_points)
    lq_from_hq = _refine(fine, best.lq_from_hq, opts.max_points)
    quality: dict[str, Any] = {
        "ncc_fit": best.ncc,
        "ncc_alternative": rivals[0].ncc if rivals else 0.0,
        "lq_extra_blur_px": blur,
        "uncertainty_px": _jackknife(fine, lq_from_hq, opts.max_points, math.hypot(fine.sigma, blur), hq2.shape, lq2.shape),
    }
    if opts.beads:
        lq_from_hq, residual_px = _bead_fit(lq2, hq2, lq_from_hq, scale, opts, names)
        quality["bead_residual_nm"] = residual_px * lq.pixel_size * 1e3 if lq.pixel_size else None
    overlap = overlap_mask(lq2.shape, hq2.shape, lq_from_hq)
    quality.update(_measure(fine, lq_from_hq, scale, estimated, overlap, hq2.shape, opts))
    _check(quality, lq_from_hq, scale, estimated, opts, names)
    hq_on_lq = resample(hq.data, lq_from_hq, lq2.shape) * overlap
    return Registration(hq_on_lq.astype(np.float32), hq.axes, overlap, largest_rectangle(overlap), lq_from_hq, quality)


def _check_input(image: Image) -> None:
    """Raise :class:`ConfocalizeError` for an image that cannot be registered at all."""
    data, label = image.data, _label(image)
    if image.axes not in AXES or data.ndim != len(image.axes):
        raise ConfocalizeError(f"{label}: axes '{image.axes}' do not fit an array of shape {data.shape}; give matching --axes")
    if min(data.shape[-2:]) < MIN_SIDE:
        raise ConfocalizeError(f"{label}: {data.shape[-2]}x{data.shape[-1]} pixels is too small to register; need {MIN_SIDE} or more per side")
    check_pixels(label, data)  # pixel type, NaN/Inf, magnitude: as for every image read
    if data.min() == data.max():
        raise RegistrationError(f"{label}: is blank (every pixel {data.flat[0]}); nothing to register, check the file")


def pixel_ratio(lq: Image, hq: Image) -> float | None:
    """HQ pixel size in LQ pixels (the nominal ``lq_from_hq`` scale); None if neither is known (then it is estimated)."""
    if lq.pixel_size is None and hq.pixel_size is None:
        return None
    if lq.pixel_size is None or hq.pixel_size is None:
        missing = lq if lq.pixel_size is None else hq
        flag = "--lq-pixel-size" if missing is lq else "--hq-pixel-size"
        raise ConfocalizeError(f"{_label(missing)}: pixel size unknown; pass {flag} (µm) so that the two microscopes can be scaled")
    ratio = hq.pixel_size / lq.pixel_size
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise ConfocalizeError(f"{_label(lq)} vs {_label(hq)}: pixel sizes differ {ratio:.3g}-fold; check --lq-pixel-size/--hq-pixel-size")
    return ratio


def projection(image: Image) -> np.ndarray:
    """One float32 plane to register on: mean over time, maximum over Z, sum over percentile-normalised channels."""
    data, axes = image.data.astype(np.float32), image.axes
    if axes.startswith("T"):
        data, axes = data.mean(axis=0), axes[1:]
    if "Z" in axes:
        data = data.max(axis=axes.index("Z"))
    if "C" in axes:
        lo, hi = np.percentile(data, [1, 99.9], axis=(-2, -1), keepdims=True)
        data = ((data - lo) / np.maximum(hi - lo, 1e-12)).sum(axis=0)
    return data


def resample(data: np.ndarray, lq_from_hq: np.ndarray, lq_shape: tuple[int, int], order: int = 3) -> np.ndarray:
    """HQ planes (..., Y, X) resampled onto an LQ grid of ``lq_shape`` (0 outside HQ), anti-aliased when shrinking."""
    hq_xy = _apply(np.linalg.inv(lq_from_hq), _grid_xy(lq_shape))
    coords = np.stack([hq_xy[1], hq_xy[0]])
    sigma = max(0.0, (1 / _scale(lq_from_hq) - 1) / 2)
    planes = data.reshape(-1, *data.shape[-2:]).astype(np.float32)
    out = [
        ndimage.map_coordinates(ndimage.gaussian_filter(p, sigma) if sigma > 0 else p, coords, order=order, mode="constant").reshape(lq_shape)
        for p in planes
    ]
    return np.stack(out).reshape(*data.shape[:-2], *lq_shape)


def overlap_mask(lq_shape: tuple[int, int], hq_shape: tuple[int, int], lq_from_hq: np.ndarray) -> np.ndarray:
    """LQ pixels whose centre maps inside the HQ image."""
    x, y = _apply(np.linalg.inv(lq_from_hq), _grid_xy(lq_shape))
    return ((x >= 0) & (x <= hq_shape[1] - 1) & (y >= 0) & (y <= hq_shape[0] - 1)).reshape(lq_shape)


def largest_rectangle(mask: np.ndarray) -> list[int]:
    """``[y0, x0, y1, x1]`` (half-open) of the largest axis-aligned rectangle inside a convex mask."""
    filled = mask.any(axis=1)
    width = mask.shape[1]
    left = np.where(filled, mask.argmax(axis=1), width)
    right = np.where(filled, width - 1 - mask[:, ::-1].argmax(axis=1), -1)
    best_area, best = 0, [0, 0, 0, 0]
    for y0 in np.flatnonzero(filled):
        lo = np.maximum.accumulate(left[y0:])
        hi = np.minimum.accumulate(right[y0:])
        area = np.maximum(hi - lo + 1, 0) * np.arange(1, len(lo) + 1)
        k = int(area.argmax())
        if area[k] > best_area:
            best_area, best = int(area[k]), [int(y0), int(lo[k]), int(y0 + k + 1), int(hi[k] + 1)]
    return best


def decompose(lq_from_hq: np.ndarray) -> dict[str, Any]:
    """Rotation (degrees), flip (mirrored x), scale (LQ px per HQ px), anisotropy and shear of a transform."""
    lin = lq_from_hq[:2, :2]
    flip = bool(np.linalg.det(lin) < 0)
    unflipped = lin @ np.diag([-1.0, 1.0]) if flip else lin
    angle = math.atan2(unflipped[1, 0], unflipped[0, 0])
    upper = _rotation(-angle)[:2, :2] @ unflipped  # upper triangular: [[sx, k], [0, sy]]
    return {
        "rotation_deg": math.degrees(angle),
        "flip": flip,
        "scale": _scale(lq_from_hq),
        "anisotropy": float(upper[0, 0] / upper[1, 1]) - 1,
        "shear": float(upper[0, 1] / upper[1, 1]),
    }


def point_rms(a: np.ndarray, b: np.ndarray, hq_shape: tuple[int, int], lq_shape: tuple[int, int]) -> float:
    """RMS distance (LQ pixels) between where ``a`` and ``b`` put the HQ pixels that ``a`` puts inside the LQ image."""
    xy = _grid_xy(hq_shape, step=max(1, max(hq_shape) // 64))
    pa, pb = _apply(a, xy), _apply(b, xy)
    inside = (pa[0] >= 0) & (pa[0] <= lq_shape[1] - 1) & (pa[1] >= 0) & (pa[1] <= lq_shape[0] - 1)
    if not inside.any():
        return math.inf
    return float(np.sqrt(np.mean(np.sum((pa - pb)[:, inside] ** 2, axis=0))))


def overlay(lq_plane: np.ndarray, hq_on_lq: np.ndarray) -> np.ndarray:
    """uint8 RGB for a person to check a registration: magenta = LQ, green = registered HQ."""
    lq_n, hq_n = _unit(lq_plane), _unit(hq_on_lq)
    return (np.stack([lq_n, hq_n, lq_n], axis=-1) * 255).round().astype(np.uint8)


def write_overlay(path: str | Path, lq: Image, registration: Registration) -> Path:
    """Write :func:`overlay` of a registered pair as PNG, atomically."""
    from PIL import Image as PILImage

    rgb = overlay(projection(lq), projection(Image(registration.hq_on_lq, registration.axes)))
    path = Path(path)
    with atomic_write(path) as tmp:
        PILImage.fromarray(rgb).save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------------------------
# Known-transform pairs: tests, benchmarks and self-checks on a user's own HQ images


def random_lq_from_hq(
    rng: np.random.Generator,
    scale: float,
    lq_shape: tuple[int, int],
    hq_shape: tuple[int, int],
    max_rotation_deg: float = 15.0,
    allow_flip: bool = True,
    max_shift: float = 0.5,
    max_distortion: float = 0.03,
) -> np.ndarray:
    """A random ``lq_from_hq``: pixel-size ``scale`` with +-``max_distortion`` scale error and shear,
    rotation, maybe a flip, and the image centres apart by up to ``max_shift`` of the LQ field."""
    sx, sy = scale * (1 + rng.uniform(-max_distortion, max_distortion, 2))
    linear = np.array([[sx, sy * rng.uniform(-max_distortion, max_distortion), 0], [0, sy, 0], [0, 0, 1]])
    mirror = _mirror(allow_flip and rng.random() < 0.5)
    direction = rng.uniform(0, 2 * math.pi)
    shift = max_shift * min(lq_shape) * math.sqrt(rng.uniform()) * np.array([math.cos(direction), math.sin(direction)])
    rotation = _rotation(math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg)))
    return _translation(_centre(lq_shape) + shift) @ rotation @ mirror @ linear @ _translation(-_centre(hq_shape))


def synthetic_pair(
    base: np.ndarray,
    rng: np.random.Generator,
    scale: float,
    size: int = 128,
    lq_pixel_size: float = 0.1,
    lq_from_hq: np.ndarray | None = None,
) -> tuple[Image, Image, np.ndarray]:
    """An (LQ, HQ, true ``lq_from_hq``) pair made from a sharp 2D ``base`` image.

    ``scale`` is the HQ pixel size in LQ pixels; the smaller image is about ``size`` pixels across
    (less if ``base`` is too small for that field) and both cover about the same field. HQ is a crop
    of ``base``; LQ is ``base`` (dark outside it) seen through a random (or the given) transform,
    blurred like a wide-field PSF, with out-of-focus haze, Poisson and read noise, as 12-bit counts.
    """
    field = min(size * max(1.0, 1 / scale), 0.8 * min(base.shape))  # base pixels across the LQ field
    hq_side = min(int(round(field * rng.uniform(0.8, 1.2))), *base.shape)
    y0, x0 = ((np.array(base.shape) - hq_side) * rng.uniform(0.3, 0.7, 2)).astype(int)
    hq_data = base[y0 : y0 + hq_side, x0 : x0 + hq_side]
    lq_shape = (int(round(field * scale)),) * 2
    truth = random_lq_from_hq(rng, scale, lq_shape, hq_data.shape) if lq_from_hq is None else lq_from_hq
    sharp = np.clip(resample(base.astype(np.float32), truth @ _translation(np.array([-x0, -y0], float)), lq_shape), 0, None)
    sharp /= max(float(sharp.max()), 1e-12)
    psf = ndimage.gaussian_filter(sharp, rng.uniform(1.0, 2.0))
    hazy = psf + rng.uniform(0.5, 1.5) * ndimage.gaussian_filter(sharp, 15.0) + 0.1
    counts = rng.poisson(hazy * rng.uniform(50, 500)) + rng.normal(100, 3, lq_shape)
    lq = Image(np.clip(counts, 0, 4095).astype(np.uint16), "YX", lq_pixel_size)
    return lq, Image(hq_data, "YX", lq_pixel_size * scale), truth


# ----------------------------------------------------------------------------------------------
# Pyramid and band-pass


def _pyramid(lq: np.ndarray, hq: np.ndarray, scale: float, opts: RegistrationOptions, coarsest: float = 0.0) -> list[_Level]:
    """Levels from coarse to fine at ``scale``, the coarsest with at most ``coarse_size`` pixels across the
    smaller footprint; a level band-passed at ``coarsest`` (LQ pixels) goes first when that is coarser."""
    sigmas = _sigmas(lq.shape, hq.shape, scale, scale, opts.coarse_size, opts)
    return [_level(lq, hq, scale, sigma, opts.sigma_px) for sigma in ([coarsest] if coarsest > sigmas[0] else []) + sigmas]


def _sigmas(
    lq_shape: tuple[int, ...], hq_shape: tuple[int, ...], low: float, high: float, size: int, opts: RegistrationOptions
) -> list[float]:
    """Band-pass scales (LQ pixels) of the levels for scales ``low`` to ``high``, coarse to fine, doubling until
    a level has at most ``size`` pixels across the smaller footprint (at ``high``) or a coarser one would be too small (at ``low``)."""
    footprint = min(max(lq_shape), max(hq_shape) * high)
    sigmas = [max(opts.sigma_px, HQ_MIN_SIGMA * high)]
    while footprint / _factors(high, sigmas[-1], opts.sigma_px)[0] > size:
        lq_factor, hq_factor = _factors(low, 2 * sigmas[-1], opts.sigma_px)
        if min(lq_shape) / lq_factor < MIN_LEVEL_PIXELS or min(hq_shape) / hq_factor < MIN_LEVEL_PIXELS:
            break
        sigmas.append(2 * sigmas[-1])
    return sigmas[::-1]


def _factors(scale: float, sigma: float, sigma_px: float) -> tuple[int, float]:
    """Grid factors of LQ and HQ for a band-pass at ``sigma`` LQ pixels (at least ``sigma_px`` grid pixels).

    An HQ image with pixels larger than the LQ grid's is put on a finer spline grid, so that linear
    interpolation between its grid pixels stays accurate.
    """
    lq_factor = max(1, int(sigma / sigma_px))
    ratio = lq_factor / scale
    return lq_factor, float(int(ratio)) if ratio >= 1 else 1 / math.ceil(1 / ratio)


def _level(lq: np.ndarray, hq: np.ndarray, scale: float, sigma: float, sigma_px: float) -> _Level:
    """Both images on their grids for ``sigma`` and band-passed at ``sigma`` LQ pixels."""
    f, g = _factors(scale, sigma, sigma_px)
    return _Level(_grid(lq, f, sigma / f), _grid(hq, g, sigma / (scale * g)), sigma)


def _grid(image: np.ndarray, factor: float, sigma: float, blur: float = 0.0) -> _Grid:
    """``image`` on a grid of ``factor``, blurred by ``blur`` and band-passed at ``sigma`` (pixels of the grid)."""
    return _Grid(_bandpass(_regrid(image, factor), sigma, blur), factor, sigma)


def _regrid(image: np.ndarray, factor: float) -> np.ndarray:
    """Means over ``factor`` x ``factor`` blocks (edge remainder dropped), or a cubic spline on a finer grid."""
    if factor < 1:
        n = round(1 / factor)
        rows, cols = (np.arange(size * n) * factor + (factor - 1) / 2 for size in image.shape)
        return ndimage.map_coordinates(image, np.meshgrid(rows, cols, indexing="ij"), order=3, mode="nearest")
    f = int(factor)
    if f == 1:
        return image
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    return image[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _bandpass(image: np.ndarray, sigma: float, blur: float = 0.0) -> np.ndarray:
    """Difference of Gaussians at ``sigma`` and ``DOG_RATIO * sigma`` after a Gaussian ``blur``, in pixels of ``image``."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), math.hypot(sigma, blur), mode="reflect")
    return smooth - ndimage.gaussian_filter(smooth, sigma * math.sqrt(DOG_RATIO**2 - 1), mode="reflect")


# ----------------------------------------------------------------------------------------------
# Coarse search


def _sweep_scales(opts: RegistrationOptions) -> list[float]:
    """Scales of the sweep: a geometric grid over ``opts.scale_range``, steps of at most ``opts.scale_step``."""
    low, high = opts.scale_range
    return np.geomspace(low, high, math.ceil(math.log(high / low) / math.log1p(opts.scale_step) - 1e-9) + 1).tolist()


def _coarse_search(
    lq: np.ndarray, hq: np.ndarray, scales: list[float], sigma: float, angle_step: float, opts: RegistrationOptions
) -> list[_Candidate]:
    """The best ``opts.hypotheses`` distinct placements (scale, flip, rotation, shift) by masked NCC, best first.

    Both images are band-passed at ``sigma`` LQ pixels for every scale, so that the NCCs compare; they
    rank by :attr:`_Candidate.rank`, as a small overlap (a small scale) correlates highly by chance.
    The rotations cover ``+-opts.max_rotation_deg`` in steps of at most ``angle_step``.
    """
    steps = math.ceil(opts.max_rotation_deg / angle_step - 1e-9)
    angles = np.linspace(-opts.max_rotation_deg, opts.max_rotation_deg, 2 * steps + 1)
    found = []
    for scale in scales:
        level = _level(lq, hq, scale, sigma, opts.sigma_px)
        guesses = [
            _translation(_centre(lq.shape)) @ _rotation(math.radians(angle)) @ _mirror(flip) @ np.diag([scale, scale, 1]) @ _translation(-_centre(hq.shape))
            for flip in ((False, True) if opts.allow_flip else (False,))
            for angle in angles
        ]
        canvases = [_canvas(level, guess, hq.shape) for guess in guesses]
        lq_mask = level.lq.inside(_grid_xy(level.lq.image.shape)).reshape(level.lq.image.shape)
        correlate = _MaskedNcc(level.lq.image, lq_mask, tuple(np.max([c[0].shape for c in canvases], axis=0)))
        radius = max(1, int(round(level.lq.sigma)))
        for guess, (canvas, valid, origin) in zip(guesses, canvases):
            ncc, pairs = correlate(canvas, valid, opts.min_overlap)
            for row, col in peak_local_max(ncc, min_distance=radius, num_peaks=3, exclude_border=False):
                shift = np.array([col - (canvas.shape[1] - 1), row - (canvas.shape[0] - 1)], float) - origin  # LQ grid pixels
                found.append(_Candidate(float(ncc[row, col]), _translation(shift * level.lq.factor) @ guess, scale, float(pairs[row, col])))
    return _distinct(found, DOG_RATIO * sigma, hq.shape, lq.shape, opts.hypotheses)


def _canvas(level: _Level, guess: np.ndarray, hq_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band-passed HQ placed by ``guess`` on an LQ-grid canvas around it: image, valid mask, (x, y) origin."""
    h, w = hq_shape
    corners = level.lq.to_level(_apply(guess, np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1]], float)))
    origin = np.floor(corners.min(axis=1))
    shape = tuple(int(n) for n in (np.ceil(corners.max(axis=1)) - origin + 1)[::-1])
    hq_xy = level.hq.to_level(_apply(np.linalg.inv(guess), level.lq.to_full(_grid_xy(shape) + origin[:, None])))
    canvas = ndimage.map_coordinates(level.hq.image, [hq_xy[1], hq_xy[0]], order=1, mode="nearest").reshape(shape)
    return canvas, level.hq.inside(hq_xy).reshape(shape), origin


class _MaskedNcc:
    """Masked normalised cross-correlation (Padfield 2012) of one fixed image with many moving ones.

    The fixed image's spectra are computed once. ``result[k]`` pairs moving pixel ``m`` with fixed
    pixel ``m + k - (moving.shape - 1)``, as ``mode="full"`` of skimage's ``cross_correlate_masked``.
    """

    def __init__(self, fixed: np.ndarray, fixed_mask: np.ndarray, max_moving_shape: tuple[int, ...]) -> None:
        self.fixed_shape = fixed.shape
        self.shape = tuple(scipy.fft.next_fast_len(a + b - 1, real=True) for a, b in zip(fixed.shape, max_moving_shape))
        mask = fixed_mask.astype(np.float64)
        image = fixed * mask
        self.image, self.squared, self.mask = (scipy.fft.rfft2(x, self.shape) for x in (image, image * image, mask))

    def __call__(self, moving: np.ndarray, moving_mask: np.ndarray, min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
        """NCC for every shift whose overlap is at least ``min_overlap`` of the largest (0 elsewhere), and the pixels compared."""
        mask = moving_mask[::-1, ::-1].astype(np.float64)
        image = moving[::-1, ::-1] * mask
        spectra = [scipy.fft.rfft2(x, self.shape) for x in (image, image * image, mask)]
        out_shape = tuple(a + b - 1 for a, b in zip(self.fixed_shape, moving.shape))

        def inverse(product: np.ndarray) -> np.ndarray:
            return scipy.fft.irfft2(product, self.shape)[: out_shape[0], : out_shape[1]]

        pairs = np.maximum(np.round(inverse(self.mask * spectra[2])), 1.0)
        sum_fixed, sum_moving = inverse(self.image * spectra[2]), inverse(self.mask * spectra[0])
        numerator = inverse(self.image * spectra[0]) - sum_fixed * sum_moving / pairs
        var_fixed = np.maximum(inverse(self.squared * spectra[2]) - sum_fixed**2 / pairs, 0)
        var_moving = np.maximum(inverse(self.mask * spectra[1]) - sum_moving**2 / pairs, 0)
        denominator = np.sqrt(var_fixed * var_moving)
        ncc = np.where(denominator > 1e-9 * denominator.max(), numerator / np.maximum(denominator, 1e-300), 0.0)
        ncc[pairs < min_overlap * pairs.max()] = 0.0
        return np.clip(ncc, -1, 1), pairs


def _distinct(
    candidates: list[_Candidate], distance: float, hq_shape: tuple[int, int], lq_shape: tuple[int, int], count: int
) -> list[_Candidate]:
    """Up to ``count`` best-ranked candidates that place HQ more than ``distance`` LQ pixels (RMS) apart."""
    kept: list[_Candidate] = []
    for candidate in sorted(candidates, key=lambda c: -c.rank):
        if all(point_rms(k.lq_from_hq, candidate.lq_from_hq, hq_shape, lq_shape) > distance for k in kept):
            kept.append(candidate)
            if len(kept) == count:
                break
    return kept


# ----------------------------------------------------------------------------------------------
# Affine refinement


@dataclass(frozen=True)
class _Linearised:
    """NCC of a level at one affine update, with what a Gauss-Newton step needs (zero-mean over the overlap)."""

    ncc: float
    warped: np.ndarray  # band-passed HQ at the sample points
    reference: np.ndarray  # band-passed LQ at the sample points
    jacobian: np.ndarray  # (6, N): d warped / d update


class _NccObjective:
    """Band-passed NCC of one level as a function of an affine update of ``lq_from_hq``.

    The update ``p`` (6 numbers, in grid pixels of the level) displaces LQ sample points by
    ``factor * (p[0:2] + [[p2, p3], [p4, p5]] @ u)`` with ``u`` their position relative to the LQ centre,
    divided by the LQ half-diagonal, before mapping them into HQ. Sums are element-wise rather
    than BLAS calls: on a busy machine, multithreaded BLAS on these short vectors is many times slower.
    """

    def __init__(self, level: _Level, lq_from_hq: np.ndarray, max_points: int, leave_out: tuple[float, int] | None = None) -> None:
        lq_img = level.lq.image
        stride = max(1, math.ceil(math.sqrt(lq_img.size / max_points)))
        grid_xy = _grid_xy(lq_img.shape, stride)
        keep = level.lq.inside(grid_xy)
        if leave_out is not None:  # drop one of JACKKNIFE_SIDE**2 interleaved sets of square blocks
            block, drop = leave_out
            bx, by = (np.floor(v / block) % JACKKNIFE_SIDE for v in level.lq.to_full(grid_xy))
            keep &= bx + JACKKNIFE_SIDE * by != drop
        grid_xy = grid_xy[:, keep]
        self.reference = lq_img[grid_xy[1].astype(int), grid_xy[0].astype(int)].astype(np.float64)
        self.points = level.lq.to_full(grid_xy)
        full_shape = tuple(np.array(lq_img.shape) * level.lq.factor)
        self.centre, self.radius = _centre(full_shape), 0.5 * math.hypot(*full_shape)
        self.u = (self.points - self.centre[:, None]) / self.radius
        self.level = level
        self.hq_from_lq = np.linalg.inv(lq_from_hq)

    @cached_property
    def gradients(self) -> list[np.ndarray]:
        """d/drow and d/dcol of the band-passed HQ grid."""
        return np.gradient(self.level.hq.image.astype(np.float64))

    def transform(self, p: np.ndarray) -> np.ndarray:
        """``lq_from_hq`` after the update ``p``."""
        f = self.level.lq.factor
        update = np.eye(3)
        update[:2, :2] += np.array([[p[2], p[3]], [p[4], p[5]]]) * f / self.radius
        update[:2, 2] = f * np.asarray(p[:2]) - (update[:2, :2] - np.eye(2)) @ self.centre
        return np.linalg.inv(self.hq_from_lq @ update)

    def evaluate(self, p: np.ndarray, jacobian: bool = True) -> _Linearised | None:
        """NCC after the update ``p`` (and its Jacobian); None without enough overlap or contrast."""
        f, hq = self.level.lq.factor, self.level.hq
        ux, uy = self.u
        moved = np.stack([self.points[0] + f * (p[0] + p[2] * ux + p[3] * uy), self.points[1] + f * (p[1] + p[4] * ux + p[5] * uy)])
        hq_xy = hq.to_level(_apply(self.hq_from_lq, moved))
        valid = hq.inside(hq_xy)
        if valid.sum() < 100:
            return None
        coords = [hq_xy[1][valid], hq_xy[0][valid]]
        a = ndimage.map_coordinates(hq.image, coords, order=1).astype(np.float64)
        a -= a.mean()
        b = self.reference[valid] - self.reference[valid].mean()
        norms = math.sqrt((a * a).sum() * (b * b).sum())
        if norms == 0:
            return None
        jac = np.empty((6, 0))
        if jacobian:
            gy, gx = (ndimage.map_coordinates(g, coords, order=1) / hq.factor for g in self.gradients)
            lin = self.hq_from_lq[:2, :2]  # chain rule: d value / d LQ displacement = lin^T grad_hq
            qx, qy = lin[0, 0] * gx + lin[1, 0] * gy, lin[0, 1] * gx + lin[1, 1] * gy
            ux, uy = ux[valid], uy[valid]
            jac = f * np.stack([qx, qy, qx * ux, qx * uy, qy * ux, qy * uy])
        return _Linearised(float((a * b).sum() / norms), a, b, jac)


def _ecc_step(state: _Linearised) -> np.ndarray:
    """Gauss-Newton update maximising the linearised NCC (the ECC algorithm, Evangelidis & Psarakis 2008)."""
    g = state.jacobian - state.jacobian.mean(axis=1, keepdims=True)
    a, b = state.warped, state.reference
    hessian_inv = np.linalg.pinv(np.einsum("in,jn->ij", g, g))
    proj_a, proj_b = np.einsum("in,n->i", g, a), np.einsum("in,n->i", g, b)
    explained_a, cross = proj_a @ hessian_inv @ proj_a, proj_b @ hessian_inv @ proj_a
    denominator = (a * b).sum() - cross
    if denominator > 0:
        lam = ((a * a).sum() - explained_a) / denominator
    else:  # far from the optimum: the paper's safeguarded choice
        explained_b = max(proj_b @ hessian_inv @ proj_b, 1e-30)
        lam = max(math.sqrt(max(explained_a / explained_b, 0.0)), (cross - (a * b).sum()) / explained_b)
    return hessian_inv @ np.einsum("in,n->i", g, lam * b - a)


def _match_blur(
    lq: np.ndarray, hq: np.ndarray, scale: float, level: _Level, lq_from_hq: np.ndarray, max_points: int
) -> tuple[_Level, float]:
    """``level`` re-filtered so that LQ and HQ are equally sharp, and the extra blur of LQ over HQ.

    The blur is a Gaussian sigma in LQ pixels, negative when HQ is the blurrier one. A wide-field
    image is blurrier than its confocal partner; comparing them unmatched biases the fitted scale
    and shear towards making structures look alike. The blur is read from the ratio of the
    cross-spectrum to the HQ power spectrum on a window of the overlap: LQ noise, uncorrelated with
    HQ, drops out of the cross-spectrum (maximising the NCC instead would over-blur a noisy LQ).
    """
    f, g = level.lq.factor, level.hq.factor
    a, b, mask = _compared(level, lq_from_hq, *_window(level, lq_from_hq, max_points))
    if mask.sum() < 100:
        return level, 0.0
    taper = ndimage.gaussian_filter(mask.astype(np.float64), level.lq.sigma) * mask
    a, b = ((x - x[mask].mean()) * taper for x in (a, b))
    spectra = [scipy.fft.rfft2(x) for x in (a, b)]
    fy, fx = scipy.fft.fftfreq(a.shape[0])[:, None], scipy.fft.rfftfreq(a.shape[1])[None, :]
    rings = np.minimum((np.hypot(fx, fy) * 2 * min(a.shape)).astype(int), min(a.shape))  # radial bins
    cross = np.bincount(rings.ravel(), (spectra[1] * spectra[0].conj()).real.ravel())
    power = np.bincount(rings.ravel(), (np.abs(spectra[0]) ** 2).ravel())
    k2 = np.bincount(rings.ravel(), np.broadcast_to(fx**2 + fy**2, rings.shape).ravel()) / np.maximum(np.bincount(rings.ravel()), 1)
    ratio = cross / np.maximum(power, 1e-30)
    use = (power > 0.05 * power.max()) & (ratio > 0.05)
    if use.sum() < 3:
        return level, 0.0
    slope = np.polyfit(k2[use], np.log(ratio[use]), 1, w=np.sqrt(power[use]))[0]  # ln(h_lq / h_hq) = -2 pi^2 s^2 k^2
    variance = -slope / (2 * math.pi**2) * f**2  # LQ pixels squared; negative: HQ is blurrier
    blur = math.copysign(math.sqrt(min(abs(variance), (2 * level.sigma) ** 2)), variance)
    if blur >= 0:
        return replace(level, hq=_grid(hq, g, level.hq.sigma, blur / (scale * g))), blur
    return replace(level, lq=_grid(lq, f, level.lq.sigma, -blur / f)), blur


def _jackknife(
    level: _Level, lq_from_hq: np.ndarray, max_points: int, sigma: float, hq_shape: tuple[int, int], lq_shape: tuple[int, int]
) -> float:
    """Jackknife standard error (LQ pixels RMS over the overlap) of the fit.

    Refits without each of 9 interleaved sets of blocks, each block a few correlation lengths
    (``sigma``, LQ pixels: the band-pass scale including any matching blur) wide.
    """
    sets = JACKKNIFE_SIDE**2
    fits = [_refine(level, lq_from_hq, max_points, (2 * DOG_RATIO * sigma, k)) for k in range(sets)]
    mean = np.mean(fits, axis=0)
    return math.sqrt((sets - 1) / sets * sum(point_rms(f, mean, hq_shape, lq_shape) ** 2 for f in fits))


def _refine_levels(levels: list[_Level], lq_from_hq: np.ndarray, max_points: int) -> np.ndarray:
    """:func:`_refine` through all ``levels``, coarse to fine."""
    for level in levels:
        lq_from_hq = _refine(level, lq_from_hq, max_points)
    return lq_from_hq


def _refine(level: _Level, lq_from_hq: np.ndarray, max_points: int, leave_out: tuple[float, int] | None = None) -> np.ndarray:
    """Affine ``lq_from_hq`` maximising the band-passed NCC of one level (without the blocks ``leave_out``).

    Gauss-Newton (ECC) steps, halved until the NCC improves, within a few band-pass scales of the start.
    """
    objective = _NccObjective(level, lq_from_hq, max_points, leave_out)
    bound = 2 * DOG_RATIO * level.sigma / level.lq.factor
    p = np.zeros(6)
    state = objective.evaluate(p)
    for _ in range(MAX_ITERATIONS):
        if state is None:
            break
        step = _ecc_step(state)
        for _ in range(4):
            trial = objective.evaluate(np.clip(p + step, -bound, bound))
            if trial is not None and trial.ncc > state.ncc:
                break
            step /= 2
        else:
            break
        p, state = np.clip(p + step, -bound, bound), trial
        if np.abs(step).max() < CONVERGED:
            break
    return objective.transform(p)


def _chance_std(level: _Level, lq_from_hq: np.ndarray, max_points: int) -> float:
    """Standard deviation of the NCC of two unrelated images with these images' spectra (Bartlett).

    ``var = sum_tau S_a(tau) S_b(tau) / N_tau / (S_a(0) S_b(0))`` with ``S`` the autocorrelation sums of the
    compared (masked, zero-mean) images and ``N_tau`` the number of pixel pairs at lag ``tau``.
    """
    stride = max(1, math.ceil(math.sqrt(level.lq.image.size / max_points)))
    a, b, mask = _compared(level, lq_from_hq, slice(0, None, stride), slice(0, None, stride))
    a, b = ((x - x[mask].mean()) * mask for x in (a, b))
    padded = [2 * n for n in mask.shape]
    s_a, s_b, pairs = (scipy.fft.irfft2(np.abs(scipy.fft.rfft2(x, padded)) ** 2, padded) for x in (a, b, mask.astype(np.float64)))
    use = pairs > 0.25 * pairs[0, 0]
    return float(math.sqrt(max((s_a[use] * s_b[use] / pairs[use]).sum(), 0.0) / (s_a[0, 0] * s_b[0, 0])))


def _compared(level: _Level, lq_from_hq: np.ndarray, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band-passed HQ (resampled) and LQ on the LQ grid pixels ``[rows, cols]``, and where both are usable."""
    lq_img = level.lq.image
    r = np.arange(*rows.indices(lq_img.shape[0]))
    c = np.arange(*cols.indices(lq_img.shape[1]))
    grid_xy = np.stack(np.broadcast_arrays(c[None, :], r[:, None])).reshape(2, -1).astype(np.float64)
    hq_xy = level.hq.to_level(_apply(np.linalg.inv(lq_from_hq), level.lq.to_full(grid_xy)))
    shape = (len(r), len(c))
    mask = (level.lq.inside(grid_xy) & level.hq.inside(hq_xy)).reshape(shape)
    a = ndimage.map_coordinates(level.hq.image, [hq_xy[1], hq_xy[0]], order=1).reshape(shape).astype(np.float64)
    return a, lq_img[rows, cols].astype(np.float64), mask


def _window(level: _Level, lq_from_hq: np.ndarray, max_points: int) -> tuple[slice, slice]:
    """A square of at most ``max_points`` LQ grid pixels centred on the overlap."""
    stride = max(1, math.ceil(math.sqrt(level.lq.image.size / max_points)))
    _, _, mask = _compared(level, lq_from_hq, slice(0, None, stride), slice(0, None, stride))
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    half = int(math.sqrt(max_points)) // 2
    y, x = int(rows.mean() * stride), int(cols.mean() * stride)
    return slice(max(0, y - half), y + half), slice(max(0, x - half), x + half)


def _z_score(ncc: float, chance_std: float) -> float:
    """Fisher z of an NCC against 0 with ``1 / chance_std**2`` effective independent samples."""
    samples = 1 / max(chance_std, 1e-6) ** 2
    return _fisher(ncc) * math.sqrt(max(samples - 3, 1.0))


def _fisher(ncc: float) -> float:
    """Fisher's transform atanh of a correlation (negative ones count as 0)."""
    return math.atanh(min(max(ncc, 0.0), 1 - 1e-9))


def _ncc(level: _Level, lq_from_hq: np.ndarray, max_points: int) -> float:
    """Band-passed NCC of a level under ``lq_from_hq`` (over the overlap)."""
    state = _NccObjective(level, lq_from_hq, max_points).evaluate(np.zeros(6), jacobian=False)
    return state.ncc if state is not None else 0.0


# ----------------------------------------------------------------------------------------------
# Beads


def _bead_fit(
    lq: np.ndarray, hq: np.ndarray, lq_from_hq: np.ndarray, scale: float, opts: RegistrationOptions, names: str
) -> tuple[np.ndarray, float]:
    """Affine fitted by RANSAC to beads matched near ``lq_from_hq``; and the RMS residual (LQ px)."""
    lq_beads = _beads(lq, opts.sigma_px)
    hq_beads = _apply(lq_from_hq, _beads(hq, max(1.0, opts.sigma_px / scale)).T).T
    radius = 2 * opts.sigma_px
    src, dst = _mutual_nearest(hq_beads, lq_beads, radius)
    if len(src) < opts.min_beads:
        raise RegistrationError(f"{names}: only {len(src)} beads matched (need {opts.min_beads}); use intensity mode (no --beads) or brighter beads")
    model, inliers = ransac((src, dst), AffineTransform, min_samples=3, residual_threshold=max(0.5, opts.sigma_px / 2), max_trials=500, rng=0)
    if model is None or inliers.sum() < opts.min_beads:
        raise RegistrationError(f"{names}: beads do not agree on one affine transform; use intensity mode (no --beads)")
    refit = model.params @ lq_from_hq
    residual = np.sqrt(np.mean(np.sum((_apply(model.params, src[inliers].T) - dst[inliers].T) ** 2, axis=0)))
    return refit, float(residual)


def _beads(image: np.ndarray, sigma: float) -> np.ndarray:
    """Sub-pixel (x, y) of bright point sources: local maxima of a smoothed, background-free image."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), sigma)
    smooth -= ndimage.gaussian_filter(smooth, 5 * sigma)
    noise = 1.4826 * np.median(np.abs(smooth - np.median(smooth)))
    peaks = peak_local_max(smooth, min_distance=max(2, int(2 * sigma)), threshold_abs=8 * noise, exclude_border=1)
    log = np.log(np.maximum(smooth - smooth.min(), 1e-12) + 1e-6 * np.ptp(smooth))
    offsets = []
    for axis in (1, 0):  # x then y: Gaussian (log-parabola) fit through three samples
        step = np.eye(2, dtype=int)[axis]
        lo, mid, hi = (log[tuple((peaks + d * step).T)] for d in (-1, 0, 1))
        curvature = lo - 2 * mid + hi
        offsets.append(np.where(curvature < 0, 0.5 * (lo - hi) / np.where(curvature < 0, curvature, -1), 0).clip(-0.5, 0.5))
    return np.stack([peaks[:, 1] + offsets[0], peaks[:, 0] + offsets[1]], axis=1)


def _mutual_nearest(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of points of ``a`` and ``b`` that are each other's nearest neighbour within ``radius``."""
    if len(a) == 0 or len(b) == 0:
        return np.empty((0, 2)), np.empty((0, 2))
    dist_ab, ab = cKDTree(b).query(a, distance_upper_bound=radius)
    _, ba = cKDTree(a).query(b)
    keep = np.flatnonzero((dist_ab <= radius) & (ab < len(b)))
    keep = keep[ba[ab[keep]] == keep]
    return a[keep], b[ab[keep]]


# ----------------------------------------------------------------------------------------------
# Quality


def _measure(
    fine: _Level,
    lq_from_hq: np.ndarray,
    scale: float,
    estimated: bool,
    overlap: np.ndarray,
    hq_shape: tuple[int, int],
    opts: RegistrationOptions,
) -> dict[str, Any]:
    """NCC before/after, overlap fraction and the transform's parameters (``scale``: nominal, ``estimated`` by the sweep)."""
    scale_only = np.array([[scale, 0, (scale - 1) / 2], [0, scale, (scale - 1) / 2], [0, 0, 1]])
    footprint = hq_shape[0] * hq_shape[1] * _scale(lq_from_hq) ** 2
    ncc_after, chance_std = _ncc(fine, lq_from_hq, opts.max_points), _chance_std(fine, lq_from_hq, opts.max_points)
    return {
        "ncc_before": _ncc(fine, scale_only, opts.max_points),
        "ncc_after": ncc_after,
        "z_score": _z_score(ncc_after, chance_std),
        "overlap_fraction": float(overlap.sum() / min(overlap.size, footprint)),
        **decompose(lq_from_hq),
        "scale_error": None if estimated else float(_scale(lq_from_hq) / scale - 1),
        "scale_estimated": estimated,
        "status": "ok",
    }


def _implausible(lq_from_hq: np.ndarray, scale: float, estimated: bool, opts: RegistrationOptions) -> str | None:
    """Why a transform cannot be the one between the two microscopes, or None when it can.

    ``scale`` is the pixel-size ratio or, ``estimated``, the sweep's scale, which allows one sweep step more.
    """
    p = decompose(lq_from_hq)
    tolerance = opts.max_scale_error + (opts.scale_step if estimated else 0.0)
    if abs(p["scale"] / scale - 1) > tolerance or max(abs(p["shear"]), abs(p["anisotropy"])) > opts.max_shear:
        expected = f"the scale sweep found {scale:.3f}" if estimated else f"expected {scale:.3f}"
        return f"implausible fit: scale {p['scale']:.3f} ({expected}), shear {p['shear']:.2f}, anisotropy {p['anisotropy']:.2f}"
    if abs(p["rotation_deg"]) > opts.max_rotation_deg + opts.angle_step_deg:
        return f"fitted rotation {p['rotation_deg']:.1f}° is outside +-{opts.max_rotation_deg}°"
    return None


def _check(quality: dict[str, Any], lq_from_hq: np.ndarray, scale: float, estimated: bool, opts: RegistrationOptions, names: str) -> None:
    """Raise :class:`RegistrationError` unless the result is plausible, unambiguous and above chance."""
    q = quality
    if q["overlap_fraction"] < opts.min_overlap:
        raise RegistrationError(f"{names}: images overlap by {q['overlap_fraction']:.0%} only (need {opts.min_overlap:.0%}); {FIX}")
    if (problem := _implausible(lq_from_hq, scale, estimated, opts)) is not None:
        raise RegistrationError(f"{names}: {problem}; {FIX}")
    if _fisher(q["ncc_fit"]) < opts.min_ncc_ratio * _fisher(q["ncc_alternative"]):
        raise RegistrationError(
            f"{names}: ambiguous, the best fit (NCC {q['ncc_fit']:.2f}) is not clearly better than a different placement "
            f"(NCC {q['ncc_alternative']:.2f}); {FIX}"
        )
    if q["uncertainty_px"] > opts.max_uncertainty_px:
        raise RegistrationError(
            f"{names}: fit uncertain by {q['uncertainty_px']:.2f} px (jackknife; need <= {opts.max_uncertainty_px}); "
            "too little shared structure, use larger fields or a bead image"
        )
    if q["ncc_after"] < opts.min_ncc or q["z_score"] < opts.min_z:
        raise RegistrationError(
            f"{names}: correlation after registration {q['ncc_after']:.2f} (z = {q['z_score']:.1f}) could be chance "
            f"(need >= {opts.min_ncc} and z >= {opts.min_z}); {FIX}"
        )


# ----------------------------------------------------------------------------------------------
# Small geometry helpers


def _label(image: Image) -> str:
    return str(image.path) if image.path is not None else image.name


def _unit(image: np.ndarray) -> np.ndarray:
    """Image scaled to [0, 1] between its 0.5th and 99.8th percentiles."""
    lo, hi = np.percentile(image, [0.5, 99.8])
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)


def _grid_xy(shape: tuple[int, int], step: int = 1) -> np.ndarray:
    """(2, N) array of the (x, y) pixel centres of a grid, row by row."""
    rows, cols = np.mgrid[0 : shape[0] : step, 0 : shape[1] : step]
    return np.stack([cols.ravel(), rows.ravel()]).astype(np.float64)


def _apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to (2, N) or (2,) coordinates (element-wise, no BLAS)."""
    (a, b, c), (d, e, f) = matrix[:2]
    return np.stack([a * xy[0] + b * xy[1] + c, d * xy[0] + e * xy[1] + f])


def _centre(shape: tuple[int, ...]) -> np.ndarray:
    """(x, y) of the centre of an image of ``shape`` (rows, columns)."""
    return np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])


def _scale(matrix: np.ndarray) -> float:
    """Geometric-mean scale of an affine."""
    return float(math.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def _translation(t: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[:2, 2] = t
    return m


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _mirror(flip: bool) -> np.ndarray:
    return np.diag([-1.0, 1.0, 1.0]) if flip else np.eye(3)
