"""Segmentation metrics from confusion matrices.

Workers sum confusion matrices (all-reduce) and only then derive scores: averaging per-worker means would weight
small shards as much as large ones. Pixels labelled `IGNORE` never count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from segdata import IGNORE

# an epoch's validation figures in history.csv / ray.train.report -> their key in MetricAccumulator.compute()
VAL_SCORES = {"val_loss": "loss", "val_miou": "miou", "val_mdice": "mdice", "val_pixel_acc": "pixel_acc",
              "val_f_score": "f_score"}
TRAIN_FIGURES = ("train_loss", "lr", "images_per_s", "epoch_time_s", "epoch")


def epoch_metric_names(classes: list[str]) -> list[str]:
    """Every metric an epoch reports, i.e. what `metric:` (best checkpoint, early stopping, Tune) may name."""
    return [*VAL_SCORES, *TRAIN_FIGURES, *(f"val_{kind}_{name}" for kind in ("iou", "dice") for name in classes)]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C x C int64 matrix, rows = true class, columns = predicted class; ignored pixels dropped."""
    valid = (target != IGNORE) & (target < num_classes) & (target >= 0)
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Pixel accuracy, mIoU, per-class IoU/Dice/precision/recall; classes absent from labels and predictions
    are left out of the means (their IoU is undefined, reported as NaN)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    total = cm.sum()
    names = class_names or [str(i) for i in range(len(tp))]
    return {
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mdice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "iou": dict(zip(names, iou.tolist(), strict=True)),
        "dice": dict(zip(names, dice.tolist(), strict=True)),
        "precision": dict(zip(names, precision.tolist(), strict=True)),
        "recall": dict(zip(names, recall.tolist(), strict=True)),
    }


class MetricAccumulator:
    """Sums what the validation metrics need over batches and, under DDP, over workers."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        # The tutorial's f_score: softmax > 0.5 against one-hot targets, per class, smooth 1e-5, beta 1.
        self.fscore_counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)
        self.loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # sum of losses, number of batches

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | float) -> None:
        pred = logits.argmax(dim=1)
        self.cm += confusion_matrix(pred, target, self.num_classes)
        valid = (target != IGNORE) & (target < self.num_classes)
        probs = torch.softmax(logits.float(), dim=1).movedim(1, -1)[valid]  # P x C
        hot = torch.nn.functional.one_hot(target[valid].long(), self.num_classes).to(probs.dtype)
        above = (probs > 0.5).to(probs.dtype)
        tp = (above * hot).sum(0)
        self.fscore_counts += torch.stack([tp, above.sum(0) - tp, hot.sum(0) - tp]).double()
        self.loss_sum += torch.tensor([float(loss), 1.0], dtype=torch.float64, device=self.loss_sum.device)

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for t in (self.cm, self.fscore_counts, self.loss_sum):
                dist.all_reduce(t)

    def compute(self, class_names: list[str]) -> dict:
        scores = scores_from_confusion(self.cm.cpu().numpy(), class_names)
        tp, fp, fn = self.fscore_counts.cpu().numpy()
        smooth = 1e-5
        fscore = ((2 * tp + smooth) / (2 * tp + fn + fp + smooth)).mean()
        loss_sum, batches = self.loss_sum.cpu().tolist()
        scores["f_score"] = float(fscore)
        scores["loss"] = loss_sum / max(batches, 1.0)
        return scores


def image_miou(label: np.ndarray, prediction: np.ndarray, num_classes: int) -> float:
    """Mean IoU of one image over the classes in its label or prediction (ignored pixels left out)."""
    known = label < num_classes
    ious = []
    for c in range(num_classes):
        truth, predicted = (label == c) & known, (prediction == c) & known
        union = int((truth | predicted).sum())
        if union:
            ious.append(int((truth & predicted).sum()) / union)
    return float(np.mean(ious)) if ious else float("nan")
