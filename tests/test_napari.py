"""The napari plugin's widgets on napari's viewer model (offscreen Qt, see conftest): layers, scales, names, notifications.

The widgets get a ``napari.components.ViewerModel``, the model that ``napari.Viewer`` adds its window
to: layers, events and notifications are napari's own, but no OpenGL canvas is made, since Qt's
offscreen platform has no OpenGL context (``make_napari_viewer`` fails there as soon as a layer is
drawn). docs/screenshots/make_screenshots.py runs them in real windows.
"""

from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

napari = pytest.importorskip("napari", reason="the napari plugin needs the napari extra: pip install confocalize[napari]")

from napari.components import ViewerModel  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtWidgets import QWidget  # noqa: E402
from test_register import texture  # noqa: E402

from confocalize.config import GeneratorConfig, NormalizationConfig, SystemDescription  # noqa: E402
from confocalize.errors import ConfocalizeError  # noqa: E402
from confocalize.io import Image, write_image  # noqa: E402
from confocalize.napari.enhance_widget import TRAINED_MODELS, EnhanceWidget  # noqa: E402
from confocalize.napari.layers import layer_image  # noqa: E402
from confocalize.napari.reader import napari_get_reader  # noqa: E402
from confocalize.napari.register_widget import RegisterWidget  # noqa: E402
from confocalize.napari.train_widget import TrainWidget  # noqa: E402
from confocalize.package import ModelPackage, Provenance, build_generator, load_package, save_package  # noqa: E402
from confocalize.pairs import PairRecord, write_manifest  # noqa: E402
from confocalize.predict import enhance_image  # noqa: E402
from confocalize.register import synthetic_pair  # noqa: E402

TINY = GeneratorConfig(depth=2, base_channels=4, residual=False)
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "confocalize" / "napari" / "napari.yaml"
WAIT_MS = 120_000  # the work's upper bound; it takes seconds
W = TypeVar("W", bound=QWidget)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    """A tiny untrained package that records its LQ optics (for the consistency map)."""
    torch.manual_seed(0)
    optics = Provenance(lq_system=SystemDescription(objective_na=1.0, emission_nm=500))
    return save_package(ModelPackage(build_generator(TINY), TINY, NormalizationConfig(), provenance=optics), tmp_path / "tiny")


@pytest.fixture()
def errors() -> list[str]:
    """The messages of the error notifications napari shows during the test."""
    shown: list[str] = []

    def keep(notification: object) -> None:
        if getattr(notification, "severity", None) == "error":
            shown.append(str(notification.message))  # type: ignore[attr-defined]

    notification_manager.notification_ready.connect(keep)
    yield shown
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture()
def viewer() -> ViewerModel:
    return ViewerModel()


@pytest.fixture()
def make(qtbot: object, viewer: ViewerModel) -> Callable[[type[W]], W]:
    """A widget of the given type on ``viewer``, closed after the test, as napari's Plugins menu makes it."""

    def widget(widget_type: type[W]) -> W:
        made = widget_type(napari_viewer=viewer)
        qtbot.addWidget(made)  # type: ignore[attr-defined]
        return made

    return widget


def run(qtbot: object, widget: QWidget) -> None:
    """Press the widget's run button and wait until its work has ended."""
    with qtbot.waitSignal(widget.task.finished, timeout=WAIT_MS):  # type: ignore[attr-defined]
        widget.task.run_button.click()


def test_manifest_declares_the_three_widgets() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "confocalize"
    commands = {c.id: c for c in manifest.contributions.commands}
    widgets = {w.display_name: commands[w.command] for w in manifest.contributions.widgets}
    assert set(widgets) == {"Enhance", "Register", "Train"}
    for command in widgets.values():
        module, _, name = command.python_name.partition(":")
        assert issubclass(getattr(__import__(module, fromlist=[name]), name), QWidget)
    assert 'confocalize = "confocalize.napari:napari.yaml"' in (MANIFEST.parents[3] / "pyproject.toml").read_text()


