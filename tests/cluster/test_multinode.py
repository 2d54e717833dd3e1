"""The whole path a cluster user takes, on a real two-node cluster (see conftest.py): `launch.py train` and
`launch.py tune` submitted through the Jobs API or run from a shell on the head, shared-folder and S3 storage,
data on S3, a plugin shipped only in the job's working directory, and a worker node that dies mid-run."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from netns_cluster import BUCKET, REPO, NetnsCluster, SeaweedS3, copy_checkout, file_tail
from PIL import Image

pytestmark = pytest.mark.cluster

SYNTH = "synth:n_train=16,n_val=4,size=64"
PLUGIN_ENCODER = "job-only-tiny"
PLUGIN_SOURCE = '''"""An encoder only the job's working directory holds; each build leaves a mark naming its node."""

import os
from pathlib import Path

from torch import nn

from zoo import SegmentationModel, UNetDecoder, get_spec, register_encoder

CHANNELS = (8, 16)
REDUCTIONS = (2, 4)


class Encoder(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


@register_encoder("job-only-tiny", description="test plugin shipped with a Ray job", channels=CHANNELS,
                  reductions=REDUCTIONS, input_multiple=4)
def build(num_classes, in_channels=3):
    marks = os.environ.get("UZ_PLUGIN_MARKS")
    if marks:
        import ray

        ip = ray.util.get_node_ip_address() if ray.is_initialized() else "driver"
        Path(marks, f"{ip}-{os.getpid()}").touch()
    return SegmentationModel(Encoder(in_channels), UNetDecoder(CHANNELS, REDUCTIONS, num_classes),
                             get_spec("job-only-tiny"), num_classes, in_channels)
'''


def train_argv(*, storage: str, name: str, epochs: int = 2, data: str = SYNTH, encoder: str = "mini",
               extra: tuple[str, ...] = ()) -> list[str]:
    return ["python", "launch.py", "train", "--encoder", encoder, "--workers", "2", "--epochs", str(epochs),
            "--input-size", "64", "64", "--batch-size", "4", "--data", data, "--storage", storage,
            "--name", name, *extra]


def history_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def epochs_of(rows: list[dict[str, str]]) -> list[int]:
    return [int(float(r["epoch"])) for r in rows]


def secrets_of(cluster: NetnsCluster) -> list[str]:
    return [cluster.s3_credentials["AWS_SECRET_ACCESS_KEY"], cluster.token_file.read_text().strip()]


def assert_no_secret_in_folder(folder: Path, cluster: NetnsCluster) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".yml", ".csv", ".txt", ".log"}:
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets_of(cluster)), f"a credential leaked into {path}"


def assert_trained_on_both_nodes(cluster: NetnsCluster, run_dir: Path, epochs: int) -> None:
    assert epochs_of(history_rows((run_dir / "history.csv").read_text())) == list(range(1, epochs + 1))
    ips = json.loads((run_dir / "workers.json").read_text())["worker_ips"]
    assert sorted(ips) == [cluster.head.ip, cluster.worker.ip], "one worker per node, each under its own address"
    manifests = list(run_dir.rglob("manifest.json"))
    assert manifests, f"no checkpoint (manifest.json) in {run_dir}"
    assert_no_secret_in_folder(run_dir, cluster)


def test_job_trains_on_both_nodes_with_checkpoints_in_shared_folder(cluster: NetnsCluster, job_workdir: Path):
    storage = f"file://{cluster.shared}/runs"
    job = cluster.submit_job(train_argv(storage=storage, name="job-shared"), working_dir=job_workdir)
    assert job.status == "SUCCEEDED", job.explain()
    assert_trained_on_both_nodes(cluster, cluster.shared / "runs" / "job-shared", epochs=2)
    assert not any(s in job.output for s in secrets_of(cluster))


def test_job_checkpoints_to_s3(cluster: NetnsCluster, s3_server: SeaweedS3, job_workdir: Path):
    """Runs and checkpoints in the bucket (endpoint in the URI, credentials from the nodes' environment); the
    credentials appear in no saved file and no log."""
    job = cluster.submit_job(train_argv(storage=s3_server.uri(f"{BUCKET}/runs"), name="job-s3"),
                             working_dir=job_workdir)
    assert job.status == "SUCCEEDED", job.explain()
    run = f"{BUCKET}/runs/job-s3"
    files = s3_server.list(run)
    assert {"history.csv", "workers.json", "config.yaml"} <= set(files), files
    assert any(f.endswith("manifest.json") for f in files), files
    assert epochs_of(history_rows(s3_server.read_text(f"{run}/history.csv"))) == [1, 2]
    ips = json.loads(s3_server.read_text(f"{run}/workers.json"))["worker_ips"]
    assert sorted(ips) == [cluster.head.ip, cluster.worker.ip]
    for name in [f for f in files if f.endswith((".yaml", ".json", ".csv"))]:
        text = s3_server.read_text(f"{run}/{name}")
        assert not any(s in text for s in secrets_of(cluster)), f"a credential leaked into {run}/{name}"
    assert not any(s in job.output for s in secrets_of(cluster))


def test_job_reads_dataset_from_s3(cluster: NetnsCluster, s3_server: SeaweedS3, job_workdir: Path, tmp_path: Path):
    """`launch.py data synth` output uploaded to the bucket; the workers on both nodes read it from there."""
    data = tmp_path / "synth"
    made = subprocess.run([sys.executable, "launch.py", "data", "synth", str(data), "--size", "64",
                           "--n-train", "16", "--n-val", "4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    uploaded = s3_server.upload(data, f"{BUCKET}/data/synth")
    assert "dataset.yaml" in uploaded and len(uploaded) >= 40, uploaded

    job = cluster.submit_job(train_argv(storage=f"file://{cluster.shared}/runs", name="job-s3-data",
                                        data=s3_server.uri(f"{BUCKET}/data/synth")), working_dir=job_workdir)
    assert job.status == "SUCCEEDED", job.explain()
    assert_trained_on_both_nodes(cluster, cluster.shared / "runs" / "job-s3-data", epochs=2)
    assert not any(s in job.output for s in secrets_of(cluster))


def test_plugin_shipped_only_in_the_working_dir_is_used_on_both_nodes(cluster: NetnsCluster):
    workdir = copy_checkout(cluster.root / "jobs" / "with-plugin")
    (workdir / "my_plugin.py").write_text(PLUGIN_SOURCE)
    assert not (REPO / "my_plugin.py").exists()
    marks = cluster.shared / "plugin-marks"
    marks.mkdir()
    job = cluster.submit_job(
        train_argv(storage=f"file://{cluster.shared}/runs", name="job-plugin", encoder=PLUGIN_ENCODER,
                   extra=("--plugin", "my_plugin.py")),
        working_dir=workdir, runtime_env={"env_vars": {"UZ_PLUGIN_MARKS": str(marks)}})
    assert job.status == "SUCCEEDED", job.explain()
    run_dir = cluster.shared / "runs" / "job-plugin"
    assert_trained_on_both_nodes(cluster, run_dir, epochs=2)
    built_on = {mark.name.split("-")[0] for mark in marks.iterdir()}
    assert {cluster.head.ip, cluster.worker.ip} <= built_on, f"plugin encoder built on {built_on}"
    manifest = json.loads(next(run_dir.rglob("manifest.json")).read_text())
    assert PLUGIN_ENCODER in json.dumps(manifest)


def test_local_storage_path_refused_on_multi_node_cluster(cluster: NetnsCluster, tmp_path: Path):
    target = tmp_path / "runs"
    proc = cluster.run([*train_argv(storage=str(target), name="local"), "--address", cluster.gcs_address],
                       timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "file://" in error[0] and str(target) in error[0], proc.stderr
    assert not target.exists()


def _wait_for(history: Path, driver: subprocess.Popen, log: Path, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (history.exists() and ready(history_rows(history.read_text()))):
        assert driver.poll() is None, f"run ended before {what}:\n{file_tail(log)}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s:\n{file_tail(log)}"
        time.sleep(0.2)


def _lose_and_restart_worker_node(cluster: NetnsCluster, driver: subprocess.Popen, log: Path, history: Path,
                                  epochs: int) -> None:
    """Kill the worker node while the run of `history` is short of `epochs`, start it again once Ray has marked it
    dead, and check that the driver finished with every epoch once and the epochs finished before the loss kept as
    they were (the newest one's report may not have reached Train when the node died, so it may be redone)."""
    cluster.kill_worker()
    before = history_rows(history.read_text())
    assert len(before) < epochs, "the run finished before the node was killed; make epochs longer"
    cluster.probe("nodes", "--expect", cluster.head.ip, "--timeout", "120", timeout=200)  # death noticed
    cluster.restart_worker()
    driver.wait(timeout=600)
    assert driver.returncode == 0, file_tail(log, 80)
    after = history_rows(history.read_text())
    assert epochs_of(after) == list(range(1, epochs + 1)), "every epoch exactly once"
    kept = len(before) - 1
    assert after[:kept] == before[:kept], "epochs finished before the failure are kept, not trained again"


@contextmanager
def driving(cluster: NetnsCluster, argv: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """A driver on the head (RAY_ADDRESS set, as `ray start` users do), killed if the test leaves it running."""
    driver = cluster.popen(argv, log, env={"RAY_ADDRESS": cluster.gcs_address})
    try:
        yield driver
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_worker_node_killed_mid_run_recovers_from_last_checkpoint(cluster: NetnsCluster):
    """Driver from a shell on the head (RAY_ADDRESS set, as `ray start` users do); the worker node dies after the
    second finished epoch and comes back: the run restarts from the checkpoint, epochs already done are kept.

    The newest epoch's report may not have reached Train's controller when the node dies (reports are consumed
    one behind), so Ray may redo that one epoch; every epoch before it must be kept as it was."""
    epochs = 8
    run_dir = cluster.shared / "runs" / "killed"
    log = cluster.root / "killed-driver.log"
    argv = train_argv(storage=f"file://{cluster.shared}/runs", name="killed", epochs=epochs,
                      data="synth:n_train=32,n_val=8,size=64")
    history = run_dir / "history.csv"
    with driving(cluster, argv, log) as driver:
        _wait_for(history, driver, log, lambda rows: len(rows) >= 2, "two epochs")
        _lose_and_restart_worker_node(cluster, driver, log, history, epochs)
    ips = json.loads((run_dir / "workers.json").read_text())["worker_ips"]
    assert sorted(ips) == [cluster.head.ip, cluster.worker.ip], "the restarted node hosts a worker again"


@pytest.mark.parametrize("node_returns", [False, True], ids=["node-stays-dead", "node-returns"])
def test_elastic_run_goes_on_without_a_lost_node_and_grows_back(cluster: NetnsCluster, node_returns: bool):
    """`--workers 1 2`: the worker node dies after two epochs; the run goes on with the head's worker alone and
    finishes without it, or, when the node returns, the worker group grows to 2 again. Every epoch once."""
    epochs = 40 if node_returns else 12  # room for Train to notice the node and grow before the end
    name = f"elastic-{int(node_returns)}"
    run_dir = cluster.shared / "runs" / name
    log = cluster.root / f"{name}-driver.log"
    recipe = cluster.root / "elastic.yaml"
    recipe.write_text("elastic_resize_s: 3\n")  # how often Train looks for room to grow (default 60 s)
    argv = train_argv(storage=f"file://{cluster.shared}/runs", name=name, epochs=epochs,
                      data="synth:n_train=32,n_val=8,size=64", extra=("--config", str(recipe)))
    argv[argv.index("--workers") + 1:argv.index("--workers") + 2] = ["1", "2"]
    history = run_dir / "history.csv"
    with driving(cluster, argv, log) as driver:  # an elastic run may start before the worker node has joined
        _wait_for(history, driver, log, lambda rows: len(rows) >= 2 and rows[-1]["workers"] == "2",
                  "two epochs, the last on both nodes")
        grown = len(history_rows(history.read_text()))
        cluster.kill_worker()
        _wait_for(history, driver, log, lambda rows: any(r["workers"] == "1" for r in rows[grown - 1:]),
                  "an epoch on the remaining worker")
        assert driver.poll() is None, "the run finished before the node came back; make epochs longer"
        if node_returns:  # once Ray has marked the old node dead (Train notices a lost worker sooner)
            cluster.probe("nodes", "--expect", cluster.head.ip, "--timeout", "120", timeout=200)
            cluster.restart_worker()
        driver.wait(timeout=600)
    assert driver.returncode == 0, file_tail(log, 80)
    rows = history_rows(history.read_text())
    assert epochs_of(rows) == list(range(1, epochs + 1)), "every epoch exactly once"
    counts = [int(r["workers"]) for r in rows]
    after_loss = counts[grown - 1:]  # the epoch in flight when the node died may be redone by one worker
    after_loss = after_loss[after_loss.index(1):] if 1 in after_loss else []
    assert after_loss, str(counts)
    assert (2 in after_loss) if node_returns else set(after_loss) == {1}, str(counts)
    assert "elastic 1-2 Ray Train workers" in log.read_text()


def test_tune_on_cluster_results_readable_from_driver(cluster: NetnsCluster):
    """The default search (tune_configs/default.yaml), shrunk by flags; 3 epochs reach ASHA's grace period."""
    proc = cluster.run(["python", "launch.py", "tune", "--address", cluster.gcs_address,
                        "--storage", f"file://{cluster.shared}/runs", "--name", "tune-cluster", "--samples", "2",
                        "--epochs", "3", "--data", SYNTH, "--input-size", "64", "64"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    tune_dir = cluster.shared / "runs" / "tune-cluster"
    rows = list(csv.DictReader((tune_dir / "results.csv").open()))
    assert len(rows) == 2, rows
    best = yaml.safe_load((tune_dir / "best.yaml").read_text())
    assert isinstance(best, dict) and best.get("epochs") == 3, best
    assert str(tune_dir / "best.yaml") in proc.stdout, "the driver prints where the best config lives"
    assert_no_secret_in_folder(tune_dir, cluster)


def test_predict_on_ray_data_from_s3_to_s3_on_both_nodes(cluster: NetnsCluster, s3_server: SeaweedS3,
                                                          tmp_path: Path):
    """`predict --workers 2`: a checkpoint and input images on S3, a pool of two Ray Data actors (one per node),
    masks and summary.json written back to S3; a corrupt input is listed as skipped, the rest are written."""
    made = subprocess.run([sys.executable, "launch.py", "train", "--data", SYNTH, "--input-size", "64", "64",
                           "--epochs", "1", "--workers", "0", "--storage", str(tmp_path / "runs"), "--name", "p"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    s3_server.upload(tmp_path / "runs" / "p" / "checkpoint_epoch_0001", f"{BUCKET}/predict/ckpt")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        pixels = (np.random.default_rng(i).random((48 + 8 * i, 64)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"img{i}.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert len(s3_server.upload(images, f"{BUCKET}/predict/in")) == 7
    proc = cluster.run(["python", "launch.py", "predict", s3_server.uri(f"{BUCKET}/predict/ckpt"),
                        s3_server.uri(f"{BUCKET}/predict/in"), "--out", s3_server.uri(f"{BUCKET}/predict/out"),
                        "--workers", "2", "--batch-size", "1", "--address", cluster.gcs_address], timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: some input was skipped
    assert "skipped" in proc.stderr and "corrupt.png" in proc.stderr, proc.stderr[-3000:]
    files = set(s3_server.list(f"{BUCKET}/predict/out"))
    assert {f"img{i}_{kind}.png" for i in range(6) for kind in ("mask", "color", "overlay", "cutout")} <= files
    assert not any(f.startswith("corrupt") for f in files), files
    summary = json.loads(s3_server.read_text(f"{BUCKET}/predict/out/summary.json"))
    assert summary["written"] == 6 and [Path(s["input"].split("?")[0]).name for s in summary["skipped"]] == [
        "corrupt.png"]
    assert set(summary["nodes"]) == {cluster.head.ip, cluster.worker.ip}, summary
    assert not any(s in proc.stdout + proc.stderr for s in secrets_of(cluster))


@pytest.fixture(autouse=True)
def _clean_runs(ray_cluster: NetnsCluster):
    """Each test starts with no run folders, so a rerun never meets `run already exists`."""
    shutil.rmtree(ray_cluster.shared / "runs", ignore_errors=True)
    shutil.rmtree(ray_cluster.shared / "plugin-marks", ignore_errors=True)


def _fold_places(run_dir: Path) -> dict[int, str]:
    """Fold -> the node address its in-process trial runs on (workers.json, written when the fold starts)."""
    places = {}
    for path in run_dir.glob("fold-*/workers.json"):
        places[int(path.parent.name.split("-")[1])] = json.loads(path.read_text())["worker_ips"][0]
    return places


def test_folds_train_side_by_side_on_both_nodes_and_a_killed_fold_finishes(cluster: NetnsCluster):
    """`train --folds 4` with in-process folds of 1 CPU: two Tune trials at once, one per node. The worker node
    dies while its fold trains and comes back: Tune retries that fold, which resumes from its latest checkpoint in
    the shared folder (epochs done before the loss kept), and the run ends with its cross-validation summary."""
    epochs = 6
    run_dir = cluster.shared / "runs" / "folds"
    log = cluster.root / "folds-driver.log"
    argv = ["python", "launch.py", "train", "--encoder", "mini", "--workers", "0", "--folds", "4", "--epochs",
            str(epochs), "--input-size", "64", "64", "--batch-size", "4", "--data", "synth:n_train=24,n_val=4,size=64",
            "--storage", f"file://{cluster.shared}/runs", "--name", "folds"]
    with driving(cluster, argv, log) as driver:
        deadline = time.monotonic() + 300
        while True:  # a fold on the worker node with two epochs done, while another trains on the head
            places = _fold_places(run_dir)
            on_worker = [i for i, ip in places.items() if ip == cluster.worker.ip
                         and (run_dir / f"fold-{i}" / "history.csv").exists()
                         and len(history_rows((run_dir / f"fold-{i}" / "history.csv").read_text())) >= 2
                         and not (run_dir / f"fold-{i}" / "finished.json").exists()]
            if on_worker and cluster.head.ip in places.values():
                break
            assert driver.poll() is None, f"run ended before a fold trained on the worker node:\n{file_tail(log)}"
            assert time.monotonic() < deadline, f"no fold on both nodes in 300 s ({places}):\n{file_tail(log)}"
            time.sleep(0.2)
        _lose_and_restart_worker_node(cluster, driver, log, run_dir / f"fold-{on_worker[0]}" / "history.csv", epochs)
    summary = json.loads((run_dir / "cv.json").read_text())
    assert summary["k"] == 4 and summary["oof"]["images"] == 24 and summary["val"]["images"] == 4


SERVE_CLIENT = """
import concurrent.futures, json, sys, time, requests
url, token, image = sys.argv[1], open(sys.argv[2]).read().strip(), open(sys.argv[3], "rb").read()
auth = {"Authorization": "Bearer " + token}
deadline = time.monotonic() + 180
while True:
    try:
        if requests.get(url + "/v1/model", headers=auth, timeout=5).ok:
            break
    except requests.RequestException:
        pass
    assert time.monotonic() < deadline, "no answer"
    time.sleep(1)
def one(_):
    got = requests.post(url + "/v1/segment?output=json", data=image, headers=auth, timeout=60)
    return got.status_code, got.json().get("node")
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    answers = list(pool.map(one, range(24)))
no_token = requests.post(url + "/v1/segment", data=image, timeout=30).status_code
print(json.dumps({"answers": answers, "no_token": no_token}))
"""


def test_serve_replicas_on_both_nodes_answer(cluster: NetnsCluster, tmp_path: Path):
    """`serve --replicas 2` on the cluster (1 CPU per node: one replica per node), listening on the head's
    address with a token: a client on the head gets answers from replicas on both nodes, none without the
    token."""
    made = subprocess.run([sys.executable, "launch.py", "train", "--data", SYNTH, "--input-size", "64", "64",
                           "--epochs", "1", "--workers", "0", "--storage", str(tmp_path / "runs"), "--name", "s"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    token = tmp_path / "token"
    token.write_text("cluster-serve-token-0123456789")
    image = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)).save(image)
    client = tmp_path / "client.py"
    client.write_text(SERVE_CLIENT)
    log = tmp_path / "serve.log"
    port = 8471
    argv = ["python", "launch.py", "serve", str(tmp_path / "runs" / "s"), "--address", cluster.gcs_address,
            "--replicas", "2", "--host", cluster.head.ip, "--port", str(port), "--token-file", str(token)]
    with driving(cluster, argv, log) as driver:
        proc = cluster.run(["python", str(client), f"http://{cluster.head.ip}:{port}", str(token), str(image)],
                           timeout=400)
        assert driver.poll() is None, file_tail(log)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + file_tail(log)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert {status for status, _ in result["answers"]} == {200}, result
        assert {node for _, node in result["answers"]} == {cluster.head.ip, cluster.worker.ip}, result
        assert result["no_token"] == 401, result
        driver.send_signal(2)  # Ctrl-C: the application is deleted, the cluster keeps running
        driver.wait(timeout=60)
    assert "stopped" in log.read_text(), file_tail(log)
