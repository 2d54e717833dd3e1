"""The tutorial's augmentation (get_random_data) and letterbox preprocessing, vectorised.

Resizes are cv2 (bicubic image, nearest label on the same pixel-centre grid); colour jitter is uint8 lookup
tables; normalisation is a float lookup table per channel that also writes the channel-first layout. Padding is
IGNORE in labels (the tutorial pads with 0, which its threshold step turns into membrane).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from segdata.meta import IGNORE

PAD_GREY = 128


Clip = tuple[Sequence[float], Sequence[float]]  # per-channel (low, high) grey levels, applied before mean/std


def _normalisation_table(mean: Sequence[float], std: Sequence[float], clip: Clip | None = None) -> np.ndarray:
    """C x 256 float32: (clip(value, low, high) - mean) / std for every uint8 value of every channel."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if mean.ndim != 1 or mean.shape != std.shape or not np.all(std > 0):
        raise ValueError(f"mean {mean.tolist()} and std {std.tolist()}: one value per channel, std > 0")
    values = np.broadcast_to(np.arange(256, dtype=np.float64), (mean.size, 256))
    if clip is not None:
        low, high = (np.asarray(c, np.float64)[:, None] for c in clip)
        values = np.clip(values, low, high)
    return ((values - mean[:, None]) / std[:, None]).astype(np.float32)


def _normalise(image: np.ndarray, table: np.ndarray, value_lut: np.ndarray | None = None) -> np.ndarray:
    """H x W x C uint8 -> C x H x W float32 through lookup tables (value_lut folds a grey value jitter in)."""
    channels = image.shape[2]
    if channels != table.shape[0]:
        raise ValueError(f"image has {channels} channel(s) but mean/std give {table.shape[0]}")
    out = np.empty((channels, *image.shape[:2]), np.float32)
    planes = [image[:, :, 0]] if channels == 1 else cv2.split(image)
    for c, plane in enumerate(planes):
        lut = table[c] if value_lut is None else table[c][value_lut]
        cv2.LUT(plane, lut, dst=out[c])
    return out


def _place(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int], out_hw: tuple[int, int],
           offset: tuple[int, int], flip: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize image (bicubic) and label (nearest, same pixel-centre convention) to size=(nh, nw), put them at
    offset=(dy, dx) on an out_hw canvas of grey 128 / IGNORE (parts off the canvas are cut), optionally
    mirror the canvas."""
    (nh, nw), (h, w), (dy, dx) = size, out_hw, offset
    canvas = np.full((h, w, image.shape[2]), PAD_GREY, np.uint8)
    label_canvas = None if label is None else np.full((h, w), IGNORE, np.uint8)
    x0, x1, y0, y1 = max(dx, 0), min(dx + nw, w), max(dy, 0), min(dy + nh, h)
    if x1 > x0 and y1 > y0:
        visible = (slice(y0 - dy, y1 - dy), slice(x0 - dx, x1 - dx))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_CUBIC).reshape(nh, nw, image.shape[2])
        canvas[y0:y1, x0:x1] = resized[visible]
        if label is not None:
            label_canvas[y0:y1, x0:x1] = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)[visible]
    if flip:
        canvas = np.ascontiguousarray(canvas[:, ::-1])
        label_canvas = None if label_canvas is None else np.ascontiguousarray(label_canvas[:, ::-1])
    return canvas, label_canvas


def _jitter_factor(rng: np.random.Generator, limit: float) -> float:
    """The tutorial's saturation/value factor: in [1, limit] or its inverse, each half of the time."""
    factor = rng.uniform(1, limit)
    return factor if rng.uniform() < 0.5 else 1 / factor


