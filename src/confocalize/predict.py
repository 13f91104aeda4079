"""Tiled, overlapping, blended inference of any image size; z-stacks slice by slice, time-lapses frame by frame.

How a large image is cut (:func:`predict_array`): tiles of ``tile`` x ``tile`` pixels (the input the
network sees, which bounds memory) start at multiples of ``generator.multiple`` so that every tile
shares the whole image's down-sampling grid. Each tile keeps its *core*, i.e. it drops a ``halo`` at
every edge that is not an image edge; the halo (a multiple of ``generator.multiple``) defaults to
half the receptive field, which suffices for core edges on that grid (checked with gradient probes
for depths 2 to 5). Neighbouring cores overlap by at least :data:`BLEND` pixels and are
cross-faded with sin² ramps (weights normalised to sum to 1), so a halo chosen too small gives a
soft transition rather than a hard seam. With the default halo and a generator without per-tile
statistics (eval-mode BatchNorm), the tiled result equals the whole-image result up to float rounding.

Each batch of tiles goes through a :class:`confocalize.engine.Runner`: PyTorch by default for
:func:`predict_array`, the package's ``backend`` (``auto``: ONNX Runtime on the CPU) for
:func:`enhance_image` and :func:`enhance_files`. The backend changes nothing else.

A time-lapse (axes with a leading T) is enhanced one frame at a time (:func:`enhance_frames`), every
frame with the same per-channel normalisation, estimated over the whole movie, so that the
normalisation itself adds no flicker; :func:`enhance_files` opens a TIFF time-lapse lazily and
writes its output frame by frame, so one input and one output frame are in memory at a time.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from skimage.transform import resize

from confocalize.batch import BatchSummary, Ledger
from confocalize.engine import Backend, Precision, Runner, TorchRunner, check_precision, make_runner, resolve_backend
from confocalize.errors import ConfocalizeError
from confocalize.io import (
    TIFF_SUFFIXES,
    Image,
    check_pixels,
    frames,
    image_stem,
    list_images,
    read_image,
    tiff_frames,
    write_frames,
    write_image,
)
from confocalize.nets import UNet
from confocalize.normalize import Normalization, sampled_normalization
from confocalize.package import ModelPackage, content_sha256
from confocalize.stacks import as_czyx, channel_views, model_groups, network_input

# One 1024x1024 tile per forward pass needs about 1 GB for the default generator (depth 4, 32 channels),
# the memory of four 512x512 tiles, but wastes far less of it on halos (depth 4: 112 px per inner edge).
DEFAULT_TILE = 1024  # pixels per tile edge, halo included
DEFAULT_BATCH = 1  # tiles per forward pass; raise it on a GPU with memory to spare
BLEND = 16  # minimum overlap of neighbouring tile cores, in pixels, cross-faded
MAX_TILE_WORK = 4.0  # computed pixels per output pixel above which predict_array warns (halos too large for the tile)
UINT16_MAX = 65535
FIT_TOLERANCE = 0.10  # relative pixel-size difference to the model's LQ pixel size that passes without a warning
OutputDtype = Literal["float32", "uint16"]
PER_FILE_ERRORS = (ConfocalizeError, MemoryError, torch.OutOfMemoryError)  # a batch records these per file and goes on
Progress = Callable[[int, int], None]


class Enhancer(Protocol):
    """What :func:`enhance_files` may call instead of :func:`enhance_image` (e.g. :class:`confocalize.trust.TrustedEnhancer`)."""

    settings: Mapping[str, Any]  # what changes its outputs, recorded in the batch sidecars

    def __call__(self, image: Image, runner: Runner) -> tuple[Image, Mapping[str, Image]]:
        """The result (the model run by ``runner``), and extra images by key, written beside it as ``NAME.KEY.ome.tif``."""
        ...


class TilingWarning(UserWarning):
    """Tiles so small next to their halos that most of the computation is thrown away."""


class PixelSizeWarning(UserWarning):
    """An input's pixel size differs from the one the model was trained on by more than :data:`FIT_TOLERANCE`."""


