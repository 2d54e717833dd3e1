"""Helpers shared by the engine tests (a uniquely named module: several conftest.py files exist)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_SYNTH = "synth:seed=0,n_train=32,n_val=8,size=64"


def tiny_config(**overrides):
    """A training config small enough for tests: mini UNet, 64 px synthetic membranes."""
    from segengine.config import TrainConfig

    base = dict(encoder="mini", data=TINY_SYNTH, input_size=(64, 64), batch_size=2, epochs=6, lr=3e-3,
                lr_decay=0.95, workers=2, seed=0, max_failures=1)
    base.update(overrides)
    return TrainConfig(**base)