def test_reader_opens_a_stack_with_its_pixel_size_and_gives_it_back(viewer: ViewerModel, tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 60000, (3, 2, 20, 24), dtype=np.uint16)
    path = write_image(tmp_path / "cells.ome.tif", data, "CZYX", pixel_size=0.08, z_step=0.3)
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None and napari_get_reader([str(path)] * 2) is None
    for layer_data in napari_get_reader(str(path))(str(path)):
        viewer._add_layer_from_data(*layer_data)  # as napari adds what a reader returns
    layer = viewer.layers["cells"]
    assert [str(u) for u in layer.units] == ["pixel", "micrometer", "micrometer", "micrometer"]
    assert list(layer.scale) == pytest.approx([1.0, 0.3, 0.08, 0.08])
    image = layer_image(layer)
    assert image.axes == "CZYX" and image.pixel_size == pytest.approx(0.08) and image.z_step == pytest.approx(0.3)
    assert image.data.dtype == np.uint16 and np.array_equal(image.data, data)


def test_installed_plugin_reads_tiffs_through_npe2(tmp_path: Path) -> None:
    """napari finds the plugin by its entry point and offers its reader for TIFFs (as File > Open does)."""
    import npe2

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    (reader,) = manifest.contributions.readers
    assert {"*.tif", "*.tiff", "*.czi", "*.nd2", "*.lif"} <= set(reader.filename_patterns)
    path = write_image(tmp_path / "one.tif", np.ones((8, 8), dtype=np.uint16), "YX", pixel_size=0.5)
    npe2.PluginManager.instance().discover()
    ((data, kwargs, kind),) = npe2.read([str(path)], stack=False, plugin_name="confocalize")
    assert kind == "image" and kwargs["scale"] == [0.5, 0.5] and data.dtype == np.uint16


def test_enhance_adds_the_result_and_its_maps_on_the_input_grid(viewer: ViewerModel, make, qtbot, model: Path) -> None:
    data = (gaussian_filter(np.random.default_rng(0).random((40, 48)), 2) * 1000).astype(np.uint16)
    viewer.add_image(data, name="cells", scale=(0.2, 0.2), units=("um", "um"), translate=(5.0, 7.0))
    widget = make(EnhanceWidget)
    widget.model.setCurrentText(str(model))
    widget.uncertainty.setChecked(True)
    widget.consistency.setChecked(True)
    run(qtbot, widget)
    result, spread = viewer.layers["cells enhanced (tiny)"], viewer.layers["cells uncertainty (tiny)"]
    for layer in (result, spread, viewer.layers["cells consistency (tiny)"]):
        assert layer.data.shape == data.shape and layer.data.dtype == np.float32
        np.testing.assert_allclose(layer.scale, (0.2, 0.2))
        np.testing.assert_allclose(layer.translate, (5.0, 7.0))
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert float(spread.data.min()) >= 0 and float(spread.data.max()) > 0
    status = widget.task.status.text()
    assert "cells: median uncertainty" in status and "raw spread" in status and "x noise" in status
    assert layer_image(viewer.layers["cells"]).pixel_size == pytest.approx(0.2)


def test_enhance_a_stack_matches_the_api(viewer: ViewerModel, make, qtbot, model: Path) -> None:
    stack = np.random.default_rng(1).random((3, 32, 36)).astype(np.float32)
    viewer.add_image(stack, name="stack", scale=(0.5, 0.1, 0.1))  # no units: the scale is taken as µm
    widget = make(EnhanceWidget)
    widget.model.setCurrentText(str(model))
    run(qtbot, widget)
    layer = viewer.layers["stack enhanced (tiny)"]
    np.testing.assert_allclose(layer.scale, (0.5, 0.1, 0.1))
    assert layer.metadata["confocalize_axes"] == "ZYX"
    expected = enhance_image(load_package(model), Image(stack, "ZYX", 0.1, 0.5), backend="torch")
    np.testing.assert_allclose(layer.data, expected.data, atol=1e-4)


def test_a_bad_model_path_is_an_error_notification(viewer: ViewerModel, make, qtbot, tmp_path: Path, errors: list[str]) -> None:
    viewer.add_image(np.ones((32, 32), np.float32), name="cells")
    widget = make(EnhanceWidget)
    missing = tmp_path / "no-such-model"
    widget.model.setCurrentText(str(missing))
    run(qtbot, widget)
    with pytest.raises(ConfocalizeError) as raised:
        load_package(missing)
    assert errors == [str(raised.value)] and str(missing) in errors[0]
    assert widget.task.status.text() == str(raised.value)
    assert [layer.name for layer in viewer.layers] == ["cells"] and widget.task.run_button.isEnabled()


