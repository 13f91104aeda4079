"""Microscope vendors' formats (Zeiss CZI, Nikon ND2, Leica LIF) through bioio, the optional extra ``confocalize[formats]``.

:func:`open_bioio` opens a file with its bioio reader plugin (``bioio-czi``, ``bioio-nd2``,
``bioio-lif``) and returns a lazy dask array in the axes ``CZYX`` (:func:`confocalize.io.canonical_axes`
then drops the singleton ones), the in-plane pixel size and the z step in µm from the file's
metadata. Nothing is read but metadata: each chunk (one plane, for ND2 one frame) is read when a
task asks for it. :func:`read_bioio` reads the whole image into memory.

One file becomes one :class:`~confocalize.io.Image`, so a file with several time points, scenes
(positions, wells) or unstitched mosaic tiles is refused, naming how many it holds and how to
split it; colour samples (RGB) become channels (RGB CZI files are refused: bioio-czi 3.0 reads
their colours wrong). The channel names the files record are not kept:
:class:`~confocalize.io.Image` has no place for them. When bioio or the file's plugin is missing,
the error names the file and the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from confocalize.errors import ConfocalizeError, MetadataWarning


class Plugin(NamedTuple):
    """A bioio reader plugin: its distribution and module, the format's name, the reader's options."""

    distribution: str
    module: str
    name: str
    options: dict[str, Any]
    colour: bool = True  # False: the reader's colour (RGB) samples are wrong, such files are refused


PLUGINS = {
    # chunk_dims: one chunk per plane (their default is a z-stack); nd2 reads frame by frame.
    # bioio-czi 3.0 repeats the first colour sample of an RGB plane.
    ".czi": Plugin("bioio-czi", "bioio_czi", "CZI", {"chunk_dims": ["Y", "X"]}, colour=False),
    ".nd2": Plugin("bioio-nd2", "bioio_nd2", "ND2", {}),
    ".lif": Plugin("bioio-lif", "bioio_lif", "LIF", {"chunk_dims": ["Y", "X"]}),
}
BIOIO_SUFFIXES = tuple(PLUGINS)
INSTALL = "pip install 'confocalize[formats]'"
_ANISOTROPY = 1e-3  # relative difference of the x and y pixel sizes above which a warning says only x is kept
_SPLIT = "save each as its own file (e.g. OME-TIFF with Fiji or bioio)"


def open_bioio(path: Path) -> tuple[Any, str, float | None, float | None]:
    """The image of a CZI/ND2/LIF file as a lazy ``CZYX`` dask array, its pixel size and z step (µm, or ``None``)."""
    plugin = PLUGINS[path.suffix.lower()]
    image = _bioimage(path, plugin)
    try:
        data, order = image.dask_data, image.dims.order
        scenes = len(image.scenes)
        sizes = image.physical_pixel_sizes
    except Exception as exc:  # each plugin raises its own types for damaged files
        raise _unreadable(path, plugin.name, exc) from None
    if scenes > 1:
        raise ConfocalizeError(f"{path}: holds {scenes} scenes (positions); confocalize reads one scene per file: {_SPLIT}")
    data = _czyx(path, data, order, plugin)
    return data, "CZYX", _pixel_size(path, sizes.X, sizes.Y), _positive(sizes.Z)


def read_bioio(path: Path) -> tuple[Any, str, float | None, float | None]:
    """:func:`open_bioio` with the pixels read into a numpy array."""
    data, axes, pixel_size, z_step = open_bioio(path)
    try:
        array = data.compute()
    except Exception as exc:  # a file damaged past its metadata fails only here
        raise _unreadable(path, PLUGINS[path.suffix.lower()].name, exc) from None
    return array, axes, pixel_size, z_step


def _bioimage(path: Path, plugin: Plugin) -> Any:
    """``bioio.BioImage`` of ``path`` with its format's plugin, or a one-line error saying what to install."""
    try:
        from bioio import BioImage

        reader = importlib.import_module(plugin.module).Reader
    except ImportError:
        raise ConfocalizeError(f"{path}: reading {plugin.name} files needs bioio and {plugin.distribution}; {INSTALL}") from None
    try:
        with _silenced("bioio"):  # it logs a failed reader attempt before raising: the error below says it in one line
            return BioImage(path, reader=reader, **plugin.options)
    except Exception as exc:  # bioio's UnsupportedFileFormatError for foreign files, the plugin's own types else
        raise _unreadable(path, plugin.name, exc) from None


@contextlib.contextmanager
def _silenced(logger: str) -> Iterator[None]:
    """No log records from ``logger`` (and its children) below CRITICAL during the block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _unreadable(path: Path, name: str, exc: Exception) -> ConfocalizeError:
    reason = str(exc).splitlines()[0] if str(exc) else ""
    return ConfocalizeError(f"{path}: not a readable {name} file ({type(exc).__name__}: {reason}); re-export or re-copy it")


def _czyx(path: Path, data: Any, order: str, plugin: Plugin) -> Any:
    """bioio's standard ``[M]TCZYX[S]`` array as ``CZYX`` (time point, tile and sample dimensions resolved or refused)."""
    sizes = dict(zip(order, data.shape, strict=True))
    if sizes.get("M", 1) > 1:
        raise ConfocalizeError(f"{path}: {sizes['M']} mosaic tiles its reader does not stitch; stitch them (e.g. in ZEN or Fiji) and save the mosaic")
    if sizes.get("T", 1) > 1:
        raise ConfocalizeError(f"{path}: holds {sizes['T']} time points; confocalize reads one time point per file: {_SPLIT}")
    if sizes.get("S", 1) > 1 and not plugin.colour:
        raise ConfocalizeError(f"{path}: an RGB {plugin.name} file, whose colours {plugin.distribution} does not read right; save it as an RGB TIFF")
    if sizes.get("S", 1) > 1 and sizes["C"] > 1:
        raise ConfocalizeError(f"{path}: {sizes['C']} channels of {sizes['S']} colour samples each; save the channels as separate files")
    data = data[tuple(0 if ax in "MT" else slice(None) for ax in order)]
    if "S" not in order:
        return data
    if sizes["S"] == 1:
        return data[..., 0]
    return data[0].transpose(3, 0, 1, 2)  # the one channel's colour samples become the channels


def _positive(value: float | None) -> float | None:
    """A length in µm, or ``None`` where the file records none (or zero)."""
    return float(value) if value is not None and value > 0 else None


def _pixel_size(path: Path, x: float | None, y: float | None) -> float | None:
    """The x pixel size (µm); a warning when y differs, since an :class:`~confocalize.io.Image` has one in-plane size."""
    x, y = _positive(x), _positive(y)
    if x is not None and y is not None and abs(x - y) > _ANISOTROPY * x:
        warnings.warn(f"{path}: pixels are {x:g} x {y:g} µm (x by y); confocalize uses the x size", MetadataWarning, stacklevel=4)
    return x
