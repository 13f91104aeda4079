"""Generator/discriminator shapes for odd sizes (model packages: test_package.py)."""

from __future__ import annotations

import pytest
import torch

from confocalize.nets import PatchGAN, UNet


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


@pytest.mark.parametrize(("c_in", "c_out", "planes"), [(1, 1, [0]), (3, 1, [1]), (6, 2, [1, 4]), (2, 2, [0, 1])])
def test_untrained_residual_unet_returns_its_input_planes(c_in, c_out, planes):
    net = UNet(c_in, c_out, depth=2, base_channels=4, residual=True).eval()
    x = torch.randn(2, c_in, 21, 30)
    with torch.no_grad():
        assert torch.equal(net(x), x[:, planes])  # the head starts at zero: the correction is nothing yet


def test_residual_unet_adds_its_correction_to_the_input():
    torch.manual_seed(0)
    plain, residual = UNet(3, 1, depth=2, base_channels=4), UNet(3, 1, depth=2, base_channels=4, residual=True)
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(residual.eval()(x), plain.eval()(x) + x[:, 1:2], atol=1e-6)


def test_residual_unet_needs_an_odd_plane_count_per_output_channel():
    with pytest.raises(ValueError, match="odd number of input planes"):
        UNet(2, 1, depth=2, base_channels=4, residual=True)
