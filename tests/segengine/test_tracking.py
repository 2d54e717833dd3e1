"""MLflow tracking against a real MLflow tracking server started on loopback, read back through MLflow's client."""

import json
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from engine_helpers import TINY_SYNTH, tiny_config

from launch import main
from segengine.config import ConfigError, TrainConfig

RAY_PROCESS_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")  # "(ActorName pid=123) ...", coloured

mlflow = pytest.importorskip("mlflow", reason="the tracking extra (pip install 'unet-zoo[tracking]')")
wandb = pytest.importorskip("wandb", reason="the tracking extra (pip install 'unet-zoo[tracking]')")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts, for this module."""
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                 str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                 "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                                stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def _runs(uri: str, experiment: str):
    client = mlflow.tracking.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client, client.search_runs([found.experiment_id])


def test_train_logs_one_run_params_epochs_and_the_best_checkpoint(mlflow_server, ray_local, tmp_path):
    """2 Ray Train workers (rank 0 logs), then --resume: still one MLflow run, metrics at every epoch."""
    from segengine.training import train

    tracking = {"mlflow": {"uri": mlflow_server, "experiment": "train-test"}}
    cfg = tiny_config(storage=str(tmp_path), name="tracked", epochs=2, tracking=tracking)
    train(cfg)
    train(tiny_config(storage=str(tmp_path), name="tracked", epochs=3, tracking=tracking), resume=True)
    client, runs = _runs(mlflow_server, "train-test")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["lr"] == "0.003" and run.data.params["encoder"] == "mini"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
    assert sorted(set(steps)) == [1, 2, 3], steps
    assert run.data.tags["unet_zoo.run_dir"] == str(tmp_path / "tracked")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best_checkpoint", "history.csv", "config.yaml"} <= artifacts, artifacts
    inside = {a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}
    assert {"best_checkpoint/manifest.json", "best_checkpoint/state.pt"} <= inside, inside
    previews = {a.path for a in client.list_artifacts(run.info.run_id, "previews")}  # rank 0, every validation
    assert {f"previews/epoch_{epoch:04d}.png" for epoch in (1, 2, 3)} <= previews, previews


def test_tune_logs_a_run_per_trial(mlflow_server, ray_local, tmp_path):
    raw = {"train": {"encoder": "mini", "data": TINY_SYNTH, "input_size": [64, 64], "batch_size": 2, "epochs": 2,
                     "tracking": {"mlflow": {"uri": mlflow_server}}},
           "search": {"lr": {"grid": [3e-3, 1e-3]}}, "searcher": {"type": "random"}, "scheduler": {"type": "fifo"},
           "samples": 1}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(raw))
    assert main(["tune", "--config", str(tmp_path / "search.yaml"), "--storage", str(tmp_path), "--name",
                 "tracked-search"]) == 0
    client, runs = _runs(mlflow_server, "tracked-search")  # the experiment defaults to the search's name
    assert len(runs) == 2
    assert sorted(float(r.data.params["train/lr"]) for r in runs) == [1e-3, 3e-3]  # the trial config, flattened
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "val_miou")) == 2


def _wandb_records(path: Path):
    """The protobuf records of a W&B offline run file (`run-ID.wandb`): a ':W&B' header, then LevelDB-log blocks
    of 32 KiB whose chunks (checksum u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) carry records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _when_written(read, done, timeout: float = 30.0):
    """`read()` again until `done(result)`: W&B's service process writes the run files and may still be writing
    when the call that logged returns (seen on a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout
    while not done(result := read()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return result


def test_train_logs_to_wandb_offline_under_one_run_id(ray_local, tmp_path, monkeypatch):
    """Rank 0 of 2 Ray Train workers logs every epoch to the run id the driver chose, and the driver adds the best
    checkpoint as a model artifact under the same id. Offline: W&B's files in the run folder, no network."""
    from segengine.training import train

    monkeypatch.setenv("WANDB_SILENT", "true")
    tracking = {"wandb": {"project": "unet-zoo-test", "mode": "offline"}}
    train(tiny_config(storage=str(tmp_path), name="wb", epochs=2, tracking=tracking))
    run_id = json.loads((tmp_path / "wb" / "tracking.json").read_text())["wandb"]["id"]
    files = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files and all(f.name == f"run-{run_id}.wandb" for f in files), files

    def read() -> tuple[dict, list]:
        epochs, artifacts = {}, []
        for f in files:
            for record in _wandb_records(f):
                kind = record.WhichOneof("record_type")
                if kind == "history":
                    items = {tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in record.history.item}
                    epochs[items[("epoch",)]] = items[("val_miou",)]
                elif kind == "artifact":
                    artifacts.append((record.artifact.name, record.artifact.type,
                                      sorted(e.path for e in record.artifact.manifest.contents)))
        return epochs, artifacts

    epochs, artifacts = _when_written(read, lambda got: len(got[0]) == 2 and got[1])
    assert sorted(epochs) == [1, 2] and all(0 < v <= 1 for v in epochs.values()), epochs
    assert artifacts == [("wb-best", "model", ["manifest.json", "state.pt"])], artifacts


