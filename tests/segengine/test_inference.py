"""evaluate / predict / export on the shared trained checkpoint (a mini UNet on 64 px synthetic membranes)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import TINY_SYNTH
from PIL import Image

import segdata
from launch import main
from segengine import checkpoint, inference
from segengine.manifest import Manifest
from segengine.windows import MIRRORS


@pytest.fixture(scope="module")
def ckpt(trained_run) -> str:
    return trained_run["best_checkpoint"]


@pytest.fixture(scope="module")
def synth_root() -> Path:
    return Path(segdata.resolve_data(TINY_SYNTH))


def _val_pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = segdata.open_dataset(str(root))
    return [(segdata.read_image(s.image)[:, :, 0], segdata.read_label(s.label, folder.meta))
            for s in folder.samples("val")]


def test_evaluate_writes_outputs_close_to_training(ckpt, trained_run, synth_root, tmp_path):
    result = inference.evaluate(ckpt, TINY_SYNTH, split="val", out=str(tmp_path), verbose=False, probs=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    kept = sorted((tmp_path / "probs").glob("*.npy"))  # --probs: the val probabilities, for later analysis
    assert len(kept) == 8 and np.load(kept[0]).shape == (2, 64, 64) and np.load(kept[0]).dtype == np.float16
    assert metrics["images"] == 8 and metrics["class_names"] == ["background", "membrane"]
    # same weights and split as the run's validation: only the resolution handling differs (64 px set, 64 input)
    assert metrics["miou"] == pytest.approx(trained_run["metrics"]["val_miou"], abs=0.03)
    for key in ("pixel_acc", "miou", "mdice", "f_score"):
        assert 0 < metrics[key] <= 1
    for key in ("iou", "dice", "precision", "recall"):
        assert set(metrics[key]) == {"background", "membrane"}
    with open(tmp_path / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == ["background", "membrane"]
    cm = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert cm.sum() == 8 * 64 * 64  # threshold labels: every pixel of the split counted once, at original size
    np.testing.assert_array_equal(cm, result.confusion)
    # membrane share of the labels is what the files say
    labels = np.concatenate([label.ravel() for _, label in _val_pairs(synth_root)])
    assert cm[1].sum() == int((labels == 1).sum())
    assert (tmp_path / "per_class_iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_on_ray_tasks_default_folder(ckpt, trained_run, ray_local, capsys):
    """launch.py wiring; --workers 2 sums the confusion matrices of two Ray Data actors; default out = eval-val."""
    code = main(["evaluate", ckpt, "--data", TINY_SYNTH, "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "mIoU" in out and "membrane" in out
    folder = Path(ckpt).parent / "eval-val"
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["images"] == 8
        assert metrics["miou"] == pytest.approx(trained_run["metrics"]["val_miou"], abs=0.03)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_predict_odd_sizes_tiles_and_bad_inputs(ckpt, synth_root, tmp_path, capsys):
    pairs = _val_pairs(synth_root)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, (image, _) in enumerate(pairs[:2]):  # odd sizes: letterboxed and mapped back
        Image.fromarray(image).resize((77, 53), Image.BILINEAR).save(inputs / f"odd{i}.png")
    # a 150 x 170 mosaic of validation images, larger than the 64 x 64 input: tiled at native resolution
    mosaic = np.block([[pairs[0][0], pairs[1][0], pairs[2][0]], [pairs[3][0], pairs[4][0], pairs[5][0]],
                       [pairs[6][0], pairs[7][0], pairs[0][0]]])[:150, :170]
    mosaic_label = np.block([[pairs[0][1], pairs[1][1], pairs[2][1]], [pairs[3][1], pairs[4][1], pairs[5][1]],
                             [pairs[6][1], pairs[7][1], pairs[0][1]]])[:150, :170]
    Image.fromarray(mosaic).save(inputs / "large.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    code = main(["predict", ckpt, str(inputs), str(tmp_path / "nothing-*.png"), "--out", str(out), "--sliding",
                 "--counts"])
    err = capsys.readouterr().err
    assert code == 1  # some inputs skipped, the others written
    assert "broken.png" in err and "unreadable" in err and "nothing-*.png" in err
    for stem, size in (("odd0", (77, 53)), ("odd1", (77, 53)), ("large", (170, 150))):
        for kind in ("mask", "color", "overlay", "cutout"):
            assert Image.open(out / f"{stem}_{kind}.png").size == size, (stem, kind)
        assert Image.open(out / f"{stem}_mask.png").mode == "L"
    assert not list(out.glob("broken*"))
    mask = np.array(Image.open(out / "large_mask.png"))
    assert set(np.unique(mask)) <= {0, 1}
    tiled_accuracy = float((mask == mosaic_label).mean())
    assert tiled_accuracy > 0.8, tiled_accuracy
    colour = np.array(Image.open(out / "large_color.png"))
    manifest = checkpoint.read_manifest(ckpt)
    np.testing.assert_array_equal(colour[mask == 1][0], manifest.colors[1])
    with open(out / "counts.csv") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["image"]).name for r in rows] == ["large.png", "odd0.png", "odd1.png"]
    large = rows[0]
    assert int(large["background_pixels"]) + int(large["membrane_pixels"]) == 150 * 170
    assert int(large["membrane_pixels"]) == int((mask == 1).sum())


def test_predict_on_ray_data_actors_matches_this_process(ckpt, synth_root, ray_local, tmp_path, capsys):
    """--workers 2: a pool of two Ray Data actors writes the same masks (and --probs probabilities) as one process;
    a corrupt input is listed as skipped (not fatal) and summary.json names the node that did the work."""
    inputs = _prediction_inputs(_val_pairs(synth_root), tmp_path / "in")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert main(["predict", ckpt, str(inputs), "--out", str(tmp_path / "here"), "--counts", "--probs"]) == 1
    assert main(["predict", ckpt, str(inputs), "--out", str(tmp_path / "ray"), "--counts", "--probs", "--workers",
                 "2", "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert "2 Ray Data actors" in err and "skipped" in err and "broken.png" in err
    for stem in ("odd0", "odd1", "large"):
        for kind in ("mask", "color", "overlay", "cutout"):
            np.testing.assert_array_equal(np.array(Image.open(tmp_path / "ray" / f"{stem}_{kind}.png")),
                                          np.array(Image.open(tmp_path / "here" / f"{stem}_{kind}.png")))
    assert (tmp_path / "ray" / "counts.csv").read_text() == (tmp_path / "here" / "counts.csv").read_text()
    for stem, size in (("odd0", (53, 77)), ("large", (100, 120))):  # --probs: float16 C x H x W, sums to 1
        probs = np.load(tmp_path / "ray" / f"{stem}_probs.npy")
        np.testing.assert_array_equal(probs, np.load(tmp_path / "here" / f"{stem}_probs.npy"))
        assert probs.dtype == np.float16 and probs.shape == (2, *size)
        assert np.abs(probs.astype(np.float32).sum(axis=0) - 1).max() < 2e-3
        mask = np.array(Image.open(tmp_path / "here" / f"{stem}_mask.png"))
        clear = np.abs(probs[1].astype(np.float32) - probs[0]) > 1e-2  # float16 may tie where the classes do
        np.testing.assert_array_equal(probs.argmax(axis=0)[clear], mask[clear])
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["images"] == 4 and summary["written"] == 3 and summary["workers"] == 2
    assert [Path(s["input"]).name for s in summary["skipped"]] == ["broken.png"]
    assert sum(summary["nodes"].values()) == 3 and summary["images_per_s"] > 0
    assert not list((tmp_path / "ray").glob("broken*"))


def test_tiled_prediction_of_one_window_is_one_pass(ckpt):
    """The predictor's windows (segengine.windows): an image exactly one window large equals one pass."""
    predictor = inference.Predictor.from_checkpoint(ckpt)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)
    probs = predictor.sliding_probabilities(image, 0.25)
    with torch.no_grad():
        mean, std = predictor.mean[0], predictor.std[0]
        x = torch.from_numpy(((image[:, :, 0].astype(np.float32) - mean) / std)[None, None])
        direct = torch.softmax(predictor.forward(x), 1)[0].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-6)


