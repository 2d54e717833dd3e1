"""A trained model rebuilt from its checkpoint alone, with the preprocessing validation used.

Everything in `segengine.inference` starts here: `checkpoint.build_model` (weights loaded with
`torch.load(weights_only=True)`, plugins only from the environment and --plugin), then either the letterbox of
`segdata.EvalTransform` (predictions mapped back through `Letterbox.invert`) or sliding windows at native resolution
(`segengine.windows`), as the checkpoint's manifest says its recipe validated.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import segdata
from segdata.files import to_channels
from segdata.meta import default_palette
from segengine import checkpoint as ckpt
from segengine import storage
from segengine.precision import Precision
from segengine.windows import sliding_probabilities

BATCH = 8  # letterboxed images or tiles per forward pass


class InferenceError(RuntimeError):
    """A request evaluate/predict/export cannot honour; one line for the CLI."""

    user_error = True





class Predictor:
    """A model in eval mode plus what its manifest says about inputs and outputs."""

    def __init__(self, model: torch.nn.Module, manifest: dict[str, Any], amp: bool = True,
                 mirror: bool | None = None) -> None:
        """`mirror` overrides the recipe's test-time flips (None: as the manifest says); the override is kept in
        `manifest` so that copies of the predictor (evaluate's Ray tasks) do the same."""
        self.precision = Precision(torch.device("cpu"), amp)
        self.model = self.precision.model(model.eval())
        recorded = dict(manifest.get("inference") or {})  # checkpoints from before this key letterboxed
        if mirror is not None:
            recorded["mirror"] = mirror
            manifest = {**manifest, "inference": recorded}
        self.manifest = manifest
        self.path: str | None = None  # the checkpoint folder, when built from one
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
        self.inference = {"mode": recorded.get("mode", "letterbox"),
                          "window": [int(v) for v in recorded.get("window", self.input_size)],
                          "overlap": float(recorded.get("overlap", 0.25)),
                          "mirror": bool(recorded.get("mirror", False))}

    @classmethod
    def from_checkpoint(cls, path: str, plugin_refs: Sequence[str] | None = None, verbose: bool = True,
                        mirror: bool | None = None) -> Predictor:
        """From a checkpoint folder, its state.pt, or a run/search folder (its best checkpoint, printed)."""
        found = ckpt.locate(path)
        if verbose and found.rstrip("/") != storage.resolve(str(path)).rstrip("/"):
            print(f"checkpoint {found}", file=sys.stderr)
        model, manifest = ckpt.build_model(found, list(plugin_refs or []))
        predictor = cls(model, manifest, mirror=mirror)
        predictor.path = found
        return predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits of a batch, computed in bf16 where this CPU does that natively (`segengine.precision`)."""
        return self.precision.forward(self.model, x)

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
            logits = self.forward(torch.from_numpy(np.stack(xs))).numpy()
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
        the window and mirroring are the ones the recipe validated with, else the input size, no flips)."""
        overlap = self.inference["overlap"] if overlap is None else overlap
        if not 0 <= overlap < 1:
            raise InferenceError(f"--overlap {overlap}: use a fraction from 0 (no overlap) to below 1, e.g. 0.25")
        x = torch.from_numpy(self._normalise(image))
        probs = sliding_probabilities(self.forward, x, self.inference["window"], overlap, self.num_classes,
                                      self.pad_value, batch=BATCH, mirror=self.inference["mirror"])
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


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr, disable=not enabled or total < 2,
                dynamic_ncols=True, leave=False)
