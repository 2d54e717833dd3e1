"""The UNet decoder shared by every encoder that is not a port of a specific tutorial model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import _layers
from ._layers import ConvBlock


def _width(reduction: int) -> int:
    """Decoder channels at a stride: 16 per unit of stride, at most 256 (segmentation-models-pytorch's Unet
    widths 256/128/64/32/16 for strides 16..1)."""
    return min(256, 16 * reduction)


class UNetDecoder(nn.Module):
    """Works for any encoder that declares its features (channels and reductions, shallow to deep).

    From the deepest feature: upsample to the next shallower feature, concatenate it, two conv-BN-ReLU; below
    the shallowest feature's stride keep upsampling 2x (without skips) to stride 1; a 1x1 conv gives the logits.
    Equal reductions (transformer features) are concatenated without upsampling.
    """

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(channels) != len(reductions) or not channels:
            raise ValueError(f"channels {tuple(channels)} and reductions {tuple(reductions)} must match")
        self.num_features = len(channels)
        width = channels[-1]
        skip_blocks = []
        for skip_channels, reduction in zip(reversed(channels[:-1]), reversed(reductions[:-1]), strict=True):
            skip_blocks.append(ConvBlock(width + skip_channels, _width(reduction)))
            width = _width(reduction)
        self.skip_blocks = nn.ModuleList(skip_blocks)
        self.up_factors: list[int] = []
        up_blocks = []
        reduction = reductions[0]
        while reduction > 1:
            factor = 2 if reduction % 2 == 0 else reduction
            reduction //= factor
            self.up_factors.append(factor)
            up_blocks.append(ConvBlock(width, _width(reduction)))
            width = _width(reduction)
        self.up_blocks = nn.ModuleList(up_blocks)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        features = features[-self.num_features:]
        x = features[-1]
        for block, skip in zip(self.skip_blocks, reversed(features[:-1]), strict=True):
            if x.shape[-2:] != skip.shape[-2:]:
                x = _layers.upsample_nearest(x, size=skip.shape[-2:])
            x = block(torch.cat([x, skip], dim=1))
        for factor, block in zip(self.up_factors, self.up_blocks, strict=True):
            x = block(_layers.upsample_nearest(x, scale_factor=factor))
        return self.head(x)
