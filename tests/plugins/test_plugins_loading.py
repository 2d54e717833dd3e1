"""load_plugins / autoload in this process: files and modules, idempotence, failures that only warn."""

import os
from pathlib import Path

import pytest

import plugins
import zoo
from plugins import PluginWarning


def imports(path):
    return len(Path(str(path) + ".count").read_text())


def test_file_plugin_loads_once_and_is_attributed(tmp_path, monkeypatch, registry, write_plugin):
    path = write_plugin(tmp_path / "my_encoders.py", "file-enc")
    assert plugins.load_plugins([str(path)]) == [str(path)]
    spec = zoo.get_spec("file-enc")
    assert spec.source == "my_encoders"
    assert zoo.create_model("file-enc", 2, in_channels=1).in_channels == 1
    monkeypatch.chdir(tmp_path)
    assert plugins.load_plugins(["my_encoders.py", str(path)]) == ["my_encoders.py", str(path)]
    assert imports(path) == 1, "the same file, named twice or relatively, is imported once"


def test_module_plugin(tmp_path, monkeypatch, registry, write_plugin):
    write_plugin(tmp_path / "acme_seg_plugin" / "__init__.py", "acme-enc")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins.load_plugins(["acme_seg_plugin"]) == ["acme_seg_plugin"]
    assert zoo.get_spec("acme-enc").source == "acme_seg_plugin"
    assert "acme-enc" in zoo.list_encoders("acme*")


def test_failing_plugins_warn_and_everything_else_works(tmp_path, registry, write_plugin):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('broken on purpose')\n")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def oops(:\n")
    clash = tmp_path / "clash.py"
    clash.write_text("from zoo import register_encoder\n"
                     "register_encoder('mini', description='x', channels=(1,), reductions=(1,))(print)\n")
    good = write_plugin(tmp_path / "good.py", "good-enc")
    names = [str(broken), str(syntax), str(tmp_path / "missing.py"), "no_such_module_zz", str(clash), str(good)]
    with pytest.warns(PluginWarning) as record:
        assert plugins.load_plugins(names) == [str(good)]
    messages = [str(w.message) for w in record]
    assert len(messages) == 5
    assert f"plugin '{broken}' was not loaded (RuntimeError: broken on purpose)" in messages[0]
    assert "SyntaxError" in messages[1]
    assert "FileNotFoundError" in messages[2] and "ModuleNotFoundError" in messages[3]
    assert "encoder 'mini' from clash clashes with the one from built-in" in messages[4]
    assert zoo.get_spec("mini").source == "built-in"
    assert zoo.create_model("good-enc", 2) is not None


def test_resolve_plugin_refs_makes_files_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refs = plugins.resolve_plugin_refs(["enc.py", "sub/enc2.py", "acme.encoders", "~/x.py"])
    assert refs == [str(tmp_path / "enc.py"), str(tmp_path / "sub" / "enc2.py"), "acme.encoders",
                    os.path.join(os.path.expanduser("~"), "x.py")]


def test_autoload_finds_the_shipped_entry_points(monkeypatch):
    loaded = plugins.autoload()
    assert {"timm", "smp"} <= set(loaded)
    assert plugins.autoload() == loaded
    monkeypatch.setenv("UNET_ZOO_NO_AUTOLOAD", "1")
    assert plugins.autoload() == []
