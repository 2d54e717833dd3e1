#!/usr/bin/env python3
"""A 16-bit narrow-range copy of a dataset trains as well as the 8-bit original (issue 23): the no-config plan of
each, with the keys that the plan sizes from its timing probe pinned (epochs, samples per epoch, warm-up, validation
cadence) so both train the same steps, one after the other on this machine, scored by `launch.py evaluate` on the
same val split, printed side by side, per seed and as the mean over the seeds (a short run's mIoU moves by about a
hundredth from seed to seed, so one pair of runs cannot tell a hundredth apart).

    python benchmarks/deep_images.py --data ../shared/data/nuclei [--seeds 0 1 2] [--epochs 20 --samples-per-epoch 260]

A run whose evaluation is already in --work is read back, not trained again (delete --work to start over).

The copy (written once under $UNET_ZOO_CACHE or ~/.cache/unet-zoo/deep-images/, never into the dataset) holds each
image as a 16-bit TIFF of offset + gain x value (33000 + 15 x v spans 33000-36825, as a microscope's counts might),
the labels' bytes unchanged, the original's split lists and its dataset.yaml. segdata maps its values onto 0..255 from
the training images' own percentiles, so nothing in the plan or the recipe knows the copy is 16-bit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

import segdata
from segdata.resolve import cache_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_nnunet import REPO, cpu_name, stream  # noqa: E402  (a sibling script: one runner, one CPU name)


def deep_copy(folder: segdata.SegFolder, offset: int, gain: int) -> Path:
    """The 16-bit copy in the tutorial layout with the original's splits (made once; a stamp marks it complete)."""
    out = Path(cache_dir()) / "deep-images" / f"{Path(folder.root).name}-16bit-{offset}-{gain}"
    if (out / "stamp.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    splits = out / "ImageSets" / "Segmentation"
    for path in (out / "Images", out / "Labels", splits):
        path.mkdir(parents=True)
    for split in ("train", "val"):
        samples = folder.samples(split)
        for sample in samples:
            values = segdata.read_image(sample.image).astype(np.uint32) * gain + offset
            if values.max() > 65535:
                raise SystemExit(f"--offset {offset} --gain {gain}: values pass 65535; choose smaller ones")
            tifffile.imwrite(out / "Images" / f"{sample.name}.tif", values.astype(np.uint16).squeeze())
            shutil.copyfile(sample.label, out / "Labels" / f"{sample.name}{Path(sample.label).suffix}")
        (splits / f"{split}.txt").write_text("".join(f"{s.name}\n" for s in samples))
    yaml_path = Path(folder.root) / "dataset.yaml"
    if yaml_path.is_file():
        shutil.copyfile(yaml_path, out / "dataset.yaml")
    (out / "stamp.json").write_text(json.dumps({"source": folder.root, "offset": offset, "gain": gain}))
    return out


def train_and_score(data: Path, name: str, seed: int, a: argparse.Namespace, work: Path) -> dict:
    runs, log, evaluated = work / "runs", work / f"{name}.log", work / f"eval-{name}"
    train = [sys.executable, "launch.py", "train", "--data", str(data), "--epochs", str(a.epochs),
             "--samples-per-epoch", str(a.samples_per_epoch), "--warmup-steps", str(a.warmup_steps),
             "--val-every", str(a.val_every), "--seed", str(seed), "--storage", str(runs), "--name", name]
    evaluate = [sys.executable, "launch.py", "evaluate", str(runs / name), "--data", str(data), "--out",
                str(evaluated), "--device", "cpu"]
    done = evaluated / "commands.json"
    if not (done.is_file() and json.loads(done.read_text())["train"] == shlex.join(train)):
        shutil.rmtree(runs / name, ignore_errors=True)
        shutil.rmtree(evaluated, ignore_errors=True)
        train_s = stream(train, tag=name, log=log, cwd=REPO)
        stream(evaluate, tag=name, log=log, cwd=REPO)
        done.write_text(json.dumps({"train": shlex.join(train), "train_s": train_s}))
    metrics = json.loads((evaluated / "metrics.json").read_text())
    return {"train_s": json.loads(done.read_text())["train_s"], "miou": metrics["miou"], "iou": metrics["iou"],
            "commands": [shlex.join(train), shlex.join(evaluate)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "nuclei"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="both runs train this many epochs of their plan")
    parser.add_argument("--samples-per-epoch", type=int, default=260)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--val-every", type=int, default=4)
    parser.add_argument("--offset", type=int, default=33000)
    parser.add_argument("--gain", type=int, default=15)
    parser.add_argument("--work", default=None, help="runs, evaluations and logs (default: <cache>/deep-images)")
    a = parser.parse_args()
    folder = segdata.open_dataset(a.data)
    copy = deep_copy(folder, a.offset, a.gain)
    work = Path(a.work or Path(cache_dir()) / "deep-images" / "work")
    amx = "amx_bf16" in Path("/proc/cpuinfo").read_text()
    print(f"machine: {cpu_name()} ({'AMX, bf16 native' if amx else 'no AMX'}); {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"8-bit original: {folder.root}\n16-bit copy:    {copy}")
    deep = segdata.open_dataset(str(copy))
    print("16-bit range mapped onto 0..255: " + ", ".join(f"{lo:g}..{hi:g}" for lo, hi in deep.meta.image_range))
    results = {(depth, seed): train_and_score(data, f"{tag}-seed{seed}", seed, a, work)
               for seed in a.seeds for depth, tag, data in (("8-bit", "8bit", Path(folder.root)),
                                                          ("16-bit", "16bit", copy))}
    classes = list(next(iter(results.values()))["iou"])
    print(f"\n{'images':8} {'seed':>5} {'train s':>8} {'val mIoU':>9} " + " ".join(f"{c:>10}" for c in classes))
    for (depth, seed), r in results.items():
        print(f"{depth:8} {seed:5d} {r['train_s']:8.0f} {r['miou']:9.4f} "
              + " ".join(f"{r['iou'][c]:10.4f}" for c in classes))
    means = {depth: float(np.mean([r["miou"] for (d, _), r in results.items() if d == depth]))
             for depth in ("8-bit", "16-bit")}
    print(f"\nmean over seeds {', '.join(map(str, a.seeds))}: 8-bit {means['8-bit']:.4f}, 16-bit "
          f"{means['16-bit']:.4f}; 16-bit minus 8-bit {means['16-bit'] - means['8-bit']:+.4f} (target: within 0.01)")
    for (depth, seed), r in results.items():
        print(f"{depth} seed {seed}: " + "\n    ".join(r["commands"]))

if __name__ == "__main__":
    main()
