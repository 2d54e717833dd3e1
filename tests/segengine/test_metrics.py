"""Metric code against small cases whose confusion matrix, IoU, Dice, precision, recall and the tutorial's f_score
are worked out by hand below (ignore pixels included, a class absent from labels and predictions)."""

import math

import numpy as np
import pytest
import torch

from segengine.metrics import MetricAccumulator, confusion_matrix, scores_from_confusion

IGN = 255

# 4 x 4 labels with three ignored pixels; 4 classes, class 3 never occurs in labels or predictions.
TARGET = [[0, 0, 0, 1],
          [1, 1, 2, 2],
          [IGN, IGN, 0, 1],
          [2, 0, 1, IGN]]
PRED = [[0, 0, 1, 1],
        [1, 0, 2, 1],
        [2, 1, 0, 1],  # the ignored pixels are predicted 2 and 1: they must not count as false positives
        [2, 0, 2, 0]]
# (true, predicted) over the 13 labelled pixels: (0,0) x4, (0,1) x1, (1,1) x3, (1,0) x1, (1,2) x1, (2,2) x2, (2,1) x1
HAND_CM = [[4, 1, 0, 0],
           [1, 3, 1, 0],
           [0, 1, 2, 0],
           [0, 0, 0, 0]]
# class 0: TP 4, FP 1, FN 1   class 1: TP 3, FP 2, FN 2   class 2: TP 2, FP 1, FN 1   class 3: nothing
HAND = {
    "iou": [4 / 6, 3 / 7, 2 / 4],
    "dice": [8 / 10, 6 / 10, 4 / 6],
    "precision": [4 / 5, 3 / 5, 2 / 3],
    "recall": [4 / 5, 3 / 5, 2 / 3],
}
NAMES = ["a", "b", "c", "absent"]


def test_confusion_matrix_drops_ignored_pixels():
    cm = confusion_matrix(torch.tensor(PRED), torch.tensor(TARGET), 4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == HAND_CM
    assert int(cm.sum()) == 13


def test_scores_match_hand_computation():
    scores = scores_from_confusion(np.array(HAND_CM), NAMES)
    assert scores["pixel_acc"] == pytest.approx(9 / 13)
    for key, values in HAND.items():
        for name, value in zip(NAMES, values, strict=False):
            assert scores[key][name] == pytest.approx(value), (key, name)
        assert math.isnan(scores[key]["absent"]), key  # 0 / 0: undefined
    # the absent class is left out of the means instead of counting as 0 or 1
    assert scores["miou"] == pytest.approx((4 / 6 + 3 / 7 + 2 / 4) / 3)
    assert scores["mdice"] == pytest.approx((8 / 10 + 6 / 10 + 4 / 6) / 3)


def test_class_predicted_but_never_labelled():
    # labels all class 0; two of six pixels predicted as class 1:
    # class 0: TP 4, FP 0, FN 2 -> IoU 4/6, Dice 8/10, precision 1, recall 4/6
    # class 1: TP 0, FP 2, FN 0 -> IoU 0, Dice 0, precision 0, recall undefined
    target = torch.zeros(2, 3, dtype=torch.int64)
    pred = torch.tensor([[0, 1, 0], [0, 0, 1]])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[4, 2], [0, 0]]
    scores = scores_from_confusion(cm.numpy(), ["bg", "fg"])
    assert scores["iou"]["bg"] == pytest.approx(4 / 6) and scores["iou"]["fg"] == 0.0
    assert scores["dice"]["bg"] == pytest.approx(8 / 10) and scores["dice"]["fg"] == 0.0
    assert scores["precision"]["bg"] == 1.0 and scores["precision"]["fg"] == 0.0
    assert scores["recall"]["bg"] == pytest.approx(4 / 6) and math.isnan(scores["recall"]["fg"])
    assert scores["miou"] == pytest.approx(4 / 6 / 2)
    assert scores["pixel_acc"] == pytest.approx(4 / 6)


def test_perfect_prediction_and_all_ignored():
    target = torch.tensor([[0, 1], [1, IGN]])
    scores = scores_from_confusion(confusion_matrix(target.clone().clamp(max=1), target, 2).numpy())
    assert scores["miou"] == 1.0 and scores["pixel_acc"] == 1.0 and scores["mdice"] == 1.0
    empty = confusion_matrix(torch.zeros(2, 2, dtype=torch.int64), torch.full((2, 2), IGN), 2)
    assert int(empty.sum()) == 0
    nothing = scores_from_confusion(empty.numpy())
    assert math.isnan(nothing["pixel_acc"]) and math.isnan(nothing["miou"])


def test_accumulator_tutorial_f_score_and_loss():
    """The tutorial's f_score: softmax > 0.5 vs one-hot labels, per class (2tp + s) / (2tp + fn + fp + s), s = 1e-5,
    averaged over classes; a pixel with no probability above 0.5 is a false negative only."""
    s = 1e-5
    # five pixels, 3 classes; the last pixel is ignored (its confident class-2 logit must not count)
    logits = torch.tensor([[5.0, 0, 0], [0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]]).T.reshape(1, 3, 1, 5)
    target = torch.tensor([[[0, 1, 2, 0, IGN]]])
    # class 0: tp 2, fp 0, fn 0   class 1: tp 0, fp 1 (pixel 3), fn 1 (pixel 2: all probs 1/3)
    # class 2: tp 0, fp 0, fn 1 (pixel 3)
    expected_f = ((4 + s) / (4 + s) + s / (2 + s) + s / (1 + s)) / 3
    acc = MetricAccumulator(3)
    acc.update(logits[..., :2], target[..., :2], 0.5)  # two batches: counts must add up
    acc.update(logits[..., 2:], target[..., 2:], 1.5)
    out = acc.compute(["x", "y", "z"])
    assert out["f_score"] == pytest.approx(expected_f, rel=1e-9)
    assert out["loss"] == pytest.approx(1.0)
    # argmax of the tied pixel is class 0: cm rows (true) 0: [2,0,0], 1: [1,0,0], 2: [0,1,0]
    assert acc.cm.tolist() == [[2, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert out["pixel_acc"] == pytest.approx(2 / 4)
    assert out["iou"]["x"] == pytest.approx(2 / 3) and out["iou"]["y"] == 0.0 and out["iou"]["z"] == 0.0


def test_image_miou_scores_one_image_over_the_classes_it_shows():
    from segengine.metrics import image_miou

    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)  # 255: ignored
    prediction = np.array([[0, 0, 1, 0], [0, 0, 1, 1]], np.uint8)
    # class 0: 4 of 5 pixels in the union; class 1: 2 of 3; class 2 in neither: not counted; the ignored pixel left out
    assert image_miou(label, prediction, 3) == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert np.isnan(image_miou(np.full((2, 2), 255, np.uint8), prediction[:, :2], 3))
