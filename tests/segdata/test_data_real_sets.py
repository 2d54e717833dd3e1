"""The real shared sets: ISBI 2012 (binary membranes) and CamVid (11 classes + void)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segdata
from segdata import IGNORE
from segdata.files import read_raw_label

REPO = Path(__file__).resolve().parents[2]


def test_isbi_checks_clean_with_membrane_about_22_percent(isbi_root):
    started = time.perf_counter()
    report = segdata.check_dataset(str(isbi_root))
    assert time.perf_counter() - started < 10
    assert report.ok, report.format()
    assert report.counts == {"train": 25, "val": 5}
    assert dict(report.image_sizes) == {(512, 512): 30}
    assert report.meta.label_mode == "threshold" and report.meta.in_channels == 1
    assert report.class_shares["membrane"] == pytest.approx(0.22, abs=0.01)
    assert report.ignored_share == 0


def test_isbi_labels_map_membrane_to_class_1(isbi_root):
    folder = segdata.open_dataset(str(isbi_root))
    sample = folder.samples("train")[0]
    raw = np.asarray(Image.open(sample.label))
    label = segdata.read_label(sample.label, folder.meta)
    assert label.dtype == np.uint8 and label.shape == raw.shape
    assert np.array_equal(label == 1, raw == 0)


def test_isbi_test_split_is_unlabelled(isbi_root):
    folder = segdata.open_dataset(str(isbi_root))
    assert folder.splits() == ["train", "val", "test"]
    test = folder.samples("test")
    assert len(test) == 30 and all(s.label is None and "/Test/" in s.image for s in test)
    assert segdata.check_dataset(folder, splits=("test",)).ok


def test_camvid_has_11_classes_and_void_ignored(camvid_root):
    started = time.perf_counter()
    report = segdata.check_dataset(str(camvid_root))
    assert time.perf_counter() - started < 10
    assert report.ok, report.format()
    meta = report.meta
    assert meta.num_classes == 11 and meta.in_channels == 3 and meta.ignore_index == 11
    assert report.counts == {"train": 70, "val": 20}
    assert report.ignored_share == pytest.approx(0.034, abs=0.005)
    assert report.class_shares["road"] == pytest.approx(0.309 / (1 - 0.034), abs=0.01)
    sample = segdata.open_dataset(str(camvid_root)).samples("train")[0]
    raw = read_raw_label(sample.label)
    label = segdata.read_label(sample.label, meta)
    assert (raw == 11).any()
    assert np.array_equal(label == IGNORE, raw == 11)
    assert set(np.unique(label)) <= set(range(11)) | {IGNORE}
    assert segdata.read_image(sample.image).shape == (360, 480, 3)


def test_a_dataset_opens_through_a_file_uri(isbi_root):
    folder = segdata.open_dataset(isbi_root.as_uri())
    sample = folder.samples("val")[0]
    assert sample.image.startswith("file://") and folder.meta.root == isbi_root.as_uri()
    assert segdata.read_image(sample.image).shape == (512, 512, 1)


def test_cli_data_check_passes_on_isbi(isbi_root):
    result = subprocess.run([sys.executable, "launch.py", "data", "check", "../shared/data/isbi2012"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "membrane" in result.stdout and "OK: no problems found" in result.stdout
