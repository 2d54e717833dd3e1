"""Bad input is refused on the driver before Ray starts: one line, exit 2, within seconds, nothing left on disk."""

import time

import pytest
from engine_helpers import TINY_SYNTH

from launch import main

CASES = [
    (["--encoder", "mobilenet", "--input-size", "100", "100"],
     "input_size 100x100 is not a multiple of 32 for encoder 'mobilenet'; use e.g. 96 96 or 128 128"),
    (["--metric", "val_mIoU"], "metric 'val_mIoU' is not reported by training; did you mean 'val_miou'?"),
    (["--weights", "/no/such/weights.pth"], "encoder 'mini': "),
    (["--class-weights", "1", "2", "3"], "class_weights has 3 values but the dataset has 2 classes"),
    (["--lr", "-1"], "bad value for 'lr'"),
]


@pytest.mark.parametrize("command", ["train", "tune"])
@pytest.mark.parametrize("flags, expected", CASES, ids=[c[0][0] for c in CASES])
def test_bad_input_is_one_line_exit_2_in_seconds_and_leaves_nothing(command, flags, expected, tmp_path, capsys):
    start = time.perf_counter()
    code = main([command, "--data", TINY_SYNTH, "--storage", str(tmp_path / "runs"), "--name", "x", *flags])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert elapsed < 5, f"{elapsed:.1f} s"
    assert not (tmp_path / "runs").exists()
