"""`launch.py tune`: Ray Tune over the training worker function.

Ray 2.60 pattern: Tune runs a driver function per trial. With `workers_per_trial: 0` the trial runs the worker
function in-process (reporting through `ray.tune.report`; cheapest start-up, the laptop default); with N >= 1 the
trial builds and fits a TorchTrainer whose metrics reach Tune through `TuneReportCallback`. Either way the same
`train_func` trains and metrics reach Tune every epoch (ASHA stops trials, PBT exploits them). In-process trials
report `tune.Checkpoint`s that Tune keeps (`CheckpointConfig`) and restores; a TorchTrainer keeps its own and its
path travels as the metric `checkpoint_path`. Results come from Tune's `ResultGrid`. The param space holds what is
searched: the training config as one nested entry (`train`) and the sampled per-class weights (`class_weights`);
constants (the validated data, the search folder) reach the trials through `tune.with_parameters`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

import segdata
from segengine import storage, tracking
from segengine.cluster import alive_node_ips, check_storage_for_cluster, redact
from segengine.config import SEARCH_FILE_KEYS, ConfigError, TrainConfig, load_yaml, reject_unknown_keys
from segengine.runprep import RunError, prepare, save_config

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")
SEARCHERS = ("optuna", "random", "hyperopt")
SCHEDULERS = ("asha", "fifo", "pbt")
SCHEDULER_KEYS = {"asha": ["grace_period", "reduction_factor", "max_epochs"], "fifo": ["max_epochs"],
                  "pbt": ["perturbation_interval", "quantile_fraction", "resample_probability", "max_epochs"]}
# What Population Based Training may change in a running trial: values the worker reapplies to the optimizer and
# the loss after restoring another trial's checkpoint (the model's shape and the data pipeline stay fixed).
PBT_MUTABLE = ("lr", "lr_decay", "weight_decay", "momentum", "class_weight_exponent")
EXPONENT_KEY = "class_weight_exponent"  # a training key; the driver measures the class frequencies once
TRAIN_BACKED_FOLDER = "trials"  # where Train-backed trials' TorchTrainers keep their runs
WEIGHT_LABEL = "class_weight_"  # + class index: the column of one sampled per-class weight in results.csv


PositiveInt = Annotated[StrictInt, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SchedulerSchema(_Strict):
    type: Literal["asha", "fifo", "pbt"] = "asha"
    grace_period: PositiveInt | None = None
    reduction_factor: Annotated[float, Field(gt=1)] | None = None
    max_epochs: PositiveInt | None = None
    perturbation_interval: PositiveInt | None = None
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] | None = None
    resample_probability: Annotated[float, Field(ge=0, le=1)] | None = None


class SearcherSchema(_Strict):
    type: Literal["optuna", "random", "hyperopt"] = "optuna"
    n_startup: PositiveInt | None = None
    seed: StrictInt | None = None
    start_from_recipe: StrictBool = True  # optuna: the first trial is the recipe's own values (recipe_point)


class ResourcesSchema(_Strict):
    workers_per_trial: Annotated[StrictInt, Field(ge=0)] = 0
    cpus_per_worker: PositiveInt = 1


class SearchFileSchema(_Strict):
    """The value types of a search file's sections (pydantic v2, strict); `train:` is the TrainConfig schema and
    `search:` / `class_weights:` are checked against it in `parse_settings`."""

    samples: PositiveInt = 8
    max_concurrent: PositiveInt | None = None
    scheduler: SchedulerSchema = SchedulerSchema()
    searcher: SearcherSchema = SearcherSchema()
    resources: ResourcesSchema = ResourcesSchema()


@dataclass
class TuneSettings:
    """A search config: training base config + search space + scheduler/searcher/resources."""

    train: TrainConfig
    search: dict[str, dict[str, list]] = field(default_factory=dict)
    class_weights: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha"})
    searcher: dict[str, Any] = field(default_factory=lambda: {"type": "optuna"})
    samples: int = 8
    workers_per_trial: int = 0
    cpus_per_worker: int = 1
    max_concurrent: int | None = None


def _check_range(where: str, key: str, dist: str, args: Any) -> None:
    if dist in ("loguniform", "uniform", "randint"):
        ok = isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args) \
            and args[0] < args[1] and (dist != "loguniform" or args[0] > 0)
        if not ok:
            need = "0 < low < high" if dist == "loguniform" else "low < high"
            raise ConfigError(f"{where}: search.{key}.{dist} needs [low, high] with {need}, got {args!r}")
    elif not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: search.{key}.{dist} needs a non-empty list of values, got {args!r}")


def parse_settings(raw: dict[str, Any], where: str) -> TuneSettings:
    """Validate a search config completely before anything starts; errors name the key."""
    reject_unknown_keys(raw, list(SEARCH_FILE_KEYS), where)
    train = TrainConfig.from_dict(raw.get("train") or {}, where=f"{where}: train")
    fields = set(train.to_dict())
    search = raw.get("search") or {}
    for key, spec in search.items():
        if key not in fields:
            raise ConfigError(f"{where}: search.{key} is not a training config key")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: search.{key} must be one of {{{' | '.join(DISTRIBUTIONS)}: ...}}")
        dist, args = next(iter(spec.items()))
        _check_range(where, key, dist, args)
        if dist in ("choice", "grid"):
            for value in args:  # every choice must make a valid training config
                TrainConfig.from_dict({**train.to_dict(), key: value}, where=f"{where}: search.{key}")
    cw = raw.get("class_weights") or {}
    reject_unknown_keys(cw, ["per_class", "inverse_frequency_exponent"], f"{where}: class_weights")
    for name, rng in (cw.get("per_class") or {}).items():
        _check_range(where, f"class_weights.per_class.{name}", "uniform", rng)
    if "inverse_frequency_exponent" in cw and (cw.get("per_class") or train.class_weights is not None):
        raise ConfigError(f"{where}: class_weights.inverse_frequency_exponent derives all class weights; drop "
                          "per_class and train.class_weights, or the exponent")
    if "inverse_frequency_exponent" in cw:
        _check_range(where, "class_weights.inverse_frequency_exponent", "uniform", cw["inverse_frequency_exponent"])
    sched = dict(raw.get("scheduler") or {"type": "asha"})
    kind = sched.get("type", "asha")
    if kind not in SCHEDULERS:
        raise ConfigError(f"{where}: scheduler.type must be one of {', '.join(SCHEDULERS)}")
    reject_unknown_keys(sched, ["type", *SCHEDULER_KEYS[kind]], f"{where}: scheduler ({kind})")
    searcher = dict(raw.get("searcher") or {"type": "optuna"})
    reject_unknown_keys(searcher, ["type", "n_startup", "seed", "start_from_recipe"], f"{where}: searcher")
    if searcher.get("type", "optuna") not in SEARCHERS:
        raise ConfigError(f"{where}: searcher.type must be one of {', '.join(SEARCHERS)}")
    if searcher.get("type", "optuna") != "random" and any("grid" in s for s in search.values()):
        raise ConfigError(f"{where}: grid values need searcher.type: random (model-based searchers sample)")
    res = raw.get("resources") or {}
    reject_unknown_keys(res, ["workers_per_trial", "cpus_per_worker"], f"{where}: resources")
    try:  # value types and ranges (unknown keys were named above, with the closest allowed one)
        checked = SearchFileSchema(samples=raw.get("samples", 8), max_concurrent=raw.get("max_concurrent"),
                                   scheduler=sched, searcher=searcher, resources=res)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{where}: {'.'.join(map(str, err['loc']))}: {err['msg'].lower()}, got "
                          f"{err.get('input')!r}") from None
    samples, mc = checked.samples, checked.max_concurrent
    wpt, cpw = checked.resources.workers_per_trial, checked.resources.cpus_per_worker
    if kind == "pbt":
        _check_pbt(where, search, cw, searcher, wpt)
    return TuneSettings(train=train, search=search, class_weights=cw, scheduler=sched, searcher=searcher,
                        samples=samples, workers_per_trial=wpt, cpus_per_worker=cpw, max_concurrent=mc)


def _check_pbt(where: str, search: dict, cw: dict, searcher: dict, workers_per_trial: int) -> None:
    """PBT samples the first configs itself, exploits Tune checkpoints (in-process trials report them) and mutates
    only what a restored trial can take over."""
    if searcher.get("type", "optuna") != "random":
        raise ConfigError(f"{where}: scheduler.type pbt samples and mutates configs itself; set searcher.type: random")
    if workers_per_trial:
        raise ConfigError(f"{where}: scheduler.type pbt needs in-process trials (resources.workers_per_trial: 0): "
                          "only those report checkpoints Tune can hand to another trial")
    fixed = sorted(set(search) - set(PBT_MUTABLE))
    if fixed:
        raise ConfigError(f"{where}: scheduler.type pbt cannot change search.{fixed[0]} inside a running trial; "
                          f"search only {', '.join(PBT_MUTABLE)} and class weights")
    if not (set(search) & set(PBT_MUTABLE) or cw.get("per_class") or "inverse_frequency_exponent" in cw):
        raise ConfigError(f"{where}: scheduler.type pbt needs something to mutate: search one of "
                          f"{', '.join(PBT_MUTABLE)} or class_weights.per_class")


def load_settings(path: str | dict[str, Any] | None, overrides: dict[str, Any], extra: dict[str, Any]
                  ) -> TuneSettings:
    """The search file (or its contents, e.g. a resumed search's saved settings), then CLI flags: training flags
    override `train:`, tune flags their own keys."""
    raw = dict(path) if isinstance(path, dict) else load_yaml(path) if path else {}
    path = "saved search settings" if isinstance(path, dict) else path
    raw = {**raw, "train": {**(raw.get("train") or {}), **overrides}}
    for key, value in extra.items():
        if value is None:
            continue
        if key in ("workers_per_trial",):
            raw["resources"] = {**(raw.get("resources") or {}), key: value}
        else:
            raw[key] = value
    return parse_settings(raw, path or "command line")


# ---------------------------------------------------------------- trial side


def trial_train_config(config: dict[str, Any], num_classes: int) -> TrainConfig:
    """A trial's full TrainConfig: its `train` entry, with the sampled per-class weights (if any) as class_weights."""
    # searchers may sample numpy scalars; the schema takes Python numbers only
    tc = {k: v.item() if hasattr(v, "item") and not isinstance(v, (list, dict)) else v
          for k, v in config["train"].items()}
    sampled = {int(k): float(v) for k, v in (config.get("class_weights") or {}).items()}
    if sampled:
        tc["class_weights"] = [sampled.get(i, 1.0) for i in range(num_classes)]
    return TrainConfig.from_dict(tc, where="trial config")


def trial_func(config: dict[str, Any], *, data: dict[str, Any], tune_dir: str, use_gpu: bool) -> None:
    """Tune's driver function for one trial (constants bound with `tune.with_parameters`). An in-process trial
    writes its run folder into Tune's trial folder, next to the checkpoints Tune keeps; a Train-backed trial's
    TorchTrainer keeps its run (and its checkpoints) under `trials/<trial id>`."""
    from ray import tune

    from segengine.ray_adapter import make_trainer
    from segengine.reporting import FATAL_FILE
    from segengine.worker import TrainingError, train_func

    cfg = trial_train_config(config, len(data["meta"]["classes"]))
    trial_id = tune.get_context().get_trial_id()
    if cfg.workers == 0:
        run = {"run_dir": storage.join(tune_dir, trial_id), "verbose": False, "reporter": "tune"}
        train_func({"train": cfg.to_dict(), "data": data, "run": run})
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    trials_root = storage.join(tune_dir, TRAIN_BACKED_FOLDER)
    run = {"run_dir": storage.join(trials_root, trial_id), "verbose": False, "reporter": "train"}
    trainer = make_trainer(train_func, {"train": cfg.to_dict(), "data": data, "run": run}, cfg,
                           storage_path=trials_root, name=trial_id, use_gpu=use_gpu, callbacks=[TuneReportCallback()])
    trainer.fit()
    marker = storage.join(run["run_dir"], FATAL_FILE)
    if storage.exists(marker):  # the workers' deterministic error, recorded rather than raised so Train did not retry
        raise TrainingError(storage.read_text(marker))


# ---------------------------------------------------------------- driver side


def _space(settings: TuneSettings):
    from ray import tune

    makers = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
              "randint": lambda a: tune.randint(*a), "choice": tune.choice, "grid": tune.grid_search}
    space = {key: makers[d](a) for key, spec in settings.search.items() for d, a in spec.items()}
    return space


