"""What a plan is for: the CPUs and GPUs of this machine, or of the Ray cluster at `--address`."""

from __future__ import annotations

import os

import torch

from segengine.planning.rules import Resources
from segengine.precision import cpu_computes_bf16


def local_resources() -> Resources:
    """This machine: the CPUs this process may use, its CUDA GPUs, bf16 where the chip computes it natively."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bf16 = torch.cuda.is_bf16_supported() if gpus else cpu_computes_bf16()
    return Resources(cpus=cpus, gpus=gpus, nodes=1, bf16=bool(bf16), where="this machine")


def cluster_resources(address: str) -> Resources:
    """The Ray cluster at `address`: its CPUs and GPUs (ray.cluster_resources) and alive nodes; bf16 as this
    machine's chips compute it (the probe runs here; a cluster's own workers re-size the run as they measure)."""
    import ray

    from segengine.ray_adapter import cluster_capacity, ray_session

    with ray_session(address):
        capacity = cluster_capacity()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    local = local_resources()
    return Resources(cpus=int(capacity["CPU"]), gpus=int(capacity["GPU"]), nodes=nodes,
                     bf16=local.bf16 if not capacity["GPU"] else True, where=f"the cluster at {address}")
