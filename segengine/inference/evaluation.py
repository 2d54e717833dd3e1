"""`launch.py evaluate`: one confusion matrix over a whole split at original resolution, summed over Ray Data
actors when --workers > 1; scores from `metrics.scores_from_confusion` plus the tutorial's f_score; a table,
metrics.json, confusion_matrix.csv and per_class_iou.png."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import operator
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
from segengine.inference.ensemble import EnsemblePredictor, open_predictor, probability_histogram
from segengine.inference.predictor import BATCH, InferenceError, Predictor, npy_bytes, probabilities, softmax
from segengine.manifest import Manifest
from segengine.metrics import MetricAccumulator


def open_eval_dataset(data: str, manifest: Manifest):
    """The dataset folder, read with its own dataset.yaml if it has one, else with the checkpoint's label
    encoding (classes, label mode, threshold, ignore value); splits as in training (the run's val_fraction)."""
    root = segdata.resolve_data(data)
    # deeper images are read with the checkpoint's range (Predictor.read), so the folder need not measure its own
    split_args = {"val_fraction": float(manifest.config.get("val_fraction", TrainConfig().val_fraction)),
                  "image_range": manifest.dataset.image_range}
    if storage.exists(storage.join(root, "dataset.yaml")):
        return segdata.open_dataset(root, **split_args)
    meta = manifest.dataset
    return segdata.open_dataset(root, classes=meta.classes, label_mode=meta.label_mode, threshold=meta.threshold,
                                target_below=meta.target_below, ignore_index=meta.ignore_index, **split_args)


def _split_tag(split: str) -> str:
    if "/" not in split and "." not in split:  # train, val, test or another split name
        return split
    return Path(split.split("?")[0]).stem or "split"


def default_eval_dir(checkpoint_path: str, split: str, ensemble: bool = False) -> str:
    """`eval-<split>` next to a local checkpoint (in its run folder), inside a folds run folder for its ensemble;
    in the working directory for a model on object storage or an ensemble of checkpoints `A,B,C`."""
    name = f"eval-{_split_tag(split)}"
    if storage.is_uri(checkpoint_path) or (ensemble and not storage.is_dir(checkpoint_path)):
        return str(Path.cwd() / name)
    folder = Path(storage.resolve(checkpoint_path))
    return str((folder if ensemble else folder.parent) / name)


def _read_pair(predictor: Predictor, image_path: str, label_path: str, meta) -> tuple[np.ndarray, np.ndarray]:
    image = predictor.read(image_path)
    label = segdata.read_label(label_path, meta)
    if label.shape != image.shape[:2]:
        raise InferenceError(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image is "
                             f"{image.shape[1]}x{image.shape[0]}")
    return image, label


@dataclass
class SplitScores:
    """What a split's images add up to: the confusion matrix (true x predicted), the tutorial's f_score counts
    and, for two classes, the class-1 probabilities binned per true class (`ensemble.probability_histogram`)."""

    confusion: np.ndarray
    fscore: np.ndarray
    p1_hist: np.ndarray | None = None

    def __add__(self, other: SplitScores) -> SplitScores:
        hist = None if self.p1_hist is None else self.p1_hist + other.p1_hist
        return SplitScores(self.confusion + other.confusion, self.fscore + other.fscore, hist)


def _scores_of(predictor: Predictor, images: list[np.ndarray], members: Sequence | None,
               sliding: bool | None) -> list[np.ndarray]:
    """Each image's scores, by the whole predictor or (out-of-fold) by the member named beside it."""
    if members is None:
        return predictor.batch_scores(images, sliding=sliding)
    scores: list[np.ndarray | None] = [None] * len(images)
    for member in sorted({int(m) for m in members}):
        chosen = [i for i, m in enumerate(members) if int(m) == member]
        got = predictor.members[member].batch_scores([images[i] for i in chosen], sliding=sliding)
        for i, score in zip(chosen, got, strict=True):
            scores[i] = score
    return scores


def evaluate_batch(predictor: Predictor, batch: dict[str, np.ndarray], *, meta: dict[str, Any],
                   sliding: bool | None, probs_dir: str | None = None) -> dict[str, np.ndarray]:
    """Per (image, label) pair of the batch, in this process or in a Ray Data actor: its confusion matrix (by the
    predictor's decision rule), f_score counts and class-1 probability histogram at original resolution,
    flattened; out-of-fold (a `member` column) each image by its member; with `probs_dir`, its probabilities kept
    as NAME.npy."""
    meta_obj = segdata.DatasetMeta.from_dict(meta)
    pairs = [_read_pair(predictor, image, label, meta_obj)
             for image, label in zip(batch["image"], batch["label"], strict=True)]
    members = batch.get("member")
    scores = _scores_of(predictor, [image for image, _ in pairs], members, sliding)
    k = predictor.num_classes
    cms, counts, hists = [], [], []
    for name, lg, (_, label) in zip(batch["name"], scores, pairs, strict=True):
        if probs_dir:
            storage.write_bytes(storage.join(probs_dir, f"{name}.npy"), npy_bytes(probabilities(lg)))
        acc = MetricAccumulator(k)
        acc.update(torch.from_numpy(predictor.decision.adjust(lg)[None]),
                   torch.from_numpy(label[None].astype(np.int64)), 0.0)
        cms.append(acc.cm.numpy().ravel())
        counts.append(acc.fscore_counts.numpy().ravel())
        hists.append(probability_histogram(softmax(lg), label).ravel() if k == 2 else np.zeros(0, np.int64))
    group = np.asarray([int(m) for m in members] if members is not None else [0] * len(scores))
    return {"cm": np.stack(cms), "fscore": np.stack(counts), "hist": np.stack(hists), "group": group}


def evaluate_samples(predictor: Predictor, samples: Sequence, meta, progress: bool = False,
                     sliding: bool | None = None, workers: int = 1, address: str | None = None,
                     plugin_refs: Sequence[str] = (), probs_dir: str | None = None,
                     members: Sequence[int] | None = None) -> dict[int, SplitScores]:
    """The samples' scores at original resolution, summed per group: all in group 0, or with `members` (one per
    sample: out-of-fold) per member; in this process, or on `workers` Ray Data predictor actors."""
    k = predictor.num_classes
    items = [{"image": str(s.image), "label": str(s.label), "name": s.name} for s in samples]
    if members is not None:
        items = [{**item, "member": int(m)} for item, m in zip(items, members, strict=True)]
    job_kwargs = {"meta": meta.to_dict(), "sliding": sliding, "probs_dir": probs_dir}
    rows = map_items(predictor, items, evaluate_batch, job_kwargs, workers=workers, address=address,
                     plugin_refs=plugin_refs, device="cpu", desc="evaluate", progress=progress)
    groups: dict[int, SplitScores] = {}
    for row in rows:
        hist = np.asarray(row["hist"], np.int64).reshape(2, -1) if k == 2 else None
        got = SplitScores(np.asarray(row["cm"], np.int64).reshape(k, k),
                          np.asarray(row["fscore"], np.float64).reshape(3, k), hist)
        group = int(row["group"])
        groups[group] = groups[group] + got if group in groups else got
    return groups


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    confusion: np.ndarray
    out_dir: str
    scores: SplitScores | None = None  # summed over the split
    groups: dict[int, SplitScores] | None = None  # out-of-fold: per fold member


def evaluate(checkpoint_path: str, data: str, *, split: str = "val", workers: int = 1, out: str | None = None,
             address: str | None = None, plugin_refs: Sequence[str] | None = None, verbose: bool = True,
             sliding: bool | None = None, mirror: bool | None = None, amp: bool = True, device: str = "cpu",
             batch_size: int = BATCH, probs: bool = False) -> EvalResult:
    """Metrics of a checkpoint (an exported .onnx file, a folds run's ensemble or several checkpoints `A,B,C`) on
    a dataset split at original resolution; writes metrics.json, confusion_matrix.csv and per_class_iou.png into
    `out` (default `eval-<split>` next to it), and with `probs` each image's class probabilities as probs/NAME.npy
    (float16 C x H x W, as `predict --probs`). A folds run on the split it cross-validated scores out-of-fold."""
    if workers < 1:
        raise InferenceError(f"--workers {workers}: use 1 (this process) or more (Ray Data actors)")
    predictor = open_predictor(checkpoint_path, plugin_refs, verbose, mirror, amp, device, batch_size)
    return evaluate_predictor(predictor, data, split=split, out=out, workers=workers, address=address,
                              plugin_refs=plugin_refs, verbose=verbose, sliding=sliding, probs=probs,
                              default_path=checkpoint_path)


def _held_out_members(predictor: Predictor, samples: Sequence, split: str) -> list[int] | None:
    """Out-of-fold: each sample's member that did not train on it, when the predictor is a folds run's ensemble
    and the split is the one it cross-validated; None for a split the folds never saw."""
    if not isinstance(predictor, EnsemblePredictor) or not predictor.folds:
        return None
    members = [predictor.held_out_by(s.name) for s in samples]
    if all(m is None for m in members):
        return None
    if any(m is None for m in members):
        outside = next(s.name for s, m in zip(samples, members, strict=True) if m is None)
        raise InferenceError(f"split {split!r} mixes images the folds trained on with others (e.g. {outside}); "
                             "evaluate the cross-validated split (out-of-fold) and other splits separately")
    return members


def evaluate_predictor(predictor: Predictor, data: str, *, split: str = "val", out: str | None = None,
                       workers: int = 1, address: str | None = None, plugin_refs: Sequence[str] | None = None,
                       verbose: bool = True, sliding: bool | None = None, probs: bool = False,
                       default_path: str = "") -> EvalResult:
    """`evaluate` of an open predictor."""
    checkpoint_path = predictor.path or default_path
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
    members = _held_out_members(predictor, samples, split)
    out_dir = out or default_eval_dir(checkpoint_path, split, isinstance(predictor, EnsemblePredictor))
    groups = evaluate_samples(predictor, samples, meta, progress=verbose, sliding=sliding, workers=workers,
                              address=address, plugin_refs=list(plugin_refs or []),
                              probs_dir=storage.join(out_dir, "probs") if probs else None, members=members)
    total = functools.reduce(operator.add, groups.values())
    metrics = _metrics(predictor, total, folder.root, split, len(samples), sliding, checkpoint_path)
    metrics["predicted_by"] = ("out-of-fold: each image by the fold model that did not train on it"
                               if members is not None else
                               f"ensemble of {len(predictor.members)}" if len(predictor.members) > 1 else "the model")
    write_eval_outputs(out_dir, metrics, total.confusion, predictor.class_names)
    if verbose:
        print(format_table(metrics))
        print(f"wrote metrics.json, confusion_matrix.csv, per_class_iou.png to {out_dir}")
    return EvalResult(metrics, total.confusion, out_dir, total, groups)


def _metrics(predictor: Predictor, total: SplitScores, root: str, split: str, images: int, sliding: bool | None,
             checkpoint_path: str) -> dict[str, Any]:
    acc = MetricAccumulator(predictor.num_classes)
    acc.cm += torch.from_numpy(total.confusion)
    acc.fscore_counts += torch.from_numpy(total.fscore)
    scores = acc.compute(predictor.class_names)
    scores.pop("loss", None)
    cm = total.confusion
    return {
        "checkpoint": str(checkpoint_path), "data": root, "split": split, "images": images,
        "resolution": "original", "input_size": list(predictor.input_size),
        "inference": (predictor.inference.model_copy(update={"mode": "sliding"}).model_dump(mode="json")
                      if predictor.uses_sliding(sliding) else {"mode": "letterbox"}),
        "encoder": predictor.manifest.encoder, "decision": predictor.decision.model_dump(mode="json"),
        "members": predictor.manifest.members,
        "class_names": predictor.class_names, **scores,
        "label_pixels": dict(zip(predictor.class_names, cm.sum(axis=1).tolist(), strict=True)),
        "predicted_pixels": dict(zip(predictor.class_names, cm.sum(axis=0).tolist(), strict=True)),
        "checkpoint_metrics": predictor.manifest.metrics,
    }


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


