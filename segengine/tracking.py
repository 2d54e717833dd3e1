"""Experiment tracking in MLflow (`tracking: {mlflow: {uri, experiment}}`), following Ray's experiment-tracking
guide for Train: one MLflow run per training run, logged by rank 0 through MLflow's own client.

The driver opens the run before Ray starts (a bad URI or experiment is found there) and logs the parameters; the
run id travels to the workers in their config, so rank 0 of a restarted worker group, or of a `--resume`d run
(the id is kept in the run folder's `tracking.json`), logs to the same run instead of starting another. At the
end the driver logs the best checkpoint, the history and the curves as artifacts and closes the run. A search
(`tune`) logs one run per trial through Tune's own `MLflowLoggerCallback` instead (`tune_callbacks`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from typing import Any

from segengine import storage
from segengine.config import ConfigError, TrainConfig

TRACKING_FILE = "tracking.json"  # in the run folder: the MLflow run that the training run logs to
_METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. /]")


def mlflow_target(cfg: TrainConfig) -> tuple[str, str] | None:
    """(tracking URI, experiment) when the config tracks in MLflow, else None."""
    settings = (cfg.tracking or {}).get("mlflow")
    if settings is None:
        return None
    uri = settings.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or storage.resolve("mlruns")
    return uri, settings.get("experiment", "unet-zoo")


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow needs the mlflow package: pip install 'unet-zoo[tracking]' "
                          "(or pip install mlflow)") from None
    return MlflowClient(tracking_uri=uri)


def _flat(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: json.dumps(value)[:6000] if not isinstance(value, str) else value[:6000]}


def start_run(cfg: TrainConfig, run_dir: str, *, resume: bool) -> dict[str, str] | None:
    """On the driver, before Ray starts: the MLflow run of this training run (a new one, or on --resume the one
    recorded in the run folder), with the config as parameters. Returns what the workers need ({uri, run_id}),
    or None when the config does not track."""
    target = mlflow_target(cfg)
    if target is None:
        return None
    uri, experiment = target
    client = _client(uri)
    recorded = storage.join(run_dir, TRACKING_FILE)
    try:
        if resume and storage.exists(recorded):
            run_id = json.loads(storage.read_text(recorded))["run_id"]
            client.update_run(run_id, status="RUNNING")
            return {"uri": uri, "run_id": run_id}
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=cfg.name, tags={"unet_zoo.run_dir": run_dir,
                                                                         "unet_zoo.encoder": cfg.encoder})
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in sorted(_flat("", cfg.to_dict()).items())]
        for start in range(0, len(params), 100):  # MLflow's batch limit is 100 params
            client.log_batch(run.info.run_id, params=params[start:start + 100])
    except ConfigError:
        raise
    except Exception as exc:  # MLflow raises its own, requests' and OS errors: one line naming the URI
        raise ConfigError(f"tracking.mlflow: cannot open a run at {uri} (experiment {experiment!r}): "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                          ) from None
    storage.write_bytes(recorded, json.dumps({"uri": uri, "run_id": run.info.run_id, "experiment": experiment},
                                             indent=2).encode())
    return {"uri": uri, "run_id": run.info.run_id}


class EpochLogger:
    """Rank 0 in the worker: each epoch's numeric metrics (step = epoch) into the run the driver opened, through
    MlflowClient and the run id (no active-run state, so a restarted group never opens a second run)."""

    def __init__(self, target: dict[str, str]) -> None:
        self.client = _client(target["uri"])
        self.run_id = target["run_id"]

    def log(self, metrics: dict[str, Any], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(_METRIC_NAME.sub("_", k), float(v), now, epoch) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "epoch"]
        for start in range(0, len(values), 1000):
            self.client.log_batch(self.run_id, metrics=values[start:start + 1000])


def finish_run(target: dict[str, str] | None, run_dir: str, best_checkpoint: str | None, status: str) -> None:
    """On the driver, at the end: the best checkpoint, history.csv and the curves as artifacts, then the run
    closed with `status` (FINISHED, FAILED or KILLED)."""
    if target is None:
        return
    client = _client(target["uri"])
    run_id = target["run_id"]
    with tempfile.TemporaryDirectory(prefix="unet-zoo-mlflow-") as tmp:
        if best_checkpoint:
            client.log_artifacts(run_id, storage.download_dir(best_checkpoint, os.path.join(tmp, "best")),
                                 "best_checkpoint")
        for name in ("history.csv", "loss.png", "miou.png", "config.yaml"):
            path = storage.join(run_dir, name)
            if storage.exists(path):
                local = os.path.join(tmp, name)
                with open(local, "wb") as f:
                    f.write(storage.read_bytes(path))
                client.log_artifact(run_id, local)
    client.set_terminated(run_id, status)


def tune_callbacks(cfg: TrainConfig, search_name: str) -> list[Any]:
    """Tune's MLflowLoggerCallback for a search that tracks in MLflow: one run per trial, its sampled config as
    parameters and every reported metric; the experiment is the configured one (default: the search's name)."""
    target = mlflow_target(cfg)
    if target is None:
        return []
    _client(target[0])  # the package is there
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    experiment = (cfg.tracking["mlflow"].get("experiment") or search_name)
    return [MLflowLoggerCallback(tracking_uri=target[0], experiment_name=experiment,
                                 tags={"unet_zoo.search": search_name})]
