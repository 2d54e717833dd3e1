"""Library encoders (segmentation-models-pytorch, timm) behind the zoo's UNet decoder.

The libraries are imported when a model is built, not when the zoo is imported. `weights` is a pretrained tag
and goes through the library's own download path (Hugging Face Hub); local files are loaded by create_model.
"""

from __future__ import annotations

from typing import Any

from ._registry import get_spec
from ._spec import cheap_build
from .decoder import UNetDecoder
from .model import SegmentationModel

__all__ = ["cheap_build", "smp_unet", "timm_unet"]


def smp_unet(name: str, smp_name: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
             **kwargs: Any) -> SegmentationModel:
    """Encoder `smp_name` of segmentation-models-pytorch (state-dict keys as torchvision's for ResNet/VGG) as
    zoo encoder `name`. smp adapts the first conv itself when pretrained weights meet in_channels != 3."""
    from segmentation_models_pytorch.encoders import get_encoder

    spec = get_spec(name)
    encoder = get_encoder(smp_name, in_channels=in_channels, weights=weights, **kwargs)
    return SegmentationModel(encoder, UNetDecoder(spec.channels, spec.reductions, num_classes), spec,
                             num_classes, in_channels, kwargs)


def timm_unet(name: str, arch: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
              **kwargs: Any) -> SegmentationModel:
    """timm model `arch` with features_only=True as zoo encoder `name`; weights="imagenet" is timm's default
    pretrained tag, and timm adapts the first conv to in_channels."""
    import timm

    spec = get_spec(name)
    encoder = timm.create_model(arch, features_only=True, pretrained=weights is not None, in_chans=in_channels,
                                **kwargs)
    return SegmentationModel(encoder, UNetDecoder(spec.channels, spec.reductions, num_classes), spec,
                             num_classes, in_channels, kwargs)
