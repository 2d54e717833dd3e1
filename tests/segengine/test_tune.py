"""`launch.py tune` on real Ray Tune: ASHA stops a bad trial, best.yaml trains, a killed driver resumes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from engine_helpers import REPO, TINY_SYNTH

from launch import main


def _search_file(tmp_path: Path, lrs: list[float], epochs: int = 4, extra: dict | None = None) -> Path:
    raw = {"train": {"encoder": "mini", "data": TINY_SYNTH, "input_size": [64, 64], "batch_size": 2,
                     "epochs": epochs, "patience": 50},
           "search": {"lr": {"grid": lrs}}, "searcher": {"type": "random"},
           "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}, "samples": 1,
           "max_concurrent": 1, **(extra or {})}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _rows(tune_dir: Path) -> list[dict]:
    with open(tune_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def test_asha_stops_the_bad_trial_and_best_yaml_trains(ray_local, tmp_path, capsys):
    config = _search_file(tmp_path, [3e-3, 1e-7])
    assert main(["tune", "--config", str(config), "--storage", str(tmp_path), "--name", "s"]) == 0
    out = capsys.readouterr().out
    rows = {float(r["lr"]): r for r in _rows(tmp_path / "s")}
    assert rows[3e-3]["status"] == "finished" and int(rows[3e-3]["epochs"]) == 4
    assert rows[1e-7]["status"] == "stopped" and int(rows[1e-7]["epochs"]) == 2  # ASHA's first rung
    assert float(rows[3e-3]["best_val_miou"]) > float(rows[1e-7]["best_val_miou"]) + 0.2
    assert "best checkpoint" in out and (tmp_path / "s" / "trials.png").stat().st_size > 0
    best = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert best["lr"] == 3e-3
    code = main(["train", "--config", str(tmp_path / "s" / "best.yaml"), "--epochs", "1", "--workers", "0",
                 "--storage", str(tmp_path), "--name", "from-best"])
    assert code == 0 and (tmp_path / "from-best" / "history.csv").exists()


def test_optuna_search_starts_from_the_recipe(ray_local, tmp_path, capsys):
    """The first trial of a model-based search is the recipe's own values (its class weight 1 where it sets
    none), so a search cannot end below the recipe it searches around; off with searcher.start_from_recipe."""
    config = _search_file(tmp_path, [], epochs=1, extra={
        "train": {"encoder": "mini", "data": TINY_SYNTH, "input_size": [64, 64], "batch_size": 2, "epochs": 1,
                  "lr": 3e-3},
        "search": {"lr": {"loguniform": [1e-4, 1e-2]}}, "class_weights": {"per_class": {"membrane": [1.0, 3.0]}},
        "searcher": {"type": "optuna", "seed": 0}, "samples": 2})
    assert main(["tune", "--config", str(config), "--storage", str(tmp_path), "--name", "warm"]) == 0
    assert "the first trial is the recipe's own values (lr 0.003, class_weight_1 1)" in capsys.readouterr().out
    rows = _rows(tmp_path / "warm")
    assert len(rows) == 2 and {(float(r["lr"]), float(r["class_weight_1"])) for r in rows} >= {(3e-3, 1.0)}


def test_search_whose_trials_all_fail_exits_2(ray_local, tmp_path, capsys):
    config = _search_file(tmp_path, [1e12], epochs=2)  # the loss diverges at once: every trial errors
    assert main(["tune", "--config", str(config), "--storage", str(tmp_path), "--name", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no trial produced val_miou: ") and "loss became" in err[-1], err[-3:]


def test_impossible_trial_is_refused_before_start(ray_local, tmp_path, capsys):
    config = _search_file(tmp_path, [1e-3], extra={"resources": {"workers_per_trial": 16}})
    assert main(["tune", "--config", str(config), "--storage", str(tmp_path), "--name", "big"]) == 2
    err = capsys.readouterr().err
    assert "one trial needs 16 CPUs" in err and err.count("\n") == 1


def test_killed_driver_resumes_trials_from_their_checkpoints(tmp_path):
    config = _search_file(tmp_path, [3e-3, 2e-3, 1e-3], epochs=3,
                          extra={"scheduler": {"type": "fifo"}})
    args = [sys.executable, str(REPO / "launch.py"), "tune", "--config", str(config), "--storage", str(tmp_path),
            "--name", "k"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    trials = tmp_path / "k"  # in-process trials: Tune's trial folders hold the run files and the checkpoints
    deadline = time.time() + 400

    def finished() -> int:
        return sum(1 for h in trials.glob("*/history.csv") if len(h.read_text().splitlines()) == 4)

    while finished() < 1:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.5)
    first_done = {h.parent.name for h in trials.glob("*/history.csv") if len(h.read_text().splitlines()) == 4}
    first_epoch = {n: (trials / n / "history.csv").read_text().splitlines()[1] for n in first_done}
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, as a dying shell would
    proc.wait(timeout=60)
    resume = [sys.executable, str(REPO / "launch.py"), "tune", "--name", "k", "--storage", str(tmp_path), "--resume"]
    resumed = subprocess.run(resume, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)  # name only
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Checkpoint successfully created" not in resumed.stdout + resumed.stderr  # Tune's per-epoch INFO line
    rows = _rows(tmp_path / "k")
    assert sorted(float(r["lr"]) for r in rows) == [1e-3, 2e-3, 3e-3]
    assert all(r["status"] == "finished" for r in rows), rows
    for name in first_done:  # finished before the kill: at most its last epoch reruns, from Tune's checkpoint
        lines = (trials / name / "history.csv").read_text().splitlines()
        assert len(lines) == 4 and lines[1] == first_epoch[name]


def _trial_pids(tune_dir: Path) -> dict[str, int]:
    """The process each trial's driver function ran in (Tune's own `pid` in every result)."""
    return {r["trial"]: json.loads((tune_dir / r["trial"] / "result.json").read_text().splitlines()[0])["pid"]
            for r in _rows(tune_dir)}


def test_train_backed_trial_reports_every_epoch_and_its_checkpoint(ray_local, tmp_path):
    """workers_per_trial >= 1: each trial fits a TorchTrainer; metrics and the checkpoint path reach Tune; the
    second trial starts after the first, in a process of its own (a reused one would keep a stopped trial's
    trainer running: `reuse_trial_actors`); the checkpoints are complete and rebuild the model."""
    from segengine.search_config import SearchConfig
    from segengine.tuning import tune_run

    config = _search_file(tmp_path, [3e-3, 1e-3], epochs=2, extra={"resources": {"workers_per_trial": 1}})
    settings = SearchConfig.load(str(config))
    out = tune_run(settings, name="tb", storage_root=str(tmp_path), address=None, resume=False, overwrite=False)
    assert len(out["rows"]) == 2
    for row in out["rows"]:
        assert row["status"] == "finished" and row["epochs"] == 2
        assert Path(row["run_dir"]).parent.name == "trials"  # the trial's TorchTrainer keeps its own run folder
        assert len((Path(row["run_dir"]) / "history.csv").read_text().splitlines()) == 3  # its own 2 epochs
    assert len(set(_trial_pids(tmp_path / "tb").values())) == 2
    from segengine import checkpoint

    assert checkpoint.is_complete(out["best_checkpoint"])
    assert checkpoint.read_manifest(out["best_checkpoint"]).config["workers"] == 1
    model, _ = checkpoint.build_model(out["best_checkpoint"])
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_killed_worker_of_a_train_backed_trial_resumes_from_an_uploaded_checkpoint(ray_local, tmp_path):
    """SIGKILL a trial's Ray Train worker after 2 epochs: its TorchTrainer restarts from the last checkpoint Ray
    registered and the trial finishes, every epoch
    once in its history."""
    import threading

    from engine_helpers import kill_a_train_worker_when

    from segengine.search_config import SearchConfig
    from segengine.tuning import tune_run

    config = _search_file(tmp_path, [3e-3], epochs=5, extra={"resources": {"workers_per_trial": 1}})
    settings = SearchConfig.load(str(config))
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(tune_run(
        settings, name="kill", storage_root=str(tmp_path), address=None, resume=False, overwrite=False)), daemon=True)
    thread.start()

    def histories() -> list[Path]:
        return list((tmp_path / "kill" / "trials").glob("*/history.csv"))

    kill_a_train_worker_when(lambda: histories() and len(histories()[0].read_text().splitlines()) >= 3, thread)
    assert out, "the search returned nothing"
    (row,) = out["rows"]
    assert row["status"] == "finished" and row["epochs"] == 5
    epochs = [line.split(",")[0] for line in histories()[0].read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3", "4", "5"]


def test_in_process_trials_checkpoint_through_tune_and_pbt_exploits(ray_local, tmp_path, capsys):
    """Tune keeps the in-process trials' checkpoints (CheckpointConfig); PBT makes the weak trial continue from the
    strong one's checkpoint with a mutated lr, and the search still ends with a usable best checkpoint."""
    config = _search_file(tmp_path, [3e-3, 1e-7], epochs=4, extra={
        "scheduler": {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                      "resample_probability": 0.0},
        "train": {"encoder": "mini", "data": TINY_SYNTH, "input_size": [64, 64], "batch_size": 2, "epochs": 4,
                  "patience": 50, "keep_checkpoints": 1},
        "max_concurrent": 2})
    assert main(["tune", "--config", str(config), "--storage", str(tmp_path), "--name", "p"]) == 0
    out = capsys.readouterr().out
    exploits = [ln for ln in (tmp_path / "p" / "pbt_global.txt").read_text().splitlines() if ln.strip()]
    assert exploits and "PBT exploits" in out
    from segengine import checkpoint

    best = yaml.safe_load((tmp_path / "p" / "best.yaml").read_text().split("\n", 3)[-1]) or {}
    assert best["encoder"] == "mini"
    trial_dirs = [d for d in (tmp_path / "p").iterdir() if (d / "history.csv").exists()]
    assert len(trial_dirs) == 2
    for trial in trial_dirs:  # Tune's retention: 3 for PBT (keep_checkpoints 1 raised), of the 4 epochs
        kept = sorted(trial.glob("checkpoint_*"))
        assert 1 <= len(kept) <= 3 and all(checkpoint.is_complete(str(k)) for k in kept)
    rows = _rows(tmp_path / "p")
    assert min(float(r["best_val_miou"]) for r in rows) > 0.3  # the 1e-7 trial learnt after exploiting
