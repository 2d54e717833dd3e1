"""A plugin author's kit: `check_encoder(name)` asserts what the rest of unet-zoo relies on.

    from zoo.testing import check_encoder

    def test_my_encoder():
        check_encoder("my-encoder")

Failures raise AssertionError naming the encoder and what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from . import _registry
from ._errors import InputSizeError, ZooError
from ._registry import check_features, create_model, get_spec


@contextmanager
def isolated_registry() -> Iterator[None]:
    """Encoders and families registered inside are forgotten on exit (tests that register throw-away ones)."""
    saved = [(d, dict(d)) for d in (_registry._ENCODERS, _registry._FAMILIES, _registry._RESOLVED)]
    try:
        yield
    finally:
        for registry, content in saved:
            registry.clear()
            registry.update(content)


def default_sizes(input_multiple: int) -> list[tuple[int, int]]:
    """A square and a non-square size, both multiples of `input_multiple` and at least 64 on a side."""
    side = -(-64 // input_multiple) * input_multiple
    return [(side, side), (side, side + input_multiple)]


def _check(condition: object, message: str) -> None:
    """Like assert, but not stripped by `python -O`."""
    if not condition:
        raise AssertionError(message)


def _first_conv(encoder: nn.Module, in_channels: int) -> nn.Conv2d:
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.in_channels == in_channels), None)
    _check(conv is not None, f"no Conv2d in the encoder takes {in_channels} input channels: the encoder must "
                             "honour in_channels")
    return conv


def check_encoder(name: str, *, num_classes: int = 3, in_channels: Sequence[int] = (1, 3),
                  sizes: Sequence[tuple[int, int]] | None = None, batch_size: int = 2, seed: int = 0) -> None:
    """Build `name` for every in_channels and check, on every size: logits N x num_classes x H x W, gradients
    reaching the first layer, features matching the declared channels and reductions, a deterministic eval
    mode, and InputSizeError for a size that is not a multiple of `input_multiple`."""
    spec = get_spec(name)
    sizes = list(sizes or default_sizes(spec.input_multiple))
    generator = torch.Generator().manual_seed(seed)
    for channels in in_channels:
        torch.manual_seed(seed)
        try:
            model = create_model(name, num_classes, in_channels=channels)
        except ZooError as err:  # create_model checks the declared features first: the kit reports the same
            raise AssertionError(str(err)) from None
        _check(model.spec.name == name, f"{name}: the model carries the spec of '{model.spec.name}'")
        _check((model.num_classes, model.in_channels) == (num_classes, channels),
               f"{name}: model reports num_classes={model.num_classes}, in_channels={model.in_channels}; "
               f"expected {num_classes}, {channels}")
        first = _first_conv(model.encoder, channels)
        for h, w in sizes:
            x = torch.randn(batch_size, channels, h, w, generator=generator)
            model.train()
            model.zero_grad(set_to_none=True)
            out = model(x)
            expected = (batch_size, num_classes, h, w)
            _check(tuple(out.shape) == expected,
                   f"{name}: input {tuple(x.shape)} gave logits {tuple(out.shape)}, expected {expected}")
            _check(torch.isfinite(out).all(), f"{name}: non-finite logits for input {h}x{w}")
            (out * torch.randn(out.shape, generator=generator)).sum().backward()
            grad = first.weight.grad
            _check(grad is not None and grad.abs().sum() > 0,
                   f"{name}: no gradient reaches the first layer (a Conv2d taking {channels} channels); is part "
                   "of the encoder detached or frozen?")
            model.eval()
            with torch.no_grad():
                try:
                    check_features(model, name, (h, w))
                except ZooError as err:
                    raise AssertionError(str(err)) from None
                _check(torch.equal(model(x), model(x)),
                       f"{name}: two eval-mode passes differ; dropout or noise must be off in eval mode")
        if spec.input_multiple > 1:
            h, w = sizes[0]
            try:
                model(torch.zeros(1, channels, h + 1, w))
            except InputSizeError:
                continue
            raise AssertionError(f"{name}: input {h + 1}x{w} is not a multiple of {spec.input_multiple} but no "
                                 "InputSizeError was raised")
