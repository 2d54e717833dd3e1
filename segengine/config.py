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
import functools
import operator
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import yaml
from pydantic import ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from pydantic.dataclasses import dataclass

STRICT = ConfigDict(strict=True, extra="forbid")
# YAML gives lists where the schema keeps pairs: the container is converted, its numbers stay strict.
IntPair = Annotated[tuple[StrictInt, StrictInt], Field(strict=False)]
FloatPair = Annotated[tuple[StrictFloat, StrictFloat], Field(strict=False)]
# Value ranges, declared on the fields' types: pydantic checks them and `allowed()` describes them in the errors.
Count = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # of a whole: 0 up to below 1
Share = Annotated[float, Field(gt=0, le=1)]

SCHEMA_VERSION = 1
Loss = Literal["ce", "dice", "focal", "ce+dice"]
Mode = Literal["max", "min"]
Sampling = Literal["letterbox", "patch"]
Validation = Literal["letterbox", "sliding"]
Schedule = Literal["exponential", "cosine", "poly"]
Optimizer = Literal["adam", "adamw", "sgd"]
UseGpu = Literal["auto", "yes", "no"]
# segdata.meta.LabelMode, spelled here so that the CLI's parser starts without the data pipeline's imports (OpenCV,
# pyarrow); tests/segengine/test_config.py holds the two equal
LabelMode = Literal["index", "threshold", "nonzero", "color"]
LOSSES, MODES, SAMPLINGS, VALIDATIONS = get_args(Loss), get_args(Mode), get_args(Sampling), get_args(Validation)
SCHEDULES, OPTIMIZERS, LABEL_MODES = get_args(Schedule), get_args(Optimizer), get_args(LabelMode)
OVERLAP_RANGE = "a fraction from 0 (no overlap) to below 1, e.g. 0.25"  # of sliding windows, wherever given


def ranked(value: float | None, mode: str) -> float:
    """A metric's value as a number where higher is better (`mode` max or min); missing or NaN: the worst. The one
    way checkpoints, early stopping and search results are ranked."""
    if value is None or value != value:
        return float("-inf")
    return float(value) if mode == "max" else -float(value)


def overlap_ok(overlap: float) -> bool:
    """The one rule of a sliding-window overlap (the `Fraction` type of `val_overlap` says the same to pydantic)."""
    return 0 <= overlap < 1


class ConfigError(ValueError):
    """A bad config key or value; printed as one line by the CLI."""

    user_error = True


def flag(default: Any = dataclasses.MISSING, help: str = "", *, name: str | None = None,  # noqa: A002
         train_only: bool = False, metavar: str | None = None, factory: Any = dataclasses.MISSING,
         parse: Any = None):
    """A config field that is also a CLI flag (`--name`, default: the key with dashes; `parse`: the flag's text to
    the field's value, e.g. `parse_duration`; the choices of a Literal type become the flag's)."""
    meta = {"help": help, "flag": name, "train_only": train_only, "metavar": metavar, "parse": parse}
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
    std: list[Positive]
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

    jitter: Fraction = 0.3
    scale: FloatPair = (0.25, 2.0)
    flip: Probability = 0.5
    hue: NonNegative = 0.1
    sat: Positive = 1.5
    val: Positive = 1.5
    crop: bool = False
    # patch sampling only
    zoom: FloatPair = (1.0, 1.0)
    vflip: Probability = 0.0
    rot90: bool = False
    elastic: Probability = 0.0
    elastic_grid: Annotated[int, Field(ge=2)] = 3
    elastic_std: NonNegative = 10.0
    brightness: Fraction = 0.0
    contrast: Fraction = 0.0
    gamma: FloatPair = (1.0, 1.0)
    noise: Probability = 0.0
    noise_std: NonNegative = 8.0
    blur: Probability = 0.0
    blur_sigma: FloatPair = (0.5, 1.5)


