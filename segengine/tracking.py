"""Experiment tracking in MLflow and Weights & Biases (`tracking: {mlflow: {...}, wandb: {...}}`), following Ray's
experiment-tracking guide for Train: one tracked run per training run, logged by rank 0 through the tracking
library's own client.

The driver opens the run before Ray starts (an unreachable MLflow server, a missing package or a bad key is found
there) and logs the parameters; the run ids travel to the workers in their config, so rank 0 of a restarted worker
group, or of a `--resume`d run (the ids are kept in the run folder's `tracking.json`), logs to the same run instead
of starting another. At the end the driver logs the best checkpoint as an artifact (MLflow: with the history and
the curves) and closes the run. A search (`tune`) logs one run per trial through Tune's own
`MLflowLoggerCallback` / `WandbLoggerCallback` instead (`tune_callbacks`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import uuid
import warnings
from typing import Any

import numpy as np

from segengine import storage
from segengine.config import ConfigError, TrainConfig, wandb_mode
from zoo._errors import one_line

TRACKING_FILE = "tracking.json"  # in the run folder: the tracked runs that the training run logs to
_METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. /]")
Target = dict[str, dict[str, str]]  # {"mlflow": {uri, run_id}, "wandb": {project, mode, dir, id, name}}


def _import(package: str):
    try:
        return __import__(package)
    except ImportError:
        raise ConfigError(f"tracking.{package} needs the {package} package: pip install 'unet-zoo[tracking]' "
                          f"(or pip install {package})") from None


def _mlflow_client(uri: str):
    _import("mlflow")
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..." on first use
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _flat(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: json.dumps(value)[:6000] if not isinstance(value, str) else value[:6000]}


MLFLOW_DB = "mlflow.db"  # the default store: SQLite beside the runs (MLflow 3's file store ./mlruns is retired)
MLFLOW_ARTIFACTS = "mlflow-artifacts"


def _mlflow_uri(settings: dict[str, str], storage_root: str) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else a SQLite database in the runs' storage: a local folder or a
    `file://` mount every node shares (rank 0 on another node logs to the same file). Object storage cannot hold
    a database that several processes write: there a server's URI is needed."""
    if settings.get("uri") or os.environ.get("MLFLOW_TRACKING_URI"):
        return settings.get("uri") or os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_uri(storage_root) and not storage_root.startswith("file://"):
        raise ConfigError(f"tracking.mlflow: the default store is a SQLite file beside the runs, which "
                          f"{storage_root} (object storage) cannot hold; set tracking.mlflow.uri to an MLflow server "
                          "(or MLFLOW_TRACKING_URI)")
    _, folder = storage.filesystem(storage_root)
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, MLFLOW_DB)}"


def _mlflow_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, created on first use; in the default SQLite store its artifacts go beside the
    database (MLflow would put them in ./mlruns of whatever folder the driver runs in)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///") and uri.endswith(MLFLOW_DB):
        location = "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///"):]), MLFLOW_ARTIFACTS)
    return client.create_experiment(name, artifact_location=location)


def _wandb_dir(settings: dict[str, str], run_folder: str) -> str:
    """Where W&B writes its `wandb/` folder: `dir`, else the run (or search) folder when it is local."""
    return storage.resolve(settings.get("dir") or ("." if storage.is_uri(run_folder) else run_folder))


def _start_mlflow(cfg: TrainConfig, run_dir: str, settings: dict[str, str], recorded: dict[str, Any]
                  ) -> dict[str, str]:
    from mlflow.entities import Param

    uri = _mlflow_uri(settings, cfg.storage)
    experiment = settings.get("experiment", "unet-zoo")
    try:
        client = _mlflow_client(uri)
        if recorded.get("run_id"):
            client.update_run(recorded["run_id"], status="RUNNING")
            return {"uri": uri, "run_id": recorded["run_id"]}
        experiment_id = _mlflow_experiment(client, experiment, uri)
        run = client.create_run(experiment_id, run_name=cfg.name, tags={"unet_zoo.run_dir": run_dir,
                                                                         "unet_zoo.encoder": cfg.encoder})
        params = [Param(k, v) for k, v in sorted(_flat("", cfg.to_dict()).items())]
        for start in range(0, len(params), 100):  # MLflow's batch limit is 100 params
            client.log_batch(run.info.run_id, params=params[start:start + 100])
    except Exception as exc:  # MLflow raises its own, requests' and OS errors: one line naming the URI
        raise ConfigError(f"tracking.mlflow: cannot open a run at {uri} (experiment {experiment!r}): "
                          f"{one_line(exc)}") from None
    return {"uri": uri, "run_id": run.info.run_id}


