"""`python launch.py encoders [PATTERN] [--plugin ...]`, run through launch.main in this process (and once in a
fresh one, for the traceback switch)."""

import os
import subprocess
import sys
from pathlib import Path

import launch

REPO = Path(__file__).resolve().parents[2]


def table_rows(text):
    return {line.split()[0]: line.split() for line in text.splitlines()[1:] if line.strip()}


def test_encoders_lists_builtins_and_plugin_families(capsys):
    assert launch.main(["encoders"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["mini"][1:5] == ["built-in", "471,586", "32,64,128", "1,2,4"]
    assert rows["mobilenet"][2] == "6,483,586"
    assert rows["resnet50"][1] == rows["vgg"][1] == "built-in"
    assert rows["timm-resnet18"][1] == "timm" and rows["smp-resnet18"][1] == "smp"


def test_a_mistyped_name_suggests_the_right_one(capsys):
    assert launch.main(["encoders", "mobilnet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown encoder 'mobilnet'; did you mean: mobilenet")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_family_pattern_and_plugin_flag(capsys, tmp_path, registry, write_plugin):
    assert launch.main(["encoders", "timm-resnet1*"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["timm-resnet18"][4] == "2,4,8,16,32" and rows["timm-resnet101"][3] == "64,256,512,1024,2048"

    path = write_plugin(tmp_path / "lab_encoders.py", "lab-enc")
    assert launch.main(["encoders", "lab-*", "--plugin", str(path)]) == 0
    assert table_rows(capsys.readouterr().out)["lab-enc"][1:5] == ["lab_encoders", "3,090", "4", "2"]


def test_a_named_plugin_that_is_missing_or_raises_exits_2_naming_it(capsys, tmp_path, registry):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs a library that is not installed')\n")
    for ref, expected in (("no_such_module", "ModuleNotFoundError: No module named 'no_such_module'"),
                          (str(broken), "ImportError: needs a library that is not installed")):
        assert launch.main(["encoders", "--plugin", ref]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: plugin {ref!r} could not be loaded: ") and expected in err, err
        assert err.count("\n") == 1


def test_a_failing_plugin_names_file_and_line_and_the_traceback_flag_shows_the_rest(tmp_path):
    """The default stays one line but says where the plugin failed; UNET_ZOO_PLUGIN_TRACEBACK=1 adds the
    traceback (in a fresh process, as a plugin author would run it)."""
    broken = tmp_path / "typo_encoders.py"
    broken.write_text("import torch\n\nWIDTH = undefined_name * 2\n")
    command = [sys.executable, str(REPO / "launch.py"), "encoders", "--plugin", str(broken)]
    env = {k: v for k, v in os.environ.items() if k != "UNET_ZOO_PLUGIN_TRACEBACK"}
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1, quiet.stderr
    assert f"NameError: name 'undefined_name' is not defined at {broken}:3" in quiet.stderr
    assert "UNET_ZOO_PLUGIN_TRACEBACK=1" in quiet.stderr
    loud = subprocess.run(command, capture_output=True, text=True, env={**env, "UNET_ZOO_PLUGIN_TRACEBACK": "1"},
                          timeout=120)
    assert loud.returncode == 2 and "Traceback (most recent call last)" in loud.stderr
    assert "WIDTH = undefined_name * 2" in loud.stderr and loud.stderr.rstrip().splitlines()[-1].startswith("error:")
