"""Using a trained model: `launch.py evaluate`, `predict` and `export`, rebuilt from a checkpoint alone.

Everything here starts from `checkpoint.build_model` (weights loaded with `torch.load(weights_only=True)`, plugins
only from the environment and --plugin), and preprocesses exactly as validation did: the letterbox of
`segdata.EvalTransform` with the manifest's input size and normalisation, predictions mapped back to the original
pixels through `Letterbox.invert`.

- evaluate: one confusion matrix over a whole split at original resolution, summed over Ray tasks when
  --workers > 1; scores from `metrics.scores_from_confusion` plus the tutorial's f_score; a table, metrics.json,
  confusion_matrix.csv and per_class_iou.png.
- predict: class-index mask, colour mask, blended overlay and cut-out (the tutorial's display modes) per image,
  optional sliding-window inference with blended overlaps and per-class pixel counts; unreadable inputs are reported
  and skipped.
- export: ONNX (torch.export-based exporter, dynamic batch and H/W as multiples of the encoder's input multiple) or
  TorchScript (trace), then a check of the exported file against PyTorch at two spatial sizes.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import segdata
from segdata.files import to_channels
from segdata.meta import default_palette
from segengine import checkpoint as ckpt
from segengine import storage
from segengine.metrics import MetricAccumulator
from segengine.windows import sliding_probabilities

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
BATCH = 8  # letterboxed images or tiles per forward pass
OVERLAY_ALPHA = 0.7  # the tutorial's Image.blend(original, colours, 0.7)
EXPORT_TOLERANCE = 1e-4  # max abs logit difference allowed, times max(1, max |PyTorch logit|)


class InferenceError(RuntimeError):
    """A request evaluate/predict/export cannot honour; one line for the CLI."""

    user_error = True


# --------------------------------------------------------------------------------------------------------------
# the model and its preprocessing


class Predictor:
    """A model in eval mode plus what its manifest says about inputs and outputs."""

    def __init__(self, model: torch.nn.Module, manifest: dict[str, Any]) -> None:
        self.model = model.eval()
        self.manifest = manifest
        self.num_classes = int(manifest["num_classes"])
        self.class_names = [str(n) for n in manifest.get("class_names") or range(self.num_classes)]
        self.in_channels = int(manifest["in_channels"])
        self.input_size = (int(manifest["input_size"][0]), int(manifest["input_size"][1]))
        norm = manifest["normalization"]
        self.mean = [float(v) for v in norm["mean"]]
        self.std = [float(v) for v in norm["std"]]
        colors = list(manifest.get("colors") or [])
        if len(colors) < self.num_classes:
            colors = default_palette(self.num_classes)
        self.palette = np.asarray(colors[: self.num_classes], np.uint8).reshape(self.num_classes, 3)
        self.multiple = int(getattr(getattr(model, "spec", None), "input_multiple", 1))
        self.transform = segdata.EvalTransform(self.input_size, self.mean, self.std)
        self.native = segdata.NativeTransform(self.mean, self.std)
        self.pad_value = segdata.normalised_grey(self.mean, self.std)
        # how the recipe validated; checkpoints from before this key letterboxed
        recorded = manifest.get("inference") or {}
        self.inference = {"mode": recorded.get("mode", "letterbox"),
                          "window": [int(v) for v in recorded.get("window", self.input_size)],
                          "overlap": float(recorded.get("overlap", 0.25))}

    @classmethod
    def from_checkpoint(cls, path: str, plugin_refs: Sequence[str] | None = None) -> Predictor:
        model, manifest = ckpt.build_model(str(path), list(plugin_refs or []))
        return cls(model, manifest)

    def channels(self, image: np.ndarray) -> np.ndarray:
        """H x W x C uint8 with the channels the model was trained on (grey <-> RGB as training did)."""
        return to_channels(image, self.in_channels)

    @torch.no_grad()
    def letterbox_logits(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image: C x H x W float32 logits at the image's original size (letterbox in, inverse out)."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), BATCH):
            xs, boxes = [], []
            for image in images[start:start + BATCH]:
                x, _, box = self.transform(self.channels(image))
                xs.append(x)
                boxes.append(box)
            logits = self.model(torch.from_numpy(np.stack(xs))).float().numpy()
            out.extend(box.invert(lg) for lg, box in zip(logits, boxes, strict=True))
        return out

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        x, _, _ = self.native(self.channels(image))
        return x

    def uses_windows(self, tile: bool | None) -> bool:
        """--tile / --no-tile, else what the checkpoint's recipe validated with."""
        return self.inference["mode"] == "sliding" if tile is None else tile

    @torch.no_grad()
    def tiled_probabilities(self, image: np.ndarray, overlap: float | None = None) -> np.ndarray:
        """C x H x W class probabilities from sliding windows at the image's own resolution (`segengine.windows`;
        the window is the one the recipe validated with, else the input size)."""
        overlap = self.inference["overlap"] if overlap is None else overlap
        if not 0 <= overlap < 1:
            raise InferenceError(f"--overlap {overlap}: use a fraction from 0 (no overlap) to below 1, e.g. 0.25")
        x = torch.from_numpy(self._normalise(image))
        probs = sliding_probabilities(self.model, x, self.inference["window"], overlap, self.num_classes,
                                      self.pad_value, batch=BATCH)
        return probs.numpy()

    def scores(self, image: np.ndarray, *, tile: bool | None = None, overlap: float | None = None) -> np.ndarray:
        """C x H x W scores at the image's original size (log-probabilities for windows, logits for letterbox)."""
        if self.uses_windows(tile):
            return np.log(np.maximum(self.tiled_probabilities(image, overlap), 1e-8))
        return self.letterbox_logits([image])[0]

    def predict_mask(self, image: np.ndarray, *, tile: bool | None = None, overlap: float | None = None
                     ) -> np.ndarray:
        """H x W uint8 class ids at the image's original size."""
        return self.scores(image, tile=tile, overlap=overlap).argmax(axis=0).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# evaluate