@dataclass(frozen=True)
class _Span:
    """One tile's extent along an axis and its blend weight over that extent."""

    start: int
    stop: int
    weight: np.ndarray

    @property
    def size(self) -> int:
        return self.stop - self.start


def default_halo(generator: UNet) -> int:
    """Context dropped at inner tile edges: half the receptive field, up to a multiple of ``generator.multiple``."""
    return round_up(generator.receptive_field // 2, generator.multiple)


def predict_array(
    generator: UNet,
    x: np.ndarray,
    tile: int = DEFAULT_TILE,
    batch_size: int = DEFAULT_BATCH,
    halo: int | None = None,
    runner: Runner | None = None,
) -> np.ndarray:
    """Apply ``generator`` to a normalised ``(C, Y, X)`` array tile by tile; returns ``(C_out, Y, X)`` float32.

    ``tile`` is the edge of the network input (rounded up to a multiple of ``generator.multiple`` and to
    at least ``2 * halo + BLEND + multiple``); an image no larger than a tile goes through whole.
    ``halo`` defaults to :func:`default_halo`. One batch of tiles at a time goes through ``runner``
    (a :func:`confocalize.engine.make_runner` of the same generator), by default
    :class:`~confocalize.engine.TorchRunner`: the generator's device, eval mode (its training flag is
    restored afterwards) and channels_last (kept).
    """
    if x.ndim != 3:
        raise ValueError(f"expected a (C, Y, X) array, got shape {x.shape}")
    if tile < 1 or batch_size < 1:
        raise ConfocalizeError(f"tile ({tile}) and batch size ({batch_size}) must be at least 1; give positive values")
    m = generator.multiple
    halo = round_up(default_halo(generator) if halo is None else max(halo, 0), m)
    tile = round_up(max(tile, 2 * halo + BLEND + m), m)
    tiles = list(itertools.product(_axis_spans(x.shape[1], tile, halo, m), _axis_spans(x.shape[2], tile, halo, m)))
    work = sum(sy.size * sx.size for sy, sx in tiles) / (x.shape[1] * x.shape[2])
    if work > MAX_TILE_WORK:
        warnings.warn(
            f"tiles of {tile} px with a {halo} px halo compute every pixel {work:.1f} times; "
            f"give a tile of at least {4 * halo} px (--tile) for speed",
            TilingWarning,
            stacklevel=2,
        )
    out = np.zeros((generator.head.out_channels, *x.shape[1:]), dtype=np.float32)
    with (runner or TorchRunner(generator)).session() as forward:
        for batch in _batches(tiles, batch_size):
            inputs = np.stack([x[:, sy.start : sy.stop, sx.start : sx.stop] for sy, sx in batch])
            for (sy, sx), pred in zip(batch, forward(inputs)):
                out[:, sy.start : sy.stop, sx.start : sx.stop] += pred * np.outer(sy.weight, sx.weight)
    return out


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``value``."""
    return -(-value // multiple) * multiple


def _axis_spans(length: int, tile: int, halo: int, multiple: int) -> list[_Span]:
    """Tiles along one axis: origins on the ``multiple`` grid, cores overlapping by >= BLEND, weights summing to 1."""
    if length <= tile:
        return [_Span(0, length, np.ones(length, dtype=np.float32))]
    last = (length - tile) // multiple  # origin of the last tile, in grid units; it runs to the image end
    stride = (tile - 2 * halo - BLEND) // multiple  # largest step (grid units) that keeps the overlap
    n = 1 + -(-last // stride)
    origins = [multiple * (k * last // (n - 1)) for k in range(n)] if n > 1 else [0]
    bounds = [(o, o + tile) for o in origins[:-1]] + [(origins[-1], length)]
    raw = [_ramp_profile(start, stop, length, halo) for start, stop in bounds]
    total = np.zeros(length, dtype=np.float64)
    for (start, stop), w in zip(bounds, raw):
        total[start:stop] += w
    return [_Span(start, stop, (w / total[start:stop]).astype(np.float32)) for (start, stop), w in zip(bounds, raw)]


def _ramp_profile(start: int, stop: int, length: int, halo: int) -> np.ndarray:
    """Weight over one tile: 0 in the halo at inner edges, a sin² ramp over BLEND pixels, then 1."""
    pos = np.arange(start, stop) + 0.5
    inf = np.full(stop - start, np.inf)
    from_start = pos - start - halo if start > 0 else inf
    from_end = stop - halo - pos if stop < length else inf
    ramp = np.clip(np.minimum(from_start, from_end) / BLEND, 0.0, 1.0)
    return np.sin(0.5 * np.pi * ramp) ** 2


def _batches(tiles: list[tuple[_Span, _Span]], batch_size: int) -> Iterator[list[tuple[_Span, _Span]]]:
    """Tiles of one shape, at most ``batch_size`` at a time."""
    for _, group in itertools.groupby(sorted(tiles, key=_tile_shape), key=_tile_shape):
        same = list(group)
        for i in range(0, len(same), batch_size):
            yield same[i : i + batch_size]


def _tile_shape(tile: tuple[_Span, _Span]) -> tuple[int, int]:
    return tile[0].size, tile[1].size


def enhance_image(
    package: ModelPackage,
    image: Image,
    tile: int = DEFAULT_TILE,
    batch_size: int = DEFAULT_BATCH,
    resample: bool = False,
    backend: Backend | Runner = "auto",
    normalizations: Sequence[Normalization] | None = None,
) -> Image:
    """Enhance one image of any axes; returns float32 in the model's output units (normalised HQ, ~0..1).

    Each channel is normalised with the package's percentiles over its whole stack (not per plane,
    so that dim out-of-focus planes stay dim; estimated on :func:`~confocalize.normalize.percentile_sample`
    with the package's ``input_window``, exact up to a million values), then every plane goes through :func:`predict_array` with its input
    planes as :mod:`confocalize.stacks` describes: every channel on its own or all together, with the
    package's ``context_slices`` neighbouring planes (2.5D). Axes, pixel size, z step and path are kept
    (a C axis is added only if the model makes several output channels). See :func:`check_fit` for
    ``resample``: the image is then enhanced on the model's pixel grid and brought back to its own.
    ``backend`` as :func:`confocalize.engine.make_runner` takes it (pass a runner to reuse it across images).
    ``normalizations`` (one per channel) replace the estimate. A time-lapse goes through :func:`enhance_frames`
    and comes back whole (time increment kept).
    """
    if image.axes.startswith("T"):
        enhanced = list(enhance_frames(package, image, tile, batch_size, resample, backend))
        return image.with_data(np.stack([f.data for f in enhanced]), "T" + enhanced[0].axes)
    where = str(image.path) if image.path is not None else "image"
    check_pixels(where, image.data)
    czyx = as_czyx(image.data, image.axes)
    groups = model_groups(czyx.shape[0], package.in_channels, package.context_slices, where)
    zoom = check_fit(package, image, resample)
    if zoom is not None:
        czyx = _resize_yx(czyx, [zoom * n for n in czyx.shape[-2:]])
    if normalizations is None:
        norm = package.normalization
        normalizations = [sampled_normalization(c, norm.low, norm.high, norm.input_window) for c in czyx]
    normalised = np.empty(czyx.shape, dtype=np.float32)  # filled channel by channel: no full-size temporaries
    for c, n, out in zip(czyx, normalizations, normalised, strict=True):
        n.apply(c, out=out)
    k = package.context_slices
    runner = make_runner(package, backend)
    stacks = [_predict_stack(package.generator, runner, normalised, g, k, tile, batch_size) for g in groups]
    del normalised
    result = stacks[0] if len(stacks) == 1 else np.concatenate(stacks)
    if not np.all(np.isfinite(result)):  # never hand on garbage: NaN weights, or an overflow inside the network
        raise ConfocalizeError(f"{where}: the model's output holds NaN/Inf; its weights are unusable, retrain it or use another model")
    if zoom is not None:
        result = _resize_yx(result, image.data.shape[-2:])
    return image.with_data(*from_czyx(result, image.axes))


def movie_normalizations(package: ModelPackage, image: Image) -> list[Normalization]:
    """Each channel's normalisation as the package makes it, over all its planes and time points (a lazy image:
    read once, chunk by chunk, for the sampled rows)."""
    norm = package.normalization
    return [sampled_normalization(c, norm.low, norm.high, norm.input_window) for c in channel_views(image.data, image.axes)]


def enhance_frames(
    package: ModelPackage,
    image: Image,
    tile: int = DEFAULT_TILE,
    batch_size: int = DEFAULT_BATCH,
    resample: bool = False,
    backend: Backend | Runner = "auto",
) -> Iterator[Image]:
    """Every time point of ``image`` enhanced in turn, as :func:`enhance_image` does one (an image without T: one frame).

    All frames share each channel's normalisation, estimated over the whole movie first; a lazy (dask) movie is
    then read one frame at a time.
    """
    normalizations = movie_normalizations(package, image)
    runner = make_runner(package, backend)  # once for the movie
    for frame in frames(image):
        yield enhance_image(package, frame, tile, batch_size, resample, runner, normalizations)


def check_fit(package: ModelPackage, image: Image, resample: bool = False) -> float | None:
    """The zoom that brings ``image`` to the model's LQ pixel size, or ``None`` to enhance it as it is.

    Pixel sizes within :data:`FIT_TOLERANCE` pass. Beyond, the zoom is returned when ``resample`` is
    set, else a :class:`PixelSizeWarning` is issued. ``resample`` needs both pixel sizes known.
    """
    where = str(image.path) if image.path is not None else "image"
    model_px, px = package.lq_pixel_size, image.pixel_size
    if resample and (model_px is None or px is None):
        missing = "the model does not record its LQ pixel size" if model_px is None else "its pixel size is unknown"
        raise ConfocalizeError(f"{where}: cannot resample, {missing}; give --pixel-size, or enhance without --resample")
    if model_px is None or px is None or abs(px / model_px - 1) <= FIT_TOLERANCE:
        return None
    if not resample:
        warnings.warn(
            f"{where}: pixel size {px:g} µm differs from the model's {model_px:g} µm by {abs(px / model_px - 1):.0%}; "
            "results may be poor: resample it to the model's pixel size and back (--resample)",
            PixelSizeWarning,
            stacklevel=3,
        )
        return None
    return px / model_px


def _resize_yx(czyx: np.ndarray, shape: Sequence[float]) -> np.ndarray:
    """Every YX plane of a ``(C, Z, Y, X)`` array resized to ``shape`` (rounded), linearly, anti-aliased when shrinking."""
    size = tuple(max(2, round(n)) for n in shape)
    return resize(czyx, (*czyx.shape[:2], *size), order=1, mode="reflect", preserve_range=True).astype(np.float32)


def _predict_stack(
    generator: UNet, runner: Runner, czyx: np.ndarray, channels: list[int], context: int, tile: int, batch_size: int
) -> np.ndarray:
    """``channels`` of a ``(C, Z, Y, X)`` array -> ``(C_out, Z, Y, X)``, plane by plane."""
    inputs = (network_input(czyx, channels, z, context) for z in range(czyx.shape[1]))
    planes = [predict_array(generator, x, tile, batch_size, runner=runner) for x in inputs]
    return planes[0][:, None] if len(planes) == 1 else np.stack(planes, axis=1)


def from_czyx(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Drop the Z axis (and a single C axis) that ``axes`` did not have."""
    if "Z" not in axes:
        data = data[:, 0]
    if "C" not in axes and data.shape[0] == 1:
        return data[0], axes
    return data, "C" + axes.replace("C", "")


