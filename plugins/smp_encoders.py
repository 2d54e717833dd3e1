"""Family `smp-<encoder>`: any segmentation-models-pytorch encoder, with the zoo's UNet decoder.

Lazy: importing this registers a prefix; smp's encoder table is read only when a pattern or name asks for it.
Channels come from smp's table without building anything; smp returns features at strides 1, 2, ..., 32, the
first being the input itself for every encoder but VGG (declared 3 channels), which the zoo's decoder skips.
"""

from __future__ import annotations

import functools

from zoo import IMAGENET, EncoderSpec, register_family
from zoo.backbones import smp_unet

PREFIX = "smp-"
FEATURED = ("smp-efficientnet-b0", "smp-mobilenet_v2", "smp-resnet18")


def _encoders() -> dict:
    from segmentation_models_pytorch.encoders import encoders

    return encoders


def _list_names() -> list[str]:
    return [PREFIX + n for n in _encoders()]


def _resolve(name: str) -> EncoderSpec:
    smp_name = name[len(PREFIX):]
    entry = _encoders()[smp_name]  # KeyError: unknown name
    channels = tuple(entry["params"]["out_channels"])
    reductions = tuple(2**i for i in range(len(channels)))
    if channels[0] == 3:  # the input itself, not a feature
        channels, reductions = channels[1:], reductions[1:]
    return EncoderSpec(name=name, description=f"segmentation-models-pytorch {smp_name} encoder + UNet decoder",
                       source="smp", origin=f"segmentation-models-pytorch {smp_name}", channels=channels,
                       reductions=reductions, input_multiple=reductions[-1], normalization=IMAGENET,
                       pretrained=tuple(entry["pretrained_settings"]), builder=functools.partial(smp_unet, name,
                                                                                                 smp_name))


register_family(PREFIX, list_names=_list_names, resolve=_resolve, featured=FEATURED, source="smp")