def _start_wandb(cfg: TrainConfig, run_dir: str, settings: dict[str, str], recorded: dict[str, Any]
                 ) -> dict[str, str]:
    _import("wandb")
    mode = wandb_mode(settings)
    if mode == "online" and not os.environ.get("WANDB_API_KEY") and not _wandb_login_saved():
        raise ConfigError("tracking.wandb: mode online needs an API key: set WANDB_API_KEY or run `wandb login` "
                          "(or use mode: offline and `wandb sync` later)")
    return {"project": settings.get("project", "unet-zoo"), "mode": mode,
            "dir": _wandb_dir(settings, run_dir), "id": recorded.get("id") or uuid.uuid4().hex[:12],
            "name": str(cfg.name), **({"entity": settings["entity"]} if "entity" in settings else {})}


def _wandb_login_saved() -> bool:
    """Whether `wandb login` stored a key (in ~/.netrc, for the W&B host)."""
    import netrc

    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start_run(cfg: TrainConfig, run_dir: str, *, resume: bool) -> Target | None:
    """On the driver, before Ray starts: the tracked runs of this training run (new ones, or on --resume the
    ones recorded in the run folder), MLflow's with the config as parameters. Returns what the workers need, or
    None when the config does not track."""
    tracking = cfg.tracking or {}
    if not tracking:
        return None
    path = storage.join(run_dir, TRACKING_FILE)
    recorded = json.loads(storage.read_text(path)) if resume and storage.exists(path) else {}
    target: Target = {}
    if "mlflow" in tracking:
        target["mlflow"] = _start_mlflow(cfg, run_dir, tracking["mlflow"], recorded.get("mlflow", {}))
    if "wandb" in tracking:
        target["wandb"] = _start_wandb(cfg, run_dir, tracking["wandb"], recorded.get("wandb", {}))
    storage.write_bytes(path, json.dumps(target, indent=2).encode())
    return target


def _wandb_run(target: dict[str, str], config: dict[str, Any] | None = None):
    """The W&B run of `target`, opened (or reopened: resume='allow') in this process."""
    import wandb

    extra = {"entity": target["entity"]} if "entity" in target else {}
    os.makedirs(target["dir"], exist_ok=True)
    return wandb.init(project=target["project"], id=target["id"], name=target["name"], mode=target["mode"],
                      dir=target["dir"], resume="allow", config=config, reinit="create_new", **extra)


class EpochLogger:
    """Rank 0 in the worker: each epoch's numeric metrics (step = epoch) into the runs the driver opened, by their
    ids (MlflowClient with no active-run state; W&B with resume='allow'), so a restarted group never opens a
    second run."""

    def __init__(self, target: Target, config: dict[str, Any]) -> None:
        self.mlflow = _mlflow_client(target["mlflow"]["uri"]) if "mlflow" in target else None
        self.mlflow_run = target.get("mlflow", {}).get("run_id")
        self.wandb = _wandb_run(target["wandb"], config) if "wandb" in target else None

    def log(self, metrics: dict[str, Any], epoch: int) -> None:
        """One epoch's metrics; a tracking server that fails costs one warning and the rest of the logging, never
        the training run."""
        try:
            self._log(metrics, epoch)
        except Exception as exc:  # MLflow/W&B/network errors of many types
            warnings.warn(f"tracking: epoch {epoch} not logged, logging stops for this run: {one_line(exc)}",
                          stacklevel=2)
            self.mlflow = self.wandb = None

    def _log(self, metrics: dict[str, Any], epoch: int) -> None:
        values = {_METRIC_NAME.sub("_", k): float(v) for k, v in metrics.items() if k != "epoch"
                  and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self.mlflow is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, epoch) for k, v in values.items()]
            for start in range(0, len(batch), 1000):
                self.mlflow.log_batch(self.mlflow_run, metrics=batch[start:start + 1000])
        if self.wandb is not None:
            self.wandb.log({**values, "epoch": epoch}, step=epoch)

    def log_image(self, image: np.ndarray, epoch: int) -> None:
        """A validation's prediction previews: MLflow artifact previews/epoch_NNNN.png, W&B image `previews`."""
        try:
            if self.mlflow is not None:
                self.mlflow.log_image(self.mlflow_run, image, artifact_file=f"previews/epoch_{epoch:04d}.png")
            if self.wandb is not None:
                import wandb

                self.wandb.log({"previews": wandb.Image(image)}, step=epoch)
        except Exception as exc:  # MLflow/W&B/network errors of many types
            warnings.warn(f"tracking: epoch {epoch}'s previews not logged, logging stops for this run: "
                          f"{one_line(exc)}", stacklevel=2)
            self.mlflow = self.wandb = None

    def close(self) -> None:
        """The W&B run finished and written: a Ray worker's process may be ended as soon as this returns, and W&B's
        service, which exits with it, writes a run's last records only when it has read the finish message."""
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.teardown()