class TrainTransform:
    """Training augmentation with the tutorial's defaults: aspect jitter, scale, placement, flip, HSV."""

    def __init__(self, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float], *,
                 jitter: float = 0.3, scale: tuple[float, float] = (0.25, 2.0), flip: float = 0.5,
                 hue: float = 0.1, sat: float = 1.5, val: float = 1.5, crop: bool = False, clip: Clip | None = None
                 ) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.table = _normalisation_table(mean, std, clip)
        self.jitter, self.scale, self.flip = jitter, (float(scale[0]), float(scale[1])), flip
        self.hue, self.sat, self.val, self.crop = hue, sat, val, crop

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """image H x W x C uint8, label H x W uint8 class ids -> (C x h x w float32, h x w int64)."""
        h, w = self.input_size
        label = np.asarray(label, np.uint8)
        if self.crop and (image.shape[0] > h or image.shape[1] > w):
            top = int(rng.integers(0, max(image.shape[0] - h, 0) + 1))
            left = int(rng.integers(0, max(image.shape[1] - w, 0) + 1))
            image, label = image[top:top + h, left:left + w], label[top:top + h, left:left + w]
        ih, iw = image.shape[:2]
        aspect = iw / ih * rng.uniform(1 - self.jitter, 1 + self.jitter) / rng.uniform(1 - self.jitter,
                                                                                        1 + self.jitter)
        scale = rng.uniform(*self.scale)
        if aspect < 1:
            nh = int(scale * h)
            nw = int(nh * aspect)
        else:
            nw = int(scale * w)
            nh = int(nw / aspect)
        nh, nw = max(nh, 1), max(nw, 1)
        # the tutorial's rand(0, w - nw): negative when the image is larger, so it may start off the canvas
        dx, dy = int(rng.random() * (w - nw)), int(rng.random() * (h - nh))
        flip = rng.uniform() < self.flip
        hue_shift = rng.uniform(-self.hue, self.hue)
        sat, val = _jitter_factor(rng, self.sat), _jitter_factor(rng, self.val)

        canvas, label_canvas = _place(image, label, (nh, nw), (h, w), (dy, dx), flip)
        values = np.arange(256, dtype=np.float64)
        value_lut = np.clip(values * val, 0, 255).astype(np.uint8)
        if canvas.shape[2] != 3:  # grey or multi-channel: only the value (brightness) jitter applies
            return _normalise(canvas, self.table, value_lut), label_canvas.astype(np.int64)
        hsv_lut = np.stack([((values + hue_shift * 180) % 180).astype(np.uint8),
                            np.clip(values * sat, 0, 255).astype(np.uint8), value_lut], axis=1)[None]
        hsv = cv2.LUT(cv2.cvtColor(canvas, cv2.COLOR_RGB2HSV), hsv_lut)
        return _normalise(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), self.table), label_canvas.astype(np.int64)


@dataclass(frozen=True)
class Letterbox:
    """Where an image went in the network input, to map predictions back to the original pixels."""

    original_size: tuple[int, int]  # H, W of the image
    input_size: tuple[int, int]  # h, w of the network input
    top: int
    left: int
    height: int  # of the resized image inside the input
    width: int

    def invert(self, array: np.ndarray) -> np.ndarray:
        """C x h x w scores/logits (bilinear) or an h x w mask (nearest) -> the original H x W."""
        array = np.asarray(array)
        rows, cols = slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)
        out_h, out_w = self.original_size
        if array.ndim == 2:
            mask = array[rows, cols]
            row_index = np.minimum(((np.arange(out_h) + 0.5) * self.height / out_h).astype(np.int64),
                                   self.height - 1)
            col_index = np.minimum(((np.arange(out_w) + 0.5) * self.width / out_w).astype(np.int64),
                                   self.width - 1)
            return mask[row_index[:, None], col_index[None, :]]
        if array.ndim != 3:
            raise ValueError(f"expected C x h x w scores or an h x w mask, got shape {array.shape}")
        scores = array[:, rows, cols]
        if scores.shape[1:] == (out_h, out_w):
            return scores.copy()
        if scores.dtype not in (np.float32, np.float64):
            scores = scores.astype(np.float32)
        resized = cv2.resize(np.ascontiguousarray(scores.transpose(1, 2, 0)), (out_w, out_h),
                             interpolation=cv2.INTER_LINEAR)
        return resized.reshape(out_h, out_w, -1).transpose(2, 0, 1)


