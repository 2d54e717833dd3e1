"""The one model type every encoder builds: encoder features in, per-pixel logits out at the input size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._errors import InputSizeError
from ._spec import EncoderSpec


class SegmentationModel(nn.Module):
    """`encoder` maps N x C x H x W to features shallow to deep; `decoder` (with the classifier) maps them to
    N x num_classes x H x W. The split is what the engine freezes during freeze epochs."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, spec: EncoderSpec, num_classes: int,
                 in_channels: int, model_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.spec = spec
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.model_kwargs = dict(model_kwargs or {})  # what create_model needs besides name/classes/channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.decoder(self.encoder(x))

    def check_input(self, x: torch.Tensor) -> None:
        """Fail with a message a user can act on, not with a shape mismatch deep inside a concatenation."""
        name = self.spec.name
        if x.dim() != 4:
            raise InputSizeError(f"encoder '{name}' expects a 4-D N x C x H x W tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputSizeError(f"input has {x.shape[1]} channels but the '{name}' model was built with "
                                 f"in_channels={self.in_channels}; set in_channels to match the images")
        h, w = int(x.shape[2]), int(x.shape[3])
        m = self.spec.input_multiple
        if h % m or w % m:
            down = [max(m, s // m * m) for s in (h, w)]
            up = [-(-s // m) * m for s in (h, w)]
            raise InputSizeError(f"input {h}x{w} is not a multiple of {m} for encoder '{name}'; use e.g. "
                                 f"--input-size {down[0]} {down[1]} or {up[0]} {up[1]}")

    def extra_repr(self) -> str:
        return f"encoder={self.spec.name!r}, num_classes={self.num_classes}, in_channels={self.in_channels}"