def finish_run(target: Target | None, run_dir: str, best_checkpoint: str | None, status: str) -> None:
    """On the driver, at the end: the best checkpoint as an artifact (MLflow: with history.csv, the curves and
    config.yaml), then the runs closed with `status` (FINISHED, FAILED or KILLED). A tracking server that fails
    now costs a warning, never the run's result or the error that ended it."""
    if not target:
        return
    try:
        _log_results(target, run_dir, best_checkpoint, status)
    except Exception as exc:  # the training run's outcome stands whatever the tracking server says
        warnings.warn(f"tracking: could not log the results of {run_dir}: {one_line(exc)}", stacklevel=2)


def _log_results(target: Target, run_dir: str, best_checkpoint: str | None, status: str) -> None:
    with tempfile.TemporaryDirectory(prefix="unet-zoo-tracking-") as tmp:
        best = _local_copy(best_checkpoint, tmp, is_dir=True) if best_checkpoint else None
        if "mlflow" in target:
            client = _mlflow_client(target["mlflow"]["uri"])
            run_id = target["mlflow"]["run_id"]
            if best:
                client.log_artifacts(run_id, best, "best_checkpoint")
            for name in ("history.csv", "loss.png", "miou.png", "config.yaml"):
                path = storage.join(run_dir, name)
                if storage.exists(path):
                    client.log_artifact(run_id, _local_copy(path, tmp))
            client.set_terminated(run_id, status)
        if "wandb" in target and best:
            import wandb

            run = _wandb_run(target["wandb"])
            artifact = wandb.Artifact(f"{target['wandb']['name']}-best", type="model")
            artifact.add_dir(best)
            run.log_artifact(artifact)
            run.finish(exit_code=0 if status == "FINISHED" else 1)


def _local_copy(path: str, tmp: str, is_dir: bool = False) -> str:
    """A local path for a tracking client's upload: the file or folder itself, or a copy in `tmp` from storage."""
    if not storage.is_uri(path):
        return path
    local = os.path.join(tmp, os.path.basename(path.split("?")[0].rstrip("/")))
    if is_dir:
        return storage.download_dir(path, local)
    with open(local, "wb") as f:
        f.write(storage.read_bytes(path))
    return local


def tune_callbacks(cfg: TrainConfig, search_name: str, search_dir: str) -> list[Any]:
    """Tune's logger callbacks for a search that tracks: one run per trial, its sampled config as parameters and
    every reported metric, in the configured MLflow experiment / W&B project (default: the search's name); W&B's
    files in the search folder unless `dir` says otherwise."""
    tracking = cfg.tracking or {}
    callbacks: list[Any] = []
    if "mlflow" in tracking:
        settings = tracking["mlflow"]
        _import("mlflow")
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri, experiment = _mlflow_uri(settings, cfg.storage), settings.get("experiment") or search_name
        try:
            _mlflow_experiment(_mlflow_client(uri), experiment, uri)
        except Exception as exc:  # as for train: one line naming the URI, before any trial starts
            raise ConfigError(f"tracking.mlflow: cannot open experiment {experiment!r} at {uri}: "
                              f"{one_line(exc)}") from None
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment,
                                              tags={"unet_zoo.search": search_name}))
    if "wandb" in tracking:
        settings = tracking["wandb"]
        _import("wandb")
        mode = wandb_mode(settings)
        if mode != "online":
            os.environ.setdefault("WANDB_MODE", mode)  # Ray's callback asks for an API key unless it says so
        folder = _wandb_dir(settings, search_dir)
        os.makedirs(folder, exist_ok=True)
        extra = {"entity": settings["entity"]} if "entity" in settings else {}
        callbacks.append(_wandb_callback()(project=settings.get("project") or search_name, group=search_name,
                                           mode=mode, dir=folder, **extra))
    return callbacks


def _wandb_callback() -> type:
    """Ray's `WandbLoggerCallback` whose per-trial logging actor waits for W&B's service before it returns.

    Ray kills a trial's logging actor as soon as its `wandb.finish()` returns, but W&B's service writes the run's
    last records on a finish message it is only sent, not answered: the service, which exits with its parent,
    sometimes died first and left an offline run file with nothing but its header (seen in a full test run).
    `wandb.teardown()` waits for the service to close every run."""
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    class FlushingLoggingActor(_WandbLoggingActor):
        def run(self) -> None:
            super().run()
            self._wandb.teardown()  # as EpochLogger.close

    class FlushingWandbLoggerCallback(WandbLoggerCallback):
        _logger_actor_cls = FlushingLoggingActor

    return FlushingWandbLoggerCallback