def open_eval_dataset(data: str, manifest: dict[str, Any]):
    """The dataset folder, read with its own dataset.yaml if it has one, else with the checkpoint's label
    encoding (classes, label mode, threshold, ignore value); splits as in training (the run's val_fraction)."""
    root = segdata.resolve_data(data)
    config = manifest.get("config") or {}
    split_args = {"val_fraction": float(config.get("val_fraction", 0.2))}
    if storage.exists(storage.join(root, "dataset.yaml")):
        return segdata.open_dataset(root, **split_args)
    meta = manifest.get("dataset") or {}
    overrides = {"classes": manifest.get("class_names") or meta.get("classes"),
                 "label_mode": meta.get("label_mode", manifest.get("label_mode")),
                 "threshold": meta.get("threshold"), "target_below": meta.get("target_below"),
                 "ignore_index": meta.get("ignore_index")}
    return segdata.open_dataset(root, **{k: v for k, v in overrides.items() if v is not None}, **split_args)


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


def _read_pair(sample, meta) -> tuple[np.ndarray, np.ndarray]:
    image = segdata.read_image(sample.image)
    label = segdata.read_label(sample.label, meta)
    if label.shape != image.shape[:2]:
        raise InferenceError(f"{sample.label}: label is {label.shape[1]}x{label.shape[0]} but its image is "
                             f"{image.shape[1]}x{image.shape[0]}")
    return image, label


