"""`launch.py export`: ONNX (torch.export-based exporter, dynamic batch and H/W as multiples of the encoder's input
multiple), TorchScript (trace) or safetensors (the weights plus the manifest, for timm/smp-style code), then a
check of the exported file against PyTorch at two spatial sizes.

The ONNX file carries what `predict model.onnx` needs without the checkpoint (`OnnxPredictor`): normalisation,
classes, colours, input multiple and how the recipe validated (letterbox or sliding windows)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segengine import checkpoint as ckpt
from segengine import storage
from segengine.inference.ensemble import EnsemblePredictor, open_predictor
from segengine.inference.predictor import ONNX_METADATA_KEY, InferenceError, Predictor, is_onnx
from segengine.manifest import Manifest
from zoo._errors import one_line

EXPORT_TOLERANCE = 1e-4  # max abs logit difference allowed, times max(1, max |PyTorch logit|)
FORMATS = ("onnx", "torchscript", "safetensors")


def example_shapes(input_size: Sequence[int], multiple: int) -> list[tuple[int, int, int]]:
    """(batch, H, W) inputs for the export check: the trained size (batch 2) and another size and aspect
    (batch 1), both multiples of the encoder's input multiple."""
    h, w = int(input_size[0]), int(input_size[1])
    return [(2, h, w), (1, h + multiple, w + 2 * multiple)]


def _export_metadata(manifest: Manifest, multiple: int) -> dict[str, Any]:
    output = ("N x num_classes x H x W log of the members' mean class probabilities" if manifest.members
              else "N x num_classes x H x W logits")
    return {**manifest.export_view(), "input_multiple": multiple,
            "input": "N x in_channels x H x W float32, (pixel - mean) / std"
                     + (" after clipping pixels to [low, high]" if manifest.normalization.clip else "")
                     + ", H and W multiples of input_multiple",
            "output": output}


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str, multiple: int,
                 metadata: dict[str, Any]) -> str:
    """torch.onnx.export with the torch.export-based exporter (dynamo=True): batch free, H and W symbolic
    multiples of `multiple`. Falls back to the TorchScript-based exporter (dynamic_axes) if that fails."""
    import onnx

    dim = torch.export.Dim
    shapes = ({0: dim("batch"), 2: multiple * dim("h"), 3: multiple * dim("w")},)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8 * 2**30
    how = "torch.export (dynamo=True), dynamic batch/H/W"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), None, dynamo=True, verbose=False, input_names=["x"],
                                        output_names=["logits"], dynamic_shapes=shapes, external_data=big)
        program.save(path, external_data=big)
    except Exception as first:  # exporter errors have many types; try the older exporter before giving up
        how = "TorchScript-based exporter (dynamo=False), dynamic batch/H/W"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), path, dynamo=False, input_names=["x"], output_names=["logits"],
                                  opset_version=17, dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"},
                                                                  "logits": {0: "batch", 2: "h", 3: "w"}})
        except Exception as second:
            raise InferenceError(f"ONNX export failed: {one_line(first)} (dynamo); {one_line(second)} "
                                 "(TorchScript-based)") from None
    if not big:
        proto = onnx.load(path)
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(metadata)
        onnx.save(proto, path)
    return how


def _run_onnx(path: str) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: str, metadata: dict[str, Any]) -> str:
    """torch.jit.trace: shapes come from the input at run time (the size checks are Python and vanish)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, path, _extra_files={"unet_zoo.json": json.dumps(metadata)})
    except Exception as exc:
        raise InferenceError(f"TorchScript export failed: {one_line(exc)}") from None
    return "torch.jit.trace, dynamic batch/H/W"


def _run_torchscript(path: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).float().numpy()

    return run


def safetensors_manifest_path(path: str) -> str:
    """The manifest written beside `model.safetensors`: `model.json`."""
    stem, _ = os.path.splitext(path)
    return f"{stem}.json"


def _export_safetensors(model: torch.nn.Module, path: str, manifest: dict[str, Any]) -> str:
    """The state dict as safetensors (contiguous CPU tensors), the manifest in its header and beside it."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    text = json.dumps(manifest, indent=2)
    save_file(state, path, metadata={ONNX_METADATA_KEY: text})
    Path(safetensors_manifest_path(path)).write_text(text)
    return "state dict, manifest in the header metadata and in " + Path(safetensors_manifest_path(path)).name


