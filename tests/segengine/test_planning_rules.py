"""The planning rules as pure functions: what thin, compact, upright and many-class data decide, and how a budget
and a probed step time become steps, epochs and a validation cadence."""

import pytest

from segdata.fingerprint import ChannelStats, ClassFingerprint, Fingerprint
from segengine.planning import rules
from segengine.search_config import SearchConfig

CPU2 = rules.Resources(cpus=2, gpus=0, nodes=1, bf16=True, where="this machine")


def _pct(p50: float, spread: float = 0.3) -> dict[str, float]:
    keys = {"p0.5": -2, "p1": -2, "p5": -1.5, "p10": -1.2, "p25": -0.6, "p50": 0, "p75": 0.6, "p90": 1.2,
            "p95": 1.5, "p99": 2, "p99.5": 2}
    return {k: p50 * (1 + spread * z) for k, z in keys.items()}


def _class(name, share, thickness, diameter, vertical=0.5, grey=100.0):
    stats = ChannelStats(1000, grey, 20.0, grey, 20.0, _pct(grey))
    return ClassFingerprint(name=name, share=share, image_share=1.0, thickness=_pct(thickness),
                            object_area=_pct(diameter ** 2), object_diameter=_pct(diameter), objects_per_image=5,
                            vertical_position=vertical, intensity=[stats])


def _fp(classes, size=(512, 512), channels=1):
    stats = [ChannelStats(10**6, 100.0, 40.0, 101.0, 38.0, _pct(100.0, 0.45)) for _ in range(channels)]
    return Fingerprint(root="x", digest="d", images=20, images_measured=20, height=_pct(size[0], 0),
                       width=_pct(size[1], 0), channels=channels, bit_depth=8, intensity=stats,
                       classes=classes, ignored_share=0.0, label_mode="index", seconds=0.1)


THIN = _fp([_class("background", 0.78, 40, 80), _class("membrane", 0.22, 5, 280)])
COMPACT = _fp([_class("background", 0.8, 150, 1200), _class("nucleus", 0.2, 60, 95)], size=(1024, 1344))
LARGE = _fp([_class("background", 0.6, 150, 1200), _class("polyp", 0.4, 200, 380)], size=(1024, 1024))
STREET = _fp([_class("sky", 0.2, 60, 200, vertical=0.15), _class("road", 0.5, 100, 300, vertical=0.8),
              _class("pole", 0.01, 3, 20, vertical=0.45), _class("sign", 0.004, 6, 12)], size=(360, 480), channels=3)


def test_thin_structures_keep_native_resolution_and_full_resolution_skips():
    draft = rules.data_rules(THIN, CPU2, None, 16)
    assert draft.train["resample"] == 1.0 and draft.train["encoder"] == "unet"
    assert "'membrane' is 5 px thick" in _reason(draft, "resample")
    # 2 x the background's p75 object diameter (1.18 x 80 = 94 px) = 189 -> 192; the membrane network's extent
    # (280 px, a line 5 px thick) is not an object a crop must hold
    assert draft.train["input_size"] == [192, 192] and "'background'" in _reason(draft, "input_size")


def test_compact_objects_that_fit_the_receptive_field_stay_native_and_large_ones_are_downscaled():
    compact = rules.data_rules(COMPACT, CPU2, None, 16)
    assert compact.train["resample"] == 1.0 and 192 <= compact.train["input_size"][0] <= 256
    large = rules.data_rules(LARGE, CPU2, None, 16)
    assert large.train["resample"] < 1 and 380 * 1.18 * large.train["resample"] <= rules.RECEPTIVE_FIELD
    side = int(1024 * large.train["resample"])
    assert large.train["val_window"] == [side, side]  # windows on the resampled image


def test_upright_many_class_colour_scenes_get_their_own_augmentation_and_class_balance():
    street = rules.data_rules(STREET, CPU2, None, 16)
    aug = street.train["augment"]
    assert aug["vflip"] == 0 and not aug["rot90"] and aug["hue"] > 0 and "noise" not in aug
    assert "'sky' sits at 0.15" in _reason(street, "augment")
    assert street.train["class_aware"] == 0.5 and street.train["class_weight_exponent"] == 0.5
    grey = rules.data_rules(THIN, CPU2, None, 16)
    assert grey.train["augment"]["rot90"] and grey.train["augment"]["vflip"] == 0.5
    assert grey.train["class_aware"] == 0 and "class_weight_exponent" not in grey.train
    assert grey.train["normalization"]["low"] == [THIN.intensity[0].p(0.5)]


