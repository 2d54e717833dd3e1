"""Training on a simulated 2-node cluster (ray.cluster_utils.Cluster, 1 CPU per node): the two workers land on
different nodes and the model still learns. Runs in its own process: it needs its own Ray cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

from engine_helpers import REPO

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
import ray
from ray.cluster_utils import Cluster
from engine_helpers import tiny_config
from segengine.training import train

import socket
with socket.socket() as s:  # the shared test instance holds the default dashboard port
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,
                                                        "dashboard_port": port})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR")
os.environ["RAY_ADDRESS"] = cluster.address
summary = train(tiny_config(storage=sys.argv[1], name="two-nodes", epochs=6))
print("RESULT", json.dumps({"miou": summary["metrics"]["val_miou"], "run_dir": summary["run_dir"]}))
ray.shutdown()
cluster.shutdown()
"""


def test_workers_on_two_simulated_nodes_learn(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the shared test instance
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(REPO)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    nodes = json.loads((Path(result["run_dir"]) / "workers.json").read_text())["worker_node_ids"]
    assert len(nodes) == 2 and len(set(nodes)) == 2
    assert result["miou"] > 0.55  # untrained: about 0.39 (all background)