@dataclass(config=STRICT)
class TrainConfig:
    """Everything one training run needs; every field is a YAML key and most are CLI flags."""

    schema_version: Literal[1] = SCHEMA_VERSION
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
    sampling: Sampling = flag("letterbox", "letterbox: whole images resized to --input-size (the tutorial); patch: "
                         "random crops of --input-size at native resolution")
    samples_per_epoch: Count | None = flag(None, "patch sampling: crops per epoch over all workers (default: the "
                                         "number of training images)")
    class_aware: Probability = 0.0  # patch sampling: probability that a crop is centred on a pixel of a random class
    # patch sampling: images resampled by this factor for training, validation and inference (0.5: half size)
    resample: Annotated[float, Field(gt=0, le=4)] = 1.0
    normalization: NormalizationConfig | None = None  # None: the encoder's (see NormalizationConfig)
    validation: Validation = flag("letterbox", "letterbox at --input-size, or sliding windows at native "
                                  "resolution, blended")
    val_window: IntPair | None = None  # sliding validation window (None: input_size)
    val_overlap: Fraction = 0.25
    val_mirror: bool = False  # sliding windows: average each window's softmax over its 4 flips (nnU-Net's TTA)
    val_every: Count = flag(1, "validate every K epochs (and always at the last one)")
    num_classes: int | None = flag(None, "classes of an index-mode dataset (default: dataset.yaml, else inferred)")
    label_mode: LabelMode | None = flag(None, "how label files encode classes: index (pixel = class id) or "
                                        "threshold (binary masks); default: dataset.yaml, else inferred")
    threshold: int | None = flag(None, "threshold mode: the grey level that separates the two classes "
                                 "(default: dataset.yaml, else 127)")
    ignore_index: int | None = flag(None, "index mode: the label value that losses and metrics skip (default: "
                                    "dataset.yaml, else 255)")
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    train_split: str = flag("train", "split to train on: a name or a file listing names (e.g. a held-out part "
                            "of train)")
    val_split: str = flag("val", "split to validate on: a name or a file listing names")
    folds: Annotated[int, Field(ge=2)] | None = flag(None, "cross-validation: K models, each trained with one K-th "
                                                     "of the training split held out (train: as concurrent Ray Tune "
                                                     "trials, then the out-of-fold score and the K models as one "
                                                     "ensemble; tune: every sample scored by its K folds' mean)",
                                                     metavar="K")
    skip_bad: bool = flag(False, "skip broken image/label pairs with a warning instead of refusing the dataset")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # recipe
    epochs: Count = flag(20, "epochs to train (with --budget: the plan's estimate, re-sized to the budget as the run "
                       "measures its epochs)")
    budget_s: Positive | None = flag(None, "wall-clock budget of training and validation, e.g. 15m or 2h (start-up "
                                  "not counted): the run stops in time with its best checkpoint", name="budget",
                                  metavar="DURATION", parse=parse_duration)
    batch_size: Count = flag(4, "images per worker per step (not global)")
    optimizer: Optimizer = flag("adam", "optimizer")
    lr: Positive = flag(1e-3, "learning rate (peak, after warm-up)")
    schedule: Schedule = flag("exponential", "exponential: lr * lr_decay^epoch (the tutorial); cosine / poly: per "
                              "step")
    lr_decay: Share = flag(0.96, "exponential LR decay per epoch")
    poly_power: Positive = 0.9
    warmup_steps: NonNegativeInt = flag(0, "linear warm-up from 0 over the first optimizer steps")
    min_lr_ratio: Probability = 0.0  # cosine / poly end at lr * min_lr_ratio
    weight_decay: NonNegative = 0.0
    momentum: float = 0.9  # SGD only
    bn_momentum: Share | None = flag(0.1, "BatchNorm momentum (PyTorch convention; null in a file keeps the "
                                     "model's own, Keras' 0.01 in the ports)")
    class_weights: list[NonNegative] | None = flag(None, "one loss weight per class")
    # weights ~ class frequency^-a, the frequencies measured on the training labels
    class_weight_exponent: Annotated[float, Field(ge=0, le=2)] | None = None
    loss: Loss = flag("ce", "loss")
    freeze_epochs: NonNegativeInt = flag(0, "train the decoder only for K epochs")
    metric: str = flag("val_miou", "metric for the best checkpoint and early stopping")
    mode: Mode = flag("max", "whether the metric is better high or low")
    patience: Count = flag(10, "early stopping: epochs without improvement")
    min_steps: NonNegativeInt = flag(500, "early stopping never fires before this many optimizer steps")
    seed: int = flag(0, "seed of everything random (batches, crops, initialisation)")
    # resources
    workers: StrictInt | IntPair = flag(1, "Ray Train workers (0 = in-process debug mode); MIN MAX: elastic, the "
                                        "run goes on with the workers that remain when a node dies and grows back "
                                        "when nodes return", train_only=True)
    cpus_per_worker: Count = 1
    loader_workers: NonNegativeInt | None = None
    use_gpu: UseGpu = "auto"
    amp: bool = True
    channels_last: bool = True
    sync_bn: bool = False
    max_failures: Annotated[int, Field(ge=-1)] = 2  # -1: retry forever
    resource_wait_s: NonNegative = flag(0.0, "on an autoscaling cluster: wait this long (seconds) for enough CPUs/GPUs "
                                  "instead of refusing at once", name="wait-for-resources", train_only=True)
    keep_checkpoints: Count = 2
    elastic_resize_s: NonNegative = 60.0  # elastic workers: how often Train checks whether the worker group can grow
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
_OUT_OF_RANGE = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error")


def _hint(cls, name: str) -> Any:
    return typing.get_type_hints(cls, include_extras=True)[name]


def _without_none(hint: Any) -> tuple[Any, bool]:
    """The type without `| None`, and whether None is allowed."""
    if get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint):
        rest = [a for a in get_args(hint) if a is not type(None)]
        return functools.reduce(operator.or_, rest), True
    return hint, False


def _plain(hint: Any) -> tuple[Any, dict[str, float]]:
    """(the plain type, its bounds {ge, gt, le, lt}) of a possibly Annotated type."""
    if get_origin(hint) is not Annotated:
        return hint, {}
    base, *extras = get_args(hint)
    bounds = {}
    for extra in extras:
        for item in getattr(extra, "metadata", [extra]):
            if isinstance(item, (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)):
                bounds.update({f.name: getattr(item, f.name) for f in dataclasses.fields(item)})
    return base, bounds


