"""Ray Train overhead on this machine, side by side in one run on the same model, data and total threads.

1. Ray Train, 1 worker x 2 threads   vs  the same worker function in-process (plain PyTorch loop), 2 threads:
   per-epoch time ratio, plus start-up and teardown.
2. Ray Train 2 workers x 1 thread (DDP over gloo)  vs  1 worker x 2 threads  vs  the plain loop with 2 threads:
   throughput ratios (images/s).
3. Where the seconds go, from each run's `timings.json` (written by the worker): start-up phases and, per epoch,
   training steps, validation, collectives (the per-step non-finite check and the metrics all-reduce) and
   `ray.train.report` (checkpoint written locally, then persisted by Ray before the call returns).
4. Ray's part of the start-up, from Ray's own timeline (`ray.timeline()`: the profile events of every actor task;
   `tune_efficiency.py` splits a Train-backed trial's start-up the same way):
   from train() to the controller actor, its construction, the worker actors placed and started, their train
   context, and the process group and the train function's unpickling up to the worker function.

The setups are interleaved (A B C, B C A, C A B, ...) over --repeats rounds and every figure is a median, so one
noisy stretch of a shared machine does not decide a ratio.

    python benchmarks/train_overhead.py [--size 128] [--epochs 4] [--images 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from segengine.config import TrainConfig

PLANS = {
    "plain loop, 2 threads": dict(workers=0, cpus_per_worker=2, loader_workers=0),
    "Ray Train 1 worker x 2 threads": dict(workers=1, cpus_per_worker=2, loader_workers=0),
    "Ray Train 2 workers x 1 thread": dict(workers=2, cpus_per_worker=1, loader_workers=0),
}
PHASES = [("driver to worker ready", "imported", "driver checks, controller, placement group, worker processes, "
           "process group, imports"), ("worker function", "ready", "dataset, model, DDP wrap"),
          ("first step", "first_step", "first batch, oneDNN warm-up")]


RAY_PHASES = [("to controller", "driver checks, TrainController actor process started"),
              ("controller init", "its arguments unpickled (Ray Train; torch through TorchConfig)"),
              ("workers placed", "resource request, placement group, worker actor processes started"),
              ("worker context", "each worker's train context (Ray Train's own set-up in the worker)"),
              ("process group", "gloo process group, setup callbacks, the train function unpickled (the engine "
               "imported), up to the worker function")]


def actor_tasks(start: float, until: float) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Ray's timeline (`ray.timeline()`) between two wall-clock times: per actor process, its tasks' (begin, end)
    by task name."""
    import ray

    tasks: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for event in ray.timeline():
        begin = event["ts"] / 1e6
        if start <= begin <= until and event.get("args", {}).get("name"):
            tasks[event["tid"]][event["name"]].append((begin, begin + event["dur"] / 1e6))
    return tasks


def ray_phases(start: float, train_func_at: float) -> dict[str, float]:
    """Ray's start-up phases of the Train run begun at `start` (wall clock) whose worker function started at
    `train_func_at`: the controller is the actor with a `run` task (TrainController.run), the workers those with
    `init_train_context`."""
    tasks = actor_tasks(start, train_func_at)
    controller = next(t for t in tasks.values() if "run" in t and "__init__" in t)
    workers = [t for t in tasks.values() if "init_train_context" in t]
    placed = max(t["__init__"][0][0] for t in workers)
    context_end = max(t["init_train_context"][0][1] for t in workers)
    return {"to controller": controller["__init__"][0][0] - start,
            "controller init": controller["run"][0][0] - controller["__init__"][0][0],
            "workers placed": placed - controller["run"][0][0],
            "worker context": context_end - placed,
            "process group": train_func_at - context_end}


