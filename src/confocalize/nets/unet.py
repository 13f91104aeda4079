"""U-Net generator with skip connections, configurable in depth and width.

Tile-safe by construction: the only normalisation is BatchNorm, which uses its running statistics
in eval mode, so a pixel's output depends only on its receptive field, never on the tile around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_block(c_in: int, c_out: int, norm: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        layers.append(nn.Conv2d(c, c_out, 3, padding=1, bias=norm == "none"))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` padded at the bottom and right to a height and width that are multiples of ``multiple``.

    Reflection padding, or replication where the image is too small to reflect; crop the output back.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def centre_planes(in_channels: int, out_channels: int) -> list[int]:
    """The input channels that hold the output planes themselves: the centre plane of each channel's
    ``2k + 1`` z-context planes (:func:`confocalize.stacks.network_input` lays them out channel by channel)."""
    planes, rest = divmod(in_channels, out_channels)
    if rest or planes % 2 == 0:
        raise ValueError(f"a residual U-Net needs an odd number of input planes per output channel, not {in_channels}/{out_channels}")
    return [c * planes + planes // 2 for c in range(out_channels)]


class UNet(nn.Module):
    """Encoder-decoder with ``depth`` 2x down-samplings and skip connections at every level.

    Any input height and width is accepted: the input is reflection-padded to a multiple of
    ``2**depth`` and the output cropped back. With ``residual`` the network learns a correction:
    its output is the input's own planes (:func:`centre_planes`) plus the head's, and the head
    starts at zero, so an untrained network returns its input instead of noise.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        base_channels: int = 32,
        max_channels: int = 512,
        norm: str = "batch",
        dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', not {norm!r}")
        self.depth = depth
        widths = [min(base_channels * 2**level, max_channels) for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            _conv_block(in_channels if level == 0 else widths[level - 1], widths[level], norm, 0.0) for level in range(depth)
        )
        self.bottleneck = _conv_block(widths[depth - 1], widths[depth], norm, dropout)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2) for level in range(depth))
        self.decoders = nn.ModuleList(_conv_block(2 * widths[level], widths[level], norm, 0.0) for level in range(depth))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.skip_planes = centre_planes(in_channels, out_channels) if residual else None
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Tile origins and sizes that are multiples of this keep results shift-consistent."""
        return 2**self.depth

    @property
    def receptive_field(self) -> int:
        """Edge length in pixels of the input region that can influence one output pixel."""
        rf = 1 + 4 * 2**self.depth  # two 3x3 convs in the bottleneck
        for level in range(self.depth):
            rf += 2 * 4 * 2**level + 2**level  # two 3x3 convs down and up, plus pooling
        return rf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        identity = None if self.skip_planes is None else x[:, self.skip_planes]
        x = pad_to_multiple(x, self.multiple)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            x = self.ups[level](x)
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1))
        out = self.head(x)[..., :h, :w]
        return out if identity is None else out + identity
