"""`launch.py predict`: class-index mask, colour mask, blended overlay and cut-out (the tutorial's display modes)
per image, optional sliding-window inference and per-class pixel counts; unreadable inputs are reported and
skipped."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import segdata
from segdata.folder import IMAGE_EXTENSIONS
from segdata.pairing import natural_key
from segengine import storage
from segengine.config import OVERLAP_RANGE, overlap_ok
from segengine.inference.batch_jobs import map_items
from segengine.inference.ensemble import open_predictor
from segengine.inference.predictor import BATCH, InferenceError, Predictor, npy_bytes, probabilities

OVERLAY_ALPHA = 0.7  # the tutorial's Image.blend(original, colours, 0.7)



@dataclass
class PredictResult:
    written: list[str] = field(default_factory=list)  # input paths that produced outputs
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, why)
    out_dir: str = ""


def expand_inputs(inputs: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders and object-storage prefixes (their image files, not recursive) and globs;
    plus what matched nothing."""
    found: list[str] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        if storage.is_uri(item) and storage.is_dir(item):  # a folder or prefix on object storage
            names = sorted((n for n in storage.list_files(item) if n.lower().endswith(IMAGE_EXTENSIONS)),
                           key=natural_key)
            if not names:
                missing.append((item, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under this prefix"))
            found.extend(storage.join(item, n) for n in names)
        elif storage.is_uri(item):
            found.append(item)
        elif os.path.isdir(item):
            names = sorted((n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS)
                            and os.path.isfile(os.path.join(item, n))), key=natural_key)
            if not names:
                missing.append((item, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
            found.extend(os.path.join(item, n) for n in names)
        elif glob.has_magic(item):
            matches = [m for m in sorted(glob.glob(item, recursive=True), key=natural_key) if os.path.isfile(m)]
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


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def render(image: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> dict[str, np.ndarray]:
    """The tutorial's display modes: colour mask (mix_type 1), overlay = blend(image, colours, 0.7) (mix_type 0)
    and cut-out = the image where the class is not 0 (mix_type 2); plus the class-index mask itself."""
    rgb = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)  # what a person sees
    colour = palette[mask]
    overlay = (rgb.astype(np.float32) * (1 - OVERLAY_ALPHA) + colour.astype(np.float32) * OVERLAY_ALPHA)
    cutout = rgb * (mask != 0)[:, :, None].astype(np.uint8)
    return {"mask": mask, "color": colour, "overlay": np.clip(np.round(overlay), 0, 255).astype(np.uint8),
            "cutout": cutout}




def _write_counts(out: str, counts: list[list[int]], paths: list[str], class_names: list[str]) -> None:
    """counts.csv: per image its size, then the pixels and the share of each class."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["image", "height", "width", *(f"{n}_pixels" for n in class_names),
                     *(f"{n}_share" for n in class_names)])
    for path, (height, width, *pixels) in zip(paths, counts, strict=True):
        total = max(sum(pixels), 1)
        writer.writerow([path, height, width, *pixels, *(f"{v / total:.6f}" for v in pixels)])
    storage.write_bytes(storage.join(out, "counts.csv"), text.getvalue().encode())


def output_stems(paths: Sequence[str]) -> list[str]:
    """Output name per input: its file stem, with `-2`, `-3`, ... where stems repeat across folders (decided
    once on the driver, so that Ray actors never race for a name)."""
    used: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = Path(path.split("?")[0]).stem
        used[stem] = used.get(stem, 0) + 1
        stems.append(stem if used[stem] == 1 else f"{stem}-{used[stem]}")
    return stems


def predict_batch(predictor: Predictor, batch: dict[str, np.ndarray], *, out: str, sliding: bool | None,
                  overlap: float | None, probs: bool = False) -> dict[str, np.ndarray]:
    """Read, predict and write one batch of inputs (in this process or in a Ray Data actor): per input, whether
    it was written, why not, and its per-class pixel counts (JSON); with `probs`, its class probabilities too."""
    paths, stems = [str(p) for p in batch["path"]], [str(s) for s in batch["stem"]]
    reasons = [""] * len(paths)
    images = {}
    for i, path in enumerate(paths):
        try:
            images[i] = predictor.read(path)
        except (segdata.DataError, OSError, ValueError) as exc:
            reasons[i] = str(exc).replace(f"{path}: ", "") or type(exc).__name__
    readable = sorted(images)
    scores = predictor.batch_scores([images[i] for i in readable], sliding=sliding, overlap=overlap)
    counts = [""] * len(paths)
    for i, score in zip(readable, scores, strict=True):
        mask = predictor.decision.mask(score)
        for kind, array in render(images[i], mask, predictor.palette).items():
            storage.write_bytes(storage.join(out, f"{stems[i]}_{kind}.png"), png_bytes(array))
        if probs:
            storage.write_bytes(storage.join(out, f"{stems[i]}_probs.npy"), npy_bytes(probabilities(score)))
        pixels = np.bincount(mask.ravel(), minlength=predictor.num_classes)[: predictor.num_classes]
        counts[i] = json.dumps([*mask.shape, *pixels.tolist()])
    return {"path": np.asarray(paths, dtype=object), "reason": np.asarray(reasons, dtype=object),
            "counts": np.asarray(counts, dtype=object)}


def predict(checkpoint_path: str, inputs: Sequence[str], out: str, *, sliding: bool | None = None,
            overlap: float | None = None, mirror: bool | None = None, counts: bool = False, probs: bool = False,
            plugin_refs: Sequence[str] | None = None, verbose: bool = True, amp: bool = True, device: str = "cpu",
            batch_size: int = BATCH, workers: int = 1, address: str | None = None) -> PredictResult:
    """Masks (original size), colour masks, overlays and cut-outs (and with `probs` the class probabilities) for
    every readable input, from a checkpoint or an exported .onnx file, in this process or (`workers` > 1) on Ray
    Data actors; unreadable inputs are reported and skipped. Writes `summary.json` (images, img/s, skipped inputs
    and why, nodes used) beside the masks."""
    if overlap is not None and not overlap_ok(overlap):
        raise InferenceError(f"--overlap {overlap}: use {OVERLAP_RANGE}")
    if workers < 1:
        raise InferenceError(f"--workers {workers}: use 1 (this process) or more (Ray Data actors)")
    predictor = open_predictor(checkpoint_path, plugin_refs, verbose, mirror, amp,
                               "cpu" if workers > 1 else device, batch_size)
    paths, missing = expand_inputs(inputs)
    if not paths:
        detail = "; ".join(f"{p}: {why}" for p, why in missing) or "nothing given"
        raise InferenceError(f"no input images found ({detail})")
    result = PredictResult(skipped=list(missing), out_dir=out)
    for path, why in missing:
        print(f"skipped {path}: {why}", file=sys.stderr)
    items = [{"path": p, "stem": s} for p, s in zip(paths, output_stems(paths), strict=True)]
    started = time.perf_counter()
    if verbose and workers == 1:
        print(f"predicting {len(paths)} image(s) on {predictor.description}", file=sys.stderr)
    rows = map_items(predictor, items, predict_batch,
                     {"out": out, "sliding": sliding, "overlap": overlap, "probs": probs},
                     workers=workers, address=address, plugin_refs=list(plugin_refs or []), device=device,
                     desc="predict", progress=verbose)
    pixel_counts, nodes, ray_start_s = _collect(rows, result)
    order = {p: i for i, p in enumerate(paths)}
    result.written.sort(key=order.__getitem__)
    seconds = time.perf_counter() - started
    summary = {"checkpoint": predictor.path or checkpoint_path, "images": len(paths),
               "written": len(result.written), "skipped": [{"input": p, "why": why} for p, why in result.skipped],
               "seconds": round(seconds, 3), "images_per_s": round(len(result.written) / max(seconds, 1e-9), 3),
               "workers": workers, "nodes": nodes or None, "ray_start_s": round(ray_start_s, 3) if nodes else None}
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    if counts:
        _write_counts(out, [pixel_counts[p] for p in result.written], result.written, predictor.class_names)
    if verbose:
        _print_summary(summary, result, out, counts, probs)
    return result


def _collect(rows, result: PredictResult) -> tuple[dict[str, list[int]], dict[str, int], float]:
    """Each row of the batches into the result (written or skipped, with why): pixel counts per input, images
    per node (Ray Data actors) and the pool's start-up."""
    pixel_counts: dict[str, list[int]] = {}
    nodes: dict[str, int] = {}
    ray_start_s = 0.0
    for row in rows:
        ray_start_s = float(row.get("ray_start_s", ray_start_s))
        if row["reason"]:
            result.skipped.append((row["path"], row["reason"]))
            print(f"skipped {row['path']}: {row['reason']}", file=sys.stderr)
            continue
        result.written.append(row["path"])
        pixel_counts[row["path"]] = json.loads(row["counts"])
        if "node" in row:
            nodes[row["node"]] = nodes.get(row["node"], 0) + 1
    return pixel_counts, nodes, ray_start_s


def _print_summary(summary: dict[str, Any], result: PredictResult, out: str, counts: bool, probs: bool) -> None:
    what = "masks, colour masks, overlays, cut-outs" + (", probabilities" if probs else "") \
        + (" and counts.csv" if counts else "")
    nodes = summary["nodes"] or {}
    spread = ", ".join(f"{node}: {n}" for node, n in sorted(nodes.items()))
    where = f" on {len(nodes)} node(s) ({spread})" if nodes else ""
    print(f"wrote {what} for {len(result.written)} image(s) to {out} in {summary['seconds']:.1f} s "
          f"({summary['images_per_s']:.2f} img/s{where})"
          + (f"; skipped {len(result.skipped)} unreadable input(s), listed in summary.json" if result.skipped
             else ""))
