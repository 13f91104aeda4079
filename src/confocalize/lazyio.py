"""Images larger than memory: lazy reading of TIFF, (OME-)Zarr and CZI/ND2/LIF as dask arrays, OME-Zarr writing.

:func:`open_lazy` returns an :class:`~confocalize.io.Image` whose ``data`` is a dask array in the
project's axes (YX, ZYX, CYX, CZYX, each optionally after a leading T) and reads nothing but
metadata. Each chunk is read when a task needs it, by path, so the array can be sent to dask workers:

* TIFF and OME-TIFF (first series, full resolution): uncompressed contiguous data is memory-mapped
  and only the asked bytes are copied; compressed, striped or tiled data is read through tifffile's
  Zarr view, strip by strip or tile by tile.
* Zarr and OME-Zarr: OME-Zarr images (NGFF 0.4 or 0.5) by the first dataset their ``multiscales``
  metadata lists, with axes, pixel size and time increment from it; a plain Zarr array with ``axes``
  given (or 2D).
* CZI, ND2 and LIF with ``confocalize[formats]`` (:func:`confocalize.formats.open_bioio`): the
  chunks of the file's bioio reader, one whole plane each for these formats, so a plane must fit
  in memory; planes and channels are read one by one.

:func:`create_ome_zarr` makes a one-resolution OME-Zarr (NGFF 0.5, metadata via ``ome-zarr``)
with axes, pixel size, z step and time increment, whose array the caller fills chunk by chunk. Nothing here checks
pixel values (that would read everything).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from confocalize.errors import ConfocalizeError
from confocalize.formats import BIOIO_SUFFIXES, open_bioio
from confocalize.io import (
    SUPPORTED_DTYPES,
    TIFF_SUFFIXES,
    Image,
    canonical_axes,
    check_axes,
    tiff_pixel_size,
    tiff_time_increment,
    check_pixel_size,
)

ZARR_SUFFIX = ".zarr"
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
FULL_RESOLUTION = "s0"  # dataset path of the arrays written here (readers take it from the metadata)
_MICRONS = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "meter": 1e6, "angstrom": 1e-4}
_SECONDS = {"second": 1.0, "millisecond": 1e-3, "microsecond": 1e-6, "minute": 60.0, "hour": 3600.0}
_UNITS = {**_MICRONS, **_SECONDS}


def is_zarr(path: Path) -> bool:
    """True for a Zarr store folder (``.zarr`` or holding Zarr metadata)."""
    return path.is_dir() and (path.suffix.lower() == ZARR_SUFFIX or any((path / m).exists() for m in _ZARR_MARKERS))


def open_lazy(path: str | os.PathLike, axes: str | None = None, pixel_size: float | None = None, chunk: int = 2048) -> Image:
    """Open a TIFF, (OME-)Zarr or CZI/ND2/LIF image as a lazy :class:`Image` (dask data; TIFF and Zarr in ``chunk`` x ``chunk`` pixel chunks per plane).

    ``axes`` overrides the file's axes and ``pixel_size`` (µm) its pixel size, as in :func:`confocalize.io.read_image`.
    """
    path = Path(path)
    if not path.exists():
        raise ConfocalizeError(f"{path}: no such file or Zarr folder; check the path")
    if is_zarr(path):
        data, file_axes, px, z_step, dt = _open_zarr(path, axes, chunk)
    elif path.suffix.lower() in TIFF_SUFFIXES:
        data, file_axes, px, z_step, dt = _open_tiff(path, chunk)
    elif path.suffix.lower() in BIOIO_SUFFIXES:
        data, file_axes, px, z_step = open_bioio(path)  # the reader's chunks: whole planes
        dt = None  # time series are refused there
    else:
        raise ConfocalizeError(f"{path}: not a TIFF or Zarr image, nor {'/'.join(BIOIO_SUFFIXES)}; chunked enhance reads .tif, .ome.tif, .zarr, .ome.zarr and those")
    if data.dtype.type not in SUPPORTED_DTYPES:
        raise ConfocalizeError(f"{path}: pixel type {data.dtype} is not supported; save as 8/16/32-bit integer or 32-bit float")
    data, file_axes = canonical_axes(data, file_axes)
    final_axes = check_axes(path, data, axes.upper() if axes else file_axes)
    px = check_pixel_size(pixel_size, str(path)) if pixel_size is not None else px
    return Image(data=data, axes=final_axes, pixel_size=px, z_step=z_step, path=path, time_increment=dt if "T" in final_axes else None)


@dataclass(frozen=True)
class TiffRegions:
    """The first series of a TIFF as a small picklable array: each read opens the file and reads only what it asks."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[0]
            if series.dataoffset is not None:  # uncompressed and contiguous: map the file, copy the asked bytes
                return np.array(tifffile.memmap(self.path, series=0, mode="r")[key])
            with series.aszarr(level=0) as store:
                return np.asarray(zarr.open_array(store, mode="r")[key])


