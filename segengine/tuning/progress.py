"""What a search prints while it runs: a line per trial-epoch and per finished trial, Tune's own output off."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

from segengine.tuning.space import sampled_value


def fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class ProgressLines(Callback):
    """A line per trial-epoch and per finished trial: enough to follow a search without Tune's verbose tables."""

    def __init__(self, metric: str, searched: dict[str, tuple[str, str]]):
        self.metric, self.searched = metric, searched
        self.start = time.perf_counter()
        self.completed: set[str] = set()  # trials that ended on their own or by the scheduler (not by the budget)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("validated", 1):  # the epoch carried the last validation's scores
            self.line(trial, f"epoch {result.get('epoch', '?'):>3}  (not validated)")
            return
        self.line(trial, f"epoch {result.get('epoch', '?'):>3}  {self.metric} "
                         f"{result.get(self.metric, float('nan')):.4f}  val_loss "
                         f"{result.get('val_loss', float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed.add(trial.trial_id)
        self.line(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.line(trial, "FAILED (see its error.txt)")

    def line(self, trial, text: str) -> None:
        params = "  ".join(f"{k}={fmt(sampled_value(trial.config, where))}" for k, where in self.searched.items())
        print(f"[{time.perf_counter() - self.start:6.0f}s] {trial.trial_id}  {params}  {text}", flush=True)


@contextmanager
def tune_output_off() -> Iterator[None]:
    """Tune's own console output (its table and a TensorBoard hint for Ray's staging folder) off: ProgressLines
    and the plan lines say what matters. RAY_AIR_NEW_OUTPUT=0 with verbose=0 is Tune's quiet mode."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved
