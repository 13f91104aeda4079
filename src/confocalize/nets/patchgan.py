"""PatchGAN discriminator (pix2pix): judges overlapping patches of an (input, output) pair."""

from __future__ import annotations

import torch
from torch import nn


class PatchGAN(nn.Module):
    """Conditional discriminator on the channel-wise concatenation of LQ and (real or fake) HQ.

    ``n_layers=3`` with 4x4 kernels gives the reference 70x70 receptive field. Returns one logit
    per patch.
    """

    def __init__(self, in_channels: int = 2, base_channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = base_channels
        for n in range(1, n_layers + 1):
            new_width = base_channels * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(width, new_width, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(new_width),
                nn.LeakyReLU(0.2, True),
            ]
            width = new_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, lq: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([lq, hq], dim=1))
