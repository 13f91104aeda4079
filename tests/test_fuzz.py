"""Fuzzing: random shapes, dtypes and values for ``read_image``, ``register_pair`` and ``enhance_image``.

Each either returns valid output or raises the project's own :class:`ConfocalizeError`; anything
else (a numpy or torch exception, NaN in the output, a wrong shape) is a bug.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import AXES, Image, read_image, write_image
from confocalize.package import ModelPackage, build_generator
from confocalize.predict import enhance_image
from confocalize.register import register_pair

pytestmark = pytest.mark.usefixtures("torch_one_thread")
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
DTYPES = [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.complex64, np.bool_]
AXES_FOR_NDIM = {2: "YX", 3: "ZYX", 4: "CZYX"}


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def arrays(max_side: int = 24, min_dims: int = 1, max_dims: int = 4) -> st.SearchStrategy[np.ndarray]:
    """Arrays of any listed dtype, small shapes (sides from 1) and any values; NaN and Inf in half the float ones."""
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)

    def of(dtype: type, finite: bool) -> st.SearchStrategy[np.ndarray]:
        kind = np.dtype(dtype).kind
        elements = hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False) if finite and kind in "fc" else None
        return hnp.arrays(np.dtype(dtype), shapes, elements=elements)

    return st.tuples(st.sampled_from(DTYPES), st.booleans()).flatmap(lambda choice: of(*choice))


pixel_sizes = st.none() | st.floats(allow_nan=True, allow_infinity=True, width=32)
axes_strings = st.none() | st.sampled_from([*AXES, "yx", "TYX", "XY", "ZCYX", "", "YXS"])


def refused(exc: ConfocalizeError) -> None:
    """An accepted refusal: one line."""
    assert "\n" not in str(exc)
    event("refused")


def check_image(image: Image) -> None:
    """What every successfully read or enhanced image must satisfy."""
    assert image.axes in AXES and image.data.ndim == len(image.axes)
    assert min(image.data.shape[-2:]) >= 2
    if image.data.dtype.kind == "f":
        assert np.all(np.isfinite(image.data))
    assert image.pixel_size is None or (np.isfinite(image.pixel_size) and image.pixel_size > 0)


@pytest.mark.filterwarnings("ignore:.*stored as RGB:DeprecationWarning")  # tifffile, for shapes that look like RGB
@FUZZ
@given(data=arrays(), axes=axes_strings, pixel_size=pixel_sizes)
def test_read_image_of_random_arrays(folder: Path, data: np.ndarray, axes: str | None, pixel_size: float | None) -> None:
    path = folder / "fuzz.tif"
    try:
        tifffile.imwrite(path, data)
    except Exception:  # noqa: BLE001 - not every random array is a TIFF; those are not our concern
        assume(False)
    try:
        image = read_image(path, axes=axes, pixel_size=pixel_size)
    except ConfocalizeError as exc:
        refused(exc)
        return
    event("valid output")
    check_image(image)
    assert image.data.size == data.size


@FUZZ
@given(cut=st.just(1.0) | st.floats(0.0, 1.0), tiff_header=st.booleans(), noise=st.just(b"") | st.binary(max_size=64))
def test_read_image_of_damaged_files(folder: Path, cut: float, tiff_header: bool, noise: bytes) -> None:
    """A valid OME-TIFF cut anywhere (and then given random bytes): the exact data or an error."""
    original = np.arange(2 * 3 * 12 * 10, dtype=np.uint16).reshape(2, 3, 12, 10)
    intact = write_image(folder / "intact.ome.tif", original, "CZYX", pixel_size=0.2).read_bytes()
    damaged = intact[: int(cut * len(intact))] + noise
    path = folder / "damaged.tif"
    path.write_bytes((b"II*\x00" if tiff_header else b"") + damaged)
    try:
        image = read_image(path)
    except ConfocalizeError as exc:
        refused(exc)
        return
    event("valid output")
    np.testing.assert_array_equal(image.data, original)
    assert image.axes == "CZYX" and image.pixel_size == pytest.approx(0.2)


def images(max_side: int) -> st.SearchStrategy[Image]:
    """In-memory images of random dtype and values with consistent axes and a random pixel size."""
    return st.builds(
        lambda data, px: Image(data, AXES_FOR_NDIM[data.ndim], px),
        arrays(max_side, min_dims=2, max_dims=4).filter(lambda a: a.ndim != 4 or a.shape[0] <= 3),
        st.none() | st.floats(0.05, 1.0),
    )


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::numpy.exceptions.ComplexWarning")  # NaN/complex arrays
@FUZZ
@given(lq=images(40), hq=images(40))
def test_register_pair_of_random_images(lq: Image, hq: Image) -> None:
    try:
        registration = register_pair(lq, hq)
    except ConfocalizeError as exc:
        refused(exc)
        return
    event("valid output")
    assert registration.hq_on_lq.shape[-2:] == lq.data.shape[-2:]
    assert np.all(np.isfinite(registration.hq_on_lq)) and registration.lq_from_hq.shape == (3, 3)


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    torch.manual_seed(0)
    config = GeneratorConfig(depth=2, base_channels=4, residual=False)
    return ModelPackage(build_generator(config), config, NormalizationConfig())


@FUZZ
@given(image=images(24), tile=st.integers(1, 64))
def test_enhance_random_images(package: ModelPackage, image: Image, tile: int) -> None:
    try:
        out = enhance_image(package, image, tile=tile)
    except ConfocalizeError as exc:
        refused(exc)
        return
    event("valid output")
    check_image(out)
    assert out.axes == image.axes and out.data.shape == image.data.shape and out.data.dtype == np.float32
