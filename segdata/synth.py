"""The built-in dataset: EM-like membranes, generated from a seed in seconds, so training needs no download.

Each image is a tessellation of cells (a jittered grid of seeds, nearest-seed regions under a smooth domain
warp, so the walls curve) whose walls are dark membranes of varying thickness, with textured cell interiors, a
few darker organelles that are not membrane, blur, noise and a slow contrast drift. Labels follow ISBI 2012:
0 = membrane, 255 = interior; dataset.yaml says so, like the ISBI set's. Geometry scales with the image size,
so the membrane share stays near ISBI's ~22 % at any size.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from segdata.meta import DataError, membrane_dataset_yaml

GENERATOR_VERSION = 1  # bump when the pictures change, so cached sets are regenerated
DEFAULTS = {"seed": 0, "n_train": 48, "n_val": 12, "size": 128}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field with about `cells` bumps per side, roughly in [-1, 1]."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) / 1.5


def membrane_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One grey image and its ISBI-style label (0 = membrane, 255 = interior), both size x size uint8."""
    unit = size / 128  # geometry is designed at 128 px
    spacing = rng.uniform(22, 30) * unit
    grid = np.arange(-spacing / 2, size + spacing, spacing)
    seeds = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    seeds += rng.uniform(-0.45, 0.45, seeds.shape) * spacing

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    warp = 0.18 * spacing
    xx += warp * _smooth_noise(rng, size, 4)
    yy += warp * _smooth_noise(rng, size, 4)
    # nearest and second-nearest seed per pixel: the distance to their bisector is the distance to the wall
    nearest = np.full((size, size), np.inf, np.float32)
    second = np.full((size, size), np.inf, np.float32)
    owner = np.zeros((size, size), np.int32)
    rival = np.zeros((size, size), np.int32)
    for index, (sx, sy) in enumerate(seeds):
        dist = (xx - sx) ** 2 + (yy - sy) ** 2
        closer = dist < nearest
        runner_up = ~closer & (dist < second)
        second = np.where(closer, nearest, np.where(runner_up, dist, second))
        rival = np.where(closer, owner, np.where(runner_up, index, rival))
        nearest = np.where(closer, dist, nearest)
        owner = np.where(closer, index, owner)
    gap = np.linalg.norm(seeds[owner] - seeds[rival], axis=-1).astype(np.float32)
    wall_distance = (second - nearest) / (2 * np.maximum(gap, 1e-3))
    half_width = unit * (1.55 + 0.65 * _smooth_noise(rng, size, 6))
    membrane = wall_distance < np.maximum(half_width, 0.6 * unit)

    cell_grey = rng.uniform(150, 205, len(seeds)).astype(np.float32)
    image = cell_grey[owner] + 14 * _smooth_noise(rng, size, 10)
    organelles = np.zeros((size, size), np.float32)
    for _ in range(rng.poisson(3 * unit**2)):
        centre = tuple(int(v) for v in rng.uniform(0, size, 2))
        axes = tuple(int(max(1, v)) for v in rng.uniform(2, 6, 2) * unit)
        cv2.ellipse(organelles, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    image -= rng.uniform(45, 70) * organelles * ~membrane
    image = np.where(membrane, rng.uniform(40, 75) + 12 * _smooth_noise(rng, size, 8), image)
    image = cv2.GaussianBlur(image, (0, 0), 0.9 * unit)
    image *= 1 + 0.22 * _smooth_noise(rng, size, 2)  # contrast drift across the section
    image = (image - 128) * rng.uniform(0.8, 1.15) + 128 + rng.uniform(-12, 12)
    image += rng.normal(0, rng.uniform(6, 13), image.shape)
    label = np.where(membrane, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), label


def generate(out: str, *, seed: int = 0, n_train: int = 48, n_val: int = 12, size: int = 128) -> str:
    """Write the synthetic set in the tutorial layout into `out` (new or empty) and return its absolute path.

    Image i depends only on (seed, i): the same seed gives the same bytes and a larger set extends a smaller.
    """
    if n_train < 1 or n_val < 1 or size < 32:
        raise DataError(f"synth: n_train and n_val must be >= 1 and size >= 32 "
                        f"(got {n_train}, {n_val}, {size})")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DataError(f"{out} exists and is not an empty folder; choose a new folder for the synthetic set")
    for folder in ("Images", "Labels", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    names = [f"{i:03d}" for i in range(n_train + n_val)]
    for i, name in enumerate(names):
        image, label = membrane_pair(np.random.default_rng([seed, i]), size)
        Image.fromarray(image).save(os.path.join(out, "Images", f"{name}.png"))
        Image.fromarray(label).save(os.path.join(out, "Labels", f"{name}.png"))
    for split, chosen in (("train", names[:n_train]), ("val", names[n_train:])):
        with open(os.path.join(out, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in chosen))
    params = f"seed={seed}, n_train={n_train}, n_val={n_val}, size={size}, generator {GENERATOR_VERSION}"
    with open(os.path.join(out, "dataset.yaml"), "w") as f:
        f.write(membrane_dataset_yaml(f"unet-zoo synthetic EM-like membranes ({params})"))
    return out
