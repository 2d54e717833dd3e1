"""Building blocks shared by the zoo's own networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers with 'same' padding: a U-Net level, encoder and decoder alike."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))


class _GradientInForwardLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient on in the memory layout its input had."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.layout = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
                      and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.layout)


def upsample_nearest(x: torch.Tensor, size: tuple[int, int] | None = None, scale_factor: int | None = None
                     ) -> torch.Tensor:
    """`F.interpolate(mode="nearest")`, the same numbers, with a backward that stays fast in channels-last.

    A decoder concatenates the upsampled map with a skip, so the gradient reaching the upsampling is a channel
    slice of the concatenation's: strided in channels-last. torch's CPU `upsample_nearest2d_backward` makes it
    NCHW-contiguous first, a transposing copy that cost 5-9 % of a `unet` training step on CPU; handed the gradient
    channels-last-contiguous it copies rows instead (`benchmarks/step_speed.py`, "upsampling gradient layout").
    """
    y = F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")
    return _GradientInForwardLayout.apply(y) if y.requires_grad and torch.is_grad_enabled() else y


class NearestUpsample(nn.Module):
    """`nn.Upsample(scale_factor, mode="nearest")` through `upsample_nearest` (no parameters, the same output)."""

    def __init__(self, scale_factor: int) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_nearest(x, scale_factor=self.scale_factor)
