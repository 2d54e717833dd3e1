"""The driver side of `launch.py train`: resolve the config, guard the run name, check data and resources, then run
the worker function on Ray Train's TorchTrainer (or in-process with `--workers 0`)."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

import plugins
import segdata
import zoo
from segengine import checkpoint, storage
from segengine.config import ConfigError, TrainConfig, diff_configs

CONFIG_FILE = "config.yaml"
# Keys that may change on --resume: the epoch budget, and how the driver reaches the cluster.
RESUMABLE_KEYS = {"epochs", "address", "resource_wait_s"}


class RunError(RuntimeError):
    """A run that cannot start or failed; one line for the CLI."""

    user_error = True


@dataclass
class PreparedRun:
    cfg: TrainConfig
    run_dir: str
    meta: segdata.DatasetMeta
    counts: dict[str, int]


def default_name(cfg: TrainConfig) -> str:
    return f"{cfg.encoder}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Absolute paths or URIs for everything a worker opens (Train workers run in their own working directory)."""
    data = cfg.data
    if data is not None and not data.startswith("synth") and not storage.is_uri(data):
        data = storage.resolve(data)
    return replace(cfg, data=data, storage=storage.resolve(cfg.storage),
                   plugins=plugins.resolve_plugin_refs(cfg.plugins))


def inspect_data(cfg: TrainConfig) -> tuple[segdata.DatasetMeta, dict[str, int]]:
    """Open and check the dataset on the driver so a broken one is refused before any worker starts."""
    root = segdata.resolve_data(cfg.data)
    folder = segdata.open_dataset(root, num_classes=cfg.num_classes, label_mode=cfg.label_mode,
                                  threshold=cfg.threshold, ignore_index=cfg.ignore_index,
                                  val_fraction=cfg.val_fraction)
    counts = {key: len(segdata.validated_samples(folder, split, cfg.skip_bad))
              for key, split in (("train", cfg.train_split), ("val", cfg.val_split))}
    return folder.meta, counts


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
    from segengine.cluster import redact

    text = yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False)
    storage.write_bytes(storage.join(run_dir, CONFIG_FILE), text.encode())


def prepare(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> PreparedRun:
    cfg = resolve_paths(cfg)
    if cfg.name is None:
        if resume:
            raise RunError("--resume needs --name NAME (the run to continue)")
        cfg = replace(cfg, name=default_name(cfg))
    plugins.autoload()
    plugins.load_plugins(cfg.plugins)
    check_sizes(cfg, zoo.get_spec(cfg.encoder))  # an unknown encoder fails here, with suggestions, before Ray starts
    meta, counts = inspect_data(cfg)
    if cfg.class_weights is not None and len(cfg.class_weights) != meta.num_classes:
        raise ConfigError(f"class_weights has {len(cfg.class_weights)} values but the dataset has "
                          f"{meta.num_classes} classes ({', '.join(meta.classes)})")
    run_dir = storage.join(cfg.storage, cfg.name)
    guard_run_name(run_dir, cfg, resume=resume, overwrite=overwrite)
    return PreparedRun(cfg, run_dir, meta, counts)


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


def ship_plugins(refs: list[str]) -> dict[str, str]:
    """Plugin files travel to the workers as source text in the run config (any node, any working directory);
    module names travel as names and must be importable there (installed, or in the job's working directory)."""
    return {ref: Path(ref).read_text() if Path(ref).is_file() else "" for ref in refs}


def materialize_plugins(shipped: dict[str, str]) -> list[str]:
    """On a worker: write shipped plugin files to a local folder; returns what `plugins.load_plugins` takes."""
    if not any(shipped.values()):
        return list(shipped)
    folder = Path(tempfile.mkdtemp(prefix="unet-zoo-plugins-"))
    refs = []
    for ref, source in shipped.items():
        if source:
            target = folder / Path(ref).name
            target.write_text(source)
            refs.append(str(target))
        else:
            refs.append(ref)
    return refs


def print_plan(prep: PreparedRun, workers: int, use_gpu: bool) -> None:
    cfg, meta = prep.cfg, prep.meta
    mode = "in-process (debug)" if workers == 0 else f"{workers} Ray Train worker(s)"
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
    print(f"workers    {mode}, {cfg.cpus_per_worker} CPU(s) each{', GPU' if use_gpu else ''}; batch "
          f"{cfg.batch_size} per worker = {cfg.batch_size * max(workers, 1)} global", flush=True)


def resume_hint(cfg: TrainConfig) -> str:
    return f"python launch.py train --name {cfg.name} --storage {cfg.storage} --resume"


def run_config_dict(prep: PreparedRun, reporter: str) -> dict[str, Any]:
    return {**prep.cfg.to_dict(), "_run": {"run_dir": prep.run_dir, "reporter": reporter,
                                          "plugin_sources": ship_plugins(prep.cfg.plugins), "verbose": True}}


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run `launch.py train`; returns a summary with the best checkpoint and its metrics."""
    from segengine import raytrain

    prep = prepare(cfg, resume=resume, overwrite=overwrite)
    cfg = prep.cfg
    try:
        if cfg.workers == 0:
            save_config(prep.run_dir, cfg)
            print_plan(prep, 0, False)
            from segengine.worker import train_func

            train_func(run_config_dict(prep, "local"))
        else:
            raytrain.fit(prep, run_config_dict)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last finished epoch's checkpoint is kept; resume with:\n  {resume_hint(cfg)}",
              file=sys.stderr)
        raise
    return summarize(prep)


def summarize(prep: PreparedRun) -> dict[str, Any]:
    cfg = prep.cfg
    best = checkpoint.best_path(prep.run_dir, cfg.metric, cfg.mode)
    metrics = checkpoint.read_manifest(best)["metrics"] if best else {}
    print(f"\nrun folder       {prep.run_dir}  (history.csv, loss.png, miou.png, tensorboard/)")
    if best:
        print(f"best checkpoint  {best}")
        print(f"best {cfg.metric} {metrics.get(cfg.metric, float('nan')):.4f} at epoch {metrics.get('epoch')}")
    return {"run_dir": prep.run_dir, "best_checkpoint": best, "metrics": metrics, "name": cfg.name}