def _class_weight_space(settings: TuneSettings, meta: segdata.DatasetMeta) -> dict[str, Any]:
    """Sampled per-class weights by class index (the `class_weights` entry of the param space)."""
    from ray import tune

    space = {}
    for name, (lo, hi) in (settings.class_weights.get("per_class") or {}).items():
        idx = meta.classes.index(name) if name in meta.classes else (int(name) if str(name).isdigit() else None)
        if idx is None or idx >= meta.num_classes:
            raise ConfigError(f"class_weights.per_class: unknown class '{name}'; classes: {', '.join(meta.classes)}")
        space[str(idx)] = tune.uniform(lo, hi)
    return space


def param_space(settings: TuneSettings, cfg: TrainConfig, meta: segdata.DatasetMeta) -> dict[str, Any]:
    """{"train": the base config with its searched keys as distributions, "class_weights": {index: weight}}."""
    from ray import tune

    train = {**cfg.to_dict(), **_space(settings)}
    if "inverse_frequency_exponent" in settings.class_weights:
        train[EXPONENT_KEY] = tune.uniform(*settings.class_weights["inverse_frequency_exponent"])
    return {"train": train, "class_weights": _class_weight_space(settings, meta)}


def searched_train(space: dict[str, Any]) -> list[str]:
    """Training keys the space samples (distributions or grids)."""
    from ray.tune.search.sample import Domain

    return [key for key, value in space["train"].items()
            if isinstance(value, Domain) or (isinstance(value, dict) and "grid_search" in value)]


