"""The reference pix2pix generator (Isola et al. 2017, ``unet_256``), for comparisons only.

``depth`` 4x4 stride-2 convolutions down, as many 4x4 stride-2 transposed convolutions up, skip
connections at every level, BatchNorm everywhere except the outermost down and the innermost down
layers, LeakyReLU(0.2) down, ReLU up, dropout 0.5 in the three up blocks below the innermost one,
Tanh output. With ``depth=8, ngf=64`` it is the reference ``unet_256`` (54 M parameters). As in
the reference code, the skip carries the LeakyReLU of the encoder output (its in-place activation).

It offers what :func:`confocalize.predict.predict_array` and the training module use of a
generator: ``multiple``, ``receptive_field`` and ``head`` (the last layer). Inference is tile-safe
in eval mode (running BatchNorm statistics); the reference code ran BatchNorm in train mode at
test time, which makes every output depend on the whole image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from confocalize.config import GeneratorConfig
from confocalize.nets.unet import pad_to_multiple

REFERENCE_GENERATOR = GeneratorConfig(depth=8, base_channels=64, max_channels=512, norm="batch", dropout=0.5, residual=False)
DROPOUT_BLOCKS = 3  # up blocks below the innermost one with dropout (num_downs - 5 in unet_256)


class ReferenceUNet(nn.Module):
    """pix2pix U-Net: ``depth`` levels, ``ngf`` channels at the first level, at most ``max_channels``.

    Any input size is accepted: it is reflection-padded to a multiple of ``2**depth`` and the
    output cropped back (the reference needed 256 x 256 inputs).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 8,
        ngf: int = 64,
        max_channels: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, not {depth}")
        self.depth = depth
        widths = [min(ngf * 2**level, max_channels) for level in range(depth)]
        self.stem = nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1)
        self.downs = nn.ModuleList(_down(widths[level - 1], widths[level], norm=level < depth - 1) for level in range(1, depth))
        dropped = range(max(depth - 1 - DROPOUT_BLOCKS, 1), depth - 1)
        self.ups = nn.ModuleList(
            _up(widths[level] * (1 if level == depth - 1 else 2), widths[level - 1], dropout if level in dropped else 0.0)
            for level in range(1, depth)
        )
        self.head = nn.ConvTranspose2d(2 * widths[0], out_channels, 4, stride=2, padding=1)

    @property
    def multiple(self) -> int:
        """Input sizes that are multiples of this need no padding."""
        return 2**self.depth

    @property
    def receptive_field(self) -> int:
        """Edge (pixels) of the input region that can influence one output pixel: ``5 * 2**depth - 2``.

        The 4x4 stride-2 convolutions give ``3 * 2**depth - 2``, the transposed ones (two coarse
        pixels per output pixel) ``2**(depth + 1)``; the largest extent of gradient probes over all
        output positions, depths 2 to 5.
        """
        return 5 * 2**self.depth - 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.multiple)
        skips = [F.leaky_relu(self.stem(x), 0.2)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()  # innermost: no activation kept for a skip
        for up in reversed(self.ups):
            x = torch.cat([skips.pop(), up(x)], dim=1)
        return torch.tanh(self.head(F.relu(x)))[..., :h, :w]


def _down(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
    """4x4 stride-2 convolution (+ BatchNorm) on an already activated input; LeakyReLU after, except innermost."""
    if not norm:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False))
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    """ReLU, 4x4 stride-2 transposed convolution, BatchNorm (+ dropout)."""
    layers: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def build_reference(cfg: GeneratorConfig = REFERENCE_GENERATOR, in_channels: int = 1, out_channels: int = 1) -> ReferenceUNet:
    """A reference U-Net from generator settings (``depth`` = num_downs, ``base_channels`` = ngf).

    Same signature as :func:`confocalize.package.build_generator`, so it can stand in for it.
    """
    return ReferenceUNet(in_channels, out_channels, cfg.depth, cfg.base_channels, cfg.max_channels, cfg.dropout)