def evaluate_samples(predictor: Predictor, samples: Sequence, meta, progress: bool = False,
                     tile: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(confusion matrix, f_score counts) of the samples at original resolution."""
    acc = MetricAccumulator(predictor.num_classes)
    samples = list(samples)
    bar = _progress(len(samples), "evaluate", enabled=progress)
    windows = predictor.uses_windows(tile)
    for start in range(0, len(samples), BATCH):
        pairs = [_read_pair(s, meta) for s in samples[start:start + BATCH]]
        images = [image for image, _ in pairs]
        scores = ([predictor.scores(image, tile=True) for image in images] if windows
                  else predictor.letterbox_logits(images))
        for lg, (_, label) in zip(scores, pairs, strict=True):
            acc.update(torch.from_numpy(lg[None]), torch.from_numpy(label[None].astype(np.int64)), 0.0)
        bar.update(len(pairs))
    bar.close()
    return acc.cm.numpy(), acc.fscore_counts.numpy()


def _evaluate_shard(state: dict[str, Any], manifest: dict[str, Any], plugin_sources: dict[str, str],
                    samples: list, meta_dict: dict[str, Any], tile: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """A Ray task: rebuild the model from its weights and sum the confusion matrix of one shard of files."""
    import plugins
    import zoo
    from segengine.training import materialize_plugins

    plugins.autoload()
    plugins.load_plugins(materialize_plugins(plugin_sources))
    model = zoo.create_model(manifest["encoder"], manifest["num_classes"], in_channels=manifest["in_channels"],
                             **manifest.get("model_kwargs", {}))
    model.load_state_dict(state)
    return evaluate_samples(Predictor(model, manifest), samples, segdata.DatasetMeta.from_dict(meta_dict),
                            tile=tile)


def _evaluate_on_ray(predictor: Predictor, samples: list, meta, workers: int, address: str | None,
                     plugin_refs: list[str], tile: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """Shards of the split as Ray tasks (one CPU each), their confusion matrices summed on the driver."""
    import ray

    import plugins
    from segengine.raytrain import connect
    from segengine.training import ship_plugins

    started = connect(address)
    try:
        shipped = ship_plugins(plugins.resolve_plugin_refs(plugin_refs))  # plugin files travel as source text
        task = ray.remote(num_cpus=1, max_retries=2)(_evaluate_shard)
        state = ray.put({k: v.detach().cpu() for k, v in predictor.model.state_dict().items()})
        shards = [samples[i::workers] for i in range(workers) if samples[i::workers]]
        meta_dict = meta.to_dict()
        pending = [task.remote(state, predictor.manifest, shipped, shard, meta_dict, tile) for shard in shards]
        bar = _progress(len(samples), f"evaluate ({len(shards)} Ray tasks)", enabled=True)
        sizes = {ref: len(shard) for ref, shard in zip(pending, shards, strict=True)}
        cm = np.zeros((predictor.num_classes,) * 2, np.int64)
        counts = np.zeros((3, predictor.num_classes), np.float64)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                part_cm, part_counts = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # a data error in a task stays one line for the CLI
                cause = getattr(exc, "cause", None)
                if getattr(cause, "user_error", False):
                    raise cause from None
                raise
            cm += part_cm
            counts += part_counts
            bar.update(sizes[done[0]])
        bar.close()
        return cm, counts
    finally:
        if started:
            ray.shutdown()


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    confusion: np.ndarray
    out_dir: str


def evaluate(checkpoint_path: str, data: str, *, split: str = "val", workers: int = 1, out: str | None = None,
             address: str | None = None, plugin_refs: Sequence[str] | None = None, verbose: bool = True,
             tile: bool | None = None) -> EvalResult:
    """Metrics of a checkpoint on a dataset split at original resolution; writes metrics.json,
    confusion_matrix.csv and per_class_iou.png into `out` (default `eval-<split>` next to the checkpoint)."""
    if workers < 1:
        raise InferenceError(f"--workers {workers}: use 1 (this process) or more (Ray tasks)")
    predictor = Predictor.from_checkpoint(checkpoint_path, plugin_refs)
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
    if workers > 1:
        cm, counts = _evaluate_on_ray(predictor, samples, meta, workers, address, list(plugin_refs or []), tile)
    else:
        cm, counts = evaluate_samples(predictor, samples, meta, progress=verbose, tile=tile)

    acc = MetricAccumulator(predictor.num_classes)
    acc.cm += torch.from_numpy(np.asarray(cm, np.int64))
    acc.fscore_counts += torch.from_numpy(np.asarray(counts, np.float64))
    scores = acc.compute(predictor.class_names)
    scores.pop("loss", None)
    metrics = {
        "checkpoint": str(checkpoint_path), "data": folder.root, "split": split, "images": len(samples),
        "resolution": "original", "input_size": list(predictor.input_size),
        "inference": ({**predictor.inference, "mode": "sliding"} if predictor.uses_windows(tile)
                      else {"mode": "letterbox"}), "encoder": predictor.manifest["encoder"],
        "class_names": predictor.class_names, **scores,
        "label_pixels": dict(zip(predictor.class_names, np.asarray(cm).sum(axis=1).tolist(), strict=True)),
        "predicted_pixels": dict(zip(predictor.class_names, np.asarray(cm).sum(axis=0).tolist(), strict=True)),
        "checkpoint_metrics": predictor.manifest.get("metrics", {}),
    }
    out_dir = out or default_eval_dir(checkpoint_path, split)
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


# --------------------------------------------------------------------------------------------------------------
# predict


@dataclass
class PredictResult:
    written: list[str] = field(default_factory=list)  # input paths that produced outputs
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, why)
    out_dir: str = ""


def expand_inputs(inputs: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders (their image files, not recursive) and globs; plus what matched nothing."""
    found: list[str] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        if storage.is_uri(item):
            found.append(item)
        elif os.path.isdir(item):
            names = sorted((n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS)
                            and os.path.isfile(os.path.join(item, n))), key=_natural_key)
            if not names:
                missing.append((item, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
            found.extend(os.path.join(item, n) for n in names)
        elif glob.has_magic(item):
            matches = [m for m in sorted(glob.glob(item, recursive=True), key=_natural_key) if os.path.isfile(m)]
            if not matches:
                missing.append((item, "no file matches this pattern"))
            found.extend(matches)
        elif os.path.isfile(item):
            found.append(item)
        else:
            missing.append((item, "no such file or folder"))
    seen: set[str] = set()
    unique = []
    for path in found:
        key = path if storage.is_uri(path) else os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, missing


def _natural_key(name: str) -> list[Any]:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def render(image: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> dict[str, np.ndarray]:
    """The tutorial's display modes: colour mask (mix_type 1), overlay = blend(image, colours, 0.7) (mix_type 0)
    and cut-out = the image where the class is not 0 (mix_type 2); plus the class-index mask itself."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    colour = palette[mask]
    overlay = (rgb.astype(np.float32) * (1 - OVERLAY_ALPHA) + colour.astype(np.float32) * OVERLAY_ALPHA)
    cutout = rgb * (mask != 0)[:, :, None].astype(np.uint8)
    return {"mask": mask, "color": colour, "overlay": np.clip(np.round(overlay), 0, 255).astype(np.uint8),
            "cutout": cutout}


def _progress(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr, disable=not enabled or total < 2,
                dynamic_ncols=True, leave=False)


def predict(checkpoint_path: str, inputs: Sequence[str], out: str, *, tile: bool | None = None,
            overlap: float | None = None,
            counts: bool = False, plugin_refs: Sequence[str] | None = None, verbose: bool = True) -> PredictResult:
    """Masks (original size), colour masks, overlays and cut-outs for every readable input; unreadable ones are
    reported and skipped."""
    if overlap is not None and not 0 <= overlap < 1:
        raise InferenceError(f"--overlap {overlap}: use a fraction from 0 (no overlap) to below 1, e.g. 0.25")
    predictor = Predictor.from_checkpoint(checkpoint_path, plugin_refs)
    paths, missing = expand_inputs(inputs)
    if not paths:
        detail = "; ".join(f"{p}: {why}" for p, why in missing) or "nothing given"
        raise InferenceError(f"no input images found ({detail})")
    result = PredictResult(skipped=list(missing), out_dir=out)
    for path, why in missing:
        print(f"skipped {path}: {why}", file=sys.stderr)
    rows: list[list[Any]] = []
    used: dict[str, int] = {}
    bar = _progress(len(paths), "predict", enabled=verbose)
    for path in paths:
        bar.update(1)
        try:
            image = segdata.read_image(path)
        except (segdata.DataError, OSError, ValueError) as exc:
            reason = str(exc).replace(f"{path}: ", "")
            result.skipped.append((path, reason))
            bar.write(f"skipped {path}: {reason}", file=sys.stderr)
            continue
        mask = predictor.predict_mask(image, tile=tile, overlap=overlap)
        stem = Path(path.split("?")[0]).stem
        used[stem] = used.get(stem, 0) + 1
        if used[stem] > 1:
            stem = f"{stem}-{used[stem]}"
        for kind, array in render(image, mask, predictor.palette).items():
            storage.write_bytes(storage.join(out, f"{stem}_{kind}.png"), _png(array))
        if counts:
            pixels = np.bincount(mask.ravel(), minlength=predictor.num_classes)[: predictor.num_classes]
            rows.append([path, mask.shape[0], mask.shape[1], *pixels.tolist(),
                         *(f"{v:.6f}" for v in pixels / pixels.sum())])
        result.written.append(path)
    bar.close()
    if counts:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["image", "height", "width", *(f"{n}_pixels" for n in predictor.class_names),
                         *(f"{n}_share" for n in predictor.class_names)])
        writer.writerows(rows)
        storage.write_bytes(storage.join(out, "counts.csv"), text.getvalue().encode())
    if verbose:
        what = "masks, colour masks, overlays, cut-outs" + (" and counts.csv" if counts else "")
        print(f"wrote {what} for {len(result.written)} image(s) to {out}"
              + (f"; skipped {len(result.skipped)} unreadable input(s)" if result.skipped else ""))
    return result


# --------------------------------------------------------------------------------------------------------------
# export


def check_sizes(input_size: Sequence[int], multiple: int) -> list[tuple[int, int, int]]:
    """(batch, H, W) inputs for the export check: the trained size (batch 2) and another size and aspect
    (batch 1), both multiples of the encoder's input multiple."""
    h, w = int(input_size[0]), int(input_size[1])
    return [(2, h, w), (1, h + multiple, w + 2 * multiple)]


def _export_metadata(manifest: dict[str, Any], multiple: int) -> dict[str, Any]:
    keys = ("encoder", "num_classes", "class_names", "in_channels", "input_size", "normalization", "colors",
            "label_mode", "epoch", "metrics")
    return {**{k: manifest.get(k) for k in keys}, "input_multiple": multiple,
            "input": "N x in_channels x H x W float32, (pixel - mean) / std, H and W multiples of input_multiple",
            "output": "N x num_classes x H x W logits"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str, multiple: int,
                 metadata: dict[str, Any]) -> str:
    """torch.onnx.export with the torch.export-based exporter (dynamo=True): batch free, H and W symbolic
    multiples of `multiple`. Falls back to the TorchScript-based exporter (dynamic_axes) if that fails."""
    import onnx

    dim = torch.export.Dim
    shapes = ({0: dim("batch"), 2: multiple * dim("h"), 3: multiple * dim("w")},)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8 * 2**30
    how = "torch.export (dynamo=True), dynamic batch/H/W"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), None, dynamo=True, verbose=False, input_names=["x"],
                                        output_names=["logits"], dynamic_shapes=shapes, external_data=big)
        program.save(path, external_data=big)
    except Exception as first:  # exporter errors have many types; try the older exporter before giving up
        how = "TorchScript-based exporter (dynamo=False), dynamic batch/H/W"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), path, dynamo=False, input_names=["x"], output_names=["logits"],
                                  opset_version=17, dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"},
                                                                  "logits": {0: "batch", 2: "h", 3: "w"}})
        except Exception as second:
            raise InferenceError(f"ONNX export failed: {_first_line(first)} (dynamo); {_first_line(second)} "
                                 "(TorchScript-based)") from None
    if not big:
        proto = onnx.load(path)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "unet_zoo", json.dumps(metadata)
        onnx.save(proto, path)
    return how


