"""Dataset folders: layout detection, split lists, dataset.yaml and what to infer when it is absent."""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from segdata import files
from segdata.meta import IGNORE, MAX_CLASSES, DataError, DatasetMeta, parse_dataset_yaml

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LAYOUTS = {"tutorial": ("Images", "Labels"), "voc": ("JPEGImages", "SegmentationClass")}
SPLIT_FOLDER = ("ImageSets", "Segmentation")
TEST_FOLDERS = ("Test", "test")
INFERENCE_SCAN_LIMIT = 200  # label files read to infer the label mode when dataset.yaml does not say
READ_THREADS = 8  # file reads overlap (object storage latency; Pillow decodes without the GIL)


@dataclass(frozen=True)
class Sample:
    """One image/label pair; paths are plain paths or URIs, label is None for unlabelled test images."""

    name: str
    image: str
    label: str | None


def portable_samples(samples: list[Sample], root: str) -> list[list[str | None]]:
    """[name, image, label] rows with paths relative to `root`: what the driver validated, for workers whose copy
    of the dataset may sit elsewhere (the built-in synthetic set is regenerated in each node's cache)."""
    prefix = files.normalize_root(root).partition("?")[0].rstrip("/") + "/"

    def rel(path: str | None) -> str | None:
        return path[len(prefix):].partition("?")[0] if path is not None and path.startswith(prefix) else path

    return [[s.name, rel(s.image), rel(s.label)] for s in samples]


def local_samples(rows: list[list[str | None]], root: str) -> list[Sample]:
    """The samples of `portable_samples` rows under this node's `root`."""

    def here(path: str | None) -> str | None:
        if path is None or files.is_uri(path) or os.path.isabs(path):
            return path
        return files.join(root, *path.split("/"))

    return [Sample(name, here(image), here(label)) for name, image, label in rows]


def natural_key(name: str) -> list[Any]:
    """Sort '2' before '10' so listings follow the order people number their files in."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _stem_index(folder: str) -> dict[str, list[str]]:
    """Image file names by stem; a stem with two files (a.png and a.jpg) is kept ambiguous for the check."""
    index: dict[str, list[str]] = {}
    for name in sorted(files.list_files(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            index.setdefault(stem, []).append(name)
    return index


def parse_split_file(text: str) -> list[str]:
    """Names, one per line (VOC style: the first token); blanks and # comments skipped, extensions dropped."""
    names = []
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if tokens:
            stem, ext = os.path.splitext(tokens[0])
            names.append(stem if ext.lower() in IMAGE_EXTENSIONS else tokens[0])
    return names


def hash_split(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/val split: rank names by a seeded hash, so it never depends on listing order."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction}: use a fraction between 0 and 1")
    n_val = min(len(names) - 1, max(1, round(len(names) * val_fraction))) if len(names) > 1 else 0

    def rank(name: str) -> bytes:
        return hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()

    val = set(sorted(names, key=rank)[:n_val])
    return [n for n in names if n not in val], [n for n in names if n in val]


@dataclass(frozen=True)
class _Listing:
    root: str
    layout: str
    images_dir: str
    labels_dir: str
    images: dict[str, list[str]]
    labels: dict[str, list[str]]
    split_files: dict[str, str]
    test_dir: str | None  # a folder of unlabelled test images (ISBI's Test/), used when there is no test.txt
    test_images: dict[str, list[str]]


