"""A trained model rebuilt from its checkpoint alone, with the preprocessing validation used.

Everything in `segengine.inference` starts here: `checkpoint.build_model` (weights loaded with
`torch.load(weights_only=True)`, plugins only from the environment and --plugin), then either the letterbox of
`segdata.EvalTransform` (predictions mapped back through `Letterbox.invert`) or sliding windows at native resolution
(`segengine.windows`), as the checkpoint's manifest says its recipe validated.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import segdata
from segdata.files import to_channels
from segengine import checkpoint as ckpt
from segengine import storage
from segengine.manifest import Manifest
from segengine.precision import Precision
from segengine.windows import mirrored_probabilities, sliding_probabilities
from zoo._errors import one_line

BATCH = 8  # default letterboxed images or windows per forward pass (--batch-size)
ONNX_METADATA_KEY = "unet_zoo"  # metadata_props entry `export` writes into an .onnx file


class InferenceError(RuntimeError):
    """A request evaluate/predict/export cannot honour; one line for the CLI."""

    user_error = True


def resolve_device(name: str | torch.device) -> torch.device:
    """--device auto (CUDA when this machine has it, else the CPU), cpu, cuda or cuda:N."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InferenceError(f"--device {name}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"--device {name}: torch sees no CUDA device on this machine; use --device auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise InferenceError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    return device


