"""Tune's driver function for one trial: the worker function in-process, or a TorchTrainer of its own."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from segengine import checkpoint, storage
from segengine.config import TrainConfig
from segengine.manifest import EnsembleFile
from segengine.ray_adapter import make_trainer
from segengine.reporting import FATAL_FILE
from segengine.runprep import fold_data
from segengine.tuning.space import trial_train_config
from segengine.worker import TrainingError, train_func

TRAIN_BACKED_FOLDER = "trials"  # where Train-backed trials' TorchTrainers keep their runs
FINISHED_FILE = "finished.json"  # in a fold's folder: the fold trained to its end (its best checkpoint, metrics)


def trial_run_dir(tune_dir: str, trial_id: str, workers: int) -> str:
    """An in-process trial's run folder is Tune's trial folder (beside the checkpoints Tune keeps); a Train-backed
    trial's TorchTrainer keeps its run under `trials/<trial id>`."""
    return storage.join(tune_dir, trial_id) if workers == 0 else storage.join(tune_dir, TRAIN_BACKED_FOLDER, trial_id)


def trial_func(config: dict[str, Any], *, data: dict[str, Any], tune_dir: str, use_gpu: bool,
               folds: list[list[str]] | None = None) -> None:
    """One trial (constants bound with `tune.with_parameters`); with `folds`, its cross-validation."""
    cfg = trial_train_config(config, len(data["meta"]["classes"]))
    trial_id = tune.get_context().get_trial_id()
    run_dir = trial_run_dir(tune_dir, trial_id, cfg.workers)
    if folds:
        cross_validate(cfg, data, folds, run_dir, use_gpu=use_gpu)
        return
    run_in_trial(cfg, data, run_dir, storage_root=storage.join(tune_dir, TRAIN_BACKED_FOLDER), name=trial_id,
                 use_gpu=use_gpu)


def run_in_trial(cfg: TrainConfig, data: dict[str, Any], run_dir: str, *, storage_root: str, name: str,
                 use_gpu: bool, reporter: str = "tune", report_to_tune: bool = True) -> None:
    """The worker function inside a Tune trial: in the trial's process (with `reporter`), or on a TorchTrainer of
    its own whose run is `storage_root/name` (= `run_dir`), reporting every epoch to Tune if `report_to_tune`."""
    if cfg.workers == 0:
        train_func({"train": cfg.to_dict(), "data": data,
                    "run": {"run_dir": run_dir, "verbose": False, "reporter": reporter}})
        return
    run = {"run_dir": run_dir, "verbose": False, "reporter": "train"}
    trainer = make_trainer(train_func, {"train": cfg.to_dict(), "data": data, "run": run}, cfg,
                           storage_path=storage_root, name=name, use_gpu=use_gpu,
                           callbacks=[TuneReportCallback()] if report_to_tune else None)
    trainer.fit()
    marker = storage.join(run_dir, FATAL_FILE)
    if storage.exists(marker):  # the workers' deterministic error, recorded rather than raised so Train did not retry
        raise TrainingError(storage.read_text(marker))


def fold_dir(run_dir: str, index: int) -> str:
    return storage.join(run_dir, f"fold-{index}")


def finished(run_dir: str, index: int) -> dict[str, Any] | None:
    """Fold `index` of a cross-validated run: its best checkpoint and metrics once it trained to its end."""
    path = storage.join(fold_dir(run_dir, index), FINISHED_FILE)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def train_fold(cfg: TrainConfig, data: dict[str, Any], folds: list[list[str]], index: int, run_dir: str, *,
               use_gpu: bool, reporter: str, report_to_tune: bool) -> dict[str, Any]:
    """Fold `index` of `run_dir` trained inside a Tune trial (its checkpoints in `fold-I/`, where a retry finds
    them), then marked finished with its best checkpoint; returns that mark."""
    target = fold_dir(run_dir, index)
    run_in_trial(cfg, fold_data(data, folds, index, cfg.train_split, cfg.seed), target, storage_root=run_dir,
                 name=f"fold-{index}", use_gpu=use_gpu, reporter=reporter, report_to_tune=report_to_tune)
    best = checkpoint.best_path(target, cfg.metric, cfg.mode)
    if best is None:
        raise TrainingError(f"fold {index} finished without a checkpoint ({target})")
    mark = {"fold": index, "checkpoint": best, "metrics": checkpoint.read_manifest(best).metrics}
    storage.write_bytes(storage.join(target, FINISHED_FILE), json.dumps(mark, indent=1).encode())
    return mark


def cross_validate(cfg: TrainConfig, data: dict[str, Any], folds: list[list[str]], run_dir: str, *,
                   use_gpu: bool) -> None:
    """A search trial of `tune --folds K`: its K folds one after another (those a retry finds finished are
    kept), then one report to Tune: the folds' mean best metric, each fold's, and the trial folder, whose
    `ensemble.json` makes the K fold models one model for evaluate/predict/export."""
    marks = [finished(run_dir, i) or train_fold(cfg, data, folds, i, run_dir, use_gpu=use_gpu, reporter="local",
                                                 report_to_tune=False) for i in range(len(folds))]
    values = [float(m["metrics"].get(cfg.metric, float("nan"))) for m in marks]
    prefix = run_dir.rstrip("/") + "/"
    EnsembleFile(members=[m["checkpoint"].removeprefix(prefix) for m in marks], folds=folds).write(run_dir)
    tune.report({cfg.metric: float(np.mean(values)), f"{cfg.metric}_fold_std": float(np.std(values)),
                 **{f"{cfg.metric}_fold{i}": v for i, v in enumerate(values)},
                 "epoch": max(int(m["metrics"].get("epoch", 0)) for m in marks), "run_epochs": cfg.epochs,
                 "checkpoint_path": run_dir})
