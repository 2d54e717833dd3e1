"""Family `timm-<model>`: any timm model that supports features_only, with the zoo's UNet decoder.

Lazy: importing this registers a prefix; timm's ~1,300 names are listed only for patterns such as 'timm-res*',
and a name is resolved (its features measured on the meta device, no memory or weights) only when used.
"""

from __future__ import annotations

import functools

from zoo import IMAGENET, TUTORIAL, EncoderSpec, Normalization, register_family
from zoo.backbones import cheap_build, timm_unet

PREFIX = "timm-"
FEATURED = ("timm-efficientnet_b0", "timm-mobilenetv3_large_100", "timm-resnet18")


def _list_names() -> list[str]:
    import timm

    return [PREFIX + arch for arch in timm.list_models()]


def _normalization(arch: str) -> Normalization:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return IMAGENET
    norm = Normalization("timm", tuple(round(m * 255, 6) for m in cfg.mean),
                         tuple(round(s * 255, 6) for s in cfg.std))
    return next((known for known in (IMAGENET, TUTORIAL) if (known.mean, known.std) == (norm.mean, norm.std)), norm)


def _resolve(name: str) -> EncoderSpec:
    import timm

    arch = name[len(PREFIX):]
    if not timm.is_model(arch):
        raise KeyError(name)
    info = cheap_build(lambda: timm.create_model(arch, features_only=True, pretrained=False)).feature_info
    reductions = tuple(info.reduction())
    return EncoderSpec(name=name, description=f"timm {arch} features + UNet decoder", source="timm",
                       origin=f"timm {arch}", channels=tuple(info.channels()), reductions=reductions,
                       input_multiple=max(reductions), normalization=_normalization(arch),
                       pretrained=("imagenet",) if timm.is_model_pretrained(arch) else (),
                       builder=functools.partial(timm_unet, name, arch))


register_family(PREFIX, list_names=_list_names, resolve=_resolve, featured=FEATURED, source="timm")
