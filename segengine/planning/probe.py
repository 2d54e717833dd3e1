"""The probe: real training steps of a candidate recipe, timed on this machine, so that the plan's step budget
comes from measurement, not a guess.

It builds what a worker builds (`segengine.worker`: the training set with its augmentation and data loading, the
model, the optimizer, the loss, the precision) on the real training images, runs a few warm-up steps, then times
steps with the thread count a worker will have, and one validation window's forward pass.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader

import segdata
import zoo
from segengine.config import TrainConfig
from segengine.losses import SegmentationLoss
from segengine.precision import Precision
from segengine.worker import build_optimizer, make_train_set, normalization

WARMUP_STEPS = 2


@dataclass(frozen=True)
class ProbeResult:
    """Seconds per training step (data included) and per validation window of one candidate."""

    encoder: str
    crop: tuple[int, int]
    batch: int
    threads: int
    precision: str
    step_s: float  # median over the timed steps
    window: tuple[int, int]
    window_s: float  # one forward pass of one validation window
    steps_timed: int
    seconds: float  # the probe's own wall time

    def to_dict(self) -> dict:
        return asdict(self)


def probe(cfg: TrainConfig, samples: Sequence[segdata.Sample], meta: segdata.DatasetMeta, *, threads: int,
          steps: int = 6, max_seconds: float = 20.0) -> ProbeResult:
    """Time `steps` training steps of `cfg` (after warm-up; fewer when they take over `max_seconds`) and one
    validation window, on `threads` CPU threads (or the GPU when the recipe would use one)."""
    start = time.perf_counter()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.use_gpu != "no" else "cpu")
        torch.manual_seed(cfg.seed)
        model = zoo.create_model(cfg.encoder, meta.num_classes, in_channels=meta.in_channels,
                                 **cfg.encoder_kwargs)
        norm = normalization(cfg, model.spec, meta.in_channels)
        precision = Precision(device, cfg.amp, cfg.channels_last)
        model = precision.model(model.to(device))
        train_set = make_train_set(cfg, list(samples), meta, norm)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=0)
        optimizer, _ = build_optimizer(model, cfg, max(1, len(loader)))
        loss_fn = SegmentationLoss(cfg.loss, meta.num_classes).to(device)
        times = _time_steps(model, loader, optimizer, loss_fn, precision, device, steps, max_seconds)
        window_s = _time_window(model, precision, device, meta.in_channels, cfg.window)
    finally:
        torch.set_num_threads(saved_threads)
    return ProbeResult(cfg.encoder, tuple(cfg.input_size), cfg.batch_size, threads, precision.name,
                       statistics.median(times), tuple(cfg.window), window_s, len(times),
                       time.perf_counter() - start)


def _time_steps(model, loader, optimizer, loss_fn, precision: Precision, device: torch.device, steps: int,
                max_seconds: float) -> list[float]:
    model.train()
    times: list[float] = []
    began = time.perf_counter()
    batches = iter(loader)
    for i in range(WARMUP_STEPS + steps):
        tick = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        loss = loss_fn(precision.forward(model, x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - tick)
            if time.perf_counter() - began > max_seconds and len(times) >= 2:
                break
    return times


@torch.no_grad()
def _time_window(model, precision: Precision, device: torch.device, channels: int, window: tuple[int, int]
                 ) -> float:
    model.eval()
    x = torch.zeros(1, channels, *window, device=device)
    precision.forward(model, x)  # warm-up
    tick = time.perf_counter()
    precision.forward(model, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tick
