"""The harness itself, independent of the engine: two nodes with their own addresses, token auth enforced, a
Ray Train run whose workers sit on both nodes, talk over gloo and checkpoint to shared folder and S3 storage."""

from __future__ import annotations

import pytest
from netns_cluster import NetnsCluster, SeaweedS3

pytestmark = pytest.mark.cluster


def test_nodes_have_their_own_addresses(cluster: NetnsCluster):
    result = cluster.probe("nodes", "--expect", cluster.head.ip, cluster.worker.ip)
    both = [cluster.head.ip, cluster.worker.ip]
    assert result["alive"] == both
    assert result["task_ips"] == both, "a task pinned to each node must see that node's own address"


def test_jobs_api_refuses_requests_without_the_token(cluster: NetnsCluster):
    proc = cluster.run(["ray", "job", "list", "--address", cluster.dashboard_url],
                       env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": ""}, timeout=120)
    assert proc.returncode != 0
    assert "Unauthorized" in proc.stdout + proc.stderr
    with_token = cluster.run(["ray", "job", "list", "--address", cluster.dashboard_url], timeout=120)
    assert with_token.returncode == 0, with_token.stderr


@pytest.mark.parametrize("kind", ["shared-file", "s3"])
def test_train_workers_span_nodes_and_checkpoint_to_shared_storage(cluster: NetnsCluster, s3_server: SeaweedS3,
                                                                   kind: str):
    storage = (f"file://{cluster.shared}/probe" if kind == "shared-file"
               else s3_server.uri("unet-zoo/probe"))
    result = cluster.probe("trainer", storage, "--name", f"probe-{kind}", timeout=300)
    workers = sorted(result["workers"], key=lambda w: w["rank"])
    assert {w["ip"] for w in workers} == {cluster.head.ip, cluster.worker.ip}
    assert sorted(w["node_rank"] for w in workers) == [0, 1]
    assert [w["sum"] for w in workers] == [3.0, 3.0], "gloo all-reduce across the two nodes"
    assert result["checkpoint_files"] == ["rank0.json", "rank1.json"], "every worker uploads its own files"
    assert {w["ip"] for w in result["written"]} == {cluster.head.ip, cluster.worker.ip}
    if kind == "s3":
        files = s3_server.list("unet-zoo/probe/probe-s3")
        assert {"rank0.json", "rank1.json"} <= {f.rsplit("/", 1)[-1] for f in files}
    else:
        assert sorted(p.name for p in (cluster.shared / "probe" / "probe-shared-file").rglob("rank*.json")) == [
            "rank0.json", "rank1.json"]