def searched_columns(space: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """results.csv column -> (entry, key) of every sampled value: `lr`, `class_weight_exponent`, `class_weight_1`."""
    columns = {key: ("train", key) for key in searched_train(space)}
    columns.update({f"{WEIGHT_LABEL}{idx}": ("class_weights", idx) for idx in space["class_weights"]})
    return columns


def _value(config: dict[str, Any], where: tuple[str, str]) -> Any:
    return (config.get(where[0]) or {}).get(where[1])


def make_scheduler(settings: TuneSettings, space: dict[str, Any], max_epochs: int):
    """ASHA (stops weak trials at rungs), FIFO, or PBT (weak trials continue from a strong trial's checkpoint with
    mutated lr / decay / class weights, every `perturbation_interval` epochs)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    sched = settings.scheduler
    kind = sched.get("type", "asha")
    if kind == "asha":
        grace = sched.get("grace_period", 1)
        if grace > max_epochs:
            print(f"note: ASHA grace_period {grace} exceeds the {max_epochs} epochs; using {max_epochs}")
        return ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=min(grace, max_epochs),
                             reduction_factor=sched.get("reduction_factor", 3))
    if kind == "fifo":
        return FIFOScheduler()
    searched = searched_train(space)
    def mutation(value: Any) -> Any:  # a grid mutates to one of its values
        return list(value["grid_search"]) if isinstance(value, dict) else value

    mutations = {"train": {k: mutation(space["train"][k]) for k in searched if k in PBT_MUTABLE},
                 "class_weights": dict(space["class_weights"])}
    return PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=sched.get("perturbation_interval", 2),
        quantile_fraction=sched.get("quantile_fraction", 0.25),
        resample_probability=sched.get("resample_probability", 0.25),
        hyperparam_mutations={k: v for k, v in mutations.items() if v})


def plan_concurrency(settings: TuneSettings, capacity: dict[str, float], use_gpu: bool) -> tuple[dict, int]:
    """Trial resources and how many trials fit at once, so no trial waits forever for CPUs."""
    from segengine.ray_adapter import ResourceError

    wpt, cpw = settings.workers_per_trial, settings.cpus_per_worker
    if wpt == 0:
        resources = {"cpu": cpw, "gpu": 1 if use_gpu else 0}
        per_trial_cpu = cpw
    else:  # the trial's driver only waits; a tiny memory request keeps Tune from rejecting it as empty
        resources = {"cpu": 0, "memory": 64 * 1024 * 1024}
        per_trial_cpu = wpt * cpw
    if per_trial_cpu > capacity["CPU"]:
        raise ResourceError(f"one trial needs {per_trial_cpu} CPUs ({max(wpt, 1)} worker(s) x {cpw} CPU) but the "
                            f"cluster has {capacity['CPU']:g}; lower resources.workers_per_trial or cpus_per_worker")
    fit = int(capacity["CPU"] // per_trial_cpu)
    if use_gpu:
        fit = min(fit, int(capacity["GPU"] // max(wpt, 1)))
    wanted = settings.max_concurrent or fit
    return resources, max(1, min(wanted, fit, trial_count(settings)))


def trial_count(settings: TuneSettings) -> int:
    """Tune runs `samples` trials per combination of grid values."""
    return settings.samples * math.prod(len(a) for spec in settings.search.values() for d, a in spec.items()
                                        if d == "grid")


def recipe_point(settings: TuneSettings, space: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's own values of the searched keys (class weights 1 where the recipe sets none), flattened as
    Optuna names them: the search's first trial, so that it cannot end below the recipe it searches around.
    None when a value lies outside its range, or a key is a grid (grids already fix their points)."""
    from ray.tune.search.sample import Categorical, Domain

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


def _searcher(settings: TuneSettings, metric: str, mode: str, concurrent: int, start: dict[str, Any] | None):
    kind = settings.searcher.get("type", "optuna")
    seed = settings.searcher.get("seed", settings.train.seed)
    if kind == "random":
        return None
    if kind == "hyperopt":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.hyperopt import HyperOptSearch

        n = settings.searcher.get("n_startup") or max(2, settings.samples // 3)
        return ConcurrencyLimiter(HyperOptSearch(metric=metric, mode=mode, n_initial_points=n, random_state_seed=seed),
                                  max_concurrent=concurrent)
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created ..." per search
    # TPE needs random start-up trials; a third of the budget (at least 2) fits small searches.
    n = settings.searcher.get("n_startup") or max(2, settings.samples // 3)
    sampler = optuna.samplers.TPESampler(n_startup_trials=n, seed=seed)
    return ConcurrencyLimiter(OptunaSearch(metric=metric, mode=mode, sampler=sampler,
                                           points_to_evaluate=[start] if start else None), max_concurrent=concurrent)


class ProgressLines:
    """A line per trial-epoch and per finished trial: enough to follow a search without Tune's verbose tables."""

    def __init__(self, metric: str, searched: dict[str, tuple[str, str]]):
        from ray.tune import Callback

        outer = self

        class _Cb(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer.line(trial, f"epoch {result.get('epoch', '?'):>3}  {metric} "
                                  f"{result.get(metric, float('nan')):.4f}  val_loss "
                                  f"{result.get('val_loss', float('nan')):.4f}")

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.line(trial, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.line(trial, "FAILED (see its error.txt)")

        self.metric, self.searched, self.callback = metric, searched, _Cb()
        self.start = time.perf_counter()

    def line(self, trial, text: str) -> None:
        params = "  ".join(f"{k}={_fmt(_value(trial.config, where))}" for k, where in self.searched.items())
        print(f"[{time.perf_counter() - self.start:6.0f}s] {trial.trial_id}  {params}  {text}", flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _disk_usage(path: str) -> int:
    if storage.is_uri(path):
        return -1
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def tune_run(settings: TuneSettings, *, name: str | None, storage_root: str, address: str | None,
             resume: bool, overwrite: bool) -> dict[str, Any]:
    """Run (or resume) a search; returns the results rows, the best row and paths."""
    from ray import tune

    from segengine import ray_adapter

    base = replace(settings.train, name=name or f"tune-{settings.train.encoder}-{time.strftime('%Y%m%d-%H%M%S')}",
                   storage=storage_root, address=address, workers=settings.workers_per_trial,
                   cpus_per_worker=settings.cpus_per_worker)
    exponent_searched = "inverse_frequency_exponent" in settings.class_weights
    prep = prepare(base, resume=resume, overwrite=overwrite,
                   frequencies=exponent_searched or base.class_weight_exponent is not None)
    cfg, meta, tune_dir = prep.cfg, prep.meta, prep.run_dir
    metric, mode = cfg.metric, cfg.mode
    with ray_adapter.ray_session(cfg.address, cfg.plugins):
        check_storage_for_cluster(cfg.storage, alive_node_ips())
        use_gpu = ray_adapter.wants_gpu(cfg, cfg.workers)
        resources, concurrent = plan_concurrency(settings, ray_adapter.cluster_capacity(), use_gpu)
        if not resume:  # only once the search can start: a refused one leaves nothing behind
            save_config(tune_dir, cfg)
            storage.write_bytes(storage.join(tune_dir, "search.yaml"), yaml.safe_dump(
                {"search": settings.search, "class_weights": settings.class_weights,
                 "scheduler": settings.scheduler, "searcher": settings.searcher, "samples": settings.samples,
                 "resources": {"workers_per_trial": settings.workers_per_trial,
                               "cpus_per_worker": settings.cpus_per_worker}},
                sort_keys=False).encode())
        space = param_space(settings, cfg, meta)
        max_epochs = min(settings.scheduler.get("max_epochs", cfg.epochs), cfg.epochs)
        scheduler = make_scheduler(settings, space, max_epochs)
        searched = searched_columns(space)
        start = (recipe_point(settings, space) if settings.searcher.get("type", "optuna") == "optuna"
                 and settings.searcher.get("start_from_recipe", True) else None)
        print(f"search     {tune_dir}")
        print(f"trials     {settings.samples} sample(s) of {', '.join(searched) or 'nothing'}; "
              f"{settings.scheduler.get('type', 'asha')} scheduler, {settings.searcher.get('type', 'optuna')} "
              f"searcher, up to {max_epochs} epochs each")
        if start:
            values = ", ".join(f"{key.replace('class_weights/', WEIGHT_LABEL)} "
                               f"{f'{value:g}' if isinstance(value, float) else value}" for key, value in start.items())
            print(f"           the first trial is the recipe's own values ({values.replace('train/', '')})")
        per = ("in-process (1 worker)" if cfg.workers == 0
               else f"{cfg.workers} Ray Train worker(s) x {cfg.cpus_per_worker} CPU")
        print(f"resources  {per} per trial{', GPU' if use_gpu else ''}; {concurrent} trial(s) at once on "
              f"{ray_adapter.cluster_capacity()['CPU']:g} CPUs", flush=True)
        print(f"curves     tensorboard --logdir {tune_dir}   (each trial's tensorboard/; trials.png at the end)")
        progress = ProgressLines(metric, searched)
        trainable = tune.with_resources(tune.with_parameters(
            trial_func, data=prep.data, tune_dir=tune_dir, use_gpu=use_gpu), resources)
        fs_args = ray_adapter.storage_args(cfg.storage)
        # PBT hands a trial's checkpoint to others some time after it was reported: keep a few more
        keep = max(cfg.keep_checkpoints, 3) if settings.scheduler.get("type") == "pbt" else cfg.keep_checkpoints
        run_config = tune.RunConfig(
            name=cfg.name, callbacks=[progress.callback, *tracking.tune_callbacks(cfg, cfg.name, tune_dir)], verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric,
                                                    checkpoint_score_order=mode), **fs_args)
        exp_path = storage.join(cfg.storage, cfg.name)
        if resume and tune.Tuner.can_restore(exp_path if storage.is_uri(exp_path) else exp_path):
            tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=fs_args.get("storage_filesystem"))
        elif resume:
            raise RunError(f"nothing to resume: {exp_path} holds no Tune experiment state")
        else:
            tuner = tune.Tuner(trainable, param_space=space, run_config=run_config, tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=settings.samples, scheduler=scheduler,
                search_alg=_searcher(settings, metric, mode, concurrent, start), max_concurrent_trials=concurrent,
                # in-process trials reuse their actor (no restart per trial); a Train-backed trial's actor cannot
                # be reset after its trainer ran (Tune then waits forever), and starts in under a second anyway
                reuse_actors=settings.workers_per_trial == 0, trial_dirname_creator=lambda t: t.trial_id))
        try:
            with tune_output_off():
                grid = tuner.fit()  # Tune turns Ctrl-C into a clean stop and returns the results so far
        except KeyboardInterrupt:
            grid = tune.Tuner.restore(exp_path, trainable).get_results()
        interrupted = grid.num_terminated + grid.num_errors < len(grid)
        return finish(grid, cfg, meta.num_classes, tune_dir, searched, max_epochs, interrupted,
                      pbt=settings.scheduler.get("type") == "pbt")


def _best_checkpoint(result, metric: str, mode: str) -> str | None:
    """The trial's best checkpoint: Tune's own (in-process trials), else the `checkpoint_path` a Train-backed trial
    reported with its best epoch (its TorchTrainer keeps the best ones)."""
    if result.best_checkpoints:
        best = result.get_best_checkpoint(metric, mode)
        return best.path if best is not None else None
    df = result.metrics_dataframe
    if df is None or metric not in df.columns or "checkpoint_path" not in df.columns or df[metric].isna().all():
        return None
    row = df[metric].idxmax() if mode == "max" else df[metric].idxmin()
    return str(df.loc[row, "checkpoint_path"]) or None


def _best_trial(grid, metric: str, mode: str) -> str | None:
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="all", filter_nan_and_inf=True)
    except RuntimeError:  # no trial reported the metric
        return None
    return best.path.rstrip("/").rsplit("/", 1)[-1]


@contextmanager
def tune_output_off():
    """Tune's own console output (its table and a TensorBoard hint for Ray's staging folder) off: ProgressLines
    and the plan lines say what matters. RAY_AIR_NEW_OUTPUT=0 with verbose=0 is Tune's quiet mode."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def exploit_count(tune_dir: str) -> int:
    """How often PBT made a trial continue from another's checkpoint (Tune logs each in pbt_global.txt)."""
    path = storage.join(tune_dir, "pbt_global.txt")
    return len(storage.read_text(path).splitlines()) if storage.exists(path) else 0


def finish(grid, cfg: TrainConfig, num_classes: int, tune_dir: str, searched: dict[str, tuple[str, str]],
           max_epochs: int, interrupted: bool, pbt: bool = False) -> dict[str, Any]:
    """Results table (printed + CSV) from Tune's ResultGrid, best.yaml, curves plot."""
    metric, mode = cfg.metric, cfg.mode
    sign = 1 if mode == "max" else -1
    rows, curves = [], {}
    for result in grid:
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]
        df = result.metrics_dataframe
        hist = df if df is not None and metric in getattr(df, "columns", []) else None
        values = hist[metric].tolist() if hist is not None else []
        epochs = hist["epoch"].tolist() if hist is not None else []
        curves[trial_id] = (epochs, values)
        finite = [v for v in values if v == v]
        best_value = (max(finite) if mode == "max" else min(finite)) if finite else float("nan")
        run_dir = (storage.join(tune_dir, trial_id) if cfg.workers == 0
                   else storage.join(tune_dir, TRAIN_BACKED_FOLDER, trial_id))
        status = "error" if result.error else ("stopped" if len(epochs) and max(epochs) < max_epochs and
                                                 len(epochs) < max_epochs else "finished")
        if result.error is not None and not epochs:
            status = "error"
        startup = (float(hist["time_this_iter_s"].iloc[0] - hist["epoch_time_s"].iloc[0])
                   if hist is not None and "time_this_iter_s" in hist.columns and len(hist) else float("nan"))
        sampled = {k: _value(result.config, where) for k, where in searched.items()}
        rows.append({"trial": trial_id, **sampled, "startup_s": startup,
                     f"best_{metric}": best_value, "epochs": int(max(epochs)) if epochs else 0, "status": status,
                     "error": str(result.error).splitlines()[-1][:200] if result.error else "",
                     "run_dir": run_dir, "checkpoint": _best_checkpoint(result, metric, mode),
                     "_config": result.config})
    rows.sort(key=lambda r: (-sign * r[f"best_{metric}"]) if r[f"best_{metric}"] == r[f"best_{metric}"] else math.inf)
    best_id = _best_trial(grid, metric, mode)
    best = next((r for r in rows if r["trial"] == best_id and math.isfinite(r[f"best_{metric}"])), None)
    best_ckpt = best["checkpoint"] if best else None
    exploits = exploit_count(tune_dir) if pbt else 0
    table = write_results(rows, searched, metric, tune_dir)
    print("\n" + table)
    if best is not None:
        best_cfg = trial_train_config(best["_config"], num_classes)
        best_cfg = replace(best_cfg, name=None, workers=max(best_cfg.workers, 1))
        text = (f"# best trial {best['trial']} of search {cfg.name}: {metric} {best[f'best_{metric}']:.4f}\n"
                f"# best checkpoint: {best_ckpt}\n# reproduce: python launch.py train --config best.yaml\n")
        if pbt:
            text += (f"# PBT changed this trial's values while it ran (pbt_policy_{best['trial']}.txt); these are "
                     "its last ones\n")
        text += yaml.safe_dump(redact(best_cfg.to_dict()), sort_keys=False)
        storage.write_bytes(storage.join(tune_dir, "best.yaml"), text.encode())
        storage.write_bytes(storage.join(tune_dir, "best.json"), json.dumps(
            {"trial": best["trial"], metric: best[f"best_{metric}"], "checkpoint": best_ckpt}, indent=2).encode())
        print(f"best trial       {best['trial']}  {metric} {best[f'best_{metric}']:.4f}")
        print(f"best config      {storage.join(tune_dir, 'best.yaml')}")
        print(f"best checkpoint  {best_ckpt}")
    if pbt:
        print(f"PBT exploits     {exploits} (a weaker trial continued from a stronger one's checkpoint; "
              "pbt_global.txt)")
    _plot(curves, metric, max_epochs, tune_dir)
    used = _disk_usage(tune_dir)
    if used >= 0:
        print(f"disk used        {used / 2**20:.1f} MiB in {tune_dir}")
    if interrupted:
        print("\nnot all trials finished: results so far are written; resume with:\n"
              f"  python launch.py tune --name {cfg.name} --storage {cfg.storage} --resume", file=sys.stderr)
    elif best is None:
        reason = next((re.sub(r"^[\w.]+\.(\w+Error): ", "", r["error"]) for r in rows if r["error"]),
                      "no trial reported it")
        raise RunError(f"no trial produced {metric}: {reason} (results.csv and each trial's error.txt in {tune_dir})")
    return {"rows": rows, "best": best, "best_checkpoint": best_ckpt, "tune_dir": tune_dir, "exploits": exploits}


def write_results(rows: list[dict[str, Any]], searched: dict[str, tuple[str, str]], metric: str, tune_dir: str
                  ) -> str:
    cols = ["trial", *searched, f"best_{metric}", "epochs", "status", "error"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(storage.join(tune_dir, "results.csv"), out.getvalue().encode())
    shown = cols[:-1]
    cells = [[_fmt(r.get(c)) for c in shown] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _plot(curves: dict[str, tuple[list, list]], metric: str, max_epochs: int, tune_dir: str) -> None:
    import tempfile
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for trial_id, (epochs, values) in curves.items():
        if not epochs:
            continue
        (line,) = ax.plot(epochs, values, marker="o", ms=3, label=trial_id)
        if max(epochs) < max_epochs:  # where ASHA stopped it
            ax.plot(epochs[-1], values[-1], marker="x", ms=10, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (x = stopped early)")
    ax.grid(alpha=0.3)
    if 0 < sum(1 for epochs, _ in curves.values() if epochs) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "trials.png"
        fig.savefig(png)
        storage.write_bytes(storage.join(tune_dir, "trials.png"), png.read_bytes())
    plt.close(fig)
