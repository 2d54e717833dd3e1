"""ASHA's compute saving on the built-in dataset, side by side in one run.

One fixed list of pre-sampled learning rates (log-uniform, seeded) runs twice: under ASHA and with every trial to
the maximum epochs (FIFO). Prints the fraction of trial-epochs ASHA used, the gap in the best metric, the
start-up per trial (in-process trials vs Train-backed trials, 2 at once), and the start-up of Train-backed trials
of 2 workers x 1 CPU one at a time (a Train-backed FIFO search): 3 trials each in a fresh trial process, split by
Ray's timeline like `train_overhead.py` splits a Train run (from Tune's first call to the trial actor, where the
driver function starts, to the worker function's first optimizer step), then 3 trials where Tune reuses the
first trial's process (what `segengine.tuning.factories.reuse_trial_actors` declines for Train-backed trials).

    python benchmarks/tune_efficiency.py [--trials 8] [--epochs 16] [--grace 3] [--reduction 3] [--startup-only]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from train_overhead import RAY_PHASES, actor_tasks, ray_phases  # the sibling script

from segengine.config import TrainConfig
from segengine.search_config import SearchConfig
from segengine.tuning import run as tuning_run
from segengine.tuning import tune_run


def _search(train: TrainConfig, lrs: list[float], scheduler: dict, storage: str, name: str,
            workers_per_trial: int = 0, max_concurrent: int | None = None) -> tuple[dict, float]:
    settings = SearchConfig(train=train, search={"lr": {"grid": lrs}}, scheduler=scheduler,
                            searcher={"type": "random"}, samples=1, max_concurrent=max_concurrent,
                            resources={"workers_per_trial": workers_per_trial})
    start = time.perf_counter()
    out = tune_run(settings, name=name, storage_root=storage, address=None, resume=False, overwrite=False)
    return out, time.perf_counter() - start


TRIAL_PHASES = [*RAY_PHASES, ("worker fn to step", "dataset, model, DDP wrap, first batch and optimizer step")]


def trial_phases(rows: list[dict]) -> list[dict[str, float]]:
    """Per Train-backed trial of a search that ran them one at a time: `TRIAL_PHASES` in seconds, from Ray's
    timeline and the worker's `timings.json`. The trial's driver function starts with Tune's first `train` call
    to its actor (the function trainable starts its thread there), so "to controller" counts from that call."""
    starts = [t["train"][0][0] for t in actor_tasks(0, math.inf).values() if "train" in t]
    out = []
    for row in rows:
        timings = json.loads((Path(row["run_dir"]) / "timings.json").read_text())
        before = [t for t in starts if t < timings["train_func"]]
        try:
            phases = ray_phases(max(before), timings["train_func"])
        except (ValueError, StopIteration):  # some actor's task events had not reached Ray's timeline
            continue
        out.append({**phases, "worker fn to step": timings["first_step"] - timings["train_func"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--grace", type=int, default=3, help="ASHA grace period (the synthetic set takes off after ~3)")
    ap.add_argument("--reduction", type=int, default=3, help="ASHA reduction factor")
    ap.add_argument("--startup-only", action="store_true",
                    help="only the Train-backed start-up: fresh trial processes against reused ones (FIFO)")
    a = ap.parse_args()
    from segengine.ray_adapter import ray_session

    # Seeded and in sampling order (not sorted), as a searcher would propose them.
    lrs = [float(v) for v in np.exp(np.random.default_rng(0).uniform(np.log(1e-5), np.log(3e-2), a.trials))]
    train = TrainConfig(encoder="mini", data="synth", input_size=(64, 64), batch_size=8, epochs=a.epochs,
                        patience=100, seed=0)
    # the local Ray `launch.py tune` starts, with the same settings (segengine.ray_adapter.LOCAL_TRAIN_SETTINGS)
    one = TrainConfig(**{**train.__dict__, "epochs": 1})
    with tempfile.TemporaryDirectory() as tmp, ray_session(None):
        # 3 one-epoch trials of 2 workers x 1 CPU one at a time (a Train-backed FIFO search): each in a fresh trial
        # process as searches run them (split by Ray's timeline), then with Tune reusing the first trial's process
        fresh, _ = _search(one, lrs[:3], {"type": "fifo"}, tmp, "train-backed-2x1", workers_per_trial=2,
                           max_concurrent=1)
        phases = trial_phases(fresh["rows"])
        with mock.patch.object(tuning_run, "reuse_trial_actors", lambda settings: True):
            reused, _ = _search(one, lrs[:3], {"type": "fifo"}, tmp, "train-backed-2x1-reused",
                                workers_per_trial=2, max_concurrent=1)
        if a.startup_only:
            print_startup(fresh, reused, phases)
            return
        asha, asha_s = _search(train, lrs, {"type": "asha", "grace_period": a.grace,
                                                      "reduction_factor": a.reduction}, tmp, "asha")
        full, full_s = _search(train, lrs, {"type": "fifo"}, tmp, "full")
        train_backed, _ = _search(one, lrs[:4], {"type": "fifo"}, tmp, "train-backed", workers_per_trial=1)
        in_process, _ = _search(one, lrs[:4], {"type": "fifo"}, tmp, "in-process", workers_per_trial=0)
    metric = train.metric
    used = sum(r["epochs"] for r in asha["rows"])
    total = sum(r["epochs"] for r in full["rows"])
    best_asha = max(r[f"best_{metric}"] for r in asha["rows"])
    best_full = max(r[f"best_{metric}"] for r in full["rows"])
    print(f"\n{a.trials} pre-sampled learning rates {', '.join(f'{v:.2g}' for v in lrs)}; mini UNet, synth 64 px, "
          f"{a.epochs} epochs max")
    print(f"trial-epochs: ASHA {used} of {total} -> {100 * used / total:.0f} % of the compute (target <= 40 %)")
    print(f"best {metric}: ASHA {best_asha:.4f}, all to max {best_full:.4f}, gap {best_full - best_asha:+.4f} "
          "(target <= 0.01)")
    print(f"wall time: ASHA {asha_s:.0f} s, all to max {full_s:.0f} s")
    print("start-up per trial (trial start to first epoch start, median):")
    for label, out in (("in-process trial", in_process), ("Train-backed trial (1 worker)", train_backed),
                       ("in-process, ASHA run", asha)):
        print(f"  {label:32} {statistics.median(r['startup_s'] for r in out['rows']):6.1f} s")
    print_startup(fresh, reused, phases)


def print_startup(fresh: dict, reused: dict, phases: list[dict[str, float]]) -> None:
    """The Train-backed start-up per trial, fresh trial processes against reused ones, and where it goes."""
    print("\nTrain-backed trials, 2 workers x 1 CPU, one at a time (FIFO): start-up per trial (trial start to first "
          "epoch start), seconds")
    for label, out in (("fresh trial process", fresh), ("reused trial process", reused)):
        startups = [r["startup_s"] for r in sorted(out["rows"], key=lambda r: r["trial"])]
        print(f"  {label:22} " + "  ".join(f"{s:5.1f}" for s in startups)
              + f"   later trials' median {statistics.median(startups[1:]):5.1f}")
    if not phases:
        print("\n  (Ray's timeline lacked some actor's task events: no split by phase this time)")
        return
    print(f"\n  fresh trials split by Ray's timeline (median of {len(phases)} trials):")
    print("  " + " ".join(f"{label:>17}" for label, _ in TRIAL_PHASES) + f" {'total':>7}")
    medians = {label: statistics.median(p[label] for p in phases) for label, _ in TRIAL_PHASES}
    print("  " + " ".join(f"{medians[label]:17.2f}" for label, _ in TRIAL_PHASES)
          + f" {sum(medians.values()):7.2f}")
    print("  " + "; ".join(f"{label}: {what}" for label, what in TRIAL_PHASES))


if __name__ == "__main__":
    main()
