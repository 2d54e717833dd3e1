"""Ensembles: several checkpoints (a folds run's K models, or any models of one dataset) as one predictor.

Each member predicts with its own inference mode (letterbox or sliding windows, its window, flips) and the class
probabilities are averaged; the mask follows the ensemble's decision rule (`manifest.Decision`: the argmax, or for
two classes a threshold chosen on out-of-fold predictions by `choose_decision`). A folds run folder holds
`ensemble.json` (`EnsembleFile`): its members, the rule and the fold lists, so that `evaluate`, `predict` and
`export` take the run folder like a checkpoint, and `evaluate` on the cross-validated split scores out-of-fold.
`open_predictor` turns the MODEL argument of those commands into a predictor, an ensemble or not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segengine import storage
from segengine.inference.predictor import (
    BATCH,
    InferenceError,
    OnnxPredictor,
    Predictor,
    is_onnx,
    resolve_device,
    softmax,
)
from segengine.manifest import Decision, EnsembleFile

THRESHOLD_BINS = 100  # resolution of the out-of-fold probability histograms the threshold is chosen from
THRESHOLD_RANGE = (0.05, 0.95)  # thresholds tried (outside it a two-class rule is a near-constant mask)
MIN_GAIN = 0.002  # out-of-fold mIoU a threshold must add to the argmax's to be chosen (less is noise)
# what members of one ensemble must share (a mask of classes, read from the same images)
SHARED = ("classes", "in_channels", "image_range")


class EnsemblePredictor(Predictor):
    """Members' class probabilities averaged; `scores` are the log of the mean probabilities."""

    def __init__(self, members: Sequence[Predictor], decision: Decision | None = None, path: str | None = None,
                 folds: list[list[str]] | None = None) -> None:
        if not members:
            raise InferenceError("an ensemble needs at least one member")
        first = members[0]
        for member in members[1:]:
            for key in SHARED:
                if getattr(first.manifest.dataset, key) != getattr(member.manifest.dataset, key):
                    raise InferenceError(f"{member.path}: its {key} ({getattr(member.manifest.dataset, key)}) differ "
                                         f"from {first.path}'s ({getattr(first.manifest.dataset, key)}); ensemble "
                                         "models of one dataset")
        self._members = list(members)
        self.folds = folds
        self.device, self.amp, self.precision, self.model = first.device, first.amp, first.precision, None
        paths = [m.path or "" for m in members]
        manifest = first.manifest.model_copy(update={"decision": decision or Decision(), "members": paths,
                                                     "fold": None, "metrics": {}})
        self._describe(manifest, None, max(m.multiple for m in members), first.batch_size)
        self.path = path

    @property
    def members(self) -> list[Predictor]:
        return self._members

    @property
    def description(self) -> str:
        return f"ensemble of {len(self.members)}, each on {self.members[0].description}"

    def batch_scores(self, images: Sequence[np.ndarray], *, sliding: bool | None = None,
                     overlap: float | None = None) -> list[np.ndarray]:
        """Per image: the log of the members' mean class probabilities, each member in its own inference mode."""
        total: list[np.ndarray] | None = None
        for member in self.members:
            probs = [softmax(s) for s in member.batch_scores(images, sliding=sliding, overlap=overlap)]
            total = probs if total is None else [t + p for t, p in zip(total, probs, strict=True)]
        return [np.log(np.maximum(t / len(self.members), 1e-8)) for t in total]

    def held_out_by(self, name: str) -> int | None:
        """The member that did not train on image `name` (a folds run), or None."""
        for index, fold in enumerate(self.folds or ()):
            if name in fold:
                return index
        return None

    def export_module(self) -> torch.nn.Module:
        """One module for export: the log of the members' mean softmax, when every member reads its input the
        same way (normalisation, inference mode, input size), as the folds of one recipe do."""
        first = self.members[0].manifest
        for member in self.members[1:]:
            for key in ("normalization", "inference", "input_size"):
                if getattr(member.manifest, key) != getattr(first, key):
                    raise InferenceError(f"export of an ensemble needs members with one {key}; {member.path} differs "
                                         f"from {self.members[0].path} (export the members one by one)")
        return MeanProbabilities([m.model for m in self.members])


