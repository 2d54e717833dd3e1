"""`launch.py predict`: class-index mask, colour mask, blended overlay and cut-out (the tutorial's display modes)
per image, optional sliding-window inference and per-class pixel counts; unreadable inputs are reported and
skipped."""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import segdata
from segdata.folder import IMAGE_EXTENSIONS, natural_key
from segengine import storage
from segengine.inference.predictor import BATCH, InferenceError, open_predictor, progress_bar

OVERLAY_ALPHA = 0.7  # the tutorial's Image.blend(original, colours, 0.7)



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




def _read_batch(paths: Sequence[str], result: PredictResult, bar) -> list[tuple[str, np.ndarray]]:
    """(path, image) of the readable ones; the others are recorded as skipped, with the reason."""
    images = []
    for path in paths:
        try:
            images.append((path, segdata.read_image(path)))
        except (segdata.DataError, OSError, ValueError) as exc:
            reason = str(exc).replace(f"{path}: ", "")
            result.skipped.append((path, reason))
            bar.write(f"skipped {path}: {reason}", file=sys.stderr)
    return images


def predict(checkpoint_path: str, inputs: Sequence[str], out: str, *, tile: bool | None = None,
            overlap: float | None = None, mirror: bool | None = None, counts: bool = False,
            plugin_refs: Sequence[str] | None = None, verbose: bool = True, amp: bool = True, device: str = "cpu",
            batch_size: int = BATCH) -> PredictResult:
    """Masks (original size), colour masks, overlays and cut-outs for every readable input, from a checkpoint or
    an exported .onnx file; unreadable inputs are reported and skipped."""
    if overlap is not None and not 0 <= overlap < 1:
        raise InferenceError(f"--overlap {overlap}: use a fraction from 0 (no overlap) to below 1, e.g. 0.25")
    predictor = open_predictor(checkpoint_path, plugin_refs, verbose, mirror, amp, device, batch_size)
    paths, missing = expand_inputs(inputs)
    if not paths:
        detail = "; ".join(f"{p}: {why}" for p, why in missing) or "nothing given"
        raise InferenceError(f"no input images found ({detail})")
    result = PredictResult(skipped=list(missing), out_dir=out)
    for path, why in missing:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if verbose:
        print(f"predicting {len(paths)} image(s) on {predictor.description}", file=sys.stderr)
    rows: list[list[Any]] = []
    used: dict[str, int] = {}
    bar = progress_bar(len(paths), "predict", enabled=verbose)
    for start in range(0, len(paths), predictor.batch_size):
        chunk = paths[start:start + predictor.batch_size]
        images = _read_batch(chunk, result, bar)
        scores = predictor.batch_scores([image for _, image in images], tile=tile, overlap=overlap)
        for (path, image), score in zip(images, scores, strict=True):
            mask = score.argmax(axis=0).astype(np.uint8)
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
        bar.update(len(chunk))
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