class SegFolder:
    """A dataset folder (local or URI): where the pairs are, how they split, and what the labels mean."""

    def __init__(self, listing: _Listing, meta: DatasetMeta, *, val_fraction: float, split_seed: int) -> None:
        self.root = listing.root
        self.meta = meta
        self.images_dir = listing.images_dir
        self.labels_dir = listing.labels_dir
        self._listing = listing
        self._val_fraction = val_fraction
        self._split_seed = split_seed

    def __repr__(self) -> str:
        return f"SegFolder({self.root!r}, layout={self.meta.layout!r}, classes={self.meta.classes})"

    def splits(self) -> list[str]:
        """Split names that `samples` accepts."""
        names = {"train", "val", *self._listing.split_files}
        if self._listing.test_dir:
            names.add("test")
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(names, key=lambda n: (order.get(n, 3), n))

    def image_candidates(self, name: str) -> list[str]:
        return [files.join(self.images_dir, f) for f in self._listing.images.get(name, [])]

    def label_candidates(self, name: str) -> list[str]:
        return [files.join(self.labels_dir, f) for f in self._listing.labels.get(name, [])]

    def split_names(self, split: str) -> tuple[list[str], str]:
        """The names a split lists (duplicates kept, for the check) and where the list came from."""
        split_files = self._listing.split_files
        if split in ("train", "val") and not {"train", "val"} <= split_files.keys():
            return self._derived_split(split)
        if split in split_files:
            return parse_split_file(files.read_text(split_files[split])), split_files[split]
        if split == "test" and self._listing.test_dir:
            return sorted(self._listing.test_images, key=natural_key), self._listing.test_dir
        path = split if files.is_uri(split) or os.path.isabs(split) else os.path.abspath(split)
        if files.path_kind(path) == "file":
            return parse_split_file(files.read_text(path)), path
        raise DataError(f"split {split!r} not found in {self.root}: use one of {', '.join(self.splits())} "
                        "or the path of a file listing names")

    def _derived_split(self, split: str) -> tuple[list[str], str]:
        """train/val when their split files are missing: see `_split_note` for the rules."""
        split_files = self._listing.split_files
        listed = {key: parse_split_file(files.read_text(path)) for key, path in split_files.items()
                  if key in ("train", "trainval", "val", "test")}
        pool_key = next((key for key in ("train", "trainval") if key in listed), None)
        if pool_key:
            pool, source = listed[pool_key], split_files[pool_key]
        else:
            held_out = set(listed.get("val", [])) | set(listed.get("test", []))
            pool = [n for n in sorted(self._listing.images, key=natural_key) if n not in held_out]
            source = self.images_dir
        if "val" in listed:  # only train is missing
            val = set(listed["val"])
            return [n for n in pool if n not in val], source
        train, val = hash_split(pool, self._val_fraction, self._split_seed)
        return (train if split == "train" else val), f"{source} (val_fraction {self._val_fraction})"

    def samples(self, split: str) -> list[Sample]:
        """Pairs of a split ('train', 'val', 'test' or a split file). Missing files keep their expected path
        so reading them fails naming it; `check_dataset` / `validated_samples` report them all up front."""
        names, _ = self.split_names(split)
        listing = self._listing
        if split == "test" and "test" not in listing.split_files and listing.test_dir:
            return [Sample(n, files.join(listing.test_dir, listing.test_images[n][0]), None) for n in names]
        out = []
        for name in names:
            images, labels = self.image_candidates(name), self.label_candidates(name)
            image = images[0] if images else files.join(self.images_dir, name + self._usual_extension())
            if labels:
                label = labels[0]
            elif split == "test":
                label = None
            else:
                label = files.join(self.labels_dir, name + ".png")
            out.append(Sample(name, image, label))
        return out

    def _usual_extension(self) -> str:
        extensions = [os.path.splitext(f)[1] for names in self._listing.images.values() for f in names]
        return max(set(extensions), key=extensions.count) if extensions else ".png"


