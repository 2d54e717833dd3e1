"""Mixed precision and memory layout where the hardware pays for them, shared by training and inference.

bfloat16 autocast is only worth it where the chip computes bf16 natively: CUDA GPUs, and CPUs with AMX tiles
(Intel Sapphire Rapids and later), where oneDNN runs bf16 convolutions 2-4x faster than fp32 on one core
(`benchmarks/cpu_precision.py`). Elsewhere bf16 is emulated and slower, so autocast stays off. Channels-last
(NHWC) is oneDNN's and cuDNN's preferred convolution layout on both.
"""

from __future__ import annotations

import torch


def cpu_computes_bf16() -> bool:
    """Whether this CPU has AMX tiles (torch exposes the check only as a private helper, hence the guard)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for `device`, or None for full fp32 (disabled, or no native low precision here)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_computes_bf16():
        return torch.bfloat16
    return None


class Precision:
    """What a forward pass runs in on one device: an autocast context and the input layout."""

    def __init__(self, device: torch.device, amp: bool = True, channels_last: bool = True) -> None:
        self.device = device
        self.dtype = autocast_dtype(device, amp)
        self.channels_last = channels_last
        self.name = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(self.dtype, "fp32")

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in the layout its inputs will have."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits of `model(x)` computed in this precision."""
        with self.autocast():
            return model(self.inputs(x)).float()
