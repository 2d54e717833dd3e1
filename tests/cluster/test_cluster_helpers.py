"""segengine.cluster rules, without a cluster (fast; part of `make test`). The real cluster exercises them in
test_multinode.py."""

from __future__ import annotations

import pytest

from segengine import cluster
from segengine.cluster import REDACTED, check_storage_for_cluster, redact, resolve_address, storage_kind

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def test_resolve_address_prefers_flag_then_env(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address("10.0.0.9:6379") == "10.0.0.9:6379"
    assert resolve_address(None) == "10.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert resolve_address("") is None


@pytest.mark.parametrize(("storage", "kind"), [
    ("runs", "local"),
    ("/mnt/nfs/runs", "local"),
    ("../shared/runs", "local"),
    ("C:\\runs", "local"),
    ("file:///mnt/nfs/runs", "shared-file"),
    ("FILE:///mnt/nfs/runs", "shared-file"),
    ("s3://bucket/runs?endpoint_override=10.0.0.1%3A8333&scheme=http", "object"),
    ("gs://bucket/runs", "object"),
    ("abfs://container/runs", "object"),
])
def test_storage_kind(storage, kind):
    assert storage_kind(storage) == kind


def test_local_storage_refused_on_multi_address_cluster():
    with pytest.raises(cluster.ClusterStorageError) as info:
        check_storage_for_cluster("/home/me/runs", {"10.0.0.1", "10.0.0.2"})
    err = info.value
    assert err.user_error is True
    message = str(err)
    assert "\n" not in message
    assert "/home/me/runs" in message and "own disk" in message
    assert "file://" in message and "s3://" in message


@pytest.mark.parametrize("storage", ["file:///mnt/nfs/runs", "s3://bucket/runs", "gs://bucket/runs"])
def test_shared_storage_accepted_on_cluster(storage):
    check_storage_for_cluster(storage, {"10.0.0.1", "10.0.0.2"})


@pytest.mark.parametrize("ips", [set(), {"10.0.0.1"}])
def test_local_storage_fine_on_one_address(ips):
    """Several raylets on one machine share its disk: a local path works there."""
    check_storage_for_cluster("/home/me/runs", ips)


def test_refusal_message_redacts_credentials():
    with pytest.raises(cluster.ClusterStorageError) as info:
        check_storage_for_cluster(f"/runs/secret_key={SECRET}", {"a", "b"})
    assert SECRET not in str(info.value)


def test_alive_node_ips_skips_dead_nodes(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [
        {"NodeManagerAddress": "10.0.0.1", "Alive": True},
        {"NodeManagerAddress": "10.0.0.2", "Alive": False},
        {"NodeManagerAddress": "10.0.0.3", "Alive": True},
        {"NodeManagerAddress": "10.0.0.1", "Alive": True},
    ])
    assert cluster.alive_node_ips() == {"10.0.0.1", "10.0.0.3"}


@pytest.mark.parametrize("uri", [
    f"s3://bucket/runs?endpoint_override=h%3A1&access_key=AKIA1&secret_key={SECRET}&scheme=http",
    f"s3://AKIA1:{SECRET}@bucket/runs",
    f"s3://bucket/runs?session_token={SECRET}",
    f"https://acct.blob.core.windows.net/c/x?sv=2022&sig={SECRET}",
    f"https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA1&X-Amz-Signature={SECRET}",
])
def test_redact_uri_credentials(uri):
    out = redact(uri)
    assert SECRET not in out and "AKIA1" not in out
    assert REDACTED in out


def test_redact_keeps_what_is_not_secret():
    uri = "s3://bucket/runs?endpoint_override=10.0.0.1%3A8333&scheme=http&region=us-east-1"
    assert redact(uri) == uri
    text = "storage file:///mnt/nfs/runs RAY_AUTH_MODE=token AWS_REGION=eu-west-1 tokenizer: bpe"
    assert redact(text) == text


def test_redact_env_assignments_and_bearer_tokens_in_text():
    text = (f"AWS_SECRET_ACCESS_KEY={SECRET} AWS_ACCESS_KEY_ID=AKIA1 export RAY_AUTH_TOKEN='{SECRET}'\n"
            f"secret_key: {SECRET}\nAuthorization: Bearer {SECRET}")
    out = redact(text)
    assert SECRET not in out and "AKIA1" not in out
    assert out.count(REDACTED) == 5
    assert out.startswith("AWS_SECRET_ACCESS_KEY=***")


def test_redact_nested_config_is_a_copy():
    cfg = {
        "storage": f"s3://bucket/runs?secret_key={SECRET}",
        "env": {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET, "AWS_REGION": "eu-west-1"},
        "plugins": ["my_plugin.py"],
        "class_weights": [1.0, 2.0],
        "epochs": 3,
        "token": None,
    }
    out = redact(cfg)
    assert SECRET not in repr(out)
    assert out["env"] == {"AWS_SECRET_ACCESS_KEY": REDACTED, "AWS_SESSION_TOKEN": REDACTED,
                          "AWS_REGION": "eu-west-1"}
    assert out["plugins"] == ["my_plugin.py"] and out["class_weights"] == [1.0, 2.0] and out["epochs"] == 3
    assert out["token"] is None
    assert cfg["env"]["AWS_SECRET_ACCESS_KEY"] == SECRET  # the input is untouched