def open_dataset(root: str, *, num_classes: int | None = None, classes: list[str] | None = None,
                 label_mode: str | None = None, threshold: int | None = None,
                 target_below: bool | None = None, ignore_index: int | None = None, val_fraction: float = 0.2,
                 split_seed: int = 0) -> SegFolder:
    """Open a dataset folder or URI. Flags override dataset.yaml; what neither says is inferred, with a warning."""
    root = files.normalize_root(root)
    if files.path_kind(root) != "dir":
        raise DataError(f"dataset folder not found: {root}")
    yaml_path = files.join(root, "dataset.yaml")
    settings = (parse_dataset_yaml(files.read_text(yaml_path), yaml_path)
                if files.path_kind(yaml_path) == "file" else {})
    listing = _list_folder(root, settings)
    overrides = {"num_classes": num_classes, "classes": classes, "label_mode": label_mode,
                 "threshold": threshold, "target_below": target_below, "ignore_index": ignore_index}
    meta = _resolve_meta(listing, settings, {k: v for k, v in overrides.items() if v is not None})
    split_note = _split_note(listing.split_files, val_fraction, split_seed)
    if split_note:
        meta.inferred.append(split_note)
    if meta.inferred:
        warnings.warn(f"{root}: inferred " + "; ".join(meta.inferred) + ". Label settings go in dataset.yaml "
                      "(or flags), split lists in ImageSets/Segmentation/.", UserWarning, stacklevel=2)
    return SegFolder(listing, meta, val_fraction=val_fraction, split_seed=split_seed)


def _split_note(split_files: dict[str, str], val_fraction: float, split_seed: int) -> str | None:
    where = "/".join(SPLIT_FOLDER)
    if {"train", "val"} <= split_files.keys():
        return None
    if "val" in split_files:
        return f"no train.txt in {where}: train is every image not in val.txt"
    pool = next((f"{key}.txt" for key in ("train", "trainval") if key in split_files), "the images")
    return (f"no val.txt in {where}: val is {val_fraction:.0%} of {pool}, chosen by name hash "
            f"(split_seed {split_seed})")


def _list_folder(root: str, settings: dict[str, Any]) -> _Listing:
    layout = next((name for name, (images, _) in LAYOUTS.items()
                   if files.path_kind(files.join(root, images)) == "dir"), None)
    if "images" in settings or "labels" in settings:
        default_images, default_labels = LAYOUTS[layout or "tutorial"]
        images_name = settings.get("images", default_images)
        labels_name = settings.get("labels", default_labels)
        layout = "custom"
    elif layout is None:
        raise DataError(f"{root}: no dataset layout found; expected Images/ + Labels/ (tutorial) or "
                        "JPEGImages/ + SegmentationClass/ (Pascal VOC), or images:/labels: keys in "
                        "dataset.yaml")
    else:
        images_name, labels_name = LAYOUTS[layout]
    images_dir, labels_dir = files.join(root, images_name), files.join(root, labels_name)
    images = _stem_index(images_dir)
    if not images:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    split_dir = files.join(root, *SPLIT_FOLDER)
    split_files = {os.path.splitext(f)[0]: files.join(split_dir, f)
                   for f in files.list_files(split_dir) if f.endswith(".txt")}
    test_dir = next((files.join(root, t) for t in TEST_FOLDERS
                     if files.path_kind(files.join(root, t)) == "dir"), None)
    labels = _stem_index(labels_dir)
    test_images = _stem_index(test_dir) if test_dir else {}
    return _Listing(root, layout, images_dir, labels_dir, images, labels, split_files, test_dir, test_images)


def _class_names(settings: dict[str, Any], overrides: dict[str, Any]) -> list[str] | None:
    """Flags before dataset.yaml; a --num-classes that differs from the file's names keeps what it can."""
    if "classes" in overrides:
        names = [str(n) for n in overrides["classes"]]
        if overrides.get("num_classes", len(names)) != len(names):
            raise DataError(f"num_classes {overrides['num_classes']} does not match the {len(names)} "
                            "classes given")
        return names
    known = [str(n) for n in settings.get("classes", [])]
    count = overrides.get("num_classes", settings.get("num_classes", len(known) or None))
    if count is None:
        return None
    return [known[i] if i < len(known) else f"class{i}" for i in range(count)]


