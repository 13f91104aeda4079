"""Screenshots of the napari plugin's three widgets at work on real data -> docs/screenshots/{enhance,register,train}.png.

    QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python docs/screenshots/make_screenshots.py   # about 3 minutes on 2 cores
    ... make_screenshots.py --only enhance --only register --out DIR   # what tests/test_napari_window.py checks

napari draws with OpenGL, which Qt's offscreen platform does not give: run it on a screen or on a
virtual one (Debian: apt-get install xvfb).

The data are those of the benchmarks (``../shared/data``; ``CONFOCALIZE_DATA`` overrides): a W2S
single-frame wide-field image enhanced by the built-in ``w2s-denoise`` with its uncertainty, a
confocal/STED pair of the DSCM data registered, and a 1-minute training on six W2S fields registered
into a pairs folder (in a temporary folder). Each widget is pressed as a user would, in a real viewer.
Each PNG is palette-quantised and shrunk until it is under 400 KB.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import napari
import numpy as np
from PIL import Image as PILImage
from qtpy.QtWidgets import QApplication, QWidget

from confocalize.io import atomic_write, read_image
from confocalize.napari.enhance_widget import EnhanceWidget
from confocalize.napari.register_widget import RegisterWidget
from confocalize.napari.train_widget import TrainWidget
from confocalize.pairs import register_folder

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CONFOCALIZE_DATA", REPO.parent / "shared" / "data"))
MAX_BYTES = 400_000
WINDOW = (1600, 900)


def wait_until(done: Callable[[], bool], timeout_s: float) -> None:
    """Run the Qt event loop until ``done()`` (the widgets' work reports through it)."""
    end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > end:
            raise TimeoutError("the widget's work did not end in time")
        QApplication.processEvents()
        time.sleep(0.02)


def press(widget: QWidget, timeout_s: float = 600) -> None:
    """Press the widget's run button and wait for its work to end; stop on an error."""
    ended: list[bool] = []
    widget.task.finished.connect(lambda: ended.append(True))
    widget.task.run_button.click()
    wait_until(lambda: bool(ended), timeout_s)
    print(f"{type(widget).__name__}: {widget.task.status.text()}", flush=True)


def viewer_with(widget_type: type[QWidget], name: str) -> tuple[napari.Viewer, QWidget]:
    """A viewer of :data:`WINDOW` size with the widget docked on the right."""
    viewer = napari.Viewer(title=f"confocalize: {name}")
    viewer.window.resize(*WINDOW)
    widget = widget_type(viewer)
    viewer.window.add_dock_widget(widget, name=name, area="right")
    return viewer, widget


def save(viewer: napari.Viewer, out: Path, name: str) -> Path:
    """The whole window as ``out/NAME.png``, under :data:`MAX_BYTES`."""
    QApplication.processEvents()
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    rgb = PILImage.fromarray(np.asarray(pixels)[..., :3])
    width = rgb.width
    while True:
        image = rgb.resize((width, rgb.height * width // rgb.width), PILImage.Resampling.LANCZOS).quantize(256)  # a palette
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= MAX_BYTES:
            break
        width = width * 7 // 8
    path = out / f"{name}.png"
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    print(f"wrote {path} ({buffer.tell() // 1000} KB)", flush=True)
    return path


def enhance(out: Path) -> None:
    """W2S field 001, one wide-field frame, enhanced by w2s-denoise with its uncertainty; the three side by side."""
    image = read_image(DATA / "w2s_widefield" / "avg1" / "001_0.png")
    viewer, widget = viewer_with(EnhanceWidget, "Enhance")
    viewer.add_image(image.data, name="W2S 001 wide-field")
    widget.model.setCurrentText("w2s-denoise")
    widget.uncertainty.setChecked(True)
    press(widget)
    viewer.layers[-1].visible = True  # the uncertainty map, hidden by default, shown beside the others
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 3)
    viewer.reset_view()
    save(viewer, out, "enhance")
    viewer.close()


def register(out: Path) -> None:
    """DSCM mitochondria field 2: the STED image onto the confocal grid (a ~2 px shift); magenta/green overlay."""
    folder = DATA / "dscm_confocal_sted" / "Mito"
    viewer, widget = viewer_with(RegisterWidget, "Register")
    viewer.add_image(read_image(folder / "2_Confocal.png").data, name="confocal 2")
    viewer.add_image(read_image(folder / "2_STED.png").data, name="STED 2", visible=False)
    widget.lq.setCurrentText("confocal 2")
    widget.hq.setCurrentText("STED 2")
    press(widget)
    viewer.reset_view()
    save(viewer, out, "register")
    viewer.close()


def train(out: Path) -> None:
    """Six W2S fields (channel 0, single frame -> 400-frame average) registered into a pairs folder (in a temporary folder), then 1 minute of training."""
    names = [f"{field:03d}_0.png" for field in range(1, 7)]
    pairs = [(DATA / "w2s_widefield" / "avg1" / n, DATA / "w2s_widefield" / "avg400" / n) for n in names]
    with tempfile.TemporaryDirectory() as work:
        register_folder(pairs, Path(work) / "w2s-pairs")
        viewer, widget = viewer_with(TrainWidget, "Train")
        viewer.add_image(read_image(pairs[0][0]).data, name="W2S 001 wide-field")
        widget.pairs.setText(str(Path(work) / "w2s-pairs"))
        widget.pairs.editingFinished.emit()
        widget.minutes.setValue(1.0)
        widget.val_every.setValue(25)
        press(widget)
        save(viewer, out, "train")
        viewer.close()


SHOTS: dict[str, Callable[[Path], None]] = {"enhance": enhance, "register": register, "train": train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(SHOTS), help="this widget only (repeatable; default: all three)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder of the PNGs (default: docs/screenshots)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"real data not found at {DATA}; set CONFOCALIZE_DATA", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(SHOTS):
        SHOTS[name](args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
