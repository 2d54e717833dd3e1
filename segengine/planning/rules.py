"""Planning rules: pure functions from a dataset fingerprint, the resources and a probe of real steps to the keys of
a training recipe, each with the reason a reader can check against the fingerprint (docs/planning.md).

Two phases: `data_rules` decide what the data alone decides (resolution, crop, network, normalisation,
augmentation, loss, validation window, workers); the probe then times that candidate, and `time_rules` size the run
to the budget (steps, epochs, schedule, validation cadence). Same inputs, same plan: nothing here measures or draws
random numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from segdata.fingerprint import ClassFingerprint, Fingerprint

# Constants, each with where it comes from (docs/planning.md has the table).
ENCODER = "unet"  # the U-Net with BN: full-resolution skips (thin structures), nnU-Net's network for 2D
RECEPTIVE_FIELD = 140  # px, of `unet` (5 levels of two 3x3 convs, 4 pools): objects larger than this lose context
THIN_PX = 8  # a class whose pixel-weighted median thickness is below this needs full resolution (no downscale)
MIN_THICKNESS_RESAMPLED = 6  # px: a downscaled class's p25 thickness stays at least this wide
CROP_CONTEXT = 2.0  # a crop spans this many times the typical large object (p75 pixel-weighted diameter)
CROP_SIZES = (128, 160, 192, 224, 256, 288, 320, 352, 384, 448, 512)
MIN_STEPS = 800  # fewer optimizer steps than this and the ISBI/CamVid recipes had not converged (docs/models.md)
PIXELS_PER_STEP = 4 * 256 * 256  # per worker on a CPU: larger crops take a smaller batch (never below 2)
MIN_BATCH = 2  # BatchNorm needs more than one sample (nnU-Net's minimum too)
EPOCHS_TARGET = 40  # epochs per run: the budget is checked and ASHA decides at epoch ends
MIN_STEPS_PER_EPOCH = 8
VAL_SHARE = 0.10  # validation takes at most about this share of the time
MIN_VALIDATIONS = 8  # so that the best checkpoint is chosen among several
PARALLEL_SLOWDOWN = 1.15  # workers sharing a machine's memory bandwidth step slower than the probe alone
UPRIGHT_SHIFT = 0.15  # a class (>= 1 % of pixels) whose mean row is this far from the middle: upright scenes
RARE_SHARE = 0.05  # classes below this share get class-aware crops (nnU-Net oversamples foreground)
IMBALANCE = 10.0  # largest/smallest class share above this: inverse-frequency class weights (exponent 0.5)
MAX_CPU_WORKERS = 8  # beyond this, CPU workers get more threads instead of more DDP ranks


@dataclass(frozen=True)
class Resources:
    """What the run will have: CPUs and GPUs (of this machine or the cluster), and whether bf16 is native."""

    cpus: int
    gpus: int
    nodes: int
    bf16: bool
    where: str  # "this machine" or the cluster address


@dataclass(frozen=True)
class Decision:
    key: str  # the recipe key (dotted) it sets
    value: Any
    reason: str


@dataclass
class Draft:
    """A recipe being planned: its training keys and why each was chosen."""

    train: dict[str, Any] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)

    def set(self, key: str, value: Any, reason: str) -> None:
        """Set a key (a later decision on the same key replaces the earlier one)."""
        target = self.train
        *parents, last = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
        self.decisions = [d for d in self.decisions if d.key != key] + [Decision(key, value, reason)]


def _present(fp: Fingerprint, min_share: float = 0.0) -> list[ClassFingerprint]:
    return [c for c in fp.classes if c.share > min_share and c.thickness]


def _round_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(value // multiple) * multiple)


# ---------------------------------------------------------------- phase 1: what the data decides


def thinnest(fp: Fingerprint) -> ClassFingerprint:
    """The class with the thinnest structures among those that are at least 0.1 % of the pixels."""
    return min(_present(fp, 0.001) or _present(fp), key=lambda c: c.thickness["p50"])


def elongated(c: ClassFingerprint) -> bool:
    """Lines and networks (membranes, vessels, cracks): objects far longer than thick, whose connected extent says
    nothing about the context a pixel needs (the spaces between them do)."""
    return c.thickness["p75"] * 4 < c.object_diameter.get("p50", 0)


def context_diameter(fp: Fingerprint) -> tuple[float, str]:
    """The size of the large objects a crop must hold: the largest p75 pixel-weighted object diameter over classes
    of at least 1 % of the pixels, leaving out those that span the image (a background) and lines or networks."""
    side = min(fp.median_size)
    sized = [(c.object_diameter["p75"], c.name) for c in _present(fp, 0.01)
             if c.object_diameter and c.object_diameter["p75"] < 0.7 * side and not elongated(c)]
    return max(sized, default=(side / 2, "half the image: every class spans it"))


def plan_resample(fp: Fingerprint, draft: Draft) -> float:
    """Downscale only where objects outgrow the network's receptive field and no class is thin."""
    thin = thinnest(fp)
    diameter, name = context_diameter(fp)
    if thin.thickness["p50"] < THIN_PX:
        draft.set("resample", 1.0, f"native resolution: '{thin.name}' is {thin.thickness['p50']:.0f} px thick "
                                f"(median), under {THIN_PX} px")
        return 1.0
    resample = 1.0
    while diameter * resample > RECEPTIVE_FIELD and thin.thickness["p25"] * resample / 2 >= MIN_THICKNESS_RESAMPLED:
        resample /= 2
    if resample == 1.0:
        draft.set("resample", 1.0, f"native resolution: the large objects ('{name}', {diameter:.0f} px) fit the "
                                f"network's {RECEPTIVE_FIELD} px receptive field")
    else:
        draft.set("resample", resample, f"'{name}' objects are {diameter:.0f} px, more than the {RECEPTIVE_FIELD} px "
                                  f"receptive field; at x{resample:g} they are {diameter * resample:.0f} px and the "
                                  f"thinnest class ('{thin.name}') stays {thin.thickness['p25'] * resample:.0f} px")
    return resample


