"""The search file: a training recipe (`train:`) plus what Ray Tune searches around it and how.

One typed model, `SearchConfig`, read by `tune`, `tune --resume` (from the search's saved `search.yaml`) and the
planner alike, and written back by `to_yaml()`. Every default of a search lives here, on its field; the values
are strict (pydantic v2, no strings for numbers) and every error is one line naming the key.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError

from segengine.config import ConfigError, TrainConfig, load_yaml

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")
# What Population Based Training may change in a running trial: values the worker reapplies to the optimizer and
# the loss after restoring another trial's checkpoint (the model's shape and the data pipeline stay fixed).
PBT_MUTABLE = ("lr", "lr_decay", "weight_decay", "momentum", "class_weight_exponent")
SEARCH_FILE = "search.yaml"  # in a search's folder: its search sections, read back by `tune --resume`

PositiveInt = Annotated[StrictInt, Field(ge=1)]
Number = StrictInt | StrictFloat
Range = Annotated[tuple[Number, Number], Field(strict=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AshaScheduler(_Strict):
    """Asynchronous successive halving: at epochs grace, grace x rf, ... keep the best 1/rf of the trials."""

    type: Literal["asha"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[Number, Field(gt=1)] = 3
    max_epochs: PositiveInt | None = None


class FifoScheduler(_Strict):
    """Every trial runs to the end."""

    type: Literal["fifo"] = "fifo"
    max_epochs: PositiveInt | None = None


class PbtScheduler(_Strict):
    """Population Based Training: every `perturbation_interval` epochs the weakest `quantile_fraction` continue
    from a strong trial's checkpoint with mutated values."""

    type: Literal["pbt"] = "pbt"
    perturbation_interval: PositiveInt = 2
    quantile_fraction: Annotated[Number, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[Number, Field(ge=0, le=1)] = 0.25
    max_epochs: PositiveInt | None = None


Scheduler = Annotated[AshaScheduler | FifoScheduler | PbtScheduler, Field(discriminator="type")]


class Searcher(_Strict):
    type: Literal["optuna", "random", "hyperopt"] = "optuna"
    n_startup: PositiveInt | None = None  # random trials before the model-based search (None: startup_trials)
    seed: StrictInt | None = None  # None: the training seed
    start_from_recipe: StrictBool = True  # optuna: the first trial is the recipe's own values (recipe_point)

    def startup_trials(self, samples: int) -> int:
        """TPE and hyperopt need random start-up trials: a third of the budget (at least 2) fits small searches."""
        return self.n_startup or max(2, samples // 3)


class TrialResources(_Strict):
    """What each trial runs on (the `resources:` section)."""

    workers_per_trial: Annotated[StrictInt, Field(ge=0)] = 0  # 0: the trial trains in its own process
    cpus_per_worker: PositiveInt = 1


class ClassWeights(_Strict):
    """Searched loss weights: a range per class name (or index), or the exponent of w_c ~ freq_c^-a."""

    per_class: dict[str | int, Range] = Field(default_factory=dict)
    inverse_frequency_exponent: Range | None = None


class SearchConfig(_Strict):
    """A search file (tune_configs/*.yaml): the recipe (`train`) and the search around it."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    search: dict[str, dict[str, Any]] = Field(default_factory=dict)
    class_weights: ClassWeights = Field(default_factory=ClassWeights)
    scheduler: Scheduler = Field(default_factory=AshaScheduler)
    searcher: Searcher = Field(default_factory=Searcher)
    samples: PositiveInt = 8
    max_concurrent: PositiveInt | None = None
    resources: TrialResources = Field(default_factory=TrialResources)
    time_budget_s: Annotated[Number, Field(gt=0)] | None = None  # the whole search's wall clock (Tune stops it)

    @classmethod
    def load(cls, source: str | Mapping[str, Any] | None, train_overrides: Mapping[str, Any] | None = None,
             overrides: Mapping[str, Any] | None = None) -> SearchConfig:
        """A search file (or its contents, e.g. a resumed search's saved settings), then CLI flags: training
        flags override `train:`, search flags (`samples`, `workers_per_trial`, ...) their own keys."""
        raw = dict(source) if isinstance(source, Mapping) else load_yaml(source) if source else {}
        where = "saved search settings" if isinstance(source, Mapping) else source or "command line"
        raw["train"] = {**(raw.get("train") or {}), **(train_overrides or {})}
        if (train_overrides or {}).get("class_weights") is not None:  # --class-weights fixes what was searched
            raw["class_weights"] = {**(raw.get("class_weights") or {}), "inverse_frequency_exponent": None}
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            if key in TrialResources.model_fields:
                raw["resources"] = {**(raw.get("resources") or {}), key: value}
            else:
                raw[key] = value
        return cls.parse(raw, where)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> SearchConfig:
        """Validate a whole search file before anything starts; the first error, in one line, names the key."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping of keys to values")
        values = {k: v for k, v in raw.items() if v is not None}
        values["train"] = TrainConfig.from_dict(raw.get("train") or {}, where=f"{where}: train")
        try:
            config = cls(**values)
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_one_line(exc)}") from None
        config._check(where)
        return config

    def _check(self, where: str) -> None:
        """What the field types cannot say: searched keys are training keys with valid values, ranges are ordered,
        searchers and schedulers fit the search."""
        fields = set(self.train.to_dict())
        for key, spec in self.search.items():
            if key not in fields:
                raise ConfigError(f"{where}: search.{key} is not a training config key")
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ConfigError(f"{where}: search.{key} must be one of {{{' | '.join(DISTRIBUTIONS)}: ...}}")
            dist, args = next(iter(spec.items()))
            _check_range(where, f"search.{key}.{dist}", dist, args)
            if dist in ("choice", "grid"):
                for value in args:  # every choice must make a valid training config
                    TrainConfig.from_dict({**self.train.to_dict(), key: value}, where=f"{where}: search.{key}")
        weights = self.class_weights
        for name, rng in weights.per_class.items():
            _check_range(where, f"class_weights.per_class.{name}", "uniform", list(rng))
        if weights.inverse_frequency_exponent is not None:
            if weights.per_class or self.train.class_weights is not None:
                raise ConfigError(f"{where}: class_weights.inverse_frequency_exponent derives all class weights; "
                                  "drop per_class and train.class_weights, or the exponent")
            _check_range(where, "class_weights.inverse_frequency_exponent", "uniform",
                         list(weights.inverse_frequency_exponent))
        if self.searcher.type != "random" and any("grid" in s for s in self.search.values()):
            raise ConfigError(f"{where}: grid values need searcher.type: random (model-based searchers sample)")
        if self.scheduler.type == "pbt":
            self._check_pbt(where)
            if self.train.folds:
                raise ConfigError(f"{where}: train.folds with scheduler.type pbt: a cross-validated trial reports "
                                  "once, after its folds; use asha or fifo")

    def _check_pbt(self, where: str) -> None:
        """PBT samples the first configs itself, exploits Tune checkpoints (in-process trials report them) and
        mutates only what a restored trial can take over."""
        if self.searcher.type != "random":
            raise ConfigError(f"{where}: scheduler.type pbt samples and mutates configs itself; set searcher.type: "
                              "random")
        if self.resources.workers_per_trial:
            raise ConfigError(f"{where}: scheduler.type pbt needs in-process trials (resources.workers_per_trial: "
                              "0): only those report checkpoints Tune can hand to another trial")
        fixed = sorted(set(self.search) - set(PBT_MUTABLE))
        if fixed:
            raise ConfigError(f"{where}: scheduler.type pbt cannot change search.{fixed[0]} inside a running trial; "
                              f"search only {', '.join(PBT_MUTABLE)} and class weights")
        weights = self.class_weights
        if not (set(self.search) & set(PBT_MUTABLE) or weights.per_class
                or weights.inverse_frequency_exponent is not None):
            raise ConfigError(f"{where}: scheduler.type pbt needs something to mutate: search one of "
                              f"{', '.join(PBT_MUTABLE)} or class_weights.per_class")

    @property
    def max_epochs(self) -> int:
        """Epochs a trial may run: the scheduler's cap, at most the recipe's epochs. A budgeted recipe's epochs are
        an estimate that each trial re-sizes to its budget, so there the scheduler's cap alone (default: twice the
        estimate) bounds them."""
        if self.train.budget_s:
            return self.scheduler.max_epochs or 2 * self.train.epochs
        return min(self.scheduler.max_epochs or self.train.epochs, self.train.epochs)

    @property
    def trial_count(self) -> int:
        """Tune runs `samples` trials per combination of grid values."""
        return self.samples * math.prod(len(args) for spec in self.search.values() for dist, args in spec.items()
                                        if dist == "grid")

    def search_sections(self) -> dict[str, Any]:
        """Everything but `train:`, as YAML-ready values (a search's saved `search.yaml`)."""
        return self.model_dump(mode="json", exclude={"train"}, exclude_none=True)

    def raw(self) -> dict[str, Any]:
        """The whole search file as YAML-ready values; `SearchConfig.parse(config.raw())` gives it back."""
        return {"train": self.train.to_dict(), **self.search_sections()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw(), sort_keys=False)


def _check_range(where: str, key: str, dist: str, args: Any) -> None:
    if dist in ("loguniform", "uniform", "randint"):
        ok = isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args) \
            and args[0] < args[1] and (dist != "loguniform" or args[0] > 0)
        if not ok:
            need = "0 < low < high" if dist == "loguniform" else "low < high"
            raise ConfigError(f"{where}: {key} needs [low, high] with {need}, got {args!r}")
    elif not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {key} needs a non-empty list of values, got {args!r}")


