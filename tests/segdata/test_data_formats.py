"""Folders and masks as people have them (issue 23): common layouts found without a file, names paired across
prefixes and suffixes, lossy JPEG masks, palette GIFs, 16-bit instance labels and colour-coded labels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image
from segdata_helpers import blob_image, write_png

import segdata
from segdata.label_rules import LabelValues, infer_labels
from segdata.meta import DataError


def _jpeg(array: np.ndarray, quality: int = 75) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _pairs(n: int = 5, size=(32, 40), seed: int = 0):
    """(image, binary object mask) pairs whose mask follows the image's bright blobs."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        image = blob_image(rng, size)
        yield image, image > 150


def test_jpeg_masks_in_images_and_masks_folders_are_two_classes_never_255(tmp_path):
    """Kvasir-SEG style: images/ + masks/, RGB JPEG masks (compression spreads 0/255 over 0..255), no dataset.yaml."""
    root = tmp_path / "kvasir"
    for i, (image, mask) in enumerate(_pairs()):
        write_png(root / "images" / f"cju{i}.png", np.repeat(image[:, :, None], 3, axis=2))
        (root / "masks").mkdir(parents=True, exist_ok=True)
        (root / "masks" / f"cju{i}.jpg").write_bytes(_jpeg(np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, 2)))
    assert len(np.unique(np.asarray(Image.open(root / "masks" / "cju0.jpg")))) > 2  # the noise is real
    with pytest.warns(UserWarning, match="lossy"):
        report = segdata.check_dataset(str(root))
    assert report.ok, report.format()
    meta = report.meta
    assert (meta.num_classes, meta.label_mode, meta.target_below) == (2, "threshold", False)
    assert "images/ + masks/" in report.format() and "lossy (JPEG) masks" in report.format()
    sample = segdata.open_dataset(str(root)).samples("train")[0]
    truth = next(m for i, (_, m) in enumerate(_pairs()) if f"cju{i}" == sample.name)
    assert (segdata.read_label(sample.label, meta) == truth).mean() > 0.97


def test_values_that_are_neither_levels_nor_class_ids_are_refused_naming_the_fix(tmp_path):
    """Grey-level pictures saved as labels: 200 classes must never be invented."""
    root = tmp_path / "odd"
    rng = np.random.default_rng(1)
    for i in range(3):
        write_png(root / "images" / f"{i}.png", blob_image(rng, (24, 24)))
        write_png(root / "labels" / f"{i}.png", blob_image(rng, (24, 24)))
    with pytest.raises(segdata.DataError) as err:
        segdata.check_dataset(str(root))
    message = str(err.value)
    assert "neither class ids nor two mask levels" in message and "label_mode: nonzero" in message
    assert "\n" not in message


def test_instance_tiffs_with_prefixed_names_pair_and_read_as_objects(tmp_path):
    """Cell Tracking Challenge style: t13.tif images, man_seg13.tif 16-bit instance labels (one id per nucleus)."""
    root = tmp_path / "ctc"
    for i, (image, mask) in enumerate(_pairs(4)):
        write_png(root / "images" / f"t{i:03d}.tif", (33000 + image.astype(np.uint16) * 15).astype(np.uint16))
        ids = np.zeros(mask.shape, np.uint16)
        ids[mask] = 300 + i  # every object its own id, beyond 8 bits
        ids[:4, :4] = 7
        write_png(root / "gt" / f"man_seg{i:03d}.tif", ids)
    with pytest.warns(UserWarning) as caught:
        folder = segdata.open_dataset(str(root))
    said = " ".join(str(w.message) for w in caught)
    assert "instance ids" in said and "t000.tif -> man_seg000.tif" in said
    assert folder.meta.label_mode == "nonzero" and folder.meta.classes == ["background", "foreground"]
    sample = folder.samples("train")[0]
    label = segdata.read_label(sample.label, folder.meta)
    assert set(np.unique(label)) == {0, 1} and label[0, 0] == 1
    assert segdata.check_dataset(folder).ok