def plan_crop(fp: Fingerprint, resample: float, multiple: int, draft: Draft) -> tuple[int, int]:
    """A square crop holding CROP_CONTEXT x the large objects, at most the (resampled) median image."""
    diameter, name = context_diameter(fp)
    wanted = CROP_CONTEXT * diameter * resample
    h, w = (int(v * resample) for v in fp.median_size)
    fits = [s for s in CROP_SIZES if s % multiple == 0 and s <= min(h, w)] or [_round_multiple(min(h, w), multiple)]
    crop = next((s for s in fits if s >= wanted), fits[-1])
    draft.set("input_size", [crop, crop], f"{CROP_CONTEXT:g} x the p75 diameter of '{name}' objects "
                                          f"({diameter * resample:.0f} px) = {wanted:.0f} px, within the {w}x{h} "
                                          "images")
    return crop, crop


def plan_workers(resources: Resources, requested: int | None, draft: Draft) -> tuple[int, int]:
    """(workers, CPUs per worker): one worker per GPU, else per CPU core up to MAX_CPU_WORKERS."""
    if requested is not None:
        workers = requested
        why = "--workers"
    elif resources.gpus:
        workers, why = resources.gpus, f"one Ray Train worker per GPU ({resources.gpus})"
    else:
        workers = min(resources.cpus, MAX_CPU_WORKERS)
        why = (f"one Ray Train worker per CPU core ({resources.cpus} on {resources.where}): DDP over 1-thread "
               "workers outruns one multi-threaded process on CPUs (docs/benchmarks.md)")
    cpus = max(1, resources.cpus // max(workers, 1)) if workers else resources.cpus
    draft.set("workers", workers, why)
    draft.set("cpus_per_worker", cpus, f"{resources.cpus} CPUs shared by {max(workers, 1)} worker(s)")
    return workers, cpus


def batch_for(crop: tuple[int, int], gpus: int) -> int:
    return 8 if gpus else max(MIN_BATCH, min(8, PIXELS_PER_STEP // (crop[0] * crop[1])))


def plan_batch(crop: tuple[int, int], resources: Resources, draft: Draft) -> int:
    batch = batch_for(crop, resources.gpus)
    why = ("8 crops per GPU worker" if resources.gpus else
           f"about {PIXELS_PER_STEP // 1024}K pixels per step on a CPU worker (at least {MIN_BATCH} for BatchNorm)")
    draft.set("batch_size", batch, why)
    return batch


def plan_normalization(fp: Fingerprint, draft: Draft) -> None:
    """nnU-Net's CT scheme for every modality of 2D images: clip each channel to its p0.5-p99.5 over the training
    pixels, then standardise with the clipped mean and std (a channel with one value throughout keeps a 1-level
    window and unit std)."""
    stats = fp.intensity
    low = [c.p(0.5) for c in stats]
    high = [max(c.p(99.5), lo + 1) for c, lo in zip(stats, low, strict=True)]
    draft.set("normalization", {"mean": [round(c.clipped_mean, 3) for c in stats],
                                "std": [round(c.clipped_std, 3) if c.clipped_std > 0 else 1.0 for c in stats],
                                "low": low, "high": high},
              "per channel: clipped to p0.5-p99.5 (" + ", ".join(f"{lo:.0f}-{hi:.0f}" for lo, hi in zip(low, high,
                                                                                                      strict=True))
              + "), then mean/std of the clipped training pixels")


def upright(fp: Fingerprint) -> ClassFingerprint | None:
    """A class of at least 1 % of the pixels that sits clearly above or below the middle (sky, road): the images
    have an up and a down, so vertical flips and rotations would show the model scenes that never occur."""
    shifted = [c for c in _present(fp, 0.01) if abs(c.vertical_position - 0.5) >= UPRIGHT_SHIFT]
    return max(shifted, key=lambda c: abs(c.vertical_position - 0.5), default=None)


def plan_augmentation(fp: Fingerprint, crop: tuple[int, int], draft: Draft) -> None:
    """Geometry by orientation (free: flips, rotations and the U-Net paper's elastic deformation; upright: zoom and
    left-right flips), intensity by channels (grey or multi-channel: gamma, contrast, brightness, noise, blur
    relative to the intensity window; RGB: HSV jitter and blur)."""
    up = upright(fp)
    if up is None:
        geometry = {"flip": 0.5, "vflip": 0.5, "rot90": True, "elastic": 0.5, "elastic_grid": 3,
                    "elastic_std": round(crop[0] / 20, 1), "zoom": [0.9, 1.1]}
        why = "no class sits above or below the middle: any orientation occurs (flips, rotations, elastic)"
    else:
        geometry = {"flip": 0.5, "vflip": 0.0, "rot90": False, "elastic": 0.0, "zoom": [0.75, 1.25]}
        why = (f"upright scenes ('{up.name}' sits at {up.vertical_position:.2f} of the height): left-right flips "
               "and zoom only")
    if fp.channels != 3:
        noise = round(0.2 * sum(c.clipped_std for c in fp.intensity) / len(fp.intensity), 2)
        colour = {"brightness": 0.1, "contrast": 0.2, "gamma": [0.7, 1.5], "noise": 0.2, "noise_std": noise,
                  "blur": 0.2}
        kind = "grey" if fp.channels == 1 else f"{fp.channels} channels (not RGB)"
        why += f"; {kind}: gamma, contrast, brightness, blur and noise (std {noise:g}, a fifth of the intensity std)"
    else:
        colour = {"hue": 0.05, "sat": 1.3, "val": 1.3, "blur": 0.1}
        why += "; colour: hue, saturation and value jitter, blur"
    draft.set("augment", {**geometry, **colour}, why)


def plan_loss(fp: Fingerprint, draft: Draft) -> None:
    """CE + Dice (nnU-Net's loss); class-aware crops for rare classes; inverse-frequency weights for strong
    imbalance."""
    present = [c for c in fp.classes if c.share > 0]
    rarest = min(present, key=lambda c: c.share)
    draft.set("loss", "ce+dice", "cross-entropy plus Dice, as nnU-Net: Dice keeps small classes from vanishing")
    if rarest.share < RARE_SHARE:
        draft.set("class_aware", 0.5, f"'{rarest.name}' is {rarest.share:.1%} of the pixels: half the crops are "
                                      "centred on a pixel of a class present in the image")
    else:
        draft.set("class_aware", 0.0, f"the rarest class ('{rarest.name}') is {rarest.share:.1%} of the pixels: "
                                      "random crops see it")
    ratio = max(c.share for c in present) / rarest.share
    if ratio > IMBALANCE:
        draft.set("class_weight_exponent", 0.5, f"shares differ {ratio:.0f}x: loss weights ~ share^-0.5")


def plan_validation(fp: Fingerprint, resample: float, multiple: int, draft: Draft) -> tuple[int, int]:
    """Blended sliding windows on whole images at the training resolution; windows as large as the image (up to
    512 px), since a fully convolutional network takes them and fewer windows overlap less."""
    h, w = (int(v * resample) for v in fp.median_size)
    window = (min(_round_multiple(h, multiple), 512), min(_round_multiple(w, multiple), 512))
    draft.set("validation", "sliding", "whole images, at the resolution the model trains on, scored at native size")
    draft.set("val_window", list(window), f"up to 512 px and the {w}x{h} images")
    draft.set("val_overlap", 0.25, "blended windows, nnU-Net's and MMSegmentation's overlap")
    return window


def data_rules(fp: Fingerprint, resources: Resources, workers: int | None, multiple: int) -> Draft:
    """Phase 1: everything the fingerprint and the resources decide."""
    draft = Draft()
    draft.set("encoder", ENCODER, "U-Net with BN: full-resolution skips for thin structures and a "
                                  f"{RECEPTIVE_FIELD} px receptive field (nnU-Net's 2D network)")
    draft.set("sampling", "patch", "random crops at the planned resolution (nnU-Net's patch-based training)")
    resample = plan_resample(fp, draft)
    crop = plan_crop(fp, resample, multiple, draft)
    plan_workers(resources, workers, draft)
    plan_batch(crop, resources, draft)
    plan_normalization(fp, draft)
    plan_augmentation(fp, crop, draft)
    plan_loss(fp, draft)
    plan_validation(fp, resample, multiple, draft)
    draft.set("optimizer", "adamw", "AdamW, as both hand-written recipes (docs/models.md)")
    draft.set("lr", 2.0e-3, "the hand-written recipes' peak learning rate, chosen on held-out splits")
    draft.set("weight_decay", 1.0e-4, "the hand-written recipes' weight decay")
    draft.set("schedule", "cosine", "cosine decay to 1 % over the run, whose length the budget sets")
    draft.set("min_lr_ratio", 0.01, "the hand-written recipes' floor")
    draft.set("metric", "val_miou", "mean IoU over classes, as `evaluate` scores")
    return draft


# ---------------------------------------------------------------- phase 2: what the budget and the probe decide


@dataclass(frozen=True)
class Timing:
    """What the probe measured, scaled to the planned run (workers running beside each other)."""

    step_s: float  # one optimizer step of one worker, data included
    val_image_s: float  # validating one image (read, sliding windows, loss)
    val_images: int  # validation images (all workers together)
    workers: int


def validation_seconds(t: Timing) -> float:
    """One validation: each worker scores its share of the images."""
    return math.ceil(t.val_images / max(1, t.workers)) * t.val_image_s


def afford_crop(fp: Fingerprint, draft: Draft, timing: Timing, budget_s: float, multiple: int,
                resources: Resources) -> Timing:
    """A smaller crop (and the batch and deformation that go with it) when the planned one leaves fewer than
    MIN_STEPS steps in the budget; a step's time scales with its pixels (data loading included), so the probe's
    figure is rescaled."""
    crop, batch = tuple(draft.train["input_size"]), draft.train["batch_size"]
    train_s = budget_s * (1 - VAL_SHARE)
    if train_s / timing.step_s >= MIN_STEPS:
        return timing
    pixels = crop[0] * crop[1] * batch
    for side in sorted((c for c in CROP_SIZES if c % multiple == 0 and c < crop[0]), reverse=True):
        step_s = timing.step_s * side * side * batch_for((side, side), resources.gpus) / pixels
        if train_s / step_s >= MIN_STEPS or side == min(CROP_SIZES):
            draft.set("input_size", [side, side], f"{crop[0]} px crops would leave {train_s / timing.step_s:.0f} "
                                                  f"steps in the budget; {side} px leave {train_s / step_s:.0f} "
                                                  f"(at least {MIN_STEPS}, or the smallest crop)")
            plan_batch((side, side), resources, draft)
            plan_augmentation(fp, (side, side), draft)
            return Timing(step_s, timing.val_image_s, timing.val_images, timing.workers)
    return timing


def time_rules(draft: Draft, timing: Timing, budget_s: float) -> None:
    """Phase 2: steps, epochs, schedule and validation cadence that fill the budget."""
    val_s = validation_seconds(timing)
    train_s = budget_s * (1 - VAL_SHARE)
    steps = max(1, int(train_s / timing.step_s))
    short = f" (fewer than the {MIN_STEPS} the recipes needed: a larger budget would pay)" if steps < MIN_STEPS else ""
    per_epoch = max(MIN_STEPS_PER_EPOCH, steps // EPOCHS_TARGET)
    epochs = max(1, steps // per_epoch)
    batch, workers = draft.train["batch_size"], max(1, timing.workers)
    draft.set("samples_per_epoch", per_epoch * batch * workers,
              f"{per_epoch} steps x {batch} crops x {workers} worker(s) per epoch")
    draft.set("epochs", epochs, f"{steps} steps of {timing.step_s:.2f} s (probed) fill {1 - VAL_SHARE:.0%} of the "
                                f"{budget_s / 60:.1f} min budget{short}; the run re-sizes itself to the budget")
    draft.set("budget_s", float(budget_s), "the run stops in time, with its best checkpoint")
    warmup = min(100, max(10, steps // 20))
    draft.set("warmup_steps", warmup, "linear warm-up over the first 5 % of the steps (at most 100)")
    epoch_s = per_epoch * timing.step_s
    every = max(1, math.ceil(val_s / (VAL_SHARE * epoch_s))) if epoch_s else 1
    every = min(every, max(1, epochs // MIN_VALIDATIONS))
    draft.set("val_every", every, f"a validation takes about {val_s:.0f} s and an epoch {epoch_s:.0f} s: every "
                                  f"{every} epoch(s) keeps it near {VAL_SHARE:.0%} of the time, with at least "
                                  f"{min(MIN_VALIDATIONS, epochs)} validations")
    draft.set("patience", max(epochs, 1), "no early stopping: the budget ends the run")
    draft.set("min_steps", 0, "the budget, not a step count, ends the run")


def search_rules(draft: Draft, budget_s: float, concurrent: int) -> tuple[dict[str, Any], list[Decision]]:
    """The search around the recipe for `tune`: its learning rate and weight decay (and its class-weight
    exponent, when it sets one); ASHA stops weak trials at a quarter of the run; the search's budget is twice a
    trial's, so the recipe itself (Optuna's first trial) can run to its end and the rest explores."""
    train = draft.train
    lr = train["lr"]
    epochs = train["epochs"]
    search: dict[str, Any] = {"lr": {"loguniform": [round(lr / 3, 6), round(lr * 3, 6)]},
                              "weight_decay": {"loguniform": [1.0e-5, 1.0e-3]}}
    if train.get("class_weight_exponent") is not None:
        search["class_weight_exponent"] = {"uniform": [0.0, 1.0]}
    samples = 1 + 4 * max(1, concurrent)
    grace = max(1, epochs // 4)
    sections = {
        "search": search,
        # each trial re-sizes its epochs to its budget: the cap leaves room for one that measures faster steps
        "scheduler": {"type": "asha", "grace_period": grace, "reduction_factor": 2, "max_epochs": 2 * epochs},
        "searcher": {"type": "optuna", "seed": 0},
        "samples": samples,
        "resources": {"workers_per_trial": train["workers"], "cpus_per_worker": train["cpus_per_worker"]},
        "time_budget_s": float(2 * budget_s),
    }
    decisions = [
        Decision("search", sorted(search), "the recipe's learning rate x/ 3 and weight decay 1e-5..1e-3"
                 + (", class-weight exponent 0..1" if "class_weight_exponent" in search else "")),
        Decision("scheduler", f"asha grace {grace}", f"ASHA stops the weaker half at epoch {grace}, "
                 f"{2 * grace}, ... of {epochs}: a quarter of a trial's time"),
        Decision("samples", samples, f"the recipe first (it runs to its end), then {samples - 1} more; "
                 f"{concurrent} trial(s) at once"),
        Decision("time_budget_s", 2 * budget_s, "twice one trial's budget: the recipe, then the exploration"),
    ]
    return sections, decisions