def test_tta_flip_overrides_the_recipe_in_both_modes_and_travels_with_the_manifest(ckpt, tmp_path, capsys):
    """`--tta flip` on a checkpoint that validated without flips: windows and letterboxed images are scored by
    the softmax averaged over the 4 flips, and the manifest (what the Ray Data actors of --workers rebuild the
    predictor from) says so too."""
    plain = inference.Predictor.from_checkpoint(ckpt)
    mirrored = inference.Predictor.from_checkpoint(ckpt, mirror=True)
    assert plain.inference.mirror is False and mirrored.inference.mirror is True
    assert inference.Predictor(mirrored.model, mirrored.manifest).inference.mirror is True
    image = np.random.default_rng(1).integers(0, 256, (64, 80, 1), dtype=np.uint8)
    a, b = plain.sliding_probabilities(image), mirrored.sliding_probabilities(image)
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-4
    # letterbox: the log of the mean of the four flipped passes' softmax, mapped back to the image's size
    x, _, box = mirrored.transform(mirrored.channels(image))
    batch = torch.from_numpy(x[None])
    with torch.no_grad():
        mean = sum(torch.softmax(mirrored.forward(batch.flip(f)), 1).flip(f) for f in MIRRORS) / 4
    expected = box.invert(torch.log(mean)[0].numpy())
    np.testing.assert_allclose(mirrored.letterbox_logits([image])[0], expected, atol=1e-4)
    assert np.abs(plain.letterbox_logits([image])[0] - expected).max() > 1e-3
    Image.fromarray(image[:, :, 0]).save(tmp_path / "in.png")
    assert main(["predict", ckpt, str(tmp_path / "in.png"), "--out", str(tmp_path / "out"), "--no-sliding",
                 "--tta", "flip"]) == 0
    written = np.array(Image.open(tmp_path / "out" / "in_mask.png"))
    np.testing.assert_array_equal(written, mirrored.predict_mask(image, sliding=False))
    with pytest.raises(SystemExit):
        main(["predict", ckpt, str(tmp_path / "in.png"), "--out", str(tmp_path / "o2"), "--tta", "rotate"])
    assert "--tta: invalid choice: 'rotate'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(ckpt, tmp_path, fmt, capsys):
    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    result = inference.export(ckpt, fmt, str(path))
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "tolerance" in printed
    assert [c["shape"] for c in result.checks] == [[2, 1, 64, 64], [1, 1, 68, 72]]
    assert all(c["max_abs_diff"] <= c["tolerance"] <= inference.EXPORT_TOLERANCE * 100 for c in result.checks)
    # and independently of export()'s own check: a third batch size and spatial size
    model, _ = checkpoint.build_model(ckpt)
    x = torch.randn(3, 1, 96, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert json.loads(meta["unet_zoo"])["class_names"] == ["background", "membrane"]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(path)).eval()(x).numpy()
    assert got.shape == (3, 2, 96, 40)
    assert np.abs(got - reference).max() <= inference.EXPORT_TOLERANCE


def _prediction_inputs(pairs, folder: Path) -> Path:
    """Two odd-sized images (letterboxed) and one larger than the input (sliding windows), as PNG files."""
    folder.mkdir()
    for i, (image, _) in enumerate(pairs[:2]):
        Image.fromarray(image).resize((77, 53), Image.BILINEAR).save(folder / f"odd{i}.png")
    Image.fromarray(np.block([[pairs[0][0], pairs[1][0]], [pairs[2][0], pairs[3][0]]])[:100, :120]).save(
        folder / "large.png")
    return folder


@pytest.mark.parametrize("sliding", ["--sliding", "--no-sliding"])
def test_predict_from_the_onnx_file_alone_matches_the_checkpoint(ckpt, synth_root, tmp_path, sliding, capsys):
    """`predict model.onnx`: no checkpoint, plugin or model code; masks equal the checkpoint's fp32 masks."""
    inputs = _prediction_inputs(_val_pairs(synth_root), tmp_path / "in")
    onnx_path = tmp_path / "deploy" / "model.onnx"
    inference.export(ckpt, "onnx", str(onnx_path), verbose=False)
    assert main(["predict", ckpt, str(inputs), "--out", str(tmp_path / "torch"), sliding, "--no-amp",
                 "--device", "cpu"]) == 0
    assert main(["predict", str(onnx_path), str(inputs), "--out", str(tmp_path / "onnx"), sliding,
                 "--batch-size", "3"]) == 0
    assert "onnxruntime CPUExecutionProvider, batch 3" in capsys.readouterr().err
    for stem in ("odd0", "odd1", "large"):
        expected = np.array(Image.open(tmp_path / "torch" / f"{stem}_mask.png"))
        got = np.array(Image.open(tmp_path / "onnx" / f"{stem}_mask.png"))
        assert got.shape == expected.shape and (got == expected).mean() == 1.0, stem


