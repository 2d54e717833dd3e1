"""The one place the driver talks to Ray: start, connect and stop it (`ray_session`), check what the cluster can
give, build and fit TorchTrainers, and turn worker failures into one line. Ray's API changes between releases; its
driver-side calls live here (Tune's search API in `tuning.py`, the workers' report calls in `reporting.py`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

import plugins
from segengine import storage
from segengine.cluster import alive_node_ips, check_storage_for_cluster, resolve_address
from segengine.config import TrainConfig
from segengine.reporting import FATAL_FILE
from segengine.runprep import RunError
from zoo._errors import one_line


class ResourceError(RuntimeError):
    """A request the cluster can never satisfy; refused instead of waiting forever."""

    user_error = True


# Ray Train settings for a Ray that launch.py starts itself, unless the user set them (benchmarks/train_overhead.py):
LOCAL_TRAIN_SETTINGS = {
    # no autoscaler drains a local node: Train's preemption watcher has nothing to watch, and its actor logs a
    # core_worker warning at every run
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # the controller takes one report per poll (default every 2 s): epochs shorter than that queue their
    # checkpoints, and a 12-epoch run of 0.2 s epochs spends 44 s instead of 21 s, most of it after the last epoch
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}


# the tracking libraries' credentials and settings, for rank 0 on whichever node it runs (Ray's tracking guide)
TRACKING_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def job_runtime_env(plugin_refs: Sequence[str], local: bool = False) -> dict[str, Any] | None:
    """What every Ray process of the job needs: the auth mode, tracking credentials (`TRACKING_ENV`), and the
    user's plugin files (`plugins.runtime_env`); for a Ray started here (`local`), `LOCAL_TRAIN_SETTINGS` too (on a
    cluster Ray's defaults stay)."""
    env: dict[str, Any] = dict(plugins.runtime_env(plugin_refs))
    env_vars = {k: os.environ[k] for k in ("RAY_AUTH_MODE", *LOCAL_TRAIN_SETTINGS, *TRACKING_ENV) if k in os.environ}
    if local:
        for key, value in LOCAL_TRAIN_SETTINGS.items():
            env_vars.setdefault(key, value)
    if env_vars:
        env["env_vars"] = env_vars
    return env or None


@contextmanager
def ray_session(address: str | None, plugin_refs: Sequence[str] = ()) -> Iterator[None]:
    """Connect to the cluster at `address` ($RAY_ADDRESS) or start a local Ray for the block, then disconnect (or
    stop what it started) and restore RAY_ADDRESS, Ctrl-C included. The plugin files travel as the job's
    `py_modules` (Ray uploads local files at the job level only). Inside an existing Ray session (a notebook, a
    test) the block uses it and leaves it running; its workers then find plugin files at the driver's paths."""
    if ray.is_initialized():
        yield
        return
    saved = os.environ.get("RAY_ADDRESS")
    address = resolve_address(address)
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=True,
                     runtime_env=job_runtime_env(plugin_refs))
        else:
            ray.init(logging_level="ERROR", runtime_env=job_runtime_env(plugin_refs, local=True))
            # Helper processes (Train's placement-group cleaner) find this instance even if other clusters run here.
            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved


def cluster_capacity() -> dict[str, float]:
    res = ray.cluster_resources()
    return {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))}


def wants_gpu(cfg: TrainConfig, workers: int) -> bool:
    if cfg.use_gpu == "no":
        return False
    gpus = cluster_capacity()["GPU"]
    if cfg.use_gpu == "yes" and gpus < max(workers, 1):
        raise ResourceError(f"use_gpu: yes needs {max(workers, 1)} GPU(s) but the cluster has {gpus:g}")
    return gpus >= max(workers, 1)


def _shortfall(workers: int, cpus_per_worker: int, use_gpu: bool) -> str | None:
    cap = cluster_capacity()
    if workers * cpus_per_worker > cap["CPU"]:
        return (f"this run needs {workers * cpus_per_worker} CPUs ({workers} worker(s) x {cpus_per_worker} CPU) but "
                f"the cluster has {cap['CPU']:g}")
    if use_gpu and workers > cap["GPU"]:
        return f"this run needs {workers} GPU(s) but the cluster has {cap['GPU']:g}"
    return None


