"""`launch.py evaluate`: one confusion matrix over a whole split at original resolution, summed over Ray Data
actors when --workers > 1; scores from `metrics.scores_from_confusion` plus the tutorial's f_score; a table,
metrics.json, confusion_matrix.csv and per_class_iou.png."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import segdata
from segengine import storage
from segengine.config import TrainConfig
from segengine.inference.batch_jobs import map_items
from segengine.inference.predictor import BATCH, InferenceError, Predictor, npy_bytes, open_predictor, probabilities
from segengine.manifest import Manifest
from segengine.metrics import MetricAccumulator


def open_eval_dataset(data: str, manifest: Manifest):
    """The dataset folder, read with its own dataset.yaml if it has one, else with the checkpoint's label
    encoding (classes, label mode, threshold, ignore value); splits as in training (the run's val_fraction)."""
    root = segdata.resolve_data(data)
    split_args = {"val_fraction": float(manifest.config.get("val_fraction", TrainConfig().val_fraction))}
    if storage.exists(storage.join(root, "dataset.yaml")):
        return segdata.open_dataset(root, **split_args)
    meta = manifest.dataset
    return segdata.open_dataset(root, classes=meta.classes, label_mode=meta.label_mode, threshold=meta.threshold,
                                target_below=meta.target_below, ignore_index=meta.ignore_index, **split_args)


def _split_tag(split: str) -> str:
    if "/" not in split and "." not in split:  # train, val, test or another split name
        return split
    return Path(split.split("?")[0]).stem or "split"


def default_eval_dir(checkpoint_path: str, split: str) -> str:
    """`eval-<split>` next to a local checkpoint; in the working directory for one on object storage."""
    name = f"eval-{_split_tag(split)}"
    if storage.is_uri(checkpoint_path):
        return str(Path.cwd() / name)
    return str(Path(storage.resolve(checkpoint_path)).parent / name)


def _read_pair(predictor: Predictor, image_path: str, label_path: str, meta) -> tuple[np.ndarray, np.ndarray]:
    image = predictor.read(image_path)
    label = segdata.read_label(label_path, meta)
    if label.shape != image.shape[:2]:
        raise InferenceError(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image is "
                             f"{image.shape[1]}x{image.shape[0]}")
    return image, label


def evaluate_batch(predictor: Predictor, batch: dict[str, np.ndarray], *, meta: dict[str, Any],
                   sliding: bool | None, probs_dir: str | None = None) -> dict[str, np.ndarray]:
    """Per (image, label) pair of the batch, in this process or in a Ray Data actor: its confusion matrix and
    f_score counts at original resolution, flattened; with `probs_dir`, its probabilities kept as NAME.npy."""
    meta_obj = segdata.DatasetMeta.from_dict(meta)
    pairs = [_read_pair(predictor, image, label, meta_obj)
             for image, label in zip(batch["image"], batch["label"], strict=True)]
    scores = predictor.batch_scores([image for image, _ in pairs], sliding=sliding)
    cms, counts = [], []
    for name, lg in zip(batch["name"], scores, strict=True) if probs_dir else ():
        storage.write_bytes(storage.join(probs_dir, f"{name}.npy"), npy_bytes(probabilities(lg)))
    for lg, (_, label) in zip(scores, pairs, strict=True):
        acc = MetricAccumulator(predictor.num_classes)
        acc.update(torch.from_numpy(lg[None]), torch.from_numpy(label[None].astype(np.int64)), 0.0)
        cms.append(acc.cm.numpy().ravel())
        counts.append(acc.fscore_counts.numpy().ravel())
    return {"cm": np.stack(cms), "fscore": np.stack(counts)}


def evaluate_samples(predictor: Predictor, samples: Sequence, meta, progress: bool = False,
                     sliding: bool | None = None, workers: int = 1, address: str | None = None,
                     plugin_refs: Sequence[str] = (), probs_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(confusion matrix, f_score counts) of the samples at original resolution, summed over the images; in this
    process, or on `workers` Ray Data predictor actors (`on_ray`)."""
    k = predictor.num_classes
    items = [{"image": str(s.image), "label": str(s.label), "name": s.name} for s in samples]
    job_kwargs = {"meta": meta.to_dict(), "sliding": sliding, "probs_dir": probs_dir}
    rows = map_items(predictor, items, evaluate_batch, job_kwargs, workers=workers, address=address,
                     plugin_refs=plugin_refs, device="cpu", desc="evaluate", progress=progress)
    cm = np.zeros((k, k), np.int64)
    counts = np.zeros((3, k), np.float64)
    for row in rows:
        cm += np.asarray(row["cm"], np.int64).reshape(k, k)
        counts += np.asarray(row["fscore"], np.float64).reshape(3, k)
    return cm, counts


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    confusion: np.ndarray
    out_dir: str


def evaluate(checkpoint_path: str, data: str, *, split: str = "val", workers: int = 1, out: str | None = None,
             address: str | None = None, plugin_refs: Sequence[str] | None = None, verbose: bool = True,
             sliding: bool | None = None, mirror: bool | None = None, amp: bool = True, device: str = "cpu",
             batch_size: int = BATCH, probs: bool = False) -> EvalResult:
    """Metrics of a checkpoint (or an exported .onnx file) on a dataset split at original resolution; writes
    metrics.json, confusion_matrix.csv and per_class_iou.png into `out` (default `eval-<split>` next to it), and
    with `probs` each image's class probabilities as probs/NAME.npy (float16 C x H x W, as `predict --probs`)."""
    if workers < 1:
        raise InferenceError(f"--workers {workers}: use 1 (this process) or more (Ray Data actors)")
    predictor = open_predictor(checkpoint_path, plugin_refs, verbose, mirror, amp, device, batch_size)
    checkpoint_path = predictor.path or checkpoint_path
    folder = open_eval_dataset(data, predictor.manifest)
    meta = folder.meta
    if meta.num_classes != predictor.num_classes:
        raise InferenceError(f"{folder.root} has {meta.num_classes} classes ({', '.join(meta.classes)}) but the "
                             f"checkpoint predicts {predictor.num_classes} ({', '.join(predictor.class_names)})")
    samples = segdata.validated_samples(folder, split, False)
    unlabelled = [s.name for s in samples if s.label is None]
    if unlabelled:
        raise InferenceError(f"split {split!r} of {folder.root} has {len(unlabelled)} image(s) without labels "
                             f"(e.g. {unlabelled[0]}); evaluate needs labels, use `launch.py predict` for these")
    if not samples:
        raise InferenceError(f"split {split!r} of {folder.root} is empty")
    out_dir = out or default_eval_dir(checkpoint_path, split)
    cm, counts = evaluate_samples(predictor, samples, meta, progress=verbose, sliding=sliding, workers=workers,
                                  address=address, plugin_refs=list(plugin_refs or []),
                                  probs_dir=storage.join(out_dir, "probs") if probs else None)

    acc = MetricAccumulator(predictor.num_classes)
    acc.cm += torch.from_numpy(np.asarray(cm, np.int64))
    acc.fscore_counts += torch.from_numpy(np.asarray(counts, np.float64))
    scores = acc.compute(predictor.class_names)
    scores.pop("loss", None)
    metrics = {
        "checkpoint": str(checkpoint_path), "data": folder.root, "split": split, "images": len(samples),
        "resolution": "original", "input_size": list(predictor.input_size),
        "inference": (predictor.inference.model_copy(update={"mode": "sliding"}).model_dump(mode="json")
                      if predictor.uses_sliding(sliding) else {"mode": "letterbox"}),
        "encoder": predictor.manifest.encoder,
        "class_names": predictor.class_names, **scores,
        "label_pixels": dict(zip(predictor.class_names, np.asarray(cm).sum(axis=1).tolist(), strict=True)),
        "predicted_pixels": dict(zip(predictor.class_names, np.asarray(cm).sum(axis=0).tolist(), strict=True)),
        "checkpoint_metrics": predictor.manifest.metrics,
    }
    write_eval_outputs(out_dir, metrics, np.asarray(cm, np.int64), predictor.class_names)
    if verbose:
        print(format_table(metrics))
        print(f"wrote metrics.json, confusion_matrix.csv, per_class_iou.png to {out_dir}")
    return EvalResult(metrics, np.asarray(cm, np.int64), out_dir)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def confusion_csv(cm: np.ndarray, class_names: list[str]) -> str:
    """Rows = true class, columns = predicted class, pixel counts."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm.tolist(), strict=True):
        writer.writerow([name, *row])
    return text.getvalue()


def iou_chart_png(metrics: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metrics["class_names"]
    values = [metrics["iou"][n] for n in names]
    shown = [0.0 if v is None or not math.isfinite(v) else v for v in values]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4), dpi=100)
    bars = ax.bar(range(len(names)), shown, color="#4C72B0")
    for bar, v in zip(bars, values, strict=True):
        label = "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, label, ha="center", va="bottom",
                fontsize=8)
    miou = metrics["miou"]
    if miou is not None and math.isfinite(miou):
        ax.axhline(miou, color="#C44E52", linestyle="--", label=f"mIoU {miou:.3f}")
        ax.legend(loc="lower right")
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6
                  else "center")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("IoU")
    ax.set_title(f"per-class IoU: {metrics['split']}, {metrics['images']} images at original size", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_eval_outputs(out_dir: str, metrics: dict[str, Any], cm: np.ndarray, class_names: list[str]) -> None:
    storage.write_bytes(storage.join(out_dir, "metrics.json"),
                        json.dumps(_json_safe(metrics), indent=2).encode())
    storage.write_bytes(storage.join(out_dir, "confusion_matrix.csv"), confusion_csv(cm, class_names).encode())
    storage.write_bytes(storage.join(out_dir, "per_class_iou.png"), iou_chart_png(metrics))


def format_table(metrics: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "   n/a" if v is None or not math.isfinite(v) else f"{v:6.4f}"

    names = metrics["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{metrics['split']} split of {metrics['data']}: {metrics['images']} images at original resolution",
             f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}  {'Prec.':>6}  {'Recall':>6}  {'label px':>10}"]
    for n in names:
        lines.append(f"{n:<{width}}  {num(metrics['iou'][n])}  {num(metrics['dice'][n])}  "
                     f"{num(metrics['precision'][n])}  {num(metrics['recall'][n])}  {metrics['label_pixels'][n]:>10}")
    lines.append(f"pixel accuracy {num(metrics['pixel_acc'])}   mIoU {num(metrics['miou'])}   "
                 f"mDice {num(metrics['mdice'])}   f_score (tutorial) {num(metrics['f_score'])}")
    return "\n".join(lines)


