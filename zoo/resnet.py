"""`resnet50`: segmentation-models-pytorch's ResNet-50 encoder (torchvision layout) + the zoo's UNet decoder."""

from __future__ import annotations

from ._registry import register_encoder
from ._spec import IMAGENET
from .backbones import smp_unet
from .model import SegmentationModel


@register_encoder("resnet50", description="ResNet-50 encoder (segmentation-models-pytorch) + UNet decoder",
                  channels=(64, 256, 512, 1024, 2048), reductions=(2, 4, 8, 16, 32), normalization=IMAGENET,
                  origin="segmentation-models-pytorch resnet50", pretrained=("imagenet", "ssl", "swsl"))
def resnet50(num_classes: int, in_channels: int = 3, weights: str | None = None) -> SegmentationModel:
    return smp_unet("resnet50", "resnet50", num_classes, in_channels, weights)
