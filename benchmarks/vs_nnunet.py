#!/usr/bin/env python3
"""nnU-Net v2 (2.8.1, 2d configuration, default trainer) against this project's no-config plan (`launch.py train
--budget`) on one dataset: the same wall-clock training budget, on this machine, one after the other, both scored by
one function of this script from their mask PNGs of the val split, at native resolution, ignored pixels skipped
(confusion matrix summed over the split -> per-class IoU = TP / (TP + FP + FN), mIoU their mean).

    python benchmarks/vs_nnunet.py --data ../shared/data/isbi2012 --budget 15m [--json /tmp/vs.json]
    python benchmarks/vs_nnunet.py --data ../shared/data/nuclei --budget 30m --skip-ours    # one half alone

nnU-Net never becomes a dependency: it lives in a throwaway venv (--venv, default $UNET_ZOO_CACHE/nnunet-venv or
~/.cache/unet-zoo/nnunet-venv; made once with `python -m venv` + pip, torch pinned to this project's, reused while its
stamp file matches). The dataset is read through segdata (the label decoding our training sees) and written in
nnU-Net's raw format under --work (default <cache>/vs-nnunet/<dataset>): the train split as imagesTr/labelsTr, the
val split as imagesTs. Then `nnUNetv2_plan_and_preprocess -c 2d`, `nnUNetv2_train ID 2d all` with the trainer
nnUNetTrainer_Budget (nnU-Net's default trainer, stopped once the budget has passed since its run_training began,
checked after every iteration; written by this script into the venv's trainer package) on CPU, and
`nnUNetv2_predict` (default test-time mirroring). Ours: `launch.py train --data DIR --budget B`, `launch.py predict`
on the val images (the masks scored here) and `launch.py evaluate` (its mIoU printed as a cross-check).

Prints each phase's time, nnU-Net's plan (patch, batch, stages, parameters), a table (training wall time,
iterations / optimizer steps, val mIoU, per-class IoU) and the commands that reproduce each half.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import segdata
from segdata.files import to_channels
from segdata.resolve import cache_dir
from segengine.config import parse_duration
from segengine.metrics import confusion_matrix, scores_from_confusion

REPO = Path(__file__).resolve().parents[1]
NNUNET = "nnunetv2==2.8.1"
TORCH = "torch==2.14.1"  # this project's pin (constraints.txt): pip takes it from the local wheel store
PINNED = ("torch", "torchvision")  # the lines of constraints.txt passed to the venv's pip as -c
STAMP = "unet-zoo-stamp.json"
DATASET_ID = 990  # nnU-Net's 3-digit dataset id; the scratch folders are this script's alone
TRAINER = "nnUNetTrainer_Budget"
BUDGET_ENV = "UNET_ZOO_BUDGET_S"

# nnU-Net finds a trainer by class name in nnunetv2.training.nnUNetTrainer, so this file goes into that package of
# the throwaway venv. run_training is nnU-Net 2.8.1's loop (nnUNetTrainer.run_training) plus the clock.
TRAINER_SOURCE = '''"""Written by unet-zoo's benchmarks/vs_nnunet.py: nnU-Net's default trainer, stopped at a budget."""
import json
import os
from time import perf_counter

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA


class nnUNetTrainer_Budget(nnUNetTrainer):
    """nnUNetTrainer unchanged but for the end: run_training stops once $UNET_ZOO_BUDGET_S seconds have passed since
    it began (set-up of the data loaders included), checked after every training and online-validation iteration.
    A cut epoch ends without its online validation; checkpoint_final.pth is written as usual (on_train_end) and
    budget.json beside it (iterations, seconds, threads, parameters). The final validation, which with fold all
    predicts the training cases, is skipped."""

    def run_training(self):
        budget = float(os.environ["UNET_ZOO_BUDGET_S"])
        started = perf_counter()
        self.on_train_start()
        setup_s = perf_counter() - started
        parameters = sum(p.numel() for p in self.network.parameters())
        print(f"[budget] {budget:.0f} s; set-up {setup_s:.1f} s; {parameters / 1e6:.2f} M parameters; "
              f"torch threads {torch.get_num_threads()}, augmentation processes {get_allowed_n_proc_DA()}; "
              f"epoch = {self.num_iterations_per_epoch} iterations of batch {self.batch_size}", flush=True)
        iterations = val_iterations = 0
        durations = []
        last_print = started
        over = False
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                tick = perf_counter()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                now = perf_counter()
                durations.append(now - tick)
                iterations += 1
                over = now - started >= budget
                if iterations <= 3 or now - last_print >= 30 or over:
                    print(f"[budget] iteration {iterations} (epoch {self.current_epoch}): {durations[-1]:.2f} s, "
                          f"loss {float(train_outputs[-1]['loss']):.4f}, {now - started:.0f} of {budget:.0f} s",
                          flush=True)
                    last_print = now
                if over:
                    break
            self.on_train_epoch_end(train_outputs)
            if over:  # a cut epoch: no online validation, no best checkpoint; counted as an epoch begun
                self.current_epoch += 1
                break
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = []
                for _ in range(self.num_val_iterations_per_epoch):
                    val_outputs.append(self.validation_step(next(self.dataloader_val)))
                    val_iterations += 1
                    if perf_counter() - started >= budget:
                        over = True
                        break
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            if over:
                break
        loop_s = perf_counter() - started
        self.on_train_end()
        first = durations[0] if durations else None
        durations.sort()
        record = {"budget_s": budget, "train_s": round(loop_s, 2), "setup_s": round(setup_s, 2),
                  "final_checkpoint_s": round(perf_counter() - started - loop_s, 2),
                  "iterations": iterations, "val_iterations": val_iterations, "epochs_begun": self.current_epoch,
                  "iterations_per_epoch": self.num_iterations_per_epoch, "batch_size": self.batch_size,
                  "median_iteration_s": round(durations[len(durations) // 2], 3) if durations else None,
                  "first_iteration_s": round(first, 3) if first is not None else None,
                  "parameters": parameters, "torch_threads": torch.get_num_threads(),
                  "torch_interop_threads": torch.get_num_interop_threads(),
                  "augmentation_processes": get_allowed_n_proc_DA(), "device": str(self.device)}
        with open(join(self.output_folder, "budget.json"), "w") as f:
            json.dump(record, f, indent=2)
        print(f"[budget] stopped after {iterations} iterations ({val_iterations} online-validation iterations) "
              f"in {loop_s:.1f} s; wrote checkpoint_final.pth and budget.json", flush=True)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped by nnUNetTrainer_Budget (fold all: it would predict the "
                               "training cases)")
'''


def stream(argv: list[str], *, tag: str, log: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> float:
    """Run `argv`, print its output as it comes (prefixed with `tag`) and keep it in `log`; seconds taken. A failure
    ends the benchmark with the command and the log's name."""
    print(f"$ {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as keep:
        keep.write(f"$ {shlex.join(argv)}\n")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=cwd, bufsize=1)
        previous = None
        for line in proc.stdout:  # universal newlines: tqdm's carriage returns arrive as lines
            line = line.rstrip()
            keep.write(line + "\n")
            if line and line != previous:
                print(f"[{tag}] {line}", flush=True)
            previous = line
        code = proc.wait()
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(f"{tag}: {argv[0]} exited with {code} after {seconds:.0f} s; full output in {log}")
    return seconds


