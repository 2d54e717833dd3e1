"""The per-worker training function: the same code under `launch.py train`, inside a Tune trial, or in-process.

`train_func(config)` takes the resolved `TrainConfig` as a dict plus a `_run` entry (run folder, reporting mode,
plugin modules) and reports once per epoch through a `Reporter`. Everything random derives from the seed, so a rerun
gives the same batches, and a resumed run continues the epoch count, the learning-rate schedule and the history.
"""

from __future__ import annotations

import functools
import math
import random
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

import plugins
import segdata
import zoo
from segengine.artifacts import RunArtifacts
from segengine.cluster import redact
from segengine.config import TrainConfig
from segengine.losses import SegmentationLoss
from segengine.metrics import MetricAccumulator
from segengine.reporting import Reporter, make_reporter


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, a dataset too small); one line for the CLI."""

    user_error = True


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if value != value:  # NaN never improves
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _lr_lambdas(cfg: TrainConfig):
    """Per-epoch LR factors: lr0 * decay^epoch; the encoder group is held at 0 during freeze epochs."""
    decay, freeze = cfg.lr_decay, cfg.freeze_epochs
    return [lambda e: 0.0 if e < freeze else decay ** e, lambda e: decay ** e]


def build_optimizer(model: zoo.SegmentationModel, cfg: TrainConfig):
    enc = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    opt = torch.optim.Adam([{"params": enc}, {"params": rest}], lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambdas(cfg))


def _loader_workers(cfg: TrainConfig) -> int:
    """Loader processes and torch threads share the worker's CPUs: 1 CPU -> load in the main process."""
    return cfg.loader_workers if cfg.loader_workers is not None else max(0, cfg.cpus_per_worker - 1)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))


def manifest_for(cfg: TrainConfig, meta: segdata.DatasetMeta, model: zoo.SegmentationModel, norm: zoo.Normalization,
                 epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """What inference needs to rebuild the model from the checkpoint alone, plus the resolved config."""
    import importlib.metadata as md

    def version(dist_name: str) -> str | None:
        try:
            return md.version(dist_name)
        except md.PackageNotFoundError:
            return None

    return {
        "schema_version": cfg.schema_version, "encoder": cfg.encoder, "num_classes": meta.num_classes,
        "class_names": list(meta.classes), "in_channels": meta.in_channels, "input_size": list(cfg.input_size),
        "normalization": {"name": norm.name, "mean": list(norm.mean), "std": list(norm.std)},
        "label_mode": meta.label_mode, "colors": [list(c) for c in meta.colors], "dataset": meta.to_dict(),
        "plugins": list(cfg.plugins), "model_kwargs": dict(model.model_kwargs), "config": redact(cfg.to_dict()),
        "epoch": epoch, "metrics": metrics,
        "versions": {d: version(d) for d in ("unet-zoo", "torch", "ray", "timm", "segmentation-models-pytorch")},
    }


def _val_shard(n: int, rank: int, world: int) -> list[int]:
    """Every validation sample exactly once across workers (a DistributedSampler would pad with repeats)."""
    return list(range(rank, n, world))


def train_func(config: dict[str, Any]) -> None:
    """Ray Train worker function (also called directly in-process)."""
    run = config["_run"]
    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if k != "_run"})
    reporter = make_reporter(run["reporter"], run["run_dir"], cfg.keep_checkpoints, cfg.metric, cfg.mode)
    plugins.autoload()
    from segengine.training import materialize_plugins

    plugins.load_plugins(materialize_plugins(run.get("plugin_sources") or {}))
    Trainer(cfg, reporter, verbose=run.get("verbose", True)).fit()


