"""Subcommand entry points called by launch.py: parse-level glue only, the work lives in the engine modules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import tune_configs
from segengine.config import ConfigError, TrainConfig, flag_overrides, load_yaml, merge_plugins
from segengine.search_config import SEARCH_FILE, SearchConfig

if TYPE_CHECKING:
    from segengine.planning import Plan

TTA = {None: None, "flip": True, "none": False}  # --tta: the predictor's `mirror` (None: as the recipe validated)


def config_file(ref: str | None) -> str:
    """--config as a file: a path, or the name of a shipped recipe (default: the default search)."""
    found = tune_configs.find_recipe(ref)
    if found is None:
        raise ConfigError(f"config file not found: {ref} (shipped recipes: {', '.join(tune_configs.recipe_names())})")
    return found


def saved_run_config(args: argparse.Namespace, command: str) -> dict:
    """`--resume` without `--config`: the run's (or search's) saved config.yaml, which the flags given override."""
    if not (getattr(args, "resume", False) and args.name):
        return {}
    from segengine import storage
    from segengine.runprep import CONFIG_FILE

    run_dir = storage.join(storage.resolve(args.storage or TrainConfig().storage), args.name)
    saved = storage.join(run_dir, CONFIG_FILE)
    if not storage.exists(saved):
        return {}  # the run-name guard says there is nothing to resume
    raw = yaml.safe_load(storage.read_text(saved)) or {}
    if command == "tune":
        search_file = storage.join(run_dir, SEARCH_FILE)
        search = (yaml.safe_load(storage.read_text(search_file)) or {}) if storage.exists(search_file) else {}
        raw = {"train": raw, **search}  # search.yaml holds the whole search, resources included
    return raw


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Config file first, then the flags the user gave; plugins from both are kept. A search file (the recipes in
    tune_configs/) trains with its `train:` section, so one file is both the recipe and its search."""
    raw = load_yaml(config_file(args.config)) if args.config else saved_run_config(args, "train")
    if "train" in raw and set(raw) <= set(SearchConfig.model_fields):
        raw = dict(raw["train"] or {})
    raw.update(flag_overrides(args))
    raw["plugins"] = merge_plugins(raw.get("plugins") or [], args.plugin)
    return TrainConfig.from_dict(raw, where=args.config or "command line")


def is_planned(args: argparse.Namespace) -> bool:
    """No config means planned: a dataset folder (or URI) without --config and without --resume. The built-in
    synthetic set keeps its shipped recipe (`default.yaml`), so `make tune` stays a 3-minute demo."""
    from segdata.resolve import is_synth

    data = getattr(args, "data", None)
    return not args.config and not args.resume and bool(data) and not is_synth(data)


def _plan(args: argparse.Namespace, flags: dict[str, Any], budget_s: float) -> Plan:
    """The plan for the flags' dataset (the flags are checked first: a bad one fails before the probe)."""
    from segengine.planning import make_plan

    base = TrainConfig.from_dict({**flags, "plugins": merge_plugins([], args.plugin)}, where="command line")
    workers = flags.get("workers")
    plan = make_plan(base, budget_s=budget_s, workers=max(workers) if isinstance(workers, list) else workers,
                     address=flags.get("address"))
    print(plan.table(), flush=True)
    return plan


def train(args: argparse.Namespace) -> int:
    from segengine.training import train as run_train

    plan = None
    if is_planned(args):
        from segengine.planning.plan import DEFAULT_BUDGET_S

        flags = flag_overrides(args)
        if "epochs" in flags and "budget_s" not in flags:  # the user's epoch count wins over the plan's budget
            flags["budget_s"] = None
        plan = _plan(args, flags, flags.get("budget_s") or DEFAULT_BUDGET_S)
        cfg = TrainConfig.from_dict({**plan.config.train.to_dict(), **flags,
                                     "plugins": merge_plugins(plan.config.train.plugins, args.plugin)},
                                    where="command line")
    else:
        cfg = train_config(args)
    if cfg.folds is not None or args.fold is not None:
        from segengine.crossval import train_folds

        summary = train_folds(cfg, fold=args.fold, resume=args.resume, overwrite=args.overwrite, plan=plan,
                              probs=args.probs)
        if not summary.get("missing"):
            _write_report(summary["run_dir"])
        return 0
    if args.probs:
        raise ConfigError("--probs keeps the probabilities of a --folds run; for one model use "
                          "`launch.py evaluate RUN --data DIR --probs` or `predict --probs`")
    summary = run_train(cfg, resume=args.resume, overwrite=args.overwrite, plan=plan)
    _write_report(summary["run_dir"])
    return 0


def _write_report(folder: str) -> None:
    """The report at the end of train and tune; a report that fails costs a warning, never the run."""
    import warnings

    from segengine.report import write_report

    try:
        write_report(folder)
    except Exception as exc:  # the run itself succeeded: say why there is no report, and how to retry
        from zoo._errors import one_line

        warnings.warn(f"no report.html: {one_line(exc)} (retry with `launch.py report {folder}`)", stacklevel=2)


