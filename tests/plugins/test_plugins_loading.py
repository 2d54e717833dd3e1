"""load_plugins / autoload in this process: files and modules, idempotence, named plugins that fail are errors."""

import os
from pathlib import Path

import pytest

import plugins
import zoo
from plugins import PluginError


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


def test_a_named_plugin_that_fails_is_an_error_naming_it_and_everything_else_works(tmp_path, registry,
                                                                                  write_plugin):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('broken on purpose')\n")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def oops(:\n")
    clash = tmp_path / "clash.py"
    clash.write_text("from zoo import register_encoder\n"
                     "register_encoder('mini', description='x', channels=(1,), reductions=(1,))(print)\n")
    cases = [(str(broken), "RuntimeError: broken on purpose"), (str(syntax), "SyntaxError"),
             (str(tmp_path / "missing.py"), "FileNotFoundError"), ("no_such_module_zz", "ModuleNotFoundError"),
             (str(clash), "encoder 'mini' from clash clashes with the one from built-in")]
    for name, expected in cases:
        with pytest.raises(PluginError) as err:
            plugins.load_plugins([name])
        message = str(err.value)
        assert message.startswith(f"plugin {name!r} could not be loaded: ") and expected in message, message
        assert "\n" not in message
    good = write_plugin(tmp_path / "good.py", "good-enc")
    assert plugins.load_plugins([str(good)]) == [str(good)]
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


def test_provenance_names_the_plugin_file_or_the_distribution(tmp_path, monkeypatch, registry, write_plugin):
    """What a checkpoint's manifest records as `encoder_source`, and the hint a machine without it gets."""
    import hashlib

    path = write_plugin(tmp_path / "prov_encoders.py", "prov-enc")
    plugins.load_plugins([str(path)])
    origin = plugins.provenance(zoo.get_spec("prov-enc").source)
    assert origin == {"kind": "file", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert f"--plugin {path}" in plugins.install_hint(origin)
    assert plugins.provenance("built-in") == {"kind": "built-in"}
    monkeypatch.delenv("UNET_ZOO_NO_AUTOLOAD", raising=False)
    plugins.autoload()
    shipped = plugins.provenance(zoo.get_spec("timm-resnet18").source)  # an entry point of this distribution
    assert (shipped["kind"], shipped["distribution"]) == ("entry point", "unet-zoo") and shipped["version"]
    assert plugins.install_hint(shipped) == f"install its plugin: pip install unet-zoo=={shipped['version']}"


def test_a_checkpoint_of_a_missing_plugin_names_what_to_install(tmp_path):
    from segengine import checkpoint
    from segengine.manifest import Manifest

    manifest = Manifest.from_dict({
        "encoder": "acme-gone", "num_classes": 2, "in_channels": 1, "plugins": [], "input_size": [32, 32],
        "normalization": {"mean": [127.5], "std": [127.5]},
        "encoder_source": {"kind": "entry point", "entry_point": "acme = acme_unet.encoders",
                           "distribution": "acme-unet-encoders", "version": "0.1.0"}})
    folder = checkpoint.write(tmp_path / "checkpoint_epoch_0001", {"model": {}}, manifest)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.build_model(str(folder))
    assert str(err.value).endswith("encoder 'acme-gone' is not registered here; install its plugin: pip install "
                                   "acme-unet-encoders==0.1.0")
