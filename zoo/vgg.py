"""`vgg` (VGG16, the backbone of the tutorial's sequel) and `vgg16_bn`: segmentation-models-pytorch's VGG
encoders (torchvision layout) + the zoo's UNet decoder. VGG's first feature is at stride 1 (before the first
max-pool), so the decoder has a skip at full resolution."""

from __future__ import annotations

from ._registry import register_encoder
from ._spec import IMAGENET
from .backbones import smp_unet
from .model import SegmentationModel

_CHANNELS = (64, 128, 256, 512, 512, 512)
_REDUCTIONS = (1, 2, 4, 8, 16, 32)


@register_encoder("vgg", description="VGG16 encoder (segmentation-models-pytorch) + UNet decoder",
                  channels=_CHANNELS, reductions=_REDUCTIONS, normalization=IMAGENET,
                  origin="segmentation-models-pytorch vgg16", pretrained=("imagenet",))
def vgg(num_classes: int, in_channels: int = 3, weights: str | None = None) -> SegmentationModel:
    return smp_unet("vgg", "vgg16", num_classes, in_channels, weights)


@register_encoder("vgg16_bn", description="VGG16 with batch norm (segmentation-models-pytorch) + UNet decoder",
                  channels=_CHANNELS, reductions=_REDUCTIONS, normalization=IMAGENET,
                  origin="segmentation-models-pytorch vgg16_bn", pretrained=("imagenet",))
def vgg16_bn(num_classes: int, in_channels: int = 3, weights: str | None = None) -> SegmentationModel:
    return smp_unet("vgg16_bn", "vgg16_bn", num_classes, in_channels, weights)
