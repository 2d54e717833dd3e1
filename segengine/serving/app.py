"""The Ray Serve application of `launch.py serve`: an HTTP ingress and a model deployment.

`Ingress` (FastAPI through `serve.ingress`, no CPU reserved) answers the API: it checks the token, reads the body
within the byte limit, refuses an image by its header before decoding it (pixels, format), decodes it with the
reader training used, and calls `Segmenter` through a deployment handle. `Segmenter` replicas (one CPU or GPU each,
`--replicas N` or `--autoscale MIN MAX`) rebuild the predictor once from the object store (`inference.shipping`, as
the Ray Data actors do) and predict with the checkpoint's inference mode, requests batched by `serve.batch`. Errors
of a request are JSON `{"error": "one line"}` with a 4xx status; a replica that died, a full queue or the timeout
are a 503, so a client retries instead of hanging. (No `from __future__ import annotations` here: FastAPI reads
the routes' annotations as types, and Serve's ingress rewrites the methods' signatures.)
"""

import asyncio
import hmac
import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException

from segdata.files import ImageTooLarge, image_from_bytes, image_size, to_channels
from segdata.meta import DataError
from segengine.inference.prediction import png_bytes, render
from segengine.inference.predictor import Predictor, npy_bytes, probabilities
from segengine.inference.shipping import ShippedPredictor, rebuild
from zoo._errors import one_line

