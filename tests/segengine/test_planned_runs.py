"""No config means planned: `train --data DIR` and `tune --data DIR` plan from the data (plan.yaml and
fingerprint.json beside the run), a budget ends a run in time with its best checkpoint, and the default search
runs on a dataset whose classes are not the built-in set's."""

import csv
import json
import re

import pytest
import yaml
from engine_helpers import TINY_SYNTH, write_shapes_dataset

from launch import main
from segengine.search_config import SearchConfig


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=6, n_val=2, size=64)


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_train_without_config_plans_saves_the_plan_and_learns(shapes, tmp_path, capsys):
    code = main(["train", "--data", str(shapes), "--budget", "20s", "--workers", "0", "--storage", str(tmp_path),
                 "--name", "p"])
    out = capsys.readouterr().out
    assert code == 0
    run = tmp_path / "p"
    assert out.startswith("plan ") and "input_size" in out and "budget           " in out
    plan_text = (run / "plan.yaml").read_text()
    assert plan_text.count("\n  # ") >= 10  # a reason above each planned key
    plan = SearchConfig.parse(yaml.safe_load(plan_text), "plan.yaml")
    assert plan.train.encoder == "unet" and plan.train.budget_s == 20 and plan.time_budget_s == 40
    assert json.loads((run / "fingerprint.json").read_text())["classes"][1]["name"] == "line"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["normalization"]["low"] is not None and saved["workers"] == 0  # the flag over the plan
    timings = json.loads((run / "timings.json").read_text())
    assert timings["budget"]["spent_s"] <= 20 * 1.05 + 1
    last = _history(run)[-1]
    assert float(last["best_val_miou"]) > 0.6
    assert all(float(last[f"val_iou_{name}"]) > 0 for name in ("background", "line", "disc"))
    assert list(run.glob("checkpoint_epoch_*/manifest.json"))


def test_a_budget_ends_the_run_in_time_with_its_best_checkpoint(tmp_path, capsys):
    """Epochs are an estimate under a budget: 1000 would take minutes, the budget re-sizes them."""
    code = main(["train", "--data", TINY_SYNTH, "--workers", "0", "--epochs", "1000", "--budget", "8s",
                 "--val-every", "3", "--storage", str(tmp_path), "--name", "b"])
    assert code == 0
    out = capsys.readouterr().out
    timings = json.loads((tmp_path / "b" / "timings.json").read_text())
    spent, epochs = timings["budget"]["spent_s"], timings["budget"]["epochs"]
    assert spent <= 8 * 1.05 + 0.5 and epochs < 1000 and spent > 8 * 0.7
    history = _history(tmp_path / "b")
    assert len(history) == epochs and history[-1]["validated"] == "1"  # the last epoch always validates
    assert int(history[-1]["run_epochs"]) == epochs
    assert "budget           0.1 of 0.1 min" in out
    assert (tmp_path / "b" / f"checkpoint_epoch_{epochs:04d}").is_dir()


def test_tune_without_config_plans_a_budgeted_search(shapes, tmp_path, capsys, ray_local):
    code = main(["tune", "--data", str(shapes), "--budget", "50s", "--workers-per-trial", "0", "--storage",
                 str(tmp_path), "--name", "t"])
    out = capsys.readouterr().out
    assert code == 0
    search = tmp_path / "t"
    assert (search / "plan.yaml").is_file() and (search / "fingerprint.json").is_file()
    saved = yaml.safe_load((search / "search.yaml").read_text())
    assert saved["time_budget_s"] == 50 and saved["scheduler"]["type"] == "asha"
    spent, budget = (float(v) for v in re.search(r"budget +([\d.]+) of ([\d.]+) min", out).groups())
    assert budget == pytest.approx(50 / 60, abs=0.05) and spent <= budget * 1.1 + 0.1, out[-2000:]
    with open(search / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["status"] for r in rows} <= {"finished", "stopped", "cut", "not started"}
    assert (search / "best.yaml").is_file()


def test_the_default_search_names_no_class_another_dataset_lacks(shapes, tmp_path, ray_local):
    code = main(["tune", "--config", "default", "--data", str(shapes), "--samples", "2", "--epochs", "2",
                 "--input-size", "64", "64", "--batch-size", "2", "--storage", str(tmp_path), "--name", "d"])
    assert code == 0
    with open(tmp_path / "d" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all("class_weight_exponent" in r for r in rows)


def test_plan_writes_a_recipe_that_train_runs_and_a_second_plan_is_cached(shapes, tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    assert main(["plan", "--data", str(shapes), "--budget", "10s", "--workers", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fingerprint" in printed and f"train --config {out}" in printed
    raw = yaml.safe_load(out.read_text())
    assert raw["train"]["data"] == str(shapes) and raw["train"]["budget_s"] == 10 and raw["time_budget_s"] == 20
    assert main(["plan", "--data", str(shapes), "--budget", "10s", "--workers", "0", "--out",
                 str(tmp_path / "again.yaml")]) == 0
    assert "(fingerprint cached, probe cached)" in capsys.readouterr().out
    again = yaml.safe_load((tmp_path / "again.yaml").read_text())
    assert again == raw  # same data, machine and budget: the same plan
    assert main(["train", "--config", str(out), "--storage", str(tmp_path), "--name", "from-plan"]) == 0
    assert (tmp_path / "from-plan" / "history.csv").is_file()
