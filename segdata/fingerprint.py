"""The dataset fingerprint: what a planner needs to know about a training split, from one pass over it.

Like nnU-Net's `fingerprint_extractor.py` (sizes, spacings, intensity statistics of the foreground), for 2D images
and with what a 2D recipe depends on besides: image sizes, channels and bit depth; per-channel intensity statistics
over all pixels and over each class's pixels (exact, from 256-bin histograms of the decoded uint8 values); class
shares and how many images hold each class; the **scale of each class's structures**: thickness (2 d - 1 for the
distance transform d on the class mask's ridge: a 3 px line measures 3) and object size (8-connected components:
their areas, and the equivalent diameter of the component a pixel lies in); thickness and diameter are weighted by
pixels, so they describe the structure the typical pixel of a class belongs to, not the specks a noisy label leaves;
and where each class sits vertically (0 top, 1 bottom), which tells upright scenes (sky above road) from
orientation-free ones (cells, tissue). Pure statistics: no models, no Ray.

The result is cached under `$UNET_ZOO_CACHE/fingerprints/` by a digest of the split's file contents and the label
settings, so a second run reads it back in the time it takes to hash the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from segdata import files
from segdata.folder import READ_THREADS, Sample
from segdata.meta import IGNORE, DataError, DatasetMeta
from segdata.resolve import cache_dir

FINGERPRINT_VERSION = 3
PERCENTILES = (0.5, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5)
MAX_IMAGES = 1000  # larger splits are fingerprinted on this many evenly spaced images
RIDGE_SAMPLES = 4000  # thickness samples kept per class and image (seeded), so big classes do not dominate memory
def _key(p: float) -> str:
    return f"p{p:g}"


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {_key(p): float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)}


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Percentiles of `values` where each counts `weights` times (e.g. a component once per pixel it covers)."""
    if values.size == 0:
        return {}
    order = np.argsort(values)
    cum = np.cumsum(weights[order], dtype=np.float64)
    at = np.searchsorted(cum, np.asarray(PERCENTILES) / 100 * cum[-1], side="left")
    return {_key(p): float(values[order][min(i, values.size - 1)]) for p, i in zip(PERCENTILES, at, strict=True)}


@dataclass
class ChannelStats:
    """One channel's intensities (of all pixels, or of one class's): exact, from a 256-bin histogram."""

    pixels: int
    mean: float = 0.0
    std: float = 0.0
    clipped_mean: float = 0.0  # after clipping to p0.5-p99.5: nnU-Net's statistics for a clipped normalisation
    clipped_std: float = 0.0
    percentiles: dict[str, float] = field(default_factory=dict)  # p0.5 ... p99.5

    def p(self, q: float) -> float:
        return self.percentiles[_key(q)]


def _histogram_stats(hist: np.ndarray) -> ChannelStats:
    """Mean, std and percentiles of uint8 values given as a 256-bin histogram (exact)."""
    total = float(hist.sum())
    if total == 0:
        return ChannelStats(pixels=0)
    values = np.arange(256, dtype=np.float64)
    mean = float((hist * values).sum() / total)
    std = float(math.sqrt(max((hist * (values - mean) ** 2).sum() / total, 0.0)))
    cdf = np.cumsum(hist) / total
    pct = {_key(p): float(np.searchsorted(cdf, p / 100, side="left")) for p in PERCENTILES}
    clipped = np.clip(values, pct["p0.5"], pct["p99.5"])
    clipped_mean = float((hist * clipped).sum() / total)
    clipped_std = float(math.sqrt(max((hist * (clipped - clipped_mean) ** 2).sum() / total, 0.0)))
    return ChannelStats(int(total), mean, std, clipped_mean, clipped_std, pct)


@dataclass
class ClassFingerprint:
    """One class: how much of the data it is, how thick its structures and how big its objects are."""

    name: str
    share: float  # of labelled pixels
    image_share: float  # of images holding at least one of its pixels
    thickness: dict[str, float]  # px, pixel-weighted percentiles of 2 d - 1 (d: distance transform on the ridge)
    object_area: dict[str, float]  # px, percentiles of the 8-connected components' areas (each component once)
    object_diameter: dict[str, float]  # px, pixel-weighted percentiles of the components' equivalent diameters
    objects_per_image: float  # median over the images that hold the class
    vertical_position: float  # mean row of its pixels, 0 = top, 1 = bottom
    intensity: list[ChannelStats]  # per channel, over this class's pixels


