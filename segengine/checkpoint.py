"""Checkpoints: a folder with `state.pt` (tensors and plain containers, loadable with weights_only=True) and
`manifest.json` (what inference needs to rebuild the model, plus the resolved config).

Completeness is checked, not assumed: the manifest is written last and records the SHA-256 of `state.pt`, and local
writes go through a temporary sibling folder renamed into place. A folder missing either file, or whose state does
not match its hash, is reported as incomplete instead of being loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

import zoo
from segengine import storage
from segengine.config import ranked
from segengine.manifest import MANIFEST_VERSION, Manifest
from zoo._errors import one_line

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
PREFIX = "checkpoint_epoch_"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or cannot be rebuilt; one line for the CLI."""

    user_error = True


def dir_name(epoch: int) -> str:
    return f"{PREFIX}{epoch:04d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(directory: str | Path, state: dict[str, Any], manifest: Manifest) -> Path:
    """Write a checkpoint folder atomically: into a temporary sibling, manifest last, then rename."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        torch.save(state, tmp / STATE_FILE)
        full = manifest.model_copy(update={"manifest_version": MANIFEST_VERSION,
                                           "state_sha256": _sha256(tmp / STATE_FILE)})
        (tmp / MANIFEST_FILE).write_text(json.dumps(full.to_dict(), indent=2, sort_keys=True, default=str))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _local_copy(path: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    if not storage.is_uri(path):
        return Path(path), None
    holder = tempfile.TemporaryDirectory(prefix="unet-zoo-ckpt-")
    storage.download_dir(path, holder.name)
    return Path(holder.name), holder


def read_manifest(path: str) -> Manifest:
    target = storage.join(path, MANIFEST_FILE)
    if not storage.exists(target):
        raise CheckpointError(f"{path}: no {MANIFEST_FILE}; not a checkpoint folder, or an incomplete one")
    try:
        return Manifest.from_dict(json.loads(storage.read_text(target)))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{target}: corrupt manifest ({one_line(exc)})") from None


def load(path: str) -> tuple[dict[str, Any], Manifest]:
    """(state, manifest) of a complete checkpoint, verified against the manifest's hash."""
    path = storage.resolve(str(path))
    if not storage.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    local, holder = _local_copy(path)
    try:
        manifest = read_manifest(str(local))
        state_file = local / STATE_FILE
        if not state_file.is_file():
            raise CheckpointError(f"{path}: {STATE_FILE} is missing; the checkpoint is incomplete")
        if manifest.state_sha256 != _sha256(state_file):
            raise CheckpointError(f"{path}: {STATE_FILE} does not match its manifest (truncated or corrupt); "
                                  "use an earlier checkpoint")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's weights-only loader met a pickled object
            raise CheckpointError(f"{path}: {STATE_FILE} holds pickled Python objects besides tensors and is refused: "
                                  "loading them could run any code the file's author chose (unet-zoo checkpoints "
                                  "hold tensors and plain containers only)") from None
        except Exception as exc:  # unreadable: torch raises several types
            raise CheckpointError(f"{path}: cannot load {STATE_FILE} ({one_line(exc)})") from None
        return state, manifest
    finally:
        if holder is not None:
            holder.cleanup()


def is_complete(path: str) -> bool:
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return False
    return manifest.state_sha256 is not None and storage.exists(storage.join(path, STATE_FILE))


def list_complete(run_dir: str) -> list[str]:
    """Complete checkpoint folders of a run, oldest epoch first."""
    names = [n for n in storage.list_dirs(run_dir) if n.startswith(PREFIX)]
    return [storage.join(run_dir, n) for n in sorted(names) if is_complete(storage.join(run_dir, n))]


def _rank(path: str, metric: str, mode: str) -> float:
    return ranked(read_manifest(path).metrics.get(metric), mode)


def prune(run_dir: str, keep: int, metric: str, mode: str) -> None:
    """Keep the `keep` best checkpoints by `metric` plus the latest; delete the rest (local runs)."""
    paths = list_complete(run_dir)
    if len(paths) <= keep:
        return
    best = set(sorted(paths, key=lambda p: _rank(p, metric, mode), reverse=True)[:keep])
    for p in paths[:-1]:
        if p not in best:
            storage.delete_dir(p)


def best_path(run_dir: str, metric: str, mode: str) -> str | None:
    paths = list_complete(run_dir)
    return max(paths, key=lambda p: _rank(p, metric, mode)) if paths else None


def locate(path: str) -> str:
    """What a user may pass as a checkpoint: the folder, its `state.pt` or `manifest.json`, a run folder (its best
    checkpoint by the run's metric) or a search folder (the best trial's, from `best.json`)."""
    path = storage.resolve(str(path))
    if path.rstrip("/").rsplit("/", 1)[-1] in (STATE_FILE, MANIFEST_FILE):
        path = path.rstrip("/").rsplit("/", 1)[0]
    if storage.exists(storage.join(path, MANIFEST_FILE)):
        return path
    best_json = storage.join(path, "best.json")
    if storage.exists(best_json):
        best = json.loads(storage.read_text(best_json)).get("checkpoint")
        if best:
            return best
    config = storage.join(path, "config.yaml")
    parent_config = storage.join(path.rstrip("/").rsplit("/", 1)[0], "config.yaml")
    if not storage.exists(config) and storage.exists(parent_config) and list_complete(path):
        config = parent_config  # a fold's run folder (fold-I/ of `train --folds`): the folds run's config
    if storage.exists(config):
        import yaml

        saved = yaml.safe_load(storage.read_text(config)) or {}
        best = best_path(path, saved.get("metric", "val_miou"), saved.get("mode", "max"))
        if best:
            return best
        raise CheckpointError(f"{path}: a run folder without a complete checkpoint yet")
    if not storage.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path}: not a checkpoint (a folder with {MANIFEST_FILE}), its {STATE_FILE}, a run folder "
                          "or a search folder")


def build_model(path: str, plugin_refs: list[str] | None = None):
    """Rebuild the trained model from a checkpoint alone: (model in eval mode, manifest).

    Plugins are loaded from the environment (entry points) and from `plugin_refs` the user names; nothing is
    imported because a checkpoint says so. An encoder from a plugin that is not loaded gives an error naming it.
    """
    import plugins

    state, manifest = load(path)
    plugins.autoload()
    plugins.load_plugins(plugin_refs or [])
    encoder = manifest.encoder
    try:
        return model_from_manifest(manifest, state["model"]), manifest
    except zoo.UnknownEncoderError:
        origin = manifest.encoder_source
        named = manifest.plugins
        hint = (plugins.install_hint(origin) if origin
                else f"it came from plugin(s) {', '.join(named)}: pass --plugin for them" if named
                else "install the plugin that registers it")  # checkpoints from before encoder_source
        raise CheckpointError(f"{path}: encoder '{encoder}' is not registered here; {hint}") from None


def model_from_manifest(manifest: Manifest, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The model a manifest describes, built by the zoo with `weights` (its state dict) loaded, in eval mode: the
    one way a checkpoint, a Ray Data actor and an exported safetensors file become a model again."""
    model = zoo.create_model(manifest.encoder, manifest.num_classes, in_channels=manifest.in_channels,
                             **manifest.model_kwargs)
    model.load_state_dict(weights)
    return model.eval()
