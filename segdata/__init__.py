"""segdata: dataset folders (local or URI), label modes, the tutorial's augmentations, checks, built-in data.

`SegmentationDataset` lives in `segdata.dataset` and is imported on first use, so `launch.py data ...` and
code that only needs `IGNORE` do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segdata import isbi, synth
from segdata.check import DataReport, check_dataset, class_frequencies, class_presence, validated_samples
from segdata.files import read_image, read_label
from segdata.folder import Sample, SegFolder, local_samples, open_dataset, portable_samples
from segdata.meta import IGNORE, DataError, DatasetMeta
from segdata.pairing import natural_key
from segdata.resolve import is_synth, resolve_data
from segdata.transforms import (
    EvalTransform,
    Letterbox,
    NativeTransform,
    PatchTransform,
    TrainTransform,
    normalised_grey,
)

if TYPE_CHECKING:
    from segdata.dataset import PatchDataset, SegmentationDataset

__all__ = [
    "IGNORE", "DataError", "DataReport", "DatasetMeta", "EvalTransform", "Letterbox", "NativeTransform",
    "PatchDataset", "PatchTransform", "Sample", "SegFolder", "SegmentationDataset", "TrainTransform",
    "normalised_grey", "check_dataset", "class_frequencies", "class_presence", "open_dataset",
    "is_synth", "isbi", "local_samples", "natural_key", "portable_samples", "read_image", "read_label",
    "resolve_data", "synth", "validated_samples",
]


def __getattr__(name: str) -> Any:
    if name in ("SegmentationDataset", "PatchDataset"):
        from segdata import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'segdata' has no attribute {name!r}")