def test_cancel_stops_the_enhancement(viewer: ViewerModel, make, qtbot, model: Path, errors: list[str]) -> None:
    viewer.add_image(np.random.default_rng(2).random((512, 512)).astype(np.float32), name="big")
    widget = make(EnhanceWidget)
    widget.model.setCurrentText(str(model))
    widget.tile.setValue(64)  # many tiles: the first check comes long before the end
    with qtbot.waitSignal(widget.task.finished, timeout=WAIT_MS):
        widget.task.run_button.click()
        widget.task.cancel_button.click()
    assert widget.task.status.text() == "cancelled" and errors == []
    assert [layer.name for layer in viewer.layers] == ["big"]


def test_register_puts_hq_on_the_lq_grid(viewer: ViewerModel, make, qtbot) -> None:
    rng = np.random.default_rng(5)
    lq, hq, _ = synthetic_pair(texture(rng), rng, 0.5, size=128)  # HQ pixels half the LQ's
    viewer.add_image(lq.data, name="wide-field", scale=(lq.pixel_size,) * 2, units=("um", "um"))
    viewer.add_image(hq.data, name="confocal", scale=(hq.pixel_size,) * 2, units=("um", "um"))
    widget = make(RegisterWidget)
    widget.lq.setCurrentText("wide-field")
    widget.hq.setCurrentText("confocal")
    run(qtbot, widget)
    registered = viewer.layers["confocal on wide-field"]
    assert registered.data.shape == lq.data.shape
    np.testing.assert_allclose(registered.scale, (lq.pixel_size,) * 2)
    assert registered.colormap.name == "green" and viewer.layers["wide-field"].colormap.name == "magenta"
    status = widget.task.status.text()
    assert status.startswith("registered: NCC")
    assert float(re.search(r"scale ([0-9.]+)", status).group(1)) == pytest.approx(0.5, rel=0.05)


def test_register_shows_why_a_pair_is_rejected(viewer: ViewerModel, make, qtbot, errors: list[str]) -> None:
    viewer.add_image(texture(np.random.default_rng(0), 128), name="lq")
    viewer.add_image(np.zeros((128, 128), np.uint8), name="blank")
    widget = make(RegisterWidget)
    widget.lq.setCurrentText("lq")
    widget.hq.setCurrentText("blank")
    run(qtbot, widget)
    assert len(errors) == 1 and "blank" in errors[0] and "nothing to register" in errors[0]
    assert widget.task.status.text() == errors[0] and len(viewer.layers) == 2


def write_pairs(root: Path, n_fields: int = 4, size: int = 128) -> Path:
    """A pairs folder (pairs.json + already-registered images) of blurred, noisy LQ and sharp HQ images."""
    rng = np.random.default_rng(0)
    records = []
    for f in range(n_fields):
        hq = gaussian_filter(rng.random((size, size)), 1.0) * 1000
        lq = gaussian_filter(hq, 2.0) + rng.normal(0, 5, hq.shape)
        for side, data in (("lq", lq), ("hq", hq)):
            write_image(root / side / f"{f:03d}.ome.tif", data.astype(np.float32), "YX", pixel_size=0.1)
        records.append(PairRecord(f"{f:03d}", f"{f:03d}", f"lq/{f:03d}.ome.tif", f"hq/{f:03d}.ome.tif"))
    write_manifest(root, records)
    return root


def test_train_shows_validation_live_stops_and_offers_the_model(viewer: ViewerModel, make, qtbot, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs")
    widget = make(TrainWidget)
    widget.pairs.setText(str(pairs))
    widget.pairs.editingFinished.emit()
    assert widget.output.text() == str(tmp_path / "pairs-run")
    widget.minutes.setValue(2.0)
    widget.val_every.setValue(2)
    enhance = make(EnhanceWidget)
    with qtbot.waitSignal(widget.task.finished, timeout=WAIT_MS):
        widget.task.run_button.click()
        qtbot.waitUntil(lambda: "val PSNR" in widget.log.toPlainText(), timeout=WAIT_MS)
        widget.task.cancel_button.click()  # Stop: ends the run well before its 2 minutes, keeping the model
    model_dir = tmp_path / "pairs-run" / "model"
    assert load_package(model_dir).metrics["val"]["ssim"] is not None
    assert str(model_dir) in widget.task.status.text() and TRAINED_MODELS.paths[-1] == str(model_dir)
    assert enhance.model.currentText() == str(model_dir)
    assert "train validation: step 2" in widget.log.toPlainText()
