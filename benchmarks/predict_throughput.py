"""Prediction throughput on this machine, side by side in one run: one process with 2 threads against a pool of
2 Ray Data predictor actors with 1 CPU each (`predict --workers 2`), on the ISBI test sections (512 x 512) with the
ISBI recipe's sliding windows (256 px, overlap 0.25), for `mini` and `mobilenet`.

Each model is a checkpoint of the recipe trained for one tiny epoch (the weights do not change the cost). The setups
alternate over --repeats rounds and every figure is a median. Ray Data's figure is end to end (a Ray started for
the call, actors started, model built in each) and, separately, without the Ray start-up that a long-lived cluster
pays once.

    python benchmarks/predict_throughput.py [--encoders mini mobilenet] [--copies 2] [--repeats 2]

--copies N predicts each of the 30 sections N times (links with other names), so that the fixed start-up of the
actor pool (Ray started, actor processes and imports, the model built) weighs less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from segengine.inference import predict

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012"


def make_checkpoint(encoder: str, storage: Path) -> str:
    """The ISBI recipe's checkpoint for `encoder` after one epoch of 8 crops, in this process (no Ray)."""
    argv = [sys.executable, "launch.py", "train", "--config", "isbi", "--data", str(ISBI), "--encoder", encoder,
            "--workers", "0", "--epochs", "1", "--samples-per-epoch", "8", "--val-every", "1", "--min-steps", "0",
            "--storage", str(storage), "--name", encoder]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"training the {encoder} checkpoint failed:\n{done.stderr[-3000:]}")
    return str(storage / encoder)


def run(checkpoint: str, images: list[str], out: Path, workers: int) -> dict:
    result = predict(checkpoint, images, str(out), workers=workers, verbose=False, device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == len(images) and not result.skipped, summary
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["mini", "mobilenet"])
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(2)
    sections = sorted((ISBI / "Test").glob("*.png"))
    if not sections:
        raise SystemExit(f"no test images in {ISBI / 'Test'}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="predict-throughput-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        for copy in range(a.copies):
            for section in sections:
                (root / "in" / f"{copy}-{section.name}").symlink_to(section)
        images = sorted(str(p) for p in (root / "in").iterdir())
        for encoder in a.encoders:
            checkpoint = make_checkpoint(encoder, root / "runs")
            here, on_ray, ray_start = [], [], []
            for round_ in range(a.repeats):
                order = [1, 2] if round_ % 2 == 0 else [2, 1]
                for workers in order:
                    summary = run(checkpoint, images, root / f"out-{encoder}-{round_}-{workers}", workers)
                    if workers == 1:
                        here.append(summary["images_per_s"])
                    else:
                        on_ray.append(summary["images_per_s"])
                        seconds = summary["seconds"] - summary["ray_start_s"]
                        ray_start.append((summary["written"] / seconds, summary["ray_start_s"]))
                    print(f"{encoder} round {round_ + 1}, workers {workers}: {summary['images_per_s']:.2f} img/s "
                          f"({summary['seconds']:.1f} s)", flush=True)
            rows.append((encoder, statistics.median(here), statistics.median(on_ray),
                         statistics.median(r for r, _ in ray_start), statistics.median(s for _, s in ray_start)))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")
    print(f"\n{len(images)} ISBI test sections 512 x 512, sliding windows 256 px / overlap 0.25, fp32 unless the CPU "
          f"has AMX; {a.repeats} alternating rounds, medians; {cpu}, {torch.get_num_threads()} threads")
    print(f"{'encoder':<10} {'1 process x 2 threads':>22} {'Ray Data 2 x 1 CPU':>19} {'ratio':>6} "
          f"{'without Ray start':>18} {'ratio':>6} {'Ray start s':>11}")
    for encoder, here, on_ray, steady, start in rows:
        print(f"{encoder:<10} {here:>18.2f} img/s {on_ray:>13.2f} img/s {on_ray / here:>5.2f}x "
              f"{steady:>12.2f} img/s {steady / here:>5.2f}x {start:>11.1f}")
    print("target (issue 14): Ray Data with 2 CPU actors >= 0.9x one process with 2 threads")


if __name__ == "__main__":
    main()
