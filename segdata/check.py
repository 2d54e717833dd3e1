"""Dataset check: every problem at once, with file names, so a broken set is fixed in one round trip."""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from segdata import files
from segdata.folder import READ_THREADS, Sample, SegFolder, listed, open_dataset
from segdata.meta import IGNORE, DataError, DatasetMeta


@dataclass
class DataReport:
    """Counts, sizes, class shares and problems of a dataset; `format()` is what `data check` prints."""

    root: str
    meta: DatasetMeta
    counts: dict[str, int] = field(default_factory=dict)
    image_sizes: Counter = field(default_factory=Counter)
    class_shares: dict[str, float] = field(default_factory=dict)
    ignored_share: float = 0.0
    problems: list[str] = field(default_factory=list)
    bad_names: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        meta = self.meta
        if meta.label_mode == "threshold":
            rule = "<=" if meta.target_below else ">"
            mode = f"threshold mode (value {rule} {meta.threshold} is {meta.classes[1]!r})"
        elif meta.label_mode == "nonzero":
            mode = f"nonzero mode (any non-zero value is {meta.classes[1]!r})"
        elif meta.label_mode == "color":
            mode = f"color mode ({len(meta.palette)} colours in palette:)"
        else:
            mode = f"index mode (value = class id, {meta.ignore_index} ignored)"
        lines = [f"dataset {self.root} ({meta.layout} layout)",
                 f"  labels: {meta.num_classes} classes, {mode}; images: {_channels(meta.in_channels)}, "
                 f"{meta.image_bits}-bit",
                 "  splits: " + ", ".join(f"{split} {n}" for split, n in self.counts.items())]
        if self.image_sizes:
            sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in self.image_sizes.most_common(5))
            more = len(self.image_sizes) - 5
            lines.append(f"  image sizes (W x H): {sizes}" + (f" and {more} more" if more > 0 else ""))
        if self.class_shares:
            lines.append(f"  class shares (of labelled pixels; {self.ignored_share:.1%} of all pixels "
                         "ignored):")
            width = max(len(name) for name in self.class_shares)
            lines += [f"    {i:3d} {name:<{width}} {share:7.2%}"
                      for i, (name, share) in enumerate(self.class_shares.items())]
        lines += [f"  note: {note}" for note in self.notes]
        if self.ok:
            lines.append("OK: no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s) ({len(self.bad_names)} bad pairs); fix them, or "
                         "train with --skip-bad to leave the bad pairs out:")
            lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass
class _Inspection:
    image_error: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    digest: bytes | None = None
    label_error: str | None = None
    label_size: tuple[int, int] | None = None
    histogram: np.ndarray | None = None  # pixels per class id (IGNORE included)
    unknown: list[str] = field(default_factory=list)  # stored values that no class stands for


def _inspect(sample: Sample, meta: DatasetMeta) -> _Inspection:
    """Read a pair once: decode the image (size, channels, content hash), histogram the label's class ids."""
    result = _Inspection()
    try:
        data = files.read_bytes(sample.image)
        values = files.image_values(data, sample.image).values
        result.image_size = values.shape[:2]
        result.channels = values.shape[2]
        result.digest = hashlib.blake2b(data, digest_size=16).digest()
    except DataError as exc:
        result.image_error = str(exc)
    if sample.label is not None:
        try:
            raw = files.read_raw_label(sample.label, meta.label_mode == "color")
            result.label_size = raw.shape[:2]
            result.histogram = np.bincount(meta.to_class_ids(raw, sample.label).ravel(), minlength=256)
            result.unknown = meta.unknown_values(raw)
        except DataError as exc:
            result.label_error = str(exc)
    return result


def check_dataset(root_or_folder: str | SegFolder, *, num_classes: int | None = None,
                  classes: list[str] | None = None, label_mode: str | None = None,
                  threshold: int | None = None, target_below: bool | None = None,
                  ignore_index: int | None = None, val_fraction: float = 0.2, split_seed: int = 0,
                  splits: Sequence[str] = ("train", "val")) -> DataReport:
    """Check the given splits; reads every image and label exactly once (in threads)."""
    if isinstance(root_or_folder, SegFolder):
        folder = root_or_folder
    else:
        folder = open_dataset(root_or_folder, num_classes=num_classes, classes=classes, label_mode=label_mode,
                              threshold=threshold, target_below=target_below, ignore_index=ignore_index,
                              val_fraction=val_fraction, split_seed=split_seed)
    meta = folder.meta
    report = DataReport(root=folder.root, meta=meta, notes=list(meta.inferred))
    prefix = folder.root.rstrip("/") + "/"
    images_prefix = folder.images_dir.rstrip("/") + "/"

    def problem(message: str, *names: str) -> None:
        report.problems.append(message.replace(prefix, ""))
        report.bad_names.update(names)

    to_read: dict[str, Sample] = {}
    member_of: dict[str, list[str]] = defaultdict(list)
    for split in splits:
        try:
            names, source = folder.split_names(split)
            samples = folder.samples(split)
        except DataError as exc:
            problem(str(exc))
            continue
        report.counts[split] = len(names)
        if not names:
            problem(f"split {split}: {source} lists no names")
        for name, times in Counter(names).items():
            if times > 1:
                problem(f"{name}: listed {times} times in {source}", name)
        for sample in samples:
            if split not in member_of[sample.name]:
                member_of[sample.name].append(split)
            name, candidates = sample.name, folder.image_candidates(sample.name)
            if len(candidates) > 1:
                problem(f"{name}: several image files ({', '.join(candidates)}); keep one", name)
            if not candidates and sample.image.startswith(images_prefix):
                problem(f"{name}: listed in {source} but there is no image {sample.image}", name)
                continue
            to_read.setdefault(sample.name, sample)
    for name, in_splits in member_of.items():
        if len(in_splits) > 1:
            problem(f"{name}: in more than one split ({', '.join(in_splits)})", name)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        inspections = dict(zip(to_read, pool.map(lambda s: _inspect(s, meta), to_read.values()), strict=True))
    _judge(report, meta, to_read, inspections, problem)
    return report


