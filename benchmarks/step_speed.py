#!/usr/bin/env python3
"""What makes a training step faster on this machine, side by side in one run (issue 28).

1. **One worker's step** (one thread, as a 1-CPU Ray Train worker runs it; the encoder's recipe crop and batch;
   bf16 autocast + channels-last where the CPU computes bf16), interleaved rounds, medians:
   - *before*: torch's per-tensor optimizer loop and torch's own upsampling backward (training until issue 28);
   - *+ upsampling gradient layout*: `zoo._layers.upsample_nearest` (the decoders' upsampling);
   - *+ fused optimizer*: one kernel over all tensors = **what training runs now**;
   - *now, NCHW*: channels-last off;
   - *now + torch.compile* of model and loss (inductor; the compile's seconds printed apart).
2. **The data-parallel step** of the ISBI recipe on Ray Train, 2 workers x 1 CPU (gloo), training's step: DDP as
   training wraps it; with `gradient_as_bucket_view`; with 100 MB buckets; with bf16 gradient compression; and
   without any gradient exchange (two independent workers: the floor DDP could reach).
3. With `--recipe-against GIT_REF`: **the ISBI recipe itself** (`launch.py train`, 2 workers x 1 CPU, a few epochs)
   from a worktree at GIT_REF and from this tree, alternating rounds: crops/s of each and the ratio.

    python benchmarks/step_speed.py [--encoders unet,mini] [--steps 5] [--rounds 3] [--no-steps]
                                    [--ddp-steps 20] [--ddp-rounds 2] [--no-ddp]
                                    [--recipe-against GIT_REF [--recipe-rounds 3] [--recipe-epochs 3]]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import plugins
import zoo._layers
from segengine.precision import Precision, cpu_computes_bf16

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_efficiency import TrainingStep, median_seconds  # noqa: E402  (sibling scripts: one step, one timer,
from vs_nnunet import cpu_name  # noqa: E402                            one CPU name)


def torch_upsampling(x: torch.Tensor, size: tuple[int, int] | None = None, scale_factor: int | None = None
                     ) -> torch.Tensor:
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")


def per_tensor_loop(step: TrainingStep) -> TrainingStep:
    for group in step.optimizer.param_groups:  # read at every step(): torch's default on CPU
        group["fused"], group["foreach"] = False, False
    return step


def variants(encoder: str, precision: Precision, compile_seconds: dict[str, float]
             ) -> dict[str, Callable[[], None]]:
    """name -> one step; each variant its own model and optimizer, the same seed."""

    def native(step: TrainingStep) -> Callable[[], None]:
        def run() -> None:
            with mock.patch.object(zoo._layers, "upsample_nearest", torch_upsampling):
                step()
        return run

    def build(p: Precision = precision) -> TrainingStep:
        torch.manual_seed(0)
        return TrainingStep(encoder, p)

    compiled = build()
    compiled.loss = torch.compile(compiled.loss)
    began = time.perf_counter()
    compiled()
    compile_seconds[encoder] = time.perf_counter() - began
    nchw = Precision(precision.device, amp=precision.dtype is not None, channels_last=False)
    return {"before (per-tensor optimizer, torch's upsampling backward)": native(per_tensor_loop(build())),
            "+ upsampling gradient layout": per_tensor_loop(build()),
            "+ fused optimizer = training now": build(),
            "now, NCHW instead of channels-last": build(nchw),
            "now + torch.compile (model and loss)": compiled}


def single_worker(encoders: list[str], steps: int, rounds: int) -> None:
    precision = Precision(torch.device("cpu"), amp=True)
    print(f"## one worker's step: 1 thread, {precision.name}, median of {rounds} interleaved rounds of "
          f"{steps} steps\n")
    print("| encoder | variant | ms/step | x before |")
    print("| --- | --- | ---: | ---: |")
    compile_seconds: dict[str, float] = {}
    for encoder in encoders:
        steps_by_name = variants(encoder, precision, compile_seconds)
        timings: dict[str, list[float]] = {name: [] for name in steps_by_name}
        for _ in range(rounds):
            for name, step in steps_by_name.items():
                timings[name].append(median_seconds(step, steps))
        before = statistics.median(next(iter(timings.values())))
        for name, seconds in timings.items():
            ms = statistics.median(seconds)
            print(f"| {encoder} | {name} | {ms * 1000:.0f} | {before / ms:.2f} |", flush=True)
    print("\ntorch.compile's first step (compilation): "
          + ", ".join(f"{e} {s:.0f} s" for e, s in compile_seconds.items()))


def ddp_worker(config: dict) -> None:
    """One Ray Train worker: the ISBI recipe's step under DDP with `config["ddp"]`; rank 0 writes its median."""
    import ray.train
    import ray.train.torch
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.set_num_threads(1)
    torch.manual_seed(0)
    step = TrainingStep("unet", Precision(torch.device("cpu"), amp=True))
    strategy = None if config["ddp"] is None else "ddp"
    net = ray.train.torch.prepare_model(step.model, move_to_device=False, parallel_strategy=strategy,
                                        parallel_strategy_kwargs=config["ddp"] or None)
    if config["bf16_hook"]:
        net.register_comm_hook(None, default_hooks.bf16_compress_hook)
    step.model = net  # the step's loss calls the wrapped model
    seconds = median_seconds(step, config["steps"])
    if ray.train.get_context().get_world_rank() == 0:  # Train V2's Result keeps metrics of checkpoints only
        Path(config["out"]).write_text(str(seconds))


