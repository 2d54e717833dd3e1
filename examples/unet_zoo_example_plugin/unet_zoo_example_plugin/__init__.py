"""Third-party encoders for unet-zoo: `example-tiny`, three strided conv stages behind the zoo's generic UNet
decoder, and `example-resnet10t`, a timm model wrapped with its channels read from timm (`timm_wrapper.py`).

Installed, it is found through the entry point in pyproject.toml (`python launch.py encoders example*`);
without installing, `--plugin unet_zoo_example_plugin` (module on PYTHONPATH) or `--plugin path/to/file.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo import SegmentationModel, UNetDecoder, get_spec, register_encoder

from . import timm_wrapper  # noqa: F401  (registers example-resnet10t, a timm encoder, lazily)

CHANNELS = (8, 16, 32)
REDUCTIONS = (2, 4, 8)


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class TinyEncoder(nn.Module):
    """Returns its features shallow to deep, as the decoder expects (strides 2, 4, 8)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        widths = (in_channels, *CHANNELS)
        self.stages = nn.ModuleList(_stage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


@register_encoder("example-tiny", description="three strided convs (8/16/32 channels): the example plugin",
                  channels=CHANNELS, reductions=REDUCTIONS, input_multiple=8,
                  origin="examples/unet_zoo_example_plugin")
def example_tiny(num_classes: int, in_channels: int = 3) -> SegmentationModel:
    return SegmentationModel(TinyEncoder(in_channels), UNetDecoder(CHANNELS, REDUCTIONS, num_classes),
                             get_spec("example-tiny"), num_classes, in_channels)
