"""A finished (or interrupted) search's results from Tune's ResultGrid: the table (printed and results.csv),
best.yaml / best.json, trials.png."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import yaml
from ray.tune import Result, ResultGrid

from segengine import storage
from segengine.cluster import redact
from segengine.config import TrainConfig, ranked
from segengine.runprep import RunError
from segengine.tuning.progress import fmt
from segengine.tuning.space import sampled_value, trial_train_config
from segengine.tuning.trial import trial_run_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def best_checkpoint(result: Result, metric: str, mode: str) -> str | None:
    """The trial's best checkpoint: Tune's own (in-process trials), else the `checkpoint_path` a Train-backed trial
    reported with its best epoch (its TorchTrainer keeps the best ones)."""
    if result.best_checkpoints:
        best = result.get_best_checkpoint(metric, mode)
        return best.path if best is not None else None
    df = result.metrics_dataframe
    if df is None or metric not in df.columns or "checkpoint_path" not in df.columns or df[metric].isna().all():
        return None
    row = max(df.index, key=lambda i: ranked(df.loc[i, metric], mode))
    return str(df.loc[row, "checkpoint_path"]) or None


def _best_trial(grid: ResultGrid, metric: str, mode: str) -> str | None:
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="all", filter_nan_and_inf=True)
    except RuntimeError:  # no trial reported the metric
        return None
    return best.path.rstrip("/").rsplit("/", 1)[-1]


def exploit_count(tune_dir: str) -> int:
    """How often PBT made a trial continue from another's checkpoint (Tune logs each in pbt_global.txt)."""
    path = storage.join(tune_dir, "pbt_global.txt")
    return len(storage.read_text(path).splitlines()) if storage.exists(path) else 0


def _status(result: Result, hist: pd.DataFrame | None, epochs: list, max_epochs: int, completed: set[str] | None
            ) -> str:
    """finished, stopped (by the scheduler), cut (by the search's time budget), not started, or error."""
    trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]
    if result.error:
        return "error"
    if not epochs:
        return "not started"
    if completed is not None and trial_id not in completed:
        return "cut"
    last = int(hist["run_epochs"].iloc[-1]) if "run_epochs" in hist.columns else max_epochs
    return "stopped" if max(epochs) < min(last, max_epochs) else "finished"


def _row(result: Result, cfg: TrainConfig, tune_dir: str, searched: dict[str, tuple[str, str]], max_epochs: int,
         completed: set[str] | None) -> tuple[dict[str, Any], tuple[list, list]]:
    """One trial's results row and its (epochs, metric values) curve."""
    metric, mode = cfg.metric, cfg.mode
    trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]
    df = result.metrics_dataframe
    hist = df if df is not None and metric in getattr(df, "columns", []) else None
    values = hist[metric].tolist() if hist is not None else []
    epochs = hist["epoch"].tolist() if hist is not None else []
    best_value = max(values, key=lambda v: ranked(v, mode), default=float("nan"))
    status = _status(result, hist, epochs, max_epochs, completed)
    seconds = float(hist["time_total_s"].iloc[-1]) if hist is not None and "time_total_s" in hist.columns else 0.0
    timed = hist is not None and {"time_this_iter_s", "epoch_time_s"} <= set(hist.columns) and len(hist)
    # a cross-validated trial reports once, after its folds: no first epoch to tell its start-up from
    startup = float(hist["time_this_iter_s"].iloc[0] - hist["epoch_time_s"].iloc[0]) if timed else float("nan")
    row = {"trial": trial_id, **{k: sampled_value(result.config, where) for k, where in searched.items()},
           "startup_s": startup, f"best_{metric}": best_value, "epochs": int(max(epochs)) if epochs else 0,
           "minutes": seconds / 60, "status": status,
           "error": str(result.error).splitlines()[-1][:200] if result.error else "",
           "run_dir": trial_run_dir(tune_dir, trial_id, cfg.workers),
           "checkpoint": best_checkpoint(result, metric, mode), "_config": result.config}
    return row, (epochs, values)


