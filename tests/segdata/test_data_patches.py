"""Patch sampling at native resolution: shapes, padding, seeding, resumption, class-aware crops, and the
microscopy augmentations (rot90, flips, elastic) keeping image and label aligned."""

from __future__ import annotations

import numpy as np
import pytest
from segdata_helpers import blob_image

import segdata
from segdata import IGNORE, PatchTransform
from segdata.dataset import PatchDataset

GREY = ([127.5], [127.5])


def aligned_pair(seed: int, size=(96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """A grey image of blobs and the label 'pixel > 127' drawn from it."""
    image = blob_image(np.random.default_rng(seed), size)
    return image[:, :, None], (image > 127).astype(np.uint8)


def grey_pixels(x: np.ndarray) -> np.ndarray:
    return x[0] * 127.5 + 127.5


@pytest.mark.parametrize("crop", [(48, 64), (64, 48)])
@pytest.mark.parametrize("elastic", [0.0, 1.0])
def test_crops_keep_native_resolution_and_image_label_alignment(crop, elastic):
    """rot90 (including on non-square crops), both flips and the elastic deformation move image and label
    together: the label drawn from the image still matches the transformed image, far better than the same
    label shifted by 2 px does."""
    transform = PatchTransform(crop, *GREY, num_classes=2, flip=0.5, vflip=0.5, rot90=True, elastic=elastic,
                               elastic_std=6.0)
    agreements, shifted = [], []
    for seed in range(16):
        image, label = aligned_pair(seed)
        x, y = transform(image, label, np.random.default_rng(seed))
        assert x.shape == (1, *crop) and x.dtype == np.float32 and y.shape == crop and y.dtype == np.int64
        assert set(np.unique(y)) <= {0, 1}
        drawn = (grey_pixels(x) > 127).astype(np.int64)
        agreements.append((drawn == y).mean())
        shifted.append((np.roll(drawn, 2, axis=1) == y).mean())
    if elastic:  # bilinear image vs nearest label differ only on the blobs' edges
        assert min(agreements) > 0.95 and max(shifted) < 0.9, (agreements, shifted)
    else:  # crops, flips and rotations move whole pixels
        assert min(agreements) == 1.0


def test_no_augmentation_is_an_exact_crop():
    image, label = aligned_pair(0)
    transform = PatchTransform((32, 40), *GREY, num_classes=2, flip=0.0)
    x, y = transform(image, label, np.random.default_rng(3))
    found = [(t, s) for t in range(96 - 32 + 1) for s in range(128 - 40 + 1)
             if np.array_equal(label[t:t + 32, s:s + 40], y)
             and np.allclose(grey_pixels(x), image[t:t + 32, s:s + 40, 0], atol=1e-3)]
    assert found, "the crop is not a window of the original image at native resolution"


def test_images_smaller_than_the_crop_are_padded_with_ignore():
    image, label = aligned_pair(1, size=(40, 30))
    x, y = PatchTransform((64, 64), *GREY, num_classes=2, flip=0.0)(image, label, np.random.default_rng(0))
    assert x.shape == (1, 64, 64)
    assert (y == IGNORE).sum() == 64 * 64 - 40 * 30
    assert np.allclose(grey_pixels(x)[y == IGNORE], 128.0, atol=1e-3)


def test_class_aware_crops_find_a_rare_class():
    """A class covering 0.1 % of the image: with class_aware 1 half the crops are centred on it (one of the two
    classes present, drawn uniformly), without it only chance finds it."""
    image = np.full((200, 200, 1), 100, np.uint8)
    label = np.zeros((200, 200), np.uint8)
    label[150:156, 20:26] = 2  # 36 of 40,000 pixels
    rates = {}
    for p in (0.0, 1.0):
        transform = PatchTransform((32, 32), *GREY, num_classes=3, flip=0.0, class_aware=p)
        hits = [2 in transform(image, label, np.random.default_rng(i))[1] for i in range(60)]
        rates[p] = np.mean(hits)
    assert rates[1.0] >= 0.35 and rates[0.0] < 0.1, rates


def _dataset(make_dataset, length: int, seed: int = 0) -> PatchDataset:
    root = make_dataset(size=(64, 80))
    folder = segdata.open_dataset(str(root))
    transform = PatchTransform((32, 32), *GREY, num_classes=2, rot90=True, elastic=0.5)
    return PatchDataset(folder.samples("train"), folder.meta, transform, length=length, seed=seed)


def test_epoch_length_is_decoupled_from_the_set_and_crops_are_seeded(make_dataset):
    ds = _dataset(make_dataset, length=50)
    n = len(ds.samples)
    assert len(ds) == 50 and n < 50
    ds.set_epoch(3)
    counts = np.bincount([ds.image_index(i) for i in range(n * 4)], minlength=n)
    assert counts.tolist() == [4] * n  # every image equally often
    first = [ds[i] for i in (0, 1, 7)]
    again = _dataset(make_dataset, length=50)  # a resumed run: same seed and epoch -> the same crops
    again.set_epoch(3)
    for (x, y), i in zip(first, (0, 1, 7), strict=True):
        x2, y2 = again[i]
        assert np.array_equal(x.numpy(), x2.numpy()) and np.array_equal(y.numpy(), y2.numpy())
    # different indices (what different DDP ranks draw) and different epochs give different crops
    assert not np.array_equal(first[0][0].numpy(), first[1][0].numpy())
    again.set_epoch(4)
    assert not np.array_equal(first[0][0].numpy(), again[0][0].numpy())


def test_patch_dataset_refuses_unlabelled_images(make_dataset):
    root = make_dataset()
    folder = segdata.open_dataset(str(root))
    unlabelled = [segdata.Sample(s.name, s.image, None) for s in folder.samples("train")]
    with pytest.raises(segdata.DataError, match="patch training needs labels"):
        PatchDataset(unlabelled, folder.meta, lambda *a: a, length=4)
