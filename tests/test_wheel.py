"""The product installs as a wheel: built from the checkout's files, installed into an empty folder, its console
script answers from outside the checkout and finds the shipped recipes there."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from engine_helpers import REPO


def _checkout_copy(target: Path) -> Path:
    """The files git tracks (or would), so the build leaves nothing behind in the checkout."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src = _checkout_copy(tmp_path / "src")
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True,
                   capture_output=True)
    (wheel,) = dist.glob("unet_zoo-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    assert (site / "tune_configs" / "default.yaml").is_file() and (site / "tune_configs" / "isbi.yaml").is_file()
    assert (site / "segengine" / "serving" / "page.html").is_file()  # what `serve` answers at /

    env = {**os.environ, "PYTHONPATH": str(site), "UNET_ZOO_NO_AUTOLOAD": "1"}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(site / "bin" / "unet-zoo"), *argv], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import launch, segengine, tune_configs; "
                            "print(launch.__file__, segengine.__file__, tune_configs.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where  # the wheel's code, not the checkout's
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("unet-zoo 0."), version.stdout + version.stderr
    listed = run("encoders")
    assert listed.returncode == 0 and "mobilenet" in listed.stdout and "unet" in listed.stdout, listed.stderr
    helped = run("tune", "--help")
    assert helped.returncode == 0 and "--samples" in helped.stdout, helped.stderr
    # the default recipe is found and parsed (a missing one would be a config error); the dataset is refused first
    missing = run("tune", "--data", str(elsewhere / "no-such-data"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: dataset folder not found"), missing.stderr
    recipe = run("train", "--config", "isbi", "--data", str(elsewhere / "no-such-data"))
    assert recipe.returncode == 2 and "dataset folder not found" in recipe.stderr, recipe.stderr
    assert not list(elsewhere.iterdir())  # refused runs leave nothing behind
