"""torch Dataset glue: reads pairs, applies the label mode and a transform, with reproducible randomness."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segdata.files import read_image, read_label, to_channels
from segdata.folder import Sample
from segdata.meta import IGNORE, DataError, DatasetMeta


class SegmentationDataset(Dataset):
    """(C x H x W float32, H x W int64) pairs.

    Training randomness comes from `np.random.default_rng([seed, epoch, index])`: a sample's augmentation
    depends only on those three numbers, so DDP workers (different indices) never repeat each other, DataLoader
    worker processes need no seeding, and a rerun with the same seed gives identical batches. Call `set_epoch`
    before each epoch; with `persistent_workers=True` the workers keep their own copy, so leave that off.
    """

    def __init__(self, samples: Sequence[Sample], meta: DatasetMeta, transform: Callable, *, seed: int = 0,
                 train: bool = True) -> None:
        self.samples = list(samples)
        self.meta = meta
        self.transform = transform
        self.seed = int(seed)
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = to_channels(read_image(sample.image, self.meta.image_range), self.meta.in_channels, sample.image)
        label = None if sample.label is None else read_label(sample.label, self.meta)
        if label is not None and label.shape != image.shape[:2]:  # a resize would hide it as misalignment
            raise DataError(f"{sample.label} is {label.shape[1]}x{label.shape[0]} but {sample.image} is "
                            f"{image.shape[1]}x{image.shape[0]}; run `launch.py data check`")
        if self.train:
            if label is None:
                raise DataError(f"{sample.image}: training needs a label for {sample.name!r}")
            x, y = self.transform(image, label, np.random.default_rng([self.seed, self.epoch, index]))
        else:
            x, y, _ = self.transform(image, label)
            if y is None:
                y = np.full(x.shape[1:], IGNORE, np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)


class PatchDataset(Dataset):
    """`length` random crops per epoch from a list of labelled images (see `segdata.PatchTransform`).

    Index i of epoch e uses image `order(e)[i mod n]` (every image equally often, in a fresh order each epoch)
    and the generator `[seed, epoch, i]` for the crop and its augmentation: each DDP rank draws its own crops
    (different indices), and a resumed run redraws exactly the crops of the epochs it repeats. Decoded pairs are
    kept in memory up to `cache_bytes` per process, since a small set is read hundreds of times per epoch.
    """

    def __init__(self, samples: Sequence[Sample], meta: DatasetMeta, transform: Callable, *, length: int,
                 seed: int = 0, cache_bytes: int = 2 << 30) -> None:
        missing = [s.name for s in samples if s.label is None]
        if missing:
            raise DataError(f"patch training needs labels; {len(missing)} image(s) have none (e.g. {missing[0]})")
        if not samples:
            raise DataError("patch training needs at least one labelled image")
        self.samples = list(samples)
        self.meta = meta
        self.transform = transform
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def image_index(self, index: int) -> int:
        n = len(self.samples)
        order = np.random.default_rng([self.seed, self.epoch, index // n, 7919]).permutation(n)
        return int(order[index % n])

    def pair(self, image_index: int) -> tuple[np.ndarray, np.ndarray]:
        if image_index in self._cache:
            return self._cache[image_index]
        sample = self.samples[image_index]
        image = to_channels(read_image(sample.image, self.meta.image_range), self.meta.in_channels, sample.image)
        label = read_label(sample.label, self.meta)
        if label.shape != image.shape[:2]:
            raise DataError(f"{sample.label} is {label.shape[1]}x{label.shape[0]} but {sample.image} is "
                            f"{image.shape[1]}x{image.shape[0]}; run `launch.py data check`")
        size = image.nbytes + label.nbytes
        if self._cached + size <= self.cache_bytes:
            self._cache[image_index] = (image, label)
            self._cached += size
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.pair(self.image_index(index))
        x, y = self.transform(image, label, np.random.default_rng([self.seed, self.epoch, index]))
        return torch.from_numpy(x), torch.from_numpy(y)
