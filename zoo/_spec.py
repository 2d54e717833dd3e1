"""What the registry knows about an encoder without building it: feature layout, input rule, normalisation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

import torch

from ._errors import ZooError

if TYPE_CHECKING:
    from .model import SegmentationModel

T = TypeVar("T")

# timm.data.IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD, written out so that importing the zoo does not import timm.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std in 0..255 pixel units: the data pipeline computes (x - mean) / std, after clipping
    to [low, high] when they are given (a normalisation planned from a dataset's intensities)."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @property
    def clip(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return (self.low, self.high) if self.low is not None and self.high is not None else None

    def for_channels(self, n: int) -> Normalization:
        """The same normalisation for n input channels: grey images use the channel average, more channels repeat
        (the clip window too, when there is one)."""
        if n < 1:
            raise ZooError(f"in_channels must be at least 1, got {n}")

        def fit(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
            if values is None or len(values) == n:
                return values
            if n == 1:
                return (sum(values) / len(values),)
            return tuple(values[i % len(values)] for i in range(n))

        return replace(self, mean=fit(self.mean), std=fit(self.std), low=fit(self.low), high=fit(self.high))


TUTORIAL = Normalization("tutorial", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
"""x / 127.5 - 1, the Keras tutorial's preprocessing (and Keras MobileNet's)."""

IMAGENET = Normalization("imagenet", tuple(round(m * 255, 6) for m in _IMAGENET_MEAN),
                         tuple(round(s * 255, 6) for s in _IMAGENET_STD))
"""The ImageNet statistics torchvision, timm and segmentation-models-pytorch weights were trained with."""

Builder = Callable[..., "SegmentationModel"]


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder name: enough to list, validate inputs and normalise data without building it.

    `channels` and `reductions` describe the features the encoder returns, shallow to deep; an encoder may return
    extra leading features (segmentation-models-pytorch returns the input itself first): decoders use the last
    `len(channels)` of them.
    """

    name: str
    description: str
    source: str
    origin: str
    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    input_multiple: int
    normalization: Normalization
    pretrained: tuple[str, ...]
    builder: Builder = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.channels or len(self.channels) != len(self.reductions):
            raise ZooError(f"encoder '{self.name}': channels {self.channels} and reductions {self.reductions} "
                           "must be non-empty and of the same length")
        if list(self.reductions) != sorted(self.reductions) or self.reductions[0] < 1:
            raise ZooError(f"encoder '{self.name}': reductions {self.reductions} must be >= 1 and listed "
                           "shallow to deep (non-decreasing)")
        if self.input_multiple < 1:
            raise ZooError(f"encoder '{self.name}': input_multiple must be >= 1, got {self.input_multiple}")

    def params_at(self, num_classes: int = 2, in_channels: int = 3) -> int:
        """Trainable parameters of the whole model (BN running statistics are buffers and do not count)."""
        model = cheap_build(lambda: self.builder(num_classes, in_channels))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cheap_build(build: Callable[[], T]) -> T:
    """Build on the meta device (no memory, no initialisation); some models read tensor values while they are
    built (e.g. drop-path rates via .item()), and those are built on the CPU instead."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # retried for real: a true error surfaces there
        return build()

