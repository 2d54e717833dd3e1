"""`launch.py serve MODEL`: the model behind an HTTP endpoint on Ray Serve until Ctrl-C.

Checks what it can on the driver before Ray starts (the host and token, the model: anything `predict` takes), ships
the weights once, deploys `Ingress` + `Segmenter` (`serving.app`) and prints where it listens. Ctrl-C (or SIGTERM)
deletes the application; a Ray this command started stops with it.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segengine.cluster import resolve_address
from segengine.inference.ensemble import open_predictor
from segengine.inference.predictor import BATCH, InferenceError

APP_NAME = "unet-zoo"


class ServeError(InferenceError):
    """A serve request that cannot start; one line for the CLI."""


@dataclass(frozen=True)
class Replicas:
    """How many model replicas: a fixed number, or Serve's autoscaling between two bounds."""

    count: int = 1
    autoscale: tuple[int, int] | None = None

    def options(self, max_batch: int) -> dict[str, Any]:
        if self.autoscale is None:
            return {"num_replicas": self.count}
        low, high = self.autoscale
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                                       "target_ongoing_requests": max_batch}}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str | None, host: str) -> str | None:
    """The bearer token of --token-file; a host other than loopback is refused without one."""
    if path is None:
        if not is_loopback(host):
            raise ServeError(f"--host {host} listens beyond this machine: give --token-file FILE (a secret of 16 or "
                             "more characters) so that only holders of the token are answered")
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"--token-file {path}: cannot read it ({exc.__class__.__name__})") from None
    if len(token) < 16 or not (token.isascii() and token.isprintable()) or " " in token:
        raise ServeError(f"--token-file {path}: the token must be one word of 16 or more ASCII characters "
                         "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE`)")
    return token


def _check_port(host: str, port: int) -> None:
    """A port another program holds is refused before Ray starts (Serve would retry it for minutes)."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port}: use 1-65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); choose another "
                             "--port") from None


def build_app(model: str, *, plugin_refs: Sequence[str], replicas: Replicas, max_batch: int, device: str,
              amp: bool, cpus_per_replica: float, limits: Any, token: str | None) -> Any:
    """(the Serve application: `Ingress` bound to a `Segmenter` deployment of the shipped model, the predictor
    opened here); in a Ray session, whose driver owns the shipped weights as long as the application runs."""
    import plugins
    from segengine.inference.batch_jobs import actor_resources
    from segengine.inference.shipping import ship
    from segengine.ray_adapter import ResourceError, cluster_capacity
    from segengine.serving.app import Ingress, ModelInfo, Segmenter

    predictor = open_predictor(model, plugin_refs, verbose=True, amp=amp, device="cpu", batch_size=max_batch)
    refs = plugins.resolve_plugin_refs(list(plugin_refs))
    starting = replicas.count if replicas.autoscale is None else max(replicas.autoscale[0], 1)
    resources, replica_device = actor_resources(device, 1)
    kind, each = ("GPU", 1.0) if "num_gpus" in resources else ("CPU", cpus_per_replica)
    if kind == "CPU":
        resources = {"num_cpus": cpus_per_replica}
    held = cluster_capacity()[kind]
    if starting * each > held:  # Serve would wait for them forever
        raise ResourceError(f"{starting} replica(s) x {each:g} {kind}: the cluster has {held:g} {kind}s; use fewer "
                            "--replicas" + (" or --cpus-per-replica" if kind == "CPU" else ""))
    threads = max(1, int(cpus_per_replica))
    options = {"amp": amp, "device": replica_device, "batch_size": max(max_batch, BATCH)}
    segmenter = Segmenter.options(
        ray_actor_options=resources, max_ongoing_requests=2 * max_batch, max_queued_requests=limits.max_queued,
        **replicas.options(max_batch)).bind(ship(predictor), refs, options, threads, max_batch)
    # the ingress waits on the model, so it holds more requests at once; beyond them the proxy answers 503
    ingress = Ingress.options(max_ongoing_requests=2 * limits.max_queued, max_queued_requests=limits.max_queued)
    return ingress.bind(segmenter, ModelInfo.of(predictor), limits, token), predictor


def serve_model(model: str, *, address: str | None = None, replicas: Replicas = Replicas(), host: str = "127.0.0.1",
                port: int = 8000, max_batch: int = 4, device: str = "auto", amp: bool = True,
                cpus_per_replica: float = 1.0, token_file: str | None = None, plugin_refs: Sequence[str] = (),
                limits: Any = None, ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Serve `model` until Ctrl-C, SIGTERM or `stop` is set; `ready` is set once it answers (tests)."""
    from segengine.serving.app import ServeLimits

    limits = limits or ServeLimits()
    token = read_token(token_file, host)
    if max_batch < 1:
        raise ServeError(f"--max-batch {max_batch}: use 1 or more images per forward pass")
    for flag, value in (("--max-bytes", limits.max_bytes), ("--max-pixels", limits.max_pixels),
                        ("--timeout", limits.timeout_s), ("--max-queued", limits.max_queued)):
        if value <= 0:
            raise ServeError(f"{flag} {value:g}: use a positive number")
    if replicas.autoscale is not None and not 0 <= replicas.autoscale[0] <= replicas.autoscale[1] >= 1:
        raise ServeError(f"--autoscale {replicas.autoscale[0]} {replicas.autoscale[1]}: use MIN <= MAX, MAX >= 1")
    if replicas.autoscale is None and replicas.count < 1:
        raise ServeError(f"--replicas {replicas.count}: use 1 or more")
    if resolve_address(address) is None:  # a Ray started here: its proxy listens on this machine
        _check_port(host, port)

    from ray import serve

    import plugins
    from segengine.ray_adapter import ray_session

    stop = stop or threading.Event()
    refs = plugins.resolve_plugin_refs(list(plugin_refs))
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its start-up INFO lines; ours say where it listens
    with ray_session(address, refs):
        app, predictor = build_app(model, plugin_refs=plugin_refs, replicas=replicas, max_batch=max_batch,
                                   device=device, amp=amp, cpus_per_replica=cpus_per_replica, limits=limits,
                                   token=token)
        quiet = {"log_level": "WARNING"}  # Serve's per-request and deployment INFO lines: its logs folder has them
        # one proxy, on the head, at the address printed; it spreads requests over replicas on every node
        serve.start(proxy_location="HeadOnly", logging_config=quiet,
                    http_options={"host": host, "port": port, "request_timeout_s": limits.timeout_s + 30})
        _check_listening(host, port)
        started = time.perf_counter()
        previous = _stop_on_sigterm(stop)
        try:  # from here the application is deleted however this ends, Ctrl-C while it starts included
            try:
                serve.run(app, name=APP_NAME, route_prefix="/", logging_config=quiet)
            except RuntimeError as exc:  # a replica that cannot start: Serve's message holds its traceback
                first = next((line for line in reversed(str(exc).splitlines()) if line.strip()), str(exc))
                raise ServeError(f"the model's replicas did not start: {first.strip()}") from None
            shown = f"[{host}]" if ":" in host else host
            scaling = f"autoscaling {replicas.autoscale[0]}-{replicas.autoscale[1]}" if replicas.autoscale else \
                str(replicas.count)
            print(f"serving   {predictor.path} ({predictor.description})\n"
                  f"at        http://{shown}:{port}/  (API: POST /v1/segment, GET /v1/model, /healthz, "
                  f"/openapi.json)\nreplicas  {scaling}, batches of up to {max_batch}; ready in "
                  f"{time.perf_counter() - started:.1f} s; Ctrl-C stops", file=sys.stderr, flush=True)
            if ready is not None:
                ready.set()
            while not stop.wait(0.5):
                pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            serve.delete(APP_NAME)
            print("stopped", file=sys.stderr)


def _check_listening(host: str, port: int) -> None:
    """Serve already running on the cluster keeps its HTTP settings (serve.start only warns): refuse to deploy
    behind a proxy that listens elsewhere than asked, beyond loopback without the token check this run expects."""
    from ray.serve.context import _get_global_client

    config = _get_global_client().http_config  # Ray 2.60 has no public getter for the running proxy's settings
    if (config.host, config.port) != (host, port):
        raise ServeError(f"Serve already runs on this cluster, its proxy at {config.host}:{config.port}, not "
                         f"{host}:{port}: serve with --host {config.host} --port {config.port}, or stop it first "
                         "(`serve shutdown` with the cluster's address)")


def _stop_on_sigterm(stop: threading.Event) -> Any:
    """SIGTERM stops the service like Ctrl-C (only the main thread may install a handler)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: stop.set())
