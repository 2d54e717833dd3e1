"""The checkpoint manifest is one versioned type: written and read through `segengine.manifest.Manifest`, a model
rebuilds from it, and a manifest written by the previous release (version 1, checked in) still loads."""

import json
from pathlib import Path

import torch

import zoo
from segengine import checkpoint
from segengine.manifest import MANIFEST_VERSION, InferenceMode, Manifest

FIXTURE = Path(__file__).parent / "fixtures" / "manifest_v1.json"


def test_a_version_1_manifest_loads_and_rebuilds_its_model():
    old = json.loads(FIXTURE.read_text())
    manifest = Manifest.from_dict(old)
    assert old["manifest_version"] == 1 and manifest.manifest_version == 1
    assert (manifest.encoder, manifest.num_classes, manifest.in_channels) == ("unet", 2, 1)
    assert manifest.class_names == old["class_names"] and manifest.colors == [tuple(c) for c in old["colors"]]
    assert manifest.inference == InferenceMode(mode="sliding", window=(32, 32), overlap=0.25)
    assert manifest.normalization.clip is None and manifest.state_sha256 == old["state_sha256"]
    weights = zoo.create_model("unet", 2, in_channels=1).state_dict()
    model = checkpoint.model_from_manifest(manifest, weights)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_the_oldest_manifests_without_a_dataset_entry_or_inference_mode_load():
    old = json.loads(FIXTURE.read_text())
    for key in ("dataset", "inference"):
        old.pop(key)
    manifest = Manifest.from_dict(old)
    assert manifest.class_names == ["background", "membrane"] and not manifest.inference.sliding


def test_a_checkpoint_round_trips_through_the_type(tmp_path):
    manifest = Manifest.from_dict(json.loads(FIXTURE.read_text())).model_copy(update={
        "manifest_version": 0, "normalization": zoo.Normalization("dataset", (40.0,), (15.0,), (19.0,), (124.0,)),
        "inference": InferenceMode(mode="sliding", window=(64, 64), resample=0.5)})
    weights = zoo.create_model("unet", 2, in_channels=1).state_dict()
    folder = checkpoint.write(tmp_path / "c", {"model": weights}, manifest)
    written = json.loads((folder / "manifest.json").read_text())
    assert written["manifest_version"] == MANIFEST_VERSION
    assert "num_classes" not in written and "class_names" not in written  # once, under `dataset`
    state, read = checkpoint.load(str(folder))
    assert read == manifest.model_copy(update={"manifest_version": MANIFEST_VERSION,
                                               "state_sha256": written["state_sha256"]})
    assert read.normalization.clip == ((19.0,), (124.0,)) and read.inference.resample == 0.5
    model, _ = checkpoint.build_model(str(folder))
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
