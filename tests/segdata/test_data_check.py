"""The dataset check: one report naming every bad file; refusing or skipping bad pairs; class frequencies."""

from __future__ import annotations

import os

import numpy as np
import pytest
from segdata_helpers import write_png

import segdata
from segdata import DataError

THREE_CLASSES = "classes: [bg, a, b]\nlabel_mode: index\n"


def snapshot(root) -> dict[str, float]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture
def broken(make_dataset):
    """Eight good pairs, then one of every kind of damage."""
    names = [f"p{i}" for i in range(8)] + ["no_label", "corrupt", "mismatch", "stray", "copy"]
    root = make_dataset(names, label_values=(0, 1, 2), yaml=THREE_CLASSES, splits={
        "train": ["p0", "p1", "p2", "p3", "p4", "p1", "no_label", "corrupt", "mismatch", "stray", "ghost", "copy"],
        "val": ["p5", "p6", "p7", "p4"],
    })
    os.remove(root / "Labels" / "no_label.png")
    (root / "Images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    write_png(root / "Labels" / "mismatch.png", np.zeros((10, 10), np.uint8))
    write_png(root / "Labels" / "stray.png", np.full((24, 32), 7, np.uint8))
    (root / "Images" / "copy.png").write_bytes((root / "Images" / "p2.png").read_bytes())
    return root


def test_one_report_names_every_bad_file(broken):
    before = snapshot(broken)
    report = segdata.check_dataset(str(broken))
    text = report.format()
    assert not report.ok
    assert report.bad_names == {"p1", "p4", "no_label", "corrupt", "mismatch", "stray", "ghost", "copy"}
    expectations = {
        "p1": "listed 2 times", "p4": "more than one split (train, val)", "no_label": "Labels/no_label.png",
        "corrupt": "Images/corrupt.png: unreadable", "mismatch": "is 32x24 but label", "stray": "values 7",
        "ghost": "no image", "copy": "identical image files: Images/p2.png, Images/copy.png",
    }
    for name, phrase in expectations.items():
        assert any(name in p and phrase in p for p in report.problems), (name, text)
    assert len(report.problems) == len(expectations)
    assert f"{len(expectations)} problem(s)" in text and "--skip-bad" in text
    assert snapshot(broken) == before  # nothing is ever written into the dataset folder


def test_training_refuses_a_broken_split_unless_told_to_skip(broken):
    folder = segdata.open_dataset(str(broken))
    with pytest.raises(DataError, match="corrupt") as error:
        segdata.validated_samples(folder, "train", skip_bad=False)
    assert "stray" in str(error.value) and error.value.user_error
    with pytest.warns(UserWarning, match="skipping 7 bad pair") as caught:
        kept = segdata.validated_samples(folder, "train", skip_bad=True)
    assert [s.name for s in kept] == ["p0", "p2", "p3", "p4"]
    assert "ghost" in str(caught[0].message)
    assert [s.name for s in segdata.validated_samples(folder, "val", skip_bad=False)] == ["p5", "p6", "p7", "p4"]


def test_an_unknown_split_is_a_problem_in_the_report(make_dataset):
    root = make_dataset(yaml=THREE_CLASSES, splits={"train": ["a"], "val": ["b"]})
    report = segdata.check_dataset(str(root), splits=("train", "holdout"))
    assert report.problems == [next(p for p in report.problems if "holdout" in p)]


def test_class_frequencies_count_pixels_and_skip_ignored(tmp_path):
    for name, values in {"x": [0, 0, 1, 255], "y": [1, 1, 1, 2]}.items():
        write_png(tmp_path / "Images" / f"{name}.png", np.zeros((2, 2), np.uint8))
        write_png(tmp_path / "Labels" / f"{name}.png", np.array(values, np.uint8).reshape(2, 2))
    (tmp_path / "dataset.yaml").write_text(THREE_CLASSES)
    with pytest.warns(UserWarning, match="name hash"):
        folder = segdata.open_dataset(str(tmp_path))
    samples = folder.samples("train") + folder.samples("val")
    assert np.allclose(segdata.class_frequencies(samples, folder.meta), [2 / 7, 4 / 7, 1 / 7])
