"""Turn a --data value into something every Ray worker can open on its own node.

The synthetic set is named by its parameters, not by a folder: each node regenerates it once into a local
cache (`$UNET_ZOO_CACHE`, default ~/.cache/unet-zoo) and never assumes the driver's disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from segdata import files, synth
from segdata.meta import DataError


def cache_dir() -> str:
    return os.path.abspath(os.environ.get("UNET_ZOO_CACHE") or os.path.expanduser("~/.cache/unet-zoo"))


def parse_synth_spec(spec: str) -> dict[str, int]:
    """'synth' or 'synth:seed=3,n_train=20,size=96' -> the generator's parameters (defaults filled in)."""
    params = dict(synth.DEFAULTS)
    _, _, options = spec.partition(":")
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in params or not sep:
            raise DataError(f"--data {spec!r}: expected synth:KEY=N,... with keys {', '.join(params)}; "
                            f"got {item!r}")
        try:
            params[key] = int(value)
        except ValueError:
            raise DataError(f"--data {spec!r}: {key} must be an integer, got {value!r}") from None
    return params


def is_synth(spec: str | None) -> bool:
    """Whether a --data value names the built-in synthetic set (`synth`, `synth:seed=3,...`; no --data at all)."""
    return spec is None or spec == "synth" or spec.startswith("synth:")


def resolve_data(spec: str | None) -> str:
    """None / 'synth[:...]' -> the cached synthetic set (made on first use); a path -> absolute; URIs as is."""
    if is_synth(spec):
        return _cached_synth(parse_synth_spec(spec or "synth"))
    if files.is_uri(spec):
        return spec
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isdir(path):
        raise DataError(f"dataset folder not found: {path}")
    return path


def _cached_synth(params: dict[str, int]) -> str:
    """Generate into a private temp folder and rename it into place: concurrent callers never see half a set,
    and whichever rename wins, the others drop their copy."""
    key = json.dumps({**params, "generator": synth.GENERATOR_VERSION}, sort_keys=True)
    target = os.path.join(cache_dir(), f"synth-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    if os.path.isdir(target):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=cache_dir())
    try:
        synth.generate(os.path.join(scratch, "set"), **params)
        try:
            os.rename(os.path.join(scratch, "set"), target)
        except OSError:
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
