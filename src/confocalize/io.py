"""Reading and writing microscopy images with their axes and pixel size; atomic file writes.

Images cross module boundaries as :class:`Image`: a numpy array, an axes string (one of
``YX``, ``ZYX``, ``CYX``, ``CZYX``, each optionally after a leading ``T`` for a time-lapse) and the
in-plane pixel size in micrometres (``None`` when the file does not record it); a time-lapse also
carries its time increment in seconds (OME ``TimeIncrement``, ImageJ ``finterval``). Every writer
in the project goes through :func:`atomic_write` so that a crash or a full disk never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from confocalize.errors import ConfocalizeError, MetadataWarning
from confocalize.formats import BIOIO_SUFFIXES, read_bioio

FRAME_AXES = ("YX", "ZYX", "CYX", "CZYX")  # one time point
AXES = (*FRAME_AXES, *(f"T{axes}" for axes in FRAME_AXES))  # a leading T: a time-lapse, one frame after another
TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + OTHER_SUFFIXES + BIOIO_SUFFIXES  # the last need confocalize[formats] (confocalize.formats)
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.float32, np.float64)
_UMASK = os.umask(0)
os.umask(_UMASK)
MAX_MAGNITUDE = 1e38  # larger values overflow the float32 arithmetic of normalisation and networks
_TIFF_DAMAGE = re.compile(r"invalid .*offset|truncat|failed to read|unexpected end", re.IGNORECASE)  # in tifffile's warnings
_SECONDS_PER_UNIT = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}
_MICRONS_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6}


@dataclass(frozen=True)
class Image:
    """An image array with named axes and physical pixel size."""

    data: np.ndarray
    axes: str
    pixel_size: float | None = None  # in-plane (x and y) size of one pixel, µm
    z_step: float | None = None  # distance between planes, µm
    path: Path | None = None
    time_increment: float | None = None  # time between frames of a time-lapse (axes with a leading T), s

    @property
    def name(self) -> str:
        """File name without image suffixes (``a.ome.tif`` -> ``a``), or ``image``."""
        return image_stem(self.path) if self.path is not None else "image"

    def with_data(self, data: np.ndarray, axes: str | None = None) -> Image:
        """The same image metadata around new pixel data."""
        return replace(self, data=data, axes=axes or self.axes)


def image_stem(path: Path) -> str:
    """File name without its image suffixes (``.ome.tif``, ``.tif``, ``.png``, ``.ome.zarr`` ...)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES, ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_pixel_size(value: float | None, what: str) -> float | None:
    """Validate a pixel size in µm (positive and finite) or pass ``None`` through."""
    if value is None:
        return None
    if not np.isfinite(value) or value <= 0:
        raise ConfocalizeError(f"{what}: pixel size {value} µm is not positive; give a size > 0 in µm")
    return float(value)


def read_image(path: str | os.PathLike, axes: str | None = None, pixel_size: float | None = None) -> Image:
    """Read a TIFF/OME-TIFF/PNG/JPEG file, or with ``confocalize[formats]`` a CZI/ND2/LIF file, as an :class:`Image`.

    ``axes`` overrides the axes found in the file; ``pixel_size`` (µm) overrides or supplies the
    in-plane pixel size. Raises :class:`ConfocalizeError` with a one-line message for a missing,
    empty, corrupt or unusable file.
    """
    path = Path(path)
    if not path.exists():
        raise ConfocalizeError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ConfocalizeError(f"{path}: is a folder, not an image file; give a .tif/.png file")
    if path.stat().st_size == 0:
        raise ConfocalizeError(f"{path}: file is empty (0 bytes); re-export or re-copy it")
    time_increment = None
    if path.suffix.lower() in TIFF_SUFFIXES:
        data, file_axes, file_px, z_step, time_increment = _read_tiff(path)
    elif path.suffix.lower() in OTHER_SUFFIXES:
        data, file_axes, file_px, z_step = _read_pillow(path)
    elif path.suffix.lower() in BIOIO_SUFFIXES:
        data, file_axes, file_px, z_step = read_bioio(path)
        data, file_axes = canonical_axes(data, file_axes)
    else:
        raise ConfocalizeError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(IMAGE_SUFFIXES)}")
    data = _check_data(path, data)
    final_axes = check_axes(path, data, axes.upper() if axes else file_axes)
    px = check_pixel_size(pixel_size, str(path)) if pixel_size is not None else file_px
    dt = time_increment if "T" in final_axes else None
    return Image(data=data, axes=final_axes, pixel_size=px, z_step=z_step, path=path, time_increment=dt)


