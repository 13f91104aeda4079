"""Microscope formats through bioio (``confocalize[formats]``): axes, pixel sizes, lazy reading, refusals.

CZI files are made here with pylibCZIrw, the library bioio-czi reads them with (it also writes). The
tests that need a reader skip where it is not installed; ``make test`` installs the extra. The
message for a missing extra is tested everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from confocalize.cli import main
from confocalize.chunked import enhance_to_zarr
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import MetadataWarning, image_stem, list_images, read_image
from confocalize.lazyio import open_lazy
from confocalize.package import ModelPackage, build_generator, save_package
from confocalize.predict import enhance_files, enhance_image

PX, DZ = 0.11, 0.35  # µm


def write_czi(path: Path, data: np.ndarray, scale: tuple[float, float, float] = (PX, PX, DZ)) -> Path:
    """``data`` (T, C, Z, Y, X, or with a last axis of 3 BGR samples) as a CZI with pixel sizes (x, y, z in µm)."""
    pytest.importorskip("bioio_czi")
    czi = pytest.importorskip("pylibCZIrw.czi")
    with czi.create_czi(str(path), exist_ok=True) as doc:
        for t, c, z in np.ndindex(data.shape[:3]):
            doc.write(data[t, c, z], plane={"T": t, "C": c, "Z": z})
        metres = {f"scale_{ax}": size * 1e-6 for ax, size in zip("xyz", scale, strict=True)}  # CZI stores metres, as ZEN writes them
        doc.write_metadata(document_name=path.stem, channel_names={c: f"ch{c}" for c in range(data.shape[1])}, **metres)
    return path


def tiny_package() -> ModelPackage:
    """A depth-2 U-Net with 4 base channels, untrained."""
    tiny = GeneratorConfig(depth=2, base_channels=4, residual=False)
    torch.manual_seed(0)
    return ModelPackage(build_generator(tiny), tiny, NormalizationConfig())


def one_line_error(path: Path, match: str) -> str:
    with pytest.raises(ConfocalizeError, match=match) as err:
        read_image(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("missing", ["bioio", "bioio_czi"])
def test_without_the_extra_the_error_names_the_file_and_the_fix(tmp_path, monkeypatch, missing):
    path = tmp_path / "cells.czi"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, missing, None)  # what an environment without confocalize[formats] imports
    assert "pip install 'confocalize[formats]'" in one_line_error(path, "needs bioio and bioio-czi")
    with pytest.raises(ConfocalizeError, match="confocalize\\[formats\\]"):
        open_lazy(path)


def test_folders_list_vendor_files_and_their_stems(tmp_path):
    for name in ("a.czi", "b.ND2", "c.lif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path])] == ["a.czi", "b.ND2", "c.lif"]
    assert image_stem(tmp_path / "a.czi") == "a"


@pytest.mark.parametrize(("shape", "axes"), [((1, 1, 1), "YX"), ((1, 2, 1), "CYX"), ((1, 1, 3), "ZYX"), ((1, 2, 3), "CZYX")])
def test_czi_keeps_pixels_axes_pixel_size_and_z_step(tmp_path, rng, shape, axes):
    data = rng.integers(0, 4000, (*shape, 24, 40), dtype=np.uint16)
    path = write_czi(tmp_path / "cells.czi", data)
    image = read_image(path)
    assert image.axes == axes and image.data.dtype == np.uint16
    np.testing.assert_array_equal(image.data, data[0].squeeze())
    assert image.pixel_size == pytest.approx(PX)
    assert image.z_step == pytest.approx(DZ)
    assert read_image(path, pixel_size=0.5).pixel_size == 0.5


def test_czi_opens_lazily_one_plane_per_chunk(tmp_path, rng):
    data = rng.integers(0, 4000, (1, 2, 3, 24, 40), dtype=np.uint16)
    image = open_lazy(write_czi(tmp_path / "cells.czi", data))
    assert image.axes == "CZYX" and image.pixel_size == pytest.approx(PX) and image.z_step == pytest.approx(DZ)
    assert image.data.numblocks == (2, 3, 1, 1)  # nothing read yet: each plane is read when a task asks for it
    np.testing.assert_array_equal(image.data[1, 2].compute(), data[0, 1, 2])


def test_rgb_czi_is_refused_since_its_reader_repeats_one_colour(tmp_path, rng):
    """bioio-czi 3.0.1 returns the first colour sample of a Bgr24 plane three times (pylibCZIrw reads it right)."""
    bgr = rng.integers(0, 255, (1, 1, 1, 16, 20, 3), dtype=np.uint8)
    one_line_error(write_czi(tmp_path / "rgb.czi", bgr), "an RGB CZI file, whose colours bioio-czi does not read right; save it as an RGB TIFF")


def test_time_series_are_refused(tmp_path, rng):
    """Files of several scenes are refused the same way; pylibCZIrw writes no scene metadata, so bioio-czi sees one."""
    path = write_czi(tmp_path / "series.czi", rng.integers(0, 4000, (3, 1, 1, 16, 16), dtype=np.uint16))
    assert "save each as its own file" in one_line_error(path, "holds 3 time points; confocalize reads one time point per file")


def test_non_square_pixels_keep_x_with_a_warning(tmp_path, rng):
    path = write_czi(tmp_path / "wide.czi", rng.integers(0, 4000, (1, 1, 1, 16, 16), dtype=np.uint16), scale=(0.1, 0.2, DZ))
    with pytest.warns(MetadataWarning, match=r"wide\.czi: pixels are 0\.1 x 0\.2 µm"):
        assert read_image(path).pixel_size == pytest.approx(0.1)


@pytest.mark.parametrize(("suffix", "module"), [(".czi", "bioio_czi"), (".nd2", "bioio_nd2"), (".lif", "bioio_lif")])
def test_foreign_bytes_are_a_one_line_error(tmp_path, capsys, suffix, module):
    """Each plugin is wired in: it is asked, refuses, and the user sees one line, not bioio's log of the attempt."""
    pytest.importorskip(module)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"ZISRAWFILE" + bytes(600))
    one_line_error(garbage, f"not a readable {suffix[1:].upper()} file")
    model = save_package(tiny_package(), tmp_path / "model")
    assert main(["enhance", str(model), str(garbage), "-o", str(tmp_path / "out"), "--backend", "torch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("confocalize: error:") and str(garbage) in " ".join(err.split()) and "reader attempt" not in err


def test_cut_czi_is_a_one_line_error(tmp_path, rng):
    whole = write_czi(tmp_path / "whole.czi", rng.integers(0, 4000, (1, 1, 2, 64, 64), dtype=np.uint16)).read_bytes()
    cut = tmp_path / "cut.czi"
    cut.write_bytes(whole[: len(whole) // 2])
    one_line_error(cut, "not a readable CZI file")


def test_enhance_writes_an_ome_tiff_with_the_czi_pixel_size(tmp_path, rng):
    path = write_czi(tmp_path / "cells.czi", rng.integers(0, 4000, (1, 1, 1, 32, 32), dtype=np.uint16))
    (output,) = enhance_files(tiny_package(), [path], tmp_path / "out", backend="torch")
    assert output.name == "cells.ome.tif"
    enhanced = read_image(output)
    assert enhanced.axes == "YX" and enhanced.data.shape == (32, 32) and enhanced.pixel_size == pytest.approx(PX)


def test_chunked_enhance_of_a_czi_equals_the_in_memory_one(tmp_path, rng):
    path = write_czi(tmp_path / "stack.czi", rng.integers(0, 4000, (1, 1, 2, 40, 48), dtype=np.uint16))
    package = tiny_package()
    (output,) = enhance_to_zarr(package, [path], tmp_path / "out", tile=32, chunk=16, backend="torch")
    chunked = open_lazy(output)
    assert output.name == "stack.ome.zarr" and chunked.axes == "ZYX" and chunked.z_step == pytest.approx(DZ)
    expected = enhance_image(package, read_image(path), tile=32, backend="torch").data
    np.testing.assert_allclose(chunked.data.compute(), expected, atol=1e-5)