# ---- the throwaway venv ----------------------------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_works(venv: Path) -> bool:
    stamp = venv / STAMP
    if not stamp.is_file() or json.loads(stamp.read_text()) != {"nnunetv2": NNUNET, "torch": TORCH}:
        return False
    probe = f"import nnunetv2, torch; assert torch.__version__.split('+')[0] == {TORCH.split('==')[1]!r}"
    return subprocess.run([str(venv_python(venv)), "-c", probe], capture_output=True).returncode == 0


def ensure_venv(venv: Path, log: Path) -> float:
    """nnU-Net in its own venv, made once (then reused while the stamp matches and it imports); seconds spent."""
    if venv_works(venv):
        print(f"nnU-Net venv {venv}: reused ({NNUNET}, {TORCH})", flush=True)
        return 0.0
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").is_file():
        raise SystemExit(f"--venv {venv} exists and is not a venv: give an empty or new folder")
    started = time.perf_counter()
    venv.parent.mkdir(parents=True, exist_ok=True)
    stream([sys.executable, "-m", "venv", "--clear", str(venv)], tag="venv", log=log)
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines()
            if line.split("==")[0].strip().lower() in PINNED]
    constraints = venv / "unet-zoo-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    stream([str(venv_python(venv)), "-m", "pip", "install", TORCH, NNUNET, "-c", str(constraints)],
           tag="pip", log=log)
    (venv / STAMP).write_text(json.dumps({"nnunetv2": NNUNET, "torch": TORCH}))
    if not venv_works(venv):
        raise SystemExit(f"the nnU-Net venv {venv} was installed but does not import nnunetv2 with {TORCH}")
    seconds = time.perf_counter() - started
    print(f"nnU-Net venv {venv}: set up in {seconds:.0f} s", flush=True)
    return seconds


def install_trainer(venv: Path) -> Path:
    """Write nnUNetTrainer_Budget into the venv's nnunetv2.training.nnUNetTrainer package (every run: it follows
    this script)."""
    where = subprocess.run([str(venv_python(venv)), "-c", "import nnunetv2.training.nnUNetTrainer as m; "
                            "print(m.__path__[0])"], capture_output=True, text=True, check=True).stdout.strip()
    path = Path(where) / f"{TRAINER}.py"
    path.write_text(TRAINER_SOURCE)
    return path


# ---- dataset conversion ----------------------------------------------------------------------------------------

def case_ids(samples: list[segdata.Sample]) -> list[str]:
    """nnU-Net case identifiers: the sample names with anything but letters, digits, '-' and '_' replaced."""
    ids: list[str] = []
    for sample in samples:
        case = re.sub(r"[^A-Za-z0-9_-]", "-", sample.name) or "case"
        while case in ids:
            case += "-"
        ids.append(case)
    return ids


def write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(path)


def convert(folder: segdata.SegFolder, dataset_dir: Path) -> dict[str, Any]:
    """The train split as imagesTr/labelsTr and the val split as imagesTs in nnU-Net's raw format (PNG, class ids
    0..K-1, ignored pixels as the label K named "ignore" when the train labels have any), and dataset.json."""
    meta = folder.meta
    channels = meta.in_channels
    if channels not in (1, 3):
        raise SystemExit(f"{folder.root}: {channels}-channel images; this benchmark converts grey and RGB only")
    train, val = folder.samples("train"), folder.samples("val")
    if not train or not val:
        raise SystemExit(f"{folder.root}: needs a train and a val split (has {len(train)} and {len(val)} images)")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dataset_dir / sub).mkdir(parents=True)
    k = meta.num_classes
    ignored = False
    for case, sample in zip(case_ids(train), train, strict=True):
        write_png(to_channels(segdata.read_image(sample.image), channels), dataset_dir / f"imagesTr/{case}_0000.png")
        label = segdata.read_label(sample.label, meta)
        if (label == segdata.IGNORE).any():
            ignored = True
            label = np.where(label == segdata.IGNORE, k, label).astype(np.uint8)
        write_png(label, dataset_dir / "labelsTr" / f"{case}.png")
    val_cases = case_ids(val)
    for case, sample in zip(val_cases, val, strict=True):
        write_png(to_channels(segdata.read_image(sample.image), channels), dataset_dir / f"imagesTs/{case}_0000.png")
    # nnU-Net's label 0 must be called "background"; our names are kept for the report
    labels = {"background": 0, **{f"{name}" if name not in ("background", "ignore") else f"{name}-{i}": i
                                  for i, name in enumerate(meta.classes) if i}}
    if ignored:
        labels["ignore"] = k  # nnU-Net's convention: the ignore label is the highest one
    # one RGB PNG per case with three channel names is nnU-Net's natural-image convention (NaturalImage2DIO)
    channel_names = {"0": "grey"} if channels == 1 else {"0": "R", "1": "G", "2": "B"}
    dataset_json = {"name": dataset_dir.name, "description": f"{folder.root} through unet-zoo's segdata",
                    "channel_names": channel_names, "labels": labels, "numTraining": len(train),
                    "file_ending": ".png", "overwrite_image_reader_writer": "NaturalImage2DIO"}
    (dataset_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return {"train": len(train), "val": len(val), "ignore_label": ignored, "labels": labels,
            "val_cases": dict(zip((s.name for s in val), val_cases, strict=True))}


# ---- scoring (both tools) --------------------------------------------------------------------------------------

def score_masks(masks: dict[str, Path], samples: list[segdata.Sample], meta: segdata.DatasetMeta) -> dict[str, Any]:
    """One confusion matrix over the samples from predicted class-id PNGs (by sample name) against the labels as
    segdata decodes them, at native resolution; ignored pixels skipped; scores_from_confusion's IoU and mIoU."""
    k = meta.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    for sample in samples:
        pred = np.asarray(Image.open(masks[sample.name]))
        label = segdata.read_label(sample.label, meta)
        if pred.shape != label.shape:
            raise SystemExit(f"{masks[sample.name]}: mask is {pred.shape} but the label of {sample.name} is "
                             f"{label.shape}")
        if pred.max(initial=0) >= k:
            raise SystemExit(f"{masks[sample.name]}: class id {pred.max()} but the dataset has {k} classes")
        cm += confusion_matrix(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label.astype(np.int64)), k)
    scores = scores_from_confusion(cm.numpy(), list(meta.classes))
    return {"miou": scores["miou"], "iou": scores["iou"], "pixel_acc": scores["pixel_acc"],
            "confusion": cm.tolist(), "images": len(samples)}


