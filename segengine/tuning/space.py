"""The param space Tune samples: `{"train": the recipe with its searched keys as distributions, "class_weights":
{class index: weight}}`, the results columns of what was sampled, and the recipe's own point in that space."""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.search.sample import Categorical, Domain

import segdata
from segengine.config import ConfigError, TrainConfig
from segengine.search_config import SearchConfig

EXPONENT_KEY = "class_weight_exponent"  # a training key; the driver measures the class frequencies once
WEIGHT_LABEL = "class_weight_"  # + class index: the column of one sampled per-class weight in results.csv
_MAKERS = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
           "randint": lambda a: tune.randint(*a), "choice": tune.choice, "grid": tune.grid_search}


def _class_weight_space(settings: SearchConfig, meta: segdata.DatasetMeta) -> dict[str, Any]:
    """Sampled per-class weights by class index."""
    space = {}
    for name, (lo, hi) in settings.class_weights.per_class.items():
        idx = meta.classes.index(name) if name in meta.classes else (int(name) if str(name).isdigit() else None)
        if idx is None or idx >= meta.num_classes:
            raise ConfigError(f"class_weights.per_class: unknown class '{name}'; classes: {', '.join(meta.classes)}")
        space[str(idx)] = tune.uniform(lo, hi)
    return space


def param_space(settings: SearchConfig, cfg: TrainConfig, meta: segdata.DatasetMeta) -> dict[str, Any]:
    """{"train": the base config with its searched keys as distributions, "class_weights": {index: weight}}."""
    train = {**cfg.to_dict(), **{key: _MAKERS[d](a) for key, spec in settings.search.items() for d, a in spec.items()}}
    if settings.class_weights.inverse_frequency_exponent is not None:
        train[EXPONENT_KEY] = tune.uniform(*settings.class_weights.inverse_frequency_exponent)
    return {"train": train, "class_weights": _class_weight_space(settings, meta)}


def searched_train(space: dict[str, Any]) -> list[str]:
    """Training keys the space samples (distributions or grids)."""
    return [key for key, value in space["train"].items()
            if isinstance(value, Domain) or (isinstance(value, dict) and "grid_search" in value)]


def searched_columns(space: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """results.csv column -> (entry, key) of every sampled value: `lr`, `class_weight_exponent`, `class_weight_1`."""
    columns = {key: ("train", key) for key in searched_train(space)}
    columns.update({f"{WEIGHT_LABEL}{idx}": ("class_weights", idx) for idx in space["class_weights"]})
    return columns


def sampled_value(config: dict[str, Any], where: tuple[str, str]) -> Any:
    """A trial's value of one searched column."""
    return (config.get(where[0]) or {}).get(where[1])


def recipe_point(settings: SearchConfig, space: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's own values of the searched keys (class weights 1 where the recipe sets none), flattened as
    Optuna names them: the search's first trial, so that it cannot end below the recipe it searches around.
    None when a value lies outside its range, or a key is a grid (grids already fix their points)."""
    point: dict[str, Any] = {}
    weights = settings.train.class_weights
    for entry, key in searched_columns(space).values():
        domain = space[entry][key]
        if not isinstance(domain, Domain):
            return None
        value = (getattr(settings.train, key) if entry == "train"
                 else weights[int(key)] if weights is not None else 1.0)
        if isinstance(domain, Categorical):
            inside = value in domain.categories
        else:
            inside = value is not None and domain.lower <= value <= domain.upper
        if not inside:
            return None
        point[f"{entry}/{key}"] = value
    return point or None


def trial_train_config(config: dict[str, Any], num_classes: int) -> TrainConfig:
    """A trial's full TrainConfig: its `train` entry, with the sampled per-class weights (if any) as class_weights."""
    # searchers may sample numpy scalars; the schema takes Python numbers only
    tc = {k: v.item() if hasattr(v, "item") and not isinstance(v, (list, dict)) else v
          for k, v in config["train"].items()}
    sampled = {int(k): float(v) for k, v in (config.get("class_weights") or {}).items()}
    if sampled:
        tc["class_weights"] = [sampled.get(i, 1.0) for i in range(num_classes)]
    return TrainConfig.from_dict(tc, where="trial config")
