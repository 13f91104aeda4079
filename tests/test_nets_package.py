"""Generator/discriminator shapes for odd sizes; model packages load safely or not at all."""

from __future__ import annotations

import json

import pytest
import torch

from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.nets import PatchGAN, UNet
from confocalize.package import ModelPackage, build_generator, load_package, save_package


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (3, 5), (17, 100)])
def test_unet_keeps_any_size(size):
    net = UNet(1, 1, depth=3, base_channels=4).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, *size)).shape == (2, 1, *size)


def test_unet_receptive_field_bounds_the_real_one():
    net = UNet(1, 1, depth=3, base_channels=4).eval()
    x = torch.zeros(1, 1, 96, 96, requires_grad=True)
    net(x)[0, 0, 48, 48].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    assert rows.max() - rows.min() + 1 <= net.receptive_field


@pytest.mark.parametrize(("n_layers", "size", "out"), [(3, 64, 6), (3, 256, 30), (2, 33, 6)])
def test_patchgan_outputs_one_logit_per_patch(n_layers, size, out):
    d = PatchGAN(2, 8, n_layers)
    y = d(torch.randn(2, 1, size, size), torch.randn(2, 1, size, size))
    assert y.shape == (2, 1, out, out)


def _package(tmp_path):
    cfg = GeneratorConfig(depth=2, base_channels=4)
    gen = build_generator(cfg)
    return save_package(ModelPackage(gen, cfg, NormalizationConfig(), lq_pixel_size=0.1), tmp_path / "model"), gen


def test_package_round_trip_gives_the_same_network(tmp_path):
    path, gen = _package(tmp_path)
    loaded = load_package(path)
    x = torch.randn(1, 1, 20, 20)
    gen.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.generator(x), gen(x))
    assert loaded.lq_pixel_size == 0.1


def test_tampered_weights_are_refused(tmp_path):
    path, _ = _package(tmp_path)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfocalizeError, match="altered"):
        load_package(path)


def test_newer_format_is_refused(tmp_path):
    path, _ = _package(tmp_path)
    desc = json.loads((path / "model.json").read_text())
    desc["format_version"] = 99
    (path / "model.json").write_text(json.dumps(desc))
    with pytest.raises(ConfocalizeError, match="format 99 is not supported"):
        load_package(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    path, _ = _package(tmp_path)
    desc = json.loads((path / "model.json").read_text())
    desc["generator"]["base_channels"] = 8
    (path / "model.json").write_text(json.dumps(desc))
    with pytest.raises(ConfocalizeError, match="do not fit"):
        load_package(path)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfocalizeError, match="not a confocalize model"):
        load_package(tmp_path)
