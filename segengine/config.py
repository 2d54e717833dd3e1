"""One typed training config for YAML files, CLI flags, Tune samples and worker functions.

The same `TrainConfig` travels CLI -> driver -> Tune param space -> TorchTrainer `train_loop_config` -> worker, and
is saved next to every run and inside every checkpoint manifest, so any result can be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCHEMA_VERSION = 1
LOSSES = ("ce", "dice", "focal", "ce+dice")
MODES = ("max", "min")


class ConfigError(ValueError):
    """A bad config key or value; printed as one line by the CLI."""

    user_error = True


@dataclass
class AugmentConfig:
    """The tutorial's training augmentation parameters (defaults as in the tutorial)."""

    jitter: float = 0.3
    scale: tuple[float, float] = (0.25, 2.0)
    flip: float = 0.5
    hue: float = 0.1
    sat: float = 1.5
    val: float = 1.5
    crop: bool = False


@dataclass
class TrainConfig:
    """Everything one training run needs; every field is a YAML key and most are CLI flags."""

    schema_version: int = SCHEMA_VERSION
    # model
    encoder: str = "mini"
    encoder_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    plugins: list[str] = field(default_factory=list)
    # data
    data: str | None = None
    input_size: tuple[int, int] = (128, 128)
    num_classes: int | None = None
    label_mode: str | None = None
    threshold: int | None = None
    ignore_index: int | None = None
    val_fraction: float = 0.2
    skip_bad: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # recipe
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-4
    lr_decay: float = 0.96
    weight_decay: float = 0.0
    class_weights: list[float] | None = None
    loss: str = "ce"
    freeze_epochs: int = 0
    metric: str = "val_miou"
    mode: str = "max"
    patience: int = 10
    seed: int = 0
    # resources
    workers: int = 1
    cpus_per_worker: int = 1
    loader_workers: int | None = None
    use_gpu: str = "auto"
    amp: bool = True
    channels_last: bool = True
    sync_bn: bool = False
    max_failures: int = 2
    resource_wait_s: float = 0.0  # > 0: on an autoscaling cluster, wait this long for resources, then refuse
    keep_checkpoints: int = 2
    # run
    storage: str = "runs"
    name: str | None = None
    address: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size)
        out["augment"]["scale"] = list(self.augment.scale)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
        return _build(cls, raw, where)


def _allowed(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def reject_unknown_keys(raw: Mapping[str, Any], allowed: list[str], where: str) -> None:
    """Name the first unknown key, the closest allowed one and the full list."""
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; allowed keys: {', '.join(allowed)}")


def _build(cls, raw: Mapping[str, Any], where: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(raw).__name__}")
    reject_unknown_keys(raw, _allowed(cls), where)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        values[f.name] = _coerce(f.name, raw[f.name], str(f.type), where)
    obj = cls(**values)
    _validate(obj, where)
    return obj


def _coerce(key: str, value: Any, type_name: str, where: str) -> Any:
    """Check a YAML/CLI value against the field's declared type; ints are accepted where floats are."""
    optional = "None" in type_name
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: '{key}' must not be empty")
    base = type_name.replace(" | None", "")
    if base == "AugmentConfig":
        return _build(AugmentConfig, value, f"{where}.{key}")
    checks = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "dict": lambda v: isinstance(v, Mapping),
    }
    if base in checks:
        if not checks[base](value):
            raise ConfigError(f"{where}: '{key}' must be {base}, got {value!r}")
        return float(value) if base == "float" else value
    if base.startswith("tuple[int, int]") or base.startswith("tuple[float, float]"):
        elem = int if "int" in base else float
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: '{key}' must be two numbers, got {value!r}")
        return tuple(elem(v) for v in value)
    if base.startswith("list["):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        if "float" in base:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{where}: '{key}' must be a list of numbers, got {value!r}")
            return [float(v) for v in value]
        return [str(v) for v in value]
    raise AssertionError(f"unhandled config type {type_name} for {key}")


def _validate(obj: Any, where: str) -> None:
    if isinstance(obj, AugmentConfig):
        lo, hi = obj.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"{where}: 'scale' must be two numbers 0 < low <= high, got {list(obj.scale)}")
        if not 0 <= obj.flip <= 1:
            raise ConfigError(f"{where}: 'flip' is a probability in [0, 1], got {obj.flip}")
        return
    c: TrainConfig = obj
    rules = [
        ("loss", c.loss in LOSSES, f"one of {', '.join(LOSSES)}"),
        ("mode", c.mode in MODES, "max or min"),
        ("use_gpu", c.use_gpu in ("auto", "yes", "no"), "auto, yes or no"),
        ("label_mode", c.label_mode in (None, "index", "threshold"), "index or threshold"),
        ("epochs", c.epochs >= 1, "an integer >= 1"),
        ("batch_size", c.batch_size >= 1, "an integer >= 1 (images per worker)"),
        ("lr", c.lr > 0, "a number > 0"),
        ("lr_decay", 0 < c.lr_decay <= 1, "a number in (0, 1]"),
        ("workers", c.workers >= 0, "an integer >= 0 (0 = in-process debug mode)"),
        ("cpus_per_worker", c.cpus_per_worker >= 1, "an integer >= 1"),
        ("freeze_epochs", c.freeze_epochs >= 0, "an integer >= 0"),
        ("patience", c.patience >= 1, "an integer >= 1"),
        ("val_fraction", 0 < c.val_fraction < 1, "a number in (0, 1)"),
        ("keep_checkpoints", c.keep_checkpoints >= 1, "an integer >= 1"),
        ("max_failures", c.max_failures >= -1, "an integer >= -1 (-1 = retry forever)"),
        ("resource_wait_s", c.resource_wait_s >= 0, "seconds >= 0"),
        ("input_size", all(s >= 8 for s in c.input_size), "two integers >= 8 (H W)"),
        ("schema_version", c.schema_version == SCHEMA_VERSION, f"{SCHEMA_VERSION} (this release's schema)"),
    ]
    for key, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{where}: bad value for '{key}': {getattr(c, key)!r}; allowed: {allowed}")
    if c.class_weights is not None and any(w < 0 for w in c.class_weights):
        raise ConfigError(f"{where}: 'class_weights' must be >= 0, got {c.class_weights}")
    if c.loader_workers is not None and c.loader_workers < 0:
        raise ConfigError(f"{where}: 'loader_workers' must be >= 0, got {c.loader_workers}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"{p}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of keys to values")
    return raw


# CLI flag (argparse dest) -> config key; flags left at None do not override the file.
FLAG_KEYS = {
    "encoder": "encoder", "data": "data", "input_size": "input_size", "batch_size": "batch_size",
    "epochs": "epochs", "lr": "lr", "lr_decay": "lr_decay", "class_weights": "class_weights", "loss": "loss",
    "freeze_epochs": "freeze_epochs", "metric": "metric", "mode": "mode", "seed": "seed", "workers": "workers",
    "skip_bad": "skip_bad", "wait_for_resources": "resource_wait_s", "storage": "storage", "name": "name",
    "address": "address",
}


def flag_overrides(args: Any) -> dict[str, Any]:
    """The config keys that CLI flags set explicitly (plugins are appended, not replaced)."""
    out = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items()
           if getattr(args, dest, None) is not None}
    if "input_size" in out:
        out["input_size"] = list(out["input_size"])
    return out


def merge_plugins(file_plugins: list[str], flag_plugins: list[str] | None) -> list[str]:
    return list(dict.fromkeys([*file_plugins, *(flag_plugins or [])]))


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ, dotted for nested mappings."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += diff_configs(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys
