"""segengine.losses: the recipes' losses, and the import cost they put on every Ray Train worker."""

import json
import subprocess
import sys
import textwrap

import torch

from segengine.losses import SegmentationLoss


def test_ce_leaves_smp_unimported_and_dice_imports_it():
    """A worker process imports the engine before its first step: the CE loss must not pull in smp (and with it
    timm and torchvision, about 2 s here); a loss that uses smp's Dice imports it when it is built."""
    script = textwrap.dedent("""
        import json, sys
        import torch
        import segengine.worker
        from segengine.losses import SegmentationLoss
        heavy = ("segmentation_models_pytorch", "timm", "torchvision")
        logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        ce = float(SegmentationLoss("ce", 3)(logits, target))
        after_ce = [m for m in heavy if m in sys.modules]
        both = float(SegmentationLoss("ce+dice", 3)(logits, target))
        print(json.dumps({"after_ce": after_ce, "after_dice": [m for m in heavy if m in sys.modules],
                          "ce": ce, "both": both}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["after_ce"] == []
    assert "segmentation_models_pytorch" in report["after_dice"]
    assert report["both"] > report["ce"] > 0  # the Dice term adds a positive loss


def test_ce_plus_dice_is_the_sum_of_its_terms_and_skips_ignored_pixels():
    from segmentation_models_pytorch.losses import DiceLoss

    from segdata import IGNORE

    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    target[:, :2] = IGNORE
    expected = (torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
                + DiceLoss("multiclass", ignore_index=IGNORE)(logits, target))
    torch.testing.assert_close(SegmentationLoss("ce+dice", 3)(logits, target), expected)
