"""Prediction previews: chosen to cover the classes, drawn with the dataset's colours, written at validations."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from segengine.previews import choose, error_colour, panel_row, sheet


def test_previews_cover_every_class_first_and_are_reproducible():
    presence = np.zeros((30, 4), bool)
    presence[:, 0] = True
    presence[7, 3] = True  # one image holds the rare class
    presence[20:, 2] = True
    picked = choose(presence, seed=0, most=3)
    assert len(picked) == 3 and 7 in picked and any(i >= 20 for i in picked)
    assert choose(presence, seed=0, most=3) == picked
    assert choose(presence, seed=0, most=50) == list(range(30))  # fewer images than asked: all of them


def test_the_error_panel_marks_exactly_the_wrong_pixels_in_a_colour_no_class_has():
    palette = np.asarray([[0, 0, 0], [128, 0, 0], [255, 0, 255]], np.uint8)  # a class is magenta: not the errors
    colour = error_colour(palette)
    assert colour != (255, 0, 255) and min(np.abs(palette.astype(int) - colour).sum(axis=1)) > 100
    image = np.full((40, 40, 1), 200, np.uint8)
    label = np.zeros((40, 40), np.uint8)
    label[10:20, 10:20] = 1
    label[30:, 30:] = 255  # ignored
    prediction = label.copy()
    prediction[30:, 30:] = 0
    prediction[0:4, 0:4] = 2  # the only error
    row = np.asarray(panel_row(image, label, prediction, palette, "x"))
    errors = row[16:, -160:]  # the last tile, below the title (40 px scaled to 160: 4x)
    wrong = (errors == colour).all(axis=2)
    assert wrong[:16, :16].all() and wrong.sum() == 16 * 16
    assert (errors[120:, 120:] == 128).all()  # ignored pixels grey, not errors
    picture = sheet([row_image := panel_row(image, label, prediction, palette, "a"), row_image],
                    ["background", "cell", "nucleus"], palette)
    assert picture.shape[1] == row_image.width and picture.shape[0] > 2 * row_image.height


def test_a_run_writes_previews_at_validations_cheaply(trained_run):
    """The shared 2-worker run: rank 0's previews of the latest and the best validation, and their cost."""
    run = Path(trained_run["run_dir"])
    for name in ("latest.png", "best.png"):
        picture = Image.open(run / "previews" / name)
        picture.load()
        assert picture.mode == "RGB" and picture.width >= 4 * 160
    timings = json.loads((run / "timings.json").read_text())["epochs"]
    validated = [e for e in timings if e["val_s"] > 0]
    assert validated and all(e["preview_s"] > 0 for e in validated)
    assert all(e["preview_s"] == 0 for e in timings if e["val_s"] == 0)