def _one_line(exc: ValidationError) -> str:
    """pydantic's first error as `dotted.key: what is wrong, got VALUE` (the scheduler's type tag dropped from
    the key), with the closest allowed key for an unknown one."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    if loc[:1] == ["scheduler"] and len(loc) > 1 and loc[1] in ("asha", "fifo", "pbt"):
        loc.pop(1)
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section, unknown = ".".join(loc[:-1]), loc[-1]
        allowed = _allowed_keys(loc[:-1], err)
        close = difflib.get_close_matches(unknown, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{section + ': ' if section else ''}unknown key '{unknown}'{hint}; allowed keys: {', '.join(allowed)}"
    if err["type"] == "union_tag_invalid":
        return f"{key}.type: use one of asha, fifo, pbt, got {err.get('input', {}).get('type')!r}"
    return f"{key}: {err['msg'][0].lower()}{err['msg'][1:]}, got {err.get('input')!r}"


def _allowed_keys(section: list[str], err: dict[str, Any]) -> list[str]:
    models: dict[str, type[BaseModel]] = {"": SearchConfig, "searcher": Searcher, "resources": TrialResources,
                                          "class_weights": ClassWeights}
    name = ".".join(section)
    if name == "scheduler":
        kind = {"asha": AshaScheduler, "fifo": FifoScheduler, "pbt": PbtScheduler}
        tag = next((str(p) for p in err["loc"][1:2] if str(p) in kind), "asha")
        return list(kind[tag].model_fields)
    model = models.get(name)
    return list(model.model_fields) if model is not None else []
