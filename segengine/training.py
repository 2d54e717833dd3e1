"""`launch.py train` on the driver: prepare the run (`runprep`), then run the worker function on Ray Train's
TorchTrainer through `ray_adapter` (or in this process with `--workers 0`), and summarise the best checkpoint."""

from __future__ import annotations

import sys
from typing import Any

from segengine import checkpoint, tracking
from segengine.config import TrainConfig
from segengine.runprep import PreparedRun, prepare, print_plan, resume_hint, save_config
from segengine.worker import train_func


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run `launch.py train`; returns a summary with the best checkpoint and its metrics."""
    prep = prepare(cfg, resume=resume, overwrite=overwrite)
    cfg = prep.cfg
    target = None
    try:
        if cfg.workers == 0:
            target = tracking.start_run(cfg, prep.run_dir, resume=resume)  # a bad tracking URI: nothing written
            save_config(prep.run_dir, cfg)
            print_plan(prep, False)
            train_func(prep.worker_config("local", tracking=target))
        else:
            from segengine import ray_adapter  # imports Ray: not for --workers 0

            with ray_adapter.ray_session(cfg.address, cfg.plugins):
                use_gpu = ray_adapter.check_cluster(cfg, cfg.worker_range[0])  # elastic: the minimum must fit
                target = tracking.start_run(cfg, prep.run_dir, resume=resume)
                save_config(prep.run_dir, cfg)  # only once the run can start: a refused run leaves nothing behind
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
    summary = summarize(prep)
    tracking.finish_run(target, prep.run_dir, summary["best_checkpoint"], "FINISHED")
    return summary


def summarize(prep: PreparedRun) -> dict[str, Any]:
    cfg = prep.cfg
    best = checkpoint.best_path(prep.run_dir, cfg.metric, cfg.mode)
    metrics = checkpoint.read_manifest(best)["metrics"] if best else {}
    print(f"\nrun folder       {prep.run_dir}  (history.csv, loss.png, miou.png, tensorboard/)")
    if best:
        print(f"best checkpoint  {best}")
        print(f"best {cfg.metric} {metrics.get(cfg.metric, float('nan')):.4f} at epoch {metrics.get('epoch')}")
    return {"run_dir": prep.run_dir, "best_checkpoint": best, "metrics": metrics, "name": cfg.name}
