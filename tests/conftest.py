"""Shared test set-up: isolate Ray's per-user state, share one Ray instance, locate the shared data sets.

Ray 2.60 writes ~/.ray/auth_token at the first ray.init() and `ray start --head` behaves differently once it
exists, so HOME points at a throw-away folder before anything imports ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="unet-zoo-test-home-")
os.environ["HOME"] = _HOME
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# One BLAS/OpenMP thread per process: spinning OpenMP threads slow 2-core machines down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("UNET_ZOO_CACHE", os.path.join(_HOME, "cache"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


def _shared_set(name: str) -> Path:
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.fail(f"shared data set missing: {root} (CI lays ../shared beside the checkout)")
    return root


@pytest.fixture(scope="session")
def isbi_root() -> Path:
    return _shared_set("isbi2012")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    return _shared_set("camvid")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (start-up costs seconds on 2 cores)."""
    import ray

    if not ray.is_initialized():
        from segengine.ray_adapter import LOCAL_TRAIN_SETTINGS

        # the settings `launch.py` gives a Ray it starts itself (no preemption watcher, quick report polling)
        ray.init(num_cpus=4, logging_level="ERROR",  # the dashboard serves the state API (list_actors)
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", **LOCAL_TRAIN_SETTINGS}})
        # Ray's helper processes must find this instance even when other Ray clusters run on the machine.
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield ray


@pytest.fixture(scope="session")
def trained_run(ray_local, tmp_path_factory):
    """One real 2-worker Ray Train run shared by the training, evaluation and prediction tests."""
    from engine_helpers import tiny_config

    from segengine.training import train

    storage = tmp_path_factory.mktemp("runs")
    summary = train(tiny_config(storage=str(storage), name="shared"))
    return summary


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's package, which `make test` installs) driven by Playwright."""
    chromium_path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium_path).exists():
        pytest.fail(f"no Chromium at {chromium_path}: `make test` installs it (.ci/browser-deps.sh, Debian's "
                    "chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()
