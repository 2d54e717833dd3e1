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

    python benchmarks/predict_throughput.py --cluster [--encoders mini] [--copies 4] [--repeats 2]   (as root)

--cluster compares on the tests' two-node cluster instead (tests/cluster/netns_cluster.py: two Ray nodes of 1 CPU
each in network namespaces, token auth): `predict --workers 2 --address HEAD` (one actor per node) against one
`predict` process pinned to 1 CPU, both run as drivers on the head node over inputs in the folder both nodes see.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def link_inputs(folder: Path, copies: int) -> list[str]:
    """`copies` links to each ISBI test section in `folder`, sorted."""
    sections = sorted((ISBI / "Test").glob("*.png"))
    if not sections:
        raise SystemExit(f"no test images in {ISBI / 'Test'}")
    folder.mkdir(parents=True)
    for copy in range(copies):
        for section in sections:
            (folder / f"{copy}-{section.name}").symlink_to(section)
    return sorted(str(p) for p in folder.iterdir())


def alternating(repeats: int):
    """(round, worker counts in the order that round runs them): 1 then 2, then 2 then 1, ..."""
    for round_ in range(repeats):
        yield round_, ([1, 2] if round_ % 2 == 0 else [2, 1])


def run_on_cluster(a: argparse.Namespace) -> None:
    """1 process pinned to 1 CPU against 2 Ray Data actors on the two-node test cluster, alternating, medians."""
    sys.path.insert(0, str(REPO / "tests" / "cluster"))
    from netns_cluster import NetnsCluster, missing_capabilities, remove_stale_namespaces

    problems = missing_capabilities()
    if problems:
        raise SystemExit("--cluster cannot run here: " + "; ".join(problems))
    remove_stale_namespaces()
    root = Path(tempfile.mkdtemp(prefix="uzc-", dir="/tmp"))  # short: Ray's socket paths live below it
    cluster = NetnsCluster(root)
    rows = []
    try:
        cluster.start()
        images = link_inputs(cluster.shared / "in", a.copies)
        for encoder in a.encoders:
            checkpoint = make_checkpoint(encoder, cluster.shared / "runs")
            figures: dict[int, list[dict]] = {1: [], 2: []}
            for round_, order in alternating(a.repeats):
                for workers in order:
                    out = cluster.shared / f"out-{encoder}-{round_}-{workers}"
                    argv = ["python", "launch.py", "predict", checkpoint, str(cluster.shared / "in"), "--out",
                            str(out), "--device", "cpu", "--workers", str(workers)]
                    if workers == 1:  # one process on one core, as a 1-CPU node would run it
                        argv = ["taskset", "-c", "0", *argv]
                    else:
                        argv += ["--address", cluster.gcs_address]
                    done = cluster.run(argv, env={"OMP_NUM_THREADS": "1"} if workers == 1 else None)
                    if done.returncode:
                        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
                    summary = json.loads((out / "summary.json").read_text())
                    assert summary["written"] == len(images), summary
                    figures[workers].append(summary)
                    placed = f", images per node {summary['nodes']}" if workers > 1 else ""
                    print(f"{encoder} round {round_ + 1}, workers {workers}: {summary['images_per_s']:.2f} img/s "
                          f"({summary['seconds']:.1f} s{placed})", flush=True)
            one, pool = (statistics.median(s["images_per_s"] for s in figures[w]) for w in (1, 2))
            nodes = sorted({ip for s in figures[2] for ip in s.get("nodes", {})})
            rows.append((encoder, one, pool, nodes))
    finally:
        cluster.teardown()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{len(images)} ISBI test sections 512 x 512, sliding windows 256 px / overlap 0.25, fp32; two Ray nodes "
          f"of 1 CPU in network namespaces on {cpu_name()}; {a.repeats} alternating rounds, medians")
    print(f"{'encoder':<10} {'1 process x 1 CPU':>18} {'Ray Data 2 nodes x 1 CPU':>25} {'ratio':>6}  nodes used")
    for encoder, one, pool, nodes in rows:
        print(f"{encoder:<10} {one:>12.2f} img/s {pool:>19.2f} img/s {pool / one:>5.2f}x  {', '.join(nodes)}")
    print("target (issue 14): Ray Data on the 2-node cluster >= 1.7x a 1-CPU single process")


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["mini", "mobilenet"])
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cluster", action="store_true", help="compare on the two-node network-namespace cluster")
    a = ap.parse_args()
    if a.cluster:
        run_on_cluster(a)
        return
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="predict-throughput-") as tmp:
        root = Path(tmp)
        images = link_inputs(root / "in", a.copies)
        for encoder in a.encoders:
            checkpoint = make_checkpoint(encoder, root / "runs")
            here, on_ray, ray_start = [], [], []
            for round_, order in alternating(a.repeats):
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
    print(f"\n{len(images)} ISBI test sections 512 x 512, sliding windows 256 px / overlap 0.25, fp32 unless the CPU "
          f"has AMX; {a.repeats} alternating rounds, medians; {cpu_name()}, {torch.get_num_threads()} threads")
    print(f"{'encoder':<10} {'1 process x 2 threads':>22} {'Ray Data 2 x 1 CPU':>19} {'ratio':>6} "
          f"{'without Ray start':>18} {'ratio':>6} {'Ray start s':>11}")
    for encoder, here, on_ray, steady, start in rows:
        print(f"{encoder:<10} {here:>18.2f} img/s {on_ray:>13.2f} img/s {on_ray / here:>5.2f}x "
              f"{steady:>12.2f} img/s {steady / here:>5.2f}x {start:>11.1f}")
    print("target (issue 14): Ray Data with 2 CPU actors >= 0.9x one process with 2 threads")


if __name__ == "__main__":
    main()