def test_tune_logs_a_wandb_offline_run_per_trial(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = {"train": {"encoder": "mini", "data": TINY_SYNTH, "input_size": [64, 64], "batch_size": 2, "epochs": 2,
                     "tracking": {"wandb": {"mode": "offline"}}},
           "search": {"lr": {"grid": [3e-3, 1e-3]}}, "searcher": {"type": "random"}, "scheduler": {"type": "fifo"},
           "samples": 1}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(raw))
    assert main(["tune", "--config", str(tmp_path / "search.yaml"), "--storage", str(tmp_path), "--name",
                 "wb-search"]) == 0
    files = sorted((tmp_path / "wb-search" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len({f.name for f in files}) == 2, files  # one run id per trial
    for f in files:  # complete when tune returns: each logging actor waited for W&B's service to write its run
        steps = [r for r in _wandb_records(f) if r.WhichOneof("record_type") == "history"]
        assert len(steps) == 2, f


@pytest.mark.parametrize(("tracking", "message"), [
    ({"neptune": {"project": "p"}}, "tracking: unknown key 'neptune'; supported: mlflow, wandb"),
    ({"mlflow": {"url": "http://x"}}, "tracking.mlflow.url: unknown key; use uri"),
    ({"mlflow": {"uri": 5}}, "tracking.mlflow.uri: use a non-empty string"),
    ({"wandb": {"mode": "cloud"}}, "tracking.wandb.mode: use online, offline or disabled"),
])
def test_bad_tracking_sections_name_the_key(tracking, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.from_dict({"tracking": tracking})


@pytest.mark.parametrize(("tracking", "message"), [
    ({"mlflow": {"uri": "http://127.0.0.1:9"}}, "tracking.mlflow: cannot open a run at http://127.0.0.1:9"),
    ({"wandb": {"project": "p"}}, "tracking.wandb: mode online needs an API key: set WANDB_API_KEY"),
])
def test_tracking_that_cannot_start_fails_on_the_driver_before_training(tracking, message, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"tracking": tracking}))
    code = main(["train", "--config", str(config), "--data", TINY_SYNTH, "--input-size", "64", "64", "--workers", "0",
                 "--storage", str(tmp_path / "runs"), "--name", "untracked"])
    # lines of Ray processes that earlier tests left in the session's Ray (Tune's W&B actors at exit) are not ours
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not RAY_PROCESS_LINE.match(line))
    assert code == 2 and err.startswith(f"error: {message}"), err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "untracked").exists()


def test_a_tracking_server_lost_during_the_run_costs_a_warning_not_the_run(tmp_path, monkeypatch, recwarn):
    from segengine import tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    gone = {"mlflow": {"uri": "http://127.0.0.1:9", "run_id": "0123456789abcdef"}}
    logger = tracking.EpochLogger(gone, {})
    logger.log({"val_miou": 0.5}, 1)
    logger.log({"val_miou": 0.6}, 2)  # logging stopped after the first failure: no second warning
    tracking.finish_run(gone, str(tmp_path), None, "FINISHED")
    messages = [str(w.message) for w in recwarn]
    assert len(messages) == 2, messages
    assert messages[0].startswith("tracking: epoch 1 not logged, logging stops for this run: ")
    assert messages[1].startswith(f"tracking: could not log the results of {tmp_path}: ")


def test_the_default_mlflow_store_needs_no_server(tmp_path, monkeypatch):
    """`tracking: {mlflow: {experiment: ...}}` alone (the documented default): a SQLite store beside the runs, the
    artifacts beside it, never MLflow 3's retired file store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"tracking": {"mlflow": {"experiment": "bar"}}}))
    storage = tmp_path / "runs"
    assert main(["train", "--config", str(config), "--data", TINY_SYNTH, "--workers", "0", "--epochs", "2",
                 "--storage", str(storage), "--name", "local"]) == 0
    client, runs = _runs(f"sqlite:///{storage / 'mlflow.db'}", "bar")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(client.get_metric_history(runs[0].info.run_id, "val_miou")) == 2
    assert (storage / "mlflow-artifacts").is_dir() and not (tmp_path / "mlruns").exists()
