"""Helpers for the segdata tests: tiny images whose threshold is a label aligned with the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def blob_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Smooth grey blobs: a threshold of this image is a label whose edges follow the image's own edges."""
    h, w = size
    coarse = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).clip(0, 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)

