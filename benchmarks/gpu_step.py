#!/usr/bin/env python3
"""The GPU checks of issue 28, torch only (a lent GPU machine has torch but no Ray), in a few minutes:

1. **Utilisation**: per encoder at its recipe crop and per-worker batch (`step_efficiency.RECIPES`), the FLOPs of
   one training step (`FlopCounterMode`), its time eager (and under `torch.compile` for `--compiled`), in the
   precision training picks on this GPU (bf16 autocast where supported, else fp16) and channels-last, against the
   datasheet's dense tensor-core peak for that precision (`PEAK_TFLOPS`, by device name) and a measured 8192^3
   matmul.
2. **The ISBI recipe's step against a plain PyTorch loop** of the same model (fp32, NCHW, Adam's default
   implementation, cross-entropy only): steps/s of each, and the ratio.
3. **Inference**: `unet` on 512 x 512, fp16/bf16 autocast + channels-last in batches of 16 against fp32 batch 1.

    python benchmarks/gpu_step.py [--steps 20] [--encoders unet,mini,...] [--compiled unet,mini] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import plugins
import zoo
from segengine.precision import Precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_efficiency import RECIPES, TrainingStep, median_seconds  # noqa: E402  (a sibling script: one step)

# dense (no sparsity) bf16/fp16 tensor-core TFLOP/s from NVIDIA's datasheets, by the first key in the device's
# name ("NVIDIA H100 80GB HBM3" is the SXM part)
PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1,
               "L4": 121.0, "A10G": 70.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}


def datasheet_peak(name: str) -> float | None:
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def matmul_rate(precision: Precision) -> float:
    size = 8192 if precision.device.type == "cuda" else 1024
    a = torch.randn(size, size, device=precision.device)
    b = torch.randn(size, size, device=precision.device)

    def product() -> None:
        with precision.autocast():
            a @ b
    return 2 * size**3 / median_seconds(product, 5)


def utilisation(encoders: list[str], steps: int, precision: Precision, peak: float | None, compiled: set[str]
                ) -> None:
    best = matmul_rate(precision)
    print(f"attainable ({precision.name} matmul): {best / 1e12:.0f} TFLOP/s; datasheet peak: "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown for this device'}\n")
    print("| encoder | crop x batch | GFLOP/step | mode | ms/step | crops/s | TFLOP/s | % of peak | % of matmul |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for encoder in encoders:
        _, crop, batch, *_ = RECIPES[encoder]
        modes = ["eager", "compiled"] if encoder in compiled else ["eager"]
        for mode in modes:
            torch.manual_seed(0)
            try:
                step = TrainingStep(encoder, precision)
            except (zoo.ZooError, ImportError) as exc:  # e.g. timm not installed on the GPU machine
                print(f"| {encoder} | skipped: {exc} |", flush=True)
                break
            with FlopCounterMode(display=False) as counter:
                step()
            if mode == "compiled":
                step.loss = torch.compile(step.loss)
                began = time.perf_counter()
                step()
                print(f"({encoder}: compiled in {time.perf_counter() - began:.0f} s)", flush=True)
            seconds = median_seconds(step, steps)
            rate = counter.get_total_flops() / seconds
            share = f"{100 * rate / peak:.1f}" if peak else "n/a"
            print(f"| {encoder} | {crop}^2 x {batch} | {counter.get_total_flops() / 1e9:.1f} | {mode} | "
                  f"{seconds * 1000:.1f} | {batch / seconds:.0f} | {rate / 1e12:.1f} | {share} | "
                  f"{100 * rate / best:.1f} |", flush=True)


def recipe_vs_plain_loop(steps: int, device: torch.device) -> None:
    torch.manual_seed(0)
    recipe = TrainingStep("unet", Precision(device, amp=True))
    _, crop, batch, channels, classes, _ = RECIPES["unet"]
    model = zoo.create_model("unet", num_classes=classes, in_channels=channels).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, channels, crop, crop, device=device)
    y = torch.randint(0, classes, (batch, crop, crop), device=device)

    def plain() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    ours, theirs = median_seconds(recipe, steps), median_seconds(plain, steps)
    print(f"\nISBI recipe's step (unet {crop}^2 x {batch}): {1 / ours:.1f} steps/s; plain PyTorch loop (fp32, NCHW, "
          f"Adam, CE): {1 / theirs:.1f} steps/s; recipe / plain {theirs / ours:.2f}x")


def inference(device: torch.device) -> None:
    model = zoo.create_model("unet", num_classes=2, in_channels=1).to(device).eval()
    fast = Precision(device, amp=True)
    fast_model = fast.model(zoo.create_model("unet", num_classes=2, in_channels=1).to(device).eval())
    single, batch16 = torch.rand(1, 1, 512, 512, device=device), torch.rand(16, 1, 512, 512, device=device)
    with torch.inference_mode():
        fp32 = median_seconds(lambda: model(single), 20)
        mixed = median_seconds(lambda: fast.forward(fast_model, batch16), 10) / 16
    print(f"\ninference, unet 512^2: fp32 batch 1 {1 / fp32:.0f} img/s; {fast.name} channels-last batch 16 "
          f"{1 / mixed:.0f} img/s; ratio {fp32 / mixed:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoders", default=",".join(RECIPES))
    parser.add_argument("--compiled", default="unet,mini",
                        help="encoders also timed under torch.compile ('' for none; each compiles for 15-100 s)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a dry run of the script itself (tiny --steps), not a measurement")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_step.py: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine")
        return 2
    plugins.autoload()
    device = torch.device(args.device)
    precision = Precision(device, amp=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    print(f"# {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {precision.name}, channels-last\n")
    utilisation(args.encoders.split(","), args.steps, precision, datasheet_peak(name),
                set(filter(None, args.compiled.split(","))))
    recipe_vs_plain_loop(args.steps, device)
    inference(device)
    print(f"\ncommand: python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