def _resolve_meta(listing: _Listing, settings: dict[str, Any], overrides: dict[str, Any]) -> DatasetMeta:
    given = {**settings, **overrides}
    classes = _class_names(settings, overrides)
    label_mode = given.get("label_mode")
    ignore_index = given.get("ignore_index", IGNORE)
    inferred: list[str] = []
    if label_mode is None or (label_mode == "index" and classes is None):
        values, scanned = _scan_label_values(listing)
        of_files = f"{scanned} of {len(listing.labels)} label files"
        binary = values == {0, 255} and (classes is None or len(classes) == 2)
        if label_mode is None and binary and listing.layout != "tutorial" and "target_below" not in given:
            raise DataError(f"{listing.labels_dir}: the labels are 0/255 masks and nothing says which value marks "
                            f"the object; write 'target_below: false' (255 = object, the usual mask) or "
                            f"'target_below: true' (0 = object, as ISBI's membranes) into "
                            f"{files.join(listing.root, 'dataset.yaml')}")
        if label_mode is None and binary:
            label_mode = "threshold"
            inferred.append(f"label_mode threshold: the labels hold only the values 0 and 255 ({of_files}), "
                            "so they are binary masks; class 1 is the darker value 0 as in ISBI (threshold "
                            "127, target_below true); set target_below: false if 255 marks your target")
        elif label_mode is None:
            label_mode = "index"
            inferred.append(f"label_mode index: label values are class ids ({of_files})")
        if label_mode == "index" and classes is None:
            largest = max((v for v in values if v != ignore_index), default=0)
            count = max(2, largest + 1)
            if count > MAX_CLASSES:
                raise DataError(f"{listing.labels_dir}: label value 255 seen but ignore_index is "
                                f"{ignore_index}; set ignore_index: 255 or classes in dataset.yaml")
            classes = [f"class{i}" for i in range(count)]
            inferred.append(f"{count} classes from the largest label value {largest} ({of_files}; "
                            f"{ignore_index} is ignored); name them with classes: in dataset.yaml")
    if classes is None:  # threshold mode named without classes
        classes = ["background", "foreground"]
    return DatasetMeta(
        root=listing.root, classes=classes, label_mode=label_mode, threshold=given.get("threshold", 127),
        target_below=given.get("target_below", True), ignore_index=ignore_index,
        colors=[tuple(c) for c in settings.get("colors", [])], in_channels=_probe_channels(listing),
        inferred=inferred, layout=listing.layout)


def _scan_label_values(listing: _Listing) -> tuple[set[int], int]:
    """Raw values in (an evenly spaced subset of) the label files; unreadable files are left to the check."""
    stems = sorted(listing.labels, key=natural_key)
    if not stems:
        raise DataError(f"{listing.labels_dir}: no label files; labels are needed to tell the label mode "
                        "(or give label_mode and classes in dataset.yaml)")
    picks = np.unique(np.linspace(0, len(stems) - 1, min(len(stems), INFERENCE_SCAN_LIMIT)).astype(int))
    paths = [files.join(listing.labels_dir, listing.labels[stems[i]][0]) for i in picks]

    def present(path: str) -> np.ndarray | None:
        try:
            return np.bincount(files.read_raw_label(path).ravel(), minlength=256) > 0
        except DataError:
            return None

    with ThreadPoolExecutor(READ_THREADS) as pool:
        found = [p for p in pool.map(present, paths) if p is not None]
    if not found:
        raise DataError(f"{listing.labels_dir}: no readable label file")
    return {int(v) for v in np.flatnonzero(np.logical_or.reduce(found))}, len(found)


def _probe_channels(listing: _Listing) -> int:
    """Grey (1) or RGB (3), from the first readable image; only its header is decoded."""
    for stem in sorted(listing.images, key=natural_key)[:10]:
        path = files.join(listing.images_dir, listing.images[stem][0])
        try:
            return files.mode_channels(Image.open(io.BytesIO(files.read_bytes(path))).mode)
        except (DataError, OSError):
            continue
    raise DataError(f"{listing.images_dir}: none of the first images could be read")
