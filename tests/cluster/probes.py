"""Small Ray drivers the cluster harness runs inside the head's namespace; each prints one JSON line.

`nodes`: wait for the expected node addresses, then run a task pinned to each alive node that reports the address
it sees from inside (proves every node really runs work under its own address).
`trainer STORAGE`: a 2-worker Ray Train V2 run, independent of the engine: a gloo all-reduce across the nodes and a
checkpoint file written by every worker to STORAGE, read back afterwards.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray


def nodes(args: argparse.Namespace) -> dict:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from segengine.cluster import alive_node_ips

    expect = set(args.expect)
    deadline = time.monotonic() + args.timeout
    while (alive := alive_node_ips()) != expect and time.monotonic() < deadline:
        time.sleep(0.5)

    @ray.remote(num_cpus=0)
    def where() -> str:
        return ray.util.get_node_ip_address()

    live = [n for n in ray.nodes() if n["Alive"]]
    seen = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote() for n in live], timeout=args.timeout)
    return {"alive": sorted(alive), "task_ips": sorted(seen),
            "declared_ips": sorted(n["NodeManagerAddress"] for n in live)}


def _train_func(config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    total = torch.tensor([float(ctx.get_world_rank() + 1)])
    dist.all_reduce(total)
    info = {"rank": ctx.get_world_rank(), "node_rank": ctx.get_node_rank(), "ip": ray.util.get_node_ip_address(),
            "sum": total.item()}
    everyone: list = [None] * ctx.get_world_size()
    dist.all_gather_object(everyone, info)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, f"rank{info['rank']}.json").write_text(json.dumps(info))
        ray.train.report({"workers": everyone}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def trainer(args: argparse.Namespace) -> dict:
    import pyarrow.fs as pafs
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.monotonic()
    result = TorchTrainer(_train_func, scaling_config=ScalingConfig(num_workers=2),
                          run_config=RunConfig(name=args.name, storage_path=args.storage)).fit()
    fs, path = result.checkpoint.filesystem, result.checkpoint.path
    files = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))
    written = [json.loads(fs.open_input_stream(f"{path}/{name}").read()) for name in files]
    return {"workers": result.metrics["workers"], "checkpoint_path": path, "checkpoint_files": files,
            "written": written, "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    sub = parser.add_subparsers(dest="probe", required=True)
    p = sub.add_parser("nodes")
    p.add_argument("--expect", nargs="+", default=[])
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("trainer")
    p.add_argument("storage")
    p.add_argument("--name", default="probe")
    args = parser.parse_args()
    ray.init(address=args.address, logging_level="ERROR")
    print(json.dumps({"nodes": nodes, "trainer": trainer}[args.probe](args)), flush=True)


if __name__ == "__main__":
    main()
