"""The per-worker training function: the same code under `launch.py train`, inside a Tune trial, or in-process.

`train_func(config)` takes three entries: `train` (the resolved `TrainConfig` as a dict), `data` (what the driver
validated: metadata, the train/val pairs, class frequencies) and `run` (run folder, reporting mode, verbosity), and
reports once per epoch through a `Reporter`. It imports nothing of the driver side. Everything random derives from
the seed, so a rerun gives the same batches, and a resumed run continues the epoch count, the learning-rate schedule
and the history.
"""

from __future__ import annotations

import functools
import math
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

import plugins
import segdata
import zoo
from segengine.artifacts import RunArtifacts
from segengine.budget import BudgetClock, epochs_that_fit
from segengine.cluster import redact
from segengine.config import TrainConfig, ranked
from segengine.losses import SegmentationLoss
from segengine.manifest import InferenceMode, Manifest
from segengine.metrics import VAL_SCORES, MetricAccumulator
from segengine.precision import Precision
from segengine.previews import Previews
from segengine.reporting import Reporter, make_reporter
from segengine.tracking import EpochLogger
from segengine.windows import sliding_probabilities

IMPORTED_AT = time.time()  # on a Ray Train worker: when its process had imported the engine, i.e. started


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, a dataset too small); one line for the CLI."""

    user_error = True


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, epochs: Callable[[], int] | None = None
              ) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step: linear warm-up, then the tutorial's lr_decay^epoch (constant
    within an epoch), a cosine or a polynomial decay to min_lr_ratio over the whole run. `epochs()` is the run's
    length (default `cfg.epochs`; a budgeted run re-sizes it as it measures its epochs)."""
    length = epochs or (lambda: cfg.epochs)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "exponential":
            return warm * cfg.lr_decay ** (step // steps_per_epoch)
        t = min(1.0, step / max(1, length() * steps_per_epoch))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else (1 - t) ** cfg.poly_power
        return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)

    return factor


def build_optimizer(model: zoo.SegmentationModel, cfg: TrainConfig, steps_per_epoch: int,
                    epochs: Callable[[], int] | None = None
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Two parameter groups (encoder, rest) so freeze epochs can hold the encoder at lr 0; a per-step schedule
    over `epochs()` (see `lr_factor`)."""
    enc = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    groups = [{"params": enc}, {"params": rest}]
    # one fused kernel over all parameters where torch has it (CPU and CUDA): torch's default on CPU is a Python
    # loop per parameter tensor, 30 ms of a 400 ms `unet` step against 15 ms fused (docs/benchmarks.md); the same
    # update
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                              weight_decay=cfg.weight_decay, fused=fused)
    else:
        kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        opt = kind(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    factor = lr_factor(cfg, steps_per_epoch, epochs)
    frozen_steps = cfg.freeze_epochs * steps_per_epoch
    lambdas = [lambda step: 0.0 if step < frozen_steps else factor(step), factor]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


def set_bn_momentum(model: torch.nn.Module, momentum: float | None) -> None:
    """One BatchNorm momentum for the whole model (None keeps each layer's own, e.g. Keras' 0.01 in the ports).

    Keras' 0.01 moves the running statistics less than half way in 50 steps: on a small set an eval-mode model
    then predicts from statistics of its random initialisation, which is why it is not the default."""
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def inverse_frequency_weights(frequencies: np.ndarray, exponent: float) -> list[float]:
    """w_c ~ freq_c^-exponent, mean 1 (classes absent from the labels get the largest weight seen)."""
    freq = np.asarray(frequencies, np.float64)
    present = freq > 0
    w = np.ones_like(freq)
    w[present] = freq[present] ** -exponent
    if (~present).any() and present.any():
        w[~present] = w[present].max()
    return (w / w.mean()).round(6).tolist()


def normalization(cfg: TrainConfig, spec: zoo.EncoderSpec, in_channels: int) -> zoo.Normalization:
    """The recipe's intensity normalisation (a plan's, from the dataset), else the encoder's for these channels."""
    n = cfg.normalization
    if n is None:
        return spec.normalization.for_channels(in_channels)
    if len(n.mean) != in_channels:
        raise TrainingError(f"normalization has {len(n.mean)} channel(s) but the images have {in_channels}")
    low, high = (tuple(bound) if bound is not None else None for bound in (n.low, n.high))
    return zoo.Normalization("dataset", tuple(n.mean), tuple(n.std), low, high)


