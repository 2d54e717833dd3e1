#!/usr/bin/env python3
"""Rerun one row of the reference table (docs/models.md): train a recipe from scratch, then score the best
checkpoint at native resolution on the validation split and on the training split (the train/val gap).

    python benchmarks/reference_accuracy.py isbi                       # tune_configs/isbi.yaml, its encoder
    python benchmarks/reference_accuracy.py isbi --encoder mini        # the same recipe with another encoder
    python benchmarks/reference_accuracy.py camvid
    python benchmarks/reference_accuracy.py tutorial                   # `train --encoder mobilenet ...` of issue 10
    python benchmarks/reference_accuracy.py isbi-planned               # no config: `train --data DIR --budget 15m`
    python benchmarks/reference_accuracy.py nuclei                     # tune_configs/nuclei.yaml (by hand)
    python benchmarks/reference_accuracy.py isbi --holdout 5           # choose settings: the last 5 training
                                                                       # images as validation, val never seen

Prints the command it ran, steps, wall time, val mIoU and per-class IoU, train mIoU and the gap. The figures in
docs/models.md come from this script on the development machine (2 cores, no GPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ROWS = {
    "isbi": (["--config", "tune_configs/isbi.yaml"], "isbi2012"),
    "camvid": (["--config", "tune_configs/camvid.yaml"], "camvid"),
    "tutorial": (["--encoder", "mobilenet", "--workers", "2", "--epochs", "30", "--input-size", "256", "256"],
                 "isbi2012"),
    "nuclei": (["--config", "tune_configs/nuclei.yaml"], "nuclei"),
    # no config: the plan (docs/planning.md), within the budgets of issue 22's targets
    "isbi-planned": (["--budget", "15m"], "isbi2012"),
    "nuclei-planned": (["--budget", "15m"], "nuclei"),
    "camvid-planned": (["--budget", "30m"], "camvid"),
}


def holdout_splits(data: Path, count: int, folder: Path) -> list[str]:
    """Split files: train without its last `count` names, and those names as validation."""
    names = [n for n in (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split() if n]
    (folder / "train.txt").write_text("\n".join(names[:-count]) + "\n")
    (folder / "val.txt").write_text("\n".join(names[-count:]) + "\n")
    return ["--train-split", str(folder / "train.txt"), "--val-split", str(folder / "val.txt")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row", choices=sorted(ROWS))
    ap.add_argument("--encoder", default=None, help="override the recipe's encoder")
    ap.add_argument("--holdout", type=int, default=0, metavar="N",
                    help="validate on the last N training images instead of the val split")
    ap.add_argument("--storage", default=None, help="where the run goes (default: a temporary folder)")
    ap.add_argument("--score", default=None, metavar="RUN_DIR", help="only score an existing run of this row")
    a, extra = ap.parse_known_args()  # anything else goes to `launch.py train` (e.g. --epochs 10)
    flags, dataset = ROWS[a.row]
    data = SHARED / dataset
    tmp = tempfile.TemporaryDirectory(prefix="unet-zoo-reference-")
    storage = a.storage or tmp.name
    name = f"{a.row}-{a.encoder or 'recipe'}{'-holdout' if a.holdout else ''}-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "launch.py", "train", *flags, "--data", str(data), "--storage", storage, "--name", name]
    if a.encoder:
        cmd += ["--encoder", a.encoder]
    val_split, train_split = "val", "train"
    if a.holdout:
        split_flags = holdout_splits(data, a.holdout, Path(tmp.name))
        cmd += split_flags
        train_split, val_split = split_flags[1], split_flags[3]
    cmd += extra
    start = time.time()
    if a.score:
        storage, name = str(Path(a.score).parent), Path(a.score).name
    else:
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.time() - start

    import csv

    from segengine import checkpoint
    from segengine.inference import evaluate

    run_dir = Path(storage) / name
    with open(run_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    best = checkpoint.best_path(str(run_dir), "val_miou", "max")
    manifest = checkpoint.read_manifest(best)
    val = evaluate(best, str(data), split=val_split, out=str(run_dir / "eval-val"), verbose=False).metrics
    train = evaluate(best, str(data), split=train_split, out=str(run_dir / "eval-train"), verbose=False).metrics
    steps = int(history[-1].get("steps") or 0)
    train_time = sum(float(h["epoch_time_s"]) for h in history)
    print(f"\nrow {a.row}: encoder {manifest.encoder}, crop {'x'.join(map(str, manifest.input_size))}, "
          f"{steps} steps in {len(history)} epochs, training {train_time / 60:.1f} min, wall {wall / 60:.1f} min "
          f"({manifest.config['workers']} workers on this machine), best epoch {manifest.epoch + 1}, "
          f"scored {val['inference']['mode']} at "
          "native resolution")
    width = max(len(n) for n in val["class_names"])
    print(f"{'class':<{width}}  val IoU  train IoU")
    for cls in val["class_names"]:
        print(f"{cls:<{width}}  {val['iou'][cls]:7.4f}  {train['iou'][cls]:9.4f}")
    print(f"{'mIoU':<{width}}  {val['miou']:7.4f}  {train['miou']:9.4f}   (gap {train['miou'] - val['miou']:+.4f}); "
          f"val pixel accuracy {val['pixel_acc']:.4f}")
    print(json.dumps({"row": a.row, "encoder": manifest.encoder, "holdout": a.holdout, "steps": steps,
                      "train_min": round(train_time / 60, 2), "wall_min": round(wall / 60, 2),
                      "val_miou": round(val["miou"], 4), "train_miou": round(train["miou"], 4),
                      "val_iou": {k: round(v, 4) for k, v in val["iou"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
