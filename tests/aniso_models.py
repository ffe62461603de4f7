"""A tiny nnU-Net-style network that pools anisotropically (depth 4, height and width 8).

Strides (1,2,2), (2,2,2), (2,2,2) after the first stage; instance norm, so the bottleneck
needs more than one voxel; skip connections concatenated, so a patch the pooling does not
divide fails. ``aniso_net`` declares nothing; ``declared_aniso_net`` declares its rule.
"""

from __future__ import annotations

import torch
from torch import nn

STRIDES = ((1, 2, 2), (2, 2, 2), (2, 2, 2))
WIDTHS = (4, 8, 8, 8)


def _block(in_channels: int, out_channels: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(inplace=True),
    )


class AnisoNet(nn.Module):
    """Encoder with per-axis strides, decoder with transposed convolutions and skips."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.stem = _block(in_channels, WIDTHS[0], (1, 1, 1))
        self.down = nn.ModuleList(
            _block(WIDTHS[i], WIDTHS[i + 1], stride) for i, stride in enumerate(STRIDES)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(WIDTHS[i + 1], WIDTHS[i], stride, stride=stride)
            for i, stride in enumerate(STRIDES)
        )
        self.fuse = nn.ModuleList(_block(2 * WIDTHS[i], WIDTHS[i], (1, 1, 1)) for i in range(len(STRIDES)))
        self.head = nn.Conv3d(WIDTHS[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        x = skips.pop()
        for index in reversed(range(len(STRIDES))):
            x = self.fuse[index](torch.cat([self.up[index](x), skips.pop()], dim=1))
        return self.head(x)


def aniso_net(in_channels: int, out_channels: int) -> nn.Module:
    return AnisoNet(in_channels, out_channels)


def declared_aniso_net(in_channels: int, out_channels: int) -> nn.Module:
    return AnisoNet(in_channels, out_channels)


declared_aniso_net.memprobe_divisors = (4, 8, 8)  # type: ignore[attr-defined]
declared_aniso_net.memprobe_min_patch = (8, 16, 16)  # type: ignore[attr-defined]


def shapeless_net(in_channels: int, out_channels: int) -> nn.Module:
    """A network that fails on every patch: its rule cannot be found."""

    class _Refuses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(in_channels, out_channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError(f"no patch suits me, not even {tuple(x.shape[2:])}")

    return _Refuses()