def make_train_set(cfg: TrainConfig, samples: list, meta: segdata.DatasetMeta, norm: zoo.Normalization
                   ) -> torch.utils.data.Dataset:
    """The recipe's training set: patches at native resolution (or resampled by `resample`), or the tutorial's
    letterboxed whole images."""
    a = cfg.augment
    if cfg.sampling == "patch":
        zoom = (a.zoom[0] * cfg.resample, a.zoom[1] * cfg.resample)
        transform = segdata.PatchTransform(
            cfg.input_size, norm.mean, norm.std, num_classes=meta.num_classes, zoom=zoom, flip=a.flip,
            vflip=a.vflip, rot90=a.rot90, elastic=a.elastic, elastic_grid=a.elastic_grid, elastic_std=a.elastic_std,
            brightness=a.brightness, contrast=a.contrast, gamma=a.gamma, noise=a.noise, noise_std=a.noise_std,
            blur=a.blur, blur_sigma=a.blur_sigma, hue=a.hue, sat=a.sat, val=a.val, class_aware=cfg.class_aware,
            clip=norm.clip)
        return segdata.PatchDataset(samples, meta, transform, length=cfg.samples_per_epoch or len(samples),
                                    seed=cfg.seed)
    transform = segdata.TrainTransform(cfg.input_size, norm.mean, norm.std, jitter=a.jitter, scale=a.scale,
                                       flip=a.flip, hue=a.hue, sat=a.sat, val=a.val, crop=a.crop, clip=norm.clip)
    return segdata.SegmentationDataset(samples, meta, transform, seed=cfg.seed, train=True)


def _loader_workers(cfg: TrainConfig) -> int:
    """Loader processes and torch threads share the worker's CPUs: 1 CPU -> load in the main process."""
    return cfg.loader_workers if cfg.loader_workers is not None else max(0, cfg.cpus_per_worker - 1)


def _rng_state() -> dict[str, Any]:
    _, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_position": int(position),
            "numpy_gauss": [int(has_gauss), float(gauss)]}