def _run_safetensors(path: str) -> Any:
    """The model rebuilt the way the README tells a user: zoo.create_model from the manifest, weights loaded."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as handle:
        manifest = Manifest.from_dict(json.loads(handle.metadata()[ONNX_METADATA_KEY]))
    model = ckpt.model_from_manifest(manifest, load_file(path))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(x).float().numpy()

    return run


@dataclass
class ExportResult:
    path: str
    format: str
    method: str
    checks: list[dict[str, Any]]  # per input shape: shape, max_abs_diff, tolerance


def _write_format(fmt: str, model: torch.nn.Module, example: torch.Tensor, local: str, multiple: int,
                  predictor: Predictor) -> tuple[str, Any, list[str]]:
    """Write one format: (how, a function running the written file on an input, the files written)."""
    metadata = _export_metadata(predictor.manifest, multiple)
    if fmt == "onnx":
        return _export_onnx(model, example, local, multiple, metadata), _run_onnx(local), [local]
    if fmt == "safetensors":
        method = _export_safetensors(model, local, metadata)
        return method, _run_safetensors(local), [local, safetensors_manifest_path(local)]
    return _export_torchscript(model, example, local, metadata), _run_torchscript(local), [local]


def _check(fmt: str, model: torch.nn.Module, run: Any, x: torch.Tensor, verbose: bool) -> dict[str, Any]:
    """The written file against PyTorch on one input: shape and largest difference within the tolerance."""
    with torch.no_grad():
        reference = model(x).float().numpy()
    try:
        got = np.asarray(run(x))
    except Exception as exc:
        raise InferenceError(f"the exported {fmt} model failed on input {tuple(x.shape)}: {one_line(exc)}; it does "
                             "not accept dynamic sizes") from None
    if got.shape != reference.shape:
        raise InferenceError(f"the exported {fmt} model gave shape {got.shape} for input {tuple(x.shape)}, PyTorch "
                             f"{reference.shape}")
    diff = float(np.abs(got - reference).max())
    tolerance = EXPORT_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    if verbose:
        print(f"check {'x'.join(map(str, x.shape))}: max abs diff vs PyTorch {diff:.3g} (tolerance {tolerance:.3g})")
    if not diff <= tolerance:
        raise InferenceError(f"the exported {fmt} model differs from PyTorch by {diff:.3g} on input {tuple(x.shape)} "
                             f"(tolerance {tolerance:.3g} = {EXPORT_TOLERANCE:g} x max(1, max |logit|)); nothing was "
                             "written")
    return {"shape": list(x.shape), "max_abs_diff": diff, "tolerance": tolerance}


def export(checkpoint_path: str, fmt: str, out: str, *, plugin_refs: Sequence[str] | None = None,
           verbose: bool = True, seed: int = 0) -> ExportResult:
    """Export to ONNX, TorchScript or safetensors and check the file against PyTorch on random inputs at two
    sizes; a file that fails the check is deleted."""
    if fmt not in FORMATS:
        raise InferenceError(f"--format {fmt}: use {', '.join(FORMATS)}")
    if is_onnx(checkpoint_path):
        raise InferenceError(f"{checkpoint_path} is exported already; export from its checkpoint")
    predictor = open_predictor(checkpoint_path, plugin_refs, verbose=False, device="cpu")
    if isinstance(predictor, EnsemblePredictor):
        if fmt == "safetensors":
            raise InferenceError("safetensors holds one model's weights; export an ensemble as onnx (one graph) or "
                                 "torchscript, or its members one by one")
        model = predictor.export_module()
    else:
        model = predictor.model
    multiple = predictor.multiple
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(n, predictor.in_channels, h, w, generator=generator)
              for n, h, w in example_shapes(predictor.input_size, multiple)]
    remote = storage.is_uri(out)
    holder = tempfile.TemporaryDirectory(prefix="unet-zoo-export-") if remote else None
    local = os.path.join(holder.name, Path(out.split("?")[0]).name) if holder else os.path.abspath(out)
    try:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        method, run, written = _write_format(fmt, model, inputs[0], local, multiple, predictor)
        try:
            checks = [_check(fmt, model, run, x, verbose) for x in inputs]
        except InferenceError:
            for path in written:
                os.remove(path)
            raise
        if remote:  # where each file belongs: the model at `out`, safetensors' manifest beside it
            targets = {local: out, safetensors_manifest_path(local): safetensors_manifest_path(out)}
            for path in written:
                storage.write_bytes(targets[path], Path(path).read_bytes())
    finally:
        if holder is not None:
            holder.cleanup()
    if verbose:
        members = len(predictor.members)
        what = f"log mean probabilities of {members} members" if members > 1 else "logits"
        print(f"wrote {out} ({fmt}, {method}); input N x {predictor.in_channels} x H x W float32 normalised with "
              f"mean {predictor.mean} std {predictor.std}, H and W multiples of {multiple}; output N x "
              f"{predictor.num_classes} x H x W {what} ({', '.join(predictor.class_names)})")
    return ExportResult(out, fmt, method, checks)