def check_resources(workers: int, cpus_per_worker: int, use_gpu: bool, *, wait_s: float = 0.0) -> None:
    """Refuse a request the cluster cannot satisfy instead of waiting forever; on an autoscaling cluster
    (`resource_wait_s` > 0) warn and wait that long for nodes to join first."""
    deadline = time.monotonic() + wait_s
    while (short := _shortfall(workers, cpus_per_worker, use_gpu)) is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f" after waiting {wait_s:g} s for nodes to join" if wait_s else ""
            raise ResourceError(f"{short}{waited}; lower --workers or cpus_per_worker"
                                f"{'' if wait_s else ', or set resource_wait_s on an autoscaling cluster'}")
        print(f"waiting up to {left:.0f} s for the autoscaler: {short}", file=sys.stderr, flush=True)
        time.sleep(min(10.0, max(left, 0.1)))


def storage_args(path: str) -> dict[str, Any]:
    """RunConfig storage arguments for a folder or a URI (the filesystem is built once, on the driver)."""
    if not storage.is_uri(path):
        return {"storage_path": path}
    fs, inner = storage.filesystem(path)
    return {"storage_path": inner, "storage_filesystem": fs}


def make_trainer(train_func: Callable[[dict], None], config: dict[str, Any], cfg: TrainConfig, *, storage_path: str,
                 name: str, use_gpu: bool, callbacks: list | None = None) -> TorchTrainer:
    """A TorchTrainer that keeps the best `keep_checkpoints` by the metric plus the latest, and retries failures."""
    run_config = ray.train.RunConfig(
        name=name,
        **storage_args(storage_path),
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=cfg.metric,
            checkpoint_score_order=cfg.mode),
        callbacks=callbacks,
        # Train would echo every print() of the workers a second time through its logger.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our epoch lines say what matters
    )
    low, high = cfg.worker_range
    scaling = ray.train.ScalingConfig(num_workers=low if low == high else (low, high), use_gpu=use_gpu,
                                      elastic_resize_monitor_interval_s=cfg.elastic_resize_s,
                                      resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                            **({"GPU": 1} if use_gpu else {})})
    return TorchTrainer(train_func, train_loop_config=config, scaling_config=scaling, run_config=run_config,
                        torch_config=ray.train.torch.TorchConfig(backend="nccl" if use_gpu else "gloo"))


def failure_message(exc: BaseException) -> str:
    """One line for the workers' error: Ray 2.60's `WorkerGroupError.worker_failures` holds each rank's exception;
    our own errors (`user_error`) keep their message, others show their type. Other failures (the controller's):
    the last line of Ray's text."""
    failures = getattr(exc, "worker_failures", None) or {}
    errors = [failures[rank] for rank in sorted(failures)]
    if errors:
        err = next((e for e in errors if getattr(e, "user_error", False)), errors[0])
        return one_line(err, typed=not getattr(err, "user_error", False))
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def check_cluster(cfg: TrainConfig, workers: int) -> bool:
    """Refuse a storage path or a request this cluster cannot serve; returns whether the workers get GPUs."""
    check_storage_for_cluster(cfg.storage, alive_node_ips())
    use_gpu = wants_gpu(cfg, workers)
    check_resources(workers, cfg.cpus_per_worker, use_gpu, wait_s=cfg.resource_wait_s)
    return use_gpu


def fit(trainer: TorchTrainer, run_dir: str) -> None:
    """Fit a trainer; a worker failure Ray could not recover becomes a RunError naming the run folder."""
    marker = storage.join(run_dir, FATAL_FILE)
    storage.delete_file(marker)  # from an earlier attempt that is now resumed
    try:
        trainer.fit()
    except SystemExit:  # Train's own SIGINT handler aborts the run and exits; report it as Ctrl-C
        raise KeyboardInterrupt from None
    except ray.train.TrainingFailedError as exc:
        raise RunError(f"training failed: {failure_message(exc)} (run folder {run_dir})") from None
    if storage.exists(marker):  # a deterministic error every worker met, recorded instead of raised (no retries)
        fatal = storage.read_text(marker)
        raise RunError(f"training failed: {fatal}; not retried, the same error would recur (run folder {run_dir})")
