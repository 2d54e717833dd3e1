"""Fixtures of the multi-node tests: a real two-node Ray cluster in network namespaces (`ray_cluster`), an S3 server
both nodes reach (`s3_server`), and the working directory a job ships (`job_workdir`).

The cluster lives for the whole session and is torn down (processes killed, namespaces deleted) even when a test
fails or the run is interrupted; namespaces left by a killed session are removed at the next start.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_cluster import (
    BUCKET,
    HarnessError,
    NetnsCluster,
    SeaweedS3,
    copy_checkout,
    missing_capabilities,
    remove_stale_namespaces,
)

TIMINGS: dict[str, float] = {}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[NetnsCluster]:
    """Head and worker node, 1 CPU each, own addresses (10.123.0.1 / .2), token auth, a shared folder."""
    problems = missing_capabilities()
    if problems:  # an error, not a skip: CI must never pass these tests by not running them
        pytest.fail("cannot run the multi-node tests here: " + "; ".join(problems), pytrace=False)
    remove_stale_namespaces()
    root = Path(tempfile.mkdtemp(prefix="uzc-", dir="/tmp"))  # short: Ray's socket paths live below it
    cluster = NetnsCluster(root)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a CI timeout's SIGTERM still tears down
    try:
        try:
            cluster.start()
        except HarnessError as exc:
            pytest.fail(f"test cluster did not start: {exc}", pytrace=False)
        yield cluster
    finally:
        TIMINGS.update(cluster.timings)
        try:
            cluster.teardown()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if os.environ.get("UNET_ZOO_KEEP_CLUSTER_FILES") != "1":
                shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(ray_cluster: NetnsCluster) -> Iterator[SeaweedS3]:
    """SeaweedFS S3 gateway on the head's address, reachable from both nodes, with the bucket `unet-zoo`."""
    server = SeaweedS3(ray_cluster)
    try:
        try:
            server.start()
        except HarnessError as exc:
            pytest.fail(f"S3 server did not start: {exc}", pytrace=False)
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(ray_cluster: NetnsCluster) -> NetnsCluster:
    """The session cluster with its worker node alive (a failing kill test may have left it dead)."""
    ray_cluster.ensure_worker()
    return ray_cluster


@pytest.fixture(scope="session")
def job_workdir(ray_cluster: NetnsCluster) -> Path:
    """A copy of what `ray job submit --working-dir .` ships from a checkout: the files git does not ignore."""
    return copy_checkout(ray_cluster.root / "jobs" / "repo")


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "test cluster timings")
        for key, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{key}: {seconds:.1f} s")