class Predictor:
    """A model in eval mode on one device plus what its manifest says about inputs and outputs."""

    def __init__(self, model: torch.nn.Module, manifest: Manifest, amp: bool = True,
                 mirror: bool | None = None, device: str | torch.device = "cpu", batch_size: int = BATCH) -> None:
        """`amp`: bf16/fp16 autocast where `device` computes it natively (`segengine.precision`), else fp32.
        `mirror` overrides the recipe's test-time flips (None: as the manifest says); the override is kept in
        `manifest` so that copies of the predictor (the Ray Data actors of --workers) do the same."""
        self.device = resolve_device(device)
        self.amp = amp
        self.precision = Precision(self.device, amp)
        self.model: torch.nn.Module | None = self.precision.model(model.eval().to(self.device))
        self._describe(manifest, mirror, int(getattr(getattr(model, "spec", None), "input_multiple", 1)), batch_size)

    def _describe(self, manifest: Manifest, mirror: bool | None, multiple: int, batch_size: int) -> None:
        """Inputs, outputs and inference mode from a checkpoint manifest (or an exported file's metadata)."""
        if batch_size < 1:
            raise InferenceError(f"--batch-size {batch_size}: use 1 or more images or windows per forward pass")
        self.batch_size = batch_size
        mode = manifest.inference
        if mode.window is None:
            mode = mode.model_copy(update={"window": manifest.input_size})
        if mirror is not None:
            mode = mode.model_copy(update={"mirror": mirror})
        self.manifest = manifest.model_copy(update={"inference": mode})
        self.inference = mode
        self.decision = manifest.decision
        self.path: str | None = None  # the checkpoint folder or exported file, when built from one
        self.num_classes = manifest.num_classes
        self.class_names = manifest.class_names
        self.in_channels = manifest.in_channels
        self.image_range = manifest.dataset.image_range  # deeper-than-8-bit inputs map from it as in training
        self.input_size = manifest.input_size
        norm = manifest.normalization
        self.mean, self.std = list(norm.mean), list(norm.std)
        self.palette = np.asarray(manifest.colors[: self.num_classes], np.uint8).reshape(self.num_classes, 3)
        self.multiple = multiple
        self.transform = segdata.EvalTransform(self.input_size, self.mean, self.std, norm.clip)
        self.native = segdata.NativeTransform(self.mean, self.std, norm.clip)
        self.pad_value = segdata.normalised_grey(self.mean, self.std, norm.clip)

    @classmethod
    def from_checkpoint(cls, path: str, plugin_refs: Sequence[str] | None = None, verbose: bool = True,
                        mirror: bool | None = None, **options: Any) -> Predictor:
        """From a checkpoint folder, its state.pt, or a run/search folder (its best checkpoint, printed);
        `options` are the constructor's (amp, device, batch_size)."""
        found = ckpt.locate(path)
        if verbose and found.rstrip("/") != storage.resolve(str(path)).rstrip("/"):
            print(f"checkpoint {found}", file=sys.stderr)
        model, manifest = ckpt.build_model(found, list(plugin_refs or []))
        predictor = cls(model, manifest, mirror=mirror, **options)
        predictor.path = found
        return predictor

    @property
    def description(self) -> str:
        """Where and how the forward passes run, for the CLI's first line."""
        return f"{self.device.type}, {self.precision.name}, batch {self.batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits of a batch on this predictor's device, in its precision (`segengine.precision`)."""
        return self.precision.forward(self.model, x.to(self.device, non_blocking=True))

    def read(self, path: str) -> np.ndarray:
        """An input image as the model's training read its images: H x W x C uint8 with the model's channels (an
        image that cannot become them is refused naming the file)."""
        return self.channels(segdata.read_image(path, self.image_range), path)

    def channels(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """H x W x C uint8 with the channels the model was trained on (grey <-> RGB as training did)."""
        return to_channels(image, self.in_channels, source)

    @torch.no_grad()
    def letterbox_logits(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image: C x H x W float32 logits at the image's original size (letterbox in, inverse out); with the
        recipe's or --tta's flips, the log of the softmax averaged over the four flips."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            xs, boxes = [], []
            for image in images[start:start + self.batch_size]:
                x, _, box = self.transform(self.channels(image))
                xs.append(x)
                boxes.append(box)
            batch = torch.from_numpy(np.stack(xs))
            if self.inference.mirror:  # log of the flip-averaged softmax: logits of the same argmax and softmax
                logits = torch.log(mirrored_probabilities(self.forward, batch, True).clamp_min(1e-8)).cpu().numpy()
            else:
                logits = self.forward(batch).cpu().numpy()
            out.extend(box.invert(lg) for lg, box in zip(logits, boxes, strict=True))
        return out

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        x, _, _ = self.native(self.channels(image))
        return x

    def uses_sliding(self, sliding: bool | None) -> bool:
        """--sliding / --no-sliding, else what the checkpoint's recipe validated with."""
        return self.inference.sliding if sliding is None else sliding

    @torch.no_grad()
    def sliding_probabilities(self, image: np.ndarray, overlap: float | None = None) -> np.ndarray:
        """C x H x W class probabilities from sliding windows at the image's own resolution (`segengine.windows`;
        the window and mirroring are the ones the recipe validated with, else the input size, no flips)."""
        overlap = self.inference.overlap if overlap is None else overlap  # a bad one: ValueError from the windows
        x = torch.from_numpy(self._normalise(image)).to(self.device)
        probs = sliding_probabilities(self.forward, x, self.inference.window, overlap, self.num_classes,
                                      self.pad_value, batch=self.batch_size, mirror=self.inference.mirror,
                                      resample=self.inference.resample)
        return probs.cpu().numpy()

    def batch_scores(self, images: Sequence[np.ndarray], *, sliding: bool | None = None,
                     overlap: float | None = None) -> list[np.ndarray]:
        """Per image: C x H x W scores at its original size (log-probabilities for windows, logits for letterbox);
        letterboxed images share forward passes, windows are batched within each image."""
        if self.uses_sliding(sliding):
            return [np.log(np.maximum(self.sliding_probabilities(image, overlap), 1e-8)) for image in images]
        return self.letterbox_logits(images)

    def scores(self, image: np.ndarray, *, sliding: bool | None = None, overlap: float | None = None) -> np.ndarray:
        """`batch_scores` of one image."""
        return self.batch_scores([image], sliding=sliding, overlap=overlap)[0]

    def predict_mask(self, image: np.ndarray, *, sliding: bool | None = None, overlap: float | None = None
                     ) -> np.ndarray:
        """H x W uint8 class ids at the image's original size, by the manifest's decision rule."""
        return self.decision.mask(self.scores(image, sliding=sliding, overlap=overlap))

    @property
    def members(self) -> list[Predictor]:
        """The models whose probabilities this predictor averages: itself (an ensemble: its members)."""
        return [self]


class OnnxPredictor(Predictor):
    """An exported .onnx file run by onnxruntime with the metadata `export` embedded (normalisation, classes,
    colours, input multiple, inference mode): no checkpoint, plugin or model code needed."""

    def __init__(self, path: str, mirror: bool | None = None, batch_size: int = BATCH,
                 providers: Sequence[str] | None = None, data: bytes | None = None) -> None:
        """`data`: the file's bytes when they were read elsewhere (a Ray actor given them by `shipping`)."""
        import onnx
        import onnxruntime as ort

        try:
            data = storage.read_bytes(path) if data is None else data
            proto = onnx.load_model_from_string(data)
        except Exception as exc:  # missing file, not an ONNX protobuf: many types, one line for the CLI
            raise InferenceError(f"{path}: cannot read an ONNX model ({one_line(exc)})") from None
        props = {entry.key: entry.value for entry in proto.metadata_props}
        if ONNX_METADATA_KEY not in props:
            raise InferenceError(f"{path}: no '{ONNX_METADATA_KEY}' metadata (not written by `launch.py export`, or "
                                 "a model over 1.8 GiB exported with external data); predict from its checkpoint")
        metadata = json.loads(props[ONNX_METADATA_KEY])
        manifest = Manifest.from_dict(metadata)
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ("CUDAExecutionProvider", "CPUExecutionProvider")) if p in available]
        self.session = ort.InferenceSession(data, providers=chosen or ["CPUExecutionProvider"])
        self.onnx_bytes = data
        self.input_name = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")  # inputs and outputs cross as numpy; onnxruntime places the compute
        self.amp = False
        self.precision = Precision(self.device, amp=False)
        self.model = None
        self._describe(manifest, mirror, int(metadata.get("input_multiple", 1)), batch_size)
        self.path = path

    @property
    def description(self) -> str:
        return f"onnxruntime {self.session.get_providers()[0]}, batch {self.batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.float().contiguous().cpu().numpy()})[0])


def is_onnx(path: str) -> bool:
    return path.split("?")[0].lower().endswith(".onnx")


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr, disable=not enabled or total < 2,
                dynamic_ncols=True, leave=False)


def softmax(scores: np.ndarray) -> np.ndarray:
    """C x H x W float32 class probabilities of logits or log-probabilities."""
    shifted = np.exp(scores - scores.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """C x H x W float16 class probabilities (softmax over the classes) of logits or log-probabilities: what the
    mask is decided from; float16 keeps a 1024 x 1024 image with 2 classes at 4 MiB."""
    return softmax(scores).astype(np.float16)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
