"""A library encoder wrapped the way a plugin author would: `example-resnet10t`, timm's ResNet-10-T behind the
zoo's UNet decoder, with its channels and reductions read from timm's `feature_info` instead of hard-coded.

Registered as a one-name family so that nothing imports timm until the encoder is used (autoload of every
installed plugin stays cheap): `resolve` measures the features on the meta device (no memory, no weights).
"""

from __future__ import annotations

import functools

from zoo import IMAGENET, EncoderSpec, register_family
from zoo.backbones import cheap_build, timm_unet

NAME, ARCH = "example-resnet10t", "resnet10t"


def _resolve(name: str) -> EncoderSpec:
    if name != NAME:
        raise KeyError(name)
    import timm

    info = cheap_build(lambda: timm.create_model(ARCH, features_only=True, pretrained=False)).feature_info
    reductions = tuple(info.reduction())
    return EncoderSpec(name=NAME, description="timm resnet10t features + UNet decoder (example plugin)",
                       source="example", origin=f"timm {ARCH}", channels=tuple(info.channels()),
                       reductions=reductions, input_multiple=max(reductions), normalization=IMAGENET,
                       pretrained=("imagenet",), builder=functools.partial(timm_unet, NAME, ARCH))


register_family("example-resnet10t", list_names=lambda: [NAME], resolve=_resolve, featured=[NAME],
                source="example")
