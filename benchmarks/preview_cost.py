"""What the prediction previews cost: the ISBI recipe trained for a few epochs, validating every epoch, with each
epoch's preview time (rank 0 renders the sheet from the predictions its validation kept; `preview_s` in the run's
timings.json) against the epoch's wall time. The target: at most 5 % of an epoch.

    python benchmarks/preview_cost.py [--epochs 3] [--workers 2]

Prints one row per epoch and the median share; the run goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="unet-zoo-previews-") as tmp:
        argv = [sys.executable, "launch.py", "train", "--config", "isbi", "--data", str(ISBI), "--epochs",
                str(a.epochs), "--val-every", "1", "--workers", str(a.workers), "--storage", tmp, "--name", "p"]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"training failed:\n{done.stderr[-3000:]}")
        run = Path(tmp) / "p"
        epochs = json.loads((run / "timings.json").read_text())["epochs"]
        size = (run / "previews" / "latest.png").stat().st_size
        images = json.loads((run / "workers.json").read_text())
    print(f"ISBI recipe (`unet`, 192 px crops, sliding validation of the 5 val sections), {a.workers} Ray Train "
          f"workers, {images['worker_precision'][0]}; previews of rank 0's share of the val sections")
    print(f"{'epoch':>5}  {'epoch s':>8}  {'validation s':>12}  {'previews s':>10}  {'share':>7}")
    shares = []
    for e in epochs:
        share = e["preview_s"] / e["epoch_s"]
        shares.append(share)
        print(f"{e['epoch']:>5}  {e['epoch_s']:>8.2f}  {e['val_s']:>12.2f}  {e['preview_s']:>10.3f}  {share:>7.2%}")
    median = statistics.median(shares)
    print(f"\nmedian share of an epoch: {median:.2%} (target <= 5 %: {'met' if median <= 0.05 else 'MISSED'}); "
          f"previews/latest.png {size / 1024:.0f} KiB")
    print(f"command: python benchmarks/preview_cost.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