def test_evaluate_the_onnx_file_scores_like_the_checkpoint(ckpt, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    inference.export(ckpt, "onnx", str(onnx_path), verbose=False)
    torch_scores = inference.evaluate(ckpt, TINY_SYNTH, out=str(tmp_path / "a"), verbose=False, amp=False)
    onnx_scores = inference.evaluate(str(onnx_path), TINY_SYNTH, out=str(tmp_path / "b"), verbose=False)
    np.testing.assert_array_equal(onnx_scores.confusion, torch_scores.confusion)
    with pytest.raises(inference.InferenceError, match="--workers 2 ships the checkpoint"):
        inference.evaluate(str(onnx_path), TINY_SYNTH, workers=2, out=str(tmp_path / "c"), verbose=False)


def test_onnx_files_without_our_metadata_are_refused_in_one_line(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    (tmp_path / "text.onnx").write_text("not a model")
    (tmp_path / "in.png").write_bytes(b"")
    for name, message in (("other.onnx", "no 'unet_zoo' metadata"), ("text.onnx", "cannot read an ONNX model")):
        assert main(["predict", str(tmp_path / name), str(tmp_path / "in.png"), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_export_safetensors_rebuilds_with_zoo_from_its_manifest(ckpt, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    import zoo

    path = tmp_path / "weights" / "model.safetensors"
    assert main(["export", ckpt, "--format", "safetensors", "--out", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff vs PyTorch" in printed and "model.json" in printed
    manifest = json.loads((tmp_path / "weights" / "model.json").read_text())
    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["unet_zoo"]) == manifest
    model = zoo.create_model(manifest["encoder"], manifest["num_classes"], in_channels=manifest["in_channels"],
                             **manifest.get("model_kwargs", {}))
    model.load_state_dict(load_file(str(path)))
    reference, _ = checkpoint.build_model(ckpt)
    x = torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        np.testing.assert_array_equal(model.eval()(x).numpy(), reference(x).numpy())
    assert manifest["input_multiple"] == 4 and manifest["class_names"] == ["background", "membrane"]


def test_batch_size_device_and_precision_flags(ckpt, synth_root, tmp_path, capsys):
    """Batches of 1 and 8 give the same fp32 scores; an absent CUDA device and batch 0 are one-line errors."""
    images = [image[:, :, None] for image, _ in _val_pairs(synth_root)[:5]]
    images.append(np.random.default_rng(3).integers(0, 256, (90, 130, 1), dtype=np.uint8))
    one = inference.Predictor.from_checkpoint(ckpt, amp=False, batch_size=1)
    eight = inference.Predictor.from_checkpoint(ckpt, amp=False, batch_size=8, device="auto")
    assert eight.description.startswith("cuda" if torch.cuda.is_available() else "cpu, fp32, batch 8")
    for sliding in (False, True):
        pairs = zip(one.batch_scores(images, sliding=sliding), eight.batch_scores(images, sliding=sliding), strict=True)
        for a, b in pairs:
            np.testing.assert_allclose(a, b, atol=1e-4)
    (tmp_path / "in.png").write_bytes(b"")
    flags = [["--batch-size", "0"]] + ([] if torch.cuda.is_available() else [["--device", "cuda"]])
    for extra in flags:
        assert main(["predict", ckpt, str(tmp_path / "in.png"), "--out", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and extra[0] in err and len(err.splitlines()) == 1, err


def _copy(ckpt: str, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


def _rehash(folder: Path) -> None:
    manifest = json.loads((folder / checkpoint.MANIFEST_FILE).read_text())
    manifest["state_sha256"] = checkpoint._sha256(folder / checkpoint.STATE_FILE)
    (folder / checkpoint.MANIFEST_FILE).write_text(json.dumps(manifest))


class NotAllowed:
    """A pickled object weights_only loading must refuse."""


def test_corrupt_checkpoints_give_one_line_errors(ckpt, tmp_path, capsys):
    truncated = _copy(ckpt, tmp_path / "truncated")
    data = (truncated / checkpoint.STATE_FILE).read_bytes()
    (truncated / checkpoint.STATE_FILE).write_bytes(data[: len(data) // 3])
    garbage = _copy(ckpt, tmp_path / "garbage")
    (garbage / checkpoint.STATE_FILE).write_bytes(b"this is not a torch file" * 10)
    _rehash(garbage)
    unsafe = _copy(ckpt, tmp_path / "unsafe")
    torch.save({"model": NotAllowed()}, unsafe / checkpoint.STATE_FILE)
    _rehash(unsafe)
    bad_manifest = _copy(ckpt, tmp_path / "bad_manifest")
    (bad_manifest / checkpoint.MANIFEST_FILE).write_text("{not json")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(image)
    for folder, expected in ((truncated, "does not match its manifest"), (garbage, "cannot load state.pt"),
                             (unsafe, "holds pickled Python objects besides tensors and is refused"),
                             (bad_manifest, "corrupt manifest"),
                             (tmp_path / "missing", "not found")):
        code = main(["predict", str(folder), str(image), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (folder.name, err)
        assert expected in err and "weights_only" not in err, (folder.name, err)
    assert not (tmp_path / "o").exists()


def test_checkpoint_from_missing_plugin_names_it(ckpt, tmp_path, capsys):
    """From its manifest's encoder_source (a module plugin here), or, in checkpoints from before that key, from
    the plugins the run named."""
    state, manifest = checkpoint.load(ckpt)
    older = {k: v for k, v in manifest.to_dict().items() if k != "encoder_source"}
    for name, extra in (("plugin_ckpt", {"encoder_source": {"kind": "module", "module": "acme_zoo_encoders"}}),
                        ("old_ckpt", {})):
        folder = checkpoint.write(tmp_path / name, state, Manifest.from_dict(
            {**older, "encoder": "acme-unet9", "plugins": ["acme_zoo_encoders"], **extra}))
        code = main(["export", str(folder), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1
        assert "acme-unet9" in err and ("--plugin acme_zoo_encoders" in err or "plugin(s) acme_zoo_encoders" in err)
        assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_argument_may_be_its_state_file_or_the_run_folder(ckpt, trained_run, synth_root, tmp_path, capsys):
    """`predict .../state.pt` and `predict RUN_FOLDER` (its best checkpoint, printed) work as the folder does."""
    image = str(sorted((synth_root / "Images").iterdir())[0])
    for given in (str(Path(ckpt) / checkpoint.STATE_FILE), trained_run["run_dir"]):
        out = tmp_path / Path(given).name
        assert main(["predict", given, image, "--out", str(out)]) == 0
        assert (out / f"{Path(image).stem}_mask.png").exists()
    assert f"checkpoint {ckpt}" in capsys.readouterr().err  # the run folder's best checkpoint, named
    assert checkpoint.locate(trained_run["run_dir"]) == ckpt
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), image, "--out", str(tmp_path / "o")]) == 2
    assert "not a checkpoint (a folder with manifest.json), its state.pt, a run folder" in capsys.readouterr().err