@dataclass
class Fingerprint:
    """What one pass over a training split measured (`fingerprint()`); `to_dict()` is `fingerprint.json`."""

    root: str
    digest: str
    images: int
    images_measured: int
    height: dict[str, float]
    width: dict[str, float]
    channels: int
    bit_depth: int
    intensity: list[ChannelStats]  # per channel, over all pixels
    classes: list[ClassFingerprint]
    ignored_share: float
    label_mode: str
    seconds: float
    version: int = FINGERPRINT_VERSION
    cached: bool = field(default=False, compare=False)

    @property
    def median_size(self) -> tuple[int, int]:
        return int(self.height["p50"]), int(self.width["p50"])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("cached")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["intensity"] = [ChannelStats(**c) for c in data["intensity"]]
        values["classes"] = [ClassFingerprint(**{**c, "intensity": [ChannelStats(**i) for i in c["intensity"]]})
                             for c in data["classes"]]
        return cls(**values)

    def summary(self) -> list[str]:
        """A few lines for `data check`: sizes, intensities, and each class's share and structure scale."""
        h, w = self.median_size
        kind = {1: "grey", 3: "RGB"}.get(self.channels, f"{self.channels}-channel")
        lines = [f"fingerprint ({self.images_measured} training images, {self.seconds:.1f} s"
                 f"{', cached' if self.cached else ''}): median {w}x{h} (W x H), {kind} {self.bit_depth}-bit; "
                 "intensity p0.5/p50/p99.5 " + ", ".join(
                     f"{c.p(0.5):.0f}/{c.p(50):.0f}/{c.p(99.5):.0f}" for c in self.intensity)]
        width = max(len(c.name) for c in self.classes)
        for c in self.classes:
            if not c.share:
                lines.append(f"  {c.name:<{width}}  absent from the training labels")
                continue
            lines.append(f"  {c.name:<{width}} {c.share:6.1%} of pixels, in {c.image_share:4.0%} of images; "
                         f"thickness p10/p50/p90 {_fmt3(c.thickness, ('p10', 'p50', 'p90'))} px; objects "
                         f"{c.objects_per_image:g}/image, median area {c.object_area.get('p50', 0):.0f} px, "
                         "diameter p10/p50/p90 "
                         f"{_fmt3(c.object_diameter, ('p10', 'p50', 'p90'))} px; rows at {c.vertical_position:.2f}")
        return lines

    def format(self) -> str:
        """The whole fingerprint as text (`data fingerprint`)."""
        lines = [f"dataset {self.root}", f"digest {self.digest} (fingerprint v{self.version})", *self.summary(),
                 f"  image height {_fmt_pct(self.height)}", f"  image width  {_fmt_pct(self.width)}",
                 f"  ignored pixels {self.ignored_share:.2%}; labels in {self.label_mode} mode"]
        for i, stats in enumerate(self.intensity):
            lines.append(f"  channel {i}: mean {stats.mean:.1f} std {stats.std:.1f}  {_fmt_pct(stats.percentiles)}")
        for c in self.classes:
            lines.append(f"  class {c.name}:")
            lines.append(f"    thickness px   {_fmt_pct(c.thickness)}")
            lines.append(f"    object area px {_fmt_pct(c.object_area)}")
            lines.append(f"    diameter px    {_fmt_pct(c.object_diameter)}")
            for i, stats in enumerate(c.intensity):
                if stats.pixels:
                    lines.append(f"    channel {i}: mean {stats.mean:.1f} std {stats.std:.1f}  "
                                 f"{_fmt_pct(stats.percentiles)}")
        return "\n".join(lines)


def _fmt3(pct: dict[str, float], keys: Sequence[str]) -> str:
    return "/".join(f"{pct[k]:.0f}" if k in pct else "-" for k in keys)


def _fmt_pct(pct: dict[str, float]) -> str:
    return "  ".join(f"{k} {pct[k]:.4g}" for k in map(_key, PERCENTILES) if k in pct)


@dataclass
class _ImageMeasure:
    """What one image contributes."""

    size: tuple[int, int]
    bit_depth: int
    joint: np.ndarray  # channels x (classes + 1) x 256: value histogram per channel and class (last: ignored)
    ridges: dict[int, np.ndarray]  # class -> thickness samples
    areas: dict[int, np.ndarray]  # class -> component areas
    rows: dict[int, float]  # class -> sum of row positions (0..1) of its pixels


def _measure(sample: Sample, meta: DatasetMeta, index: int) -> _ImageMeasure:
    stored = files.image_values(files.read_bytes(sample.image), sample.image)
    image = files.to_channels(files.to_8bit(stored.values, meta.image_range, sample.image), meta.in_channels,
                              sample.image)
    label = files.read_label(sample.label, meta)
    n = meta.num_classes
    classes = np.where(label == IGNORE, n, np.minimum(label, n)).astype(np.int64)
    joint = np.stack([np.bincount(classes.ravel() * 256 + image[:, :, c].ravel(), minlength=(n + 1) * 256)
                      .reshape(n + 1, 256) for c in range(image.shape[2])])
    rng = np.random.default_rng([index, FINGERPRINT_VERSION])
    ridges, areas, rows = {}, {}, {}
    row_pos = (np.arange(label.shape[0]) + 0.5) / label.shape[0]
    for c in np.flatnonzero(joint[0, :n].sum(axis=1)):
        mask = (label == c).astype(np.uint8)
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        ridge = dist[(dist > 0) & (dist >= cv2.dilate(dist, np.ones((3, 3), np.uint8)))]
        thickness = np.maximum(2 * ridge - 1, 1)
        # a ridge point of thickness t stands for about t pixels across the structure: drawn with that weight, the
        # samples' plain percentiles are pixel-weighted ones
        ridges[int(c)] = rng.choice(thickness, RIDGE_SAMPLES, p=thickness / thickness.sum())
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        areas[int(c)] = stats[1:count, cv2.CC_STAT_AREA].astype(np.float64)
        rows[int(c)] = float((mask.sum(axis=1) * row_pos).sum())
    return _ImageMeasure((label.shape[0], label.shape[1]), stored.bits, joint, ridges, areas,
                         rows)


