"""The dataset fingerprint measures what planning rules read: structure thickness, object size, intensities,
orientation; it is cached by the files' content."""

import json
import time

import numpy as np
import pytest
from engine_helpers import write_shapes_dataset
from PIL import Image
from segdata_helpers import write_png

import segdata
from launch import main
from segdata.fingerprint import fingerprint


@pytest.fixture
def shapes(tmp_path):
    return write_shapes_dataset(tmp_path / "shapes", n_train=6, n_val=2, size=96, line_px=3, disc_radius=9)


def _fingerprint(root, cache=False):
    folder = segdata.open_dataset(str(root))
    return fingerprint(folder.samples("train"), folder.meta, cache=cache)


def test_thickness_and_object_size_are_measured_within_a_pixel(shapes):
    fp = _fingerprint(shapes)
    line, disc = fp.classes[1], fp.classes[2]
    assert abs(line.thickness["p50"] - 3) <= 1, line.thickness  # 3 px lines
    assert abs(disc.thickness["p50"] - 19) <= 2, disc.thickness  # radius 9: 19 px across
    assert 16 <= disc.object_diameter["p50"] <= 22, disc.object_diameter  # overlapping discs make a few larger
    assert line.object_diameter["p50"] > 4 * line.thickness["p75"]  # lines are long and thin
    assert fp.images == 6 and fp.channels == 1 and fp.bit_depth == 8 and fp.median_size == (96, 96)
    assert abs(sum(c.share for c in fp.classes) - 1) < 1e-6


def test_intensity_statistics_per_class_and_layout(shapes):
    fp = _fingerprint(shapes)
    means = [c.intensity[0].mean for c in fp.classes]
    assert means == pytest.approx([60, 200, 130], abs=3)  # the generator's grey levels, noise std 12
    assert fp.intensity[0].p(0.5) < 60 < 200 < fp.intensity[0].p(99.5)
    assert all(0.35 < c.vertical_position < 0.65 for c in fp.classes)  # nothing sits at the top or bottom


def test_upright_scenes_show_in_the_vertical_positions(tmp_path):
    root = tmp_path / "scene"
    for i in range(3):
        label = np.zeros((40, 40), np.uint8)
        label[:12] = 1  # "sky" on top
        write_png(root / "Images" / f"{i}.png", (label * 200 + 20).astype(np.uint8))
        write_png(root / "Labels" / f"{i}.png", label)
    (root / "dataset.yaml").write_text("classes: [ground, sky]\nlabel_mode: index\n")
    fp = _fingerprint(root)
    assert fp.classes[1].vertical_position == pytest.approx(0.15, abs=0.01)


def test_second_run_reads_the_cache_and_a_changed_file_misses_it(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_ZOO_CACHE", str(tmp_path / "cache"))  # this test's own cache
    first = _fingerprint(shapes, cache=True)
    start = time.perf_counter()
    again = _fingerprint(shapes, cache=True)
    assert again.cached and not first.cached and again.digest == first.digest
    assert time.perf_counter() - start < 2
    label = np.asarray(Image.open(shapes / "Labels" / "s0.png")).copy()
    label[:10, :10] = 2
    Image.fromarray(label).save(shapes / "Labels" / "s0.png")
    changed = _fingerprint(shapes, cache=True)
    assert not changed.cached and changed.digest != first.digest


def test_cli_prints_the_summary_and_the_full_fingerprint(shapes, capsys):
    assert main(["data", "check", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found" in out and "fingerprint (6 training images" in out
    assert "line" in out and "thickness p10/p50/p90 3/3/" in out
    assert main(["data", "fingerprint", str(shapes), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["classes"][2]["name"] == "disc" and data["version"] >= 1
