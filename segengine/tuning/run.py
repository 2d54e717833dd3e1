"""A search from start to results: prepare on the driver, build the Tuner (or restore it), fit, summarise."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import yaml
from ray import tune

from segengine import ray_adapter, storage, tracking
from segengine.cluster import alive_node_ips, check_storage_for_cluster
from segengine.config import TrainConfig
from segengine.planning import Plan
from segengine.runprep import PreparedRun, RunError, fold_lists, prepare, save_config
from segengine.search_config import SEARCH_FILE, SearchConfig
from segengine.tuning.factories import make_scheduler, make_searcher, plan_concurrency, reuse_trial_actors
from segengine.tuning.progress import ProgressLines, tune_output_off
from segengine.tuning.results import finish
from segengine.tuning.space import WEIGHT_LABEL, param_space, recipe_point, searched_columns
from segengine.tuning.trial import trial_func


def _base_config(settings: SearchConfig, name: str | None, storage_root: str, address: str | None) -> TrainConfig:
    """The recipe as the trials start from it: the search's name, storage and Ray address, the trial resources."""
    res = settings.resources
    return replace(settings.train, name=name or f"tune-{settings.train.encoder}-{time.strftime('%Y%m%d-%H%M%S')}",
                   storage=storage_root, address=address, workers=res.workers_per_trial,
                   cpus_per_worker=res.cpus_per_worker)


def _print_plan(settings: SearchConfig, prep: PreparedRun, searched: dict, start: dict | None, use_gpu: bool,
                concurrent: int) -> None:
    cfg = prep.cfg
    print(f"search     {prep.run_dir}")
    print(f"trials     {settings.samples} sample(s) of {', '.join(searched) or 'nothing'}; "
          f"{settings.scheduler.type} scheduler, {settings.searcher.type} searcher, up to {settings.max_epochs} "
          "epochs each")
    if start:
        values = ", ".join(f"{key.replace('class_weights/', WEIGHT_LABEL)} "
                           f"{f'{value:g}' if isinstance(value, float) else value}" for key, value in start.items())
        print(f"           the first trial is the recipe's own values ({values.replace('train/', '')})")
    per = ("in-process (1 worker)" if cfg.workers == 0
           else f"{cfg.workers} Ray Train worker(s) x {cfg.cpus_per_worker} CPU")
    print(f"resources  {per} per trial{', GPU' if use_gpu else ''}; {concurrent} trial(s) at once on "
          f"{ray_adapter.cluster_capacity()['CPU']:g} CPUs", flush=True)
    if cfg.folds:
        print(f"folds      each trial trains {cfg.folds} folds of the {prep.counts['train']} '{cfg.train_split}' "
              f"images one after another and is scored by their mean {cfg.metric} (one result per trial: a scheduler "
              "cannot stop it early)")
    if settings.time_budget_s:
        print(f"budget     {settings.time_budget_s / 60:.1f} min for the whole search (Tune stops what runs then)")
    print(f"curves     tensorboard --logdir {prep.run_dir}   (each trial's tensorboard/; trials.png at the end)")


def _tuner(settings: SearchConfig, prep: PreparedRun, trainable, space: dict, callbacks: list,
           concurrent: int, start: dict | None, resume: bool) -> tune.Tuner:
    """A new Tuner, or the saved one of `--resume` (unfinished and errored trials continue)."""
    cfg = prep.cfg
    metric, mode = cfg.metric, cfg.mode
    fs_args = ray_adapter.storage_args(cfg.storage)
    exp_path = storage.join(cfg.storage, cfg.name)
    if resume:
        if not tune.Tuner.can_restore(exp_path):
            raise RunError(f"nothing to resume: {exp_path} holds no Tune experiment state")
        return tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs_args.get("storage_filesystem"))
    # PBT hands a trial's checkpoint to others some time after it was reported: keep a few more
    keep = max(cfg.keep_checkpoints, 3) if settings.scheduler.type == "pbt" else cfg.keep_checkpoints
    run_config = tune.RunConfig(
        name=cfg.name, callbacks=callbacks, verbose=0, failure_config=tune.FailureConfig(max_failures=0),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric,
                                                checkpoint_score_order=mode), **fs_args)
    return tune.Tuner(trainable, param_space=space, run_config=run_config, tune_config=tune.TuneConfig(
        metric=metric, mode=mode, num_samples=settings.samples, scheduler=make_scheduler(settings, space),
        search_alg=make_searcher(settings, metric, mode, concurrent, start), max_concurrent_trials=concurrent,
        time_budget_s=settings.time_budget_s, reuse_actors=reuse_trial_actors(settings),
        trial_dirname_creator=lambda t: t.trial_id))


def tune_run(settings: SearchConfig, *, name: str | None, storage_root: str, address: str | None,
             resume: bool, overwrite: bool, plan: Plan | None = None) -> dict[str, Any]:
    """Run (or resume) a search (`plan`: the plan it came from, saved in the search folder); returns the results
    rows, the best row and paths."""
    base = _base_config(settings, name, storage_root, address)
    exponent_searched = settings.class_weights.inverse_frequency_exponent is not None
    prep = prepare(base, resume=resume, overwrite=overwrite,
                   frequencies=exponent_searched or base.class_weight_exponent is not None)
    cfg, tune_dir = prep.cfg, prep.run_dir
    with ray_adapter.ray_session(cfg.address, cfg.plugins):
        check_storage_for_cluster(cfg.storage, alive_node_ips())
        use_gpu = ray_adapter.wants_gpu(cfg, cfg.workers)
        resources, concurrent = plan_concurrency(settings, ray_adapter.cluster_capacity(), use_gpu)
        if not resume:  # only once the search can start: a refused one leaves nothing behind
            save_config(tune_dir, cfg)
            if plan is not None:
                plan.save(tune_dir)
            sections = yaml.safe_dump(settings.search_sections(), sort_keys=False)
            storage.write_bytes(storage.join(tune_dir, SEARCH_FILE), sections.encode())
        folds = fold_lists(prep, cfg.folds) if cfg.folds else None
        space = param_space(settings, cfg, prep.meta)
        searched = searched_columns(space)
        start = recipe_point(settings, space) if settings.searcher.type == "optuna" and \
            settings.searcher.start_from_recipe else None
        _print_plan(settings, prep, searched, start, use_gpu, concurrent)
        progress = ProgressLines(cfg.metric, searched)
        trainable = tune.with_resources(tune.with_parameters(
            trial_func, data=prep.data, tune_dir=tune_dir, use_gpu=use_gpu, folds=folds), resources)
        tuner = _tuner(settings, prep, trainable, space,
                       [progress, *tracking.tune_callbacks(cfg, cfg.name, tune_dir)], concurrent, start, resume)
        began = time.perf_counter()
        try:
            with tune_output_off():
                grid = tuner.fit()  # Tune turns Ctrl-C into a clean stop and returns the results so far
        except KeyboardInterrupt:
            grid = tune.Tuner.restore(storage.join(cfg.storage, cfg.name), trainable).get_results()
        interrupted = grid.num_terminated + grid.num_errors < len(grid)
        budget = (settings.time_budget_s, time.perf_counter() - began) if settings.time_budget_s else None
        return finish(grid, cfg, prep.meta.num_classes, tune_dir, searched, settings.max_epochs, interrupted,
                      pbt=settings.scheduler.type == "pbt", budget=budget, completed=progress.completed)

