#!/usr/bin/env python3
"""Training-transform throughput per core at 512 x 512 on the ISBI images: segdata vs the tutorial.

The reference re-implements the tutorial's `get_random_data` + label/one-hot step as the tutorial prints it
(bubbliiiing unet-pytorch `dataloader_medical.py`, Keras tutorial lineage): Pillow resize, flip and paste on a
grey canvas, float32 HSV jitter through OpenCV, `pixel <= 127.5 -> membrane`, `np.eye` one-hot and
`x / 127.5 - 1` in float64. It lives here only as the yardstick.

Both sides start from decoded pictures (the transform alone), and again from the PNG files (what a DataLoader
worker does per sample). OpenCV and torch run single-threaded, so the figures are per core.

Then the training pipeline of each shipped patch recipe (tune_configs/isbi.yaml on ISBI, camvid.yaml on CamVid:
crops, elastic deformation, rotations, intensity, noise, blur, class-aware centring; decoded pairs cached as in
training), next to the images/s one training worker of that recipe consumes, so it shows whether loading could
ever be the bottleneck of a 2-worker CPU run.

    .venv/bin/python benchmarks/data_throughput.py [--repeats 5] [--size 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

import segdata

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012"
RECIPES = {"isbi.yaml": ISBI, "camvid.yaml": REPO.parent / "shared" / "data" / "camvid"}


def rand(a: float = 0.0, b: float = 1.0) -> float:
    return np.random.rand() * (b - a) + a


def tutorial_get_random_data(image: Image.Image, label: Image.Image, input_shape: tuple[int, int],
                             jitter: float = 0.3, hue: float = 0.1, sat: float = 1.5, val: float = 1.5):
    """The tutorial's augmentation, step for step (its padding bug included: labels are padded with 0)."""
    image = image.convert("RGB")
    label = Image.fromarray(np.array(label))
    h, w = input_shape
    new_ar = w / h * rand(1 - jitter, 1 + jitter) / rand(1 - jitter, 1 + jitter)
    scale = rand(0.25, 2)
    if new_ar < 1:
        nh = int(scale * h)
        nw = int(nh * new_ar)
    else:
        nw = int(scale * w)
        nh = int(nw / new_ar)
    image = image.resize((nw, nh), Image.BICUBIC)
    label = label.resize((nw, nh), Image.NEAREST)
    label = label.convert("L")
    flip = rand() < 0.5
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        label = label.transpose(Image.FLIP_LEFT_RIGHT)
    dx = int(rand(0, w - nw))
    dy = int(rand(0, h - nh))
    new_image = Image.new("RGB", (w, h), (128, 128, 128))
    new_label = Image.new("L", (w, h), (0))
    new_image.paste(image, (dx, dy))
    new_label.paste(label, (dx, dy))
    image = new_image
    label = new_label
    hue = rand(-hue, hue)
    sat = rand(1, sat) if rand() < 0.5 else 1 / rand(1, sat)
    val = rand(1, val) if rand() < 0.5 else 1 / rand(1, val)
    x = cv2.cvtColor(np.array(image, np.float32) / 255, cv2.COLOR_RGB2HSV)
    x[..., 0] += hue * 360
    x[..., 0][x[..., 0] > 1] -= 1
    x[..., 0][x[..., 0] < 0] += 1
    x[..., 1] *= sat
    x[..., 2] *= val
    x[x[:, :, 0] > 360, 0] = 360
    x[:, :, 1:][x[:, :, 1:] > 1] = 1
    x[x < 0] = 0
    image_data = cv2.cvtColor(x, cv2.COLOR_HSV2RGB) * 255
    return image_data, label


def tutorial_sample(image: Image.Image, label: Image.Image, size: int, num_classes: int = 2):
    """The tutorial dataset's __getitem__ after reading: augmentation, medical label step, one-hot, scaling."""
    jpg, png = tutorial_get_random_data(image, label, (size, size))
    jpg = np.transpose(np.array(jpg, np.float64) / 127.5 - 1, [2, 0, 1])
    png = np.array(png)
    modify_png = np.zeros_like(png)
    modify_png[png <= 127.5] = 1
    seg_labels = np.eye(num_classes + 1)[modify_png.reshape([-1])]
    seg_labels = seg_labels.reshape((size, size, num_classes + 1))
    return jpg, modify_png, seg_labels


