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
    (["--encoder-kwargs", "widthh=3"], "encoder 'mini' does not accept these options"),
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


MISDECLARED = '''
from torch import nn
from zoo import SegmentationModel, UNetDecoder, get_spec, register_encoder


class Tiny(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 128, 3, stride=2, padding=1)  # 128 channels, but 256 are declared below

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


@register_encoder("acme-tiny", description="declares 256 deep channels, returns 128", channels=(32, 256),
                  reductions=(1, 2), input_multiple=2)
def acme_tiny(num_classes, in_channels=3):
    spec = get_spec("acme-tiny")
    return SegmentationModel(Tiny(in_channels), UNetDecoder(spec.channels, spec.reductions, num_classes), spec,
                             num_classes, in_channels)
'''


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_wrong_channel_declaration_is_named_on_the_driver(command, tmp_path, capsys):
    """A plugin encoder whose features differ from its declaration: one line naming the fix, before Ray starts,
    instead of a shape error inside the decoder on every worker."""
    plugin = tmp_path / "acme_tiny.py"
    plugin.write_text(MISDECLARED)
    workers = ["--workers", "2"] if command == "train" else []
    start = time.perf_counter()
    code = main([command, "--data", TINY_SYNTH, "--storage", str(tmp_path / "runs"), "--name", "x",
                 "--plugin", str(plugin), "--encoder", "acme-tiny", *workers])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert err.count("encoder 'acme-tiny'") == 1 and "(128, 2, 2)" in err and "(256, 2, 2)" in err, err
    assert "fix channels/reductions in register_encoder" in err
    assert elapsed < 5 and not (tmp_path / "runs").exists()


def test_a_plugin_that_clashes_with_a_built_in_is_one_line_naming_the_file(tmp_path, capsys):
    """Reported once, by the driver, before any worker (which would report it again) starts; nothing on disk."""
    clash = tmp_path / "clash_encoders.py"
    clash.write_text("from zoo import register_encoder\n"
                     "register_encoder('mini', description='x', channels=(1,), reductions=(1,))(print)\n")
    code = main(["train", "--data", TINY_SYNTH, "--storage", str(tmp_path / "runs"), "--name", "x",
                 "--plugin", str(clash), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(clash) in err, err
    assert "encoder 'mini' from clash_encoders clashes with the one from built-in" in err
    assert not (tmp_path / "runs").exists()
