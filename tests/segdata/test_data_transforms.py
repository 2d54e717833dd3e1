"""Augmentation and letterbox invariants, and reproducible per-sample randomness."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from segdata_helpers import blob_image

import segdata
from segdata import IGNORE, EvalTransform, TrainTransform

GREY = ([127.5], [127.5])  # the tutorial's x / 127.5 - 1


def aligned_pair(seed: int, size=(96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """A grey image and the label 'pixel > 127' derived from it."""
    image = blob_image(np.random.default_rng(seed), size)
    return image[:, :, None], (image > 127).astype(np.uint8)


def pixels(x: np.ndarray) -> np.ndarray:
    return x * 127.5 + 127.5


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_image_and_label_stay_aligned_and_padding_is_ignored(flip):
    transform = TrainTransform((80, 80), *GREY, flip=flip, val=1.0)  # no brightness jitter: 127 stays 127
    agreements, padded = [], 0
    for seed in range(12):
        image, label = aligned_pair(seed)
        x, y = transform(image, label, np.random.default_rng(seed))
        assert x.shape == (1, 80, 80) and x.dtype == np.float32 and y.shape == (80, 80) and y.dtype == np.int64
        assert set(np.unique(y)) <= {0, 1, IGNORE}
        grey = pixels(x[0])
        pad = y == IGNORE
        padded += pad.sum()
        assert np.allclose(grey[pad], 128, atol=1e-3)  # grey canvas, never labelled as a class
        confident = ~pad & (np.abs(grey - 127.5) > 12)  # interpolation may blur values right at the edges
        agreements.append(np.mean((grey[confident] > 127.5) == (y[confident] == 1)))
    assert padded > 0 and min(agreements) > 0.99


def test_label_values_stay_in_the_allowed_set_for_index_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 2, 3, IGNORE], np.uint8), size=(50, 70))
    transform = TrainTransform((64, 64), [120, 110, 100], [60, 60, 60])
    for seed in range(20):
        x, y = transform(image, label, np.random.default_rng(seed))
        assert x.shape == (3, 64, 64) and np.isfinite(x).all()
        assert set(np.unique(y)) <= {0, 1, 2, 3, IGNORE}


def test_tutorial_padding_bug_is_not_copied_for_threshold_labels(isbi_root):
    """The tutorial pads labels with 0, which its 'pixel <= 127.5 is membrane' step makes membrane."""
    folder = segdata.open_dataset(str(isbi_root))
    sample = folder.samples("train")[0]
    image, label = segdata.read_image(sample.image), segdata.read_label(sample.label, folder.meta)
    transform = TrainTransform((256, 256), *GREY, scale=(0.25, 0.4))  # always smaller than the canvas
    x, y = transform(image, label, np.random.default_rng(3))
    assert (y == IGNORE).mean() > 0.5
    assert 0.1 < (y == 1).sum() / (y != IGNORE).sum() < 0.35  # membrane share stays ISBI-like


def test_random_crop_takes_a_window_of_large_images():
    image, label = aligned_pair(1, size=(300, 400))
    transform = TrainTransform((64, 64), *GREY, crop=True, scale=(1.0, 1.0), jitter=0.0, flip=0.0, val=1.0)
    x, y = transform(image, label, np.random.default_rng(0))
    assert (y != IGNORE).all()  # a 64 x 64 window, scaled to exactly the canvas
    window = np.rint(pixels(x[0])).astype(np.float32)
    distances = cv2.matchTemplate(image[:, :, 0].astype(np.float32), window, cv2.TM_SQDIFF)
    row, col = np.unravel_index(distances.argmin(), distances.shape)
    assert distances.min() / window.size < 0.5
    assert np.array_equal(y, label[row:row + 64, col:col + 64])


def test_letterbox_pads_with_ignore_and_inverts_to_the_original_size():
    image, label = aligned_pair(2, size=(60, 100))
    x, y, box = EvalTransform((64, 64), *GREY)(image, label)
    assert x.shape == (1, 64, 64) and (box.top, box.height, box.left, box.width) == (13, 38, 0, 64)
    assert (y[:13] == IGNORE).all() and (y[51:] == IGNORE).all() and (y[13:51] != IGNORE).all()
    assert np.allclose(pixels(x[0, :13]), 128)
    assert box.invert(y).shape == (60, 100)
    scores = np.random.default_rng(0).random((5, 64, 64), dtype=np.float32)
    back = box.invert(scores)
    assert back.shape == (5, 60, 100) and back.dtype == np.float32
    assert np.abs(box.invert(np.stack([y == 0, y == 1]).astype(np.float32)).argmax(0) - label).mean() < 0.1


def test_letterbox_is_exact_when_the_input_size_is_the_image_size():
    image, label = aligned_pair(3, size=(48, 64))
    x, y, box = EvalTransform((48, 64), *GREY)(image, label)
    assert np.array_equal(np.rint(pixels(x[0])).astype(np.uint8), image[:, :, 0])
    assert np.array_equal(box.invert(y), label)
    logits = np.random.default_rng(1).standard_normal((3, 48, 64)).astype(np.float32)
    assert np.array_equal(box.invert(logits), logits)


def test_letterbox_recovers_a_mask_exactly_at_an_integer_zoom():
    _, label = aligned_pair(4, size=(30, 40))
    _, y, box = EvalTransform((60, 80), *GREY)(np.zeros((30, 40, 1), np.uint8), label)
    assert np.array_equal(box.invert(y), label)


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    root = segdata.synth.generate(str(tmp_path_factory.mktemp("synth") / "set"), n_train=6, n_val=2, size=64)
    return segdata.open_dataset(root)


def test_randomness_comes_from_seed_epoch_and_index(synth_folder):
    samples, meta = synth_folder.samples("train"), synth_folder.meta
    transform = TrainTransform((48, 48), *GREY)
    dataset = segdata.SegmentationDataset(samples, meta, transform, seed=7)
    rerun = segdata.SegmentationDataset(samples, meta, transform, seed=7)
    first = [dataset[i][0] for i in range(len(samples))]
    assert all(torch.equal(a, rerun[i][0]) for i, a in enumerate(first))
    dataset.set_epoch(1)
    assert not any(torch.equal(a, dataset[i][0]) for i, a in enumerate(first))
    twins = segdata.SegmentationDataset([samples[0]] * 2, meta, transform, seed=7)
    assert not torch.equal(twins[0][0], twins[1][0])  # same picture, different index: different stream


def test_dataloader_workers_give_the_same_batches_as_the_main_process(synth_folder):
    dataset = segdata.SegmentationDataset(synth_folder.samples("train"), synth_folder.meta,
                                          TrainTransform((32, 32), *GREY), seed=3)
    dataset = pickle.loads(pickle.dumps(dataset))
    dataset.set_epoch(2)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers)
        return [torch.cat([x.flatten(), y.flatten().float()]) for x, y in loader]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2), strict=True))


def test_eval_dataset_is_deterministic_and_labels_unlabelled_images_ignored(synth_folder):
    samples = [segdata.Sample(s.name, s.image, None) for s in synth_folder.samples("val")]
    dataset = segdata.SegmentationDataset(samples, synth_folder.meta, EvalTransform((64, 64), *GREY),
                                          train=False)
    x, y = dataset[0]
    assert x.shape == (1, 64, 64) and (y == IGNORE).all()
    assert torch.equal(x, dataset[0][0])
