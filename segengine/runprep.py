"""Preparing a run on the driver, shared by `train` and `tune`: absolute paths, the run-name guard, plugin and size
checks, the dataset validated once, the saved config. Everything a user can get wrong is refused here, before Ray
starts; what it validated travels to the workers as `PreparedRun.data` so no worker decodes the dataset again."""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import yaml

import plugins
import segdata
import zoo
from segengine import storage
from segengine.cluster import redact
from segengine.config import ConfigError, TrainConfig, diff_configs
from segengine.metrics import epoch_metric_names
from segengine.precision import Precision

CONFIG_FILE = "config.yaml"
FOLDS_FILE = "folds.json"  # the fold lists of a cross-validated run or search
# Keys that may change on --resume: the epochs or the time budget, and how the driver reaches the cluster.
RESUMABLE_KEYS = {"epochs", "budget_s", "address", "resource_wait_s"}


class RunError(RuntimeError):
    """A run that cannot start or failed; one line for the CLI."""

    user_error = True


@dataclass
class PreparedRun:
    """A checked config and what the driver learnt about the data. `data` is the worker function's `data` entry:
    the dataset's metadata, the validated train/val pairs (paths relative to the root) and, when the recipe derives
    class weights from them, the training labels' class frequencies."""

    cfg: TrainConfig
    run_dir: str
    meta: segdata.DatasetMeta
    data: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return {"train": len(self.data["train"]), "val": len(self.data["val"])}

    def worker_config(self, reporter: str, *, run_dir: str | None = None, verbose: bool = True,
                      tracking: dict[str, str] | None = None) -> dict[str, Any]:
        """The worker function's whole input: training config, where and how to report, the validated data, and
        the MLflow run rank 0 logs to (`segengine.tracking`)."""
        return {"train": self.cfg.to_dict(), "data": self.data,
                "run": {"run_dir": run_dir or self.run_dir, "reporter": reporter, "verbose": verbose,
                        "tracking": tracking}}


def default_name(cfg: TrainConfig) -> str:
    return f"{cfg.encoder}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Absolute paths or URIs for everything a worker opens (Train workers run in their own working directory)."""
    data = cfg.data
    if not segdata.is_synth(data) and not storage.is_uri(data):
        data = storage.resolve(data)
    return replace(cfg, data=data, storage=storage.resolve(cfg.storage),
                   plugins=plugins.resolve_plugin_refs(cfg.plugins))


def validate_data(cfg: TrainConfig, *, frequencies: bool = False) -> tuple[segdata.DatasetMeta, dict[str, Any]]:
    """Open and check the dataset with the run's label settings, once: a broken one is refused before any worker
    starts, and the workers get the validated pairs (and the class frequencies, with the same settings)."""
    root = segdata.resolve_data(cfg.data)
    folder = segdata.open_dataset(root, num_classes=cfg.num_classes, label_mode=cfg.label_mode,
                                  threshold=cfg.threshold, ignore_index=cfg.ignore_index,
                                  val_fraction=cfg.val_fraction)
    train = segdata.validated_samples(folder, cfg.train_split, cfg.skip_bad)
    val = segdata.validated_samples(folder, cfg.val_split, cfg.skip_bad)
    freq = segdata.class_frequencies(train, folder.meta).tolist() if frequencies else None
    return folder.meta, {"root": root, "meta": folder.meta.to_dict(), "train": segdata.portable_samples(train, root),
                         "val": segdata.portable_samples(val, root), "frequencies": freq}


def guard_run_name(run_dir: str, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """New name: start. Existing name: refuse unless --resume (same config but the epoch budget) or --overwrite."""
    saved_path = storage.join(run_dir, CONFIG_FILE)
    exists = storage.exists(saved_path) or bool(storage.list_dirs(run_dir))
    if exists and overwrite:
        storage.delete_dir(run_dir)
        return
    if exists and not resume:
        raise RunError(f"run '{cfg.name}' already exists in {cfg.storage}; add --resume to continue it from its "
                       f"latest checkpoint, or --overwrite to delete it and start again")
    if resume and not exists:
        raise RunError(f"nothing to resume: no run '{cfg.name}' in {cfg.storage} (drop --resume to start it)")
    if resume:
        saved = yaml.safe_load(storage.read_text(saved_path)) if storage.exists(saved_path) else {}
        differ = [k for k in diff_configs(saved, cfg.to_dict()) if k.split(".")[0] not in RESUMABLE_KEYS]
        if differ:
            raise RunError(f"--resume with a different config: {', '.join(differ)} differ from the saved "
                           f"{saved_path}; only the epoch budget may change (use a new --name for a new run)")


def save_config(run_dir: str, cfg: TrainConfig) -> None:
    text = yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False)
    storage.write_bytes(storage.join(run_dir, CONFIG_FILE), text.encode())


