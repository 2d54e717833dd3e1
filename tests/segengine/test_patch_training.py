"""Patch training end to end (in-process, tiny): crops at native resolution, sliding-window validation recorded in
the manifest and used by evaluate by default, and a resumed run that continues exactly where it stopped."""

import pytest
import torch
from engine_helpers import tiny_config

from segengine import checkpoint
from segengine.config import AugmentConfig
from segengine.inference import evaluate
from segengine.manifest import InferenceMode
from segengine.training import train

SET = "synth:seed=0,n_train=8,n_val=4,size=64"


def _cfg(tmp_path, name: str, epochs: int, schedule: str = "cosine"):
    return tiny_config(storage=str(tmp_path), name=name, workers=0, data=SET, sampling="patch", input_size=(32, 32),
                       samples_per_epoch=12, batch_size=4, epochs=epochs, validation="sliding",
                       val_window=(48, 48), schedule=schedule, warmup_steps=2, lr=3e-3,
                       augment=AugmentConfig(rot90=True, elastic=0.5, vflip=0.5, noise=0.5))


def test_patch_run_validates_with_windows_and_evaluate_follows_the_manifest(tmp_path):
    summary = train(_cfg(tmp_path, "p", 2))
    manifest = checkpoint.read_manifest(summary["best_checkpoint"])
    assert manifest.inference == InferenceMode(mode="sliding", window=(48, 48), overlap=0.25, mirror=False)
    assert manifest.metrics["steps"] == 3 * (manifest.epoch + 1)  # 12 crops / batch 4 per epoch
    scored = evaluate(summary["best_checkpoint"], SET, out=str(tmp_path / "eval"), verbose=False).metrics
    assert scored["inference"]["mode"] == "sliding"  # no flag needed
    assert scored["miou"] == pytest.approx(manifest.metrics["val_miou"], abs=1e-3)
    letterboxed = evaluate(summary["best_checkpoint"], SET, out=str(tmp_path / "lb"), verbose=False, sliding=False)
    assert letterboxed.metrics["inference"] == {"mode": "letterbox"}


def test_resumed_patch_run_equals_an_uninterrupted_one(tmp_path):
    """Crops are drawn from (seed, epoch, index) and RNG states travel in checkpoints: 2 epochs + a resume to 3
    give the same weights as 3 epochs in one go (a per-epoch decay: cosine follows the epoch budget)."""
    train(_cfg(tmp_path, "straight", 3, "exponential"))
    train(_cfg(tmp_path, "stopped", 2, "exponential"))
    train(_cfg(tmp_path, "stopped", 3, "exponential"), resume=True)
    straight, _ = checkpoint.load(checkpoint.list_complete(str(tmp_path / "straight"))[-1])
    resumed, _ = checkpoint.load(checkpoint.list_complete(str(tmp_path / "stopped"))[-1])
    assert straight["epoch"] == resumed["epoch"] == 2
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
