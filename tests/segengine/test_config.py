"""The config schema: one schema for YAML and flags, with errors that name the key and the allowed values."""

import pytest

from launch import build_parser
from segengine.commands import train_config
from segengine.config import ConfigError, TrainConfig, diff_configs
from segengine.search_config import SearchConfig


def test_flags_override_file_and_plugins_accumulate(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("encoder: mobilenet\nlr: 0.001\nepochs: 3\nplugins: [a_mod]\n")
    args = build_parser().parse_args(["train", "--config", str(cfg_file), "--lr", "0.01", "--plugin", "b.py",
                                      "--input-size", "64", "96"])
    cfg = train_config(args)
    assert (cfg.encoder, cfg.lr, cfg.epochs, cfg.input_size) == ("mobilenet", 0.01, 3, (64, 96))
    assert cfg.plugins == ["a_mod", "b.py"]


def test_roundtrip_through_dict():
    cfg = TrainConfig(encoder="vgg", input_size=(32, 64), class_weights=[1.0, 3.0])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("raw, needle", [
    ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    ({"lr": -1.0}, "'lr'"),
    ({"loss": "hinge"}, "ce, dice, focal, ce+dice"),
    ({"epochs": "ten"}, "'epochs' must be int"),
    ({"augment": {"flip": 2.0}}, "'flip'"),
    ({"augment": {"rotate": 1}}, "unknown key 'rotate'"),
    ({"input_size": [64]}, "'input_size' must be two integers"),
    ({"input_size": [96.7, 128.2]}, "'input_size' must be two integers, got [96.7, 128.2]"),
    ({"lr": "1e-3"}, "'lr' must be float, got '1e-3'"),
    ({"plugins": [{"a": 1}]}, "'plugins' must be a list of names"),
    ({"augment": {"gamma": [0.7, "x"]}}, "x.yaml.augment: 'gamma' must be two numbers"),
])
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError, match=None) as err:
        TrainConfig.from_dict(raw, where="x.yaml")
    assert needle in str(err.value) and str(err.value).startswith("x.yaml")
    assert "\n" not in str(err.value)


def test_help_shows_the_schema_defaults_and_flags_are_declared_once():
    """Every flag of `train` comes from the schema: its help ends with the schema's default."""
    from segengine.config import cli_flags

    options = dict(cli_flags("train"))
    assert options["--lr"]["help"].endswith("(default: 0.001)") and options["--lr"]["dest"] == "lr"
    assert options["--input-size"]["nargs"] == 2 and options["--wait-for-resources"]["dest"] == "resource_wait_s"
    assert "--workers" not in dict(cli_flags("tune"))
    args = build_parser().parse_args(["train", "--lr", "0.01", "--min-steps", "7"])
    cfg = train_config(args)
    assert (cfg.lr, cfg.min_steps, cfg.epochs) == (0.01, 7, TrainConfig().epochs)


def test_workers_flag_takes_a_count_or_an_elastic_range():
    assert train_config(build_parser().parse_args(["train", "--workers", "3"])).worker_range == (3, 3)
    elastic = train_config(build_parser().parse_args(["train", "--workers", "1", "4"]))
    assert elastic.worker_range == (1, 4) and elastic.to_dict()["workers"] == [1, 4]
    with pytest.raises(ConfigError, match="1 <= min <= max"):
        train_config(build_parser().parse_args(["train", "--workers", "4", "1"]))


def test_label_and_weights_flags_reach_the_config():
    args = build_parser().parse_args(["tune", "--num-classes", "3", "--label-mode", "index", "--ignore-index", "0",
                                      "--threshold", "100", "--weights", "enc.pth"])
    cfg = train_config(args)
    assert (cfg.num_classes, cfg.label_mode, cfg.ignore_index, cfg.threshold, cfg.weights) == (
        3, "index", 0, 100, "enc.pth")


def test_encoder_kwargs_flag_reads_key_value_pairs_as_yaml(capsys):
    cfg = train_config(build_parser().parse_args(["train", "--encoder", "unet", "--encoder-kwargs", "base_width=64",
                                                  "--encoder-kwargs", "note=a b", "--encoder-kwargs", "flag=true"]))
    assert cfg.encoder_kwargs == {"base_width": 64, "note": "a b", "flag": True}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--encoder-kwargs", "base_width"])
    assert "use KEY=VALUE, e.g. base_width=64" in capsys.readouterr().err


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'lr_decay'"):
        TrainConfig.from_dict({"lr_decya": 0.9})


