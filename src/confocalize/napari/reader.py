"""Open microscopy files in napari as confocalize reads them: 16-bit data, axes, and pixel sizes in µm.

napari's own TIFF reader gives every layer a scale of 1 pixel, so an image dropped into the viewer
would lose the pixel size that Enhance (``resample``) and Register need. This reader (the npe2
``readers`` contribution) opens the files :func:`confocalize.io.read_image` opens: TIFF/OME-TIFF,
and CZI/ND2/LIF with the ``formats`` extra. The layer carries the file's axes (so
:func:`confocalize.napari.layers.layer_image` reads it back as the same image), its pixel size and
z-step in µm and its frame interval in s as scale and units; a channel axis stays a layer axis.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from confocalize.io import BIOIO_SUFFIXES, TIFF_SUFFIXES, Image, read_image

AXES_KEY = "confocalize_axes"  # layer metadata: the axes of a layer this plugin made (read by confocalize.napari.layers)
SUFFIXES = TIFF_SUFFIXES + BIOIO_SUFFIXES
LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader of ``path`` when confocalize reads its kind of file (one path), else ``None``."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_layers if Path(path).suffix.lower() in SUFFIXES else None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """One image layer: the file's pixels, named after it, on its physical grid."""
    image = read_image(path[0] if isinstance(path, list) else path)
    return [(image.data, layer_kwargs(image), "image")]


def layer_kwargs(image: Image) -> dict[str, Any]:
    """Name, scale and units (µm, s; ``pixel`` where unknown or for channels) and the axes as metadata."""
    steps = {"Y": (image.pixel_size, "µm"), "X": (image.pixel_size, "µm"), "Z": (image.z_step, "µm"), "T": (image.time_increment, "s")}
    scale, units = [], []
    for axis in image.axes:
        value, unit = steps.get(axis, (None, "pixel"))
        scale.append(value if value is not None else 1.0)
        units.append(unit if value is not None else "pixel")
    return {"name": image.name, "scale": scale, "units": units, "metadata": {AXES_KEY: image.axes}}
