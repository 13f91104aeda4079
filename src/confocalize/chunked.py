"""Chunked enhance with dask: images larger than memory on one machine, many files or huge images on a cluster.

:func:`enhance_lazy` is :func:`confocalize.predict.enhance_image` as a dask graph. For every output
plane and channel group, the network input (:func:`confocalize.stacks.network_input`) is cut into
chunks of ``chunk`` pixels whose edges lie on the generator's down-sampling grid (``chunk`` is
rounded up to a multiple of ``generator.multiple``). Each chunk goes through
:func:`~confocalize.predict.predict_array` with :func:`~confocalize.predict.default_halo` pixels of
its neighbours around it (dask's overlap with boundary ``"none"``: image edges stay edges), then the
halo is trimmed. Chunk origins, the halo and predict_array's own tiles all lie on that grid and every
kept pixel has a full halo of real context, so the result equals predict_array on the whole image up
to float rounding.

By default a chunk with its halo is exactly one network tile (``chunk = tile - 2 * halo``), so each
task is one forward pass and the work is that of predict_array's own tiling.

:func:`enhance_lazy_with_uncertainty` is :func:`confocalize.uncertainty.enhance_with_uncertainty`
the same way: each task enhances its chunk in the 8 flips/rotations and returns their mean and
calibrated spread stacked, which two views of one graph split (both are stored from one pass). The
halo grows by the spread's smoothing radius on the grid (:func:`tta_margin`), so every kept pixel's
smoothed spread is the whole image's.

Normalisation is enhance_image's: each channel over its whole stack, with the percentiles of
:func:`~confocalize.normalize.percentile_sample` (exact up to about a million values, a regular
subsample beyond), computed in a first pass over the data. A time-lapse is a graph per frame, all frames with the
normalisation of the whole movie; its Zarr output keeps the time increment.

Workers get the generator as :class:`GeneratorWeights` (settings, safetensors bytes and, for the ONNX
Runtime backend, the ONNX graph built once here; sent once per worker), never as a pickled module;
each worker process builds its generator and runner (:mod:`confocalize.engine`) once and runs one
chunk at a time through them. :func:`enhance_to_zarr` writes files as OME-Zarr: on a ``dask.distributed`` client all
files at once, or without one in this process one row of chunks after another (dask alone, given a
whole image, runs ahead and holds a growing share of it). Memory then holds the dask graph (~20 kB
per chunk: raise ``chunk`` for images of many gigapixels), about three rows of chunks and one
network tile, whatever the image height.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import zarr
from safetensors.torch import load as load_safetensors

from confocalize.calibration import SMOOTH_RADIUS
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.consistency import CONSISTENCY, LqPsf, lazy_residual
from confocalize.engine import Backend, OnnxRunner, Precision, Runner, TorchRunner, check_precision, graph_for
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, list_images
from confocalize.lazyio import create_ome_zarr, is_zarr, open_lazy
from confocalize.nets import UNet
from confocalize.normalize import Normalization, percentile_normalization, percentile_sample
from confocalize.package import ModelPackage, UncertaintyCalibration, build_generator, weights_bytes
from confocalize.predict import (
    DEFAULT_BATCH,
    DEFAULT_TILE,
    OutputDtype,
    Progress,
    from_czyx,
    output_paths,
    round_up,
    to_dtype,
    check_fit,
    default_halo,
    predict_array,
)
from confocalize.stacks import as_czyx, channel_views, model_groups, network_input
from confocalize.uncertainty import UNCERTAINTY, calibrate_spread, dihedral_spread

if TYPE_CHECKING:
    from distributed import Client

ZARR_OUTPUT = ".ome.zarr"


@dataclass(frozen=True)
class GeneratorWeights:
    """What a worker needs to rebuild a package's generator and runner: settings (JSON), channels, safetensors
    weights, and the ONNX graph to run (None: the generator in PyTorch, at ``precision``)."""

    config: str
    in_channels: int
    out_channels: int
    weights: bytes
    graph: bytes | None = None
    precision: Precision = "fp32"

    @classmethod
    def of(cls, package: ModelPackage, backend: Backend = "auto", precision: Precision = "fp32") -> GeneratorWeights:
        """``package``'s weights, with the graph :func:`confocalize.engine.graph_for` gives for ``backend``
        (none at half precision, which is PyTorch's: see :func:`confocalize.engine.check_precision`)."""
        check_precision(package, backend, precision)
        config = package.generator_config.model_dump_json()
        graph = graph_for(package, backend) if precision == "fp32" else None
        return cls(config, package.in_channels, package.out_channels, weights_bytes(package), graph, precision)


@functools.lru_cache(maxsize=4)
def _worker_runner(weights: GeneratorWeights) -> tuple[UNet, Runner, threading.Lock]:
    """The generator and runner of ``weights``, built once per process, and the lock that lets one chunk at a
    time through them."""
    generator = build_generator(GeneratorConfig.model_validate_json(weights.config), weights.in_channels, weights.out_channels)
    generator.load_state_dict(load_safetensors(weights.weights))
    generator.eval()
    runner = TorchRunner(generator, weights.precision) if weights.graph is None else OnnxRunner(weights.graph, generator.multiple)
    return generator, runner, threading.Lock()


def _enhance_chunk(
    x: np.ndarray, weights: GeneratorWeights, tile: int, batch_size: int, where: str, tta: bool, cal: UncertaintyCalibration | None
) -> np.ndarray:
    """One dask task: :func:`predict_array` on a chunk of network input with its halo; NaN/Inf are refused.
    With ``tta``: the mean over the 8 flips/rotations and, stacked after it, their spread calibrated by ``cal``."""
    generator, runner, lock = _worker_runner(weights)
    with lock:
        if tta:
            mean, spread = dihedral_spread(lambda d: predict_array(generator, np.ascontiguousarray(d), tile, batch_size, runner=runner), x)
            out = np.concatenate([mean, calibrate_spread(cal, spread, mean)])
        else:
            out = predict_array(generator, x, tile, batch_size, runner=runner)
    if not np.all(np.isfinite(out)):
        raise ConfocalizeError(f"{where}: the model's output holds NaN/Inf; check the image for NaN/Inf pixels and the model")
    return out


def channel_normalizations(
    images: Sequence[Image], norm: NormalizationConfig, scheduler: Any = None
) -> list[list[Normalization]]:
    """Per image, each channel's normalisation over its stack, as enhance_image makes it.

    One dask pass over all images, on ``scheduler`` (dask's current one by default).
    """
    samples = [[percentile_sample(c, window=norm.input_window) for c in channel_views(_lazy(im.data), im.axes)] for im in images]
    (computed,) = dask.compute(samples, scheduler=scheduler)
    return [[percentile_normalization(s, norm.low, norm.high) for s in per_image] for per_image in computed]


def _lazy(data: Any) -> da.Array:
    """``data`` as a dask array (numpy arrays are wrapped, not copied)."""
    return data if isinstance(data, da.Array) else da.from_array(data, chunks=-1)


def enhance_lazy(
    package: ModelPackage,
    image: Image,
    tile: int = DEFAULT_TILE,
    chunk: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    normalizations: Sequence[Normalization] | None = None,
    backend: Backend = "auto",
) -> Image:
    """:func:`~confocalize.predict.enhance_image` as a lazy dask graph; ``image.data`` may be numpy or dask.

    Returns an :class:`Image` whose data is a dask array (float32, model output units) that nothing
    has computed yet. ``chunk`` as :func:`chunk_size` says. ``normalizations`` (one per channel, from
    :func:`channel_normalizations`) skip the pass that estimates them. The pixel size is checked (a
    warning), never resampled. ``backend`` as in :func:`~confocalize.predict.enhance_image`, decided here
    (an ONNX graph is built here, once, and sent to the workers).
    """
    (enhanced,) = _lazy_outputs(package, image, tile, chunk, batch_size, normalizations, backend, tta=False)
    return enhanced


def enhance_lazy_with_uncertainty(
    package: ModelPackage,
    image: Image,
    tile: int = DEFAULT_TILE,
    chunk: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    normalizations: Sequence[Normalization] | None = None,
    backend: Backend = "auto",
) -> tuple[Image, Image]:
    """:func:`~confocalize.uncertainty.enhance_with_uncertainty` as lazy dask graphs (arguments as
    :func:`enhance_lazy`): the mean over the 8 flips/rotations and its calibrated uncertainty.

    Each chunk is enhanced in its 8 orientations with :data:`~confocalize.calibration.SMOOTH_RADIUS`
    more context (on the down-sampling grid), so that the smoothed spread of every kept pixel is
    that of the whole image; ``chunk`` defaults to a tile less that larger halo.
    """
    mean, uncertainty = _lazy_outputs(package, image, tile, chunk, batch_size, normalizations, backend, tta=True)
    return mean, uncertainty


def _lazy_outputs(
    package: ModelPackage, image: Image, tile: int, chunk: int | None, batch_size: int,
    normalizations: Sequence[Normalization] | None, backend: Backend, tta: bool, precision: Precision = "fp32",
) -> tuple[Image, ...]:  # fmt: skip
    """The enhanced image, or with ``tta`` the test-time-augmented mean and its uncertainty, as dask graphs."""
    where = str(image.path) if image.path is not None else "image"
    if image.data.shape[-1] < 2 or image.data.shape[-2] < 2:
        raise ConfocalizeError(f"{where}: image of shape {image.data.shape} is too small; need at least 2x2 pixels")
    if image.axes.startswith("T"):  # frame by frame, one normalisation per channel over the movie
        if normalizations is None:
            normalizations = channel_normalizations([image], package.normalization)[0]
        movie = _lazy(image.data)
        frame = functools.partial(_lazy_outputs, package, tile=tile, chunk=chunk, batch_size=batch_size,
                                  normalizations=normalizations, backend=backend, tta=tta, precision=precision)  # fmt: skip
        frames = [frame(image.with_data(movie[t], image.axes[1:])) for t in range(movie.shape[0])]
        return tuple(image.with_data(da.stack([f[i].data for f in frames]), "T" + frames[0][i].axes) for i in range(len(frames[0])))
    czyx = as_czyx(_lazy(image.data), image.axes)
    groups = model_groups(czyx.shape[0], package.in_channels, package.context_slices, where)
    check_fit(package, image)
    if normalizations is None:
        normalizations = channel_normalizations([image], package.normalization)[0]
    normalised = da.stack([c.map_blocks(n.apply, dtype=np.float32) for c, n in zip(czyx, normalizations, strict=True)])
    margin = tta_margin(package.generator) if tta else 0
    halo = default_halo(package.generator) + margin
    size = chunk_size(package.generator, tile, chunk, margin)
    plan = _PlanePlan(
        where=where,
        weights=dask.delayed(GeneratorWeights.of(package, backend, precision), pure=True),  # one graph key: sent once to each worker
        out_channels=package.out_channels,
        yx_chunks=tuple(_axis_chunks(n, size, halo) for n in czyx.shape[-2:]),
        halo=halo,
        tile=tile,
        batch_size=batch_size,
        tta=tta,
        calibration=package.uncertainty,
    )
    k = package.context_slices
    planes = [da.stack([plan.enhance(network_input(normalised, g, z, k)) for z in range(czyx.shape[1])], axis=1) for g in groups]
    n, outputs = package.out_channels, 2 if tta else 1
    return tuple(image.with_data(*from_czyx(da.concatenate([p[i * n : (i + 1) * n] for p in planes]), image.axes)) for i in range(outputs))


def tta_margin(generator: UNet) -> int:
    """Context added to each chunk's halo for the smoothed spread: :data:`~confocalize.calibration.SMOOTH_RADIUS` on the grid."""
    return round_up(SMOOTH_RADIUS, generator.multiple)


def chunk_size(generator: UNet, tile: int, chunk: int | None = None, margin: int = 0) -> int:
    """Chunk edge in pixels: ``chunk``, or ``tile - 2 * (halo + margin)`` (a chunk and its halo make one tile);
    on the grid, >= the halo."""
    halo, m = default_halo(generator) + margin, generator.multiple
    wanted = chunk if chunk is not None else (tile - 2 * halo) // m * m
    return max(round_up(wanted, m), halo, m)


def _axis_chunks(length: int, size: int, halo: int) -> tuple[int, ...]:
    """Chunks of ``size`` along an axis, the remainder last, merged into its neighbour if smaller than the halo."""
    sizes = [size] * (length // size) + ([length % size] if length % size else [])
    if len(sizes) > 1 and sizes[-1] < halo:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    return tuple(sizes)


@dataclass(frozen=True)
class _PlanePlan:
    """How every plane of an image is cut and enhanced: the generator (a dask key), chunks, halo, tiling and
    test-time augmentation (its outputs stacked after the enhanced channels)."""

    where: str
    weights: Any
    out_channels: int
    yx_chunks: tuple[tuple[int, ...], ...]
    halo: int
    tile: int
    batch_size: int
    tta: bool = False
    calibration: UncertaintyCalibration | None = None

    def enhance(self, x: da.Array) -> da.Array:
        """``(C_in, Y, X)`` dask input -> ``(C_out, Y, X)`` (with ``tta``: ``2 C_out``, mean then uncertainty):
        every chunk with its neighbours' halo, trimmed after."""
        x = x.rechunk((-1, *self.yx_chunks))
        depth = {0: 0, **{axis: self.halo if len(c) > 1 else 0 for axis, c in enumerate(self.yx_chunks, start=1)}}
        padded = da.overlap.overlap(x, depth=depth, boundary="none")
        chunks = ((self.out_channels * (2 if self.tta else 1),), *padded.chunks[1:])
        args = (self.weights, self.tile, self.batch_size, self.where, self.tta, self.calibration)
        out = padded.map_blocks(_enhance_chunk, *args, dtype=np.float32, chunks=chunks)
        return da.overlap.trim_internal(out, depth, boundary="none")


def list_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Zarr stores as they are, image files and folders as :func:`~confocalize.io.list_images` expands them."""
    found: list[Path] = []
    for item in map(Path, inputs):
        found.extend([item] if is_zarr(item) else list_images([item]))
    return found


def enhance_to_zarr(
    package: ModelPackage,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    client: Client | None = None,
    dtype: OutputDtype = "float32",
    pixel_size: float | None = None,
    axes: str | None = None,
    tile: int = DEFAULT_TILE,
    chunk: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    backend: Backend = "auto",
    uncertainty: bool = False,
    consistency: LqPsf | None = None,
    precision: Precision = "fp32",
) -> list[Path]:
    """Enhance TIFF, (OME-)Zarr and CZI/ND2/LIF images chunk by chunk into ``out_dir/NAME.ome.zarr``; returns the written paths.

    With a ``dask.distributed`` ``client`` every file's chunks run on its workers, all files at once;
    without, in this process one row of chunks at a time (memory: see the module docstring). Outputs
    keep axes, pixel size and z step; ``dtype``, ``pixel_size`` and ``axes`` as in
    :func:`~confocalize.predict.enhance_files`; ``chunk`` as :func:`chunk_size` says (it is also the
    Zarr chunk of the outputs); ``backend`` as in :func:`enhance_lazy`, ``precision`` as
    :func:`confocalize.engine.make_runner` takes it. With ``uncertainty`` the
    output is the test-time-augmented mean and ``NAME.uncertainty.ome.zarr`` (float32) its
    uncertainty (:func:`enhance_lazy_with_uncertainty`; both from one pass), listed after the
    outputs. With ``consistency`` (the LQ PSF), ``NAME.consistency.ome.zarr`` is the consistency
    residual (:func:`confocalize.consistency.lazy_residual`) of each output as written against its
    input, listed last. Each output appears complete or not at all.
    """
    if dtype not in ("float32", "uint16"):
        raise ConfocalizeError(f"output type '{dtype}' is not supported; use float32 or uint16")
    files = list_inputs(inputs)
    suffixes = [ZARR_OUTPUT] + ([f".{UNCERTAINTY}{ZARR_OUTPUT}"] if uncertainty else [])
    targets = [output_paths(files, Path(out_dir), suffix) for suffix in suffixes]  # per output kind, per file
    size = chunk_size(package.generator, tile, chunk, tta_margin(package.generator) if uncertainty else 0)
    images = [open_lazy(f, axes, pixel_size, size) for f in files]
    scheduler = client if client is not None else "synchronous"
    norms = channel_normalizations(images, package.normalization, scheduler)
    with _staging([t for kind in targets for t in kind]) as flat:
        staged = [flat[k * len(files) : (k + 1) * len(files)] for k in range(len(suffixes))]
        jobs = []
        for i, (image, norm) in enumerate(zip(images, norms, strict=True)):
            outputs = _lazy_outputs(package, image, tile, size, batch_size, norm, backend, uncertainty, precision)
            datas = [_regular(o.data.map_blocks(to_dtype, d, dtype=d)) for o, d in zip(outputs, [dtype, "float32"])]
            jobs.append((datas, [create_ome_zarr(staged[k][i], o.with_data(d)) for k, (o, d) in enumerate(zip(outputs, datas))]))
        for done, index in enumerate(_completed(jobs, client), start=1):
            for kind, folders in zip(targets, staged):
                _publish(folders[index], kind[index])
            if progress is not None:
                progress(done, len(jobs))
    if consistency is not None:
        targets.append(_consistency_maps(images, targets[0], consistency, Path(out_dir), files, client))
    return [t for kind in targets for t in kind]


def _consistency_maps(
    images: list[Image], outputs: list[Path], psf: LqPsf, out_dir: Path, files: list[Path], client: Client | None
) -> list[Path]:
    """``NAME.consistency.ome.zarr`` of every written output against its input: one pass for the fits, one that writes."""
    targets = output_paths(files, out_dir, f".{CONSISTENCY}{ZARR_OUTPUT}")
    scheduler = client if client is not None else "synchronous"
    with _staging(targets) as staged:
        jobs = []
        for image, output, folder in zip(images, outputs, staged, strict=True):
            where = str(image.path)
            stored = open_lazy(output)
            residual = lazy_residual(stored.data, image.data, psf.for_image(image.pixel_size, where), where, scheduler)
            data = _regular(residual.rechunk(stored.data.chunksize))
            jobs.append(([data], [create_ome_zarr(folder, stored.with_data(data))]))
        for index in _completed(jobs, client):
            _publish(staged[index], targets[index])
    return targets


def _regular(data: da.Array) -> da.Array:
    """``data`` rechunked to its first chunk size on every axis, as Zarr chunks are."""
    return data.rechunk(tuple(c[0] for c in data.chunks))


def _completed(jobs: list[tuple[list[da.Array], list[zarr.Array]]], client: Client | None) -> Iterator[int]:
    """Indices of ``jobs`` (arrays of one file and their Zarr targets, computed together) as they are
    stored: all at once on ``client``, else one by one here."""
    if client is None:
        for index, (datas, targets) in enumerate(jobs):
            _store_by_rows(datas, targets)
            yield index
        return
    from distributed import as_completed

    futures = {client.compute(da.store(datas, targets, lock=False, compute=False)): i for i, (datas, targets) in enumerate(jobs)}
    for future in as_completed(futures):
        future.result()  # raises the task's error here
        yield futures[future]


def _store_by_rows(datas: list[da.Array], targets: list[zarr.Array]) -> None:
    """Compute same-shape ``datas`` into ``targets`` in this process, one row of chunks at a time (shared tasks once)."""
    lead = (slice(None),) * (datas[0].ndim - 2)
    bounds = np.cumsum((0, *datas[0].chunks[-2]))
    for y0, y1 in zip(bounds[:-1], bounds[1:], strict=True):
        rows = (*lead, slice(y0, y1))
        da.store([d[rows] for d in datas], targets, regions=[rows] * len(datas), lock=False, scheduler="synchronous")


@contextlib.contextmanager
def _staging(targets: list[Path]) -> Iterator[list[Path]]:
    """A temporary folder beside each target; the ones not published are removed afterwards."""
    staged: list[Path] = []
    try:
        for target in targets:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                staged.append(Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)))
            except OSError as exc:
                raise ConfocalizeError(
                    f"{target.parent}: cannot write here ({exc.strerror}); choose another output folder"
                ) from None
        yield staged
    finally:
        for tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished output folder to ``target``, replacing an older output there."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A ``dask.distributed`` client: of the scheduler at ``scheduler`` (``tcp://host:8786``), else of a new
    local cluster of ``workers`` processes (default: one per CPU core) with one thread each.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfocalizeError(f"dask scheduler {scheduler}: cannot connect ({exc}); check the address") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client
