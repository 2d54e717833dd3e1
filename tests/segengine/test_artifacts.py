"""What a run folder shows: curves draw measured points only."""

from segengine.artifacts import measured


def test_validation_curves_leave_out_epochs_that_carried_the_last_scores():
    history = [{"epoch": 1, "validated": 1, "val_miou": 0.5, "train_loss": 0.9},
               {"epoch": 2, "validated": 0, "val_miou": 0.5, "train_loss": 0.8},
               {"epoch": 3, "validated": 1, "val_miou": 0.7, "train_loss": 0.7}]
    assert [h["epoch"] for h in measured(history, "val_miou")] == [1, 3]
    assert [h["epoch"] for h in measured(history, "val_loss")] == [1, 3]
    assert [h["epoch"] for h in measured(history, "train_loss")] == [1, 2, 3]  # training figures: every epoch
    assert [h["epoch"] for h in measured([{"epoch": 1, "val_miou": 0.4}], "val_miou")] == [1]  # older histories