def data_parallel(steps: int, rounds: int) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    setups = {"DDP as training wraps it": ({}, False),
              "gradient_as_bucket_view": ({"gradient_as_bucket_view": True}, False),
              "bucket_cap_mb 100 (one bucket)": ({"bucket_cap_mb": 100}, False),
              "bf16 gradient compression": ({}, True),
              "no gradient exchange (floor)": (None, False)}
    here = str(Path(__file__).resolve().parent)  # the workers import the sibling script too
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"\n## the ISBI recipe's data-parallel step: Ray Train, 2 workers x 1 CPU (gloo), rank 0's median of "
          f"{steps} steps, median of {rounds} interleaved rounds\n")
    timings: dict[str, list[float]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory(prefix="unet-zoo-step-speed-") as storage:
        for round_ in range(rounds):
            for index, (name, (kwargs, hook)) in enumerate(setups.items()):
                out = Path(storage) / f"{round_}-{index}.txt"
                config = {"ddp": kwargs, "bf16_hook": hook, "steps": steps, "out": str(out)}
                result = TorchTrainer(ddp_worker, train_loop_config=config,
                                      scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                                      run_config=RunConfig(storage_path=storage, name=f"{round_}-{index}")).fit()
                if result.error is not None:
                    raise SystemExit(f"{name}: {result.error}")
                timings[name].append(float(out.read_text()))
    ray.shutdown()
    print("| setup | ms/step | crops/s (2 x 4 per step) | x DDP as training wraps it | rounds, ms |")
    print("| --- | ---: | ---: | ---: | --- |")
    base = statistics.median(timings["DDP as training wraps it"])
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median * 1000:.0f} | {8 / median:.1f} | {base / median:.2f} | "
              f"{' '.join(f'{s * 1000:.0f}' for s in seconds)} |", flush=True)


def recipe_against(ref: str, rounds: int, epochs: int) -> None:
    """The ISBI recipe itself (`launch.py train`, 2 Ray Train workers x 1 CPU, `epochs` epochs) from a git worktree
    at `ref` and from this tree, alternating; crops/s is each run's median over its epochs but the first."""
    print(f"\n## the ISBI recipe on Ray Train (`launch.py train --config tune_configs/isbi.yaml --epochs {epochs}`), "
          f"{ref} against this tree, {rounds} alternating rounds\n")
    with tempfile.TemporaryDirectory(prefix="unet-zoo-step-speed-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), ref], cwd=REPO, check=True,
                       capture_output=True)
        trees = {ref: before, "this tree": REPO}
        rates: dict[str, list[float]] = {name: [] for name in trees}
        try:
            for round_ in range(rounds):
                for index, (name, tree) in enumerate(trees.items()):
                    run = f"round{round_}-{index}"
                    subprocess.run([sys.executable, "launch.py", "train", "--config", "tune_configs/isbi.yaml",
                                    "--data", str(ISBI), "--epochs", str(epochs), "--storage", tmp, "--name", run],
                                   cwd=tree, check=True, capture_output=True)
                    with open(Path(tmp) / run / "history.csv") as f:
                        per_epoch = [float(row["images_per_s"]) for row in csv.DictReader(f)][1:]
                    rates[name].append(statistics.median(per_epoch))
                    print(f"round {round_ + 1} {name}: {rates[name][-1]:.2f} crops/s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)
    old, new = (statistics.median(rates[name]) for name in trees)
    print(f"\nmedian crops/s: {ref} {old:.2f}, this tree {new:.2f}: **{new / old:.2f}x**")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default="unet,mini")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ddp-steps", type=int, default=20)
    parser.add_argument("--ddp-rounds", type=int, default=2)
    parser.add_argument("--no-ddp", action="store_true", help="skip the Ray Train section")
    parser.add_argument("--recipe-against", metavar="GIT_REF",
                        help="also train the ISBI recipe from GIT_REF and from this tree, alternating")
    parser.add_argument("--recipe-rounds", type=int, default=3)
    parser.add_argument("--recipe-epochs", type=int, default=3)
    parser.add_argument("--no-steps", action="store_true", help="skip the one-worker step section")
    args = parser.parse_args()
    plugins.autoload()
    torch.set_num_threads(1)
    print(f"# {cpu_name()}, {os.cpu_count()} cores, "
          f"AMX (bf16) {'yes' if cpu_computes_bf16() else 'no'}, torch {torch.__version__}\n")
    if not args.no_steps:
        single_worker(args.encoders.split(","), args.steps, args.rounds)
    if not args.no_ddp:
        data_parallel(args.ddp_steps, args.ddp_rounds)
    if args.recipe_against:
        recipe_against(args.recipe_against, args.recipe_rounds, args.recipe_epochs)
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
