"""`launch.py serve` on the session's Ray: real HTTP on loopback against a real 2-worker checkpoint. The answers
equal what `predict` computes, every bad request gets a one-line 4xx fast and the service keeps serving, the page
segments an upload in headless Chromium, a killed model replica costs 503s and is replaced, and the CLI starts its
own Ray, answers and stops cleanly on Ctrl-C."""

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tifffile
from engine_helpers import REPO, TINY_SYNTH
from PIL import Image

import segdata
from launch import main
from segengine.inference.prediction import render
from segengine.inference.predictor import Predictor
from segengine.serving.app import ServeLimits
from segengine.serving.run import Replicas, read_token, serve_model

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = ServeLimits(max_bytes=2**20, max_pixels=2**20, timeout_s=20, max_queued=32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ckpt(trained_run) -> str:
    return trained_run["best_checkpoint"]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    folder = segdata.open_dataset(segdata.resolve_data(TINY_SYNTH))
    return segdata.read_image(folder.samples("val")[0].image)


@pytest.fixture(scope="module")
def service(ckpt, tmp_path_factory):
    """The checkpoint served with a token and small limits, in a thread of this process (its Ray: the session's)."""
    from ray import serve

    token_file = tmp_path_factory.mktemp("serve") / "token"
    token_file.write_text(TOKEN + "\n")
    ready, stop, port = threading.Event(), threading.Event(), _free_port()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve_model(ckpt, port=port, max_batch=4, token_file=str(token_file), limits=LIMITS, ready=ready,
                        stop=stop, replicas=Replicas(count=1))
        except BaseException as exc:  # shown by the fixture instead of a silent thread
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(180) and not failed, failed
    yield f"http://127.0.0.1:{port}"
    stop.set()
    thread.join(60)
    serve.shutdown()


def test_answers_equal_predict(service, ckpt, image):
    predictor = Predictor.from_checkpoint(ckpt, verbose=False)
    expected = predictor.predict_mask(image)
    body = _png(image[:, :, 0] if image.shape[2] == 1 else image)

    got = requests.post(f"{service}/v1/segment", data=body, headers=AUTH, timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png", got.text
    mask = np.asarray(Image.open(io.BytesIO(got.content)))
    assert np.array_equal(mask, expected)

    form = requests.post(f"{service}/v1/segment", files={"image": ("x.png", body, "image/png")}, headers=AUTH,
                         timeout=30)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(form.content))), expected)
    if image.shape[2] == 1:  # a compressed TIFF from outside is decoded by Pillow's bounded decoder: same image
        tiff = requests.post(f"{service}/v1/segment", data=_tiff(image[:, :, 0], "zlib"), headers=AUTH, timeout=30)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(tiff.content))), expected)

    shown = render(image, expected, predictor.palette)
    for output in ("color", "overlay"):
        got = requests.post(f"{service}/v1/segment?output={output}", data=body, headers=AUTH, timeout=30)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(got.content))), shown[output]), output

    probs = np.load(io.BytesIO(requests.post(f"{service}/v1/segment?output=probs", data=body, headers=AUTH,
                                             timeout=30).content), allow_pickle=False)
    assert probs.dtype == np.float16 and probs.shape == (predictor.num_classes, *expected.shape)
    assert np.allclose(probs.astype(np.float32).sum(axis=0), 1, atol=2e-3)
    assert np.array_equal(probs.argmax(axis=0), expected)

    summary = requests.post(f"{service}/v1/segment?output=json", data=body, headers=AUTH, timeout=30).json()
    shares = np.bincount(expected.ravel(), minlength=predictor.num_classes) / expected.size
    assert (summary["width"], summary["height"]) == (image.shape[1], image.shape[0])
    assert summary["class_shares"] == {n: pytest.approx(s, abs=1e-6) for n, s in
                                       zip(predictor.class_names, shares, strict=True)}

    info = requests.get(f"{service}/v1/model", headers=AUTH, timeout=10).json()
    assert [c["name"] for c in info["classes"]] == predictor.class_names
    assert info["in_channels"] == predictor.in_channels and info["model"] == predictor.path
    assert requests.get(f"{service}/healthz", timeout=10).json() == {"status": "ok"}
    assert "/v1/segment" in requests.get(f"{service}/openapi.json", timeout=10).json()["paths"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels and holds none (what a decompression bomb's header says)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def _tiff(array: np.ndarray, compression: str | None = None) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression=compression)
    return buffer.getvalue()


def _bad_requests(image: np.ndarray) -> list[tuple[str, dict, int]]:
    body = _png(image[:, :, 0] if image.shape[2] == 1 else image)
    four = io.BytesIO()
    tifffile.imwrite(four, np.zeros((32, 32, 4), np.uint8))
    corrupt = bytearray(_tiff(image[:, :, 0], "zlib"))
    with tifffile.TiffFile(io.BytesIO(bytes(corrupt))) as tif:  # the middle of the deflate stream overwritten
        middle = tif.pages[0].dataoffsets[0] + tif.pages[0].databytecounts[0] // 2
    corrupt[middle:middle + 16] = b"\xff" * 16
    deep = (image[:, :, 0].astype(np.uint16) * 257)
    huge = _png(np.zeros((1100, 1100), np.uint8))  # 1.2 Mpx in a few kB: refused from its header
    return [
        ("not an image", {"data": b"hello, not an image"}, 400),
        ("truncated", {"data": body[: len(body) // 2]}, 400),
        ("empty", {"data": b""}, 400),
        ("wrong channel count", {"data": four.getvalue()}, 422),
        ("16-bit image to an 8-bit model", {"data": _png(deep)}, 400),
        ("too many bytes", {"data": b"\0" * (2**20 + 1)}, 413),
        ("too many pixels", {"data": huge}, 413),
        ("a 40000 x 40000 header (beyond Pillow's bomb guard)", {"data": _png_header(40000, 40000)}, 413),
        ("a TIFF with a corrupt deflate strip", {"data": bytes(corrupt)}, 400),
        ("multipart without a file", {"files": {"note": (None, "text")}}, 400),
        ("unknown output", {"data": body, "params": {"output": "jpeg"}}, 400),
        ("no token", {"data": body, "headers": {}}, 401),
        ("wrong token", {"data": body, "headers": {"Authorization": "Bearer " + "x" * len(TOKEN)}}, 401),
        ("wrong method", {"method": "GET"}, 405),
        ("wrong path", {"path": "/v2/segment", "data": body}, 404),
    ]


def test_bad_requests_get_a_one_line_4xx_fast_and_the_service_keeps_serving(service, image):
    valid = _png(image[:, :, 0] if image.shape[2] == 1 else image)
    for name, request, status in _bad_requests(image):
        request = dict(request)
        method, path = request.pop("method", "POST"), request.pop("path", "/v1/segment")
        headers = request.pop("headers", AUTH)
        started = time.perf_counter()
        got = requests.request(method, service + path, headers=headers, timeout=10, **request)
        took = time.perf_counter() - started
        assert got.status_code == status, (name, got.status_code, got.text)
        message = got.json()["error"]
        assert message and "\n" not in message and "Traceback" not in message, (name, message)
        assert took < 1.0, (name, took)
        after = requests.post(f"{service}/v1/segment", data=valid, headers=AUTH, timeout=30)
        assert after.status_code == 200, (name, after.text)


def test_a_host_beyond_loopback_needs_a_token(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --host 0.0.0.0 listens beyond this machine: give --token-file") and "\n" not in err
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(Exception, match="16 or more ASCII characters"):
        read_token(str(short), "0.0.0.0")


def test_more_replicas_than_the_cluster_holds_are_refused_at_once(ray_local, ckpt, capsys):
    cpus = int(ray_local.cluster_resources()["CPU"])
    started = time.perf_counter()
    assert main(["serve", ckpt, "--replicas", str(cpus + 1), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {cpus + 1} replica(s) x 1 CPU: the cluster has {cpus} CPUs; use fewer --replicas or "
                       "--cpus-per-replica"), err
    assert time.perf_counter() - started < 30


def test_the_page_segments_an_upload_in_chromium(service, browser, image, tmp_path):
    upload = tmp_path / "cells.png"
    upload.write_bytes(_png(image[:, :, 0] if image.shape[2] == 1 else image))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"outside request: {r.url}") if not r.url.startswith(
        (service, "blob:", "data:")) else None)
    page.goto(service + "/")
    page.wait_for_selector("#tokenbox", state="visible")  # the model's description needs the token
    page.fill("#token", TOKEN)
    page.click("#usetoken")
    page.wait_for_selector("#legend tr.class", state="attached")  # (selectors: the page's CSP forbids eval)
    page.set_input_files("#file", str(upload))
    page.wait_for_selector("#view", state="visible", timeout=60_000)
    shares = page.eval_on_selector_all("#legend tr.class td:nth-child(3)", "cells => cells.map(c => c.textContent)")
    assert all(s.endswith("%") for s in shares) and abs(sum(float(s[:-2]) for s in shares) - 100) < 0.5, shares
    colours = page.evaluate("""() => {
        const c = document.getElementById('view'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return [c.width, c.height, new Set(Array.from({length: d.length / 4}, (_, i) =>
            d[4 * i] + ',' + d[4 * i + 1] + ',' + d[4 * i + 2])).size];
    }""")
    assert colours[:2] == [image.shape[1], image.shape[0]] and colours[2] > 2, colours
    page.fill("#opacity", "0")  # the slider: at 0 the canvas shows the image alone
    page.dispatch_event("#opacity", "input")
    grey = page.evaluate("""() => { const c = document.getElementById('view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i] !== d[i + 2]) return false;
        return true; }""")
    assert grey or image.shape[2] == 3
    assert page.get_attribute("#download", "href").startswith("blob:")
    (REPO / ".test-artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(REPO / ".test-artifacts" / "serve-page.png"))
    assert not problems, problems
    page.close()


def _replica_pid() -> int:
    from ray.util.state import list_actors

    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
             if "Segmenter" in (a.class_name or "")]
    assert len(alive) == 1, alive
    return alive[0].pid


def test_a_killed_replica_is_replaced_and_serving_resumes(service, image):
    body = _png(image[:, :, 0] if image.shape[2] == 1 else image)
    statuses: list[tuple[float, int]] = []
    killed_at: list[float] = []
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            got = requests.post(f"{service}/v1/segment", data=body, headers=AUTH, timeout=40)  # a hang fails here
            statuses.append((time.monotonic(), got.status_code))

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        time.sleep(2)
        old_pid = _replica_pid()
        os.kill(old_pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        deadline = killed_at[0] + 60
        while time.monotonic() < deadline and not any(t > killed_at[0] + 1 and s == 200 for t, s in statuses):
            time.sleep(0.2)
        done.set()
        for future in clients:
            future.result()
    after = [(t - killed_at[0], s) for t, s in statuses if t > killed_at[0]]
    # the requests the dead replica held: a 503, or retried by Serve on the new replica; never a hang or a 500
    assert {s for _, s in statuses} <= {200, 503}, statuses
    recovered = min((t for t, s in after if s == 200 and t > 1), default=None)
    assert recovered is not None and recovered < 30, after
    assert requests.post(f"{service}/v1/segment", data=body, headers=AUTH, timeout=30).status_code == 200
    assert _replica_pid() != old_pid  # answered by the replica Serve started in its place


def test_the_cli_serves_on_its_own_ray_and_stops_on_ctrl_c(ckpt, image):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the session's
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "serve", ckpt, "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("at        http://"):
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(120), "".join(lines)
        body = _png(image[:, :, 0] if image.shape[2] == 1 else image)
        got = requests.post(f"http://127.0.0.1:{port}/v1/segment?output=json", data=body, timeout=30)
        assert got.status_code == 200 and json.loads(got.text)["width"] == image.shape[1]
        rebound = requests.get(f"http://127.0.0.1:{port}/v1/model", headers={"Host": "evil.example"}, timeout=10)
        assert rebound.status_code == 403, rebound.text  # no token: a page whose name points here gets nothing
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(10)
    finally:
        proc.kill()
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert err.startswith("serving   ") and f"at        http://127.0.0.1:{port}/" in err, err  # nothing before it
    assert err.rstrip().endswith("stopped\ninterrupted"), err
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_shipping_rebuilds_the_same_predictor_in_an_actor(ray_local, ckpt, image, tmp_path):
    """What `serve`'s replicas (and the Ray Data actors) do: a checkpoint, an ensemble and an exported .onnx file,
    shipped through the object store and rebuilt in a Ray actor, predict what they predict here."""
    import ray

    from segengine.inference import export, open_predictor
    from segengine.inference.shipping import rebuild, ship

    @ray.remote(num_cpus=1)
    def masks_there(shipped, images):
        predictor = rebuild(shipped, {"amp": False, "device": "cpu", "batch_size": 2})
        return [predictor.predict_mask(i) for i in images], len(predictor.members)

    onnx = tmp_path / "model.onnx"
    export(ckpt, "onnx", str(onnx))
    other = segdata.read_image(segdata.open_dataset(segdata.resolve_data(TINY_SYNTH)).samples("val")[1].image)
    for model, members in ((ckpt, 1), (f"{ckpt},{ckpt}", 2), (str(onnx), 1)):
        here = open_predictor(model, verbose=False, amp=False, device="cpu")
        there, count = ray.get(masks_there.remote(ship(here), [image, other]))
        assert count == members, model
        for a, b in zip(there, (here.predict_mask(image), here.predict_mask(other)), strict=True):
            assert np.array_equal(a, b), model
