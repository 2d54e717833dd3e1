"""What an ensemble costs against its members, side by side in one run: `predict` with one model against `predict`
with K models as one ensemble (each member in its own inference mode, probabilities averaged), on the ISBI test
sections (512 x 512) with the ISBI recipe's sliding windows. The target: the ensemble's throughput is at least
0.9 / K of the single model's (its averaging, softmax and decision add at most a tenth to K forward passes).

    python benchmarks/ensemble_throughput.py [--run RUNS/isbi-folds5] [--k 5] [--repeats 3]

--run takes a `train --folds K` run folder (its K fold models; the single model is its fold 0); without it K
checkpoints of the ISBI recipe are made here, each trained for one tiny epoch with its own seed (the weights do not
change the cost). Both setups run in this process, alternating over --repeats rounds; figures are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from segengine.inference import open_predictor, predict

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012"


def make_checkpoints(k: int, storage: Path) -> list[str]:
    """K checkpoints of the ISBI recipe after one epoch of 8 crops each (seeds 0..K-1), in this process."""
    paths = []
    for seed in range(k):
        argv = [sys.executable, "launch.py", "train", "--config", "isbi", "--data", str(ISBI), "--workers", "0",
                "--epochs", "1", "--samples-per-epoch", "8", "--val-every", "1", "--min-steps", "0", "--seed",
                str(seed), "--storage", str(storage), "--name", f"seed{seed}"]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"training checkpoint {seed} failed:\n{done.stderr[-3000:]}")
        paths.append(str(storage / f"seed{seed}"))
    return paths


def members_of(run: Path) -> list[str]:
    ensemble = json.loads((run / "ensemble.json").read_text())
    return [m if m.startswith("/") else str(run / m) for m in ensemble["members"]]


def timed(model: str, images: list[str], out: Path) -> float:
    """Images per second of `predict` (masks, colour masks, overlays, cut-outs written)."""
    started = time.perf_counter()
    result = predict(model, images, str(out), verbose=False, device="cpu")
    seconds = time.perf_counter() - started
    assert len(result.written) == len(images) and not result.skipped
    return len(images) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a `train --folds K` run folder")
    parser.add_argument("--k", type=int, default=5, help="members to make without --run")
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    images = sorted(str(p) for p in (ISBI / "Test").glob("*.png"))
    with tempfile.TemporaryDirectory(prefix="unet-zoo-ensemble-bench-") as tmp:
        members = members_of(a.run) if a.run else make_checkpoints(a.k, Path(tmp) / "runs")
        k = len(members)
        ensemble = ",".join(members)
        predictor = open_predictor(ensemble, verbose=False, device="cpu")
        print(f"{k} members ({predictor.inference.mode} inference, window {predictor.inference.window}); "
              f"{len(images)} ISBI test sections; {torch.get_num_threads()} torch threads, "
              f"{predictor.members[0].precision.name}")
        single, many = [], []
        for round_ in range(a.repeats):
            order = [("single", members[0]), ("ensemble", ensemble)]
            for name, model in order if round_ % 2 == 0 else order[::-1]:
                rate = timed(model, images, Path(tmp) / f"{name}-{round_}")
                (single if name == "single" else many).append(rate)
                print(f"round {round_ + 1}: {name:<8} {rate:6.2f} img/s", flush=True)
    one, both = statistics.median(single), statistics.median(many)
    ratio = both / (one / k)
    print(f"\nmedian over {a.repeats} rounds: single model {one:.2f} img/s, ensemble of {k} {both:.2f} img/s")
    print(f"ensemble throughput / (single / K) = {ratio:.3f}  (target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'})")
    print(f"command: python benchmarks/ensemble_throughput.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