def _judge(report: DataReport, meta: DatasetMeta, samples: dict[str, Sample],
           inspections: dict[str, _Inspection], problem: Callable[..., None]) -> None:
    class_pixels = np.zeros(256, dtype=np.float64)
    by_digest: dict[bytes, list[str]] = defaultdict(list)
    channels: Counter = Counter()
    for name, seen in inspections.items():
        sample = samples[name]
        if seen.image_error:
            problem(f"{name}: image {seen.image_error}", name)
        else:
            report.image_sizes[seen.image_size] += 1
            channels[seen.channels] += 1
            by_digest[seen.digest].append(sample.image)
        if seen.label_error:
            problem(f"{name}: label {seen.label_error}", name)
        if seen.histogram is None:
            continue
        class_pixels += seen.histogram
        if seen.image_size and seen.image_size != seen.label_size:
            (ih, iw), (lh, lw) = seen.image_size, seen.label_size
            problem(f"{name}: image {sample.image} is {iw}x{ih} but label {sample.label} is {lw}x{lh}", name)
        if seen.unknown and meta.label_mode == "color":
            problem(f"{name}: label {sample.label} has colours {listed(seen.unknown)} that palette: does not "
                    "map; add them to palette: in dataset.yaml (to a class, or to ignore)", name)
        elif seen.unknown:
            problem(f"{name}: label {sample.label} has values {listed(seen.unknown)} outside the "
                    f"{meta.num_classes} classes (0..{meta.num_classes - 1}, ignore_index "
                    f"{meta.ignore_index}); fix the label or set classes/ignore_index in dataset.yaml", name)
    for paths in by_digest.values():
        if len(paths) > 1:
            duplicates = [name for name, s in samples.items() if s.image in paths[1:]]
            problem(f"identical image files: {', '.join(paths)}", *duplicates)
    labelled = class_pixels[: meta.num_classes].sum()
    total = labelled + class_pixels[IGNORE]
    if total:
        report.class_shares = {name: float(class_pixels[i] / labelled) if labelled else 0.0
                               for i, name in enumerate(meta.classes)}
        report.ignored_share = float(class_pixels[IGNORE] / total)
    if len(channels) > 1:
        report.notes.append(f"mixed channel counts ({dict(channels)}); all are read with {meta.in_channels} "
                            "channel(s) (grey and RGB convert; other counts are problems)")
        for name, seen in inspections.items():
            if seen.channels is not None and seen.channels != meta.in_channels \
                    and {seen.channels, meta.in_channels} != {1, 3}:
                problem(f"{name}: image {samples[name].image} has {seen.channels} channel(s), the dataset's first "
                        f"image {meta.in_channels}", name)


def _channels(n: int) -> str:
    return {1: "grey, 1 channel", 3: "RGB, 3 channels"}.get(n, f"{n} channels")


def validated_samples(folder: SegFolder, split: str, skip_bad: bool) -> list[Sample]:
    """The pairs of a split, refused with the full report when any is broken, or without the bad ones."""
    samples = folder.samples(split)
    report = check_dataset(folder, splits=(split,))
    if report.ok:
        return samples
    if not skip_bad:
        raise DataError(report.format())
    kept = [s for s in samples if s.name not in report.bad_names]
    if not kept or not report.bad_names:
        raise DataError(report.format())
    skipped = sorted({s.name for s in samples} - {s.name for s in kept})
    warnings.warn(f"split {split}: skipping {len(skipped)} bad pair(s) ({', '.join(skipped)}):\n"
                  + "\n".join(f"  - {p}" for p in report.problems), UserWarning, stacklevel=2)
    return kept


def class_frequencies(folder_or_samples: SegFolder | Sequence[Sample], meta: DatasetMeta | None = None
                      ) -> np.ndarray:
    """Pixel share of each class over the labels (ignored pixels excluded), for inverse-frequency weights."""
    if isinstance(folder_or_samples, SegFolder):
        meta = meta or folder_or_samples.meta
        samples = folder_or_samples.samples("train")
    else:
        samples = list(folder_or_samples)
    if meta is None:
        raise ValueError("class_frequencies needs the DatasetMeta when given a list of samples")

    def count(sample: Sample) -> np.ndarray:
        return np.bincount(files.read_label(sample.label, meta).ravel(), minlength=256)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        totals = sum(pool.map(count, [s for s in samples if s.label is not None]), np.zeros(256, np.int64))
    pixels = totals[: meta.num_classes].astype(np.float64)
    return pixels / pixels.sum() if pixels.sum() else pixels


def class_presence(samples: Sequence[Sample], meta: DatasetMeta) -> np.ndarray:
    """n x classes booleans: which classes each image's label contains (ignored pixels excluded)."""

    def present(sample: Sample) -> np.ndarray:
        counts = np.bincount(files.read_label(sample.label, meta).ravel(), minlength=256)
        return counts[: meta.num_classes] > 0

    with ThreadPoolExecutor(READ_THREADS) as pool:
        rows = list(pool.map(present, samples))
    return np.stack(rows) if rows else np.zeros((0, meta.num_classes), bool)