def _run(cfg: TrainConfig, storage: str, name: str) -> dict:
    from segengine.training import train

    start = time.time()
    train(TrainConfig(**{**cfg.__dict__, "storage": storage, "name": name}))
    end = time.time()
    run_dir = Path(storage) / name
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    timings = json.loads((run_dir / "timings.json").read_text())
    ray_part = ray_phases(start, timings["train_func"]) if cfg.workers else {}
    steady = timings["epochs"][1:] or timings["epochs"]  # the first epoch pays for lazy initialisation
    first_start = float(rows[0]["wall_time"]) - float(rows[0]["epoch_time_s"])
    out = {"epoch_s": statistics.median(e["epoch_s"] for e in steady),
           "images_per_s": statistics.median(float(r["images_per_s"]) for r in rows[1:] or rows),
           "startup_s": first_start - start, "teardown_s": end - float(rows[-1]["wall_time"])}
    for part in ("train_s", "val_s", "collective_s", "report_s"):
        out[part] = statistics.median(e[part] for e in steady)
    previous = start
    for label, key, _ in PHASES:
        if cfg.workers == 0 and key == "imported":  # in-process: the engine was imported long before
            out[label] = timings["train_func"] - previous
            previous = timings["train_func"]
            continue
        out[label] = timings[key] - previous
        previous = timings[key]
    return {**out, **ray_part}


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from segengine.ray_adapter import ray_session

    t0 = time.time()
    session = ray_session(None)  # the local Ray `launch.py train` starts, with the same settings
    session.__enter__()
    ray_init_s = time.time() - t0
    data = f"synth:seed=0,n_train={a.images},n_val=8,size={a.size}"
    base = TrainConfig(encoder="mini", data=data, input_size=(a.size, a.size), batch_size=4, epochs=a.epochs,
                       lr=1e-3, seed=0, patience=100)
    runs: dict[str, list[dict]] = {label: [] for label in PLANS}
    labels = list(PLANS)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(a.repeats):
            for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
                print(f"--- round {round_ + 1}/{a.repeats}: {label}", flush=True)
                cfg = TrainConfig(**{**base.__dict__, **PLANS[label]})
                runs[label].append(_run(cfg, tmp, f"run{round_}-{labels.index(label)}"))
    session.__exit__(None, None, None)
    results = {label: _median(r) for label, r in runs.items()}
    plain, one, two = results.values()
    print(f"\nmini UNet, {a.size}x{a.size}, {a.images} synthetic images, batch 4/worker, {a.epochs} epochs, "
          f"{a.repeats} interleaved rounds; medians (per epoch: epochs 2..{a.epochs}); ray.init {ray_init_s:.1f} s "
          "(not in the figures below)\n")
    print(f"{'setup':32} {'epoch s':>8} {'img/s':>7} {'start-up s':>10} {'teardown s':>10}")
    for label, r in results.items():
        print(f"{label:32} {r['epoch_s']:8.2f} {r['images_per_s']:7.1f} {r['startup_s']:10.1f} "
              f"{r['teardown_s']:10.1f}")
    print("\nstart-up, seconds from train() to the first optimizer step:")
    print(f"{'setup':32} " + " ".join(f"{label:>22}" for label, _, _ in PHASES))
    for label, r in results.items():
        print(f"{label:32} " + " ".join(f"{r[p]:22.2f}" for p, _, _ in PHASES))
    print("  " + "; ".join(f"{label}: {what}" for label, _, what in PHASES))
    print("\ntrain() to the worker function's start, split by Ray's timeline (ray.timeline()), seconds:")
    print(f"{'setup':32} " + " ".join(f"{label:>16}" for label, _ in RAY_PHASES))
    for label, r in results.items():
        if RAY_PHASES[0][0] in r:
            print(f"{label:32} " + " ".join(f"{r[p]:16.2f}" for p, _ in RAY_PHASES))
    print("  " + "; ".join(f"{label}: {what}" for label, what in RAY_PHASES))
    print("\nper epoch, seconds (collectives happen inside training and validation):")
    print(f"{'setup':32} {'epoch':>7} {'train':>7} {'validate':>9} {'collective':>11} {'report':>7} {'other':>7}")
    for label, r in results.items():
        other = r["epoch_s"] - r["train_s"] - r["val_s"] - r["report_s"]
        print(f"{label:32} {r['epoch_s']:7.3f} {r['train_s']:7.3f} {r['val_s']:9.3f} {r['collective_s']:11.3f} "
              f"{r['report_s']:7.3f} {other:7.3f}")
    print(f"\nper-epoch overhead, Ray 1x2 vs plain 2 threads: {100 * (one['epoch_s'] / plain['epoch_s'] - 1):+.1f} %"
          "  (target <= 2.5 %)")
    print(f"start-up of Ray Train (train() to the first epoch's start): {one['startup_s']:.1f} s (target <= 5 s); "
          f"teardown {one['teardown_s']:.1f} s (target <= 1.5 s)")
    print(f"throughput 2 workers x 1 thread / plain 2 threads: {two['images_per_s'] / plain['images_per_s']:.2f}x")
    print(f"throughput 2 workers x 1 thread / 1 worker x 2 threads: "
          f"{two['images_per_s'] / one['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