# what /v1/segment answers; `input` is the image as the model reads it (8-bit PNG, no prediction: for the page when
# the browser cannot show the file itself, a TIFF)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OUTPUTS = ("mask", "color", "overlay", "json", "probs", "input")
MEDIA = {"mask": "image/png", "color": "image/png", "overlay": "image/png", "json": "application/json",
         "probs": "application/x-npy", "input": "image/png"}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost: body bytes, image pixels (checked from the header), seconds until a 503, and
    requests waiting for the model deployment beyond those its replicas are working on (more: a 503 at once)."""

    max_bytes: int = 32 * 2**20
    max_pixels: int = 16 * 2**20
    timeout_s: float = 60.0
    max_queued: int = 64


@dataclass(frozen=True)
class ModelInfo:
    """What `GET /v1/model` answers and the ingress decodes by: built on the driver from the predictor."""

    values: dict[str, Any]
    in_channels: int
    image_range: list[tuple[float, float]] | None
    palette: list[list[int]]

    @classmethod
    def of(cls, predictor: Predictor) -> "ModelInfo":
        manifest = predictor.manifest
        classes = [{"id": i, "name": name, "color": [int(c) for c in predictor.palette[i]]}
                   for i, name in enumerate(predictor.class_names)]
        values = {"model": predictor.path, "encoder": manifest.encoder, "classes": classes,
                  "in_channels": predictor.in_channels, "input_size": list(predictor.input_size),
                  "image_range": predictor.image_range, "inference": manifest.inference.model_dump(),
                  "decision": manifest.decision.model_dump(), "members": [m.path for m in predictor.members]
                  if len(predictor.members) > 1 else [], "metrics": manifest.metrics, "epoch": manifest.epoch}
        image_range = [tuple(r) for r in predictor.image_range] if predictor.image_range else None
        return cls(json.loads(json.dumps(values, default=str)), predictor.in_channels, image_range,
                   predictor.palette.tolist())


class RequestError(Exception):
    """A request this service refuses: its HTTP status and one line saying what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Segmenter:
    """One model replica: the predictor rebuilt once, images segmented in batches."""

    def __init__(self, shipped: ShippedPredictor, plugin_refs: list[str], options: dict[str, Any], threads: int,
                 max_batch: int) -> None:
        import torch

        import plugins

        torch.set_num_threads(threads)
        plugins.autoload()
        plugins.load_on_worker(plugin_refs)
        self.predictor = rebuild(shipped, options)
        self.segment.set_max_batch_size(max_batch)
        self.node = ray.util.get_node_ip_address()

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
    async def segment(self, jobs: list[tuple[np.ndarray, bool]]) -> list[Any]:
        """(mask, float16 probabilities if asked) per (image, want probabilities); the forward passes run in a
        thread so this replica's event loop keeps taking requests into the next batch."""
        return await asyncio.to_thread(self._segment, jobs)

    def _segment(self, jobs: list[tuple[np.ndarray, bool]]) -> list[Any]:
        """Per job its answer, or the exception its image raised (a batch that fails is retried image by image, so
        one bad image fails only its own request)."""
        try:
            scores = self.predictor.batch_scores([image for image, _ in jobs])
        except Exception:
            if len(jobs) == 1:
                raise
            return [self._one(job) for job in jobs]
        decide = self.predictor.decision.mask
        return [(decide(s), probabilities(s) if want else None) for s, (_, want) in zip(scores, jobs, strict=True)]

    def _one(self, job: tuple[np.ndarray, bool]) -> Any:
        try:
            return self._segment([job])[0]
        except Exception as exc:  # handed to its own request, which raises it
            return exc

    async def __call__(self, image: np.ndarray, want_probs: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(mask, probabilities or None, the node this replica runs on)."""
        answer = await self.segment((image, want_probs))
        if isinstance(answer, Exception):
            raise answer
        mask, probs = answer
        return mask, probs, self.node


app = FastAPI(title="unet-zoo segmentation", version="1", docs_url=None, redoc_url=None,
              description="Segment an image with the model `launch.py serve` was given. POST the image's bytes (or "
                          "a multipart form with one file) to /v1/segment.")


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    path = "".join(c if c.isprintable() else "?" for c in request.url.path)[:200]
    return _error(exc.status_code, f"{request.method} {path}: {message}", getattr(exc, "headers", None))


@app.exception_handler(RequestValidationError)
async def _bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    return _error(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")


@app.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.headers)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    """The HTTP API and the page; validates and decodes, the `Segmenter` replicas predict."""

    def __init__(self, segmenter: Any, info: ModelInfo, limits: ServeLimits, token: str | None) -> None:
        self.segmenter, self.info, self.limits, self.token = segmenter, info, limits, token
        self.page = files("segengine.serving").joinpath("page.html").read_text(encoding="utf-8")

    def _authorize(self, request: Request) -> None:
        """The token when there is one; without one (loopback), only requests addressed to a loopback name, so
        that a web page whose name was rebound to 127.0.0.1 cannot use the API from a browser."""
        if self.token is None:
            host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in LOOPBACK_NAMES:
                raise RequestError(403, f"Host {host!r}: this service answers requests to 127.0.0.1 or localhost only"
                                        " (serve with --host and --token-file to answer others)")
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise RequestError(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                               {"WWW-Authenticate": "Bearer"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers={"Content-Security-Policy": "default-src 'self' blob: data:; "
                                                "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})

    @app.get("/healthz", summary="liveness: the ingress answers")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", summary="the model: classes, colours, input channels, inference mode, metrics")
    async def model(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return self.info.values

    @app.post("/v1/segment", summary="segment one image", responses={
        200: {"description": "mask (class ids), color, overlay, input: PNG; json: size and class shares; probs: "
                             "float16 .npy of C x H x W", "content": {MEDIA[k]: {} for k in OUTPUTS}},
        400: {"description": "not an image, truncated, bad parameter"}, 401: {"description": "token"},
        413: {"description": "too many bytes or pixels"}, 422: {"description": "channels the model cannot take"},
        503: {"description": "busy, a replica lost, or the timeout: retry"}})
    async def segment(self, request: Request, output: str = "mask") -> Response:
        """The image: raw bytes (PNG, JPEG, TIFF of any depth, BMP, WebP) or a multipart form with one file."""
        self._authorize(request)
        if output not in OUTPUTS:
            raise RequestError(400, f"output={output}: use one of {', '.join(OUTPUTS)}")
        try:
            data = await asyncio.wait_for(self._read_body(request), self.limits.timeout_s)
        except TimeoutError:
            raise RequestError(408, f"the body did not arrive within {self.limits.timeout_s:g} s") from None
        image = await asyncio.to_thread(self._decode, data)
        if output == "input":  # what a person sees: grey, or the first three channels
            shown = image[:, :, 0] if image.shape[2] < 3 else np.ascontiguousarray(image[:, :, :3])
            return Response(await asyncio.to_thread(png_bytes, shown), media_type=MEDIA["input"])
        mask, probs, node = await self._predict(image, output == "probs")
        response = await asyncio.to_thread(self._encode, output, image, mask, probs, node)
        response.headers["X-Replica-Node"] = node
        return response

    async def _read_body(self, request: Request) -> bytes:
        """The image's bytes within the limit (refused by Content-Length before reading when it says more)."""
        limit = self.limits.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"{int(declared)} bytes: the limit is {limit} bytes per request")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"more than {limit} bytes: the limit is {limit} bytes per request")
            chunks.append(chunk)
        body = b"".join(chunks)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body = await self._form_file(request, body)
        if not body:
            raise RequestError(400, "empty body: send the image's bytes, or a multipart form with one file")
        return body

    @staticmethod
    async def _form_file(request: Request, body: bytes) -> bytes:
        """The one file of a multipart form (parsed by Starlette from the bytes already read)."""
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8).parse()
        except MultiPartException as exc:
            raise RequestError(400, f"multipart form: {exc.message}") from None
        uploads = [v for _, v in form.multi_items() if not isinstance(v, str)]
        if not uploads:
            raise RequestError(400, "multipart form without a file: send the image as a file field")
        try:
            return await uploads[0].read()
        finally:
            await form.close()

    def _decode(self, data: bytes) -> np.ndarray:
        """H x W x C uint8 with the model's channels; pixels counted from the header before decoding."""
        try:
            width, height = image_size(data, "image")
            if width * height > self.limits.max_pixels:
                raise RequestError(413, f"image of {width} x {height} = {width * height} pixels: the limit is "
                                        f"{self.limits.max_pixels} pixels")
            image = image_from_bytes(data, "image", self.info.image_range, untrusted=True)
        except ImageTooLarge as exc:
            raise RequestError(413, str(exc)) from None
        except DataError as exc:
            raise RequestError(400, str(exc)) from None
        except (RequestError, MemoryError):
            raise
        except Exception as exc:  # a decoder's own error on a malformed file (zlib, EXIF, ...): the file's fault
            raise RequestError(400, f"image: unreadable ({type(exc).__name__})") from None
        try:
            return to_channels(image, self.info.in_channels, "image")
        except DataError as exc:
            raise RequestError(422, str(exc)) from None

    async def _predict(self, image: np.ndarray, want_probs: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
        """The model deployment's answer, or a 503 that says why there is none (and when to retry)."""
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        retry = {"Retry-After": "1"}
        response = self.segmenter.remote(image, want_probs)
        try:
            return await asyncio.wait_for(response, self.limits.timeout_s)
        except TimeoutError:
            response.cancel()  # the replica drops it: its batch slot goes to requests still waiting
            raise RequestError(503, f"no answer from the model within {self.limits.timeout_s:g} s (busy, or a "
                                    "replica is starting): retry", retry) from None
        except BackPressureError:
            raise RequestError(503, f"busy: more than {self.limits.max_queued} requests wait for the model; retry",
                               retry) from None
        except (RayActorError, DeploymentUnavailableError):
            raise RequestError(503, "the replica serving this request was lost; Serve starts another: retry",
                               retry) from None
        except RayTaskError as exc:  # the model failed on this image: the server's fault, said in one line
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            raise RequestError(500, f"the model failed on this image: {one_line(cause)}") from None

    def _encode(self, output: str, image: np.ndarray, mask: np.ndarray, probs: np.ndarray | None,
                node: str) -> Response:
        if output == "json":
            counts = np.bincount(mask.ravel(), minlength=len(self.info.palette)) / mask.size
            shares = {c["name"]: round(float(counts[c["id"]]), 6) for c in self.info.values["classes"]}
            return JSONResponse({"width": int(mask.shape[1]), "height": int(mask.shape[0]), "class_shares": shares,
                                 "model": self.info.values["model"], "encoder": self.info.values["encoder"],
                                 "node": node})
        if output == "probs":
            return Response(npy_bytes(probs), media_type=MEDIA["probs"])
        if output == "mask":
            return Response(png_bytes(mask), media_type=MEDIA["mask"])
        rendered = render(image, mask, np.asarray(self.info.palette, np.uint8))
        return Response(png_bytes(rendered[output]), media_type=MEDIA[output])