# ---- nnU-Net ---------------------------------------------------------------------------------------------------

def plan_summary(plans_file: Path) -> dict[str, Any]:
    """The 2d configuration of nnUNetPlans.json: patch, batch, network stages and widths, normalisation."""
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["2d"]
    arch = config.get("architecture", {})
    kwargs = arch.get("arch_kwargs", {})
    return {"patch_size": config["patch_size"], "batch_size": config["batch_size"],
            "median_image_size": config.get("median_image_size_in_voxels"),
            "network": arch.get("network_class_name", "").rsplit(".", 1)[-1], "stages": kwargs.get("n_stages"),
            "features_per_stage": kwargs.get("features_per_stage"),
            "convs_per_stage": kwargs.get("n_conv_per_stage"), "normalization": config.get("normalization_schemes")}


def nnunet_env(work: Path, budget_s: float) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{BUDGET_ENV: f"{budget_s:g}"})
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(work / name)
    return env


def run_nnunet(a: argparse.Namespace, folder: segdata.SegFolder, work: Path) -> dict[str, Any]:
    phases: dict[str, float] = {}
    log = work / "nnunet.log"
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnunet-pred"):
        shutil.rmtree(work / name, ignore_errors=True)
    log.unlink(missing_ok=True)
    phases["setup_s"] = ensure_venv(a.venv, log)
    trainer_file = install_trainer(a.venv)
    print(f"wrote {TRAINER} to {trainer_file}", flush=True)
    bin_dir = a.venv / "bin"
    env = nnunet_env(work, a.budget_s)

    started = time.perf_counter()
    dataset = f"Dataset{DATASET_ID:03d}_{re.sub(r'[^A-Za-z0-9]', '', Path(folder.root).name) or 'data'}"
    converted = convert(folder, work / "nnUNet_raw" / dataset)
    phases["convert_s"] = time.perf_counter() - started
    print(f"converted {converted['train']} train / {converted['val']} val images to {work / 'nnUNet_raw' / dataset} "
          f"in {phases['convert_s']:.1f} s; labels {converted['labels']}", flush=True)

    ident = str(DATASET_ID)
    commands = [
        [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", ident, "-c", "2d", "--verify_dataset_integrity"],
        [str(bin_dir / "nnUNetv2_train"), ident, "2d", "all", "-tr", TRAINER, "-device", "cpu"],
        [str(bin_dir / "nnUNetv2_predict"), "-i", str(work / "nnUNet_raw" / dataset / "imagesTs"), "-o",
         str(work / "nnunet-pred"), "-d", ident, "-c", "2d", "-f", "all", "-tr", TRAINER, "-chk",
         "checkpoint_final.pth", "-device", "cpu"],
    ]
    for key, argv in zip(("plan_s", "train_wall_s", "predict_s"), commands, strict=True):
        phases[key] = stream(argv, tag="nnunet", log=log, env=env)
        print(f"{Path(argv[0]).name}: {phases[key]:.1f} s", flush=True)

    plan = plan_summary(work / "nnUNet_preprocessed" / dataset / "nnUNetPlans.json")
    fold = work / "nnUNet_results" / dataset / f"{TRAINER}__nnUNetPlans__2d" / "fold_all"
    if not (fold / "checkpoint_final.pth").is_file():
        raise SystemExit(f"nnU-Net wrote no {fold / 'checkpoint_final.pth'}")
    budget = json.loads((fold / "budget.json").read_text())
    val = folder.samples("val")
    started = time.perf_counter()
    masks = {name: work / "nnunet-pred" / f"{case}.png" for name, case in converted["val_cases"].items()}
    scores = score_masks(masks, val, folder.meta)
    phases["score_s"] = time.perf_counter() - started
    env_line = " ".join(f"{n}={shlex.quote(env[n])}" for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                                               BUDGET_ENV))
    return {"tool": "nnU-Net 2.8.1 (2d, fold all)", "phases": phases, "plan": plan, "budget": budget,
            "train_s": budget["train_s"], "steps": budget["iterations"], "steps_kind": "iterations",
            "scores": scores, "dataset_dir": str(work / "nnUNet_raw" / dataset), "checkpoint": str(fold),
            "commands": [f"{env_line} {shlex.join(argv)}" for argv in commands]}


