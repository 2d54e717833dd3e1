"""`launch.py train` on real Ray Train: learning, checkpoints, resume, failures and clear refusals."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from engine_helpers import REPO, kill_a_train_worker_when, tiny_config

from launch import main
from segengine import checkpoint
from segengine.reporting import make_reporter
from segengine.runprep import validate_data
from segengine.training import train
from segengine.worker import Trainer


def _history(run_dir: str) -> list[dict]:
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


def test_two_workers_learn(trained_run, tmp_path):
    history = _history(trained_run["run_dir"])
    assert [int(h["epoch"]) for h in history] == list(range(1, 7))
    losses = [float(h["train_loss"]) for h in history]
    assert losses[-1] < losses[0]
    cfg = tiny_config(storage=str(tmp_path), name="untrained")
    untrained = Trainer(cfg, make_reporter("local", str(tmp_path / "u"), 1, cfg.metric, cfg.mode),
                        validate_data(cfg)[1], verbose=False)
    baseline = untrained._validate()["miou"]
    final = trained_run["metrics"]["val_miou"]
    assert final >= baseline + 0.15, (baseline, final)
    assert json.loads((Path(trained_run["run_dir"]) / "workers.json").read_text())["worker_ips"].__len__() == 2
    for name in ("loss.png", "miou.png", "config.yaml"):
        assert (Path(trained_run["run_dir"]) / name).stat().st_size > 0
    assert list((Path(trained_run["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoint_is_complete_and_safe(trained_run):
    state, manifest = checkpoint.load(trained_run["best_checkpoint"])
    assert manifest.encoder == "mini" and manifest.num_classes == 2 and manifest.in_channels == 1
    assert manifest.config["lr"] == 3e-3 and manifest.normalization.mean == (127.5,)
    assert "model" in state and "optimizer" in state
    broken = Path(trained_run["best_checkpoint"]).parent / "broken_copy"
    import shutil

    shutil.copytree(trained_run["best_checkpoint"], broken)
    data = (broken / checkpoint.STATE_FILE).read_bytes()
    (broken / checkpoint.STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="does not match its manifest"):
        checkpoint.load(str(broken))
    shutil.rmtree(broken)


def test_existing_name_is_refused_with_the_fix(trained_run, capsys):
    storage, name = str(Path(trained_run["run_dir"]).parent), trained_run["name"]
    code = main(["train", "--data", "synth:seed=0,n_train=16,n_val=8,size=64", "--storage", storage,
                 "--name", name, "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume" in err and "--overwrite" in err and err.count("\n") == 1


def test_resume_with_changed_config_lists_keys(trained_run, tmp_path, capsys):
    """Only the epoch budget may change on --resume; anything else is listed and refused."""
    import yaml

    storage, name = str(Path(trained_run["run_dir"]).parent), trained_run["name"]
    changed = tiny_config(storage=storage, name=name, lr=0.5, epochs=9).to_dict()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(changed))
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "with a different config: lr differ" in err


def test_impossible_resources_are_refused(ray_local, tmp_path, capsys):
    code = main(["train", "--data", "synth:seed=0,n_train=16,n_val=8,size=64", "--storage", str(tmp_path),
                 "--workers", "64", "--epochs", "1", "--input-size", "64", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "needs 64 CPUs" in err and "--workers" in err and err.count("\n") == 1
    # an autoscaling cluster: warn, wait the given time for nodes to join, then refuse
    start = time.monotonic()
    code = main(["train", "--data", "synth:seed=0,n_train=16,n_val=8,size=64", "--storage", str(tmp_path),
                 "--workers", "64", "--epochs", "1", "--input-size", "64", "64", "--wait-for-resources", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "waiting up to" in err and "after waiting 2 s" in err and time.monotonic() - start >= 2


def test_unknown_encoder_and_bad_key_are_one_line(tmp_path, capsys):
    assert main(["train", "--encoder", "mobilnet", "--storage", str(tmp_path), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "mobilenet" in err and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("lrr: 0.1\n")
    assert main(["train", "--config", str(bad), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lrr'" in err and str(bad) in err


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    """A real Ctrl-C of a Ray Train run after two epochs, then --resume: epochs and LR continue where they stopped
    and history.csv has every epoch once."""
    args = [sys.executable, str(REPO / "launch.py"), "train", "--data", "synth:seed=0,n_train=16,n_val=8,size=64",
            "--input-size", "64", "64", "--batch-size", "4", "--epochs", "12", "--lr", "0.002", "--lr-decay", "0.5",
            "--workers", "1", "--storage", str(tmp_path), "--name", "r"]
    run_dir = tmp_path / "r"
    # the user's situation: no RAY_ADDRESS (the session's test Ray set one), so launch.py starts its own Ray
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NO_COLOR")}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    while len(checkpoint.list_complete(str(run_dir))) < 2 or not (run_dir / "history.csv").exists() \
            or len(_history(str(run_dir))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "--resume" in out, out
    # output to a pipe (a file, a CI log), NO_COLOR unset: worker lines without colour codes
    assert "RayTrainWorker pid=" in out and "\x1b[" not in out
    assert "PreemptionWatcher" not in out  # a local Ray has nothing to preempt: Train's watcher is off, and its log
    done = len(_history(str(run_dir)))
    assert 2 <= done < 12  # 12 short epochs: the interrupt lands mid-run
    hint = re.search(r"resume with:\n\s+python launch.py (train .*--resume)", out).group(1).split()
    assert "--epochs" not in hint  # the saved config.yaml has the budget: the printed command is the whole resume
    resumed = subprocess.run([sys.executable, str(REPO / "launch.py"), *hint], cwd=REPO, capture_output=True,
                             text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    resumed_from = int(re.search(r"resumed from epoch (\d+)", resumed.stdout).group(1))
    assert 1 <= resumed_from <= done  # the latest checkpoint Train registered (it consumes reports one behind)
    history = _history(str(run_dir))
    assert [int(h["epoch"]) for h in history] == list(range(1, 13))
    for h in history:
        assert float(h["lr"]) == pytest.approx(0.002 * 0.5 ** (int(h["epoch"]) - 1))


def test_killed_worker_process_is_survived(ray_local, tmp_path):
    """SIGKILL one Ray Train worker mid-run: the run restarts from its last checkpoint and finishes."""
    cfg = tiny_config(storage=str(tmp_path), name="killed", epochs=5, max_failures=2)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(train(cfg)), daemon=True)
    thread.start()
    run_dir = tmp_path / "killed"
    kill_a_train_worker_when(lambda: (run_dir / "history.csv").exists() and len(_history(str(run_dir))) >= 2,
                             thread)
    assert result, "the run returned nothing"
    history = _history(str(run_dir))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3, 4, 5]


def test_plugin_file_outside_repo_is_imported_on_workers(ray_local, tmp_path):
    plugin = tmp_path / "outside" / "my_zoo_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(
        "import zoo\n"
        "from zoo import mini\n\n"
        "@zoo.register_encoder('outside-mini', description='mini registered from a file outside the repo',\n"
        "                      channels=(32, 64, 128), reductions=(1, 2, 4), input_multiple=4)\n"
        "def build(num_classes, in_channels=3):\n"
        "    return mini.mini(num_classes, in_channels)\n")
    cfg = tiny_config(storage=str(tmp_path), name="plug", epochs=1, encoder="outside-mini",
                      plugins=[str(plugin)])
    summary = train(cfg)
    assert checkpoint.read_manifest(summary["best_checkpoint"]).encoder == "outside-mini"




def test_a_deterministic_worker_error_ends_the_run_at_once(ray_local, tmp_path):
    """A diverging loss (every rank sees it at the same step) is not retried by FailureConfig: one line, at once."""
    from segengine.runprep import RunError

    cfg = tiny_config(storage=str(tmp_path), name="nan", epochs=3, lr=1e12, max_failures=2)
    with pytest.raises(RunError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith("training failed: loss became non-finite") and "not retried" in message, message
    assert "\n" not in message and not list((tmp_path / "nan").glob("checkpoint_epoch_*"))


ONE_RANK_FAILS = r"""
import torch.distributed as dist
from zoo import register_encoder, create_model
from zoo._errors import ZooError