def _set_rng_state(state: dict[str, Any]) -> None:
    """The generators exactly where the checkpointed run left them (numpy's position in its key included;
    checkpoints from before it was saved start numpy at a fresh block)."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    has_gauss, gauss = state.get("numpy_gauss", [0, 0.0])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state.get("numpy_position", 624),
                         has_gauss, gauss))


def manifest_for(cfg: TrainConfig, meta: segdata.DatasetMeta, model: zoo.SegmentationModel, norm: zoo.Normalization,
                 epoch: int, metrics: dict[str, Any], fold: dict[str, Any] | None = None) -> Manifest:
    """What inference needs to rebuild the model from the checkpoint alone, plus the resolved config (and for a
    cross-validation fold, the fold lists)."""
    import importlib.metadata as md

    def version(dist_name: str) -> str | None:
        try:
            return md.version(dist_name)
        except md.PackageNotFoundError:
            return None

    inference = (InferenceMode(mode="sliding", window=cfg.window, overlap=cfg.val_overlap, mirror=cfg.val_mirror,
                               resample=cfg.resample) if cfg.validation == "sliding" else InferenceMode())
    return Manifest(
        encoder=cfg.encoder, model_kwargs=dict(model.model_kwargs), plugins=list(cfg.plugins),
        encoder_source=plugins.provenance(model.spec.source), dataset=meta.to_dict(),
        input_size=cfg.input_size, inference=inference, config=redact(cfg.to_dict()), epoch=epoch, metrics=metrics,
        normalization=norm, fold=fold,
        versions={d: version(d) for d in ("unet-zoo", "torch", "ray", "timm", "segmentation-models-pytorch")})


def _val_shard(n: int, rank: int, world: int) -> list[int]:
    """Every validation sample exactly once across workers (a DistributedSampler would pad with repeats)."""
    return list(range(rank, n, world))


def train_func(config: dict[str, Any]) -> None:
    """Ray Train worker function (also called directly in-process)."""
    run = config["run"]
    cfg = TrainConfig.from_dict(config["train"])
    reporter = make_reporter(run["reporter"], run["run_dir"], cfg.keep_checkpoints, cfg.metric, cfg.mode)
    with warnings.catch_warnings():  # an installed plugin that fails was reported by the driver already
        warnings.simplefilter("ignore", plugins.PluginWarning)
        plugins.autoload()
    plugins.load_on_worker(cfg.plugins)
    if reporter.reports_fatal and reporter.fatal_recorded():
        return  # Train restarted the group after a rank's deterministic error: end at once, the driver reports it
    started = time.time()
    try:
        Trainer(cfg, reporter, config["data"], verbose=run.get("verbose", True), started=started,
                tracking=run.get("tracking")).fit()
    except Exception as exc:
        if not (reporter.reports_fatal and getattr(exc, "user_error", False)):
            raise
        # deterministic: a retry from the last checkpoint would fail again. Ours (every rank raised it at the same
        # step) let the workers end normally; one rank's (a plugin's, a file's) must still end the group, whose
        # restart then stops at the marker above. Either way the driver raises the recorded message.
        collective = isinstance(exc, TrainingError)
        reporter.record_fatal(str(exc), this_rank_only=not collective)
        if not collective:
            raise


class Trainer:
    """One worker's view of a run: data shards, model, optimizer, epochs, metrics, checkpoints."""

    def __init__(self, cfg: TrainConfig, reporter: Reporter, data: dict[str, Any], verbose: bool = True,
                 started: float | None = None, tracking: dict[str, str] | None = None) -> None:
        """`data`: what the driver validated (`runprep.PreparedRun.data`); `tracking`: the tracked runs the driver
        opened (`segengine.tracking`), logged to by rank 0."""
        self.cfg, self.reporter, self.verbose = cfg, reporter, verbose
        # where a run's seconds go (timings.json; benchmarks/train_overhead.py): wall clock of the start-up phases,
        # then per epoch the time in training steps, validation, collectives and reporting
        self.timings: dict[str, Any] = {"imported": IMPORTED_AT, "train_func": started or time.time(),
                                        "ready": None, "first_step": None, "epochs": []}
        self._collective_s = 0.0
        self.rank, self.world = reporter.world_rank, reporter.world_size
        self.epoch_logger = EpochLogger(tracking, cfg.to_dict()) if tracking and self.rank == 0 else None
        self.use_gpu = torch.cuda.is_available() and cfg.use_gpu != "no"
        self.device = reporter.device(self.use_gpu)
        torch.set_num_threads(max(1, cfg.cpus_per_worker - _loader_workers(cfg)))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.meta = segdata.DatasetMeta.from_dict(data["meta"])
        self.fold = data.get("fold")  # a cross-validation fold's lists, for its manifests
        root = segdata.resolve_data(cfg.data)  # this node's copy (the synthetic set is made here if missing)
        train_samples = segdata.local_samples(data["train"], root)
        model = self._build_model()
        self._build_loaders(root, train_samples, segdata.local_samples(data["val"], root))
        self._build_optimization(model, data.get("frequencies"), train_samples)
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.stale = 0
        self.start_epoch = 0
        self._restore()
        self.net = reporter.wrap_model(self.model)
        self.artifacts = RunArtifacts(reporter.run_dir, self.meta.classes) if self.rank == 0 else None
        self.timings["ready"] = time.time()

    def _build_model(self) -> zoo.SegmentationModel:
        """The recipe's model (BatchNorm momentum set) and the intensity normalisation that goes with it."""
        cfg = self.cfg
        model = zoo.create_model(cfg.encoder, self.meta.num_classes, in_channels=self.meta.in_channels,
                                 weights=cfg.weights, **cfg.encoder_kwargs)
        set_bn_momentum(model, cfg.bn_momentum)
        self.norm = normalization(cfg, model.spec, self.meta.in_channels)
        return model

    def _build_loaders(self, root: str, train_samples: list, val_samples: list) -> None:
        """This rank's training loader (a shard of each epoch's samples) and validation loader (a shard of the
        validation images, each exactly once over the ranks)."""
        cfg = self.cfg
        self.train_set = make_train_set(cfg, train_samples, self.meta, self.norm)
        if len(self.train_set) < cfg.batch_size * self.world:
            raise TrainingError(
                f"{root}: {len(self.train_set)} training {'crops' if cfg.sampling == 'patch' else 'images'} "
                f"cannot fill one batch of {cfg.batch_size} on each of {self.world} workers; lower --batch-size "
                f"or --workers{', or raise samples_per_epoch' if cfg.sampling == 'patch' else ''}")
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)
        loaders = _loader_workers(cfg)
        self.train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
                                       drop_last=True, num_workers=loaders,  # not persistent: set_epoch must reach
                                       pin_memory=self.use_gpu)
        self.steps_per_epoch = len(self.train_loader)
        sliding, norm = cfg.validation == "sliding", self.norm
        val_tf = (segdata.NativeTransform(norm.mean, norm.std, norm.clip) if sliding
                  else segdata.EvalTransform(cfg.input_size, norm.mean, norm.std, norm.clip))
        val_set = segdata.SegmentationDataset(val_samples, self.meta, val_tf, seed=cfg.seed, train=False)
        shard = torch.utils.data.Subset(val_set, _val_shard(len(val_set), self.rank, self.world))
        # native sizes may differ between images: one image per batch, its windows batched instead
        self.val_loader = DataLoader(shard, batch_size=1 if sliding else cfg.batch_size, num_workers=loaders)
        self.pad_value = segdata.normalised_grey(norm.mean, norm.std, norm.clip)
        self.previews = (Previews([val_samples[i] for i in shard.indices], self.meta, norm.mean, norm.std, cfg.seed)
                         if self.rank == 0 and val_samples else None)

    def _build_optimization(self, model: zoo.SegmentationModel, frequencies: list[float] | None,
                            train_samples: list) -> None:
        """The model on its device in its precision, the optimizer and its schedule (over `self.epochs`, which a
        budget re-sizes), the loss with its class weights, the fp16 scaler."""
        cfg = self.cfg
        if cfg.sync_bn and self.world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.precision = Precision(self.device, cfg.amp, cfg.channels_last)
        self.model = self.precision.model(model.to(self.device))
        self.epochs = cfg.epochs  # a budgeted run re-sizes it (`_fit_to_budget`); the schedule follows
        self.budget: BudgetClock | None = None
        self.spent_before = 0.0  # of the budget, by the run this one resumes
        self.epoch_costs: list[float] = []  # seconds of each epoch but its validation
        self.val_time = 0.0
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, self.steps_per_epoch, lambda: self.epochs)
        self.class_weights = cfg.class_weights
        if cfg.class_weight_exponent is not None:
            if frequencies is None:  # a driver that did not measure them (a search that sets the exponent per trial)
                frequencies = segdata.class_frequencies(train_samples, self.meta)
            self.class_weights = inverse_frequency_weights(frequencies, cfg.class_weight_exponent)
        self.loss_fn = SegmentationLoss(cfg.loss, self.meta.num_classes, self.class_weights).to(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.dtype == torch.float16)

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
        if self.cfg.budget_s:  # the budget goes on from where the run stopped
            self.epochs = int(state.get("epochs", self.epochs))
            self.spent_before = float(state.get("spent_s", 0.0))
        # the schedule is defined per epoch: continue at this epoch's start (an elastic run that resumed with
        # another worker count has another number of steps per epoch)
        self.scheduler.last_epoch = self.start_epoch * self.steps_per_epoch
        self._apply_recipe_values()
        if self.rank == 0 and self.verbose:
            print(f"resumed from epoch {state['epoch'] + 1} (lr {self._lr():.3g})", flush=True)

    def _lr(self) -> float:
        """The learning rate the next step uses (the decoder's group: the encoder's is 0 while frozen)."""
        return float(self.optimizer.param_groups[1]["lr"])

    def _apply_recipe_values(self) -> None:
        """After loading optimizer state: this config's lr and weight decay (a resumed run has the saved ones; a
        PBT trial that exploited another's checkpoint continues with its own, mutated values)."""
        step = self.scheduler.last_epoch
        self.scheduler.base_lrs = [self.cfg.lr] * len(self.optimizer.param_groups)
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = self.cfg.lr
            group["lr"] = self.cfg.lr * factor(step)
            group["weight_decay"] = self.cfg.weight_decay

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
            logits = self.precision.forward(self.net, x)
            loss = self.loss_fn(logits, y)
            if self._any_rank(not torch.isfinite(loss).item()):  # every rank stops at the same step
                raise TrainingError(f"loss became non-finite ({loss.item()} on rank {self.rank}) at epoch {epoch + 1} "
                                    f"step {step + 1}; the run stops here (lower --lr, currently {self.cfg.lr:g}, or "
                                    "check the labels)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.timings["first_step"] is None:
                self.timings["first_step"] = time.time()
            total += loss.item()
            batches += 1
            images += x.shape[0]
        elapsed = time.perf_counter() - start
        return total / max(batches, 1), images * self.world, elapsed

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        self.model.eval()  # the unwrapped module: DDP's buffer broadcast would hang on uneven shards
        acc = MetricAccumulator(self.meta.num_classes, self.device)
        position = 0  # in this rank's shard: where the previews' images are
        for x, y in self.val_loader:
            x, y = x.to(self.device), y.to(self.device)
            if self.cfg.validation == "sliding":  # log-probabilities: CE of them is the blended NLL
                probs = sliding_probabilities(self._forward_eval, x[0], self.cfg.window, self.cfg.val_overlap,
                                              self.meta.num_classes, self.pad_value, mirror=self.cfg.val_mirror,
                                              resample=self.cfg.resample)
                logits = torch.log(probs.clamp_min(1e-8))[None]
            else:
                logits = self._forward_eval(x)
            acc.update(logits, y, self.loss_fn(logits, y))
            if self.previews is not None:
                self.previews.capture(position, x, y, logits)
            position += len(x)
        collective = time.perf_counter()
        acc.all_reduce()
        self._collective_s += time.perf_counter() - collective
        return {**acc.compute(list(self.meta.classes)), "confusion": acc.cm.cpu().tolist()}

    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self.precision.forward(self.model, x)

    def fit(self) -> None:
        if self.start_epoch >= self.epochs and self.rank == 0 and self.verbose:
            print(f"nothing to do: the run already finished {self.start_epoch} of {self.epochs} epochs", flush=True)
        places = self._worker_places()  # a collective: every rank takes part
        if self.artifacts is not None:
            self.artifacts.write_workers(places)
        if self.cfg.budget_s:  # the clock starts here: start-up is not the budget's
            self.budget = BudgetClock(self.cfg.budget_s, self.spent_before)
        reported = False
        scores: dict[str, Any] | None = None
        epoch = self.start_epoch
        while epoch < self.epochs and not self._should_stop(epoch):
            reported = True
            scores = self._run_epoch(epoch, scores)
            epoch += 1
        if not reported and self.history:  # resumed after the end: repeat the last metrics for Tune/Train
            self.reporter.report(self.history[-1], None, None, int(self.history[-1]["epoch"]), lambda _: None)
        if self.artifacts is not None:
            if self.budget is not None:
                self.timings["budget"] = {"budget_s": self.budget.budget_s, "spent_s": self.budget.spent(),
                                          "epochs": epoch, "clock_start": self.budget.started_at}
            self.artifacts.close()  # TensorBoard's events flushed and closed before timings.json marks the end
            self.artifacts.write_json("timings.json", self.timings)
        if self.epoch_logger is not None:
            self.epoch_logger.close()

    def _run_epoch(self, epoch: int, scores: dict[str, Any] | None) -> dict[str, Any]:
        """Train one epoch, validate when due (always after the first and the last), report and checkpoint."""
        cfg = self.cfg
        epoch_start = time.perf_counter()
        lr = self._lr()
        train_loss, images, train_time = self._train_epoch(epoch)
        if self.budget is not None:
            self._fit_to_budget(epoch + 1, self.epoch_costs or [train_time])
        validate = scores is None or (epoch + 1) % cfg.val_every == 0 or epoch + 1 == self.epochs
        val_start = time.perf_counter()
        if validate:  # between validations the last scores are carried (validated = 0 in the history)
            scores = self._validate()
            self.val_time = time.perf_counter() - val_start
        metrics = self._epoch_metrics(epoch, lr, train_loss, images, train_time, scores, epoch_start)
        metrics["validated"] = int(validate)
        metrics["val_time_s"] = time.perf_counter() - val_start if validate else 0.0
        value = metrics.get(cfg.metric, float("nan"))
        improved = validate and value == value and ranked(value, cfg.mode) > ranked(self.best, cfg.mode)
        if improved:
            self.best, self.stale = float(value), 0
        else:
            self.stale += 1
        preview_s = self._validation_artifacts(epoch + 1, improved, scores) if validate else 0.0
        metrics["best_" + cfg.metric] = self.best if self.best is not None else float("nan")
        metrics["steps"] = (epoch + 1) * self.steps_per_epoch
        metrics["workers"] = self.world
        metrics["run_epochs"] = self.epochs  # the run's length as planned now (a budget re-sizes it)
        self.history.append(metrics)
        state = manifest = None
        if self.rank == 0 and validate:  # a checkpoint is ranked by its own scores, never by carried ones
            state = self._state(epoch)
            manifest = manifest_for(cfg, self.meta, self.model, self.norm, epoch, metrics, self.fold)
        report_start = time.perf_counter()
        self.reporter.report(metrics, state, manifest, epoch + 1,
                             functools.partial(self._epoch_stored, metrics, epoch, scores))
        self.timings["epochs"].append({"epoch": epoch + 1, "train_s": train_time, "val_s": metrics["val_time_s"],
                                       "collective_s": self._collective_s,
                                       "report_s": time.perf_counter() - report_start, "preview_s": preview_s,
                                       "epoch_s": time.perf_counter() - epoch_start})
        self.epoch_costs.append(time.perf_counter() - epoch_start - metrics["val_time_s"])
        self._collective_s = 0.0
        if self._should_stop(epoch + 1) and self.rank == 0 and self.verbose:
            print(f"early stop: {cfg.metric} did not improve for {self.stale} epochs "
                  f"({metrics['steps']} steps >= min_steps {cfg.min_steps})", flush=True)
        return scores

    def _validation_artifacts(self, epoch: int, best: bool, scores: dict[str, Any]) -> float:
        """Rank 0: the validation's confusion matrix (the report's heatmap) and its previews into the run folder,
        TensorBoard and tracking; the seconds the previews took."""
        if self.artifacts is None:
            return 0.0
        self.artifacts.write_validation(epoch, best, scores)
        if self.previews is None:
            return 0.0
        start = time.perf_counter()
        image = self.previews.render()
        if image is not None:
            self.artifacts.write_previews(image, epoch, best)
            if self.epoch_logger is not None:
                self.epoch_logger.log_image(image, epoch)
        return time.perf_counter() - start

    def _state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run continues from (plain tensors and containers: weights_only loads it)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "rng": _rng_state(),
                "history": self.history, "best": self.best, "stale_epochs": self.stale, "epochs": self.epochs,
                "spent_s": self.budget.spent() if self.budget is not None else 0.0}

    def _fit_to_budget(self, done: int, costs: list[float]) -> None:
        """Re-size the run (and its learning-rate schedule) to what the budget's rest holds, from the median
        epoch (training, reporting, checkpoint: all but validation) and the last validation so far; every rank
        takes the slowest rank's figures, so all agree. When no further epoch fits, this one is the last and
        validates."""
        spent, train_s, val_s = self._agree_max([self.budget.spent(), float(np.median(costs)), self.val_time])
        self.epochs = max(done, epochs_that_fit(done, self.budget.budget_s - spent, train_s, val_s,
                                                self.cfg.val_every))

    def _agree_max(self, values: list[float]) -> list[float]:
        """The largest of each value over the ranks (one all-reduce)."""
        if self.world == 1 or not (dist.is_available() and dist.is_initialized()):
            return values
        start = time.perf_counter()
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        self._collective_s += time.perf_counter() - start
        return tensor.tolist()

    def _should_stop(self, epochs_done: int) -> bool:
        """Early stopping: `patience` epochs without improvement, never before `min_steps` optimizer steps."""
        return self.stale >= self.cfg.patience and epochs_done * self.steps_per_epoch >= self.cfg.min_steps

    def _epoch_stored(self, metrics: dict[str, Any], epoch: int, scores: dict, path: str | None) -> None:
        """The run folder shows an epoch once its checkpoint is stored, and before Tune may end the trial."""
        if self.artifacts is not None:
            self.artifacts.epoch_done(self.history, path, scores)
            if self.verbose:
                self._print_epoch(metrics, epoch)
        if self.epoch_logger is not None:
            self.epoch_logger.log(metrics, int(metrics["epoch"]))

    def _epoch_metrics(self, epoch, lr, train_loss, images, train_time, scores, epoch_start) -> dict[str, Any]:
        metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                   **{name: scores[key] for name, key in VAL_SCORES.items()},
                   "images_per_s": images / max(train_time, 1e-9),
                   "epoch_time_s": time.perf_counter() - epoch_start, "wall_time": time.time()}
        for name in self.meta.classes:
            metrics[f"val_iou_{name}"] = scores["iou"][name]
            metrics[f"val_dice_{name}"] = scores["dice"][name]
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()}

    def _print_epoch(self, m: dict[str, Any], epoch: int) -> None:
        remaining = (self.epochs - epoch - 1) * m["epoch_time_s"]
        eta = f"{remaining / 60:.1f} min" if remaining >= 60 else f"{remaining:.0f} s"
        miou = m["val_miou"]
        val = (f"val_loss {m['val_loss']:.4f}  mIoU {miou if math.isfinite(miou) else float('nan'):.4f}"
               if m.get("validated", 1) else "(not validated)")
        print(f"epoch {m['epoch']:>3}/{self.epochs}  train_loss {m['train_loss']:.4f}  {val}  "
              f"lr {m['lr']:.3g}  {m['images_per_s']:.1f} img/s  {m['epoch_time_s']:.1f} s  ETA {eta}",
              flush=True)

    def _any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (one scalar all-reduce), so all ranks take the same branch."""
        if self.world == 1 or not (dist.is_available() and dist.is_initialized()):
            return flag
        start = time.perf_counter()
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value)
        self._collective_s += time.perf_counter() - start
        return bool(value.item() > 0)

    def _worker_places(self) -> list[dict[str, str]]:
        """Where each rank runs (node address and id), gathered from all ranks."""
        mine = {"ip": self.reporter.node_ip, "node_id": self.reporter.node_id, "precision": self.precision.name}
        if not (dist.is_available() and dist.is_initialized()):
            return [mine]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return gathered
