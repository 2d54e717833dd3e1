"""Tune's driver function for one trial: the worker function in-process, or a TorchTrainer of its own."""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from segengine import storage
from segengine.config import TrainConfig
from segengine.ray_adapter import make_trainer
from segengine.reporting import FATAL_FILE
from segengine.tuning.space import trial_train_config
from segengine.worker import TrainingError, train_func

TRAIN_BACKED_FOLDER = "trials"  # where Train-backed trials' TorchTrainers keep their runs


def trial_run_dir(tune_dir: str, trial_id: str, workers: int) -> str:
    """An in-process trial's run folder is Tune's trial folder (beside the checkpoints Tune keeps); a Train-backed
    trial's TorchTrainer keeps its run under `trials/<trial id>`."""
    return storage.join(tune_dir, trial_id) if workers == 0 else storage.join(tune_dir, TRAIN_BACKED_FOLDER, trial_id)


def trial_func(config: dict[str, Any], *, data: dict[str, Any], tune_dir: str, use_gpu: bool) -> None:
    """One trial (constants bound with `tune.with_parameters`)."""
    cfg = trial_train_config(config, len(data["meta"]["classes"]))
    trial_id = tune.get_context().get_trial_id()
    run_in_trial(cfg, data, trial_run_dir(tune_dir, trial_id, cfg.workers),
                 storage_root=storage.join(tune_dir, TRAIN_BACKED_FOLDER), name=trial_id, use_gpu=use_gpu)


def run_in_trial(cfg: TrainConfig, data: dict[str, Any], run_dir: str, *, storage_root: str, name: str,
                 use_gpu: bool, reporter: str = "tune") -> None:
    """The worker function inside a Tune trial: in the trial's process (with `reporter`), or on a TorchTrainer of
    its own whose run is `storage_root/name` (= `run_dir`), reporting every epoch to Tune."""
    if cfg.workers == 0:
        train_func({"train": cfg.to_dict(), "data": data,
                    "run": {"run_dir": run_dir, "verbose": False, "reporter": reporter}})
        return
    run = {"run_dir": run_dir, "verbose": False, "reporter": "train"}
    trainer = make_trainer(train_func, {"train": cfg.to_dict(), "data": data, "run": run}, cfg,
                           storage_path=storage_root, name=name, use_gpu=use_gpu, callbacks=[TuneReportCallback()])
    trainer.fit()
    marker = storage.join(run_dir, FATAL_FILE)
    if storage.exists(marker):  # the workers' deterministic error, recorded rather than raised so Train did not retry
        raise TrainingError(storage.read_text(marker))
