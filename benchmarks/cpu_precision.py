#!/usr/bin/env python3
"""Training-step time per precision and memory layout on this CPU, side by side in one run, one thread (what a
1-CPU Ray Train worker gets), for each shipped recipe's encoder and crop.

Rows: fp32 (contiguous NCHW), fp32 channels-last, bf16 autocast, bf16 autocast channels-last (what
`segengine.precision` picks where the CPU has AMX tiles). Each figure is the median of --repeats timed
forward+backward+AdamW steps after one warm-up step, on random data of the recipe's crop and batch size. The
logit difference column is max |mode - fp32| / max |fp32| of an eval-mode forward pass (no dropout, BatchNorm
statistics fixed) from the same initial weights.

    .venv/bin/python benchmarks/cpu_precision.py [--repeats 5] [--encoders unet mobilenet mini]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import zoo
from segengine.precision import Precision, cpu_computes_bf16

# encoder -> (channels, crop, batch) of the recipe that uses it (tune_configs/isbi.yaml, the tutorial row)
CASES = {"unet": (1, 192, 4), "mini": (1, 192, 4), "mobilenet": (1, 192, 4), "resnet50": (1, 192, 4)}
MODES = [("fp32", False, False), ("fp32 channels-last", False, True), ("bf16", True, False),
         ("bf16 channels-last", True, True)]


def step_times(encoder: str, amp: bool, channels_last: bool, repeats: int) -> tuple[float, torch.Tensor]:
    channels, crop, batch = CASES.get(encoder, (3, 192, 4))
    torch.manual_seed(0)
    model = zoo.create_model(encoder, 2, in_channels=channels)
    precision = Precision(torch.device("cpu"), amp, channels_last)
    if amp and precision.dtype is None:
        raise SystemExit("this CPU has no native bf16 (AMX): segengine.precision keeps fp32 here")
    model = precision.model(model)
    x = torch.randn(batch, channels, crop, crop, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 2, (batch, crop, crop), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = precision.forward(model.eval(), x)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        logits = precision.forward(model, x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:  # the first step warms oneDNN's kernel caches
            times.append(time.perf_counter() - start)
    return statistics.median(times), first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--encoders", nargs="+", default=["unet", "mobilenet", "mini"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"training step (forward + backward + AdamW), 1 thread, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, AMX bf16: {cpu_computes_bf16()}; medians of "
          f"{a.repeats}")
    print(f"{'encoder':<10} {'crop x batch':<13} {'mode':<20} {'s/step':>7} {'speed-up':>9} {'logit diff':>11}")
    for encoder in a.encoders:
        channels, crop, batch = CASES.get(encoder, (3, 192, 4))
        base, reference = None, None
        for mode, amp, channels_last in MODES:
            seconds, logits = step_times(encoder, amp, channels_last, a.repeats)
            if base is None:
                base, reference = seconds, logits
            diff = float((logits - reference).abs().max() / reference.abs().max())
            print(f"{encoder:<10} {f'{crop}x{crop} x {batch}':<13} {mode:<20} {seconds:7.3f} {base / seconds:8.2f}x "
                  f"{diff:11.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
