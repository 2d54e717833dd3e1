"""Folders as users bring them (issue 23) train and predict end to end: one epoch, then masks of each input's size.
The folder kinds themselves are tested in tests/segdata/test_data_formats.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from launch import main
from segengine import checkpoint

SIZE = (40, 48)  # H x W: not a multiple of the input size, so predictions are mapped back


def _blobs(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(0, 255, (SIZE[0] // 8 + 2, SIZE[1] // 8 + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize(SIZE[::-1], Image.BICUBIC)).clip(0, 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path, **kwargs)


def jpeg_masks(root: Path, i: int, image: np.ndarray, mask: np.ndarray) -> Path:
    _save(root / "images" / f"cju{i}.jpg", np.repeat(image[:, :, None], 3, axis=2), quality=95)
    _save(root / "masks" / f"cju{i}.jpg", (mask * 255).astype(np.uint8), quality=70)
    return root / "images"


def instance_tiffs(root: Path, i: int, image: np.ndarray, mask: np.ndarray) -> Path:
    _save(root / "imgs" / f"t{i:03d}.tif", (33000 + image.astype(np.uint16) * 15).astype(np.uint16))
    _save(root / "gt" / f"man_seg{i:03d}.tif", np.where(mask, 400 + i, 0).astype(np.uint16))
    return root / "imgs"


def four_channel_split_folders(root: Path, i: int, image: np.ndarray, mask: np.ndarray) -> Path:
    split = "train" if i < 6 else "val"
    _save(root / split / "images" / f"{i}.tif", np.stack([image, 255 - image, image, image // 2]))
    _save(root / split / "masks" / f"{i}_mask.png", (mask * 255).astype(np.uint8))
    return root / "val" / "images"


def drive_gif_masks(root: Path, i: int, image: np.ndarray, mask: np.ndarray) -> Path:
    _save(root / "images" / f"{21 + i}_training.tif", np.repeat(image[:, :, None], 3, axis=2))
    path = root / "1st_manual" / f"{21 + i}_manual1.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8)).convert("P").save(path)
    (root / "dataset.yaml").write_text("labels: 1st_manual\n")
    return root / "images"


def colour_labels(root: Path, i: int, image: np.ndarray, mask: np.ndarray) -> Path:
    _save(root / "Images" / f"{i}.png", np.repeat(image[:, :, None], 3, axis=2))
    colours = np.asarray([[128, 128, 128], [128, 64, 128]], np.uint8)
    _save(root / "Labels" / f"{i}.png", colours[mask.astype(int)])
    (root / "dataset.yaml").write_text("palette: {sky: [128, 128, 128], road: [128, 64, 128]}\n")
    return root / "Images"


def _train_one_epoch(make, tmp_path: Path) -> Path:
    """Write 8 pairs with `make`, train a mini UNet one epoch on them into runs/r; the folder of inputs to predict."""
    rng = np.random.default_rng(0)
    for i in range(8):
        image = _blobs(rng)
        inputs = make(tmp_path / "data", i, image, image > 140)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"encoder": "mini", "data": str(tmp_path / "data"), "input_size": [32, 32],
                                      "batch_size": 4, "epochs": 1, "workers": 0, "val_fraction": 0.25}))
    assert main(["train", "--config", str(config), "--storage", str(tmp_path / "runs"), "--name", "r"]) == 0
    return inputs


@pytest.mark.parametrize("make", [jpeg_masks, instance_tiffs, four_channel_split_folders, drive_gif_masks,
                                  colour_labels],
                         ids=lambda f: f.__name__)
def test_a_users_folder_trains_one_epoch_and_predicts_masks_of_its_images_size(make, tmp_path, capsys):
    inputs = _train_one_epoch(make, tmp_path)
    run = tmp_path / "runs" / "r"
    manifest = checkpoint.read_manifest(str(next(run.glob("checkpoint_epoch_*"))))
    assert manifest.num_classes == 2
    assert main(["predict", str(run), str(inputs), "--out", str(tmp_path / "out")]) == 0
    written = sorted((tmp_path / "out").glob("*_mask.png"))
    assert len(written) == len(list(inputs.iterdir())) > 0
    for path in written:
        mask = np.asarray(Image.open(path))
        assert mask.shape == SIZE and set(np.unique(mask)) <= {0, 1}
    capsys.readouterr()


def test_predict_refuses_an_input_with_another_channel_count_in_one_line(tmp_path, capsys):
    inputs = _train_one_epoch(four_channel_split_folders, tmp_path)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(rgb)
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "runs" / "r"), str(rgb), str(next(inputs.iterdir())),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "rgb.png" in err and "3 channel(s), but the model takes 4" in err
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 1
    assert "Traceback" not in err
