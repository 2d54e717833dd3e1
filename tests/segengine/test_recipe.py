"""The training recipe's pieces: the LR schedule with an encoder freeze, and losses that skip ignored pixels."""

import pytest
import torch

import zoo
from segdata import IGNORE
from segengine.config import TrainConfig
from segengine.losses import SegmentationLoss
from segengine.worker import build_optimizer


def test_freeze_holds_the_encoder_lr_at_zero_then_follows_the_decay():
    model = zoo.create_model("mini", 2, in_channels=1)
    cfg = TrainConfig(lr=1e-3, lr_decay=0.5, freeze_epochs=2)
    opt, sched = build_optimizer(model, cfg)
    seen = []
    for _ in range(4):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen == [[0.0, 1e-3], [0.0, 5e-4], [2.5e-4, 2.5e-4], [1.25e-4, 1.25e-4]]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.encoder.parameters()}


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "ce+dice"])
def test_losses_ignore_the_ignore_label(name):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    loss = SegmentationLoss(name, 3, [1.0, 2.0, 0.5])
    base = loss(logits, target)
    noisy_logits = logits.clone()
    target2 = target.clone()
    target2[:, :4] = IGNORE
    noisy_logits[:, :, :4] = torch.randn(2, 3, 4, 8) * 50  # whatever happens under ignored pixels must not count
    masked = SegmentationLoss(name, 3, [1.0, 2.0, 0.5])
    assert torch.isfinite(base)
    assert masked(noisy_logits, target2) == pytest.approx(masked(logits, target2).item(), rel=1e-5)


def test_class_weights_must_match_the_classes():
    with pytest.raises(ValueError, match="3 values for 2 classes"):
        SegmentationLoss("ce", 2, [1.0, 1.0, 1.0])
