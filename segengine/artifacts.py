"""What a person reads in a run folder: history.csv, loss.png, miou.png, previews/, TensorBoard events,
workers.json.

Written by rank 0 after every epoch from the full history (which travels inside checkpoints), so a resumed run
rewrites the files with every epoch exactly once. Object-storage runs stage files locally and upload them.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segengine import storage


def measured(history: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The epochs that measured `key`: all for training figures; for validation figures (`val_*`) the validated
    epochs only (between validations an epoch carries the last scores, `validated` 0: never plotted as a point)."""
    if not key.startswith("val_"):
        return history
    return [h for h in history if h.get("validated", 1)]


def plot_curves(history: list[dict[str, Any]], keys: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key in keys:
        rows = measured(history, key)
        ax.plot([h["epoch"] for h in rows], [h.get(key, float("nan")) for h in rows], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def history_csv(history: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for h in history for k in h))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


class RunArtifacts:
    def __init__(self, run_dir: str, class_names: list[str]):
        self.run_dir = run_dir
        self.class_names = class_names
        self._staging = tempfile.mkdtemp(prefix="unet-zoo-run-") if storage.is_uri(run_dir) else None
        self.local = Path(self._staging or run_dir)
        self.local.mkdir(parents=True, exist_ok=True)
        self._tb = None

    def _writer(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.local / "tensorboard"), flush_secs=5)
        return self._tb

    def write_workers(self, places: list[dict[str, str]]) -> None:
        self.write_json("workers.json", {"worker_ips": [p["ip"] for p in places],
                                         "worker_node_ids": [p["node_id"] for p in places],
                                         "worker_precision": [p["precision"] for p in places]})

    def write_json(self, name: str, info: dict[str, Any]) -> None:
        storage.write_bytes(str(self.local / name), json.dumps(info, indent=2).encode())
        self._sync()

    def epoch_done(self, history: list[dict[str, Any]], checkpoint_path: str | None, scores: dict) -> None:
        last = history[-1]
        storage.write_bytes(str(self.local / "history.csv"), history_csv(history).encode())
        plot_curves(history, ["train_loss", "val_loss"], "loss", self.local / "loss.png")
        plot_curves(history, ["val_miou"], "validation mIoU", self.local / "miou.png")
        tb = self._writer()
        step = last["epoch"]
        validated = bool(last.get("validated", 1))  # carried scores are not logged again
        for key in ("train_loss", "val_loss", "val_miou", "val_pixel_acc", "val_f_score", "lr", "images_per_s"):
            if validated or not key.startswith("val_"):
                tb.add_scalar(key, last[key], step)
        if validated:
            for name, iou in scores["iou"].items():
                tb.add_scalar(f"val_iou/{name}", iou, step)
        tb.flush()
        summary = {"epochs_done": step, "last": last, "latest_checkpoint": checkpoint_path}
        storage.write_bytes(str(self.local / "summary.json"), json.dumps(summary, indent=2, default=str).encode())
        self._sync()

    def write_validation(self, epoch: int, best: bool, scores: dict[str, Any]) -> None:
        """The validation's confusion matrix (rows: true class, columns: predicted) and per-class IoU:
        validation.json, and validation_best.json for the best validation so far."""
        info = {"epoch": epoch, "classes": self.class_names, "confusion": scores["confusion"], "iou": scores["iou"]}
        text = json.dumps(info, indent=1)
        storage.write_bytes(str(self.local / "validation.json"), text.encode())
        if best:
            storage.write_bytes(str(self.local / "validation_best.json"), text.encode())

    def write_previews(self, image: np.ndarray, epoch: int, best: bool) -> None:
        """A validation's prediction previews (`segengine.previews`): previews/latest.png, previews/best.png when
        the epoch is the best so far, and TensorBoard's `previews` image at the epoch."""
        folder = self.local / "previews"
        folder.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")  # encoded once; optimize=True would cost 4x for 4 %
        storage.write_bytes(str(folder / "latest.png"), buffer.getvalue())
        if best:
            storage.write_bytes(str(folder / "best.png"), buffer.getvalue())
        self._writer().add_image("previews", image, epoch, dataformats="HWC")
        self._sync()

    def close(self) -> None:
        """The TensorBoard writer closed (its events written out): the run's files change no more after it."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._sync()

    def _sync(self) -> None:
        if self._staging is not None:
            storage.upload_dir(self._staging, self.run_dir)
