"""`train --folds K`: folds as Ray Tune trials, resume of the unfinished ones, the out-of-fold summary, and the
fold models as one ensemble in evaluate, predict (here and on Ray Data actors) and export."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import segdata
from launch import main
from segengine import checkpoint, inference
from segengine.inference.ensemble import EnsemblePredictor, choose_decision, open_predictor
from segengine.inference.predictor import Predictor, softmax
from segengine.manifest import Decision

DATA = "synth:seed=3,n_train=12,n_val=4,size=64"
TRAIN = ["train", "--encoder", "mini", "--data", DATA, "--input-size", "64", "64", "--batch-size", "2",
         "--epochs", "3", "--lr", "3e-3", "--workers", "0", "--folds", "3"]


def _mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    """One fold trained alone (`--fold 1`), then `--resume`: the two others trained, then the summary."""
    storage = tmp_path_factory.mktemp("cv")
    base = [*TRAIN, "--storage", str(storage), "--name", "cv"]
    assert main([*base, "--fold", "1"]) == 0
    run = storage / "cv"
    alone = {"finished": sorted(p.parent.name for p in run.glob("fold-*/finished.json")),
             "summary": (run / "cv.json").exists(), "fold1": _mtimes(run / "fold-1")}
    assert main(["train", "--name", "cv", "--storage", str(storage), "--resume"]) == 0
    return {"run": run, "alone": alone}


def test_one_fold_alone_then_resume_trains_only_the_unfinished_folds(folds_run):
    run, alone = folds_run["run"], folds_run["alone"]
    assert alone == {"finished": ["fold-1"], "summary": False, "fold1": alone["fold1"]}
    assert _mtimes(run / "fold-1") == alone["fold1"], "the finished fold was not touched by --resume"
    assert sorted(p.parent.name for p in run.glob("fold-*/finished.json")) == ["fold-0", "fold-1", "fold-2"]
    assert (run / "cv.json").exists() and (run / "ensemble.json").exists()
    page = (run / "report.html").read_text()  # written at the end: per fold and out-of-fold
    assert "out-of-fold mIoU" in page and "Per fold" in page
    spans = []  # the two folds of --resume trained side by side (2 CPUs, 1 per in-process fold)
    for index in (0, 2):
        timings = run / f"fold-{index}" / "timings.json"
        spans.append((json.loads(timings.read_text())["train_func"], timings.stat().st_mtime))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans


def test_each_fold_validates_on_its_own_images_and_records_the_lists(folds_run):
    run = folds_run["run"]
    folds = json.loads((run / "folds.json").read_text())["folds"]
    assert [len(f) for f in folds] == [4, 4, 4] and len({n for f in folds for n in f}) == 12
    for index in range(3):
        best = json.loads((run / f"fold-{index}" / "finished.json").read_text())["checkpoint"]
        manifest = checkpoint.read_manifest(best)
        assert manifest.fold.index == index and manifest.fold.folds == folds
        assert checkpoint.locate(str(run / f"fold-{index}")) == best  # a fold's folder, as predict/serve take it
        history = (run / f"fold-{index}" / "history.csv").read_text().splitlines()
        assert len(history) == 1 + 3  # 3 epochs
    summary = (run / "fold-0" / "summary.json")
    assert summary.exists()


def test_out_of_fold_scores_are_each_fold_model_on_its_own_held_out_images(folds_run, tmp_path):
    """cv.json's out-of-fold confusion is the sum of each fold model on the images it did not train on, and
    `evaluate RUN --split train` says so; the val split is scored by the ensemble."""
    run = folds_run["run"]
    cv = json.loads((run / "cv.json").read_text())
    folds = json.loads((run / "folds.json").read_text())["folds"]
    total = 0
    for index, names in enumerate(folds):
        split = tmp_path / f"fold{index}.txt"
        split.write_text("\n".join(names) + "\n")
        best = json.loads((run / f"fold-{index}" / "finished.json").read_text())["checkpoint"]
        alone = inference.evaluate(best, DATA, split=str(split), out=str(tmp_path / f"e{index}"), verbose=False)
        assert cv["folds"][index]["miou"] == pytest.approx(alone.metrics["miou"], abs=1e-4)
        total = total + alone.confusion
    assert main(["evaluate", str(run), "--data", DATA, "--split", "train"]) == 0  # default out: in the run folder
    oof = json.loads((run / "eval-train" / "metrics.json").read_text())
    assert oof["predicted_by"].startswith("out-of-fold")
    oof = inference.evaluate(str(run), DATA, split="train", out=str(tmp_path / "oof"), verbose=False)
    if cv["decision"]["threshold"] is None:  # the argmax: the same masks as the members alone
        np.testing.assert_array_equal(oof.confusion, total)
    assert cv["oof"]["images"] == 12 and cv["val"]["images"] == 4
    assert set(cv["fold_iou"]) == {"background", "membrane"} and cv["fold_miou"]["std"] >= 0
    val = json.loads((run / "eval-val" / "metrics.json").read_text())
    assert val["predicted_by"] == "ensemble of 3" and val["decision"] == cv["decision"]


def _members(run: Path) -> list[str]:
    return [json.loads((run / f"fold-{i}" / "finished.json").read_text())["checkpoint"] for i in range(3)]


def _image(seed: int = 0) -> np.ndarray:
    folder = segdata.open_dataset(segdata.resolve_data(DATA))
    return segdata.read_image(folder.samples("val")[seed].image)


def test_an_ensemble_of_one_model_is_that_model(folds_run):
    single = Predictor.from_checkpoint(_members(folds_run["run"])[0], verbose=False, amp=False)
    ensemble = EnsemblePredictor([single])
    image = _image()
    np.testing.assert_allclose(softmax(ensemble.scores(image)), softmax(single.scores(image)), atol=1e-6)
    np.testing.assert_array_equal(ensemble.predict_mask(image), single.predict_mask(image))


def test_ensemble_probabilities_are_the_members_mean(folds_run):
    paths = _members(folds_run["run"])
    members = [Predictor.from_checkpoint(p, verbose=False, amp=False) for p in paths]
    ensemble = open_predictor(",".join(paths), amp=False)
    image = _image(1)
    expected = np.mean([softmax(m.scores(image)) for m in members], axis=0)
    np.testing.assert_allclose(np.exp(ensemble.scores(image)), expected, atol=1e-5)
    assert ensemble.manifest.members == paths


def test_decision_threshold_is_chosen_on_histograms_and_applied_to_masks():
    hist = np.zeros((2, 100), np.int64)
    hist[0, 10] = 1000  # background: class-1 probability 0.10
    hist[1, 30] = 400  # membrane the argmax misses: probability 0.30
    hist[1, 80] = 600
    rule = choose_decision(hist)
    assert rule.threshold is not None and 0.1 < rule.threshold <= 0.30 and "out-of-fold mIoU" in rule.chosen_on
    balanced = np.zeros((2, 100), np.int64)
    balanced[0, 10], balanced[1, 90] = 1000, 1000
    assert choose_decision(balanced).threshold is None  # nothing to gain: the argmax stays
    scores = np.log(np.stack([1 - np.array([[0.2, 0.4]]), np.array([[0.2, 0.4]])]))
    np.testing.assert_array_equal(Decision(threshold=0.3).mask(scores), [[0, 1]])
    np.testing.assert_array_equal(Decision().mask(scores), [[0, 0]])


def test_predict_with_the_run_folder_writes_probabilities_of_the_ensemble_and_its_rule(folds_run, tmp_path):
    run = folds_run["run"]
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(_image(2)[:, :, 0]).save(image)
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "out"), "--probs", "--no-amp"]) == 0
    probs = np.load(tmp_path / "out" / "a_probs.npy").astype(np.float32)
    assert probs.shape == (2, 64, 64) and np.abs(probs.sum(axis=0) - 1).max() < 2e-3
    mask = np.array(Image.open(tmp_path / "out" / "a_mask.png"))
    rule = Decision(**json.loads((run / "ensemble.json").read_text())["decision"])
    expected = rule.mask(np.log(np.maximum(probs, 1e-8)))
    clear = np.abs(probs[1] - (rule.threshold or 0.5)) > 1e-2  # float16 may round across the threshold
    np.testing.assert_array_equal(mask[clear], expected[clear])


def test_ensemble_on_ray_data_actors_matches_this_process(folds_run, ray_local, tmp_path, capsys):
    run = folds_run["run"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(_image(i)[:, :, 0]).save(inputs / f"v{i}.png")
    assert main(["predict", str(run), str(inputs), "--out", str(tmp_path / "here")]) == 0
    assert main(["predict", str(run), str(inputs), "--out", str(tmp_path / "ray"), "--workers", "2"]) == 0
    assert "2 Ray Data actors" in capsys.readouterr().err
    for i in range(3):
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "ray" / f"v{i}_mask.png")),
                                      np.array(Image.open(tmp_path / "here" / f"v{i}_mask.png")))


def test_an_exported_ensemble_is_one_verified_graph_that_predict_reads_alone(folds_run, tmp_path, capsys):
    run = folds_run["run"]
    onnx_path = tmp_path / "ensemble.onnx"
    assert main(["export", str(run), "--out", str(onnx_path)]) == 0
    assert "log mean probabilities of 3 members" in capsys.readouterr().out
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(_image(3)[:, :, 0]).save(image)
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "torch"), "--no-amp"]) == 0
    assert main(["predict", str(onnx_path), str(image), "--out", str(tmp_path / "onnx")]) == 0
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "onnx" / "a_mask.png")),
                                  np.array(Image.open(tmp_path / "torch" / "a_mask.png")))
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "safetensors holds one model's weights" in capsys.readouterr().err


def test_folds_mistakes_are_one_line_errors(tmp_path, capsys):
    cases = [
        (["train", "--data", DATA, "--fold", "1", "--workers", "0"], "--fold 1 needs --folds K"),
        ([*TRAIN, "--fold", "3"], "--fold 3: use 0 to 2"),
        ([*TRAIN, "--folds", "20"], "20 folds of 12 training images: use 2 to 12 folds"),
        (["train", "--data", DATA, "--workers", "0", "--probs"], "--probs keeps the probabilities of a --folds run"),
    ]
    for argv, message in cases:
        assert main([*argv, "--storage", str(tmp_path), "--name", "bad"]) == 2, argv
        assert message in capsys.readouterr().err, argv
    search = tmp_path / "s.yaml"
    search.write_text("train: {encoder: mini, data: 'synth', folds: 3}\nsearch: {lr: {loguniform: [1.0e-4, 1.0e-2]}}"
                      "\nscheduler: {type: pbt}\nsearcher: {type: random}\n")
    assert main(["tune", "--config", str(search), "--storage", str(tmp_path)]) == 2
    assert "train.folds with scheduler.type pbt" in capsys.readouterr().err


def test_tune_folds_scores_each_sample_by_its_folds_and_the_best_trial_is_an_ensemble(ray_local, tmp_path, capsys):
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({
        "train": {"encoder": "mini", "data": DATA, "input_size": [64, 64], "batch_size": 2, "epochs": 2,
                  "workers": 0},
        "search": {"lr": {"grid": [3e-3, 1e-7]}}, "searcher": {"type": "random"}, "samples": 1,
        "scheduler": {"type": "fifo"}, "max_concurrent": 2}))
    assert main(["tune", "--config", str(search), "--folds", "2", "--storage", str(tmp_path), "--name", "s"]) == 0
    assert "each trial trains 2 folds" in capsys.readouterr().out
    tune_dir = tmp_path / "s"
    folds = json.loads((tune_dir / "folds.json").read_text())["folds"]
    with open(tune_dir / "results.csv") as f:
        rows = {float(r["lr"]): r for r in csv.DictReader(f)}
    for row in rows.values():  # the sample's score is the mean of its folds' best val_miou
        marks = [json.loads((tune_dir / row["trial"] / f"fold-{i}" / "finished.json").read_text()) for i in range(2)]
        assert float(row["best_val_miou"]) == pytest.approx(np.mean([m["metrics"]["val_miou"] for m in marks]))
        assert [len(checkpoint.read_manifest(m["checkpoint"]).fold.folds) for m in marks] == [2, 2]
    winner = max(rows.values(), key=lambda r: float(r["best_val_miou"]))
    best = json.loads((tune_dir / "best.json").read_text())["checkpoint"]
    assert best == str(tune_dir / winner["trial"]) and (Path(best) / "ensemble.json").exists()
    predictor = open_predictor(str(tune_dir))  # the search folder: its best trial's fold models as one ensemble
    assert isinstance(predictor, EnsemblePredictor) and len(predictor.members) == 2 and predictor.folds == folds