def check_sizes(cfg: TrainConfig, spec: zoo.EncoderSpec) -> None:
    """The network input (and the sliding-validation window) must be multiples of the encoder's input multiple;
    a worker would find out only after Ray started."""
    m = spec.input_multiple
    sizes = {"input_size": cfg.input_size}
    if cfg.validation == "sliding":
        sizes["val_window"] = cfg.window
    for key, (h, w) in sizes.items():
        if h % m or w % m:
            down = [max(m, v // m * m) for v in (h, w)]
            up = [-(-v // m) * m for v in (h, w)]
            raise ConfigError(f"{key} {h}x{w} is not a multiple of {m} for encoder '{spec.name}'; use e.g. "
                              f"{down[0]} {down[1]} or {up[0]} {up[1]}")


def check_metric(cfg: TrainConfig, meta: segdata.DatasetMeta) -> None:
    """Best checkpoints, early stopping and searches rank by `metric`: a name no epoch reports would rank nothing."""
    names = epoch_metric_names(list(meta.classes))
    if cfg.metric not in names:
        close = difflib.get_close_matches(cfg.metric, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"metric '{cfg.metric}' is not reported by training; {hint}reported: {', '.join(names)}")


def check_model(cfg: TrainConfig, meta: segdata.DatasetMeta) -> None:
    """Build the model once on the driver (create_model runs the encoder alone and checks its declared
    features): a bad weights file, a wrong channel declaration or an unknown builder argument is found here, in
    a second or less, instead of by every worker after Ray has started."""
    try:
        zoo.create_model(cfg.encoder, meta.num_classes, in_channels=meta.in_channels, weights=cfg.weights,
                         **cfg.encoder_kwargs)
    except zoo.ZooError as exc:  # the zoo's messages mostly name the encoder already: say it once
        named = str(exc).startswith(f"encoder '{cfg.encoder}'")
        raise ConfigError(str(exc) if named else f"encoder '{cfg.encoder}': {exc}") from None
    except TypeError as exc:  # an argument the builder does not take
        raise ConfigError(f"encoder_kwargs {cfg.encoder_kwargs} for encoder '{cfg.encoder}': {exc}") from None


def prepare(cfg: TrainConfig, *, resume: bool, overwrite: bool, frequencies: bool | None = None) -> PreparedRun:
    """Everything `train` and `tune` check before Ray starts. `frequencies`: measure the training labels' class
    frequencies (default: when the config derives its class weights from them)."""
    cfg = resolve_paths(cfg)
    if cfg.name is None:
        if resume:
            raise RunError("--resume needs --name NAME (the run to continue)")
        cfg = replace(cfg, name=default_name(cfg))
    plugins.autoload()
    plugins.load_plugins(cfg.plugins)
    check_sizes(cfg, zoo.get_spec(cfg.encoder))  # an unknown encoder fails here, with suggestions, before Ray starts
    wanted = cfg.class_weight_exponent is not None if frequencies is None else frequencies
    meta, data = validate_data(cfg, frequencies=wanted)
    if cfg.class_weights is not None and len(cfg.class_weights) != meta.num_classes:
        raise ConfigError(f"class_weights has {len(cfg.class_weights)} values but the dataset has "
                          f"{meta.num_classes} classes ({', '.join(meta.classes)})")
    check_metric(cfg, meta)
    check_model(cfg, meta)
    run_dir = storage.join(cfg.storage, cfg.name)
    guard_run_name(run_dir, cfg, resume=resume, overwrite=overwrite)
    return PreparedRun(cfg, run_dir, meta, data)


def print_plan(prep: PreparedRun, use_gpu: bool) -> None:
    cfg, meta = prep.cfg, prep.meta
    low, high = cfg.worker_range
    mode = ("in-process (debug)" if cfg.workers == 0 else f"{low} Ray Train worker(s)" if low == high
            else f"elastic {low}-{high} Ray Train workers (a lost node leaves fewer; they grow back when it returns)")
    batch = (f"{cfg.batch_size * max(low, 1)}" if low == high
             else f"{cfg.batch_size * low}-{cfg.batch_size * high} (with the workers present)")
    print(f"run        {cfg.name}  ->  {prep.run_dir}")
    print(f"data       {cfg.data or 'synth'}: {prep.counts['train']} train / {prep.counts['val']} val, "
          f"{meta.num_classes} classes ({', '.join(meta.classes)}), {meta.in_channels} channel(s), "
          f"{meta.label_mode} labels")
    schedule = f"decay {cfg.lr_decay:g}/epoch" if cfg.schedule == "exponential" else cfg.schedule
    warmup = f", warm-up {cfg.warmup_steps} steps" if cfg.warmup_steps else ""
    sampling = (f"{cfg.samples_per_epoch or prep.counts['train']} crops of {cfg.input_size[0]}x{cfg.input_size[1]} "
                "per epoch at native resolution" if cfg.sampling == "patch"
                else f"images letterboxed to {cfg.input_size[0]}x{cfg.input_size[1]}")
    validation = (f"sliding {cfg.window[0]}x{cfg.window[1]} windows" if cfg.validation == "sliding"
                  else "letterbox")
    print(f"model      {cfg.encoder}, {sampling}; validation {validation} every {cfg.val_every} epoch(s)")
    print(f"recipe     {cfg.optimizer} lr {cfg.lr:g} {schedule}{warmup}, loss {cfg.loss}, {cfg.epochs} epochs")
    precision = Precision(torch.device("cuda" if use_gpu else "cpu"), cfg.amp).name  # as a worker here would pick
    print(f"workers    {mode}, {cfg.cpus_per_worker} CPU(s) each{', GPU' if use_gpu else ''}, {precision}; batch "
          f"{cfg.batch_size} per worker = {batch} global", flush=True)


def resume_hint(cfg: TrainConfig) -> str:
    return f"python launch.py train --name {cfg.name} --storage {cfg.storage} --resume"


def fold_lists(prep: PreparedRun, k: int) -> list[list[str]]:
    """A cross-validated run's (or search's) folds of the training split: those it recorded (`folds.json`: the
    same recipe, seed and images), else new ones (`segdata.folds`), recorded."""
    from segdata.folds import make_folds

    path = storage.join(prep.run_dir, FOLDS_FILE)
    names = [row[0] for row in prep.data["train"]]
    if storage.exists(path):
        saved = json.loads(storage.read_text(path))
        if sorted(n for fold in saved["folds"] for n in fold) != sorted(names) or len(saved["folds"]) != k:
            raise RunError(f"{path}: its {len(saved['folds'])} folds do not cover this training split's "
                           f"{len(names)} images; the dataset changed since the run started (use a new --name)")
        return saved["folds"]
    samples = segdata.local_samples(prep.data["train"], prep.data["root"])
    folds = make_folds(samples, prep.meta, k, prep.cfg.seed)
    storage.write_bytes(path, json.dumps({"k": k, "seed": prep.cfg.seed, "split": prep.cfg.train_split,
                                          "folds": folds}, indent=1).encode())
    return folds


def fold_data(data: dict[str, Any], folds: list[list[str]], index: int, split: str, seed: int) -> dict[str, Any]:
    """The worker's data for fold `index`: trains on the other folds, validates on its own; the fold lists go
    into its checkpoints' manifests. The class frequencies are measured again on the fold's own images."""
    held = set(folds[index])
    return {**data, "train": [row for row in data["train"] if row[0] not in held],
            "val": [row for row in data["train"] if row[0] in held], "frequencies": None,
            "fold": {"index": index, "folds": folds, "split": split, "seed": seed}}
