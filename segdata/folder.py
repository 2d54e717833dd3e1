"""Dataset folders: layout detection, split lists, dataset.yaml and what to infer when it is absent."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from segdata import files
from segdata.label_rules import LabelValues, infer_labels
from segdata.meta import IGNORE, DataError, DatasetMeta, pack_colors, palette_classes, parse_dataset_yaml
from segdata.pairing import natural_key, pair_labels, pair_rule

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
LAYOUTS = {"tutorial": ("Images", "Labels"), "voc": ("JPEGImages", "SegmentationClass")}
# the folder names people use for a pair (any case), and for split subfolders each holding such a pair
IMAGE_FOLDERS = ("images", "imgs", "img", "image")
LABEL_FOLDERS = ("masks", "mask", "labels", "label", "gt", "annotations", "annotation", "ground_truth", "groundtruth")
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
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


def _stem_index(folder: str) -> dict[str, list[str]]:
    """Image file paths by stem; a stem with two files (a.png and a.jpg) is kept ambiguous for the check."""
    index: dict[str, list[str]] = {}
    for name in sorted(files.list_files(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            index.setdefault(stem, []).append(files.join(folder, name))
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
    images: dict[str, list[str]]  # sample name -> image paths (one, unless the check is to name a clash)
    labels: dict[str, list[str]]  # sample name -> label paths, paired to the images by name
    split_files: dict[str, str]
    test_dir: str | None  # a folder of unlabelled test images (ISBI's Test/), used when there is no test.txt
    test_images: dict[str, list[str]]
    folder_splits: dict[str, list[str]]  # split subfolders (train/, val/, test/): the names each holds
    unpaired_labels: list[str]  # label files whose name matches no image
    pairing: str | None  # how names were paired, when not by identical names


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
        names = {"train", "val", *self._listing.split_files, *self._listing.folder_splits}
        if self._listing.test_dir:
            names.add("test")
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(names, key=lambda n: (order.get(n, 3), n))

    def image_candidates(self, name: str) -> list[str]:
        return list(self._listing.images.get(name, []))

    def label_candidates(self, name: str) -> list[str]:
        return list(self._listing.labels.get(name, []))

    def split_names(self, split: str) -> tuple[list[str], str]:
        """The names a split lists (duplicates kept, for the check) and where the list came from."""
        split_files, folder_splits = self._listing.split_files, self._listing.folder_splits
        if split in ("train", "val") and not ({"train", "val"} <= split_files.keys()
                                               or {"train", "val"} <= folder_splits.keys()):
            return self._derived_split(split)
        if split in split_files:
            return parse_split_file(files.read_text(split_files[split])), split_files[split]
        if split in self._listing.folder_splits:
            return list(self._listing.folder_splits[split]), files.join(self.root, split)
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
        elif "train" in self._listing.folder_splits:
            pool, source = self._listing.folder_splits["train"], files.join(self.root, "train")
        else:
            held_out = set(listed.get("val", [])) | set(listed.get("test", []))
            held_out |= set(self._listing.folder_splits.get("test", []))
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
        if split == "test" and not {"test"} & (listing.split_files.keys() | listing.folder_splits.keys()) \
                and listing.test_dir:
            return [Sample(n, listing.test_images[n][0], None) for n in names]
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
        extensions = [os.path.splitext(f)[1] for paths in self._listing.images.values() for f in paths]
        return max(set(extensions), key=extensions.count) if extensions else ".png"


def listed(values: list[str], most: int = 8) -> str:
    """The first `most` values, and how many more (for one-line messages)."""
    return ", ".join(values[:most]) + (f" and {len(values) - most} more" if len(values) > most else "")


def open_dataset(root: str, *, num_classes: int | None = None, classes: list[str] | None = None,
                 label_mode: str | None = None, threshold: int | None = None,
                 target_below: bool | None = None, ignore_index: int | None = None, val_fraction: float = 0.2,
                 split_seed: int = 0, image_range: list[tuple[float, float]] | None = None) -> SegFolder:
    """Open a dataset folder or URI. Flags override dataset.yaml; what neither says is inferred, with a warning.
    `image_range`: the intensity range deeper-than-8-bit images map from when known (a checkpoint's), else
    measured on the training images."""
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
    if listing.pairing:
        meta.inferred.append(listing.pairing)
    if listing.unpaired_labels:
        meta.inferred.append(f"{len(listing.unpaired_labels)} label file(s) match no image and are not used: "
                             f"{listed(listing.unpaired_labels)}")
    folder = SegFolder(listing, meta, val_fraction=val_fraction, split_seed=split_seed)
    if meta.image_bits != 8 and image_range is not None:
        meta.image_range = [tuple(r) for r in image_range]
    elif meta.image_bits != 8:
        meta.image_range = measured_range(folder.samples("train"), meta.in_channels)
        shown = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in meta.image_range)
        meta.inferred.append(f"{meta.image_bits}-bit images: values {shown} (p{RANGE_PERCENTILES[0]:g}-"
                             f"p{RANGE_PERCENTILES[1]:g} of the training images, per channel) map onto 0..255")
    split_note = _split_note(listing, val_fraction, split_seed)
    if split_note:
        meta.inferred.append(split_note)
    if meta.inferred:
        warnings.warn(f"{root}: inferred " + "; ".join(meta.inferred) + ". Label settings go in dataset.yaml "
                      "(or flags), split lists in ImageSets/Segmentation/.", UserWarning, stacklevel=2)
    return folder


def _split_note(listing: _Listing, val_fraction: float, split_seed: int) -> str | None:
    where, split_files = "/".join(SPLIT_FOLDER), listing.split_files
    if {"train", "val"} <= split_files.keys() or {"train", "val"} <= listing.folder_splits.keys():
        return None
    if "train" in listing.folder_splits and not {"train", "val"} & split_files.keys():
        return (f"no val/ folder: val is {val_fraction:.0%} of train/, chosen by name hash (split_seed "
                f"{split_seed})")
    if "val" in split_files:
        return f"no train.txt in {where}: train is every image not in val.txt"
    pool = next((f"{key}.txt" for key in ("train", "trainval") if key in split_files), "the images")
    return (f"no val.txt in {where}: val is {val_fraction:.0%} of {pool}, chosen by name hash "
            f"(split_seed {split_seed})")


def _list_folder(root: str, settings: dict[str, Any]) -> _Listing:
    """Where the images and labels are (`_find_layout`), their pairs by name, the split lists and test images."""
    layout, split_dirs = _find_layout(root, settings)
    rule = pair_rule(settings.get("pair"), files.join(root, "dataset.yaml"))
    split_dir = files.join(root, *SPLIT_FOLDER)
    split_files = {os.path.splitext(f)[0]: files.join(split_dir, f)
                   for f in files.list_files(split_dir) if f.endswith(".txt")}
    test_dir = next((files.join(root, t) for t in TEST_FOLDERS
                     if files.path_kind(files.join(root, t)) == "dir"), None) if "" in split_dirs else None
    images: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    folder_splits: dict[str, list[str]] = {}
    unpaired: list[str] = []
    notes: list[str] = []
    for split, (images_dir, labels_dir) in split_dirs.items():
        found_images = _stem_index(images_dir)
        if not found_images:
            raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        paired, lonely, note = pair_labels(found_images, _stem_index(labels_dir) if labels_dir else {}, rule)
        qualify = (lambda name, split=split: f"{split}/{name}") if split else (lambda name: name)
        images.update({qualify(name): paths for name, paths in found_images.items()})
        labels.update({qualify(name): paths for name, paths in paired.items()})
        unpaired += lonely
        notes += [note] if note else []
        if split:
            folder_splits[split] = sorted((qualify(n) for n in found_images), key=natural_key)
    images_dir, labels_dir = split_dirs.get("", split_dirs.get("train"))
    test_images = _stem_index(test_dir) if test_dir else {}
    return _Listing(root, layout, images_dir, labels_dir, images, labels, split_files, test_dir, test_images,
                    folder_splits, unpaired, notes[0] if notes else None)


def _find_layout(root: str, settings: dict[str, Any]) -> tuple[str, dict[str, tuple[str, str | None]]]:
    """The layout's name and its (images, labels) folders: by split subfolder, or under the key "" for one pair:
    the dataset.yaml's folders, a known layout, a pair with the names people use (any case), or split folders."""
    entries = _subfolders(root)
    if "images" in settings or "labels" in settings:
        layout = next((name for name, (images, _) in LAYOUTS.items() if images in entries.values()), "tutorial")
        images_name = settings.get("images") or next((entries[n] for n in IMAGE_FOLDERS if n in entries),
                                                     LAYOUTS[layout][0])
        labels_name = settings.get("labels") or next((entries[n] for n in LABEL_FOLDERS if n in entries),
                                                     LAYOUTS[layout][1])
        return "custom", {"": (files.join(root, images_name), files.join(root, labels_name))}
    found = (next(((name, pair) for name, pair in LAYOUTS.items() if set(pair) <= set(entries.values())), None)
             or ((f"{pair[0]}/ + {pair[1]}/", pair) if (pair := _folder_pair(entries)) else None)
             # a known layout whose labels are missing: the check says so
             or next(((name, pair) for name, pair in LAYOUTS.items() if pair[0] in entries.values()), None))
    if found:
        layout, (images_name, labels_name) = found
        return layout, {"": (files.join(root, images_name), files.join(root, labels_name))}
    split_dirs: dict[str, tuple[str, str | None]] = {}
    for split, names in SPLIT_FOLDERS.items():
        folder = next((entries[n] for n in names if n in entries), None)
        inside = _subfolders(files.join(root, folder)) if folder else {}
        if pair := _folder_pair(inside):
            split_dirs[split] = (files.join(root, folder, pair[0]), files.join(root, folder, pair[1]))
        elif split == "test" and (images := next((inside[n] for n in IMAGE_FOLDERS if n in inside), None)):
            split_dirs[split] = (files.join(root, folder, images), None)  # unlabelled test images
    if "train" not in split_dirs:
        raise DataError(f"{root}: no dataset layout found; expected a pair of folders such as images/ + masks/ "
                        "(or Images/ + Labels/, JPEGImages/ + SegmentationClass/), train/ and val/ folders "
                        "each holding such a pair, or images:/labels: keys in dataset.yaml")
    return "split folders (" + ", ".join(f"{s}/" for s in split_dirs) + ")", split_dirs


def _subfolders(root: str) -> dict[str, str]:
    """Sub-folder names of `root`, by their lower-case spelling."""
    filesystem, path = files.locate(root)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return {}
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return {info.base_name.lower(): info.base_name for info in infos if info.type == pafs.FileType.Directory}


def _folder_pair(entries: dict[str, str]) -> tuple[str, str] | None:
    images = next((entries[n] for n in IMAGE_FOLDERS if n in entries), None)
    labels = next((entries[n] for n in LABEL_FOLDERS if n in entries), None)
    return (images, labels) if images and labels else None


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
    palette: list[tuple[int, int, int, int]] = []
    inferred: list[str] = []
    probe = _probe_images(listing)
    if "palette" in settings:
        if label_mode not in (None, "color"):
            raise DataError(f"{files.join(listing.root, 'dataset.yaml')}: palette: maps label colours, but "
                            f"label_mode is {label_mode}; drop one of the two")
        label_mode = "color"
        classes, palette = palette_classes(settings["palette"], classes, files.join(listing.root, "dataset.yaml"))
    if label_mode is None or (label_mode == "index" and classes is None):
        rule = infer_labels(_scan_label_values(listing), label_mode=label_mode, classes=classes,
                            ignore_index=given.get("ignore_index"), target_below=given.get("target_below"),
                            darker_is_object=listing.layout == "tutorial", where=listing.labels_dir)
        label_mode, classes = rule.label_mode, rule.classes
        found = {"threshold": rule.threshold, "target_below": rule.target_below}
        given = {**{k: v for k, v in found.items() if v is not None}, **given}
        inferred.append(rule.note)
    if classes is None:  # a binary mode named without classes
        classes = ["background", "foreground"]
    return DatasetMeta(
        root=listing.root, classes=classes, label_mode=label_mode, threshold=given.get("threshold", 127),
        target_below=given.get("target_below", True), ignore_index=ignore_index,
        colors=[tuple(c) for c in settings.get("colors", [])] or _palette_colors(palette, len(classes)),
        in_channels=probe.channels,
        inferred=inferred + list(probe.notes), layout=listing.layout, palette=palette, image_bits=probe.bits)


def _scan_label_values(listing: _Listing) -> LabelValues:
    """Raw values in (an evenly spaced subset of) the label files; unreadable files are left to the check."""
    stems = sorted(listing.labels, key=natural_key)
    if not stems:
        raise DataError(f"{listing.labels_dir}: no label files; labels are needed to tell the label mode "
                        "(or give label_mode and classes in dataset.yaml)")
    picks = np.unique(np.linspace(0, len(stems) - 1, min(len(stems), INFERENCE_SCAN_LIMIT)).astype(int))
    paths = [listing.labels[stems[i]][0] for i in picks]

    def scan(path: str) -> tuple[np.ndarray, np.ndarray, bool, int] | None:
        try:
            raw = files.read_raw_label(path, color=True)
        except DataError:
            return None
        if raw.ndim == 3:
            grey = files.uncoloured(raw)
            if grey is None:
                return (*np.unique(pack_colors(raw), return_counts=True), True, 8)
            raw = grey
        return (*np.unique(raw, return_counts=True), False, raw.dtype.itemsize * 8)

    counts: Counter = Counter()
    colors: Counter = Counter()
    bits, scanned = 8, 0
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for result in pool.map(scan, paths):
            if result is None:
                continue
            values, pixels, is_color, depth = result
            (colors if is_color else counts).update(dict(zip(values.tolist(), pixels.tolist(), strict=True)))
            bits, scanned = max(bits, depth), scanned + 1
    if not scanned:
        raise DataError(f"{listing.labels_dir}: no readable label file")
    return LabelValues(dict(counts), scanned, len(listing.labels), bits, dict(colors), paths[0])


def _palette_colors(palette: list[tuple[int, int, int, int]], count: int) -> list[tuple[int, int, int]]:
    """Colour labels: each class drawn in its first label colour (when every class has one)."""
    first = {}
    for r, g, b, class_id in palette:
        first.setdefault(class_id, (r, g, b))
    return [first[i] for i in range(count)] if all(i in first for i in range(count)) else []


@dataclass(frozen=True)
class _ImageProbe:
    channels: int
    bits: int
    notes: tuple[str, ...]


def _probe_images(listing: _Listing) -> _ImageProbe:
    """Channels and bit depth from the first readable image, and what reading it changes."""
    for stem in sorted(listing.images, key=natural_key)[:10]:
        path = listing.images[stem][0]
        try:
            stored = files.image_values(files.read_bytes(path), path)
        except DataError:
            continue
        return _ImageProbe(stored.values.shape[2], stored.bits, stored.notes)
    raise DataError(f"{listing.images_dir}: none of the first images could be read")


RANGE_IMAGES = 16  # training images whose values set a deeper-than-8-bit set's intensity range
RANGE_PERCENTILES = (0.01, 99.99)  # wide: the planner clips further (p0.5-p99.5) on the 8-bit values


def measured_range(samples: list[Sample], channels: int) -> list[tuple[float, float]]:
    """Per channel, the intensity range of (evenly spaced) training images that is mapped onto 0..255: from the
    data's own percentiles, never an assumed 0..65535 (a 16-bit image spanning 33000-36800 maps as its 8-bit
    rescaling would)."""
    picks = np.unique(np.linspace(0, len(samples) - 1, min(len(samples), RANGE_IMAGES)).astype(int))

    def pixels(sample: Sample) -> np.ndarray | None:
        try:
            values = files.image_values(files.read_bytes(sample.image), sample.image).values
        except DataError:
            return None
        step = max(1, int(np.sqrt(values.shape[0] * values.shape[1] / 250_000)))
        return values[::step, ::step].reshape(-1, values.shape[2]).astype(np.float64)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        found = [p for p in pool.map(pixels, [samples[i] for i in picks]) if p is not None and p.shape[1] == channels]
    if not found:
        raise DataError(f"{samples[0].image}: no readable training image to measure the intensity range from")
    low, high = np.percentile(np.concatenate(found), RANGE_PERCENTILES, axis=0)
    return [(float(lo), float(max(hi, lo + 1e-3))) for lo, hi in zip(low, high, strict=True)]
