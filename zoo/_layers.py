"""Building blocks shared by the zoo's own networks."""

from __future__ import annotations

from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers with 'same' padding: a U-Net level, encoder and decoder alike."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))
