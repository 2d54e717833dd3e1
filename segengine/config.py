"""One typed training config for YAML files, CLI flags, Tune samples and worker functions.

The same `TrainConfig` travels CLI -> driver -> Tune param space -> TorchTrainer `train_loop_config` -> worker, and
is saved next to every run and inside every checkpoint manifest, so any result can be reproduced. The schema is a
pydantic v2 dataclass in strict mode (96.7 for a pixel size, "1e-3" for a learning rate or a mapping in a list of
names is refused naming the key); a field declared with `flag(...)` is also a CLI flag of `train` and `tune`, its
help and default taken from here (`cli_flags`), so a new flag is declared once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from pydantic.dataclasses import dataclass

STRICT = ConfigDict(strict=True, extra="forbid")
# YAML gives lists where the schema keeps pairs: the container is converted, its numbers stay strict.
IntPair = Annotated[tuple[StrictInt, StrictInt], Field(strict=False)]
FloatPair = Annotated[tuple[StrictFloat, StrictFloat], Field(strict=False)]

SCHEMA_VERSION = 1
LOSSES = ("ce", "dice", "focal", "ce+dice")
MODES = ("max", "min")
SAMPLINGS = ("letterbox", "patch")
VALIDATIONS = ("letterbox", "sliding")
SCHEDULES = ("exponential", "cosine", "poly")
OPTIMIZERS = ("adam", "adamw", "sgd")


class ConfigError(ValueError):
    """A bad config key or value; printed as one line by the CLI."""

    user_error = True


def flag(default: Any = dataclasses.MISSING, help: str = "", *, name: str | None = None,  # noqa: A002
         choices: tuple[str, ...] | None = None, train_only: bool = False, metavar: str | None = None,
         factory: Any = dataclasses.MISSING, parse: Any = None):
    """A config field that is also a CLI flag (`--name`, default: the key with dashes; `parse`: the flag's text to
    the field's value, e.g. `parse_duration`)."""
    meta = {"help": help, "flag": name, "choices": choices, "train_only": train_only, "metavar": metavar,
            "parse": parse}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """'15m', '2h', '1h30m', '90s' or '90' (seconds) -> seconds."""
    import argparse

    match = _DURATION.match(str(text).strip().lower())
    if not str(text).strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"{text!r}: use a duration such as 90s, 15m, 2h or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a budget must be longer than 0 s")
    return total


def format_duration(seconds: float) -> str:
    """900 -> '15m', 5400 -> '1h30m', 95 -> '95s'."""
    if seconds < 600 and seconds % 60:
        return f"{seconds:.0f}s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m" if hours and minutes else f"{hours}h" if hours else f"{minutes}m"


@dataclass(config=STRICT)
class NormalizationConfig:
    """Per-channel intensity normalisation in 0..255 pixel units: clip to [low, high] (when given), then
    (x - mean) / std. Unset, the encoder's own normalisation applies (what pretrained weights expect); a plan sets
    it from the dataset's fingerprint."""

    mean: list[float]
    std: list[float]
    low: list[float] | None = None
    high: list[float] | None = None

    @property
    def clip(self) -> tuple[list[float], list[float]] | None:
        return (self.low, self.high) if self.low is not None and self.high is not None else None


@dataclass(config=STRICT)
class AugmentConfig:
    """Training augmentation. Letterbox sampling uses the tutorial's keys (defaults as in the tutorial): jitter,
    scale, flip, hue, sat, val, crop. Patch sampling uses zoom, flip, vflip, rot90, the elastic deformation of the
    U-Net paper, intensity changes, noise, blur and hue/sat/val (which do nothing on grey images)."""

    jitter: float = 0.3
    scale: FloatPair = (0.25, 2.0)
    flip: float = 0.5
    hue: float = 0.1
    sat: float = 1.5
    val: float = 1.5
    crop: bool = False
    # patch sampling only
    zoom: FloatPair = (1.0, 1.0)
    vflip: float = 0.0
    rot90: bool = False
    elastic: float = 0.0
    elastic_grid: int = 3
    elastic_std: float = 10.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: FloatPair = (1.0, 1.0)
    noise: float = 0.0
    noise_std: float = 8.0
    blur: float = 0.0
    blur_sigma: FloatPair = (0.5, 1.5)


