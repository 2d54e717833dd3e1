"""How a worker function reports: the only part of training that differs between Ray Train, an in-process Tune
trial and the in-process debug mode.

- `RayTrainReporter`: `ray.train.report` with the checkpoint folder; Ray persists it to the run's storage, keeps the
  best and latest, and hands the latest back after a failure or `--resume`.
- `LocalReporter`: Train's local mode ignores storage and checkpoint settings, so the worker writes checkpoints into
  the run folder itself (atomically) and finds the latest one there when resuming.
- `TuneReporter`: a one-worker trial run in-process inside a Tune trial (`ray.train.report` raises there in 2.60):
  `ray.tune.report` with a `tune.Checkpoint`; Tune persists it into the trial folder, keeps the best by the metric
  (its `CheckpointConfig`) and hands one back after a driver restart or when PBT exploits another trial.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segengine import checkpoint, storage
from segengine.manifest import Manifest

FATAL_FILE = "failed.txt"  # in the run folder: the error a Ray Train run ended with instead of being retried


class Reporter:
    reports_fatal = False  # only Ray Train retries failures; elsewhere an error simply propagates
    world_rank = 0
    world_size = 1
    local_rank = 0
    node_ip = "127.0.0.1"
    node_id = "local"

    def __init__(self, run_dir: str, keep: int, metric: str, mode: str):
        self.run_dir = run_dir
        self.keep, self.metric, self.mode = keep, metric, mode

    def device(self, use_gpu: bool):
        import torch

        return torch.device("cuda", 0) if use_gpu else torch.device("cpu")

    def wrap_model(self, model):
        """The module the training steps call (DDP-wrapped under Ray Train)."""
        return model

    def checkpoint_path(self, epoch: int) -> str:
        """Where the checkpoint of (1-based) `epoch` lands in the run's storage."""
        return storage.join(self.run_dir, checkpoint.dir_name(epoch))

    def latest_checkpoint(self) -> str | None:
        paths = checkpoint.list_complete(self.run_dir)
        return paths[-1] if paths else None

    @contextmanager
    def restored(self):
        """Yield a local folder holding the checkpoint to resume from, or None."""
        path = self.latest_checkpoint()
        if path is None:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="unet-zoo-restore-") as tmp:
            yield storage.download_dir(path, tmp) if storage.is_uri(path) else path

    def report(self, metrics: dict[str, Any], state: dict | None, manifest: Manifest | None, epoch: int,
               persisted: Callable[[str | None], None]) -> None:
        """Persist the epoch's checkpoint (rank 0 passes state), call `persisted(path)`, publish the metrics."""
        persisted(self._store(state, manifest, epoch))

    def _store(self, state: dict | None, manifest: Manifest | None, epoch: int) -> str | None:
        if state is None:
            return None
        target = self.checkpoint_path(epoch)
        if storage.is_uri(target):
            with tempfile.TemporaryDirectory(prefix="unet-zoo-ckpt-") as tmp:
                checkpoint.write(Path(tmp) / "c", state, manifest)
                storage.upload_dir(str(Path(tmp) / "c"), target)
        else:
            checkpoint.write(target, state, manifest)
        checkpoint.prune(self.run_dir, self.keep, self.metric, self.mode)
        return target


class LocalReporter(Reporter):
    """In-process debug mode (`--workers 0`)."""


class TuneReporter(Reporter):
    """An in-process Tune trial; Tune owns its checkpoints."""

    def __init__(self, run_dir: str, keep: int, metric: str, mode: str):
        super().__init__(run_dir, keep, metric, mode)
        # Tune logs "Checkpoint successfully created at: ..." at INFO for every trial and epoch; the trial
        # table and results.csv say where checkpoints are
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)

    @contextmanager
    def restored(self):
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as path:
            yield path

    def report(self, metrics, state, manifest, epoch, persisted):
        from ray import tune

        # the run folder shows the epoch first: Tune may end the trial inside report (ASHA, PBT)
        persisted(None)
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="unet-zoo-ckpt-") as tmp:
            folder = checkpoint.write(Path(tmp) / "c", state, manifest)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


class FoldReporter(Reporter):
    """A cross-validation fold trained in-process inside a Tune trial (`train --folds`): like `LocalReporter` the
    worker keeps its checkpoints in the fold's own folder, so `--resume` and `--fold I` find them whichever Tune
    experiment runs the fold again; Tune gets the epoch metrics (progress lines, results)."""

    def __init__(self, run_dir: str, keep: int, metric: str, mode: str):
        import ray

        super().__init__(run_dir, keep, metric, mode)
        self.node_ip = ray.util.get_node_ip_address()  # workers.json says which node trained the fold
        self.node_id = ray.get_runtime_context().get_node_id()

    def report(self, metrics, state, manifest, epoch, persisted):
        from ray import tune

        persisted(self._store(state, manifest, epoch))
        tune.report(metrics)


class RayTrainReporter(Reporter):
    """A Ray Train worker; Ray owns checkpoint persistence, retention and restoration. Uploads are synchronous:
    with `CheckpointUploadMode.ASYNC` reports of epochs shorter than the controller's poll interval pile up
    unregistered, and a node lost mid-run then costs several epochs instead of one (tests/cluster)."""

    def __init__(self, run_dir: str, keep: int, metric: str, mode: str):
        import ray
        import ray.train

        super().__init__(run_dir, keep, metric, mode)
        _quiet_train_reports()
        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.node_ip = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()

    def device(self, use_gpu: bool):
        import ray.train.torch

        return ray.train.torch.get_device() if use_gpu else super().device(False)

    def wrap_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy="ddp")

    reports_fatal = True

    def record_fatal(self, message: str, this_rank_only: bool = False) -> None:
        """Leave `message` for the driver (FailureConfig retries any exception, so deterministic ones are recorded
        instead): written by rank 0 when every rank met it, by the rank that met it otherwise."""
        if this_rank_only or self.world_rank == 0:
            storage.write_bytes(storage.join(self.run_dir, FATAL_FILE), message.encode())

    def fatal_recorded(self) -> bool:
        return storage.exists(storage.join(self.run_dir, FATAL_FILE))

    @contextmanager
    def restored(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as path:
            yield path

    def report(self, metrics, state, manifest, epoch, persisted):
        import ray.train

        if state is None:
            ray.train.report(metrics)
            persisted(None)
            return
        with tempfile.TemporaryDirectory(prefix="unet-zoo-ckpt-") as tmp:
            folder = checkpoint.write(Path(tmp) / "c", state, manifest)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                             checkpoint_dir_name=checkpoint.dir_name(epoch))
        persisted(self.checkpoint_path(epoch))


def _quiet_train_reports() -> None:
    """Train 2.60 logs every report (a dict of all metrics, per rank, per epoch) at INFO under a logger named
    after its source file; our epoch line says what matters."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray release that moved it: keep its logs
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def make_reporter(kind: str, run_dir: str, keep: int, metric: str, mode: str) -> Reporter:
    classes = {"local": LocalReporter, "tune": TuneReporter, "train": RayTrainReporter, "fold": FoldReporter}
    return classes[kind](run_dir, keep, metric, mode)