def report(args: argparse.Namespace) -> int:
    """`launch.py report FOLDER`: the HTML page of a run, search or folds run."""
    import plugins
    from segengine.report import write_report

    plugins.autoload()
    plugins.load_plugins(args.plugin or [])
    write_report(args.folder, args.out)
    return 0


def tune(args: argparse.Namespace) -> int:
    """A search: the shipped default on the synthetic set, a file, a resumed search's saved one, or planned for a
    dataset. `--budget T` is the whole search's (Tune's time budget); each trial gets half of it."""
    from segengine.tuning import tune_run

    overrides = {k: v for k, v in flag_overrides(args).items() if k not in ("storage", "name", "address")}
    budget = overrides.pop("budget_s", None)
    extra = {"samples": args.samples, "workers_per_trial": args.workers_per_trial,
             "max_concurrent": args.max_concurrent}
    plan = None
    if is_planned(args):
        from segengine.planning.plan import DEFAULT_BUDGET_S

        plan = _plan(args, {**overrides, "address": args.address}, (budget or 2 * DEFAULT_BUDGET_S) / 2)
        config = plan.config.raw()
        if "epochs" in overrides and budget is None:  # the user's epoch count wins over the plan's budget, as in train
            config["train"]["budget_s"] = None
            config.pop("time_budget_s", None)
    else:
        saved = saved_run_config(args, "tune") if not args.config else {}
        config = saved or config_file(args.config)
    if budget is not None:
        overrides["budget_s"] = budget / 2
        extra["time_budget_s"] = budget
    settings = SearchConfig.load(config, overrides, extra)
    if args.plugin:
        settings.train.plugins = merge_plugins(settings.train.plugins, args.plugin)
    results = tune_run(settings, name=args.name, storage_root=args.storage or settings.train.storage,
                       address=args.address, resume=args.resume, overwrite=args.overwrite, plan=plan)
    _write_report(results["tune_dir"])
    return 0


def plan(args: argparse.Namespace) -> int:
    """`launch.py plan --data DIR`: the recipe file, without training."""
    from segengine.config import format_duration
    from segengine.planning.plan import DEFAULT_BUDGET_S

    flags = {k: v for k, v in vars(args).items() if k in ("data", "num_classes", "label_mode", "threshold",
                                                          "ignore_index") and v is not None}
    run = {k: v for k, v in (("workers", args.workers), ("address", args.address)) if v is not None}
    result = _plan(args, {**flags, **run}, args.budget_s or DEFAULT_BUDGET_S)
    out = Path(args.out)
    out.write_text(result.to_yaml())
    print(f"wrote {out}\n  python launch.py train --config {out}    (within {format_duration(result.budget_s)})\n"
          f"  python launch.py tune --config {out}     (the search around it, within "
          f"{format_duration(result.config.time_budget_s or 0)})")
    return 0


def encoders(args: argparse.Namespace) -> int:
    """`launch.py encoders [PATTERN]`: the registered encoders, installed plugins and --plugin ones included."""
    import plugins
    import zoo

    plugins.autoload()
    plugins.load_plugins(args.plugin or [])
    print(zoo.encoder_table(args.pattern))
    return 0


def _inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """--amp, --device and --batch-size of evaluate/predict, with the predictor's default batch."""
    from segengine.inference.predictor import BATCH

    return {"amp": args.amp, "device": args.device,
            "batch_size": BATCH if args.batch_size is None else args.batch_size}


def evaluate(args: argparse.Namespace) -> int:
    from segengine.inference import evaluate as run_evaluate

    run_evaluate(args.checkpoint, args.data, split=args.split, workers=args.workers, out=args.out,
                 address=args.address, plugin_refs=args.plugin, sliding=args.sliding, mirror=TTA[args.tta],
                 probs=args.probs, **_inference_options(args))
    return 0


def predict(args: argparse.Namespace) -> int:
    """Exit 1 when some inputs were unreadable (the others are written)."""
    from segengine.inference import predict as run_predict

    result = run_predict(args.checkpoint, args.inputs, args.out, sliding=args.sliding, overlap=args.overlap,
                         mirror=TTA[args.tta], counts=args.counts, probs=args.probs, plugin_refs=args.plugin,
                         workers=args.workers,
                         address=args.address, **_inference_options(args))
    return 1 if result.skipped else 0


def export(args: argparse.Namespace) -> int:
    from segengine.inference import export as run_export

    run_export(args.checkpoint, args.format, args.out, plugin_refs=args.plugin)
    return 0


def serve(args: argparse.Namespace) -> int:
    """Until Ctrl-C; exit 0 when stopped."""
    from segengine.serving.app import ServeLimits
    from segengine.serving.run import Replicas, serve_model

    replicas = Replicas(autoscale=tuple(args.autoscale)) if args.autoscale else Replicas(count=args.replicas)
    limits = ServeLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, timeout_s=args.timeout,
                         max_queued=args.max_queued)
    serve_model(args.model, address=args.address, replicas=replicas, host=args.host, port=args.port,
                max_batch=args.max_batch, device=args.device, amp=args.amp, cpus_per_replica=args.cpus_per_replica,
                token_file=args.token_file, plugin_refs=args.plugin or (), limits=limits)
    return 0