def test_workers_follow_the_resources():
    assert rules.data_rules(THIN, CPU2, None, 16).train["workers"] == 2
    gpus = rules.Resources(cpus=16, gpus=4, nodes=2, bf16=True, where="cluster")
    draft = rules.data_rules(THIN, gpus, None, 16)
    assert draft.train["workers"] == 4 and draft.train["cpus_per_worker"] == 4 and draft.train["batch_size"] == 8
    assert rules.data_rules(THIN, CPU2, 1, 16).train["workers"] == 1


def test_small_images_and_a_constant_channel_still_plan():
    tiny = _fp([_class("background", 0.7, 20, 60), _class("spot", 0.3, 9, 12)], size=(64, 48))
    tiny.intensity[0].percentiles.update({"p0.5": 7.0, "p99.5": 7.0})  # one grey level throughout
    tiny.intensity[0].clipped_std = 0.0
    draft = rules.data_rules(tiny, CPU2, None, 16)
    assert draft.train["input_size"] == [48, 48] and draft.train["val_window"] == [64, 48]
    norm = draft.train["normalization"]
    assert norm["low"] == [7.0] and norm["high"] == [8.0] and norm["std"] == [1.0]
    SearchConfig.parse({"train": draft.train}, "plan")  # a valid recipe


def _timed(draft, step_s, val_image_s=0.3, val_images=5):
    return rules.Timing(step_s, val_image_s, val_images, draft.train["workers"])


@pytest.mark.parametrize("budget_s, step_s", [(900, 0.5), (3600, 0.5), (900, 0.2)])
def test_a_budget_becomes_steps_epochs_and_a_validation_cadence(budget_s, step_s):
    draft = rules.data_rules(THIN, CPU2, None, 16)
    rules.time_rules(draft, _timed(draft, step_s), budget_s)
    t = draft.train
    steps = t["epochs"] * t["samples_per_epoch"] // (t["batch_size"] * t["workers"])
    assert steps * step_s <= budget_s * (1 - rules.VAL_SHARE) * 1.001
    assert steps * step_s >= budget_s * (1 - rules.VAL_SHARE) * 0.9  # the budget is filled, not wasted
    assert t["budget_s"] == budget_s and t["patience"] >= t["epochs"] and t["warmup_steps"] <= 100
    assert t["epochs"] // t["val_every"] >= min(rules.MIN_VALIDATIONS, t["epochs"])


def test_slow_validation_is_spaced_out_and_a_short_budget_shrinks_the_crop():
    draft = rules.data_rules(THIN, CPU2, None, 16)
    rules.time_rules(draft, _timed(draft, 0.5, val_image_s=6.0), 3600)
    assert draft.train["val_every"] > 1
    short = rules.data_rules(THIN, CPU2, None, 16)
    before = short.train["input_size"][0]
    timing = rules.afford_crop(THIN, short, _timed(short, 2.0), 600, 16, CPU2)
    assert short.train["input_size"][0] < before and timing.step_s < 2.0
    assert "leave" in _reason(short, "input_size")


def test_the_planned_search_is_valid_starts_from_the_recipe_and_names_no_class():
    draft = rules.data_rules(STREET, CPU2, None, 16)
    rules.time_rules(draft, _timed(draft, 0.5), 900)
    sections, _ = rules.search_rules(draft, 900, 1)
    config = SearchConfig.parse({"train": draft.train, **sections}, "plan")
    assert config.time_budget_s == 1800 and config.train.budget_s == 900
    assert config.scheduler.grace_period == max(1, draft.train["epochs"] // 4)
    assert "class_weight_exponent" in config.search and not config.class_weights.per_class
    lo, hi = config.search["lr"]["loguniform"]
    assert lo < draft.train["lr"] < hi


def _reason(draft, key):
    return next(d.reason for d in draft.decisions if d.key == key)


@pytest.mark.parametrize("remaining, train_s, val_s, every, expected", [
    (100.0, 10.0, 0.0, 1, 10 + 10),  # ten more epochs of 10 s
    (100.0, 10.0, 5.0, 1, 10 + 6),  # each epoch validates: 15 s, and the last validation is kept aside
    (100.0, 10.0, 5.0, 5, 10 + 8),  # a validation every 5 epochs: 11 s per epoch
    (3.0, 10.0, 1.0, 1, 10),  # nothing more fits: this epoch is the last
])
def test_epochs_that_fit_a_budget(remaining, train_s, val_s, every, expected):
    from segengine.budget import epochs_that_fit

    assert epochs_that_fit(10, remaining, train_s, val_s, every) == expected
