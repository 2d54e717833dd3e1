"""Encoder names -> specs: single registrations, and lazy plugin families (`timm-*`, `smp-*`) that resolve a
name only when it is asked for, so that importing the zoo never enumerates or builds thousands of models."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import UnknownEncoderError, ZooError, one_line
from ._spec import TUTORIAL, Builder, EncoderSpec, Normalization
from .model import SegmentationModel
from .weights import WEIGHT_SUFFIXES, load_weights

LIST_HINT = "list them with: python launch.py encoders"
_WILDCARDS = frozenset("*?[")


@dataclass(frozen=True)
class _Family:
    prefix: str
    list_names: Callable[[], list[str]]
    resolve: Callable[[str], EncoderSpec]
    featured: tuple[str, ...]
    source: str


_ENCODERS: dict[str, EncoderSpec] = {}
_FAMILIES: dict[str, _Family] = {}
_RESOLVED: dict[str, EncoderSpec] = {}
_current_source: str | None = None


@contextmanager
def registering_as(source: str) -> Iterator[None]:
    """Attribute the registrations made inside to `source`: the plugin loader wraps each plugin import in it."""
    global _current_source
    previous, _current_source = _current_source, source
    try:
        yield
    finally:
        _current_source = previous


def _default_source(builder: Callable[..., Any]) -> str:
    if _current_source is not None:
        return _current_source
    package = (getattr(builder, "__module__", None) or "").split(".")[0]
    return "built-in" if package == "zoo" else package or "unknown"


def _check_name(name: str, what: str) -> None:
    if not name or any(c.isspace() or c in _WILDCARDS for c in name):
        raise ZooError(f"invalid {what} {name!r}: use a non-empty name without spaces or wildcards")


def register_encoder(name: str, *, description: str, channels: Sequence[int], reductions: Sequence[int],
                     input_multiple: int = 32, normalization: Normalization = TUTORIAL, origin: str = "",
                     pretrained: Sequence[str] = (), source: str | None = None
                     ) -> Callable[[Builder], Builder]:
    """Register `builder(num_classes, in_channels, **kwargs) -> SegmentationModel` under `name`.

    The builder receives `weights=TAG` only for a tag listed in `pretrained`; local weight files are loaded by
    `create_model` after the builder returns.
    """
    _check_name(name, "encoder name")

    def decorate(builder: Builder) -> Builder:
        spec = EncoderSpec(name=name, description=description, source=source or _default_source(builder),
                           origin=origin, channels=tuple(channels), reductions=tuple(reductions),
                           input_multiple=input_multiple, normalization=normalization,
                           pretrained=tuple(pretrained), builder=builder)
        old = _ENCODERS.get(name)
        if old is not None and old.source != spec.source:
            raise ZooError(f"encoder '{name}' from {spec.source} clashes with the one from {old.source}; "
                           "rename one of them")
        _ENCODERS[name] = spec
        return builder

    return decorate


def register_family(prefix: str, *, list_names: Callable[[], list[str]], resolve: Callable[[str], EncoderSpec],
                    featured: Sequence[str], source: str) -> None:
    """Register every name starting with `prefix`, resolved lazily.

    `list_names()` is called only for patterns that start with the prefix; `resolve(name)` only when a name is
    used, and raises LookupError (KeyError, UnknownEncoderError) for names it does not know. `featured` names are
    shown in the default listing.
    """
    _check_name(prefix, "family prefix")
    featured = tuple(featured)
    stray = [n for n in featured if not n.startswith(prefix)]
    if stray:
        raise ZooError(f"featured names {stray} of family '{prefix}*' do not start with '{prefix}'")
    old = _FAMILIES.get(prefix)
    if old is not None and old.source != source:
        raise ZooError(f"encoder family '{prefix}*' from {source} clashes with the one from {old.source}")
    _FAMILIES[prefix] = _Family(prefix, list_names, resolve, featured, source)
    for name in [n for n in _RESOLVED if n.startswith(prefix)]:
        del _RESOLVED[name]


def _family_of(name: str) -> _Family | None:
    matches = [f for p, f in _FAMILIES.items() if name.startswith(p)]
    return max(matches, key=lambda f: len(f.prefix), default=None)


def family_source(name: str) -> str | None:
    """The source of the family a name belongs to, without resolving the name."""
    family = _family_of(name)
    return family.source if family else None


def is_featured(name: str) -> bool:
    return name in _ENCODERS or any(name in f.featured for f in _FAMILIES.values())


def family_prefixes() -> list[str]:
    return sorted(_FAMILIES)


def has_wildcards(pattern: str) -> bool:
    return not _WILDCARDS.isdisjoint(pattern)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered names matching a wildcard pattern; a pattern starting with a family prefix lists that family
    in full, any other pattern sees only the family's featured names."""
    names = set(_ENCODERS)
    for family in _FAMILIES.values():
        names.update(family.list_names() if pattern.startswith(family.prefix) else family.featured)
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def _unknown(name: str, family: _Family | None) -> UnknownEncoderError:
    candidates = set(list_encoders("*")) | set(family.list_names() if family else ())
    close = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)
    hint = f"{LIST_HINT} '{family.prefix}*'" if family else LIST_HINT
    if close:
        return UnknownEncoderError(f"unknown encoder '{name}'; did you mean: {', '.join(close)}? ({hint})")
    return UnknownEncoderError(f"unknown encoder '{name}' ({hint})")


