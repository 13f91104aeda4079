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