def _measured_samples(samples: Sequence[Sample]) -> list[Sample]:
    labelled = [s for s in samples if s.label is not None]
    if len(labelled) <= MAX_IMAGES:
        return labelled
    picks = np.unique(np.linspace(0, len(labelled) - 1, MAX_IMAGES).astype(int))
    return [labelled[i] for i in picks]


def _aggregate(measures: list[_ImageMeasure], meta: DatasetMeta, total_images: int, root: str, digest: str,
               seconds: float) -> Fingerprint:
    n = meta.num_classes
    joint = sum(m.joint for m in measures)
    class_pixels = joint[0].sum(axis=1)
    labelled = float(class_pixels[:n].sum())
    if not labelled:
        raise DataError(f"{root}: every training label pixel is ignored ({meta.ignore_index} or beyond the "
                        f"{n} classes); check label_mode, classes and ignore_index in dataset.yaml")
    classes = []
    for c, name in enumerate(meta.classes):
        holding = [m for m in measures if c in m.areas]
        areas = np.concatenate([m.areas[c] for m in holding]) if holding else np.zeros(0)
        classes.append(ClassFingerprint(
            name=name, share=float(class_pixels[c] / labelled) if labelled else 0.0,
            image_share=len(holding) / len(measures),
            thickness=_percentiles(np.concatenate([m.ridges[c] for m in holding]) if holding else np.zeros(0)),
            object_area=_percentiles(areas),
            object_diameter=_weighted_percentiles(np.sqrt(4 * areas / math.pi), areas),
            objects_per_image=float(np.median([len(m.areas[c]) for m in holding])) if holding else 0.0,
            vertical_position=(sum(m.rows[c] for m in holding) / class_pixels[c]) if class_pixels[c] else 0.5,
            intensity=[_histogram_stats(joint[ch, c]) for ch in range(joint.shape[0])]))
    sizes = np.array([m.size for m in measures], np.float64)
    return Fingerprint(
        root=root, digest=digest, images=total_images, images_measured=len(measures),
        height=_percentiles(sizes[:, 0]), width=_percentiles(sizes[:, 1]), channels=meta.in_channels,
        bit_depth=max(m.bit_depth for m in measures), intensity=[_histogram_stats(h.sum(axis=0)) for h in joint],
        classes=classes, ignored_share=float(class_pixels[n] / class_pixels.sum()) if class_pixels.sum() else 0.0,
        label_mode=meta.label_mode, seconds=seconds)


def content_digest(samples: Sequence[Sample], meta: DatasetMeta) -> str:
    """A digest of the split's file contents (images and labels, by name) and of what the labels mean."""
    settings = {k: v for k, v in meta.to_dict().items() if k not in ("root", "inferred", "layout")}

    def digest(sample: Sample) -> bytes:
        h = hashlib.blake2b(sample.name.encode(), digest_size=16)
        for path in (sample.image, sample.label):
            h.update(files.read_bytes(path) if path else b"")
        return h.digest()

    outer = hashlib.blake2b(json.dumps([FINGERPRINT_VERSION, settings], sort_keys=True).encode(), digest_size=16)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for part in pool.map(digest, sorted(samples, key=lambda s: s.name)):
            outer.update(part)
    return outer.hexdigest()


def fingerprint(samples: Sequence[Sample], meta: DatasetMeta, *, cache: bool = True) -> Fingerprint:
    """The training split's fingerprint, read from the cache when the same files were fingerprinted before."""
    start = time.perf_counter()
    digest = content_digest(samples, meta)
    path = os.path.join(cache_dir(), "fingerprints", f"{digest}.json")
    if cache and os.path.isfile(path):
        with open(path) as f:
            found = Fingerprint.from_dict(json.load(f))
        found.cached = True
        found.root = meta.root
        return found
    chosen = _measured_samples(samples)
    if not chosen:
        raise DataError(f"{meta.root}: the training split has no labelled images to fingerprint")
    with ThreadPoolExecutor(min(READ_THREADS, os.cpu_count() or 1)) as pool:
        measures = list(pool.map(_measure, chosen, [meta] * len(chosen), range(len(chosen))))
    result = _aggregate(measures, meta, len(samples), meta.root, digest, time.perf_counter() - start)
    if cache:
        files.write_atomically(path, json.dumps(result.to_dict(), indent=1).encode())
    return result