def test_diff_lists_nested_keys():
    a = TrainConfig().to_dict()
    b = TrainConfig(epochs=50, augment=TrainConfig().augment.__class__(flip=0.0)).to_dict()
    assert diff_configs(a, b) == ["augment.flip", "epochs"]


@pytest.mark.parametrize("raw, needle", [
    ({"serach": {}}, "unknown key 'serach'"),
    ({"search": {"lr": {"loguniform": [0, 1]}}}, "0 < low < high"),
    ({"search": {"learning_rate": {"uniform": [0, 1]}}}, "search.learning_rate is not a training config key"),
    ({"search": {"loss": {"choice": ["ce", "l2"]}}}, "'loss'"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
    ({"scheduler": {"type": "pbt"}, "search": {"lr": {"uniform": [0.1, 1]}}}, "searcher.type: random"),
    ({"scheduler": {"type": "pbt"}, "searcher": {"type": "random"}, "search": {"epochs": {"choice": [2, 3]}}},
     "cannot change search.epochs inside a running trial"),
    ({"scheduler": {"type": "pbt"}, "searcher": {"type": "random"}}, "needs something to mutate"),
    ({"scheduler": {"type": "pbt", "grace_period": 2}, "searcher": {"type": "random"}}, "unknown key 'grace_period'"),
    ({"searcher": {"type": "optuna"}, "search": {"lr": {"grid": [0.1, 0.01]}}}, "searcher.type: random"),
    ({"samples": 0}, "samples"),
    ({"scheduler": {"type": "asha", "grace_period": "two"}}, "scheduler.grace_period: input should be a valid integer"),
    ({"resources": {"workers_per_trial": 1.5}}, "resources.workers_per_trial"),
    ({"resources": {"gpus": 1}}, "unknown key 'gpus'"),
])
def test_search_config_errors_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as err:
        SearchConfig.parse(raw, "t.yaml")
    assert needle in str(err.value)


def test_shipped_tune_configs_parse():
    from pathlib import Path

    import yaml

    for path in sorted(Path(__file__).resolve().parents[2].glob("tune_configs/*.yaml")):
        SearchConfig.parse(yaml.safe_load(path.read_text()), str(path))


def test_recipe_point_is_the_recipes_values_inside_the_ranges():
    import segdata
    from segengine.tuning.space import param_space, recipe_point

    meta = segdata.DatasetMeta(root="synth", classes=["background", "membrane"], label_mode="threshold")

    def point(lr: float, choices: list[str]):
        settings = SearchConfig.parse({"train": {"lr": lr, "optimizer": "adamw"},
                                   "search": {"lr": {"loguniform": [1e-4, 1e-2]}, "optimizer": {"choice": choices}},
                                   "class_weights": {"per_class": {"membrane": [1.0, 5.0]}}}, "t.yaml")
        return recipe_point(settings, param_space(settings, settings.train, meta))

    assert point(3e-3, ["adam", "adamw"]) == {"train/lr": 3e-3, "train/optimizer": "adamw", "class_weights/1": 1.0}
    assert point(3e-2, ["adam", "adamw"]) is None  # outside the searched range: no warm start
    assert point(3e-3, ["adam", "sgd"]) is None


def test_the_cli_spells_the_label_modes_as_the_data_pipeline_does():
    import segdata.meta
    from segengine import config

    assert config.LABEL_MODES == segdata.meta.LABEL_MODES


def test_a_normalization_without_a_clip_window_applies_mean_and_std_only():
    import zoo
    from segengine.worker import normalization

    cfg = TrainConfig.from_dict({"normalization": {"mean": [40.0], "std": [15.0]}})
    norm = normalization(cfg, zoo.get_spec("mini"), 1)
    assert norm.clip is None and norm.mean == (40.0,) and norm.std == (15.0,)
    with pytest.raises(ConfigError, match="low and high need one value per channel each"):
        TrainConfig.from_dict({"normalization": {"mean": [40.0], "std": [15.0], "low": [50.0], "high": [20.0]}})
