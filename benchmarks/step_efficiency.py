"""How close a training step comes to what the chip can do: per encoder at its recipe's crop and per-worker batch,
the FLOPs of one step (forward + loss + backward, counted by `torch.utils.flop_counter.FlopCounterMode`: 2 per
multiply-add of convolutions and matrix products), the step's time in the recipes' configuration (one thread, as a
Ray Train worker with one CPU runs it; bf16 autocast and channels-last where the CPU computes bf16, else fp32;
training's AdamW), and the achieved FLOP/s against two ceilings of one core:

- the **theoretical peak** of its precision: AMX (bf16) 1024 FLOP per cycle per core (a TDPBF16PS tile product
  is 16 x 16 x 32 multiply-adds, one per 16 cycles), AVX-512 fp32 64 (two 16-lane FMA units), times the clock
  (the TSC frequency the kernel reports; turbo may run above it, so the percentages are upper bounds);
- the **attainable peak**: a large matrix product (2048^3) in the same precision on one thread, measured here.

    python benchmarks/step_efficiency.py [--steps 5] [--encoders unet,mini,...]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import plugins
import zoo
from segengine.config import TrainConfig
from segengine.losses import SegmentationLoss
from segengine.precision import Precision
from segengine.worker import build_optimizer

# encoder: (recipe, crop, per-worker batch, input channels, classes, loss): tune_configs/*.yaml
RECIPES = {
    "unet": ("isbi", 192, 4, 1, 2, "ce+dice"),
    "mini": ("default", 96, 8, 3, 2, "ce"),
    "mobilenet": ("tutorial", 256, 4, 3, 2, "ce"),
    "timm-resnet18": ("camvid", 256, 4, 3, 11, "ce+dice"),
    "resnet50": ("cluster", 512, 8, 3, 2, "ce"),
}
FLOP_PER_CYCLE = {"bf16 autocast": 1024, "fp32": 64}  # per core: AMX bf16 tiles, AVX-512 fp32 FMA


def clock_hz() -> tuple[float, str]:
    """The TSC frequency from the kernel's log, else the cpuinfo MHz, else 2.6 GHz stated as a guess."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"tsc: Detected ([0-9.]+) MHz", log)
        if found:
            return float(found.group(1)) * 1e6, "TSC frequency (dmesg)"
    except (OSError, subprocess.SubprocessError):
        pass
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"cpu MHz\s*:\s*([0-9.]+)", info)
    if found:
        return float(found.group(1)) * 1e6, "cpu MHz (/proc/cpuinfo)"
    return 2.6e9, "unknown clock: 2.6 GHz assumed"


def attainable(precision: Precision, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size^3 matrix product in `precision` on this thread (median of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = []
    for _ in range(repeats + 1):
        with precision.autocast():
            began = time.perf_counter()
            (a @ b).sum().item()
            times.append(time.perf_counter() - began)
    return 2 * size**3 / statistics.median(times[1:])


class TrainingStep:
    """One optimizer step of `encoder` at its recipe's crop and per-worker batch as a training worker runs it
    (bf16/channels-last per `precision`, the optimizer of `segengine.worker.build_optimizer`)."""

    def __init__(self, encoder: str, precision: Precision) -> None:
        _, crop, batch, channels, classes, loss_name = RECIPES[encoder]
        self.batch = batch
        model = zoo.create_model(encoder, num_classes=classes, in_channels=channels).to(precision.device)
        self.model = precision.model(model).train()
        loss_fn = SegmentationLoss(loss_name, classes)
        self.optimizer, _ = build_optimizer(self.model, TrainConfig(optimizer="adamw"), steps_per_epoch=1)
        self.x = torch.rand(batch, channels, crop, crop, device=precision.device)
        self.y = torch.randint(0, classes, (batch, crop, crop), device=precision.device)
        self.loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            lambda x, y: loss_fn(precision.forward(self.model, x), y))

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.x, self.y).backward()
        self.optimizer.step()


def median_seconds(step: Callable[[], None], steps: int) -> float:
    """Median wall time of `steps` calls after one warm-up call (oneDNN/cuDNN primitives built); on a GPU each
    call is waited for."""
    def timed() -> float:
        began = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - began

    timed()
    times = [timed() for _ in range(steps)]
    return statistics.median(times)


def step_cost(encoder: str, steps: int, precision: Precision) -> dict:
    step = TrainingStep(encoder, precision)
    with FlopCounterMode(display=False) as counter:
        step()
    seconds = median_seconds(step, steps)
    return {"flops": counter.get_total_flops(), "seconds": seconds, "crops_per_s": step.batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--encoders", default=",".join(RECIPES))
    args = parser.parse_args()
    plugins.autoload()  # timm-*, smp-*
    torch.set_num_threads(1)
    precision = Precision(torch.device("cpu"), amp=True)
    hz, where = clock_hz()
    peak = FLOP_PER_CYCLE[precision.name] * hz
    best = attainable(precision)
    print(f"one core, {precision.name}, clock {hz / 1e9:.2f} GHz ({where}): theoretical peak {peak / 1e9:.0f} "
          f"GFLOP/s ({FLOP_PER_CYCLE[precision.name]} FLOP/cycle), attainable (2048^3 matmul) {best / 1e9:.0f} "
          f"GFLOP/s", flush=True)
    print("\n| encoder | recipe | crop x batch | GFLOP/step | ms/step | crops/s | GFLOP/s | % of peak | % of matmul |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for encoder in args.encoders.split(","):
        recipe, crop, batch, *_ = RECIPES[encoder]
        r = step_cost(encoder, args.steps, precision)
        rate = r["flops"] / r["seconds"]
        print(f"| {encoder} | {recipe} | {crop}^2 x {batch} | {r['flops'] / 1e9:.1f} | {r['seconds'] * 1000:.0f} | "
              f"{r['crops_per_s']:.1f} | {rate / 1e9:.0f} | {100 * rate / peak:.1f} | {100 * rate / best:.1f} |",
              flush=True)
    print(f"\ncommand: python benchmarks/step_efficiency.py --steps {args.steps}")


if __name__ == "__main__":
    main()