def _open_tiff(path: Path, chunk: int) -> tuple[da.Array, str, float | None, float | None, float | None]:
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ConfocalizeError(f"{path}: not a readable TIFF (no image data found); re-export or re-copy it")
            series = tif.series[0]
            source = TiffRegions(path, tuple(series.shape), np.dtype(series.dtype))
            axes = series.axes
            px, z_step = tiff_pixel_size(tif)
            dt = tiff_time_increment(tif)
    except ConfocalizeError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt or truncated files
        raise ConfocalizeError(f"{path}: not a readable TIFF ({type(exc).__name__}); re-export or re-copy it") from None
    chunks = tuple(chunk if ax in "YX" else 1 for ax in axes)
    meta = np.empty((0,) * source.ndim, source.dtype)
    return da.from_array(source, chunks=chunks, meta=meta, inline_array=True), axes, px, z_step, dt  # the reader is tiny


def _open_zarr(path: Path, axes: str | None, chunk: int) -> tuple[da.Array, str, float | None, float | None, float | None]:
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises many types for foreign or damaged stores
        raise ConfocalizeError(f"{path}: not a readable Zarr store ({type(exc).__name__}); re-copy it") from None
    if isinstance(node, zarr.Array):
        if axes is None and node.ndim != 2:
            raise ConfocalizeError(f"{path}: a plain Zarr array of shape {node.shape} has no axes; give them with --axes")
        component, file_axes, px, z_step, dt = "", axes or "YX", None, None, None
    else:
        component, file_axes, px, z_step, dt = _ome_multiscale(path, dict(node.attrs))
    array = node if component == "" else node[component]
    chunks = tuple(chunk if ax in "YX" else 1 for ax in file_axes.upper()) if len(file_axes) == array.ndim else "auto"
    return da.from_zarr(str(path), component=component or None, chunks=chunks), file_axes, px, z_step, dt


def _ome_multiscale(path: Path, attrs: dict[str, Any]) -> tuple[str, str, float | None, float | None, float | None]:
    """Dataset path, axes, pixel size and z step (µm) and time increment (s) of an OME-Zarr image's full resolution
    (NGFF 0.4 or 0.5)."""
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        raise ConfocalizeError(f"{path}: a Zarr group without OME-Zarr 'multiscales' metadata; give the image array itself")
    first = multiscales[0]
    names = [(a["name"] if isinstance(a, dict) else a).upper() for a in first.get("axes", [])]
    units = [a.get("unit") if isinstance(a, dict) else None for a in first.get("axes", [])]
    dataset = first["datasets"][0]
    scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"), None)

    def size(axis: str) -> float | None:
        if scale is None or axis not in names or units[names.index(axis)] not in _UNITS:
            return None
        return float(scale[names.index(axis)]) * _UNITS[units[names.index(axis)]]

    return dataset["path"], "".join(names), size("X"), size("Z"), size("T")


def create_ome_zarr(path: str | os.PathLike, image: Image) -> zarr.Array:
    """Create a single-resolution OME-Zarr (NGFF 0.5) for ``image`` (dask data) at ``path``; returns its empty array.

    The metadata (written by ``ome-zarr``) holds axes, pixel size and z step; the array is chunked
    like the data's first chunks, for the caller to fill.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ome-zarr deprecates its Scaler class on import
        from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    chunks = tuple(c[0] for c in image.data.chunks)
    array = group.create_array(FULL_RESOLUTION, shape=image.data.shape, chunks=chunks, dtype=image.data.dtype)
    sizes = {"T": image.time_increment, "Z": image.z_step, "Y": image.pixel_size, "X": image.pixel_size}
    scale = [sizes.get(ax) or 1.0 for ax in image.axes]
    dataset = {"path": FULL_RESOLUTION, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
    units = {ax.lower(): "second" if ax == "T" else "micrometer" for ax in image.axes if sizes.get(ax) is not None}
    write_multiscales_metadata(group, [dataset], axes=image.axes.lower(), axes_units=units, name=image.name)
    return array
