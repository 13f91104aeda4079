"""Tiled inference equals whole-image inference; images of any size, axes and file layout are enhanced."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, write_image
from confocalize.nets import UNet
from confocalize.normalize import sampled_normalization
from confocalize.package import ModelPackage, build_generator
from confocalize.predict import TilingWarning, default_halo, enhance_files, enhance_image, predict_array

WHOLE = 10**6  # a tile edge larger than any test image: inference on the whole image


def _unet(depth: int = 3, base: int = 4, in_channels: int = 1, seed: int = 0) -> UNet:
    """A small random U-Net whose BatchNorm layers hold non-trivial running statistics."""
    torch.manual_seed(seed)
    net = UNet(in_channels, 1, depth=depth, base_channels=base)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0.0, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0.0, 0.2)
    net.head.weight.data *= 20  # outputs of order 0.1-1 rather than 0.01, so differences are not hidden
    return net.eval()


def _package(depth: int = 2, in_channels: int = 1) -> ModelPackage:
    cfg = GeneratorConfig(depth=depth, base_channels=4, residual=False)  # the head alone sets the output
    torch.manual_seed(0)
    return ModelPackage(build_generator(cfg, in_channels), cfg, NormalizationConfig(), in_channels=in_channels)


def _constant_package(value: float) -> ModelPackage:
    """A package whose generator outputs ``value`` everywhere."""
    package = _package()
    package.generator.head.weight.data.zero_()
    package.generator.head.bias.data.fill_(value)
    return package


def test_tiled_equals_whole_image_on_1024(rng):
    net = _unet()
    x = rng.normal(size=(1, 1024, 1024)).astype(np.float32)
    whole = predict_array(net, x, tile=WHOLE)
    tiled = predict_array(net, x, tile=256, batch_size=3)
    diff = np.abs(tiled - whole)
    assert whole.std() > 0.05
    assert diff.mean() < 1e-3 and diff.max() < 1e-4, (diff.mean(), diff.max())


def test_a_larger_halo_also_matches_and_no_halo_does_not(rng):
    net = _unet()
    x = rng.normal(size=(1, 260, 301)).astype(np.float32)
    whole = predict_array(net, x, tile=WHOLE)
    larger = predict_array(net, x, tile=200, halo=default_halo(net) + 5)
    assert np.abs(larger - whole).max() < 1e-4
    no_halo = predict_array(net, x, tile=128, halo=0)
    assert np.abs(no_halo - whole).max() > 1e-3  # the check above can fail: the halo matters


@pytest.mark.parametrize("shape", [(37, 53), (3, 5), (2, 2)])
def test_odd_small_sizes_go_through_whole(rng, shape):
    net = _unet(depth=2)
    x = rng.normal(size=(1, *shape)).astype(np.float32)
    out = predict_array(net, x)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)[None])[0].numpy()
    assert out.shape == (1, *shape) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_predict_restores_training_mode(rng):
    net = _unet(depth=2).train()
    predict_array(net, rng.normal(size=(1, 8, 8)).astype(np.float32))
    assert net.training


def test_stack_is_enhanced_slice_by_slice(rng):
    package = _package()
    stack = rng.gamma(2.0, 100.0, size=(3, 24, 20)).astype(np.float32)
    out = enhance_image(package, Image(stack, "ZYX", pixel_size=0.2, z_step=0.5))
    n = package.normalization
    normalised = sampled_normalization(stack, n.low, n.high, n.input_window).apply(stack)
    assert out.axes == "ZYX" and out.data.shape == stack.shape and out.data.dtype == np.float32
    assert (out.pixel_size, out.z_step) == (0.2, 0.5)
    for z in range(3):
        np.testing.assert_allclose(out.data[z], predict_array(package.generator, normalised[z][None])[0], atol=1e-6)


def test_channels_go_through_a_single_channel_model_one_by_one(rng):
    package = _package()
    data = rng.gamma(2.0, 100.0, size=(2, 16, 16)).astype(np.float32)
    out = enhance_image(package, Image(data, "CYX"))
    assert out.axes == "CYX" and out.data.shape == data.shape
    single = enhance_image(package, Image(data[1], "YX"))
    np.testing.assert_allclose(out.data[1], single.data, atol=1e-6)


def test_multichannel_model_takes_all_channels_together(rng):
    package = _package(in_channels=2)
    out = enhance_image(package, Image(rng.random((2, 2, 16, 16), dtype=np.float32), "CZYX"))
    assert out.axes == "CZYX" and out.data.shape == (1, 2, 16, 16)
    with pytest.raises(ConfocalizeError, match="takes 2"):
        enhance_image(package, Image(rng.random((3, 16, 16), dtype=np.float32), "CYX"))


def test_too_small_image_is_a_user_error():
    with pytest.raises(ConfocalizeError, match="too small"):
        enhance_image(_package(), Image(np.zeros((1, 5), np.float32), "YX"))


def test_enhance_files_writes_ome_tiffs_with_pixel_size(tmp_path, rng):
    src = tmp_path / "in"
    write_image(src / "a.tif", rng.integers(0, 4000, (20, 30), dtype=np.uint16), "YX", pixel_size=0.13)
    write_image(src / "b.ome.tif", rng.integers(0, 4000, (2, 20, 30), dtype=np.uint16), "ZYX", pixel_size=0.2, z_step=0.4)
    calls = []
    written = enhance_files(_package(), [src], tmp_path / "out", progress=lambda d, t: calls.append((d, t)))
    assert [p.name for p in written] == ["a.ome.tif", "b.ome.tif"] and calls == [(1, 2), (2, 2)]
    a, b = read_image(written[0]), read_image(written[1])
    assert a.data.dtype == np.float32 and a.data.shape == (20, 30) and a.pixel_size == pytest.approx(0.13)
    assert b.axes == "ZYX" and b.pixel_size == pytest.approx(0.2) and b.z_step == pytest.approx(0.4)


@pytest.mark.parametrize(("value", "expected"), [(0.5, 32768), (2.0, 65535), (-1.0, 0)])
def test_uint16_output_maps_unit_range_and_clips(tmp_path, rng, value, expected):
    path = write_image(tmp_path / "x.tif", rng.random((8, 8), dtype=np.float32), "YX")
    (out,) = enhance_files(_constant_package(value), [path], tmp_path / "out", dtype="uint16", pixel_size=0.1)
    image = read_image(out)
    assert image.data.dtype == np.uint16 and np.all(image.data == expected) and image.pixel_size == pytest.approx(0.1)


def test_enhance_files_never_overwrites_an_input(tmp_path, rng):
    path = write_image(tmp_path / "a.ome.tif", rng.random((8, 8), dtype=np.float32), "YX")
    before = path.read_bytes()
    with pytest.raises(ConfocalizeError, match="overwrite"):
        enhance_files(_package(), [path], tmp_path)
    assert path.read_bytes() == before


def test_two_inputs_with_one_output_name_are_refused(tmp_path, rng):
    paths = [write_image(tmp_path / name, rng.random((8, 8), dtype=np.float32), "YX") for name in ("a.tif", "a.tiff")]
    with pytest.raises(ConfocalizeError, match="both"):
        enhance_files(_package(), paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_input_and_bad_dtype_are_user_errors(tmp_path):
    with pytest.raises(ConfocalizeError, match="no such file"):
        enhance_files(_package(), [tmp_path / "missing.tif"], tmp_path / "out")
    with pytest.raises(ConfocalizeError, match="not supported"):
        enhance_files(_package(), [tmp_path], tmp_path / "out", dtype="uint8")  # type: ignore[arg-type]


def test_tiles_barely_larger_than_their_halos_give_a_warning(rng):
    net = _unet(depth=3)
    x = rng.random((1, 256, 256)).astype(np.float32)
    halo = default_halo(net)
    with pytest.warns(TilingWarning, match="--tile"):
        small = predict_array(net, x, tile=1)  # raised to the smallest legal tile: mostly halo
    with warnings.catch_warnings():
        warnings.simplefilter("error", TilingWarning)
        whole = predict_array(net, x, tile=8 * halo)
    np.testing.assert_allclose(small, whole, atol=1e-5)