# ---- ours ------------------------------------------------------------------------------------------------------

def val_stems(folder: segdata.SegFolder) -> list[str]:
    """The file stem of each val image: the name `launch.py predict` gives its mask (`<stem>_mask.png`)."""
    stems = [Path(str(s.image).split("?")[0]).stem for s in folder.samples("val")]
    if len(set(stems)) != len(stems):
        raise SystemExit(f"{folder.root}: val image names repeat ({len(stems) - len(set(stems))} duplicate stems)")
    return stems


def run_ours(a: argparse.Namespace, folder: segdata.SegFolder, work: Path) -> dict[str, Any]:
    """`launch.py train --budget` into <work>/ours-runs, then `predict_and_score_ours`."""
    log, storage = work / "ours.log", work / "ours-runs"
    shutil.rmtree(storage, ignore_errors=True)
    log.unlink(missing_ok=True)
    val_stems(folder)  # refuse before training, not after
    name = f"vs-nnunet-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = [sys.executable, "launch.py", "train", "--data", folder.root, "--budget", a.budget, "--name", name,
            "--storage", str(storage)]
    train_wall_s = stream(argv, tag="ours", log=log, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=REPO)
    print(f"launch.py train: {train_wall_s:.1f} s", flush=True)
    result = predict_and_score_ours(folder, storage / name, work, log)
    result["phases"] = {"train_wall_s": train_wall_s, **result["phases"]}
    result["commands"].insert(0, shlex.join(argv))
    return result


