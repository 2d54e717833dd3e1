"""The probe: real training steps of a candidate recipe, timed on this machine, so that the plan's step budget
comes from measurement, not a guess.

It builds what a worker builds (`segengine.worker`: the training set with its augmentation and data loading, the
model, the optimizer, the loss, the precision) on the real training images, runs a few warm-up steps, then times
steps with the thread count a worker will have, and the validation of one real validation image (reading it,
sliding windows, loss) as a worker validates.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import DataLoader

import segdata
import zoo
from segdata.files import write_atomically
from segengine.config import TrainConfig
from segengine.losses import SegmentationLoss
from segengine.precision import Precision
from segengine.windows import sliding_probabilities
from segengine.worker import build_optimizer, make_train_set, normalization

WARMUP_STEPS = 2


@dataclass(frozen=True)
class ProbeResult:
    """Seconds per training step (data included) and per validation image of one candidate."""

    encoder: str
    crop: tuple[int, int]
    batch: int
    threads: int
    precision: str
    step_s: float  # median over the timed steps
    window: tuple[int, int]
    val_image_s: float  # validating one image: read, normalise, sliding windows, loss
    steps_timed: int
    seconds: float  # the probe's own wall time
    cached: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("cached")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ProbeResult:
        return cls(**{**data, "crop": tuple(data["crop"]), "window": tuple(data["window"])})


def _machine() -> str:
    """What a probe's timing depends on besides the recipe: the chip, the torch build, the device."""
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
               platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return f"{platform.node()}|{cpu}|{gpu}|torch {torch.__version__}"


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def cached_probe(cfg: TrainConfig, samples: Sequence[segdata.Sample], val_sample: segdata.Sample,
                 meta: segdata.DatasetMeta, *, threads: int, dataset_digest: str, cache_dir: str, steps: int = 6
                 ) -> ProbeResult:
    """`probe`, read back when the same recipe was probed on the same data, machine and thread count before (so a
    second plan of a dataset takes seconds, and plans the same)."""
    key = json.dumps([cfg.to_dict(), threads, steps, dataset_digest, val_sample.name, _machine()], sort_keys=True,
                     default=str)
    path = os.path.join(cache_dir, "probes", hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ".json")
    if os.path.isfile(path):
        with open(path) as f:
            return ProbeResult(**{**ProbeResult.from_dict(json.load(f)).to_dict(), "cached": True})
    result = probe(cfg, samples, val_sample, meta, threads=threads, steps=steps)
    write_atomically(path, json.dumps(result.to_dict()).encode())
    return result


def probe(cfg: TrainConfig, samples: Sequence[segdata.Sample], val_sample: segdata.Sample,
          meta: segdata.DatasetMeta, *, threads: int, steps: int = 6, max_seconds: float = 20.0) -> ProbeResult:
    """Time `steps` training steps of `cfg` (after warm-up; fewer when they take over `max_seconds`) and the
    validation of `val_sample`, on `threads` CPU threads (or the GPU when the recipe would use one)."""
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
        val_image_s = _time_validation(model, cfg, norm, precision, device, val_sample, meta, loss_fn)
    finally:
        torch.set_num_threads(saved_threads)
    return ProbeResult(cfg.encoder, tuple(cfg.input_size), cfg.batch_size, threads, precision.name,
                       statistics.median(times), tuple(cfg.window), val_image_s, len(times),
                       time.perf_counter() - start)


def _time_steps(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                loss_fn: SegmentationLoss, precision: Precision, device: torch.device, steps: int,
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
def _time_validation(model: torch.nn.Module, cfg: TrainConfig, norm: zoo.Normalization, precision: Precision,
                     device: torch.device, sample: segdata.Sample, meta: segdata.DatasetMeta,
                     loss_fn: SegmentationLoss) -> float:
    """One validation image as the worker validates it (`Trainer._validate`): read and normalise it, blended
    sliding windows at the recipe's resolution (or the letterbox), the loss."""
    model.eval()
    forward = functools.partial(precision.forward, model)
    tick = time.perf_counter()
    dataset = segdata.SegmentationDataset([sample], meta, segdata.NativeTransform(norm.mean, norm.std, norm.clip)
                                          if cfg.validation == "sliding" else
                                          segdata.EvalTransform(cfg.input_size, norm.mean, norm.std, norm.clip),
                                          train=False)
    x, y = (t[None].to(device) for t in dataset[0])
    if cfg.validation == "sliding":
        pad = segdata.normalised_grey(norm.mean, norm.std, norm.clip)
        probs = sliding_probabilities(forward, x[0], cfg.window, cfg.val_overlap, meta.num_classes, pad,
                                      mirror=cfg.val_mirror, resample=cfg.resample)
        logits = torch.log(probs.clamp_min(1e-8))[None]
    else:
        logits = forward(x)
    loss_fn(logits, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tick
