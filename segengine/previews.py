"""Prediction previews: what the model predicts on a fixed set of validation images, at every validation.

Rank 0 picks up to `PREVIEW_IMAGES` images of its own validation shard once (seeded, the images that hold the most
classes not yet shown first), keeps their predictions while it validates (no extra forward pass), and renders one
sheet: per image a row of panels image | ground truth | prediction | errors (wrong pixels in a colour no class
has, on the dimmed image; ignored pixels grey), with the dataset's colours and a legend. The sheet goes to
`previews/latest.png` and `previews/best.png` (the best epoch's) in the run folder, to TensorBoard and to MLflow /
W&B when tracking is on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import segdata
from segengine.metrics import image_miou

PREVIEW_IMAGES = 8
TILE = 160  # pixels of a panel's longer side: a 4 x 8 sheet stays a few hundred kB
ERROR_CHOICES = ((255, 0, 255), (255, 220, 0), (0, 230, 230), (230, 30, 30))  # the one farthest from the classes
IGNORED_RGB = (128, 128, 128)
TEXT_RGB = (20, 20, 20)
CANDIDATES = 64  # shard images whose labels are read to choose from


def choose(presence: np.ndarray, seed: int, most: int = PREVIEW_IMAGES) -> list[int]:
    """Up to `most` rows of `presence` (images x classes booleans): in a seeded order, each time the image that adds
    the most classes not shown yet, until every class present is shown; then the next ones in that order."""
    order = list(np.random.default_rng(seed).permutation(len(presence)))
    picked: list[int] = []
    shown = np.zeros(presence.shape[1], bool)
    while order and len(picked) < most:
        gains = [int((presence[i] & ~shown).sum()) for i in order]
        best = int(np.argmax(gains)) if max(gains) > 0 else 0
        index = order.pop(best)
        picked.append(int(index))
        shown |= presence[index]
    return sorted(picked)


def error_colour(palette: np.ndarray) -> tuple[int, int, int]:
    """The error colour that differs most from every class colour (magenta unless a class is near it)."""
    colours = palette.astype(np.int64)
    return max(ERROR_CHOICES, key=lambda c: int(((colours - np.asarray(c)) ** 2).sum(axis=1).min()))


def _fit(array: np.ndarray, resample: int) -> Image.Image:
    image = Image.fromarray(array)
    scale = TILE / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)


def _colours(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """H x W x 3 colours of class ids; ignored pixels (ids past the palette) grey."""
    out = np.empty((*mask.shape, 3), np.uint8)
    out[:] = IGNORED_RGB
    known = mask < len(palette)
    out[known] = palette[mask[known]]
    return out


def panel_row(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, palette: np.ndarray,
              title: str) -> Image.Image:
    """One image's row: image | ground truth | prediction | errors, each scaled to TILE, the title above."""
    rgb = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    errors = (rgb.astype(np.float32) * 0.45).astype(np.uint8)
    ignored = label >= len(palette)
    errors[(prediction != label) & ~ignored] = error_colour(palette)
    errors[ignored] = IGNORED_RGB
    tiles = [_fit(rgb, Image.BILINEAR), _fit(_colours(label, palette), Image.NEAREST),
             _fit(_colours(prediction, palette), Image.NEAREST), _fit(errors, Image.NEAREST)]
    font = ImageFont.load_default()
    width, height = sum(t.width for t in tiles) + 3 * 4, tiles[0].height + 16
    row = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(row).text((2, 2), title, fill=TEXT_RGB, font=font)
    x = 0
    for tile in tiles:
        row.paste(tile, (x, 16))
        x += tile.width + 4
    return row


def legend(class_names: list[str], palette: np.ndarray, width: int) -> Image.Image:
    """The column titles and a swatch per class, wrapped to `width`."""
    font = ImageFont.load_default()
    entries = [(name, tuple(int(v) for v in palette[i])) for i, name in enumerate(class_names)]
    entries += [("ignored", IGNORED_RGB), ("error", error_colour(palette))]
    lines: list[list[tuple[str, tuple[int, int, int]]]] = [[]]
    used = 0
    for name, colour in entries:
        size = 16 + 7 * len(name) + 12
        if used + size > width and lines[-1]:
            lines.append([])
            used = 0
        lines[-1].append((name, colour))
        used += size
    strip = Image.new("RGB", (width, 18 + 16 * len(lines)), "white")
    draw = ImageDraw.Draw(strip)
    draw.text((2, 2), "image | ground truth | prediction | errors", fill=TEXT_RGB, font=font)
    for row, entries_of_line in enumerate(lines):
        x, y = 2, 18 + 16 * row
        for name, colour in entries_of_line:
            draw.rectangle((x, y + 2, x + 10, y + 12), fill=colour, outline=TEXT_RGB)
            draw.text((x + 14, y), name, fill=TEXT_RGB, font=font)
            x += 16 + 7 * len(name) + 12
    return strip


def sheet(rows: list[Image.Image], class_names: list[str], palette: np.ndarray) -> np.ndarray:
    """The rows stacked under the legend: H x W x 3 uint8."""
    width = max(r.width for r in rows)
    top = legend(class_names, palette, width)
    out = Image.new("RGB", (width, top.height + sum(r.height + 4 for r in rows)), "white")
    out.paste(top, (0, 0))
    y = top.height
    for row in rows:
        out.paste(row, (0, y))
        y += row.height + 4
    return np.asarray(out)


class Previews:
    """Rank 0's previews for one run: the chosen positions of its validation shard, their predictions as the
    validation passes them, and the sheet rendered from them."""

    def __init__(self, shard: list[segdata.Sample], meta: segdata.DatasetMeta, mean: list[float],
                 std: list[float], seed: int) -> None:
        candidates = shard[:CANDIDATES]
        self.positions = set(choose(segdata.class_presence(candidates, meta), seed)) if candidates else set()
        self.names = {p: candidates[p].name for p in self.positions}
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.class_names = list(meta.classes)
        self.palette = np.asarray(meta.colors[: meta.num_classes], np.uint8).reshape(meta.num_classes, 3)
        self.captured: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def capture(self, start: int, x: torch.Tensor, y: torch.Tensor, scores: torch.Tensor) -> None:
        """Keep the chosen images of a validation batch that starts at shard position `start`: the image as its
        pixels (normalisation undone), the label and the predicted classes."""
        for j in range(len(x)):
            if start + j not in self.positions:
                continue
            pixels = (x[j].float().cpu().numpy() * self.std + self.mean).clip(0, 255).round().astype(np.uint8)
            self.captured[start + j] = (pixels.transpose(1, 2, 0), y[j].cpu().numpy().astype(np.uint8),
                                        scores[j].argmax(0).cpu().numpy().astype(np.uint8))

    def render(self) -> np.ndarray | None:
        """The sheet of what was captured since the last call (None if nothing was)."""
        rows = [panel_row(image, label, prediction, self.palette,
                          f"{self.names[p]}   mIoU {image_miou(label, prediction, len(self.class_names)):.3f}")
                for p, (image, label, prediction) in sorted(self.captured.items())]
        self.captured = {}
        return sheet(rows, self.class_names, self.palette) if rows else None