class EvalTransform:
    """Deterministic letterbox: keep the aspect ratio, centre on grey 128, pad labels with IGNORE."""

    def __init__(self, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 clip: Clip | None = None) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.table = _normalisation_table(mean, std, clip)

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, Letterbox]:
        (h, w), (ih, iw) = self.input_size, image.shape[:2]
        label = None if label is None else np.asarray(label, np.uint8)
        scale = min(w / iw, h / ih)
        nw, nh = max(int(iw * scale), 1), max(int(ih * scale), 1)
        box = Letterbox((ih, iw), (h, w), (h - nh) // 2, (w - nw) // 2, nh, nw)
        canvas, label_canvas = _place(image, label, (nh, nw), (h, w), (box.top, box.left), flip=False)
        y = None if label_canvas is None else label_canvas.astype(np.int64)
        return _normalise(canvas, self.table), y, box


def _crop_padded(array: np.ndarray, top: int, left: int, height: int, width: int, fill: int) -> np.ndarray:
    """array[top:top+height, left:left+width] where parts outside the array are `fill`."""
    out = np.full((height, width, *array.shape[2:]), fill, array.dtype)
    y0, y1 = max(top, 0), min(top + height, array.shape[0])
    x0, x1 = max(left, 0), min(left + width, array.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = array[y0:y1, x0:x1]
    return out


def elastic_maps(shape: tuple[int, int], grid: int, std: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The U-Net paper's deformation: random displacements (Gaussian, `std` pixels) on a coarse grid x grid
    lattice, interpolated bicubically to every pixel; returns cv2.remap's (map_x, map_y)."""
    h, w = shape
    coarse = rng.normal(0.0, std, size=(2, grid, grid)).astype(np.float32)
    dx = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs + dx, ys + dy


def _intensity_lut(rng: np.random.Generator, brightness: float, contrast: float, gamma: tuple[float, float],
                   window: tuple[float, float] = (0.0, 255.0)) -> np.ndarray | None:
    """uint8 -> uint8 table for gamma, contrast (around mid-grey) and brightness, all relative to the intensity
    `window` the normalisation clips to (the whole 0..255 without one), so that a dim, low-contrast image (e.g.
    fluorescence at grey levels 20-120) is changed as much as a full-range one; None when all are off."""
    if not brightness and not contrast and gamma == (1.0, 1.0):
        return None
    g = float(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]))))
    c = rng.uniform(1 - contrast, 1 + contrast)
    low, high = window
    span = high - low
    b = rng.uniform(-brightness, brightness) * span
    values = np.clip((np.arange(256) - low) / span, 0, 1) ** g * span + low
    centre = low + span * 128 / 255
    return np.clip(np.round((values - centre) * c + centre + b), 0, 255).astype(np.uint8)