def test_drive_names_and_palette_gif_masks_pair_by_stripped_suffixes(tmp_path):
    """DRIVE style: 21_training.tif with 21_manual1.gif (a palette GIF), any-case folder names."""
    root = tmp_path / "drive"
    for i, (image, mask) in enumerate(_pairs(4), start=21):
        write_png(root / "Images" / f"{i}_training.tif", np.repeat(image[:, :, None], 3, axis=2))
        (root / "Masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray((mask * 255).astype(np.uint8)).convert("P").save(root / "Masks" / f"{i}_manual1.gif")
    (root / "Masks" / "99_manual1.gif").write_bytes((root / "Masks" / "21_manual1.gif").read_bytes())
    with pytest.warns(UserWarning, match="affixes"):
        report = segdata.check_dataset(str(root), splits=("train", "val"))
    assert report.ok and report.meta.label_mode == "threshold"
    assert sum(report.counts.values()) == 4
    assert any("99_manual1.gif" in note and "match no image" in note for note in report.notes), report.notes


def test_a_pair_rule_pairs_what_the_affixes_cannot(tmp_path):
    root = tmp_path / "rule"
    for i, (image, mask) in enumerate(_pairs(3)):
        write_png(root / "images" / f"scan-{i}-raw.png", image)
        write_png(root / "masks" / f"annotated_{i}_v2.png", (mask * 255).astype(np.uint8))
    (root / "dataset.yaml").write_text("pair: {images: 'scan-(\\d+)', labels: 'annotated_(\\d+)'}\n"
                                       "target_below: false\n")
    folder = segdata.open_dataset(str(root))
    assert all(s.label and s.label.endswith(f"annotated_{s.name.split('-')[1]}_v2.png")
               for s in folder.samples("train") + folder.samples("val"))
    (root / "dataset.yaml").write_text("pair: 'scan-(\\d+'\n")
    with pytest.raises(segdata.DataError, match="pair: not a valid regular expression"):
        segdata.open_dataset(str(root))


def test_split_subfolders_are_the_splits(tmp_path):
    """train/ val/ test/, each with images/ + masks/ (test without masks); names may repeat across splits."""
    root = tmp_path / "splits"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i, (image, mask) in enumerate(_pairs(n, seed=n)):
            write_png(root / split / "images" / f"{i}.png", image)
            if split != "test":
                write_png(root / split / "masks" / f"{i}.png", (mask * 255).astype(np.uint8))
    folder = segdata.open_dataset(str(root))
    assert [s.name for s in folder.samples("val")] == ["val/0", "val/1"]
    assert len(folder.samples("train")) == 4 and all(s.label is None for s in folder.samples("test"))
    assert folder.samples("val")[0].image == str(root / "val" / "images" / "0.png")
    report = segdata.check_dataset(folder)
    assert report.ok and report.counts == {"train": 4, "val": 2}, report.format()


def test_colour_coded_labels_need_a_palette_and_read_through_it(tmp_path):
    """CamVid's colour files: without palette: the error lists the colours found; with it, unmapped colours are
    problems naming the file."""
    root = tmp_path / "colour"
    colours = {"sky": (128, 128, 128), "road": (128, 64, 128), "car": (64, 0, 128)}
    rng = np.random.default_rng(2)
    for i in range(3):
        ids = rng.integers(0, 3, (4, 4)).repeat(6, 0).repeat(6, 1)
        write_png(root / "images" / f"{i}.png", blob_image(rng, (24, 24)))
        write_png(root / "labels" / f"{i}.png", np.asarray(list(colours.values()), np.uint8)[ids])
    with pytest.raises(segdata.DataError, match=r"colour-coded labels \(3 colours: .*\[128, 64, 128\].*palette:"):
        segdata.open_dataset(str(root))
    (root / "dataset.yaml").write_text("palette: {sky: [128, 128, 128], road: [128, 64, 128]}\n")
    report = segdata.check_dataset(str(root))
    assert not report.ok and "#400080" in report.problems[0] and "palette:" in report.problems[0]
    (root / "dataset.yaml").write_text("palette:\n  sky: [128, 128, 128]\n  road: [128, 64, 128]\n"
                                       "  car: [[64, 0, 128], [1, 2, 3]]\n")
    folder = segdata.open_dataset(str(root))
    assert folder.meta.classes == ["sky", "road", "car"] and segdata.check_dataset(folder).ok
    assert folder.meta.colors[:3] == list(colours.values())  # predictions are drawn in the label colours
    label = segdata.read_label(folder.samples("train")[0].label, folder.meta)
    assert set(np.unique(label)) <= {0, 1, 2}


@pytest.mark.parametrize("counts, bits, expected", [
    ({0: 900, 255: 100}, 8, ("threshold", 127)),
    ({0: 880, 3: 10, 128: 5, 252: 90, 255: 15}, 8, ("threshold", 126)),   # JPEG noise around 0 and 252
    ({0: 500, 1: 300, 2: 150, 3: 50, 255: 10}, 8, ("index", 4)),          # class ids, 255 ignored
    ({0: 600, 3: 400}, 8, ("index", 4)),                                   # small ids, not mask levels
    ({0: 900, 65535: 100}, 16, ("threshold", 32767)),                      # a 16-bit mask
    ({0: 900, 5: 30, 9: 40, 12: 30}, 16, ("nonzero", None)),               # 16-bit instance ids
])
def test_the_label_rules_as_pure_functions(counts, bits, expected):
    found = LabelValues(counts, 1, 1, bits, {}, "x.png")
    rule = infer_labels(found, label_mode=None, classes=None, ignore_index=None, target_below=None,
                        darker_is_object=False, where="labels")
    assert rule.label_mode == expected[0]
    detail = rule.threshold if rule.label_mode == "threshold" else len(rule.classes) if rule.classes else None
    assert detail == expected[1], rule.note


def test_sixteen_bit_narrow_range_images_read_as_their_8_bit_rescaling(tmp_path):
    """Values 33000-36800 in a 16-bit TIFF: mapped from the training images' own percentiles, never from 0..65535,
    so they read as the 8-bit rescaling would (to within a grey level or two)."""
    root = tmp_path / "deep"
    originals = {}
    for i, (image, mask) in enumerate(_pairs(6)):
        originals[f"{i}"] = image
        write_png(root / "images" / f"{i}.tif", (33000 + image.astype(np.uint16) * 15).astype(np.uint16))
        write_png(root / "masks" / f"{i}.png", (mask * 255).astype(np.uint8))
    with pytest.warns(UserWarning, match="16-bit images: values 33.*map onto 0..255"):
        folder = segdata.open_dataset(str(root))
    meta = folder.meta
    assert meta.image_bits == 16 and meta.in_channels == 1
    low, high = meta.image_range[0]
    assert 33000 <= low < 33300 and 36500 < high <= 36825
    for sample in folder.samples("val"):
        read = segdata.read_image(sample.image, meta.image_range)[:, :, 0].astype(float)
        stretched = (originals[sample.name].astype(float) * 15 + 33000 - low) * 255 / (high - low)
        assert np.abs(read - np.clip(stretched, 0, 255)).max() <= 1
    assert "16-bit" in segdata.check_dataset(folder).format()
    with pytest.raises(segdata.DataError, match="16-bit image, but the model's images were 8-bit"):
        segdata.read_image(folder.samples("val")[0].image)


def test_channel_first_four_channel_tiffs_rgba_pngs_and_rotated_photos(tmp_path):
    """RGB-NIR tiles saved C x H x W: 4 channels reach the model, said by data check; PNG alpha is dropped; a
    photo's EXIF orientation is applied."""
    import tifffile

    root = tmp_path / "tiles"
    (root / "images").mkdir(parents=True)
    for i, (image, mask) in enumerate(_pairs(4)):
        stack = np.stack([image, 255 - image, image // 2, np.full_like(image, 7)])  # C x H x W
        tifffile.imwrite(root / "images" / f"{i}.tif", stack)
        write_png(root / "labels" / f"{i}.png", (mask * 255).astype(np.uint8))
    with pytest.warns(UserWarning, match="channel-first TIFF"):
        report = segdata.check_dataset(str(root))
    assert report.ok and report.meta.in_channels == 4 and "4 channels" in report.format()
    image = segdata.read_image(str(root / "images" / "0.tif"))
    assert image.shape == (32, 40, 4) and np.array_equal(image[:, :, 3], np.full((32, 40), 7))
    rgba = tmp_path / "a.png"
    Image.fromarray(np.dstack([np.full((20, 20, 3), 9, np.uint8), np.zeros((20, 20), np.uint8)])).save(rgba)
    stored = segdata.files.image_values(rgba.read_bytes(), str(rgba))
    assert stored.values.shape == (20, 20, 3) and "alpha" in stored.notes[0]
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo, exif=exif)
    stored = segdata.files.image_values(photo.read_bytes(), str(photo))
    assert stored.values.shape == (30, 20, 3) and "EXIF" in stored.notes[0]
    with pytest.raises(segdata.DataError, match="4 channel.*the model takes 3"):
        segdata.files.to_channels(image, 3, "x.tif")


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_image_size_reads_the_header_only_and_refuses_what_should_not_be_decoded():
    """The gate for bytes from outside (`serve`): sizes from headers, stacks and other formats refused."""
    from segdata.files import ImageTooLarge, image_from_bytes, image_size

    grey = (np.arange(48 * 80) % 251).astype(np.uint8).reshape(48, 80)
    assert image_size(_encoded(grey, "PNG"), "x") == (80, 48)
    assert image_size(_encoded(np.dstack([grey] * 3), "JPEG"), "x") == (80, 48)
    stack, tiff = io.BytesIO(), io.BytesIO()
    tifffile.imwrite(tiff, grey, compression="zlib")
    assert image_size(tiff.getvalue(), "x") == (80, 48)
    # a compressed TIFF from outside goes through Pillow's bounded decoder, with the same pixels
    assert np.array_equal(image_from_bytes(tiff.getvalue(), "x", untrusted=True)[:, :, 0], grey)
    tifffile.imwrite(stack, np.zeros((40, 8, 8), np.uint8))  # 40 pages
    with pytest.raises(DataError, match="a stack of more than 16 pages"):
        image_size(stack.getvalue(), "x")
    with pytest.raises(DataError, match="not an image in a format this accepts"):
        image_size(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "x")  # EPS: Ghostscript, never
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)  # 1.6 Gpx declared, none given
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + \
        struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    with pytest.raises(ImageTooLarge):
        image_size(bomb, "x")