def enhance_files(
    package: ModelPackage,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    dtype: OutputDtype = "float32",
    pixel_size: float | None = None,
    axes: str | None = None,
    progress: Progress | None = None,
    tile: int = DEFAULT_TILE,
    batch_size: int = DEFAULT_BATCH,
    resample: bool = False,
    keep_going: bool | None = None,
    enhancer: Enhancer | None = None,
    backend: Backend = "auto",
    precision: Precision = "fp32",
) -> BatchSummary:
    """Enhance image files and folders into ``out_dir/NAME.ome.tif`` (atomically); returns what was done.

    Outputs keep the input's axes, pixel size and z step (``pixel_size``/``axes`` fill in or override
    the file's); ``resample`` as in :func:`enhance_image`. ``uint16`` maps the model's [0, 1] to
    [0, 65535], clipping values outside.
    Refuses, before writing anything, to overwrite an input or to map two inputs to one output.
    Outputs already complete from an earlier run are skipped, verified by their checksum sidecar
    (see :mod:`confocalize.batch`). ``keep_going`` (default: on when an input is a folder) records a
    file that cannot be read or enhanced in the summary's ``failed`` and goes on; otherwise it raises.
    The summary, as a sequence, is the list of complete outputs. ``enhancer`` replaces
    :func:`enhance_image` (``tile``, ``batch_size`` and ``resample`` are then its own); its extra
    images go beside each output as ``NAME.KEY.ome.tif`` (float32), before the output itself.
    ``backend``: see :func:`confocalize.engine.make_runner`; chosen once for the batch and handed to the
    enhancer too. It is not part of the sidecars' settings: backends agree to float rounding, as tile sizes do.
    ``precision`` bf16/fp16 (PyTorch's autocast, see ``make_runner``) is: it changes outputs by more.
    A TIFF time-lapse is read and written frame by frame (:func:`enhance_frames`), its time increment kept;
    ``progress`` then counts its frames (a file counts one). An ``enhancer`` takes single time points only.
    """
    if dtype not in ("float32", "uint16"):
        raise ConfocalizeError(f"output type '{dtype}' is not supported; use float32 or uint16")
    files = list_images(inputs)
    targets = output_paths(files, Path(out_dir))
    keep_going = any(Path(item).is_dir() for item in inputs) if keep_going is None else keep_going
    settings = {"dtype": dtype, "axes": axes, "pixel_size": pixel_size, "resample": resample}
    if precision != "fp32":  # fp32 adds no key: sidecars written before the option still match
        settings["precision"] = precision
    ledger = Ledger(content_sha256(package), settings | dict(enhancer.settings) if enhancer else settings)
    backend = resolve_backend(package, backend)  # an unknown name fails here, before any file
    check_precision(package, backend, precision)  # as does a precision the backend cannot run
    runner: Runner | None = None  # made for the first file to enhance: a rerun that skips every file builds nothing
    counter = _FrameCounter(len(files), progress)
    for src, dst in zip(files, targets):
        if not ledger.complete(src, dst):
            runner = runner or make_runner(package, backend, precision)
            try:
                image = open_input(src, axes, pixel_size)
                result, extras = None, {}
                if image.axes.startswith("T"):  # enhanced while it is written, frame by frame
                    if enhancer is not None:
                        raise ConfocalizeError(
                            f"{src}: a time-lapse ({image.data.shape[0]} time points) gets uncertainty and consistency maps "
                            "only as OME-Zarr, streamed frame by frame; add --format zarr"
                        )
                    counter.movie(image.data.shape[0])
                    enhanced = (counter.step(f) for f in enhance_frames(package, image, tile, batch_size, resample, runner))
                    _write_movie(dst, image, enhanced, dtype)
                else:
                    result, extras = enhancer(image, runner) if enhancer else (enhance_image(package, image, tile, batch_size, resample, runner), {})
            except PER_FILE_ERRORS as exc:
                if not keep_going:
                    raise
                ledger.fail(src, exc)
            else:
                for key, extra in extras.items():
                    write_image(extra_path(dst, key, files), extra.data, extra.axes, extra.pixel_size, extra.z_step)
                if result is not None:
                    write_image(dst, to_dtype(result.data, dtype), result.axes, result.pixel_size, result.z_step)
                ledger.wrote(src, dst)
        counter.file_done()
    return ledger.summary()


