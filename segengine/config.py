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
SAMPLINGS = ("letterbox", "patch")
VALIDATIONS = ("letterbox", "sliding")
SCHEDULES = ("exponential", "cosine", "poly")
OPTIMIZERS = ("adam", "adamw", "sgd")
# Top-level keys of a search file (tune_configs/*.yaml); `train --config` uses its `train:` section.
SEARCH_FILE_KEYS = ("train", "search", "class_weights", "scheduler", "searcher", "samples", "resources",
                    "max_concurrent")


class ConfigError(ValueError):
    """A bad config key or value; printed as one line by the CLI."""

    user_error = True


@dataclass
class AugmentConfig:
    """Training augmentation. Letterbox sampling uses the tutorial's keys (defaults as in the tutorial): jitter,
    scale, flip, hue, sat, val, crop. Patch sampling uses zoom, flip, vflip, rot90, the elastic deformation of the
    U-Net paper, intensity changes, noise, blur and hue/sat/val (which do nothing on grey images)."""

    jitter: float = 0.3
    scale: tuple[float, float] = (0.25, 2.0)
    flip: float = 0.5
    hue: float = 0.1
    sat: float = 1.5
    val: float = 1.5
    crop: bool = False
    # patch sampling only
    zoom: tuple[float, float] = (1.0, 1.0)
    vflip: float = 0.0
    rot90: bool = False
    elastic: float = 0.0
    elastic_grid: int = 3
    elastic_std: float = 10.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    noise: float = 0.0
    noise_std: float = 8.0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)


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
    input_size: tuple[int, int] = (128, 128)  # the network input: letterbox size, or the patch (crop) size
    sampling: str = "letterbox"  # letterbox: whole images resized (the tutorial); patch: crops at native size
    samples_per_epoch: int | None = None  # patch sampling: crops per epoch over all workers (None: dataset size)
    class_aware: float = 0.0  # patch sampling: probability that a crop is centred on a pixel of a random class
    validation: str = "letterbox"  # letterbox at input_size, or sliding windows at native resolution
    val_window: tuple[int, int] | None = None  # sliding validation window (None: input_size)
    val_overlap: float = 0.25
    val_every: int = 1  # validate every K epochs (and always at the last one)
    num_classes: int | None = None
    label_mode: str | None = None
    threshold: int | None = None
    ignore_index: int | None = None
    val_fraction: float = 0.2
    train_split: str = "train"  # a split name or a file listing names (e.g. a held-out part of train)
    val_split: str = "val"
    skip_bad: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # recipe
    epochs: int = 20
    batch_size: int = 4
    optimizer: str = "adam"
    lr: float = 1e-4
    schedule: str = "exponential"  # exponential: lr * lr_decay^epoch (the tutorial); cosine / poly: per step
    lr_decay: float = 0.96
    poly_power: float = 0.9
    warmup_steps: int = 0  # linear warm-up from 0 over the first steps
    min_lr_ratio: float = 0.0  # cosine / poly end at lr * min_lr_ratio
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    bn_momentum: float | None = 0.1  # PyTorch's; null keeps the model's own (Keras' 0.01 in the ports)
    class_weights: list[float] | None = None
    class_weight_exponent: float | None = None  # weights ~ class frequency^-a from the training labels
    loss: str = "ce"
    freeze_epochs: int = 0
    metric: str = "val_miou"
    mode: str = "max"
    patience: int = 10
    min_steps: int = 500  # early stopping cannot fire before this many optimizer steps
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
        if self.val_window is not None:
            out["val_window"] = list(self.val_window)
        for key in ("scale", "zoom", "gamma", "blur_sigma"):
            out["augment"][key] = list(getattr(self.augment, key))
        return out

    @property
    def window(self) -> tuple[int, int]:
        """The sliding-validation window."""
        return self.val_window or self.input_size

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
        if "int" in base and isinstance(value, (list, tuple)) and any(
                isinstance(v, float) and not v.is_integer() for v in value):
            raise ConfigError(f"{where}: '{key}' must be two integers, got {value!r}")
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
        for key in ("scale", "zoom", "gamma", "blur_sigma"):
            lo, hi = getattr(obj, key)
            if not 0 < lo <= hi:
                raise ConfigError(f"{where}: '{key}' must be two numbers 0 < low <= high, got "
                                  f"{list(getattr(obj, key))}")
        for key in ("flip", "vflip", "elastic", "noise", "blur"):
            if not 0 <= getattr(obj, key) <= 1:
                raise ConfigError(f"{where}: '{key}' is a probability in [0, 1], got {getattr(obj, key)}")
        for key in ("brightness", "contrast"):
            if not 0 <= getattr(obj, key) < 1:
                raise ConfigError(f"{where}: '{key}' is a fraction in [0, 1), got {getattr(obj, key)}")
        if obj.elastic_grid < 2 or obj.elastic_std < 0 or obj.noise_std < 0:
            raise ConfigError(f"{where}: elastic_grid must be >= 2, elastic_std and noise_std >= 0")
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
        ("sampling", c.sampling in SAMPLINGS, " or ".join(SAMPLINGS)),
        ("validation", c.validation in VALIDATIONS, " or ".join(VALIDATIONS)),
        ("schedule", c.schedule in SCHEDULES, ", ".join(SCHEDULES)),
        ("optimizer", c.optimizer in OPTIMIZERS, ", ".join(OPTIMIZERS)),
        ("samples_per_epoch", c.samples_per_epoch is None or c.samples_per_epoch >= 1, "an integer >= 1"),
        ("class_aware", 0 <= c.class_aware <= 1, "a probability in [0, 1]"),
        ("val_overlap", 0 <= c.val_overlap < 1, "a fraction from 0 to below 1"),
        ("val_every", c.val_every >= 1, "an integer >= 1"),
        ("val_window", c.val_window is None or all(s >= 8 for s in c.val_window), "two integers >= 8 (H W)"),
        ("warmup_steps", c.warmup_steps >= 0, "an integer >= 0"),
        ("min_steps", c.min_steps >= 0, "an integer >= 0"),
        ("min_lr_ratio", 0 <= c.min_lr_ratio <= 1, "a number in [0, 1]"),
        ("poly_power", c.poly_power > 0, "a number > 0"),
        ("bn_momentum", c.bn_momentum is None or 0 < c.bn_momentum <= 1, "a number in (0, 1], or null"),
        ("weight_decay", c.weight_decay >= 0, "a number >= 0"),
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
    if c.class_weights is not None and c.class_weight_exponent is not None:
        raise ConfigError(f"{where}: give class_weights or class_weight_exponent, not both")
    if c.class_weight_exponent is not None and not 0 <= c.class_weight_exponent <= 2:
        raise ConfigError(f"{where}: 'class_weight_exponent' must be in [0, 2], got {c.class_weight_exponent}")
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
    "sampling": "sampling", "samples_per_epoch": "samples_per_epoch", "validation": "validation",
    "val_every": "val_every", "schedule": "schedule", "optimizer": "optimizer", "warmup_steps": "warmup_steps",
    "bn_momentum": "bn_momentum", "min_steps": "min_steps", "patience": "patience",
    "train_split": "train_split", "val_split": "val_split",
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
