"""The Ray adapter: one session context that leaves the environment as it found it, and worker errors as one line."""

import subprocess
import sys

from engine_helpers import REPO

from segengine.ray_adapter import failure_message
from segengine.worker import TrainingError

SESSION_SCRIPT = """
import os, ray
from segengine.ray_adapter import ray_session
os.environ.pop("RAY_ADDRESS", None)
with ray_session(None):
    inside = os.environ.get("RAY_ADDRESS")
    assert ray.is_initialized() and inside, inside
try:
    with ray_session(None):
        raise KeyError("stop")
except KeyError:
    pass
print("after", ray.is_initialized(), os.environ.get("RAY_ADDRESS"))
"""


def test_session_stops_what_it_started_and_restores_ray_address():
    proc = subprocess.run([sys.executable, "-c", SESSION_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "after False None"


def test_worker_failures_give_our_message_else_the_exception_type():
    from ray.train.v2.api.exceptions import WorkerGroupError

    ours = WorkerGroupError("rank 0: ...", {1: ValueError("boom\ntrace"), 0: TrainingError("loss became nan\nmore")})
    assert failure_message(ours) == "loss became nan"
    theirs = WorkerGroupError("rank 0: ...", {0: ValueError("boom\ntrace")})
    assert failure_message(theirs) == "ValueError: boom"
    assert failure_message(RuntimeError("controller\n\nlast line")) == "last line"
