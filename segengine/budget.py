"""A run with a wall-clock budget (`budget_s`, `--budget 15m`): how many epochs fit into the time that is left.

The plan sizes a run's epochs from a probe of its steps; the run itself knows better once it has measured a few
epochs, so after every epoch it re-sizes its length (and with it the learning-rate schedule) to what the rest of
the budget holds, keeping time for the final validation. Start-up (Ray, the dataset, the model) is not counted.
"""

from __future__ import annotations

import time


def epochs_that_fit(done: int, remaining_s: float, train_s: float, val_s: float, val_every: int) -> int:
    """The run's length in epochs (`done` included) when the `remaining_s` go to epochs of `train_s` seconds, a
    validation of `val_s` every `val_every` epochs, and the validation that always ends the run."""
    per_epoch = train_s + val_s / max(1, val_every)
    if per_epoch <= 0:
        return done
    return done + max(0, int((remaining_s - val_s) // per_epoch))


class BudgetClock:
    """Seconds spent of a budget, carried over a resume (`spent_before`)."""

    def __init__(self, budget_s: float, spent_before: float = 0.0) -> None:
        self.budget_s = float(budget_s)
        self.start = time.perf_counter() - spent_before
        self.started_at = time.time()  # wall clock, for the start-up the driver reports

    def spent(self) -> float:
        return time.perf_counter() - self.start
