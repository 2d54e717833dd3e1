"""What serving costs, side by side in one run: the same images segmented (1) in one process, as `predict` does
(batches of the predictor, every CPU to torch), and (2) through `launch.py serve`'s application on loopback under a
bounded load (C concurrent clients for T seconds, both printed), with 1 replica of all the CPUs and with one replica
per CPU. Prints per setup: throughput, latency p50/p95/p99, and status counts; then the ratios the issue targets:
throughput against in-process prediction, p50 against one image's model time (batch 1, in process).

    python benchmarks/serve_throughput.py --model CHECKPOINT [--images DIR] [--clients 8] [--seconds 30]

Default images: the ISBI training sections (512 x 512 grey). The clients run in this process (threads of
`requests`), on the same CPUs, as a client on the serving machine would.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

import segdata
from segengine.inference import open_predictor
from segengine.serving.run import Replicas, serve_model

REPO = Path(__file__).resolve().parents[1]
ISBI_IMAGES = REPO.parent / "shared" / "data" / "isbi2012" / "Images"


def amx() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "AMX (bf16 native)" if "amx_bf16" in flags else "no AMX"


def in_process(model: str, images: list[np.ndarray], cpus: int) -> tuple[float, float]:
    """(images/s of batched prediction as `predict` runs it, median seconds of one image at batch 1)."""
    torch.set_num_threads(cpus)
    predictor = open_predictor(model, verbose=False, device="cpu")
    predictor.batch_scores(images[:2])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(images), predictor.batch_size):
        [predictor.decision.mask(s) for s in predictor.batch_scores(images[start:start + predictor.batch_size])]
    throughput = len(images) / (time.perf_counter() - started)
    single = []
    for image in images[:8]:
        began = time.perf_counter()
        predictor.predict_mask(image)
        single.append(time.perf_counter() - began)
    return throughput, statistics.median(single)


def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """C clients posting the images in turn for T seconds: latencies of answered requests and the statuses."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        i = index
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            try:
                code = session.post(f"{url}/v1/segment", data=bodies[i % len(bodies)], timeout=120).status_code
            except requests.RequestException as exc:
                code = type(exc).__name__
            latencies.append(time.perf_counter() - began)
            statuses[code] += 1
            i += clients

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {"throughput": statuses[200] / elapsed, "p50": q[49], "p95": q[94], "p99": q[98],
            "requests": len(latencies), "statuses": dict(statuses), "seconds": elapsed}


def served(model: str, bodies: list[bytes], replicas: int, cpus_per_replica: float, clients: int, seconds: float,
           port: int, max_batch: int) -> dict:
    from ray import serve

    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve_model, args=(model,), daemon=True, kwargs={
        "port": port, "replicas": Replicas(count=replicas), "cpus_per_replica": cpus_per_replica, "device": "cpu",
        "max_batch": max_batch, "ready": ready, "stop": stop})
    thread.start()
    if not ready.wait(300):
        raise SystemExit("the service did not start in 300 s")
    url = f"http://127.0.0.1:{port}"
    load(url, bodies[:4], min(clients, 4), 5)  # warm-up: every replica has run its first batches
    result = load(url, bodies, clients, seconds)
    result["alone"] = load(url, bodies, 1, min(seconds, 15))  # one client: what serving adds to the model time
    stop.set()
    thread.join(60)
    serve.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="anything `serve` takes (the ISBI recipe's checkpoint)")
    parser.add_argument("--images", default=str(ISBI_IMAGES))
    parser.add_argument("--count", type=int, default=16, help="images used (default 16)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--port", type=int, default=8917)
    args = parser.parse_args()

    import ray

    cpus = os.cpu_count() or 1
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg"))
    paths = paths[: args.count]
    images = [segdata.read_image(str(p)) for p in paths]
    bodies = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} CPUs, {amx()}; {len(images)} images of "
          f"{images[0].shape[1]} x {images[0].shape[0]}; load: {args.clients} concurrent clients for "
          f"{args.seconds:g} s; model {args.model}", flush=True)
    local_rate, single = in_process(args.model, images, cpus)
    print(f"in process (predict's batches, {cpus} threads): {local_rate:.2f} img/s; one image at batch 1: "
          f"{single * 1000:.0f} ms", flush=True)
    ray.init(num_cpus=cpus, logging_level="ERROR", include_dashboard=False)
    rows = []
    for replicas, per in ((1, float(cpus)), (cpus, 1.0)):
        result = served(args.model, bodies, replicas, per, args.clients, args.seconds, args.port, args.max_batch)
        rows.append((f"serve, {replicas} replica(s) x {per:g} CPU", result))
        print(f"{rows[-1][0]}: {result['throughput']:.2f} img/s, p50 {result['p50'] * 1000:.0f} ms, p95 "
              f"{result['p95'] * 1000:.0f} ms, p99 {result['p99'] * 1000:.0f} ms, {result['requests']} requests "
              f"in {result['seconds']:.1f} s, statuses {result['statuses']}", flush=True)
    ray.shutdown()
    print(f"\n| setup | img/s | x in-process | p50 ms | p95 ms | p99 ms | {args.clients} / img/s ms | p50 1 client "
          "ms | 1-client p50 / one image | statuses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| in process, {cpus} threads | {local_rate:.2f} | 1.00 | | | | | {single * 1000:.0f} (batch 1) | 1.00 | |")
    for name, r in rows:
        alone = r["alone"]["p50"]
        print(f"| {name} | {r['throughput']:.2f} | {r['throughput'] / local_rate:.2f} | {r['p50'] * 1000:.0f} | "
              f"{r['p95'] * 1000:.0f} | {r['p99'] * 1000:.0f} | {args.clients / r['throughput'] * 1000:.0f} | "
              f"{alone * 1000:.0f} | {alone / single:.2f} | {r['statuses']} |")
    print(f"(with {args.clients} clients always waiting, Little's law puts the mean latency at clients / throughput: "
          "the column beside p99)")
    print(f"\ncommand: python benchmarks/serve_throughput.py --model {args.model} --clients {args.clients} "
          f"--seconds {args.seconds:g}")


if __name__ == "__main__":
    main()
