"""The checkpoint manifest: the one contract between training and inference, written and read here only.

A checkpoint's `manifest.json` says everything inference needs to rebuild and apply the model without the
training config: the encoder and its builder options, the classes and how labels encode them (the dataset's
`DatasetMeta`), input channels and size, the intensity normalisation, the inference mode the recipe validated with,
and the plugin the encoder came from; plus the resolved config, the epoch, its metrics and package versions.
`Manifest.from_dict` reads every version written so far (version 1 stored classes, label mode, colours and
channels twice, at the top and under `dataset`; it has no inference mode before sliding windows existed).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

import segdata
import zoo
from segengine import storage

MANIFEST_VERSION = 2
ENSEMBLE_FILE = "ensemble.json"  # in a folder that holds an ensemble (a folds run, a cross-validated trial)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)


class InferenceMode(_Frozen):
    """How the recipe validated, and so how `evaluate`, `predict`, exports and Ray Data actors apply the model by
    default: letterboxed whole images, or blended sliding windows (at `scale` of the native resolution)."""

    mode: Literal["letterbox", "sliding"] = "letterbox"
    window: tuple[int, int] | None = None  # sliding windows (None: the training input size)
    overlap: float = 0.25
    mirror: bool = False  # the four flips averaged (--tta flip)
    resample: float = 1.0  # images resampled by this factor before the windows; scores mapped back to native size

    @property
    def sliding(self) -> bool:
        return self.mode == "sliding"


class Decision(_Frozen):
    """How class probabilities become a mask: the argmax, or for two classes class 1 where its probability exceeds
    `threshold` (chosen on out-of-fold predictions by `train --folds`, never on the val split)."""

    threshold: float | None = Field(default=None, gt=0, lt=1)
    chosen_on: str = ""  # what the threshold was chosen on, and its score there against the argmax's

    def adjust(self, scores: np.ndarray) -> np.ndarray:
        """Scores (logits or log-probabilities, C x ...) whose argmax is this decision: unchanged for the argmax;
        log-probabilities less log(1 - t), log(t) for a threshold t (p1 > t exactly where p1 / t > p0 / (1 - t))."""
        if self.threshold is None:
            return scores
        shifted = scores - scores.max(axis=0, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))
        bias = np.log(np.asarray([1 - self.threshold, self.threshold], np.float32))
        return log_probs - bias.reshape(2, *([1] * (scores.ndim - 1)))

    def mask(self, scores: np.ndarray) -> np.ndarray:
        """H x W uint8 class ids of C x H x W scores."""
        return self.adjust(scores).argmax(axis=0).astype(np.uint8)


class FoldInfo(_Frozen):
    """A cross-validation fold's model (`train --folds K`): which fold it held out, and every fold's images, so
    that its out-of-fold predictions can be told from leaks."""

    index: int
    folds: list[list[str]]  # held-out image names of each fold of the training split
    split: str = "train"
    seed: int = 0


class Manifest(_Frozen):
    """What a checkpoint (or an exported model) says about itself."""

    manifest_version: int = MANIFEST_VERSION
    encoder: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    plugins: list[str] = Field(default_factory=list)
    encoder_source: dict[str, Any] | None = None  # the plugin distribution an encoder came from
    dataset: segdata.DatasetMeta  # classes, label mode (threshold, ignore value), colours, channels
    input_size: tuple[int, int]
    normalization: zoo.Normalization  # mean/std in pixel units, and the clip window of a planned run
    inference: InferenceMode = InferenceMode()
    config: dict[str, Any] = Field(default_factory=dict)  # the resolved TrainConfig
    epoch: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)
    state_sha256: str | None = None  # of state.pt, written last so that a complete folder can be told
    decision: Decision = Decision()
    fold: FoldInfo | None = None  # a fold model of `train --folds`
    members: list[str] = Field(default_factory=list)  # an ensemble's: its member checkpoints

    @field_validator("dataset", mode="before")
    @classmethod
    def _meta(cls, value: Any) -> segdata.DatasetMeta:
        return value if isinstance(value, segdata.DatasetMeta) else segdata.DatasetMeta.from_dict(value)

    @field_validator("normalization", mode="before")
    @classmethod
    def _normalization(cls, value: Any) -> zoo.Normalization:
        if isinstance(value, zoo.Normalization):
            return value
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
        return zoo.Normalization(**{"name": "", **fields})

    @field_serializer("dataset")
    def _meta_json(self, meta: segdata.DatasetMeta) -> dict[str, Any]:
        return meta.to_dict()

    @field_serializer("normalization")
    def _normalization_json(self, norm: zoo.Normalization) -> dict[str, Any]:
        out = {"name": norm.name, "mean": list(norm.mean), "std": list(norm.std)}
        return {**out, "low": list(norm.low), "high": list(norm.high)} if norm.clip else out

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.classes)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def in_channels(self) -> int:
        return self.dataset.in_channels

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return self.dataset.colors

    @property
    def label_mode(self) -> str:
        return self.dataset.label_mode

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """A manifest of any version (1: the dataset's figures also at the top level, and a checkpoint from
        before sliding windows letterboxed)."""
        data = dict(data)
        dataset = dict(data.get("dataset") or {})
        if "classes" not in dataset:  # the oldest manifests: the dataset only at the top level
            dataset["classes"] = data.get("class_names") or [str(i) for i in range(int(data["num_classes"]))]
        for key in ("in_channels", "label_mode", "colors", "image_range"):
            if key not in dataset and key in data:
                dataset[key] = data[key]
        dataset.setdefault("root", "")
        data["dataset"] = dataset
        data["inference"] = data.get("inference") or {}
        return cls.model_validate(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def export_view(self) -> dict[str, Any]:
        """What an exported model carries (ONNX metadata `unet_zoo`, the safetensors header and NAME.json): the
        dataset's figures flat, for code that has only the file (`zoo.create_model(m["encoder"],
        m["num_classes"], in_channels=m["in_channels"], **m["model_kwargs"])`); `from_dict` reads it back."""
        kept = self.model_dump(mode="json", include={"manifest_version", "encoder", "model_kwargs", "plugins",
                                                     "encoder_source", "input_size", "normalization", "inference",
                                                     "epoch", "metrics", "decision", "members"})
        return {**kept, "num_classes": self.num_classes, "class_names": self.class_names,
                "in_channels": self.in_channels, "colors": [list(c) for c in self.colors],
                "label_mode": self.label_mode, "image_range": self.dataset.image_range}


class EnsembleFile(_Frozen):
    """`ensemble.json`: the member checkpoints (relative to the folder), the decision rule and, for a folds
    run, each fold's held-out images (member i held out fold i)."""

    members: list[str]
    decision: Decision = Decision()
    folds: list[list[str]] | None = None

    @classmethod
    def read(cls, folder: str) -> EnsembleFile | None:
        path = storage.join(folder, ENSEMBLE_FILE)
        return cls.model_validate_json(storage.read_text(path)) if storage.exists(path) else None

    def write(self, folder: str) -> None:
        storage.write_bytes(storage.join(folder, ENSEMBLE_FILE), self.model_dump_json(indent=1).encode())
