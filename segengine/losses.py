"""Losses of the recipe: weighted cross-entropy (the tutorial's), and smp's dice and focal losses.

All are computed in fp32 (logits are cast first) so mixed precision never evaluates a log-softmax in bf16, and all
skip pixels labelled `IGNORE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segdata import IGNORE


class SegmentationLoss(nn.Module):
    """`ce`, `dice`, `focal` or `ce+dice` (the sum) with optional per-class weights."""

    def __init__(self, name: str, num_classes: int, class_weights: Sequence[float] | None = None):
        super().__init__()
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values for {num_classes} classes")
        weights = list(class_weights) if class_weights is not None else None
        self.terms = nn.ModuleList()
        if name in ("ce", "ce+dice"):
            w = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
            self.terms.append(nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE))
        if name in ("dice", "ce+dice", "focal"):
            # imported here: smp brings timm and torchvision (2 s in every worker process), which CE does not need
            from segmentation_models_pytorch import losses as smp_losses
        if name in ("dice", "ce+dice"):
            self.terms.append(smp_losses.DiceLoss("multiclass", ignore_index=IGNORE, class_weights=weights))
        if name == "focal":
            self.terms.append(smp_losses.FocalLoss("multiclass", ignore_index=IGNORE, class_weights=weights))
        if not len(self.terms):
            raise ValueError(f"unknown loss {name!r}")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return sum(term(logits, target) for term in self.terms)