def open_input(path: Path, axes: str | None = None, pixel_size: float | None = None) -> Image:
    """:func:`~confocalize.io.read_image`, except that a TIFF time-lapse is opened lazily (its frames are read when used)."""
    if path.suffix.lower() in TIFF_SUFFIXES and tiff_frames(path) > 1:
        from confocalize.lazyio import open_lazy  # dask and zarr load only for time-lapses

        lazy = open_lazy(path, axes, pixel_size)
        if lazy.axes.startswith("T"):  # else --axes made the frames something else: read it whole
            return lazy
    return read_image(path, axes=axes, pixel_size=pixel_size)


def _write_movie(path: Path, movie: Image, enhanced: Iterator[Image], dtype: OutputDtype) -> None:
    """Write enhanced frames (the first tells their shape) as one time-lapse, each frame as it comes."""
    first = next(enhanced)
    shape = (movie.data.shape[0], *first.data.shape)
    data = (to_dtype(f.data, dtype) for f in itertools.chain([first], enhanced))
    write_frames(path, data, shape, np.dtype(dtype), "T" + first.axes, first.pixel_size, first.z_step, movie.time_increment)


class _FrameCounter:
    """Progress of a batch in frames: a file counts one, a time-lapse its time points (known once it is opened)."""

    def __init__(self, n_files: int, progress: Progress | None) -> None:
        self.total, self.done, self.file_start, self.file_frames, self.progress = n_files, 0, 0, 1, progress

    def movie(self, n_frames: int) -> None:
        """The current file is a time-lapse of ``n_frames`` time points."""
        self.total += n_frames - 1
        self.file_frames = n_frames

    def step(self, frame: Image) -> Image:
        """One more frame done; ``frame`` passes through."""
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
        return frame

    def file_done(self) -> None:
        """The current file is done (written, skipped or failed)."""
        self.file_start += self.file_frames
        self.file_frames = 1
        if self.done != self.file_start:
            self.done = self.file_start
            if self.progress is not None:
                self.progress(self.done, self.total)