class Trainer:
    """One worker's view of a run: data shards, model, optimizer, epochs, metrics, checkpoints."""

    def __init__(self, cfg: TrainConfig, reporter: Reporter, verbose: bool = True):
        self.cfg, self.reporter, self.verbose = cfg, reporter, verbose
        self.rank, self.world = reporter.world_rank, reporter.world_size
        self.use_gpu = torch.cuda.is_available() and cfg.use_gpu != "no"
        self.device = reporter.device(self.use_gpu)
        torch.set_num_threads(max(1, cfg.cpus_per_worker - _loader_workers(cfg)))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)

        root = segdata.resolve_data(cfg.data)
        overrides = {"num_classes": cfg.num_classes, "label_mode": cfg.label_mode, "threshold": cfg.threshold,
                     "ignore_index": cfg.ignore_index, "val_fraction": cfg.val_fraction}
        folder = segdata.open_dataset(root, **overrides)
        self.meta = folder.meta
        train_samples = segdata.validated_samples(folder, "train", cfg.skip_bad)
        val_samples = segdata.validated_samples(folder, "val", cfg.skip_bad)

        model = zoo.create_model(cfg.encoder, self.meta.num_classes, in_channels=self.meta.in_channels,
                                 weights=cfg.weights, **cfg.encoder_kwargs)
        self.norm = model.spec.normalization.for_channels(self.meta.in_channels)
        a = cfg.augment
        train_tf = segdata.TrainTransform(cfg.input_size, self.norm.mean, self.norm.std, jitter=a.jitter,
                                          scale=a.scale, flip=a.flip, hue=a.hue, sat=a.sat, val=a.val, crop=a.crop)
        val_tf = segdata.EvalTransform(cfg.input_size, self.norm.mean, self.norm.std)
        self.train_set = segdata.SegmentationDataset(train_samples, self.meta, train_tf, seed=cfg.seed, train=True)
        val_set = segdata.SegmentationDataset(val_samples, self.meta, val_tf, seed=cfg.seed, train=False)
        if len(self.train_set) < cfg.batch_size * self.world:
            raise TrainingError(
                f"{root}: {len(self.train_set)} training images cannot fill one batch of {cfg.batch_size} on each "
                f"of {self.world} workers; lower --batch-size or --workers")
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)
        nw = _loader_workers(cfg)
        self.train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
                                       drop_last=True, num_workers=nw,  # not persistent: set_epoch must reach them
                                       pin_memory=self.use_gpu)
        shard = torch.utils.data.Subset(val_set, _val_shard(len(val_set), self.rank, self.world))
        self.val_loader = DataLoader(shard, batch_size=cfg.batch_size, num_workers=nw)

        if cfg.sync_bn and self.world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if self.use_gpu and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg)
        self.loss_fn = SegmentationLoss(cfg.loss, self.meta.num_classes, cfg.class_weights).to(self.device)
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
            if self.use_gpu and cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.stale = 0
        self.start_epoch = 0
        self._restore()
        self.net = reporter.wrap_model(self.model)
        self.artifacts = RunArtifacts(reporter.run_dir, self.meta.classes) if self.rank == 0 else None

    def _restore(self) -> None:
        with self.reporter.restored() as folder:
            if folder is None:
                return
            from segengine import checkpoint

            state, _ = checkpoint.load(str(folder))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.best, self.stale = state["best"], state["stale_epochs"]
        self.start_epoch = state["epoch"] + 1
        if self.rank == 0 and self.verbose:
            print(f"resumed from epoch {state['epoch'] + 1} (lr {self.scheduler.get_last_lr()[1]:.3g})", flush=True)

    def _train_epoch(self, epoch: int) -> tuple[float, int, float]:
        self.net.train()
        frozen = epoch < self.cfg.freeze_epochs
        if frozen:  # a frozen encoder keeps its BatchNorm statistics too, as Keras' trainable=False does
            self.model.encoder.eval()
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        total, batches, images = 0.0, 0, 0
        start = time.perf_counter()
        for step, (x, y) in enumerate(self.train_loader):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.use_gpu and self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.net(x)
            loss = self.loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1}; the run "
                                    f"stops here (lower --lr, currently {self.cfg.lr:g}, or check the labels)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item()
            batches += 1
            images += x.shape[0]
        elapsed = time.perf_counter() - start
        return total / max(batches, 1), images * self.world, elapsed

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        self.model.eval()  # the unwrapped module: DDP's buffer broadcast would hang on uneven shards
        acc = MetricAccumulator(self.meta.num_classes, self.device)
        for x, y in self.val_loader:
            x, y = x.to(self.device), y.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.model(x)
            acc.update(logits, y, self.loss_fn(logits, y))
        acc.all_reduce()
        return acc.compute(list(self.meta.classes))

    def fit(self) -> None:
        cfg = self.cfg
        if self.start_epoch >= cfg.epochs and self.rank == 0 and self.verbose:
            print(f"nothing to do: the run already finished {self.start_epoch} of {cfg.epochs} epochs", flush=True)
        places = self._worker_places()  # a collective: every rank takes part
        if self.artifacts is not None:
            self.artifacts.write_workers(places)
        reported = False
        for epoch in range(self.start_epoch, cfg.epochs):
            if self.stale >= cfg.patience:
                break
            reported = True
            epoch_start = time.perf_counter()
            lr = self.scheduler.get_last_lr()[1]
            train_loss, images, train_time = self._train_epoch(epoch)
            scores = self._validate()
            self.scheduler.step()
            metrics = self._epoch_metrics(epoch, lr, train_loss, images, train_time, scores, epoch_start)
            value = metrics.get(cfg.metric, float("nan"))
            if _is_better(value, self.best, cfg.mode):
                self.best, self.stale = float(value), 0
            else:
                self.stale += 1
            metrics["best_" + cfg.metric] = self.best if self.best is not None else float("nan")
            self.history.append(metrics)
            state = manifest = None
            if self.rank == 0:
                state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "epoch": epoch, "rng": _rng_state(),
                         "history": self.history, "best": self.best, "stale_epochs": self.stale}
                manifest = manifest_for(cfg, self.meta, self.model, self.norm, epoch, metrics)
            self.reporter.report(metrics, state, manifest, epoch + 1,
                                 functools.partial(self._epoch_stored, metrics, epoch, scores))
            if self.stale >= cfg.patience and self.rank == 0 and self.verbose:
                print(f"early stop: {cfg.metric} did not improve for {cfg.patience} epochs", flush=True)
        if not reported and self.history:  # resumed after the end: repeat the last metrics for Tune/Train
            self.reporter.report(self.history[-1], None, None, int(self.history[-1]["epoch"]), lambda _: None)

    def _epoch_stored(self, metrics: dict[str, Any], epoch: int, scores: dict, path: str | None) -> None:
        """The run folder shows an epoch once its checkpoint is stored, and before Tune may end the trial."""
        if self.artifacts is not None:
            self.artifacts.epoch_done(self.history, path, scores)
            if self.verbose:
                self._print_epoch(metrics, epoch)

    def _epoch_metrics(self, epoch, lr, train_loss, images, train_time, scores, epoch_start) -> dict[str, Any]:
        metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "val_loss": scores["loss"],
                   "val_miou": scores["miou"], "val_mdice": scores["mdice"], "val_pixel_acc": scores["pixel_acc"],
                   "val_f_score": scores["f_score"], "images_per_s": images / max(train_time, 1e-9),
                   "epoch_time_s": time.perf_counter() - epoch_start, "wall_time": time.time()}
        for name in self.meta.classes:
            metrics[f"val_iou_{name}"] = scores["iou"][name]
            metrics[f"val_dice_{name}"] = scores["dice"][name]
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()}

    def _print_epoch(self, m: dict[str, Any], epoch: int) -> None:
        remaining = (self.cfg.epochs - epoch - 1) * m["epoch_time_s"]
        eta = f"{remaining / 60:.1f} min" if remaining >= 60 else f"{remaining:.0f} s"
        miou = m["val_miou"]
        print(f"epoch {m['epoch']:>3}/{self.cfg.epochs}  train_loss {m['train_loss']:.4f}  "
              f"val_loss {m['val_loss']:.4f}  mIoU {miou if math.isfinite(miou) else float('nan'):.4f}  "
              f"lr {m['lr']:.3g}  {m['images_per_s']:.1f} img/s  {m['epoch_time_s']:.1f} s  ETA {eta}",
              flush=True)

    def _worker_places(self) -> list[dict[str, str]]:
        """Where each rank runs (node address and id), gathered from all ranks."""
        mine = {"ip": self.reporter.node_ip, "node_id": self.reporter.node_id}
        if not (dist.is_available() and dist.is_initialized()):
            return [mine]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return gathered