class PatchTransform:
    """Random crops of `crop_size` at native resolution (times an optional zoom), for training on large images
    (EM sections, street scenes) without downscaling them; crops past an image border are padded (grey 128,
    labels IGNORE).

    Augmentations, each drawn from the sample's own generator: 90-degree rotations, horizontal and vertical
    flips, elastic deformation (image bilinear, label nearest, on the same map), gamma/contrast/brightness and
    HSV jitter (one lookup table), Gaussian blur and Gaussian noise. With probability `class_aware` a crop is
    centred on a random pixel of a class drawn uniformly from the classes present in the label, so rare classes
    are seen far more often than their pixel share (nnU-Net's foreground oversampling).
    """

    def __init__(self, crop_size: tuple[int, int], mean: Sequence[float], std: Sequence[float], *,
                 num_classes: int, zoom: tuple[float, float] = (1.0, 1.0), flip: float = 0.5, vflip: float = 0.0,
                 rot90: bool = False, elastic: float = 0.0, elastic_grid: int = 3, elastic_std: float = 10.0,
                 brightness: float = 0.0, contrast: float = 0.0, gamma: tuple[float, float] = (1.0, 1.0),
                 noise: float = 0.0, noise_std: float = 8.0, blur: float = 0.0,
                 blur_sigma: tuple[float, float] = (0.5, 1.5), hue: float = 0.0, sat: float = 1.0,
                 val: float = 1.0, class_aware: float = 0.0, clip: Clip | None = None) -> None:
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.table = _normalisation_table(mean, std, clip)
        self.window = (float(np.mean(clip[0])), float(np.mean(clip[1]))) if clip is not None else (0.0, 255.0)
        self.std = np.asarray(std, np.float32)
        self.num_classes = num_classes
        self.zoom, self.flip, self.vflip, self.rot90 = (float(zoom[0]), float(zoom[1])), flip, vflip, rot90
        self.elastic, self.elastic_grid, self.elastic_std = elastic, int(elastic_grid), float(elastic_std)
        self.brightness, self.contrast, self.gamma = brightness, contrast, (float(gamma[0]), float(gamma[1]))
        self.noise, self.noise_std = noise, noise_std
        self.blur, self.blur_sigma = blur, (float(blur_sigma[0]), float(blur_sigma[1]))
        self.hue, self.sat, self.val = hue, sat, val
        self.class_aware = class_aware

    def _centre(self, label: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
        if self.class_aware and rng.uniform() < self.class_aware:
            counts = np.bincount(label.ravel(), minlength=256)[: self.num_classes]
            present = np.flatnonzero(counts)
            if len(present):
                cls = int(rng.choice(present))
                where = np.flatnonzero(label.ravel() == cls)
                pick = int(where[rng.integers(len(where))])
                return pick // label.shape[1] + 0.5, pick % label.shape[1] + 0.5
        return rng.uniform(0, label.shape[0]), rng.uniform(0, label.shape[1])

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """image H x W x C uint8, label H x W uint8 class ids -> (C x h x w float32, h x w int64)."""
        label = np.asarray(label, np.uint8)
        h, w = self.crop_size
        turns = int(rng.integers(4)) if self.rot90 else 0
        out_h, out_w = (w, h) if turns % 2 else (h, w)  # the crop before rotation
        zoom = rng.uniform(*self.zoom) if self.zoom != (1.0, 1.0) else 1.0
        src_h, src_w = max(1, round(out_h / zoom)), max(1, round(out_w / zoom))
        cy, cx = self._centre(label, rng)
        # keep the crop inside the image where the image is large enough, else centre it with padding around
        top = int(np.clip(round(cy - src_h / 2), 0, image.shape[0] - src_h)) if image.shape[0] >= src_h \
            else -((src_h - image.shape[0]) // 2)
        left = int(np.clip(round(cx - src_w / 2), 0, image.shape[1] - src_w)) if image.shape[1] >= src_w \
            else -((src_w - image.shape[1]) // 2)
        img = _crop_padded(image, top, left, src_h, src_w, PAD_GREY)
        lab = _crop_padded(label, top, left, src_h, src_w, IGNORE)
        if (src_h, src_w) != (out_h, out_w):  # a 2x reduction or more averages, as inference's resampling does
            shrink = cv2.INTER_AREA if src_h >= 2 * out_h else cv2.INTER_LINEAR
            img = cv2.resize(img, (out_w, out_h), interpolation=shrink).reshape(out_h, out_w, -1)
            lab = cv2.resize(lab, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT)
        if turns:
            img, lab = np.rot90(img, turns), np.rot90(lab, turns)
        if rng.uniform() < self.flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if rng.uniform() < self.vflip:
            img, lab = img[::-1], lab[::-1]
        img, lab = np.ascontiguousarray(img), np.ascontiguousarray(lab)
        if self.elastic and rng.uniform() < self.elastic:
            map_x, map_y = elastic_maps((h, w), self.elastic_grid, self.elastic_std, rng)
            channels = img.shape[2]
            img = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            img = img.reshape(h, w, channels)
            lab = cv2.remap(lab, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        if self.blur and rng.uniform() < self.blur:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*self.blur_sigma)).reshape(h, w, -1)
        value_lut = _intensity_lut(rng, self.brightness, self.contrast, self.gamma, self.window)
        if img.shape[2] == 3 and (self.hue or self.sat != 1 or self.val != 1):
            values = np.arange(256, dtype=np.float64)
            hsv_lut = np.stack([((values + rng.uniform(-self.hue, self.hue) * 180) % 180).astype(np.uint8),
                                np.clip(values * _jitter_factor(rng, self.sat), 0, 255).astype(np.uint8),
                                np.clip(values * _jitter_factor(rng, self.val), 0, 255).astype(np.uint8)],
                               axis=1)[None]
            img = cv2.cvtColor(cv2.LUT(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), hsv_lut), cv2.COLOR_HSV2RGB)
        x = _normalise(img, self.table, value_lut)
        if self.noise and rng.uniform() < self.noise:
            sigma = rng.uniform(0, self.noise_std) / self.std[:, None, None]
            x += rng.standard_normal(x.shape, dtype=np.float32) * sigma
        return x, lab.astype(np.int64)


class NativeTransform:
    """Validation at native resolution: normalisation only (the image keeps its size; sliding windows follow)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], clip: Clip | None = None) -> None:
        self.table = _normalisation_table(mean, std, clip)

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, None]:
        y = None if label is None else np.asarray(label, np.uint8).astype(np.int64)
        return _normalise(np.ascontiguousarray(image), self.table), y, None


def normalised_grey(mean: Sequence[float], std: Sequence[float], clip: Clip | None = None) -> list[float]:
    """What grey 128 padding becomes after normalisation, per channel."""
    return [float(v) for v in _normalisation_table(mean, std, clip)[:, PAD_GREY]]