class MeanProbabilities(torch.nn.Module):
    """N x C x H x W log of the mean softmax of the member networks (an exported ensemble's one graph)."""

    def __init__(self, networks: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([net(x).float().softmax(dim=1) for net in self.networks]).mean(dim=0)
        return probs.clamp_min(1e-8).log()


def open_ensemble(paths: Sequence[str], decision: Decision | None, folds: list[list[str]] | None,
                  plugin_refs: Sequence[str] | None, path: str | None, **options: Any) -> EnsemblePredictor:
    """Members rebuilt from their checkpoints (`options`: the predictor's mirror, amp, device, batch_size)."""
    members = [Predictor.from_checkpoint(p, plugin_refs, verbose=False, **options) for p in paths]
    return EnsemblePredictor(members, decision, path=path, folds=folds)


def ensemble_at(path: str) -> tuple[str, EnsembleFile] | None:
    """(folder, its ensemble file) of a folds run folder, or of a `tune --folds` search's best trial."""
    found = EnsembleFile.read(path)
    if found is not None:
        return path, found
    best = storage.join(path, "best.json")
    target = json.loads(storage.read_text(best)).get("checkpoint") if storage.exists(best) else None
    found = EnsembleFile.read(target) if target else None
    return (target, found) if found is not None else None


def open_predictor(path: str, plugin_refs: Sequence[str] | None = None, verbose: bool = True,
                   mirror: bool | None = None, amp: bool = True, device: str = "cpu",
                   batch_size: int = BATCH) -> Predictor:
    """A checkpoint (folder, state.pt, run or search folder), an exported .onnx file, a folds run folder (its
    ensemble) or several checkpoints `A,B,C` (their ensemble), as evaluate/predict/export take."""
    options = {"mirror": mirror, "amp": amp, "device": device, "batch_size": batch_size}
    if "," in path:
        paths = [p for p in path.split(",") if p]
        return open_ensemble(paths, None, None, plugin_refs, None, **options)
    found = None if is_onnx(path) else ensemble_at(storage.resolve(path))
    if found is not None:
        root, ensemble = found
        if verbose and root != storage.resolve(path):
            print(f"ensemble {root}", file=sys.stderr)
        paths = [m if storage.is_uri(m) or m.startswith("/") else storage.join(root, m) for m in ensemble.members]
        return open_ensemble(paths, ensemble.decision, ensemble.folds, plugin_refs, root, **options)
    if is_onnx(path):
        cpu_only = resolve_device(device).type == "cpu"
        return OnnxPredictor(path, mirror, batch_size, providers=("CPUExecutionProvider",) if cpu_only else None)
    return Predictor.from_checkpoint(path, plugin_refs, verbose, mirror, amp=amp, device=device,
                                     batch_size=batch_size)


def choose_decision(p1_hist: np.ndarray) -> Decision:
    """The two-class rule with the best mIoU on the out-of-fold probabilities: `p1_hist[t, b]` counts pixels of
    true class t whose class-1 probability falls in bin b of THRESHOLD_BINS. A threshold must beat the argmax
    (0.5) by MIN_GAIN, else the argmax stays."""
    bins = p1_hist.shape[1]
    above = np.cumsum(p1_hist[:, ::-1], axis=1)[:, ::-1]  # above[t, e]: pixels of class t with p1 in bin >= e

    def miou(edge: int) -> float:
        tp1, fp1 = above[1, edge], above[0, edge]
        fn1, tp0 = p1_hist[1].sum() - tp1, p1_hist[0].sum() - fp1
        return 0.5 * (tp1 / max(tp1 + fp1 + fn1, 1) + tp0 / max(tp0 + fn1 + fp1, 1))

    low, high = (round(v * bins) for v in THRESHOLD_RANGE)
    edges = range(low, high + 1)
    half = bins // 2
    best = max(edges, key=lambda e: (round(miou(e), 6), -abs(e - half)))
    if miou(best) < miou(half) + MIN_GAIN:
        return Decision(chosen_on=f"argmax kept: out-of-fold mIoU {miou(half):.4f}, the best threshold "
                                  f"{best / bins:.2f} adds less than {MIN_GAIN}")
    return Decision(threshold=best / bins,
                    chosen_on=f"out-of-fold mIoU {miou(best):.4f} against {miou(half):.4f} for the argmax")


def probability_histogram(probs: np.ndarray, label: np.ndarray) -> np.ndarray:
    """2 x THRESHOLD_BINS: class-1 probabilities of the labelled pixels, binned per true class."""
    bins = np.minimum((probs[1] * THRESHOLD_BINS).astype(np.int64), THRESHOLD_BINS - 1)
    return np.stack([np.bincount(bins[label == t], minlength=THRESHOLD_BINS) for t in (0, 1)])