def output_paths(files: list[Path], out_dir: Path, suffix: str = ".ome.tif") -> list[Path]:
    """``out_dir/NAME.ome.tif`` (or another ``suffix``) per input; an error if one is an input or two coincide."""
    targets = [out_dir / f"{image_stem(f)}{suffix}" for f in files]
    sources = {f.resolve(): f for f in files}
    seen: dict[Path, Path] = {}
    for src, dst in zip(files, targets):
        key = dst.resolve()
        if key in sources:
            raise ConfocalizeError(f"{dst}: would overwrite the input {sources[key]}; choose another output folder")
        if key in seen:
            raise ConfocalizeError(f"{seen[key]} and {src}: both would be written to {dst}; rename one of them")
        seen[key] = src
    return targets


def extra_path(output: Path, key: str, inputs: Sequence[Path] = ()) -> Path:
    """``NAME.KEY.ome.tif`` beside ``output`` (``NAME.ome.tif``); an error if it is one of ``inputs``."""
    path = output.with_name(f"{image_stem(output)}.{key}.ome.tif")
    if path.resolve() in {f.resolve() for f in inputs}:
        raise ConfocalizeError(f"{path}: would overwrite an input; choose another output folder")
    return path


def to_dtype(data: np.ndarray, dtype: OutputDtype) -> np.ndarray:
    """float32 as is; uint16 as round(clip(x, 0, 1) * 65535)."""
    if dtype == "uint16":
        scaled = np.clip(data, 0.0, 1.0)  # one float temporary, then in place
        scaled *= UINT16_MAX
        return np.rint(scaled, out=scaled).astype(np.uint16)
    return data.astype(np.float32, copy=False)
