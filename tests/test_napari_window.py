"""The plugin's widgets in a real napari window, checked the way a person meets them: a screenshot.

docs/screenshots/make_screenshots.py opens napari on a virtual X screen (Xvfb; napari draws with
OpenGL, which Qt's offscreen platform lacks), presses Enhance on a W2S wide-field image with the
built-in ``w2s-denoise`` (result and uncertainty map side by side) and Register on a DSCM
confocal/STED pair (magenta/green overlay), and saves each window. The test then looks at the
pixels: the canvas must show the images in their colour maps, not a black or empty window.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari", reason="the napari plugin needs the napari extra: pip install confocalize[napari]")

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "make_screenshots.py"


@pytest.fixture(scope="module")
def screenshots(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The Enhance and Register screenshots of one run of the script (folder, its output)."""
    if shutil.which("xvfb-run") is None:
        pytest.skip("no xvfb-run on PATH (Debian: apt-get install xvfb libgl1-mesa-dri; .ci/run installs them)")
    out = tmp_path_factory.mktemp("screenshots")
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "CONFOCALIZE_DATA": str(shared_data)}
    command = ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24", sys.executable, str(SCRIPT), "--only", "enhance", "--only", "register", "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def canvas(path: Path) -> np.ndarray:
    """The napari canvas of a window screenshot as int RGB: the rows and columns that are mostly black
    (the canvas background; napari's panels are dark grey), an empty array when there are none."""
    pixels = np.asarray(PILImage.open(path).convert("RGB")).astype(int)
    black = pixels.max(axis=-1) < 8
    rows, cols = np.flatnonzero(black.mean(axis=1) > 0.2), np.flatnonzero(black.mean(axis=0) > 0.2)
    if rows.size < 100 or cols.size < 100:
        return np.zeros((0, 0, 3), dtype=int)
    return pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def test_enhance_window_shows_input_result_and_uncertainty(screenshots: tuple[Path, str]) -> None:
    out, stdout = screenshots
    assert "EnhanceWidget: done in" in stdout and "median uncertainty" in stdout
    view = canvas(out / "enhance.png")
    assert view.shape[0] > 300 and view.shape[1] > 300, "no canvas in the window"
    r, g, b = view[..., 0], view[..., 1], view[..., 2]
    grey = (abs(r - g) < 12) & (abs(g - b) < 12) & (r > 60)  # the input and the result, grey
    inferno = (r > 150) & (r - b > 90) & (r - g > 40)  # the uncertainty map's orange
    third = view.shape[1] // 3  # the grid shows input | result | uncertainty
    assert grey[:, :third].mean() > 0.02 and grey[:, third : 2 * third].mean() > 0.02, "the input or the result is not drawn"
    assert inferno[:, 2 * third :].mean() > 0.02 > inferno[:, : 2 * third].mean(), "the uncertainty map is not drawn on the right"


def test_register_window_shows_the_magenta_green_overlay(screenshots: tuple[Path, str]) -> None:
    out, stdout = screenshots
    assert "RegisterWidget: registered: NCC" in stdout
    view = canvas(out / "register.png")
    assert view.shape[0] > 300 and view.shape[1] > 300, "no canvas in the window"
    r, g, b = view[..., 0], view[..., 1], view[..., 2]
    magenta = ((r - g > 25) & (b - g > 25)).mean()  # the LQ layer
    green = ((g - r > 25) & (g - b > 25)).mean()  # the registered HQ layer where it outshines the LQ
    assert magenta > 0.02, f"the LQ layer's magenta covers only {magenta:.2%} of the canvas"
    assert green > 0.003, f"the registered HQ layer's green covers only {green:.2%} of the canvas"
