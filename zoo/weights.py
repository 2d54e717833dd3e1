"""Local weight files: state dicts of the encoder or the whole model, Keras .h5 files for the Keras ports.

Files are read as data only (safetensors, or torch.load with weights_only=True): a weights file never runs code.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._errors import ZooError

if TYPE_CHECKING:
    from .model import SegmentationModel

WEIGHT_SUFFIXES = frozenset({".pt", ".pth", ".safetensors", ".h5"})
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class WeightsWarning(UserWarning):
    """A weights file loaded only in part (missing, unexpected or mis-shaped tensors)."""


@dataclass
class LoadReport:
    """What a weights file did to a model; `str()` is a one-line summary."""

    path: str
    target: str  # "model" or "encoder": what the file's keys belong to
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # first convolutions adapted to the model's in_channels
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"{Path(self.path).name}: loaded {len(self.loaded)} tensors into the {self.target}"]
        for label, keys in (("adapted to the input channels", self.adapted), ("missing", self.missing),
                            ("unexpected", self.unexpected), ("shape mismatch", self.mismatched)):
            if keys:
                parts.append(f"{label}: {_few(keys)}")
        return "; ".join(parts)


def _few(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Kernels trained on RGB for `in_channels` inputs: summed for one channel, otherwise repeated and rescaled
    by 3 / in_channels, so that a grey image (equal channels) gives the response the RGB kernels gave."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = [i % weight.shape[1] for i in range(in_channels)]
    return weight[:, index] * (weight.shape[1] / in_channels)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a .pt/.pth/.safetensors file, unwrapping {"state_dict": ...}-style checkpoints and DDP's
    "module." prefix."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ZooError(f"cannot read {path} as a plain state dict ({type(err).__name__}); save "
                           "model.state_dict() (tensors only) or use .safetensors") from err
        while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not state:
        raise ZooError(f"{path} holds no state dict (a mapping of names to tensors)")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: SegmentationModel, path: str | os.PathLike[str]) -> LoadReport:
    """Load a local weights file into `model` and report what matched.

    The file may hold the whole model (keys "encoder.*", "decoder.*") or the encoder alone (e.g. torchvision's
    resnet50 file for `resnet50`); whichever matches more keys wins. 3-channel first convolutions are adapted
    to the model's in_channels; tensors of another shape (e.g. a head for other classes) are skipped and
    reported. Anything not loaded gives a WeightsWarning.
    """
    path = Path(path)
    name = model.spec.name
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ZooError(f"unsupported weights file {path}: use one of {', '.join(sorted(WEIGHT_SUFFIXES))}")
    if path.suffix.lower() == ".h5":
        keras_state_dict = getattr(model.encoder, "keras_state_dict", None)
        if keras_state_dict is None:
            raise ZooError(f"encoder '{name}' cannot read Keras .h5 weights (only the Keras ports, e.g. "
                           "mobilenet, can); use a .pt/.pth/.safetensors state dict")
        if not path.is_file():
            raise ZooError(f"weights file not found: {path}")
        state = keras_state_dict(path)
    else:
        state = read_state_dict(path)

    whole, encoder = model.state_dict(), model.encoder.state_dict()
    if len(state.keys() & whole.keys()) >= len(state.keys() & encoder.keys()):
        target, reference, module = "model", whole, model
    else:
        target, reference, module = "encoder", encoder, model.encoder
    report = LoadReport(str(path), target)
    chosen: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        want = reference.get(key)
        if want is None:
            report.unexpected.append(key)
        elif tensor.shape == want.shape:
            chosen[key] = tensor
        elif (tensor.dim() == 4 and tensor.shape[1] == 3 and want.shape[1] == model.in_channels
              and tensor.shape[0] == want.shape[0] and tensor.shape[2:] == want.shape[2:]):
            chosen[key] = adapt_input_conv(tensor, model.in_channels)
            report.adapted.append(key)
        else:
            report.mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(want.shape)}")
    if not chosen:
        raise ZooError(f"no tensor in {path} fits encoder '{name}' (its keys start like "
                       f"{_few(sorted(state), 3)}); expected a state dict of this encoder or of the whole model")
    module.load_state_dict(chosen, strict=False)
    report.loaded = sorted(chosen)
    mismatched = {m.split(" ")[0] for m in report.mismatched}
    report.missing = [k for k in reference
                      if k not in chosen and k not in mismatched and not k.endswith("num_batches_tracked")]
    if not report.complete:
        warnings.warn(str(report), WeightsWarning, stacklevel=2)
    return report
