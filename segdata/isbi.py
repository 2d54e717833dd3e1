"""Convert the ISBI 2012 challenge download (multi-page TIFF stacks) into the tutorial layout."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageSequence

from segdata import files
from segdata.meta import DataError, membrane_dataset_yaml


def _frames(path: str) -> list[Image.Image]:
    stack = files.decode(files.read_bytes(path), path)
    return [frame.copy() for frame in ImageSequence.Iterator(stack)]


def convert(volume_tif: str, labels_tif: str, out: str, *, val: int = 5) -> str:
    """Write Images/<i>.png, Labels/<i>.png, split files (the last `val` sections are validation: neighbouring
    sections leak less than a random split) and dataset.yaml into `out` (new or empty); returns its path."""
    volume, labels = _frames(volume_tif), _frames(labels_tif)
    if len(volume) != len(labels):
        raise DataError(f"{volume_tif} has {len(volume)} sections but {labels_tif} has {len(labels)}")
    if not 1 <= val < len(volume):
        raise DataError(f"--val {val}: give between 1 and {len(volume) - 1} validation sections "
                        f"({len(volume)} in the stack)")
    for i, (image, label) in enumerate(zip(volume, labels, strict=True)):
        if image.size != label.size:
            raise DataError(f"section {i}: image is {image.size} but label is {label.size} (W x H)")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DataError(f"{out} exists and is not an empty folder; choose a new folder")
    split_dir = os.path.join(out, "ImageSets", "Segmentation")
    for folder in ("Images", "Labels", split_dir):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    for i, (image, label) in enumerate(zip(volume, labels, strict=True)):
        Image.fromarray(np.asarray(image.convert("L"))).save(os.path.join(out, "Images", f"{i}.png"))
        Image.fromarray(files.raw_label_array(label, f"{labels_tif} section {i}")).save(
            os.path.join(out, "Labels", f"{i}.png"))
    n_train = len(volume) - val
    for split, numbers in (("train", range(n_train)), ("val", range(n_train, len(volume)))):
        with open(os.path.join(split_dir, f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in numbers))
    with open(os.path.join(out, "dataset.yaml"), "w") as f:
        f.write(membrane_dataset_yaml(f"ISBI 2012 EM membranes (from {os.path.basename(volume_tif)})"))
    return out
