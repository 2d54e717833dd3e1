"""The model zoo: encoders by name, each turned into a UNet that maps N x C x H x W to N x classes x H x W.

Built-ins (`mini`, `mobilenet`, `unet`, `resnet50`, `vgg`, `vgg16_bn`) register when the zoo is imported; plugins
(see the `plugins` package) add single encoders or lazy families such as `timm-*` and `smp-*`.
"""

from . import mini, mobilenet, resnet, unet, vgg  # noqa: F401  (importing them registers the built-ins)
from ._errors import InputSizeError, UnknownEncoderError, ZooError
from ._registry import create_model, get_spec, list_encoders, register_encoder, register_family
from ._spec import IMAGENET, TUTORIAL, EncoderSpec, Normalization
from ._table import encoder_table
from .decoder import UNetDecoder
from .model import SegmentationModel
from .weights import LoadReport, load_weights

__all__ = [
    "IMAGENET",
    "TUTORIAL",
    "EncoderSpec",
    "InputSizeError",
    "LoadReport",
    "Normalization",
    "SegmentationModel",
    "UNetDecoder",
    "UnknownEncoderError",
    "ZooError",
    "create_model",
    "encoder_table",
    "get_spec",
    "list_encoders",
    "load_weights",
    "register_encoder",
    "register_family",
]
