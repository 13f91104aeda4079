"""The Enhance widget: a model package applied to an image layer, as ``confocalize enhance`` does.

The model is a built-in name, a package folder or a ``.zip`` (``package.load_package``); models that
the Train widget made in this session are offered too. The work is what ``enhance`` does per image:
``trust.TrustedEnhancer``, i.e. ``predict.enhance_image`` (tiled as ``enhance``), or with
*uncertainty* the mean over the 8 flips/rotations and its calibrated uncertainty, and with
*consistency* the residual against the LQ microscope, each map a further layer with the trust line of
``enhance``. Tiles go through an ``engine.ObservedRunner`` that reports them and stops on Cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from napari.components import ViewerModel
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QPushButton, QSpinBox, QVBoxLayout, QWidget

from confocalize.engine import ObservedRunner, make_runner
from confocalize.errors import ConfocalizeError
from confocalize.io import Image
from confocalize.napari.layers import LayerChoice, add_image, layer_image
from confocalize.napari.tasks import TaskPanel
from confocalize.package import BUILTIN_DIR, builtin_names, load_package, resolve_source
from confocalize.predict import DEFAULT_TILE
from confocalize.consistency import CONSISTENCY
from confocalize.trust import UNCERTAINTY, TrustedEnhancer

MAP_COLORMAPS = {UNCERTAINTY: "inferno", CONSISTENCY: "twilight_shifted"}  # a positive spread; a signed residual


class _TrainedModels(QObject):
    """Model packages made by the Train widget in this session, offered by every Enhance widget."""

    added = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def add(self, path: str | Path) -> None:
        """Offer the package at ``path``."""
        self.paths.append(str(path))
        self.added.emit(str(path))


TRAINED_MODELS = _TrainedModels()


@dataclass(frozen=True)
class EnhanceResult:
    """What the work hands back to the main thread: the result, the maps by name, the trust line (or "")."""

    image: Image
    maps: dict[str, Image]
    report: str


def model_label(source: str) -> str:
    """A short name of a model for layer names: the built-in name, else the package's file or folder name
    (a run's ``model`` folder: ``RUN/model``)."""
    path = resolve_source(source)
    if path.parent == BUILTIN_DIR:
        return path.name
    name = path.name.removesuffix(".zip")
    return f"{path.parent.name}/{name}" if name == "model" else name


class EnhanceWidget(QWidget):
    """Choose a model and an image layer; the result (and optionally its uncertainty) become new layers."""

    def __init__(self, napari_viewer: ViewerModel) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems(builtin_names() + TRAINED_MODELS.paths)
        self.model.setToolTip("a built-in model's name, or the path of a model package (folder or .zip)")
        TRAINED_MODELS.added.connect(self._offer)
        folder, archive = QPushButton("Folder..."), QPushButton("Zip...")
        folder.clicked.connect(self._browse_folder)
        archive.clicked.connect(self._browse_zip)
        model_row = QHBoxLayout()
        for widget in (self.model, folder, archive):
            model_row.addWidget(widget)
        self.image = LayerChoice(napari_viewer)
        self.uncertainty = QCheckBox("uncertainty map (8x the time)")
        self.uncertainty.setToolTip("the mean over the 8 flips/rotations, and their calibrated spread as a layer")
        self.consistency = QCheckBox("consistency map")
        self.consistency.setToolTip("the output seen through the LQ microscope against the input, in noise units")
        self.resample = QCheckBox("resample to the model's pixel size")
        self.resample.setToolTip("enhance on the model's pixel grid and bring the result back to the image's")
        self.tile = QSpinBox()
        self.tile.setRange(64, 8192)
        self.tile.setSingleStep(256)
        self.tile.setValue(DEFAULT_TILE)
        self.tile.setSuffix(" px")
        form = QFormLayout()
        form.addRow("model", model_row)
        form.addRow("image", self.image)
        form.addRow("tile", self.tile)
        form.addRow(self.uncertainty)
        form.addRow(self.consistency)
        form.addRow(self.resample)
        self.task = TaskPanel("Enhance")
        self.task.run_button.clicked.connect(self.start)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.task)
        layout.addStretch()

    def start(self) -> None:
        """Enhance the chosen layer with the chosen model in a worker thread."""
        source = self.model.currentText().strip()
        try:
            if not source:
                raise ConfocalizeError("no model chosen; pick a built-in model or a package folder or .zip")
            layer = self.image.layer()
            image = layer_image(layer)
        except ConfocalizeError as exc:  # found before any work: reported like the work's own errors
            self.task.fail(exc)
            return
        label = model_label(source)
        uncertainty, consistency = self.uncertainty.isChecked(), self.consistency.isChecked()
        resample, tile = self.resample.isChecked(), self.tile.value()
        task = self.task

        def observe(tiles: int) -> None:
            task.check_cancel()
            task.report(f"enhancing {layer.name} with {label}: {tiles} tiles done")

        def work() -> EnhanceResult:
            package = load_package(source)
            enhancer = TrustedEnhancer(package, uncertainty, consistency, tile=tile, resample=resample)
            result, maps = enhancer(image, ObservedRunner(make_runner(package), observe))
            return EnhanceResult(result, maps, enhancer.reports[-1].line() if maps else "")

        def done(result: EnhanceResult) -> None:
            add_image(self.viewer, result.image, layer, f"{layer.name} enhanced ({label})")
            for key, data in result.maps.items():  # hidden: the result stays on top, the maps a click away
                add_image(self.viewer, data, layer, f"{layer.name} {key} ({label})", colormap=MAP_COLORMAPS[key], visible=False)
            if result.report:
                self.task.status.setText(f"{self.task.status.text()}; {result.report}")

        self.task.run(work, done, f"enhancing {layer.name} with {label}...")

    def _offer(self, path: str) -> None:
        self.model.addItem(path)
        self.model.setCurrentText(path)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model package folder")
        if folder:
            self.model.setCurrentText(folder)

    def _browse_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model package", filter="Model package (*.zip)")
        if path:
            self.model.setCurrentText(path)
