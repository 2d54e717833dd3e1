"""`mini`: the tutorial's Keras `unet_mini`, ported layer for layer (472,213 parameters at 21 classes).

Two levels of 3x3 'same' conv + ReLU with Dropout(0.2) between the two convs of a level, 2x2 max-pools,
nearest 2x upsampling concatenated (upsampled first) with the skip, and a 1x1 conv to the classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ._keras import glorot_init_
from ._layers import NearestUpsample
from ._registry import get_spec, register_encoder
from ._spec import TUTORIAL
from .model import SegmentationModel


def _level(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.2),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class MiniEncoder(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.level1 = _level(in_channels, 32)
        self.level2 = _level(32, 64)
        self.level3 = _level(64, 128)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.level1(x)
        c2 = self.level2(self.pool(c1))
        return [c1, c2, self.level3(self.pool(c2))]


class MiniDecoder(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.up = NearestUpsample(2)
        self.level2 = _level(128 + 64, 64)
        self.level1 = _level(64 + 32, 32)
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        c1, c2, c3 = features
        x = self.level2(torch.cat([self.up(c3), c2], dim=1))
        x = self.level1(torch.cat([self.up(x), c1], dim=1))
        return self.head(x)


@register_encoder("mini", description="the tutorial's unet_mini: 3 levels (32/64/128), dropout 0.2, no BN",
                  channels=(32, 64, 128), reductions=(1, 2, 4), input_multiple=4, normalization=TUTORIAL,
                  origin="tutorial keras unet_mini")
def mini(num_classes: int, in_channels: int = 3) -> SegmentationModel:
    model = SegmentationModel(MiniEncoder(in_channels), MiniDecoder(num_classes), get_spec("mini"),
                              num_classes, in_channels)
    glorot_init_(model)
    return model