def predict_and_score_ours(folder: segdata.SegFolder, run_dir: Path, work: Path, log: Path) -> dict[str, Any]:
    """Masks of the val images by `launch.py predict` scored by `score_masks`, and `launch.py evaluate` beside
    them as a cross-check; steps and budget spent from the run folder."""
    pred, evaluated = work / "ours-pred", work / "ours-eval"
    for path in (pred, evaluated):
        shutil.rmtree(path, ignore_errors=True)
    val, stems = folder.samples("val"), val_stems(folder)
    commands = [
        [sys.executable, "launch.py", "predict", str(run_dir), *(str(s.image) for s in val), "--out", str(pred),
         "--device", "cpu"],
        [sys.executable, "launch.py", "evaluate", str(run_dir), "--data", folder.root, "--out", str(evaluated),
         "--device", "cpu"],
    ]
    phases: dict[str, float] = {}
    for key, argv in zip(("predict_s", "evaluate_s"), commands, strict=True):
        phases[key] = stream(argv, tag="ours", log=log, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=REPO)
        print(f"launch.py {argv[2]}: {phases[key]:.1f} s", flush=True)
    with open(run_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    timings = json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").is_file() else {}
    spent = (timings.get("budget") or {}).get("spent_s")  # training + validation, start-up not counted
    train_s = spent if spent is not None else sum(float(h.get("epoch_time_s") or 0) for h in history)
    started = time.perf_counter()
    scores = score_masks({s.name: pred / f"{stem}_mask.png" for s, stem in zip(val, stems, strict=True)}, val,
                         folder.meta)
    phases["score_s"] = time.perf_counter() - started
    metrics = json.loads((evaluated / "metrics.json").read_text())
    return {"tool": "unet-zoo (no-config plan)", "phases": phases, "train_s": round(float(train_s), 2),
            "steps": int(float(history[-1].get("steps") or 0)) if history else 0, "steps_kind": "optimizer steps",
            "epochs": len(history), "scores": scores, "run_dir": str(run_dir),
            "evaluate": {"miou": metrics.get("miou"), "iou": metrics.get("iou"), "inference": metrics.get("inference"),
                         "encoder": metrics.get("encoder"), "input_size": metrics.get("input_size")},
            "commands": [shlex.join(argv) for argv in commands]}


# ---- report ----------------------------------------------------------------------------------------------------

def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def phase_list(phases: dict[str, float]) -> str:
    return ", ".join("venv reused" if key == "setup_s" and not seconds else f"{key.removesuffix('_s')} {seconds:.0f}"
                     for key, seconds in phases.items())


def report(a: argparse.Namespace, folder: segdata.SegFolder, results: list[dict[str, Any]]) -> None:
    classes = list(folder.meta.classes)
    print(f"\n{folder.root}: {len(folder.samples('train'))} train / {len(folder.samples('val'))} val images, scored "
          f"at native resolution (ignored pixels skipped); budget {a.budget} = {a.budget_s:.0f} s; {cpu_name()}, "
          f"{os.cpu_count()} CPUs")
    for r in results:
        if "plan" in r:
            p, b = r["plan"], r["budget"]
            print(f"nnU-Net plan (2d): patch {'x'.join(map(str, p['patch_size']))}, batch {p['batch_size']}, "
                  f"{p['network']} {p['stages']} stages, features {p['features_per_stage']}, "
                  f"{b['parameters'] / 1e6:.2f} M parameters, normalisation {p['normalization']}; "
                  f"torch threads {b['torch_threads']}, augmentation processes {b['augmentation_processes']}, "
                  f"median iteration {fmt(b['median_iteration_s'], 2)} s, {b['iterations_per_epoch']} per epoch")
        if "evaluate" in r and r["evaluate"]["miou"] is not None:
            e = r["evaluate"]
            print(f"unet-zoo: encoder {e['encoder']}, input {e['input_size']}, inference {e['inference']}, "
                  f"{r['epochs']} epochs; launch.py evaluate mIoU {fmt(e['miou'])} (cross-check: the masks scored "
                  f"here give {fmt(r['scores']['miou'])})")
    print("\nphase seconds: " + "; ".join(f"{r['tool']}: {phase_list(r['phases'])}" for r in results))
    width = max(10, *(len(c) for c in classes))
    head = (f"{'tool':<30} {'budget':>7} {'train wall s':>12} {'loop s':>7} {'steps':>16} {'val mIoU':>9}  "
            + "  ".join(f"{c:>{width}}" for c in classes))
    print("\n" + head)
    for r in results:
        steps = f"{r['steps']} {'iter' if r['steps_kind'] == 'iterations' else 'steps'}"
        print(f"{r['tool']:<30} {a.budget:>7} {r['phases']['train_wall_s']:>12.0f} {r['train_s']:>7.0f} "
              f"{steps:>16} {fmt(r['scores']['miou']):>9}  "
              + "  ".join(f"{fmt(r['scores']['iou'][c]):>{width}}" for c in classes))
    print("\nreproduce:")
    print("  " + shlex.join([sys.executable, *sys.argv]))
    for r in results:
        for command in r["commands"]:
            print(f"  {command}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, metavar="DIR", help="dataset folder (segdata layout, train/val splits)")
    ap.add_argument("--budget", default="15m", help="training wall-clock budget of each tool: 90s, 15m, 1h")
    ap.add_argument("--venv", type=Path, default=None, help="nnU-Net's throwaway venv (default <cache>/nnunet-venv)")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch folder (default <cache>/vs-nnunet/<dataset>); never inside the repository")
    ap.add_argument("--skip-ours", action="store_true", help="run nnU-Net only")
    ap.add_argument("--skip-nnunet", action="store_true", help="run this project's plan only")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    a = ap.parse_args()
    if a.skip_ours and a.skip_nnunet:
        ap.error("--skip-ours and --skip-nnunet together leave nothing to run")
    try:
        a.budget_s = parse_duration(a.budget)
    except argparse.ArgumentTypeError as exc:
        ap.error(f"--budget {exc}")
    folder = segdata.open_dataset(segdata.resolve_data(a.data))
    cache = Path(cache_dir())
    a.venv = (a.venv or cache / "nnunet-venv").absolute()
    work = (a.work or cache / "vs-nnunet" / (Path(folder.root).name or "data")).absolute()
    if work == REPO or REPO in work.parents:
        ap.error(f"--work {work} is inside the repository; scratch belongs under the cache ({cache})")
    work.mkdir(parents=True, exist_ok=True)
    print(f"scratch: {work}; nnU-Net venv: {a.venv}", flush=True)
    results = []
    if not a.skip_nnunet:
        results.append(run_nnunet(a, folder, work))
    if not a.skip_ours:
        results.append(run_ours(a, folder, work))
    report(a, folder, results)
    if a.json:
        out = {"data": folder.root, "budget": a.budget, "budget_s": a.budget_s, "cpu": cpu_name(),
               "cpus": os.cpu_count(), "classes": list(folder.meta.classes), "results": results}
        a.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
