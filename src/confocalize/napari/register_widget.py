"""The Register widget: an HQ layer put onto an LQ layer's pixel grid, as ``confocalize register`` does per pair.

The work is ``register.register_pair``. The registered HQ becomes a new layer on the LQ grid, shown
as the overlays of ``register`` are: LQ in magenta, registered HQ in green, added (white where they
agree). A pair that ``register_pair`` refuses (``RegistrationError``) shows its reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.components import ViewerModel
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QVBoxLayout, QWidget

from confocalize.errors import ConfocalizeError
from confocalize.io import Image
from confocalize.napari.layers import LayerChoice, add_image, layer_image
from confocalize.napari.tasks import TaskPanel
from confocalize.register import Registration, register_pair

OVERLAY_PERCENTILES = (1.0, 99.8)  # the registered HQ's display range: sparse sharp structure stays visible


def quality_line(quality: dict[str, Any]) -> str:
    """The registration's numbers in one line: NCC before/after, overlap, rotation, flip, scale, uncertainty."""
    return (
        f"NCC {quality['ncc_before']:.3f} -> {quality['ncc_after']:.3f} (z {quality['z_score']:.0f}), "
        f"overlap {quality['overlap_fraction']:.0%}, rotation {quality['rotation_deg']:.2f}°, "
        f"{'mirrored, ' if quality['flip'] else ''}scale {quality['scale']:.4f}, uncertainty {quality['uncertainty_px']:.3f} px"
    )


def _pixel_size_box() -> QDoubleSpinBox:
    """A pixel size in µm; 0 shows "from layer" (the layer's own scale)."""
    box = QDoubleSpinBox()
    box.setRange(0.0, 100.0)
    box.setDecimals(4)
    box.setSingleStep(0.01)
    box.setSuffix(" µm")
    box.setSpecialValueText("from layer")
    return box


class RegisterWidget(QWidget):
    """Choose the LQ and HQ layers (and pixel sizes the layers lack); the registered HQ becomes a layer."""

    def __init__(self, napari_viewer: ViewerModel) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.lq, self.hq = LayerChoice(napari_viewer), LayerChoice(napari_viewer)
        self.lq_pixel_size, self.hq_pixel_size = _pixel_size_box(), _pixel_size_box()
        form = QFormLayout()
        form.addRow("LQ (e.g. wide-field)", self.lq)
        form.addRow("LQ pixel size", self.lq_pixel_size)
        form.addRow("HQ (e.g. confocal)", self.hq)
        form.addRow("HQ pixel size", self.hq_pixel_size)
        self.task = TaskPanel("Register", can_cancel=False)
        self.task.run_button.clicked.connect(self.start)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.task)
        layout.addStretch()

    def start(self) -> None:
        """Register the chosen HQ layer onto the chosen LQ layer in a worker thread."""
        try:
            lq_layer, hq_layer = self.lq.layer(), self.hq.layer()
            if lq_layer is hq_layer:
                raise ConfocalizeError(f"{lq_layer.name}: chosen as both LQ and HQ; choose two layers")
            lq = layer_image(lq_layer, self.lq_pixel_size.value() or None)
            hq = layer_image(hq_layer, self.hq_pixel_size.value() or None)
        except ConfocalizeError as exc:
            self.task.fail(exc)
            return

        def done(registration: Registration) -> None:
            registered = Image(registration.hq_on_lq, registration.axes)
            limits = tuple(np.percentile(registered.data, OVERLAY_PERCENTILES))  # as register's overlays scale it
            add_image(self.viewer, registered, lq_layer, f"{hq_layer.name} on {lq_layer.name}", colormap="green", blending="additive",
                      contrast_limits=limits)  # fmt: skip
            lq_layer.colormap, lq_layer.blending = "magenta", "additive"
            self.task.status.setText(f"registered: {quality_line(registration.quality)}")

        self.task.run(lambda: register_pair(lq, hq), done, f"registering {hq_layer.name} onto {lq_layer.name}...")
