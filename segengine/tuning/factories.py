"""Tune's parts built from a `SearchConfig`: the trial scheduler, the searcher, and how many trials fit at once."""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.hyperopt import HyperOptSearch
from ray.tune.search.optuna import OptunaSearch

from segengine.ray_adapter import ResourceError
from segengine.search_config import PBT_MUTABLE, SearchConfig
from segengine.tuning.space import searched_train


def make_scheduler(settings: SearchConfig, space: dict[str, Any]) -> TrialScheduler:
    """ASHA (stops weak trials at rungs), FIFO, or PBT (weak trials continue from a strong trial's checkpoint with
    mutated lr / decay / class weights, every `perturbation_interval` epochs)."""
    sched, max_epochs = settings.scheduler, settings.max_epochs
    if sched.type == "asha":
        if sched.grace_period > max_epochs:
            print(f"note: ASHA grace_period {sched.grace_period} exceeds the {max_epochs} epochs; using {max_epochs}")
        return ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=min(sched.grace_period, max_epochs),
                             reduction_factor=sched.reduction_factor)
    if sched.type == "fifo":
        return FIFOScheduler()

    def mutation(value: Any) -> Any:  # a grid mutates to one of its values
        return list(value["grid_search"]) if isinstance(value, dict) else value

    mutations = {"train": {k: mutation(space["train"][k]) for k in searched_train(space) if k in PBT_MUTABLE},
                 "class_weights": dict(space["class_weights"])}
    return PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=sched.perturbation_interval,
        quantile_fraction=sched.quantile_fraction, resample_probability=sched.resample_probability,
        hyperparam_mutations={k: v for k, v in mutations.items() if v})


def make_searcher(settings: SearchConfig, metric: str, mode: str, concurrent: int, start: dict[str, Any] | None
                  ) -> Searcher | None:
    """Optuna's TPE (starting from the recipe's point), hyperopt, or None (Tune's random sampling)."""
    searcher = settings.searcher
    seed = settings.train.seed if searcher.seed is None else searcher.seed
    startup = searcher.startup_trials(settings.samples)
    if searcher.type == "random":
        return None
    if searcher.type == "hyperopt":
        return ConcurrencyLimiter(HyperOptSearch(metric=metric, mode=mode, n_initial_points=startup,
                                                 random_state_seed=seed), max_concurrent=concurrent)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created ..." per search
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed)
    return ConcurrencyLimiter(OptunaSearch(metric=metric, mode=mode, sampler=sampler,
                                           points_to_evaluate=[start] if start else None), max_concurrent=concurrent)


def reuse_trial_actors(settings: SearchConfig) -> bool:
    """Whether a finished trial's process runs the next trial (`TuneConfig.reuse_actors`): for in-process trials.

    Not for Train-backed trials. It would not be faster: Tune starts the next trial's driver process (0 CPUs) while
    the previous trial trains, so its imports are done by its turn (later trials start in 9.7 s fresh against
    11.2 s reused, `benchmarks/tune_efficiency.py --startup-only`). And under ASHA or PBT Ray 2.60 keeps a stopped
    trial's process for reuse with its `fit()` still running (Train V2 hears nothing of the stop): its workers
    block on their next report holding their CPUs and the search hangs (docs/benchmarks.md, Tune)."""
    return settings.resources.workers_per_trial == 0


def plan_concurrency(settings: SearchConfig, capacity: dict[str, float], use_gpu: bool) -> tuple[dict, int]:
    """Trial resources and how many trials fit at once, so no trial waits forever for CPUs."""
    workers, cpus = settings.resources.workers_per_trial, settings.resources.cpus_per_worker
    if workers == 0:
        resources = {"cpu": cpus, "gpu": 1 if use_gpu else 0}
        per_trial_cpu = cpus
    else:  # the trial's driver only waits; a tiny memory request keeps Tune from rejecting it as empty
        resources = {"cpu": 0, "memory": 64 * 1024 * 1024}
        per_trial_cpu = workers * cpus
    if per_trial_cpu > capacity["CPU"]:
        raise ResourceError(f"one trial needs {per_trial_cpu} CPUs ({max(workers, 1)} worker(s) x {cpus} CPU) but "
                            f"the cluster has {capacity['CPU']:g}; lower resources.workers_per_trial or "
                            "cpus_per_worker")
    fit = int(capacity["CPU"] // per_trial_cpu)
    if use_gpu:
        fit = min(fit, int(capacity["GPU"] // max(workers, 1)))
    wanted = settings.max_concurrent or fit
    return resources, max(1, min(wanted, fit, settings.trial_count))