@dataclass(config=STRICT)
class TrainConfig:
    """Everything one training run needs; every field is a YAML key and most are CLI flags."""

    schema_version: int = SCHEMA_VERSION
    # model
    encoder: str = flag("mini", "encoder name (see `launch.py encoders`)")
    encoder_kwargs: dict = flag(help="builder options of the encoder, KEY=VALUE (repeatable; values read as "
                                "YAML), e.g. base_width=64 for unet, alpha=0.5 for mobilenet",
                                name="encoder-kwargs", metavar="KEY=VALUE", factory=dict)
    weights: str | None = flag(None, "initial weights: a pretrained tag of the encoder (e.g. imagenet, downloaded by "
                               "its library) or a local .pt/.pth/.safetensors/.h5 file; default: random init")
    plugins: list[str] = field(default_factory=list)
    tracking: dict = field(default_factory=dict)  # {mlflow: {...}, wandb: {...}}: segengine/tracking.py
    # data
    data: str | None = flag(None, "dataset folder or URI; default: the built-in synthetic membranes (synth)")
    input_size: IntPair = flag((128, 128), "the network input: letterbox size, or the patch (crop) size")
    sampling: str = flag("letterbox", "letterbox: whole images resized to --input-size (the tutorial); patch: "
                         "random crops of --input-size at native resolution", choices=SAMPLINGS)
    samples_per_epoch: int | None = flag(None, "patch sampling: crops per epoch over all workers (default: the "
                                         "number of training images)")
    class_aware: float = 0.0  # patch sampling: probability that a crop is centred on a pixel of a random class
    scale: float = 1.0  # patch sampling: images resampled by this factor for training, validation and inference
    normalization: NormalizationConfig | None = None  # None: the encoder's (see NormalizationConfig)
    validation: str = flag("letterbox", "letterbox at --input-size, or sliding windows at native resolution, "
                           "blended", choices=VALIDATIONS)
    val_window: IntPair | None = None  # sliding validation window (None: input_size)
    val_overlap: float = 0.25
    val_mirror: bool = False  # sliding windows: average each window's softmax over its 4 flips (nnU-Net's TTA)
    val_every: int = flag(1, "validate every K epochs (and always at the last one)")
    num_classes: int | None = flag(None, "classes of an index-mode dataset (default: dataset.yaml, else inferred)")
    label_mode: str | None = flag(None, "how label files encode classes: index (pixel = class id) or threshold "
                                  "(binary masks); default: dataset.yaml, else inferred",
                                  choices=("index", "threshold"))
    threshold: int | None = flag(None, "threshold mode: the grey level that separates the two classes "
                                 "(default: dataset.yaml, else 127)")
    ignore_index: int | None = flag(None, "index mode: the label value that losses and metrics skip (default: "
                                    "dataset.yaml, else 255)")
    val_fraction: float = 0.2
    train_split: str = flag("train", "split to train on: a name or a file listing names (e.g. a held-out part "
                            "of train)")
    val_split: str = flag("val", "split to validate on: a name or a file listing names")
    skip_bad: bool = flag(False, "skip broken image/label pairs with a warning instead of refusing the dataset")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # recipe
    epochs: int = flag(20, "epochs to train (with --budget: the plan's estimate, re-sized to the budget as the run "
                       "measures its epochs)")
    budget_s: float | None = flag(None, "wall-clock budget of training and validation, e.g. 15m or 2h (start-up "
                                  "not counted): the run stops in time with its best checkpoint", name="budget",
                                  metavar="DURATION", parse=parse_duration)
    batch_size: int = flag(4, "images per worker per step (not global)")
    optimizer: str = flag("adam", "optimizer", choices=OPTIMIZERS)
    lr: float = flag(1e-3, "learning rate (peak, after warm-up)")
    schedule: str = flag("exponential", "exponential: lr * lr_decay^epoch (the tutorial); cosine / poly: per step",
                         choices=SCHEDULES)
    lr_decay: float = flag(0.96, "exponential LR decay per epoch")
    poly_power: float = 0.9
    warmup_steps: int = flag(0, "linear warm-up from 0 over the first optimizer steps")
    min_lr_ratio: float = 0.0  # cosine / poly end at lr * min_lr_ratio
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    bn_momentum: float | None = flag(0.1, "BatchNorm momentum (PyTorch convention; null in a file keeps the "
                                     "model's own, Keras' 0.01 in the ports)")
    class_weights: list[float] | None = flag(None, "one loss weight per class")
    class_weight_exponent: float | None = None  # weights ~ class frequency^-a from the training labels
    loss: str = flag("ce", "loss", choices=LOSSES)
    freeze_epochs: int = flag(0, "train the decoder only for K epochs")
    metric: str = flag("val_miou", "metric for the best checkpoint and early stopping")
    mode: str = flag("max", "whether the metric is better high or low", choices=MODES)
    patience: int = flag(10, "early stopping: epochs without improvement")
    min_steps: int = flag(500, "early stopping never fires before this many optimizer steps")
    seed: int = flag(0, "seed of everything random (batches, crops, initialisation)")
    # resources
    workers: StrictInt | IntPair = flag(1, "Ray Train workers (0 = in-process debug mode); MIN MAX: elastic, the "
                                        "run goes on with the workers that remain when a node dies and grows back "
                                        "when nodes return", train_only=True)
    cpus_per_worker: int = 1
    loader_workers: int | None = None
    use_gpu: str = "auto"
    amp: bool = True
    channels_last: bool = True
    sync_bn: bool = False
    max_failures: int = 2
    resource_wait_s: float = flag(0.0, "on an autoscaling cluster: wait this long (seconds) for enough CPUs/GPUs "
                                  "instead of refusing at once", name="wait-for-resources", train_only=True)
    keep_checkpoints: int = 2
    elastic_resize_s: float = 60.0  # elastic workers: how often Train checks whether the worker group can grow
    # run
    storage: str = flag("runs", "where runs and checkpoints go: a folder, file:// (a mount every node shares), s3://, "
                        "gs://", metavar="PATH_OR_URI")
    name: str | None = flag(None, "run name (a new name starts a run; default: ENCODER-DATE-TIME)")
    address: str | None = flag(None, "Ray cluster address (auto or HOST:PORT); default: $RAY_ADDRESS, else a "
                               "local Ray", metavar="ADDRESS")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size)
        if self.val_window is not None:
            out["val_window"] = list(self.val_window)
        if isinstance(self.workers, tuple):
            out["workers"] = list(self.workers)
        for key in ("scale", "zoom", "gamma", "blur_sigma"):
            out["augment"][key] = list(getattr(self.augment, key))
        return out

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) Ray Train workers; equal unless the run is elastic."""
        return tuple(self.workers) if isinstance(self.workers, tuple) else (self.workers, self.workers)

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
    values = dict(raw)
    if cls is TrainConfig and values.get("augment") is not None:
        values["augment"] = _build(AugmentConfig, values["augment"], f"{where}.augment")
    if cls is TrainConfig and values.get("normalization") is not None:
        values["normalization"] = _build(NormalizationConfig, values["normalization"], f"{where}.normalization")
    try:
        obj = cls(**values)
    except ValidationError as exc:
        raise ConfigError(_first_error(cls, exc, values, where)) from None
    _validate(obj, where)
    return obj


_EXPECTED = {"int_type": "int", "int_from_float": "int", "int_parsing": "int", "float_type": "float",
             "float_parsing": "float", "string_type": "str", "bool_type": "bool", "dict_type": "a mapping",
             "list_type": "a list", "none_required": "null"}


def _first_error(cls, exc: ValidationError, values: Mapping[str, Any], where: str) -> str:
    """One line naming the key, what it must be and the value given (from pydantic's first error)."""
    err = exc.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else "?"
    given = values.get(key, err.get("input"))
    if given is None:
        return f"{where}: '{key}' must not be empty"
    kind = next((str(f.type) for f in dataclasses.fields(cls) if f.name == key), "")
    if "Pair" in kind:
        what = "two integers" if "Int" in kind else "two numbers"
    elif kind.startswith("list["):
        what = "a list of numbers" if "float" in kind else "a list of names"
    else:
        what = _EXPECTED.get(err["type"], err["msg"].lower())
    return f"{where}: '{key}' must be {what}, got {given!r}"


def _validate(obj: Any, where: str) -> None:
    if isinstance(obj, NormalizationConfig):
        n = len(obj.mean)
        if not n or len(obj.std) != n or any(s <= 0 for s in obj.std):
            raise ConfigError(f"{where}: mean and std need one value per channel, std > 0")
        bounds = (obj.low or [], obj.high or [])
        if (obj.low is None) != (obj.high is None) or (obj.low is not None and (
                len(obj.low) != n or len(obj.high) != n or any(lo >= hi for lo, hi in zip(*bounds, strict=True)))):
            raise ConfigError(f"{where}: low and high need one value per channel each, low < high (or neither)")
        return
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
        ("scale", 0 < c.scale <= 4 and (c.scale == 1 or c.sampling == "patch"),
         "a factor in (0, 4], other than 1 only with sampling: patch"),
        ("budget_s", c.budget_s is None or c.budget_s > 0, "seconds > 0"),
        ("val_overlap", 0 <= c.val_overlap < 1, "a fraction from 0 to below 1"),
        ("val_every", c.val_every >= 1, "an integer >= 1"),
        ("val_window", c.val_window is None or all(s >= 8 for s in c.val_window), "two integers >= 8 (H W)"),
        ("warmup_steps", c.warmup_steps >= 0, "an integer >= 0"),
        ("min_steps", c.min_steps >= 0, "an integer >= 0"),
        ("min_lr_ratio", 0 <= c.min_lr_ratio <= 1, "a number in [0, 1]"),
        ("poly_power", c.poly_power > 0, "a number > 0"),
        ("bn_momentum", c.bn_momentum is None or 0 < c.bn_momentum <= 1, "a number in (0, 1], or null"),
        ("weight_decay", c.weight_decay >= 0, "a number >= 0"),
        ("workers", (c.workers >= 0) if isinstance(c.workers, int) else 1 <= c.workers[0] <= c.workers[1],
         "an integer >= 0 (0 = in-process debug mode), or [min, max] with 1 <= min <= max (elastic)"),
        ("elastic_resize_s", c.elastic_resize_s >= 0, "seconds >= 0"),
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
    _check_tracking(c.tracking, where)


WANDB_MODES = ("online", "offline", "disabled")  # the first is W&B's own default


def wandb_mode(settings: dict[str, str]) -> str:
    """The `tracking.wandb.mode` of a run or search, W&B's default when unset."""
    return settings.get("mode", WANDB_MODES[0])


TRACKING_KEYS = {
    "mlflow": {"uri": "tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<storage>/mlflow.db)",
               "experiment": "experiment name (default: unet-zoo; for tune, the search's name)"},
    "wandb": {"project": "project (default: unet-zoo; for tune, the search's name)",
              "mode": "online, offline or disabled (default: online)", "entity": "team or user",
              "dir": "folder for W&B's files (default: the run folder)"},
}


def _check_tracking(tracking: dict[str, Any], where: str) -> None:
    """The `tracking:` section's shape, with the key that is wrong."""
    for backend, settings in tracking.items():
        keys = TRACKING_KEYS.get(backend)
        if keys is None:
            raise ConfigError(f"{where}: tracking: unknown key {backend!r}; supported: {', '.join(TRACKING_KEYS)}")
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: tracking.{backend}: use a mapping with " + ", ".join(keys))
        for key, value in settings.items():
            if key not in keys:
                raise ConfigError(f"{where}: tracking.{backend}.{key}: unknown key; use "
                                  + ", ".join(f"{k} ({why})" for k, why in keys.items()))
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: tracking.{backend}.{key}: use a non-empty string")
        if backend == "wandb" and wandb_mode(settings) not in WANDB_MODES:
            raise ConfigError(f"{where}: tracking.wandb.mode: use online, offline or disabled")


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


def cli_flags(command: str) -> list[tuple[str, dict[str, Any]]]:
    """argparse arguments of the `train` / `tune` flags declared with `flag(...)`: (option, keywords), with the
    schema's type, choices and default in the help. dest is the config key; a flag left out stays None and does
    not override the file."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata or (f.metadata["train_only"] and command != "train"):
            continue
        kind = str(f.type)
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = f.metadata["help"]
        if default is not None and kind != "bool" and "default" not in text:
            text += f" (default: {shown})"
        option = f.metadata["flag"] or f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if kind == "bool":
            kw["action"] = "store_true"
        elif kind.startswith("StrictInt | IntPair"):  # one count, or MIN MAX
            kw.update(nargs="+", type=int, metavar="N")
        elif "Pair" in kind:
            kw.update(nargs=2, type=int if "Int" in kind else float, metavar=("H", "W"))
        elif kind.startswith("list[float]"):
            kw.update(nargs="+", type=float, metavar="W")
        elif kind.startswith("dict"):
            kw.update(action="append", type=_key_value, metavar=f.metadata["metavar"])
        elif f.metadata["parse"] is not None:
            kw["type"] = f.metadata["parse"]
        else:
            kw["type"] = int if kind.startswith("int") else float if kind.startswith("float") else str
            kw["metavar"] = f.metadata["metavar"] or option.replace("-", "_").upper()
        if f.metadata["choices"]:
            kw["choices"] = list(f.metadata["choices"])
            kw.pop("metavar", None)
        out.append((f"--{option}", kw))
    return out


def _key_value(text: str) -> tuple[str, Any]:
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. base_width=64")
    return key.strip(), yaml.safe_load(value)


def flag_overrides(args: Any) -> dict[str, Any]:
    """The config keys that CLI flags set explicitly (plugins are appended, not replaced)."""
    keys = [f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
    out = {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}
    if "input_size" in out:
        out["input_size"] = list(out["input_size"])
    if "encoder_kwargs" in out:  # [(key, value), ...] from repeated KEY=VALUE
        out["encoder_kwargs"] = dict(out["encoder_kwargs"])
    if "workers" in out:  # --workers N, or --workers MIN MAX (elastic)
        if len(out["workers"]) > 2:
            raise ConfigError(f"--workers takes N or MIN MAX, got {' '.join(map(str, out['workers']))}")
        out["workers"] = out["workers"][0] if len(out["workers"]) == 1 else list(out["workers"])
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
