"""Helpers shared by the engine tests (a uniquely named module: several conftest.py files exist)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_SYNTH = "synth:seed=0,n_train=32,n_val=8,size=64"


def tiny_config(**overrides):
    """A training config small enough for tests: mini UNet, 64 px synthetic membranes."""
    from segengine.config import TrainConfig

    base = dict(encoder="mini", data=TINY_SYNTH, input_size=(64, 64), batch_size=2, epochs=6, lr=3e-3,
                lr_decay=0.95, workers=2, seed=0, max_failures=1)
    base.update(overrides)
    return TrainConfig(**base)


def kill_a_train_worker_when(ready, thread, timeout: float = 300) -> None:
    """Wait (while `thread` runs a training job) until `ready()`, SIGKILL one Ray Train worker process, then wait
    for the job to end."""
    import os
    import signal
    import time

    from ray.util.state import list_actors

    deadline = time.time() + timeout
    while not ready():
        assert thread.is_alive() and time.time() < deadline, "the job ended or stalled before the kill"
        time.sleep(0.2)
    workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "RayTrainWorker" in a.class_name]
    assert workers, "no Ray Train worker found"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive(), "the job did not finish after the kill"

