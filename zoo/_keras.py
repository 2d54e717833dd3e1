"""Keras defaults for the faithful ports of the tutorial's Keras models."""

from __future__ import annotations

from torch import nn


def glorot_init_(module: nn.Module) -> None:
    """Keras' default initialisation: glorot-uniform kernels, zero biases (depthwise kernels included: glorot
    depends on fan_in + fan_out only, which Keras and PyTorch compute alike)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """Keras BatchNormalization: epsilon 1e-3, moving averages with momentum 0.99 (PyTorch momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)
