"""The cluster examples that CI cannot launch are at least valid: deploy/cluster.yaml against the `ray up` schema
of the installed Ray, deploy/rayjob.yaml for the fields KubeRay reads, and every `launch.py` command in the
deploy files and docs/cluster.md against the real CLI parser. Fast; part of `make test`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

import launch

REPO = Path(__file__).resolve().parents[2]


def launch_commands(text: str) -> list[list[str]]:
    """Arguments of every `python [path/]launch.py ...` in a text, shell line continuations joined."""
    joined = re.sub(r"\\\n\s*#?\s*", " ", text)  # also continuations inside comments
    return [shlex.split(m[1], comments=True) for m in re.finditer(r"python\s+\S*launch\.py\s+([^\n`]*)", joined)]


def strings_in(node: object) -> list[str]:
    """Every string value of a parsed YAML document (folded entrypoints arrive as one line)."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return [node] if isinstance(node, str) else []


def test_cluster_launcher_config_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "deploy" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` runs before it launches anything
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and starts.count("GLOO_SOCKET_IFNAME") == 2
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_cluster_launcher_schema_rejects_a_broken_config():
    """The check above has teeth: a misspelt key is refused by the same schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((REPO / "deploy" / "cluster.yaml").read_text()))
    config["available_node_types"]["head"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(config)


def test_rayjob_manifest_has_what_kuberay_reads():
    text = (REPO / "deploy" / "rayjob.yaml").read_text()
    job = yaml.safe_load(text)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__, "the image's Ray must be the Ray the project pins"
    assert f"rayproject/ray:{ray.__version__}" in text
    assert cluster["authOptions"] == {"mode": "token"}
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams are strings"
        assert group["template"]["spec"]["containers"][0]["image"]
    assert [c["name"] for g in groups for c in g["template"]["spec"]["containers"]] == ["ray-head", "ray-worker"]


@pytest.mark.parametrize("path", ["deploy/rayjob.yaml", "deploy/cluster.yaml", "docs/cluster.md",
                                  "tune_configs/cluster.yaml"])
def test_documented_commands_parse(path):
    text = (REPO / path).read_text()
    commands = launch_commands(text)
    if path.endswith(".yaml"):
        commands += [c for s in strings_in(yaml.safe_load(text)) for c in launch_commands(s)]
    assert commands, f"no launch.py command found in {path}"
    parser = launch.build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path}: `launch.py {' '.join(argv)}` does not parse")
