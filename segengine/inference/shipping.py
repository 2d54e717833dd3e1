"""A predictor sent to Ray actors: its weights put in the object store once, rebuilt once in each actor.

`ship` on the driver turns a predictor (a checkpoint's model, an ensemble of them, or an exported .onnx file) into
a `ShippedPredictor`: object references to each member's weights (or to the .onnx file's bytes) and the manifests
as plain JSON values. `rebuild` in an actor (a Ray Data predictor actor, a Ray Serve replica) makes the same
predictor again without reading the checkpoint, which may not exist on that node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segengine import checkpoint as ckpt
from segengine.inference.ensemble import EnsemblePredictor
from segengine.inference.predictor import BATCH, OnnxPredictor, Predictor, resolve_device
from segengine.manifest import Decision, Manifest


@dataclass(frozen=True)
class ShippedPredictor:
    """What an actor needs to rebuild a predictor: per member (weights or .onnx bytes in the object store, its
    manifest as JSON values, its path), the ensemble's rule and folds, and the path it was opened from."""

    members: list[tuple[Any, dict[str, Any], str | None]]
    decision: dict[str, Any]
    ensemble: bool = False
    onnx: bool = False
    folds: list[list[str]] | None = None
    path: str | None = None


def ship(predictor: Predictor) -> ShippedPredictor:
    """The predictor's weights (every member's) into the object store, once."""
    import ray

    if isinstance(predictor, OnnxPredictor):
        return ShippedPredictor(members=[(ray.put(predictor.onnx_bytes), predictor.manifest.to_dict(),
                                          predictor.path)],
                                decision=predictor.decision.model_dump(), onnx=True, path=predictor.path)
    members = [(ray.put({k: v.detach().cpu() for k, v in m.model.state_dict().items()}), m.manifest.to_dict(),
                m.path) for m in predictor.members]
    return ShippedPredictor(members=members, decision=predictor.decision.model_dump(),
                            ensemble=isinstance(predictor, EnsemblePredictor), folds=getattr(predictor, "folds", None),
                            path=predictor.path)


def rebuild(shipped: ShippedPredictor, options: dict[str, Any]) -> Predictor:
    """The shipped predictor, in this actor (`options`: the predictor's amp, device, batch_size). The plugins the
    models need must be loaded first (`plugins.load_on_worker`)."""
    import ray

    def fetch(value: Any) -> Any:
        return ray.get(value) if isinstance(value, ray.ObjectRef) else value

    members = []
    for data, manifest_values, path in shipped.members:
        manifest = Manifest.from_dict(manifest_values)  # it travels as plain JSON values (mirror override kept)
        if shipped.onnx:
            cpu_only = resolve_device(options.get("device", "cpu")).type == "cpu"
            return OnnxPredictor(path or "model.onnx", manifest.inference.mirror, options.get("batch_size", BATCH),
                                 providers=("CPUExecutionProvider",) if cpu_only else None, data=fetch(data))
        member = Predictor(ckpt.model_from_manifest(manifest, fetch(data)), manifest, **options)
        member.path = path
        members.append(member)
    if shipped.ensemble:
        return EnsemblePredictor(members, Decision(**shipped.decision), path=shipped.path, folds=shipped.folds)
    return members[0]
