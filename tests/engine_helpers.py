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



def write_shapes_dataset(root, *, n_train: int = 6, n_val: int = 2, size: int = 64, seed: int = 0,
                         line_px: int = 3, disc_radius: int = 7, classes=("background", "line", "disc")):
    """A tiny non-membrane set in the tutorial layout: grey images with `line_px`-thick lines (class 1) and discs
    of radius `disc_radius` (class 2), index labels, a dataset.yaml naming the classes; each class has its own
    grey level plus noise, so a small model learns it in a few steps. Returns the root."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"s{i}" for i in range(n_train + n_val)]
    for name in names:
        label = np.zeros((size, size), np.uint8)
        for _ in range(2):  # two lines, one horizontal and one vertical, away from the edges
            at = int(rng.integers(8, size - 8 - line_px))
            label[at:at + line_px, 4:size - 4] = 1
            at = int(rng.integers(8, size - 8 - line_px))
            label[4:size - 4, at:at + line_px] = 1
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(2):
            cy, cx = (int(v) for v in rng.integers(disc_radius + 2, size - disc_radius - 2, 2))
            label[(yy - cy) ** 2 + (xx - cx) ** 2 <= disc_radius ** 2] = 2
        image = np.array([60, 200, 130], np.float32)[label] + rng.normal(0, 12, label.shape)
        for folder, array in (("Images", image.clip(0, 255).astype(np.uint8)), ("Labels", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{name}.png")
    splits = root / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "train.txt").write_text("\n".join(names[:n_train]) + "\n")
    (splits / "val.txt").write_text("\n".join(names[n_train:]) + "\n")
    (root / "dataset.yaml").write_text(f"classes: [{', '.join(classes)}]\nlabel_mode: index\n")
    return root
