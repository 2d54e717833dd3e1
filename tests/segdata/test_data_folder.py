"""Dataset folders: layouts, dataset.yaml, flags, inference and splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from segdata_helpers import blob_image, write_png

import segdata
from segdata import IGNORE, DataError, DatasetMeta


def test_unknown_yaml_key_is_refused_naming_it_and_the_allowed_keys(make_dataset):
    root = make_dataset(yaml="classes: [a, b]\nlabel_mod: index\n")
    with pytest.raises(DataError, match="label_mod") as error:
        segdata.open_dataset(str(root))
    assert "dataset.yaml" in str(error.value) and "label_mode" in str(error.value)
    assert error.value.user_error


@pytest.mark.parametrize(("yaml", "key"), [
    ("label_mode: indexed\n", "label_mode"),
    ("threshold: 70000\n", "threshold"),
    ("colors: [[0, 0]]\n", "colors"),
    ("classes: [a, b]\nnum_classes: 3\n", "num_classes"),
    ("threshold: '127'\n", "threshold: expected an integer label value from 0 to 65534, got '127'"),
    ("target_below: 1\n", "target_below: expected true or false"),
])
def test_bad_yaml_values_name_the_key(make_dataset, yaml, key):
    with pytest.raises(DataError, match=key):
        segdata.open_dataset(str(make_dataset(yaml=yaml)))


def test_binary_0_255_labels_are_inferred_as_threshold_mode_with_a_warning(make_dataset):
    root = make_dataset(label_values=(0, 255), splits={"train": ["a", "b", "c", "d"], "val": ["e", "f"]})
    with pytest.warns(UserWarning, match="target_below: false"):
        folder = segdata.open_dataset(str(root))
    meta = folder.meta
    assert (meta.label_mode, meta.threshold, meta.target_below, meta.num_classes) == ("threshold", 127, True, 2)
    assert meta.inferred and "threshold" in meta.inferred[0]
    sample = folder.samples("train")[0]
    raw = np.asarray(Image.open(sample.label))
    assert np.array_equal(segdata.read_label(sample.label, meta), (raw == 0).astype(np.uint8))


def test_index_labels_get_their_class_count_from_the_largest_value(make_dataset):
    root = make_dataset(label_values=(0, 3, 1, 255), splits={"train": ["a", "b", "c"], "val": ["d", "e", "f"]})
    with pytest.warns(UserWarning, match="4 classes"):
        meta = segdata.open_dataset(str(root)).meta
    assert meta.label_mode == "index" and meta.num_classes == 4 and meta.ignore_index == IGNORE


def test_flags_override_the_yaml_and_silence_inference(make_dataset, recwarn):
    root = make_dataset(label_values=(0, 1), splits={"train": ["a", "b", "c"], "val": ["d", "e", "f"]},
                        yaml="classes: [back, fore]\nlabel_mode: index\n")
    meta = segdata.open_dataset(str(root), num_classes=3, ignore_index=2).meta
    assert meta.classes == ["back", "fore", "class2"] and meta.ignore_index == 2
    meta = segdata.open_dataset(str(root), label_mode="threshold", threshold=0, target_below=False).meta
    assert (meta.label_mode, meta.threshold, meta.target_below) == ("threshold", 0, False)
    assert not recwarn.list


def test_voc_layout_with_jpeg_images_and_palette_labels(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        rgb = np.repeat(blob_image(rng, (20, 30))[:, :, None], 3, axis=2)
        (tmp_path / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(rgb).save(tmp_path / "JPEGImages" / f"2007_{i}.jpg", quality=95)
        indices = (rgb[:, :, 0] > 127).astype(np.uint8) * 2
        indices[0] = 255  # the VOC border
        palette = Image.frombytes("P", (30, 20), indices.tobytes())
        palette.putpalette(sum(segdata.DatasetMeta("x", ["a"] * 3).colors, ()) + (224, 224, 192) * 253)
        (tmp_path / "SegmentationClass").mkdir(exist_ok=True)
        palette.save(tmp_path / "SegmentationClass" / f"2007_{i}.png")
    with pytest.warns(UserWarning, match="3 classes"):
        folder = segdata.open_dataset(str(tmp_path))
    assert folder.meta.layout == "voc" and folder.meta.in_channels == 3
    train, val = folder.samples("train"), folder.samples("val")
    assert len(train) == 4 and len(val) == 1 and train[0].image.endswith(".jpg")
    label = segdata.read_label(train[0].label, folder.meta)
    assert set(np.unique(label)) == {0, 2, IGNORE}
    assert segdata.check_dataset(folder).ok


def test_split_without_split_files_is_deterministic_and_seeded(make_dataset, recwarn):
    root = str(make_dataset(names=[f"n{i}" for i in range(20)]))
    first = segdata.open_dataset(root, val_fraction=0.25)
    again = segdata.open_dataset(root, val_fraction=0.25)
    other = segdata.open_dataset(root, val_fraction=0.25, split_seed=1)
    names = lambda folder, split: [s.name for s in folder.samples(split)]  # noqa: E731
    assert len(names(first, "val")) == 5 and len(names(first, "train")) == 15
    assert names(first, "val") == names(again, "val") != names(other, "val")
    assert not set(names(first, "val")) & set(names(first, "train"))
    assert any("name hash" in str(w.message) for w in recwarn.list)


def test_a_lone_split_file_decides_the_other_split(make_dataset):
    names = [f"n{i}" for i in range(10)]
    only_val = make_dataset(names, splits={"val": ["n1", "n2"], "test": ["n9"]}, root="only_val",
                            yaml="label_mode: threshold\n")
    with pytest.warns(UserWarning, match="train is every image not in val.txt"):
        folder = segdata.open_dataset(str(only_val))
    assert [s.name for s in folder.samples("train")] == ["n0", *names[3:9]]
    only_train = make_dataset(names, splits={"train": names[:5]}, root="only_train",
                              yaml="label_mode: threshold\n")
    with pytest.warns(UserWarning, match="val is 50% of train.txt"):
        folder = segdata.open_dataset(str(only_train), val_fraction=0.5)
    train, val = ({s.name for s in folder.samples(split)} for split in ("train", "val"))
    assert len(val) == 2 and train | val == set(names[:5]) and not train & val


def test_splits_can_be_a_file_and_unknown_splits_name_the_known_ones(make_dataset, tmp_path):
    root = make_dataset(splits={"train": ["a", "b"], "val": ["c"]}, yaml="classes: [bg, fg]\nlabel_mode: threshold\n")
    folder = segdata.open_dataset(str(root))
    listing = tmp_path / "mine.txt"
    listing.write_text("# chosen\nd.png\ne extra tokens\n\n")
    assert [s.name for s in folder.samples(str(listing))] == ["d", "e"]
    with pytest.raises(DataError, match="train, val"):
        folder.samples("holdout")


def test_read_image_converts_palette_and_keeps_grey(tmp_path):
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    write_png(tmp_path / "grey.png", grey)
    palette = Image.frombytes("P", (16, 12), (grey % 3).tobytes())
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(segdata.read_image(str(tmp_path / "grey.png"))[:, :, 0], grey)
    rgb = segdata.read_image(str(tmp_path / "palette.png"))
    assert rgb.shape == (12, 16, 3) and np.array_equal(rgb[grey % 3 == 1], np.tile([0, 255, 0], (64, 1)))


def test_meta_round_trips_through_json():
    meta = DatasetMeta("s3://bucket/set", ["bg", "cell"], label_mode="threshold", in_channels=1,
                       inferred=["x"], layout="voc")
    again = DatasetMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta and again.colors[1] == (128, 0, 0)


def test_missing_folder_and_missing_layout_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        segdata.open_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="JPEGImages"):
        segdata.open_dataset(str(tmp_path))


def test_uri_join_keeps_the_query_at_the_end():
    from segdata.files import join, normalize_root

    root = "s3://bucket/data/?endpoint_override=http://127.0.0.1:8333&scheme=http"
    assert normalize_root(root) == "s3://bucket/data?endpoint_override=http://127.0.0.1:8333&scheme=http"
    assert join(normalize_root(root), "Images", "0.png") == \
        "s3://bucket/data/Images/0.png?endpoint_override=http://127.0.0.1:8333&scheme=http"


def test_0_255_masks_outside_the_tutorial_layout_mark_the_object_white(tmp_path):
    """White-on-black masks outside the tutorial layout: the white value is the object (the usual mask; ISBI's dark
    membranes are the tutorial layout's convention), said in a note that names the line to flip it."""
    root = tmp_path / "masks"
    for i in range(3):
        write_png(root / "JPEGImages" / f"{i}.png", np.full((16, 16, 3), 90, np.uint8))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = 255
        write_png(root / "SegmentationClass" / f"{i}.png", mask)
    with pytest.warns(UserWarning, match="the brighter value 255 is class 1 .* set target_below: true"):
        folder = segdata.open_dataset(str(root))
    label = segdata.read_label(folder.samples("train")[0].label, folder.meta)
    assert label[5, 5] == 1 and label[0, 0] == 0  # the white square is class 1
    (root / "dataset.yaml").write_text("target_below: true\n")
    folder = segdata.open_dataset(str(root))
    label = segdata.read_label(folder.samples("train")[0].label, folder.meta)
    assert label[5, 5] == 0 and label[0, 0] == 1
