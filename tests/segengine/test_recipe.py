"""The training recipe's pieces: LR schedules (warm-up, cosine, poly, the tutorial's decay with an encoder freeze),
optimizers, BatchNorm momentum, class weights, early stopping after min_steps, losses that skip ignored pixels, and
recipes that are both a search file and a training config."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import zoo
from segdata import IGNORE
from segengine.config import TrainConfig
from segengine.losses import SegmentationLoss
from segengine.worker import build_optimizer, inverse_frequency_weights, set_bn_momentum


def test_freeze_holds_the_encoder_lr_at_zero_then_follows_the_decay():
    model = zoo.create_model("mini", 2, in_channels=1)
    cfg = TrainConfig(lr=1e-3, lr_decay=0.5, freeze_epochs=2)
    opt, sched = build_optimizer(model, cfg, steps_per_epoch=1)
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


def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    model = zoo.create_model("mini", 2, in_channels=1)
    opt, sched = build_optimizer(model, cfg, steps_per_epoch)
    seen = []
    for _ in range(cfg.epochs * steps_per_epoch):
        seen.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    return seen


def test_warmup_then_cosine_and_poly_end_at_the_floor():
    cosine = _lrs(TrainConfig(lr=1e-2, epochs=4, schedule="cosine", warmup_steps=5, min_lr_ratio=0.1), 10)
    assert cosine[0] == pytest.approx(1e-2 / 5)  # warm-up factor 1/5 at the first step
    assert cosine[4] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 40))), rel=1e-6)
    assert max(cosine) <= 1e-2 and cosine[-1] == pytest.approx(1e-3, rel=0.05)
    assert all(a >= b for a, b in zip(cosine[5:], cosine[6:], strict=False))  # falls after the warm-up
    poly = _lrs(TrainConfig(lr=1e-2, epochs=2, schedule="poly", poly_power=1.0), 10)
    assert poly[10] == pytest.approx(5e-3) and poly[-1] == pytest.approx(5e-4)
    exponential = _lrs(TrainConfig(lr=1e-2, epochs=3, lr_decay=0.5), 4)  # the tutorial: constant within an epoch
    assert exponential == [1e-2] * 4 + [5e-3] * 4 + [2.5e-3] * 4


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers(name):
    model = zoo.create_model("mini", 2, in_channels=1)
    opt, _ = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=1e-4), 1)
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    assert type(opt) is expected and opt.param_groups[0]["weight_decay"] == 1e-4
    assert opt.param_groups[0]["fused"]  # one kernel over all tensors, not torch's per-tensor loop on CPU


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_fused_update_is_the_per_tensor_update(name):
    """Fused is a speed-up only: three steps move the weights as torch's per-tensor loop does."""
    torch.manual_seed(0)
    fused_model = zoo.create_model("mini", 2, in_channels=1)
    loop_model = zoo.create_model("mini", 2, in_channels=1)
    loop_model.load_state_dict(fused_model.state_dict())
    fused_model.eval(), loop_model.eval()  # no dropout: both see the same gradients (mini has no BatchNorm)
    cfg = TrainConfig(optimizer=name, lr=1e-2, weight_decay=1e-2, momentum=0.9)
    fused, _ = build_optimizer(fused_model, cfg, 1)
    loop = (torch.optim.AdamW(loop_model.parameters(), lr=1e-2, weight_decay=1e-2, foreach=False) if name == "adamw"
            else torch.optim.SGD(loop_model.parameters(), lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2,
                                 foreach=False))
    x = torch.rand(2, 1, 32, 32)
    for _ in range(3):
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bn_momentum_replaces_the_keras_default():
    model = zoo.create_model("mobilenet", 2, in_channels=1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {m.momentum for m in bns} == {0.01}  # the Keras-faithful port
    set_bn_momentum(model, 0.1)
    assert {m.momentum for m in bns} == {0.1}
    set_bn_momentum(model, None)  # null keeps what is there
    assert {m.momentum for m in bns} == {0.1}


def test_inverse_frequency_weights_have_mean_one():
    w = inverse_frequency_weights(np.array([0.78, 0.22]), 1.0)
    assert np.mean(w) == pytest.approx(1.0) and w[1] / w[0] == pytest.approx(0.78 / 0.22, rel=1e-4)
    assert inverse_frequency_weights(np.array([0.5, 0.5, 0.0]), 0.5)[2] == pytest.approx(1.0)


def test_early_stopping_waits_for_min_steps(tmp_path):
    """patience 1 with a learning rate of ~0 (nothing improves): min_steps holds the run for 6 steps."""
    from engine_helpers import tiny_config

    from segengine.reporting import make_reporter
    from segengine.runprep import validate_data
    from segengine.worker import Trainer

    def epochs_run(min_steps: int) -> int:
        cfg = tiny_config(storage=str(tmp_path), name=f"m{min_steps}", workers=0, epochs=8, lr=1e-12, patience=1,
                          min_steps=min_steps, data="synth:seed=0,n_train=8,n_val=2,size=32", input_size=(32, 32),
                          batch_size=4)
        reporter = make_reporter("local", str(tmp_path / cfg.name), 1, cfg.metric, cfg.mode)
        trainer = Trainer(cfg, reporter, validate_data(cfg)[1], verbose=False)
        assert trainer.steps_per_epoch == 2
        trainer.fit()
        return len(trainer.history)

    assert epochs_run(0) == 2  # the first epoch sets the best, the second does not improve: stop
    assert epochs_run(12) == 6  # 6 epochs x 2 steps before early stopping may fire


def test_train_config_reads_the_train_section_of_a_search_file():
    from launch import build_parser
    from segengine.commands import train_config

    args = build_parser().parse_args(["train", "--config", "tune_configs/isbi.yaml", "--epochs", "3"])
    cfg = train_config(args)
    recipe = yaml.safe_load(Path("tune_configs/isbi.yaml").read_text())["train"]
    assert cfg.encoder == recipe["encoder"] and cfg.sampling == "patch" and cfg.validation == "sliding"
    assert cfg.augment.elastic == recipe["augment"]["elastic"] and cfg.epochs == 3


def test_checkpoints_only_at_validated_epochs(tmp_path):
    """val_every 2: epochs between validations carry the last scores in history.csv but write no checkpoint, so a
    checkpoint is never ranked by another epoch's scores."""
    from engine_helpers import tiny_config

    from segengine import checkpoint
    from segengine.reporting import make_reporter
    from segengine.runprep import validate_data
    from segengine.worker import Trainer

    cfg = tiny_config(storage=str(tmp_path), name="v", workers=0, epochs=5, val_every=2,
                      data="synth:seed=0,n_train=8,n_val=2,size=32", input_size=(32, 32), batch_size=4)
    reporter = make_reporter("local", str(tmp_path / "v"), 10, cfg.metric, cfg.mode)
    trainer = Trainer(cfg, reporter, validate_data(cfg)[1], verbose=False)
    trainer.fit()
    assert [h["validated"] for h in trainer.history] == [1, 1, 0, 1, 1]  # the first, every 2nd, the last
    saved = [checkpoint.read_manifest(p).epoch + 1 for p in checkpoint.list_complete(str(tmp_path / "v"))]
    assert saved == [1, 2, 4, 5]
