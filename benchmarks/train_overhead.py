"""Ray Train overhead on this machine, side by side in one run on the same model, data and total threads.

1. Ray Train, 1 worker x 2 threads   vs  the same worker function in-process (plain PyTorch loop), 2 threads:
   per-epoch time ratio, plus start-up and teardown measured separately.
2. Ray Train 2 workers x 1 thread (DDP over gloo)  vs  1 worker x 2 threads  vs  the plain loop with 2 threads:
   throughput ratios (images/s).

    python benchmarks/train_overhead.py [--size 128] [--epochs 4] [--images 32]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from segengine.config import TrainConfig


def _run(cfg: TrainConfig, storage: str, name: str) -> dict:
    from segengine.training import train

    start = time.time()
    train(TrainConfig(**{**cfg.__dict__, "storage": storage, "name": name}))
    end = time.time()
    with open(Path(storage) / name / "history.csv") as f:
        rows = list(csv.DictReader(f))
    epoch_times = [float(r["epoch_time_s"]) for r in rows]
    steady = epoch_times[1:] or epoch_times  # the first epoch pays for lazy initialisation
    first_start = float(rows[0]["wall_time"]) - epoch_times[0]
    return {"epoch_s": statistics.median(steady), "images_per_s": statistics.median(
        float(r["images_per_s"]) for r in rows[1:] or rows), "startup_s": first_start - start,
        "teardown_s": end - float(rows[-1]["wall_time"]), "total_s": end - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--images", type=int, default=32)
    a = ap.parse_args()
    import ray

    t0 = time.time()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray_init_s = time.time() - t0
    data = f"synth:seed=0,n_train={a.images},n_val=8,size={a.size}"
    base = TrainConfig(encoder="mini", data=data, input_size=(a.size, a.size), batch_size=4, epochs=a.epochs,
                       lr=1e-3, seed=0, patience=100)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        plans = {
            "plain loop, 2 threads": dict(workers=0, cpus_per_worker=2, loader_workers=0),
            "Ray Train 1 worker x 2 threads": dict(workers=1, cpus_per_worker=2, loader_workers=0),
            "Ray Train 2 workers x 1 thread": dict(workers=2, cpus_per_worker=1, loader_workers=0),
        }
        for label, overrides in plans.items():
            print(f"--- {label}", flush=True)
            results[label] = _run(TrainConfig(**{**base.__dict__, **overrides}), tmp, f"run{len(results)}")
    ray.shutdown()
    plain, one, two = results.values()
    print(f"\nmini UNet, {a.size}x{a.size}, {a.images} synthetic images, batch 4/worker, {a.epochs} epochs; "
          f"medians over epochs 2..{a.epochs}; ray.init {ray_init_s:.1f} s (not in the figures below)\n")
    print(f"{'setup':34} {'epoch s':>8} {'img/s':>7} {'start-up s':>10} {'teardown s':>10}")
    for label, r in results.items():
        print(f"{label:34} {r['epoch_s']:8.2f} {r['images_per_s']:7.1f} {r['startup_s']:10.1f} "
              f"{r['teardown_s']:10.1f}")
    print(f"\nper-epoch overhead, Ray 1x2 vs plain 2 threads: {100 * (one['epoch_s'] / plain['epoch_s'] - 1):+.1f} %"
          "  (target <= 3 %)")
    print(f"start-up of Ray Train (trainer + worker group + first batch): {one['startup_s']:.1f} s (target <= 10 s)")
    print(f"throughput 2 workers x 1 thread / plain 2 threads: {two['images_per_s'] / plain['images_per_s']:.2f}x"
          "  (target >= 0.9x)")
    print(f"throughput 2 workers x 1 thread / 1 worker x 2 threads: "
          f"{two['images_per_s'] / one['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
