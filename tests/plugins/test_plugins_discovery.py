"""A third-party plugin is found once installed, with no change to this repository; a broken one only warns (one
line naming its distribution).

The example package is installed with pip (no dependencies) into a folder that a fresh interpreter
gets on PYTHONPATH: a fresh virtualenv would cost gigabytes of torch.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "unet_zoo_example_plugin"


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """(folder with the installed example plugin, folder with an installed plugin whose import fails)."""
    root = tmp_path_factory.mktemp("plugin-sites")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    example = root / "example-site"
    # with setuptools in this environment the build needs no index; without it (venvs of Python >= 3.12) pip
    # fetches setuptools into an isolated build environment
    offline = ["--no-index", "--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "--no-deps", *offline, "--target", str(example), str(source)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    broken = root / "broken-site"
    dist_info = broken / "broken_unet_plugin-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-unet-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[unet_zoo.encoders]\nbroken = broken_unet_plugin\n")
    (broken / "broken_unet_plugin.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    return example, broken


def run(args, *paths, cwd, **env):
    environment = {k: v for k, v in os.environ.items() if k != "UNET_ZOO_NO_AUTOLOAD"}
    environment.update(PYTHONPATH=os.pathsep.join(map(str, [*paths, REPO])), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


def rows(stdout):
    return {line.split()[0]: line.split() for line in stdout.splitlines()[1:] if line.strip()}


def test_installed_plugin_is_listed_and_a_broken_one_only_warns(sites, tmp_path):
    example, broken = sites
    result = run([str(REPO / "launch.py"), "encoders"], example, broken, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table["example-tiny"][1:5] == ["example", "107,946", "8,16,32", "2,4,8"]
    assert {"mini", "mobilenet", "resnet50", "vgg", "timm-resnet18", "smp-resnet18"} <= table.keys()
    assert result.stderr.splitlines() == [  # one line on stderr, nothing else
        "warning: installed plugin 'broken' (broken-unet-plugin, entry point broken_unet_plugin) was not loaded "
        f"(RuntimeError: this plugin is broken on purpose at {broken / 'broken_unet_plugin.py'}:1); its encoders "
        "are unavailable"]


def test_plugin_is_usable_in_a_fresh_process_and_autoload_stays_lazy(sites, tmp_path):
    example, _ = sites
    script = textwrap.dedent("""
        import json, sys
        import plugins, zoo
        from zoo.testing import check_encoder
        loaded = plugins.autoload()
        lazy = not {"timm", "segmentation_models_pytorch"} & set(sys.modules)
        check_encoder("example-tiny")
        print(json.dumps({"loaded": loaded, "lazy": lazy, "source": zoo.get_spec("example-tiny").source,
                          "listed": zoo.list_encoders("ex*"),
                          "origin": plugins.provenance(zoo.get_spec("example-tiny").source)}))
    """)
    result = run(["-c", script], example, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert {"example", "timm", "smp"} <= set(report["loaded"])
    assert report["lazy"], "autoloading the timm/smp families must not import timm or smp"
    assert report == dict(report, source="example", listed=["example-resnet10t", "example-tiny"])
    assert report["origin"] == {"kind": "entry point", "entry_point": "example = unet_zoo_example_plugin",
                                "distribution": "unet-zoo-example-plugin", "version": "0.1.0"}  # in manifests


def test_autoload_can_be_switched_off_but_named_plugins_still_load(sites, tmp_path):
    example, broken = sites
    off = run([str(REPO / "launch.py"), "encoders", "ex*"], example, broken, cwd=tmp_path,
              UNET_ZOO_NO_AUTOLOAD="1")
    assert off.returncode == 2 and off.stderr.strip() == (
        "error: no encoder matches 'ex*' (list them with: python launch.py encoders)")
    named = run([str(REPO / "launch.py"), "encoders", "ex*", "--plugin", "unet_zoo_example_plugin"], example,
                broken, cwd=tmp_path, UNET_ZOO_NO_AUTOLOAD="1")
    assert named.returncode == 0, named.stderr
    assert rows(named.stdout)["example-tiny"][1] == "unet_zoo_example_plugin"
    assert "broken" not in named.stderr


def test_the_example_plugins_own_tests_pass_against_the_installed_package(sites, tmp_path):
    """`pytest` in examples/unet_zoo_example_plugin is the template an author copies: it must pass."""
    example, _ = sites
    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")], example, cwd=tmp_path,
                 PYTHONDONTWRITEBYTECODE="1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout


def test_a_checkpoint_of_the_installed_plugin_names_its_distribution(sites, tmp_path):
    """Trained in-process with the installed example encoder: the manifest's encoder_source names the
    distribution and version a machine without it must install."""
    example, _ = sites
    result = run([str(REPO / "launch.py"), "train", "--encoder", "example-tiny", "--workers", "0", "--epochs", "1",
                  "--data", "synth:seed=0,n_train=8,n_val=2,size=32", "--input-size", "32", "32",
                  "--storage", str(tmp_path / "runs"), "--name", "ex"], example, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads(next((tmp_path / "runs" / "ex").glob("checkpoint_epoch_*/manifest.json")).read_text())
    assert manifest["encoder_source"] == {"kind": "entry point", "entry_point": "example = unet_zoo_example_plugin",
                                          "distribution": "unet-zoo-example-plugin", "version": "0.1.0"}

