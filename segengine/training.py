"""`launch.py train` on the driver: prepare the run (`runprep`), then run the worker function on Ray Train's
TorchTrainer through `ray_adapter` (or in this process with `--workers 0`), and summarise the best checkpoint."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from segengine import checkpoint, storage, tracking
from segengine.config import TrainConfig
from segengine.planning import Plan
from segengine.runprep import PreparedRun, prepare, print_plan, resume_hint, save_config
from segengine.worker import train_func


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, plan: Plan | None = None
          ) -> dict[str, Any]:
    """Run `launch.py train` (`plan`: the plan `cfg` came from, saved beside the run); returns a summary with the
    best checkpoint and its metrics."""
    started = time.time()
    prep = prepare(cfg, resume=resume, overwrite=overwrite)
    cfg = prep.cfg
    target = None
    try:
        if cfg.workers == 0:
            target = tracking.start_run(cfg, prep.run_dir, resume=resume)  # a bad tracking URI: nothing written
            _save_config(prep.run_dir, cfg, plan)
            print_plan(prep, False)
            train_func(prep.worker_config("local", tracking=target))
        else:
            from segengine import ray_adapter  # imports Ray: not for --workers 0

            with ray_adapter.ray_session(cfg.address, cfg.plugins):
                use_gpu = ray_adapter.check_cluster(cfg, cfg.worker_range[0])  # elastic: the minimum must fit
                target = tracking.start_run(cfg, prep.run_dir, resume=resume)
                _save_config(prep.run_dir, cfg, plan)  # only once the run can start: a refused run leaves nothing
                print_plan(prep, use_gpu)
                trainer = ray_adapter.make_trainer(train_func, prep.worker_config("train", tracking=target), cfg,
                                                   storage_path=cfg.storage, name=cfg.name, use_gpu=use_gpu)
                ray_adapter.fit(trainer, prep.run_dir)
    except KeyboardInterrupt:
        tracking.finish_run(target, prep.run_dir, None, "KILLED")
        print(f"\ninterrupted: the last finished epoch's checkpoint is kept; resume with:\n  {resume_hint(cfg)}",
              file=sys.stderr)
        raise
    except Exception:
        tracking.finish_run(target, prep.run_dir, None, "FAILED")
        raise
    summary = summarize(prep, started)
    tracking.finish_run(target, prep.run_dir, summary["best_checkpoint"], "FINISHED")
    return summary


def _save_config(run_dir: str, cfg: TrainConfig, plan: Plan | None) -> None:
    """config.yaml, and for a planned run the plan beside it (plan.yaml with its reasons, fingerprint.json)."""
    save_config(run_dir, cfg)
    if plan is not None:
        plan.save(run_dir)


def summarize(prep: PreparedRun, started: float) -> dict[str, Any]:
    cfg = prep.cfg
    best = checkpoint.best_path(prep.run_dir, cfg.metric, cfg.mode)
    metrics = checkpoint.read_manifest(best).metrics if best else {}
    print(f"\nrun folder       {prep.run_dir}  (history.csv, loss.png, miou.png, tensorboard/)")
    budget = budget_spent(prep.run_dir, started)
    if budget:
        print(f"budget           {budget['spent_s'] / 60:.1f} of {budget['budget_s'] / 60:.1f} min for training and "
              f"validation ({budget['epochs']} epochs); start-up {budget['startup_s']:.0f} s not counted")
    if best:
        print(f"best checkpoint  {best}")
        print(f"best {cfg.metric} {metrics.get(cfg.metric, float('nan')):.4f} at epoch {metrics.get('epoch')}")
    return {"run_dir": prep.run_dir, "best_checkpoint": best, "metrics": metrics, "name": cfg.name,
            "budget": budget}


def budget_spent(run_dir: str, started: float) -> dict[str, float] | None:
    """A budgeted run's use of its budget (the worker's timings.json), and the start-up before its clock ran."""
    path = storage.join(run_dir, "timings.json")
    if not storage.exists(path):
        return None
    timings = json.loads(storage.read_text(path))
    budget = timings.get("budget")
    if not budget:
        return None
    return {**budget, "startup_s": max(0.0, budget["clock_start"] - started)}
