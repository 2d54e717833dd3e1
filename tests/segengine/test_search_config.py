"""One typed search config: its defaults are spelled once (here checked against the docs' table), it round-trips
through YAML, and its errors are one line naming the key."""

import argparse
import re
from pathlib import Path

import pytest
import yaml

from segengine.config import ConfigError, flag_overrides
from segengine.search_config import AshaScheduler, PbtScheduler, SearchConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def _docs_defaults() -> dict[str, str]:
    rows = re.findall(r"^\| `([\w.]+)`(?: \((\w+)\))? \| ([^|]+) \|$", DOCS.read_text(), flags=re.M)
    return {key: value.strip() for key, _, value in rows}


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_the_docs_table_of_defaults_is_the_models_defaults():
    config, table = SearchConfig(), _docs_defaults()
    models = {"scheduler": AshaScheduler(), "pbt": PbtScheduler(), "searcher": config.searcher,
              "resources": config.resources}
    checked = 0
    for key, shown in table.items():
        if "." in key:
            section, name = key.split(".")
            model = models["pbt"] if name in PbtScheduler.model_fields and name not in AshaScheduler.model_fields \
                else models[section]
            value = getattr(model, name)
        else:
            value = getattr(config, key)
        assert shown.split(" (")[0] == _shown(value), key
        checked += 1
    assert checked >= 14


def test_a_search_file_round_trips_through_yaml():
    raw = {"train": {"lr": 3e-3, "epochs": 5}, "search": {"lr": {"loguniform": [1e-4, 1e-2]}},
           "class_weights": {"inverse_frequency_exponent": [0.0, 1.0]},
           "scheduler": {"type": "pbt", "perturbation_interval": 3}, "searcher": {"type": "random"},
           "samples": 3, "time_budget_s": 600}
    config = SearchConfig.parse(raw, "t.yaml")
    assert isinstance(config.scheduler, PbtScheduler) and config.scheduler.quantile_fraction == 0.25
    again = SearchConfig.parse(yaml.safe_load(config.to_yaml()), "again")
    assert again == config and again.max_epochs == 5 and again.trial_count == 3


@pytest.mark.parametrize("raw, message", [
    ({"scheduler": {"type": "asha", "grace_priod": 2}},
     "t.yaml: scheduler: unknown key 'grace_priod' (did you mean 'grace_period'?)"),
    ({"searcher": {"seed": "1"}}, "t.yaml: searcher.seed: input should be a valid integer, got '1'"),
    ({"time_budget_s": -5}, "t.yaml: time_budget_s: input should be greater than 0, got -5"),
])
def test_errors_are_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        SearchConfig.parse(raw, "t.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_class_weights_given_as_flags_replace_the_recipes_derived_and_searched_ones():
    """`tune --class-weights 1 3` over a recipe that derives and searches the weights: the user's weights win."""
    flags = flag_overrides(argparse.Namespace(class_weights=[1.0, 3.0]))
    config = SearchConfig.load({"train": {"class_weight_exponent": 0.5},
                                "class_weights": {"inverse_frequency_exponent": [0.0, 1.0]}}, flags)
    assert config.train.class_weights == [1.0, 3.0] and config.train.class_weight_exponent is None
    assert config.class_weights.inverse_frequency_exponent is None