def _range(noun: str, b: dict[str, float]) -> str:
    """'a number in (0, 1]', 'an integer >= 1': a type's bounds in words."""
    low = f"[{b['ge']:g}" if "ge" in b else f"({b['gt']:g}" if "gt" in b else ""
    high = f"{b['le']:g}]" if "le" in b else f"{b['lt']:g})" if "lt" in b else ""
    if low and high:
        return f"{noun} in {low}, {high}"
    return f"{noun} >= {b['ge']:g}" if "ge" in b else f"{noun} > {b['gt']:g}" if "gt" in b else noun


def allowed(cls, name: str) -> str:
    """What field `name` of a config class takes, in words (from its type: a Literal's values, a number's range)."""
    hint, optional = _without_none(_hint(cls, name))
    if get_origin(hint) is Literal:
        text = "one of " + ", ".join(map(str, get_args(hint)))
    elif get_origin(hint) is list:
        base, bounds = _plain(get_args(hint)[0])
        text = "a list of " + _range("numbers", bounds)
    else:
        base, bounds = _plain(hint)
        text = _range("an integer" if base is int else "a number", bounds)
    return text + (", or null" if optional else "")


def _first_error(cls, exc: ValidationError, values: Mapping[str, Any], where: str) -> str:
    """One line naming the key, what it must be and the value given (from pydantic's first error)."""
    err = exc.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else "?"
    given = values.get(key, err.get("input"))
    if given is None:
        return f"{where}: '{key}' must not be empty"
    if err["type"] in _OUT_OF_RANGE:
        return f"{where}: bad value for '{key}': {given!r}; allowed: {allowed(cls, key)}"
    hint, _ = _without_none(_hint(cls, key)) if key in _allowed(cls) else (None, False)
    plain, _ = _plain(hint)
    if get_origin(plain) is tuple:
        what = "two integers" if _plain(get_args(plain)[0])[0] is int else "two numbers"
    elif get_origin(hint) is list:
        what = "a list of names" if _plain(get_args(hint)[0])[0] is str else "a list of numbers"
    else:
        what = _EXPECTED.get(err["type"], err["msg"].lower())
    return f"{where}: '{key}' must be {what}, got {given!r}"


def _validate(obj: Any, where: str) -> None:
    """What the field types cannot say: pairs ordered, channels matched, keys that exclude each other."""
    if isinstance(obj, NormalizationConfig):
        n = len(obj.mean)
        if not n or len(obj.std) != n:
            raise ConfigError(f"{where}: mean and std need one value per channel")
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
        return
    c: TrainConfig = obj
    low, high = c.worker_range
    rules = [
        ("resample", c.resample == 1 or c.sampling == "patch", "1 unless sampling is patch"),
        ("val_window", c.val_window is None or all(s >= 8 for s in c.val_window), "two integers >= 8 (H W)"),
        ("workers", (low >= 0) if low == high else 1 <= low <= high,
         "an integer >= 0 (0 = in-process debug mode), or [min, max] with 1 <= min <= max (elastic)"),
        ("input_size", all(s >= 8 for s in c.input_size), "two integers >= 8 (H W)"),
    ]
    for key, ok, what in rules:
        if not ok:
            raise ConfigError(f"{where}: bad value for '{key}': {getattr(c, key)!r}; allowed: {what}")
    if c.class_weights is not None and c.class_weight_exponent is not None:
        raise ConfigError(f"{where}: give class_weights or class_weight_exponent, not both")
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
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = f.metadata["help"]
        if default is not None and not isinstance(default, bool) and "default" not in text:
            text += f" (default: {shown})"
        option = f.metadata["flag"] or f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": text, **_flag_kind(f)}
        if "type" in kw and "nargs" not in kw and "choices" not in kw and "action" not in kw:
            kw["metavar"] = f.metadata["metavar"] or option.replace("-", "_").upper()
        out.append((f"--{option}", kw))
    return out


def _flag_kind(f: dataclasses.Field) -> dict[str, Any]:
    """How argparse reads a field's flag, from the field's type."""
    hint, _ = _without_none(_hint(TrainConfig, f.name))
    plain, _ = _plain(hint)
    if plain is bool:
        return {"action": "store_true"}
    if get_origin(plain) in (typing.Union, types.UnionType):  # one count, or MIN MAX (elastic workers)
        return {"nargs": "+", "type": int, "metavar": "N"}
    if get_origin(plain) is tuple:
        return {"nargs": 2, "type": _plain(get_args(plain)[0])[0], "metavar": ("H", "W")}
    if get_origin(plain) is list:
        return {"nargs": "+", "type": float, "metavar": "W"}
    if plain is dict or get_origin(plain) is dict:
        return {"action": "append", "type": _key_value, "metavar": f.metadata["metavar"]}
    if get_origin(plain) is Literal:
        return {"choices": list(get_args(plain))}
    return {"type": f.metadata["parse"] or plain}


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
    if "class_weights" in out:  # weights given on the command line replace a recipe's derived ones
        out["class_weight_exponent"] = None
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