class ShapeRefused(ZooError):
    user_error = True  # the plugin's own deterministic error


@register_encoder("fails-on-rank-1", description="mini, but rank 1 refuses its first batch", channels=(16, 32, 64),
                  reductions=(1, 2, 4), input_multiple=4)
def build(num_classes, in_channels=3):
    with open(BUILDS_FILE, "a") as f:  # one line per model built: per rank and attempt
        f.write("built\n")
    model = create_model("mini", num_classes, in_channels=in_channels)
    forward = model.forward

    def refusing(x):
        if dist.is_initialized() and dist.get_rank() == 1:
            raise ShapeRefused(f"fails-on-rank-1: batch of shape {tuple(x.shape)} refused")
        return forward(x)

    model.forward = refusing
    return model
"""


def test_one_ranks_deterministic_error_is_not_retried(tmp_path):
    """A `user_error` raised on one rank only (a plugin's, say): Train must end the group, but the retry it starts
    stops at once instead of training again; the driver raises the message in one line."""
    from segengine.runprep import RunError

    builds = tmp_path / "builds.txt"
    plugin = tmp_path / "one_rank_fails.py"
    plugin.write_text(f"BUILDS_FILE = {str(builds)!r}\n" + ONE_RANK_FAILS)
    cfg = tiny_config(storage=str(tmp_path), name="one-rank", encoder="fails-on-rank-1", plugins=[str(plugin)],
                      epochs=2, max_failures=2)
    import plugins

    plugins.load_plugins([str(plugin)])
    with pytest.raises(RunError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith("training failed: fails-on-rank-1: batch of shape") and "not retried" in message
    assert "\n" not in message
    # the driver builds one model for its checks; each of the 2 ranks built one in the first attempt only
    assert builds.read_text().count("built") <= 3, builds.read_text()


def test_a_checkpoints_random_state_continues_every_stream_where_it_stopped():
    """numpy's generator is restored at its saved position (not at a fresh block), so a resumed run draws exactly
    the numbers the uninterrupted one would have drawn next."""
    import random

    import numpy as np
    import torch

    from segengine.worker import _rng_state, _set_rng_state

    np.random.seed(3)
    np.random.random(5)  # the generator is mid-block, as it is after any use
    saved = _rng_state()
    expected = (np.random.random(4).tolist(), random.random(), torch.rand(2).tolist())
    np.random.random(100)
    _set_rng_state(saved)
    assert (np.random.random(4).tolist(), random.random(), torch.rand(2).tolist()) == expected


def test_two_epochs_plus_resume_to_four_equal_four_epochs(tmp_path):
    """In-process, patch sampling: the resumed run trains the same crops in the same order from the same state, so
    its final weights equal the uninterrupted run's (the end-to-end property; the numpy position itself is the
    unit test above, since these crops draw from their own seeded generators)."""
    import torch

    common = ["train", "--data", "synth:seed=0,n_train=8,n_val=4,size=64", "--workers", "0", "--sampling", "patch",
              "--input-size", "32", "32", "--samples-per-epoch", "16", "--batch-size", "4", "--storage", str(tmp_path)]
    assert main([*common, "--epochs", "4", "--name", "straight"]) == 0
    assert main([*common, "--epochs", "2", "--name", "resumed"]) == 0
    assert main([*common, "--epochs", "4", "--name", "resumed", "--resume"]) == 0

    def final(name):
        return torch.load(tmp_path / name / "checkpoint_epoch_0004" / "state.pt", weights_only=True)["model"]

    straight, resumed = final("straight"), final("resumed")
    assert all(torch.allclose(straight[k].float(), resumed[k].float(), atol=1e-6) for k in straight)
    losses = [[row["train_loss"] for row in _history(str(tmp_path / name))] for name in ("straight", "resumed")]
    assert losses[0] == losses[1]
