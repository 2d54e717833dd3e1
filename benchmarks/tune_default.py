"""`make tune` (tune_configs/default.yaml) with in-process trials against the same search with each trial a
2-worker Ray Train `TorchTrainer`, side by side in one run: wall time and best metric (per-trial start-up:
`benchmarks/tune_efficiency.py`, `benchmarks/train_overhead.py`).

The two run alternately (A B, B A, ...) over --repeats rounds, each as `launch.py tune` in a fresh process (its own
Ray, as a user's `make tune` has), and the figures are medians.

    python benchmarks/tune_default.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPS = {"in-process trials (the default)": 0, "Train-backed trials, 2 workers x 1 CPU": 2}


def run_search(workers_per_trial: int, storage: Path, name: str) -> dict[str, float]:
    argv = [sys.executable, "launch.py", "tune", "--storage", str(storage), "--name", name,
            "--workers-per-trial", str(workers_per_trial)]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader((storage / name / "results.csv").open()))
    best = max(float(r["best_val_miou"]) for r in rows if r["best_val_miou"] not in ("", "nan"))
    return {"wall": wall, "best": best, "trials": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {label: [] for label in SETUPS}
    with tempfile.TemporaryDirectory(prefix="tune-default-") as tmp:
        for round_ in range(a.repeats):
            labels = list(SETUPS) if round_ % 2 == 0 else list(reversed(SETUPS))
            for label in labels:
                out = run_search(SETUPS[label], Path(tmp), f"r{round_}-{SETUPS[label]}")
                results[label].append(out)
                print(f"round {round_ + 1}, {label}: {out['wall']:.0f} s, best val_miou {out['best']:.4f}, "
                      f"{out['trials']:.0f} trials", flush=True)
    print(f"\n`launch.py tune` (tune_configs/default.yaml: 12 trials, ASHA, Optuna), {a.repeats} round(s), medians")
    print(f"{'setup':<40} {'wall s':>7} {'best val_miou':>14}")
    medians = {}
    for label, runs in results.items():
        medians[label] = {k: statistics.median(r[k] for r in runs) for k in ("wall", "best")}
        m = medians[label]
        print(f"{label:<40} {m['wall']:>7.0f} {m['best']:>14.4f}")
    base, train = (medians[label] for label in SETUPS)
    print(f"wall time ratio Train-backed / in-process: {train['wall'] / base['wall']:.2f}x (target <= 1.1x); "
          f"best metric difference {train['best'] - base['best']:+.4f} (target >= -0.01)")


if __name__ == "__main__":
    main()