def median_ms(runs: list[Callable[[int, int], object]], count: int, repeats: int) -> list[float]:
    """Median over repeats of the mean milliseconds per image, for each run. The runs take turns within every
    repeat, so a busy machine slows all of them alike and the ratios stay fair."""
    timings: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats):
        for run, times in zip(runs, timings, strict=True):
            started = time.perf_counter()
            for index in range(count):
                run(repeat, index)
            times.append((time.perf_counter() - started) * 1000 / count)
    return [statistics.median(times) for times in timings]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ISBI), help="the ISBI 2012 folder (default: ../shared/...)")
    parser.add_argument("--size", type=int, default=512, help="network input side (default 512)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    np.random.seed(0)

    folder = segdata.open_dataset(args.data)
    samples, meta = folder.samples("train") + folder.samples("val"), folder.meta
    pil_pairs = [(Image.open(s.image).copy(), Image.open(s.label).copy()) for s in samples]
    grey_pairs = [(segdata.read_image(s.image), segdata.read_label(s.label, meta)) for s in samples]
    rgb_pairs = [(np.repeat(image, 3, axis=2), label) for image, label in grey_pairs]
    grey = segdata.TrainTransform((args.size, args.size), [127.5], [127.5])
    rgb = segdata.TrainTransform((args.size, args.size), [127.5] * 3, [127.5] * 3)
    dataset = segdata.SegmentationDataset(samples, meta, grey, seed=0)
    n = len(samples)

    def ours(transform, pairs):
        return lambda repeat, i: transform(*pairs[i], np.random.default_rng([0, repeat, i]))

    def tutorial_from_files(repeat: int, i: int):
        return tutorial_sample(Image.open(samples[i].image), Image.open(samples[i].label), args.size)

    def dataset_item(repeat: int, i: int):
        dataset.set_epoch(repeat)
        return dataset[i]

    rows = [
        ("tutorial get_random_data + one-hot", "RGB (converted)", "decoded",
         lambda repeat, i: tutorial_sample(*pil_pairs[i], args.size)),
        ("segdata TrainTransform", "grey, 1 channel", "decoded", ours(grey, grey_pairs)),
        ("segdata TrainTransform", "RGB, 3 channels", "decoded", ours(rgb, rgb_pairs)),
        ("tutorial __getitem__", "RGB (converted)", "PNG files", tutorial_from_files),
        ("segdata SegmentationDataset", "grey, 1 channel", "PNG files", dataset_item),
    ]
    milliseconds = median_ms([run for *_, run in rows], n, args.repeats)
    rows = [(*row[:3], ms) for row, ms in zip(rows, milliseconds, strict=True)]
    reference = {"decoded": rows[0][3], "PNG files": rows[3][3]}
    print(f"training transform, {args.size} x {args.size}, {n} ISBI images x {args.repeats} repeats, "
          f"1 thread (cv2 {cv2.__version__}, numpy {np.__version__}); medians")
    header = f"{'pipeline':<36} {'input':<16} {'from':<10} {'ms/img':>8} {'img/s/core':>11} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name, channels, source, ms in rows:
        print(f"{name:<36} {channels:<16} {source:<10} {ms:8.2f} {1000 / ms:11.1f} {reference[source] / ms:8.1f}x")
    print(f"ratio (segdata grey vs tutorial, transform only): {rows[0][3] / rows[1][3]:.1f}x (goal >= 2x)")
    recipe_pipelines(args.repeats)
    return 0


def recipe_pipelines(repeats: int) -> None:
    """Crops/s of each patch recipe's loader (one core) against the crops/s one training worker uses."""
    import yaml

    import plugins
    import zoo
    from segengine.config import TrainConfig
    from segengine.worker import make_train_set

    plugins.autoload()  # timm-* encoders
    print("\npatch recipes: loader crops/s on one core vs a training worker's consumption (batch, 1 thread)")
    print(f"{'recipe':<12} {'crop':>9} {'ms/crop':>8} {'crops/s':>8} {'worker uses':>12} {'share':>7}")
    for recipe, root in RECIPES.items():
        cfg = TrainConfig.from_dict(yaml.safe_load((REPO / "tune_configs" / recipe).read_text())["train"])
        folder = segdata.open_dataset(str(root))
        norm = zoo.get_spec(cfg.encoder).normalization.for_channels(folder.meta.in_channels)
        dataset = make_train_set(cfg, folder.samples("train"), folder.meta, norm)
        count = 64
        for i in range(len(dataset.samples)):  # training caches decoded pairs after the first epoch
            dataset.pair(i)
        (ms,) = median_ms([lambda repeat, i, ds=dataset: (ds.set_epoch(repeat), ds[i])], count, repeats)
        model = zoo.create_model(cfg.encoder, folder.meta.num_classes, in_channels=folder.meta.in_channels)
        optimizer = torch.optim.AdamW(model.parameters())
        x = torch.randn(cfg.batch_size, folder.meta.in_channels, *cfg.input_size)
        y = torch.randint(0, folder.meta.num_classes, (cfg.batch_size, *cfg.input_size))
        steps = []
        for _ in range(3):
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps.append(time.perf_counter() - started)
        used = cfg.batch_size / statistics.median(steps[1:])
        print(f"{recipe:<12} {'x'.join(map(str, cfg.input_size)):>9} {ms:8.2f} {1000 / ms:8.1f} {used:10.1f}/s "
              f"{used * ms / 10:6.1f}%")
    print("share: the part of one core a worker's loader needs to keep up (< 100 %: never the bottleneck)")


if __name__ == "__main__":
    sys.exit(main())