def finish(grid: ResultGrid, cfg: TrainConfig, num_classes: int, tune_dir: str, searched: dict[str, tuple[str, str]],
           max_epochs: int, interrupted: bool, pbt: bool = False, budget: tuple[float, float] | None = None,
           completed: set[str] | None = None) -> dict[str, Any]:
    """Results table (printed + CSV) from Tune's ResultGrid, best.yaml, curves plot; `budget`: (the search's time
    budget, the seconds it ran) and `completed`, the trials Tune completed (the others were cut by the budget)."""
    metric, mode = cfg.metric, cfg.mode
    rows, curves = [], {}
    for result in grid:
        row, curve = _row(result, cfg, tune_dir, searched, max_epochs, completed if budget else None)
        curves[row["trial"]] = curve
        rows.append(row)
    rows.sort(key=lambda r: -ranked(r[f"best_{metric}"], mode))
    best_id = _best_trial(grid, metric, mode)
    best = next((r for r in rows if r["trial"] == best_id and math.isfinite(r[f"best_{metric}"])), None)
    best_ckpt = best["checkpoint"] if best else None
    exploits = exploit_count(tune_dir) if pbt else 0
    print("\n" + write_results(rows, searched, metric, tune_dir))
    if budget:
        print(budget_line(rows, *budget))
    if best is not None:
        _write_best(best, cfg, num_classes, tune_dir, pbt)
    if pbt:
        print(f"PBT exploits     {exploits} (a weaker trial continued from a stronger one's checkpoint; "
              "pbt_global.txt)")
    _plot(curves, metric, max_epochs, tune_dir)
    used = _disk_usage(tune_dir)
    if used >= 0:
        print(f"disk used        {used / 2**20:.1f} MiB in {tune_dir}")
    if interrupted:
        print("\nnot all trials finished: results so far are written; resume with:\n"
              f"  python launch.py tune --name {cfg.name} --storage {cfg.storage} --resume", file=sys.stderr)
    elif best is None:
        reason = next((re.sub(r"^[\w.]+\.(\w+Error): ", "", r["error"]) for r in rows if r["error"]),
                      "no trial reported it")
        raise RunError(f"no trial produced {metric}: {reason} (results.csv and each trial's error.txt in {tune_dir})")
    return {"rows": rows, "best": best, "best_checkpoint": best_ckpt, "tune_dir": tune_dir, "exploits": exploits}


def _write_best(best: dict[str, Any], cfg: TrainConfig, num_classes: int, tune_dir: str, pbt: bool) -> None:
    """best.yaml (the best trial's config, trainable with `train --config`) and best.json."""
    metric = cfg.metric
    best_cfg = trial_train_config(best["_config"], num_classes)
    best_cfg = replace(best_cfg, name=None, workers=max(best_cfg.workers, 1))
    text = (f"# best trial {best['trial']} of search {cfg.name}: {metric} {best[f'best_{metric}']:.4f}\n"
            f"# best checkpoint: {best['checkpoint']}\n# reproduce: python launch.py train --config best.yaml\n")
    if pbt:
        text += (f"# PBT changed this trial's values while it ran (pbt_policy_{best['trial']}.txt); these are "
                 "its last ones\n")
    text += yaml.safe_dump(redact(best_cfg.to_dict()), sort_keys=False)
    storage.write_bytes(storage.join(tune_dir, "best.yaml"), text.encode())
    storage.write_bytes(storage.join(tune_dir, "best.json"), json.dumps(
        {"trial": best["trial"], metric: best[f"best_{metric}"], "checkpoint": best["checkpoint"]}, indent=2).encode())
    print(f"best trial       {best['trial']}  {metric} {best[f'best_{metric}']:.4f}")
    print(f"best config      {storage.join(tune_dir, 'best.yaml')}")
    print(f"best checkpoint  {best['checkpoint']}")


def write_results(rows: list[dict[str, Any]], searched: dict[str, tuple[str, str]], metric: str, tune_dir: str
                  ) -> str:
    cols = ["trial", *searched, f"best_{metric}", "epochs", "minutes", "status", "error"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(storage.join(tune_dir, "results.csv"), out.getvalue().encode())
    shown = cols[:-1]
    cells = [[fmt(r.get(c)) for c in shown] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def budget_line(rows: list[dict[str, Any]], budget_s: float, wall_s: float) -> str:
    """How a search's time budget was spent: wall time, trial time, and how the trials ended."""
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("finished", "stopped", "cut", "not started",
                                                                    "error")}
    ended = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    trial_minutes = sum(r["minutes"] for r in rows)
    return (f"budget           {wall_s / 60:.1f} of {budget_s / 60:.1f} min ({trial_minutes:.1f} trial-minutes): "
            f"{len(rows)} trials: {ended} (stopped: by the scheduler; cut: by the budget)")


def _plot(curves: dict[str, tuple[list, list]], metric: str, max_epochs: int, tune_dir: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for trial_id, (epochs, values) in curves.items():
        if not epochs:
            continue
        (line,) = ax.plot(epochs, values, marker="o", ms=3, label=trial_id)
        if max(epochs) < max_epochs:  # where ASHA stopped it
            ax.plot(epochs[-1], values[-1], marker="x", ms=10, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (x = stopped early)")
    ax.grid(alpha=0.3)
    if 0 < sum(1 for epochs, _ in curves.values() if epochs) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "trials.png"
        fig.savefig(png)
        storage.write_bytes(storage.join(tune_dir, "trials.png"), png.read_bytes())
    plt.close(fig)


def _disk_usage(path: str) -> int:
    if storage.is_uri(path):
        return -1
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
