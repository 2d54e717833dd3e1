"""Sliding-window inference at native resolution: one implementation for training validation, `evaluate` and
`predict` (MMSegmentation's `slide` mode, nnU-Net's blended tiles).

Windows of the training crop size step by (1 - overlap) of their size, the last one flush with the far edge;
their softmax outputs are blended with weights that ramp down towards each window's border, so seams vanish. An
image smaller than a window is padded with normalised grey 128 (as the letterbox pads) and the padding is cut off.
With `mirror` (`--tta flip`), each window's softmax is the mean over its four flips (none, left-right, up-down,
both), as nnU-Net's default test-time mirroring: four forward passes per window, for a smoother, less biased map.
A recipe that trains on resampled images (`resample`, e.g. 0.5 for large objects in large images) is validated and
applied the same way: the image is resampled (antialiased) before the windows, and the probabilities are
interpolated back to the image's own size, so scores and masks are always at native resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from segengine.config import OVERLAP_RANGE, overlap_ok

WINDOW_BATCH = 8  # windows per forward pass
MIRRORS = ((), (3,), (2,), (2, 3))  # flipped axes of an N x C x H x W batch


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Top-left offsets along one axis: stride window * (1 - overlap), the last window ending at the edge."""
    if size <= window:
        return [0]
    stride = max(1, int(round(window * (1 - overlap))))
    return list(range(0, size - window, stride)) + [size - window]


def window_weights(height: int, width: int, overlap: float) -> torch.Tensor:
    """height x width blending weights: 1 in the middle, a linear ramp over the overlapping border, never 0."""

    def ramp(n: int) -> torch.Tensor:
        ramp_width = max(1, int(round(n * overlap)))
        distance = torch.minimum(torch.arange(n), torch.arange(n).flip(0)) + 1
        return torch.clamp(distance / (ramp_width + 1), max=1.0).float()

    return ramp(height)[:, None] * ramp(width)[None, :]


def mirrored_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                           mirror: bool) -> torch.Tensor:
    """Softmax of `forward(batch)` (N x C x H x W), with `mirror` the mean over the batch's four flips."""
    flips = MIRRORS if mirror else ((),)
    return sum(torch.softmax(forward(batch.flip(f)).float(), dim=1).flip(f) for f in flips) / len(flips)


@torch.no_grad()
def sliding_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                          window: Sequence[int], overlap: float, num_classes: int,
                          pad_value: Sequence[float], batch: int = WINDOW_BATCH, mirror: bool = False,
                          resample: float = 1.0) -> torch.Tensor:
    """num_classes x H x W probabilities of a normalised C x H x W image (on the device `forward` runs on)."""
    if not overlap_ok(overlap):
        raise ValueError(f"overlap {overlap}: use {OVERLAP_RANGE}")
    if resample != 1:
        size = image.shape[-2:]
        resampled = F.interpolate(image[None], scale_factor=resample, mode="bilinear", antialias=resample < 1)[0]
        probs = sliding_probabilities(forward, resampled, window, overlap, num_classes, pad_value, batch, mirror)
        return F.interpolate(probs[None], size=size, mode="bilinear")[0]
    channels, height, width = image.shape
    wh, ww = int(window[0]), int(window[1])
    ph, pw = max(height, wh), max(width, ww)
    if (ph, pw) != (height, width):
        canvas = torch.tensor(list(pad_value), dtype=image.dtype, device=image.device)[:, None, None]
        canvas = canvas.expand(channels, ph, pw).clone()
        canvas[:, :height, :width] = image
        image = canvas
    weight = window_weights(wh, ww, overlap).to(image.device)
    probs = torch.zeros((num_classes, ph, pw), dtype=torch.float32, device=image.device)
    total = torch.zeros((ph, pw), dtype=torch.float32, device=image.device)
    spots = [(t, s) for t in window_starts(ph, wh, overlap) for s in window_starts(pw, ww, overlap)]
    for start in range(0, len(spots), batch):
        chunk = spots[start:start + batch]
        crops = torch.stack([image[:, t:t + wh, s:s + ww] for t, s in chunk])
        out = mirrored_probabilities(forward, crops, mirror)
        for p, (t, s) in zip(out, chunk, strict=True):
            probs[:, t:t + wh, s:s + ww] += p * weight
            total[t:t + wh, s:s + ww] += weight
    return (probs / total)[:, :height, :width]