def _run_onnx(path: str) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: str, metadata: dict[str, Any]) -> str:
    """torch.jit.trace: shapes come from the input at run time (the size checks are Python and vanish)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, path, _extra_files={"unet_zoo.json": json.dumps(metadata)})
    except Exception as exc:
        raise InferenceError(f"TorchScript export failed: {_first_line(exc)}") from None
    return "torch.jit.trace, dynamic batch/H/W"


def _run_torchscript(path: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).float().numpy()

    return run


@dataclass
class ExportResult:
    path: str
    format: str
    method: str
    checks: list[dict[str, Any]]  # per input shape: shape, max_abs_diff, tolerance


def export(checkpoint_path: str, fmt: str, out: str, *, plugin_refs: Sequence[str] | None = None,
           verbose: bool = True, seed: int = 0) -> ExportResult:
    """Export to ONNX or TorchScript and check the file against PyTorch on random inputs at two sizes."""
    if fmt not in ("onnx", "torchscript"):
        raise InferenceError(f"--format {fmt}: use onnx or torchscript")
    predictor = Predictor.from_checkpoint(checkpoint_path, plugin_refs)
    model, multiple = predictor.model, predictor.multiple
    metadata = _export_metadata(predictor.manifest, multiple)
    sizes = check_sizes(predictor.input_size, multiple)
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(n, predictor.in_channels, h, w, generator=generator) for n, h, w in sizes]

    remote = storage.is_uri(out)
    holder = tempfile.TemporaryDirectory(prefix="unet-zoo-export-") if remote else None
    local = os.path.join(holder.name, Path(out.split("?")[0]).name) if holder else os.path.abspath(out)
    try:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        if fmt == "onnx":
            method = _export_onnx(model, inputs[0], local, multiple, metadata)
            run = _run_onnx(local)
        else:
            method = _export_torchscript(model, inputs[0], local, metadata)
            run = _run_torchscript(local)
        checks = []
        for x in inputs:
            with torch.no_grad():
                reference = model(x).float().numpy()
            try:
                got = np.asarray(run(x))
            except Exception as exc:
                raise InferenceError(f"the exported {fmt} model failed on input {tuple(x.shape)}: "
                                     f"{_first_line(exc)}; it does not accept dynamic sizes") from None
            if got.shape != reference.shape:
                raise InferenceError(f"the exported {fmt} model gave shape {got.shape} for input {tuple(x.shape)}, "
                                     f"PyTorch {reference.shape}")
            diff = float(np.abs(got - reference).max())
            tolerance = EXPORT_TOLERANCE * max(1.0, float(np.abs(reference).max()))
            checks.append({"shape": list(x.shape), "max_abs_diff": diff, "tolerance": tolerance})
            if verbose:
                print(f"check {'x'.join(map(str, x.shape))}: max abs diff vs PyTorch {diff:.3g} "
                      f"(tolerance {tolerance:.3g})")
            if not diff <= tolerance:
                os.remove(local)
                raise InferenceError(f"the exported {fmt} model differs from PyTorch by {diff:.3g} on input "
                                     f"{tuple(x.shape)} (tolerance {tolerance:.3g} = {EXPORT_TOLERANCE:g} x max(1, "
                                     "max |logit|)); nothing was written")
        if remote:
            with open(local, "rb") as f:
                storage.write_bytes(out, f.read())
    finally:
        if holder is not None:
            holder.cleanup()
    if verbose:
        print(f"wrote {out} ({fmt}, {method}); input N x {predictor.in_channels} x H x W float32 normalised with "
              f"mean {predictor.mean} std {predictor.std}, H and W multiples of {multiple}; output N x "
              f"{predictor.num_classes} x H x W logits ({', '.join(predictor.class_names)})")
    return ExportResult(out, fmt, method, checks)
