"""What a multi-node run depends on, kept small and in one place: where Ray is, whether storage is shared, and
what must never reach a saved config or a log.

Ray is imported lazily (only `alive_node_ips` needs it) so the pure rules can be checked without a cluster.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

REDACTED = "***"

# A name is secret when it is, or ends in, one of these words (AWS_SECRET_ACCESS_KEY, secret_key,
# RAY_AUTH_TOKEN, x-amz-security-token, sig ...); AWS_REGION or endpoint_override stay readable.
_SECRET_NAME = re.compile(
    r"(^|[_\-.])(secret|token|passw(or)?d|credentials?|access[_-]?key(_id)?|private[_-]?key|api[_-]?key|"
    r"session[_-]?token|signature|sig|x-amz-credential|auth)($|[_\-.](id|key|path|file)?$)",
    re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s?#]+)@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&])(?P<name>[^=&#\s]+)=(?P<value>[^&#\s]*)")
_ASSIGNMENT = re.compile(r"\b(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)(?P<op>\s*[=:]\s*)(?P<quote>[\"']?)"
                         r"(?P<value>[^\s\"',;&]+)")
_BEARER = re.compile(r"(?P<prefix>\bBearer\s+)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


class ClusterStorageError(ValueError):
    """A storage location that cannot work on this cluster (printed as one line by launch.py)."""

    user_error = True


def resolve_address(flag: str | None) -> str | None:
    """The cluster to join: --address, else $RAY_ADDRESS, else None (start a local Ray)."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def storage_kind(storage: str) -> str:
    """'local' for a plain path, 'shared-file' for file:// (a mount every node shares), 'object' for other
    URIs."""
    scheme = urlsplit(storage).scheme.lower()
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter (C:\\runs)
        return "local"
    return "shared-file" if scheme == "file" else "object"


def check_storage_for_cluster(storage: str, node_ips: set[str]) -> None:
    """Refuse a plain local path when the nodes are different machines: each would write to its own disk, so a
    worker restarted elsewhere could not find the last checkpoint and results would be scattered."""
    if len(node_ips) <= 1 or storage_kind(storage) != "local":
        return
    raise ClusterStorageError(
        f"--storage {redact(storage)} is a local path, but this Ray cluster has {len(node_ips)} nodes with "
        f"different addresses ({', '.join(sorted(node_ips))}): each node would write checkpoints to its own "
        "disk; use file:///path/on/shared/mount for a folder every node mounts, or s3://bucket/prefix "
        "(gs://...) for object storage")


def alive_node_ips() -> set[str]:
    """Addresses of the alive nodes of the connected Ray cluster."""
    import ray

    return {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _is_secret_entry(key: Any, value: Any) -> bool:
    return isinstance(key, str) and is_secret_name(key) and value not in (None, "")


def _redact_text(text: str) -> str:
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _QUERY_PARAM.sub(
        lambda m: f"{m['sep']}{m['name']}={REDACTED}" if is_secret_name(m["name"]) else m[0], text)
    text = _ASSIGNMENT.sub(
        lambda m: f"{m['name']}{m['op']}{m['quote']}{REDACTED}"
        if is_secret_name(m["name"]) and m["value"] != REDACTED else m[0], text)
    return _BEARER.sub(lambda m: f"{m['prefix']}{REDACTED}", text)


def redact(value: Any) -> Any:
    """A copy of `value` (text, or dicts/lists of them) with credentials replaced by ***: userinfo and secret
    query parameters in URIs, NAME=VALUE pairs and dict entries whose name is secret, bearer tokens."""
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret_entry(k, v) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value