def get_spec(name: str) -> EncoderSpec:
    """The spec of a registered name; family names are resolved on first use and cached."""
    spec = _ENCODERS.get(name) or _RESOLVED.get(name)
    if spec is not None:
        return spec
    family = _family_of(name)
    if family is None:
        raise _unknown(name, None)
    try:
        spec = family.resolve(name)
    except LookupError:
        raise _unknown(name, family) from None
    except ZooError:
        raise
    except Exception as err:
        raise ZooError(f"encoder '{name}' ({family.source} plugin) cannot be used: {one_line(err)}") from err
    _RESOLVED[name] = spec
    return spec


def _is_weights_path(weights: str | os.PathLike[str]) -> bool:
    return isinstance(weights, os.PathLike) or Path(weights).suffix.lower() in WEIGHT_SUFFIXES


def create_model(name: str, num_classes: int, in_channels: int = 3, weights: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> SegmentationModel:
    """Build encoder `name` with a UNet decoder for `num_classes`.

    weights: None (random initialisation), a pretrained tag of the spec such as "imagenet" (downloaded by the
    library that provides the encoder), or a local .pt/.pth/.safetensors state dict of the encoder or the whole
    model (.h5 Keras weights for mobilenet). `kwargs` go to the builder (e.g. alpha for mobilenet).
    """
    spec = get_spec(name)
    if num_classes < 1 or in_channels < 1:
        raise ZooError(f"num_classes and in_channels must be at least 1, got {num_classes} and {in_channels}")
    try:
        inspect.signature(spec.builder).bind(num_classes, in_channels, **kwargs)
    except TypeError as err:
        raise ZooError(f"encoder '{name}' does not accept these options: {err}") from None
    if weights is None or _is_weights_path(weights):
        model = spec.builder(num_classes, in_channels, **kwargs)
    elif weights in spec.pretrained:
        try:
            model = spec.builder(num_classes, in_channels, weights=weights, **kwargs)
        except ZooError:
            raise
        except Exception as err:
            raise ZooError(f"could not load the '{weights}' weights of encoder '{name}' ({one_line(err)}); they "
                           f"are downloaded on first use from {spec.origin or spec.source}, which needs internet "
                           "access: download them elsewhere and pass weights=PATH") from err
    else:
        raise ZooError(f"encoder '{name}' has no pretrained weights {str(weights)!r} (available: "
                       f"{', '.join(spec.pretrained) or 'none'}); use weights=None for random initialisation or "
                       f"a local file ({', '.join(sorted(WEIGHT_SUFFIXES))})")
    if not isinstance(model, SegmentationModel):
        raise ZooError(f"the builder of encoder '{name}' ({spec.source}) returned {type(model).__name__}, "
                       "not a zoo.SegmentationModel")
    check_features(model, name)
    if weights is not None and _is_weights_path(weights):
        load_weights(model, weights)
    return model


def declared_features(model: SegmentationModel) -> list[tuple[int, int]]:
    """(channels, reduction) per feature the decoder expects: the encoder's own `out_channels` where it has them
    (builder options such as a width change them; smp lists the input first), else the spec's."""
    spec = model.spec
    channels = tuple(getattr(model.encoder, "out_channels", None) or spec.channels)[-len(spec.channels):]
    return list(zip((int(c) for c in channels), spec.reductions, strict=True))


def check_features(model: SegmentationModel, name: str, size: tuple[int, int] | None = None) -> None:
    """Run the encoder alone on a small input and compare its features with what it declares, so a wrong
    declaration is named here instead of surfacing as a shape error deep in the decoder."""
    import torch

    spec = model.spec
    side = max(32, 2 * spec.input_multiple)
    h, w = size or (side, side)
    declared = [(c, r, r) for c, r in declared_features(model)]
    was_training = model.training
    model.eval()  # one small image: BatchNorm must use its running statistics
    try:
        with torch.no_grad():
            features = list(model.encoder(torch.zeros(1, model.in_channels, h, w)))[-len(declared):]
    except Exception as err:
        raise ZooError(f"encoder '{name}' ({spec.source or spec.origin or 'registered here'}) fails on a "
                       f"{h}x{w} input of {model.in_channels} channel(s): {one_line(err)}") from err
    finally:
        model.train(was_training)
    got = [(int(f.shape[1]), h // int(f.shape[2]), w // int(f.shape[3])) for f in features]
    if got != declared:
        raise ZooError(f"encoder '{name}': at {h}x{w} its features are (channels, reduction H, reduction W) {got}, "
                       f"but it declares {declared}; fix channels/reductions in register_encoder"
                       f"{f' ({spec.source})' if spec.source else ''}")
