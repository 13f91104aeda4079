"""I/O round trips with axes and pixel size, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from confocalize.errors import ConfocalizeError
from confocalize.io import MetadataWarning, atomic_write, image_stem, list_images, read_image, write_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(("axes", "shape"), [("YX", (20, 30)), ("ZYX", (3, 20, 30)), ("CYX", (2, 20, 30)), ("CZYX", (2, 3, 20, 30))])
def test_round_trip_keeps_data_axes_and_pixel_size(tmp_path, rng, dtype, axes, shape):
    data = (rng.random(shape) * 200).astype(dtype)
    path = write_image(tmp_path / "a.ome.tif", data, axes, pixel_size=0.108, z_step=0.3)
    img = read_image(path)
    assert img.axes == axes
    assert img.data.dtype == dtype
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size == pytest.approx(0.108)
    if "Z" in axes:
        assert img.z_step == pytest.approx(0.3)


def test_plain_tiff_resolution_tags_and_imagej_units(tmp_path, rng):
    data = rng.integers(0, 4000, (16, 16), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"unit": "um"})
    assert read_image(tmp_path / "ij.tif").pixel_size == pytest.approx(0.25)
    tifffile.imwrite(tmp_path / "cm.tif", data, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "cm.tif").pixel_size == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "none.tif", data)
    assert read_image(tmp_path / "none.tif").pixel_size is None
    assert read_image(tmp_path / "none.tif", pixel_size=0.1).pixel_size == 0.1


def test_tifffile_json_unit_counts_and_an_inch_tag_is_ignored_by_name(tmp_path, rng):
    """``tifffile.imwrite(..., resolution=..., metadata={"unit": "um"})`` writes the tag in inches and
    the unit into its JSON description: the unit wins. Without it the tag is a print resolution."""
    data = rng.integers(0, 4000, (16, 16), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "json.tif", data, resolution=(1 / 0.2, 1 / 0.2), metadata={"unit": "um"})
    assert read_image(tmp_path / "json.tif").pixel_size == pytest.approx(0.2)
    tifffile.imwrite(tmp_path / "dpi.tif", data, resolution=(72, 72), resolutionunit="INCH")
    with pytest.warns(MetadataWarning, match=r"dpi\.tif: resolution tag ignored, it is in inches"):
        assert read_image(tmp_path / "dpi.tif").pixel_size is None


def test_png_is_read_as_yx(tmp_path, rng):
    from PIL import Image as PILImage

    data = rng.integers(0, 255, (12, 9), dtype=np.uint8)
    PILImage.fromarray(data).save(tmp_path / "x.png")
    img = read_image(tmp_path / "x.png", pixel_size=0.2)
    assert img.axes == "YX" and img.pixel_size == 0.2
    np.testing.assert_array_equal(img.data, data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"II*\x00garbage-not-a-tiff" * 3), "not a readable TIFF"),
        (lambda p: p.write_text("hello, I am text"), "not a readable TIFF"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, make, message):
    path = tmp_path / "bad.tif"
    make(path)
    with pytest.raises(ConfocalizeError, match=message) as err:
        read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.array([[np.nan, 1.0], [2.0, 3.0]], dtype=np.float32), "NaN or Inf"),
        (np.ones((1, 1), dtype=np.uint16), "too small"),
        (np.ones((1, 40), dtype=np.uint16), "too small"),
        (np.ones((8, 8), dtype=np.complex64), "not supported"),
        (np.ones((8, 8), dtype=bool), "not supported"),
    ],
)
def test_unusable_pixels_are_refused(tmp_path, data, message):
    tifffile.imwrite(tmp_path / "x.tif", data)
    with pytest.raises(ConfocalizeError, match=message):
        read_image(tmp_path / "x.tif")


def test_wrong_axes_and_pixel_size_are_refused(tmp_path):
    write_image(tmp_path / "x.tif", np.zeros((4, 8, 8), np.uint16), "ZYX")
    with pytest.raises(ConfocalizeError, match="do not fit"):
        read_image(tmp_path / "x.tif", axes="YX")
    with pytest.raises(ConfocalizeError, match="not supported"):
        read_image(tmp_path / "x.tif", axes="XYZ")
    with pytest.raises(ConfocalizeError, match="not positive"):
        read_image(tmp_path / "x.tif", pixel_size=-1)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfocalizeError, match="cannot write here"):
        write_image(blocker / "out.tif", np.zeros((4, 4), np.uint16), "YX")


def test_list_images_and_stems(tmp_path):
    for name in ("b.ome.tif", "a.png", "notes.txt", ".hidden.tif"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path])] == ["a.png", "b.ome.tif"]
    assert image_stem(tmp_path / "b.ome.tif") == "b"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfocalizeError, match="no image files"):
        list_images([tmp_path / "empty"])


def test_json_is_strict_with_infinite_values(tmp_path):
    import json

    from confocalize.io import write_json

    path = write_json(tmp_path / "m.json", {"psnr": float("inf"), "x": [np.float32(1.5), float("nan")]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict constant {c}")) == {"psnr": None, "x": [1.5, None]}
