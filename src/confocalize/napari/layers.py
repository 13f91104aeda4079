"""napari image layers as :class:`confocalize.io.Image` and back, and a chooser of image layers.

A layer's axes: ``metadata["confocalize_axes"]`` where this plugin's reader or a result of it set it, else from its
number of dimensions (2: ``YX``, 3: ``ZYX``, 4: ``CZYX``). Its pixel size in µm: the layer's scale
where its units are lengths (napari's ``units``), or its scale as napari's long-standing convention
(µm) where the units are the default ``pixel`` and the scale is not 1; else unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
from napari.components import ViewerModel
import numpy as np
import pint
from qtpy.QtWidgets import QComboBox

from confocalize.errors import ConfocalizeError
from confocalize.io import Image
from confocalize.napari.reader import AXES_KEY
AXES_BY_NDIM = {2: "YX", 3: "ZYX", 4: "CZYX"}
MICRON = "µm"


def layer_image(layer: napari.layers.Image, pixel_size: float | None = None) -> Image:
    """The layer's pixels (the full-resolution level) as an :class:`Image`; ``pixel_size`` (µm) overrides the layer's."""
    if layer.rgb:
        raise ConfocalizeError(f"{layer.name}: an RGB layer; open the image as grey levels (one channel per layer)")
    data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    axes = layer.metadata.get(AXES_KEY) or AXES_BY_NDIM.get(data.ndim)
    if axes is None or len(axes) != data.ndim:
        raise ConfocalizeError(f"{layer.name}: a {data.ndim}-D layer; confocalize takes 2-D images, z-stacks and CZYX stacks")
    z_step = layer_microns(layer, axes.index("Z")) if "Z" in axes else None
    source = layer.source.path
    path = Path(source) if source else Path(layer.name)  # error messages name the file, else the layer
    return Image(data, axes, pixel_size or layer_microns(layer, -1), z_step, path)


def layer_microns(layer: napari.layers.Layer, axis: int) -> float | None:
    """The layer's pixel size along ``axis`` in µm, or ``None`` when it is unknown (see the module docstring)."""
    scale = float(layer.scale[axis])
    unit = layer.units[axis]
    try:
        return float((scale * unit).to(MICRON).magnitude)
    except pint.DimensionalityError:  # 'pixel': a plain scale other than 1 is taken as µm
        return scale if scale != 1 else None


def add_image(viewer: ViewerModel, image: Image, like: napari.layers.Image, name: str, **kwargs: Any) -> napari.layers.Image:
    """Add ``image`` as a layer on ``like``'s grid (scale, units, translation of its last axes) and return it."""
    ndim = image.data.ndim
    extra = ndim - like.ndim  # a C axis the model added, or fewer axes
    pad = max(extra, 0)
    grid = {
        "scale": [1.0] * pad + list(like.scale)[-ndim:],
        "translate": [0.0] * pad + list(like.translate)[-ndim:],
        "units": ["pixel"] * pad + [str(u) for u in like.units][-ndim:],
    }
    return viewer.add_image(image.data, name=name, metadata={AXES_KEY: image.axes}, **grid, **kwargs)


class LayerChoice(QComboBox):
    """The viewer's image layers by name, kept up to date as layers come, go and are renamed."""

    def __init__(self, viewer: ViewerModel) -> None:
        super().__init__()
        self.viewer = viewer
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Re-read the layer names, keeping the current choice where it still exists."""
        current = self.currentText()
        layers = [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]
        for layer in layers:
            layer.events.name.connect(self.refresh)  # napari connects a callback once, however often asked
        names = [layer.name for layer in layers]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)

    def layer(self) -> napari.layers.Image:
        """The chosen layer; a one-line error when there is none."""
        name = self.currentText()
        if name not in self.viewer.layers:
            raise ConfocalizeError("no image layer chosen; open an image in napari first")
        return self.viewer.layers[name]
