"""The built-in synthetic set, resolve_data and the ISBI TIFF converter."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segdata
from segdata import DataError
from segdata.isbi import convert
from segdata.resolve import resolve_data
from segdata.synth import generate

REPO = Path(__file__).resolve().parents[2]


def file_bytes(root: str) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): Path(d, f).read_bytes()
            for d, _, names in os.walk(root) for f in names}


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path):
    first = generate(str(tmp_path / "a"), seed=5, n_train=4, n_val=2, size=64)
    again = generate(str(tmp_path / "b"), seed=5, n_train=4, n_val=2, size=64)
    other = generate(str(tmp_path / "c"), seed=6, n_train=4, n_val=2, size=64)
    assert file_bytes(first) == file_bytes(again)
    assert file_bytes(first)["Images/000.png"] != file_bytes(other)["Images/000.png"]
    with pytest.raises(DataError, match="not an empty folder"):
        generate(first)


def test_default_synth_set_checks_clean_and_looks_like_isbi(tmp_path, recwarn):
    root = generate(str(tmp_path / "set"))
    report = segdata.check_dataset(root)
    assert report.ok, report.format()
    assert report.counts == {"train": 48, "val": 12} and dict(report.image_sizes) == {(128, 128): 60}
    assert report.meta.label_mode == "threshold" and report.meta.in_channels == 1
    assert report.class_shares["membrane"] == pytest.approx(0.22, abs=0.03)
    assert not recwarn.list  # its dataset.yaml says everything
    image = segdata.read_image(os.path.join(root, "Images", "000.png"))[:, :, 0].astype(float)
    label = segdata.read_label(os.path.join(root, "Labels", "000.png"), report.meta)
    assert image[label == 1].mean() + 40 < image[label == 0].mean()  # membranes are visibly darker


def test_resolve_data_generates_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_ZOO_CACHE", str(tmp_path / "cache"))
    spec = "synth:seed=2,n_train=3,n_val=1,size=48"
    with ThreadPoolExecutor(4) as pool:  # concurrent callers on one node must not clash
        paths = list(pool.map(resolve_data, [spec] * 4))
    assert len(set(paths)) == 1 and os.listdir(tmp_path / "cache") == [os.path.basename(paths[0])]
    assert os.path.basename(paths[0]).startswith("synth-")
    stamp = os.stat(os.path.join(paths[0], "dataset.yaml")).st_mtime_ns
    assert resolve_data(spec) == paths[0]
    assert os.stat(os.path.join(paths[0], "dataset.yaml")).st_mtime_ns == stamp
    assert resolve_data("synth:seed=3,n_train=3,n_val=1,size=48") != paths[0]
    assert resolve_data(None) == resolve_data("synth") == resolve_data("synth:seed=0")


def test_resolve_data_paths_and_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert resolve_data("here") == str(tmp_path / "here")
    assert resolve_data("s3://bucket/sets/isbi") == "s3://bucket/sets/isbi"
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        resolve_data("missing")
    with pytest.raises(DataError, match="n_train"):
        resolve_data("synth:trains=3")


def test_cli_data_synth_writes_the_set(tmp_path):
    out = tmp_path / "mine"
    result = subprocess.run([sys.executable, "launch.py", "data", "synth", str(out), "--seed", "1",
                             "--n-train", "3", "--n-val", "2", "--size", "64"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == "003\n004\n"


def write_stack(path: Path, frames: list[np.ndarray]) -> None:
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], compression="tiff_deflate")


def test_isbi_tiff_stacks_convert_to_the_tutorial_layout(tmp_path):
    rng = np.random.default_rng(0)
    volume = [rng.integers(0, 256, (40, 48), dtype=np.uint8) for _ in range(6)]
    labels = [np.where(v > 60, 255, 0).astype(np.uint8) for v in volume]
    write_stack(tmp_path / "train-volume.tif", volume)
    write_stack(tmp_path / "train-labels.tif", labels)
    out = convert(str(tmp_path / "train-volume.tif"), str(tmp_path / "train-labels.tif"), str(tmp_path / "isbi"),
                  val=2)
    folder = segdata.open_dataset(out)
    assert [s.name for s in folder.samples("train")] == ["0", "1", "2", "3"]
    assert [s.name for s in folder.samples("val")] == ["4", "5"]
    assert folder.meta.label_mode == "threshold" and folder.meta.classes == ["background", "membrane"]
    sample = folder.samples("val")[1]
    assert np.array_equal(segdata.read_image(sample.image)[:, :, 0], volume[5])
    assert np.array_equal(segdata.read_label(sample.label, folder.meta), (labels[5] == 0).astype(np.uint8))
    assert segdata.check_dataset(folder).ok
    with pytest.raises(DataError, match="sections"):
        convert(str(tmp_path / "train-volume.tif"), str(tmp_path / "train-labels.tif"), str(tmp_path / "x"),
                val=6)
