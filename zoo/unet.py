"""`unet`: the original U-Net of Ronneberger et al. (2015) with batch norm and 'same' padding, as nnU-Net uses it.

Five levels of two 3x3 conv-BN-ReLU (32, 64, 128, 256, 512 channels) with 2x2 max-pools between them; the zoo's
generic decoder upsamples with a skip at every level, down to full resolution. Full-resolution skips and a
receptive field of about 140 px suit thin structures such as EM membranes; trained from scratch here.
"""

from __future__ import annotations

import torch
from torch import nn

from ._errors import ZooError
from ._layers import ConvBlock
from ._registry import get_spec, register_encoder
from ._spec import TUTORIAL
from .decoder import UNetDecoder
from .model import SegmentationModel

WIDTHS = (32, 64, 128, 256, 512)


class UNetEncoder(nn.Module):
    """Features at strides 1, 2, 4, 8, 16."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        channels = (in_channels, *widths)
        self.out_channels = tuple(widths)
        self.levels = nn.ModuleList(ConvBlock(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            features.append(x)
        return features


@register_encoder("unet", description="the original U-Net (Ronneberger 2015) with BN: 5 levels 32..512, from scratch",
                  channels=WIDTHS, reductions=(1, 2, 4, 8, 16), input_multiple=16, normalization=TUTORIAL,
                  origin="Ronneberger et al. 2015, arXiv:1505.04597")
def unet(num_classes: int, in_channels: int = 3, base_width: int = 32) -> SegmentationModel:
    """`base_width` channels at full resolution, doubling per level (the paper's 64 costs 4x the compute of 32)."""
    spec = get_spec("unet")
    if base_width < 1:
        raise ZooError(f"unet: base_width {base_width} must be a positive number of channels, e.g. 32 or 64")
    widths = tuple(base_width * 2**i for i in range(len(WIDTHS)))
    kwargs = {} if base_width == WIDTHS[0] else {"base_width": base_width}
    return SegmentationModel(UNetEncoder(in_channels, widths), UNetDecoder(widths, spec.reductions, num_classes),
                             spec, num_classes, in_channels, model_kwargs=kwargs)