def _read_tiff(path: Path) -> tuple[np.ndarray, str, float | None, float | None, float | None]:
    try:
        with _tifffile_warnings() as warned, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ConfocalizeError(f"{path}: not a readable TIFF (no image data found); re-export or re-copy it")
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            px, z_step = tiff_pixel_size(tif)
            dt = tiff_time_increment(tif)
    except ConfocalizeError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt or truncated files
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfocalizeError(f"{path}: not a readable TIFF ({type(exc).__name__}: {reason}); re-export or re-copy it") from None
    damage = next((m for m in warned if _TIFF_DAMAGE.search(m)), None)
    if damage is not None:  # tifffile read what it could of a truncated file: planes or metadata are missing
        raise ConfocalizeError(f"{path}: damaged or truncated TIFF ({damage.splitlines()[0]}); re-export or re-copy it")
    data, axes = canonical_axes(data, axes)
    return data, axes, px, z_step, dt


def tiff_time_increment(tif: tifffile.TiffFile) -> float | None:
    """Seconds between time points from OME-XML (``TimeIncrement``) or ImageJ metadata (``finterval``), if recorded."""
    if tif.is_ome and tif.ome_metadata:
        images = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (images[0] if isinstance(images, list) else images).get("Pixels", {})
        value, unit = pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s")
    else:
        ij = tif.imagej_metadata or {}
        value, unit = ij.get("finterval"), ij.get("tunit", "s")
    try:
        seconds = float(value) * _SECONDS_PER_UNIT[str(unit)]
    except (TypeError, ValueError, KeyError):  # absent, not a number or an unknown unit: not recorded
        return None
    return seconds if np.isfinite(seconds) and seconds > 0 else None


def tiff_frames(path: Path) -> int:
    """How many time points a TIFF's first series holds (1 without a T axis, or for a file tifffile cannot open)."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return int(series.shape[series.axes.index("T")]) if "T" in series.axes else 1
    except Exception:  # noqa: BLE001 - read_image reports unreadable files with their reason
        return 1


def frames(image: Image) -> Iterator[Image]:
    """Each time point of ``image`` as an :class:`Image` without the T axis (numpy; a lazy movie reads one
    frame at a time); an image without T is its only frame."""
    if not image.axes.startswith("T"):
        yield image
        return
    for t in range(image.data.shape[0]):
        try:
            data = np.asarray(image.data[t])
        except (OSError, ValueError, KeyError, IndexError) as exc:  # a lazy movie reads its file here
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfocalizeError(f"{image.path}: time point {t} cannot be read ({reason}); re-export or re-copy it") from None
        yield replace(image, data=data, axes=image.axes[1:], time_increment=None)


def refuse_time_lapse(image: Image, action: str) -> None:
    """A one-line :class:`ConfocalizeError` if ``image`` is a time-lapse, which ``action`` does not take."""
    if image.axes.startswith("T"):
        where = image.path if image.path is not None else "image"
        raise ConfocalizeError(
            f"{where}: a time-lapse ({image.axes}, {image.data.shape[0]} time points) cannot be used to {action}; "
            "give one time point per file"
        )


class _Collect(logging.Handler):
    """A logging handler that keeps the messages instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect tifffile's logged warnings for the block (they would print as multi-line noise)."""
    log = logging.getLogger("tifffile")
    handler, propagate, level = _Collect(), log.propagate, log.level
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
        log.setLevel(level)


def tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[float | None, float | None]:
    """Pixel size and z step in µm from OME-XML, ImageJ metadata or resolution tags.

    A resolution tag counts with a length unit: ImageJ's ``unit``, the ``unit`` of tifffile's JSON
    description (``tifffile.imwrite(..., metadata={"unit": "um"})``) or centimetres; a tag in inches
    (a print resolution) or without a unit is ignored with a :class:`MetadataWarning` that names the file.
    """
    if tif.is_ome and tif.ome_metadata:
        meta = tifffile.xml2dict(tif.ome_metadata)
        images = meta.get("OME", {}).get("Image", {})
        pixels = (images[0] if isinstance(images, list) else images).get("Pixels", {})
        px = _with_unit(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
        dz = _with_unit(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit", "µm"))
        if px is not None:
            return px, dz
    page = tif.pages.first
    tag = page.tags.get("XResolution")
    ij = tif.imagej_metadata or {}
    dz = ij.get("spacing")
    if tag is None:
        return None, dz
    num, den = tag.value
    if num == 0 or (num == 1 and den == 1):  # 1 pixel per unit is the "not set" default
        return None, dz
    per_unit = den / num
    unit = ij.get("unit") or _shaped_unit(tif)
    if unit:
        factor = _MICRONS_PER_UNIT.get(str(unit))
        if factor is None:
            _ignored(tif, f"its unit '{unit}' is not a length this reader knows")
        return (per_unit * factor if factor else None), dz
    unit_tag = page.tags.get("ResolutionUnit")
    if unit_tag is not None and int(unit_tag.value) == 3:  # centimetre
        return per_unit * 1e4, dz
    _ignored(tif, "it is in inches (a print resolution)" if unit_tag is not None and int(unit_tag.value) == 2 else "it has no unit")
    return None, dz


def _shaped_unit(tif: tifffile.TiffFile) -> str | None:
    """The ``unit`` of tifffile's JSON image description, where the file has one."""
    shaped = tif.shaped_metadata if tif.is_shaped else None
    unit = shaped[0].get("unit") if shaped else None
    return str(unit) if unit else None


def _ignored(tif: tifffile.TiffFile, why: str) -> None:
    warnings.warn(
        f"{tif.filehandle.path}: resolution tag ignored, {why}; no pixel size read: write OME-TIFF or ImageJ metadata, "
        "or give the pixel size (e.g. --lq-pixel-size, µm)",
        MetadataWarning, stacklevel=4,
    )  # fmt: skip


def _with_unit(value: Any, unit: str) -> float | None:
    if value is None:
        return None
    factor = _MICRONS_PER_UNIT.get(str(unit), None)
    return float(value) * factor if factor is not None else None


def _read_pillow(path: Path) -> tuple[np.ndarray, str, float | None, float | None]:
    from PIL import Image as PILImage, UnidentifiedImageError

    try:
        with PILImage.open(path) as img:
            data = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfocalizeError(f"{path}: not a readable image ({exc}); re-export or re-copy it") from None
    if data.ndim == 3:  # colour: keep the channels, drop an alpha channel
        data = np.moveaxis(data[..., :3], -1, 0)
        if np.all(data == data[:1]):
            return data[0], "YX", None, None
        return data, "CYX", None, None
    return data, "YX", None, None


def canonical_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Bring tifffile's axes to one of :data:`AXES`, in the order TCZYX (drop singletons, samples -> C)."""
    axes = axes.upper().replace("S", "C").replace("Q", "Z").replace("I", "Z")
    for ax in "TCZ":  # squeeze singleton non-spatial axes
        if axes.count(ax) == 1 and data.shape[axes.index(ax)] == 1:
            data = np.squeeze(data, axes.index(ax))
            axes = axes.replace(ax, "")
    if len(set(axes)) != len(axes) or not set(axes) <= set("TCZYX"):
        return data, axes
    order = [axes.index(ax) for ax in "TCZYX" if ax in axes]
    return np.transpose(data, order), "".join(ax for ax in "TCZYX" if ax in axes)


def _check_data(path: Path, data: np.ndarray) -> np.ndarray:
    if data.dtype.type not in SUPPORTED_DTYPES:
        raise ConfocalizeError(f"{path}: pixel type {data.dtype} is not supported; save as 8/16/32-bit integer or 32-bit float")
    check_pixels(str(path), data)
    return data


def check_pixels(where: str, data: np.ndarray) -> None:
    """Refuse, in one line naming ``where``, pixels no model can use: not real numbers, under 2x2, NaN/Inf or huge."""
    if data.dtype.kind not in "uif":
        raise ConfocalizeError(f"{where}: pixel type {data.dtype} is not supported; save as 8/16/32-bit integer or 32-bit float")
    if data.ndim < 2 or data.shape[-1] < 2 or data.shape[-2] < 2:
        raise ConfocalizeError(f"{where}: image of shape {data.shape} is too small; need at least 2x2 pixels")
    if data.dtype.kind != "f":
        return
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ConfocalizeError(f"{where}: {bad} pixels are NaN or Inf; replace them (e.g. with the background) first")
    peak = float(np.abs(data).max())  # a Python float: comparing in float16 would overflow MAX_MAGNITUDE
    if peak > MAX_MAGNITUDE:
        raise ConfocalizeError(f"{where}: pixel values up to {peak:.3g} exceed ±{MAX_MAGNITUDE:g}; rescale the image")


def check_axes(path: Path, data: np.ndarray, axes: str) -> str:
    """``axes`` if it is one of the supported layouts and matches ``data``'s rank, else a one-line error naming ``path``."""
    if axes not in AXES:
        raise ConfocalizeError(f"{path}: axes '{axes}' are not supported; use one of {', '.join(AXES)} (option --axes)")
    if len(axes) != data.ndim:
        raise ConfocalizeError(f"{path}: axes '{axes}' do not fit an array of shape {data.shape}; give matching --axes")
    return axes


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    axes: str,
    pixel_size: float | None = None,
    z_step: float | None = None,
    time_increment: float | None = None,
) -> Path:
    """Write ``data`` as (OME-)TIFF with axes, pixel size (µm), z step (µm) and time increment (s) in the metadata, atomically."""
    data = np.ascontiguousarray(data)
    return _write_tiff(path, data, data.shape, data.dtype, axes, pixel_size, z_step, time_increment)


def write_frames(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    shape: Sequence[int],
    dtype: np.dtype,
    axes: str,
    pixel_size: float | None = None,
    z_step: float | None = None,
    time_increment: float | None = None,
) -> Path:
    """:func:`write_image` of a time-lapse of ``shape`` (axes with a leading T) given frame by frame: one frame in memory."""
    frame_shape = tuple(shape[1:])

    def checked() -> Iterator[np.ndarray]:
        for frame in frames:
            if frame.shape != frame_shape:
                raise ValueError(f"frame of shape {frame.shape} does not fit a movie of shape {tuple(shape)}")
            yield np.ascontiguousarray(frame, dtype=dtype)

    return _write_tiff(path, checked(), tuple(shape), np.dtype(dtype), axes, pixel_size, z_step, time_increment)


def _write_tiff(
    path: str | os.PathLike,
    data: np.ndarray | Iterator[np.ndarray],
    shape: tuple[int, ...],
    dtype: np.dtype,
    axes: str,
    pixel_size: float | None,
    z_step: float | None,
    time_increment: float | None,
) -> Path:
    path = Path(path)
    if axes not in AXES or len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} do not fit data of shape {shape}")
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ConfocalizeError(f"{path}: output must be a .tif or .ome.tif file")
    metadata: dict[str, Any] = {"axes": axes}
    if pixel_size is not None:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeXUnit="µm", PhysicalSizeY=pixel_size, PhysicalSizeYUnit="µm")
    if z_step is not None and "Z" in axes:
        metadata.update(PhysicalSizeZ=z_step, PhysicalSizeZUnit="µm")
    if time_increment is not None and "T" in axes:
        metadata.update(TimeIncrement=time_increment, TimeIncrementUnit="s")
    # Resolution tags (pixels per cm) for readers that ignore OME-XML, such as plain TIFF viewers.
    resolution = {"resolution": (1e4 / pixel_size, 1e4 / pixel_size), "resolutionunit": "CENTIMETER"} if pixel_size else {}
    streamed = {} if isinstance(data, np.ndarray) else {"shape": shape, "dtype": dtype}  # an iterator: one frame at a time
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, ome=True, metadata=metadata, photometric="minisblack", **resolution, **streamed)
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise ConfocalizeError(f"{path.parent}: cannot write here ({exc.strerror}); choose another output folder") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfocalizeError(f"{path}: write failed ({exc.strerror}); free disk space or choose another output folder") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (NaN and infinities become ``null``), atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n")
    return path


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None``, so other tools can parse the JSON."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def list_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of image files (folders: not recursive)."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not files:
                raise ConfocalizeError(f"{item}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(files)
        elif item.exists():
            found.append(item)
        else:
            raise ConfocalizeError(f"{item}: no such file or folder; check the path")
    return found
