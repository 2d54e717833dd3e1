"""Plugin discovery: entry points of installed distributions, and modules or files the user names.

A plugin is a module whose import registers encoders with `zoo.register_encoder` / `zoo.register_family`
(an entry point may also name a callable, which is called). Plugins are code, so only what the user installed
(entry points in group `unet_zoo.encoders`) or named (`--plugin`, `plugins:` in a config) is imported: nothing
is ever imported from a dataset folder or a checkpoint. A plugin the user names that is missing or raises is an
error (`PluginError`, one line naming it); an installed one that fails gives a one-line PluginWarning naming its
distribution, and everything else keeps working. Shipping is Ray's: `runtime_env(refs)` is the job's
`py_modules` entry for plugin files, so a worker on any node imports exactly what the driver imported
(`load_on_worker`); module names must be importable there (installed, or in the job's working directory).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from zoo._errors import one_line
from zoo._registry import registering_as

GROUP = "unet_zoo.encoders"
NO_AUTOLOAD_ENV = "UNET_ZOO_NO_AUTOLOAD"
TRACEBACK_ENV = "UNET_ZOO_PLUGIN_TRACEBACK"  # =1: a plugin that fails to import prints its full traceback

__all__ = ["GROUP", "NO_AUTOLOAD_ENV", "PluginError", "PluginWarning", "autoload", "install_hint", "load_on_worker",
           "load_plugins", "provenance", "resolve_plugin_refs", "runtime_env"]


class PluginWarning(UserWarning):
    """An installed plugin could not be loaded; its encoders are missing, everything else works."""


class PluginError(RuntimeError):
    """A plugin the user named could not be loaded; one line for the CLI."""

    user_error = True


_autoloaded: list[str] | None = None
_loaded: set[str] = set()  # module names, absolute file paths and entry points imported so far
_origins: dict[str, dict[str, str]] = {}  # registration source -> where its code came from (see provenance)


def _is_file_ref(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or os.sep in ref


def resolve_plugin_refs(names: Sequence[str]) -> list[str]:
    """File paths made absolute (so that remote workers find them from any working directory); module names
    stay as they are."""
    return [str(Path(n).expanduser().absolute()) if _is_file_ref(n) else n for n in names]


def _import_file(path: Path) -> None:
    """Import a .py file under a module name derived from its absolute path, the same on every worker."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"unet_zoo_plugin_{path.stem.replace('-', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def _load(ref: str, source: str, load: Callable[[], object], origin: Callable[[], dict[str, str]]
          ) -> BaseException | None:
    """Import once, remembering where the code came from; the error, if the plugin failed."""
    if ref in _loaded:
        return None
    try:
        with registering_as(source):
            load()
    except Exception as err:
        if _enabled(TRACEBACK_ENV):
            traceback.print_exception(err, file=sys.stderr)
        return err
    _loaded.add(ref)
    _origins[source] = origin()
    return None


def _enabled(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no")


def _failure(err: BaseException) -> str:
    """One line: the exception and, unless its message already says, the file and line of the failing
    statement (the innermost frame outside the import machinery)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith("<frozen") and "importlib" not in f.filename]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames and not isinstance(err, SyntaxError) else ""
    return f"{one_line(err)}{where}"


def _file_origin(path: Path) -> dict[str, str]:
    return {"kind": "file", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution once


def _module_origin(module: str) -> dict[str, str]:
    """The distribution that installs `module`'s top-level package, with its version, when there is one."""
    dists = _distributions().get(module.split(".")[0]) or []
    if not dists:
        return {"kind": "module", "module": module}
    return {"kind": "module", "module": module, "distribution": dists[0], "version": metadata.version(dists[0])}


def provenance(source: str) -> dict[str, str]:
    """Where the encoders registered under `source` (their spec's `source`) came from, for checkpoint manifests:
    built-in, a plugin file (path and SHA-256), or a module / entry point (distribution and version)."""
    if source == "built-in":
        return {"kind": "built-in"}
    return dict(_origins.get(source) or _module_origin(source))


def install_hint(origin: dict[str, str]) -> str:
    """How to get an encoder of this provenance on another machine."""
    if origin.get("kind") == "file":
        return f"load its plugin file with --plugin {origin['path']} (sha256 {origin['sha256'][:12]}...)"
    if origin.get("distribution"):
        return f"install its plugin: pip install {origin['distribution']}=={origin['version']}"
    if origin.get("module"):
        return f"load its plugin module with --plugin {origin['module']}"
    return "install the plugin that registers it"


def load_plugins(names: Sequence[str]) -> list[str]:
    """Import plugins named by module (`my_pkg.encoders`) or file (`path/to/encoders.py`); returns their names.
    Loading a name twice does nothing; one that is missing or raises is a PluginError naming it."""
    for name in names:
        if _is_file_ref(name):
            path = Path(resolve_plugin_refs([name])[0])
            err = _load(str(path), path.stem, lambda path=path: _import_file(path),
                        lambda path=path: _file_origin(path))
        else:
            err = _load(name, name, lambda name=name: importlib.import_module(name),
                        lambda name=name: _module_origin(name))
        if err is not None:
            raise PluginError(f"plugin {name!r} could not be loaded: {_failure(err)} (fix it, or drop it from "
                              f"--plugin / plugins:; {TRACEBACK_ENV}=1 prints the traceback)") from None
    return list(names)


def runtime_env(refs: Sequence[str]) -> dict[str, list[str]]:
    """The Ray runtime_env entry that ships plugin files to every node of the job (Ray uploads each file once and
    puts it on the workers' import path); module names travel as names."""
    files = [str(Path(r).expanduser().absolute()) for r in refs if _is_file_ref(r)]
    return {"py_modules": files} if files else {}


def load_on_worker(refs: Sequence[str]) -> list[str]:
    """On a Ray worker: a plugin file present at the driver's path (the same machine) is imported from there,
    elsewhere it arrived through `runtime_env` and is imported by its module name."""
    return load_plugins([r if not _is_file_ref(r) or Path(r).is_file() else Path(r).stem for r in refs])


def _entry_point_origin(ep: EntryPoint) -> dict[str, str]:
    dist = getattr(ep, "dist", None)
    origin = {"kind": "entry point", "entry_point": f"{ep.name} = {ep.value}"}
    if dist is not None:
        origin.update(distribution=dist.name, version=dist.version)
    return origin


def _load_entry_point(ep: EntryPoint) -> None:
    obj = ep.load()
    if callable(obj):
        obj()


def autoload() -> list[str]:
    """Load every installed plugin (entry points in group `unet_zoo.encoders`) once; returns their names.
    Set UNET_ZOO_NO_AUTOLOAD=1 to skip this (explicitly named plugins still load)."""
    global _autoloaded
    if _enabled(NO_AUTOLOAD_ENV):
        return []
    if _autoloaded is None:
        _autoloaded = []
        for ep in entry_points(group=GROUP):
            err = _load(f"{ep.name} = {ep.value}", ep.name, lambda ep=ep: _load_entry_point(ep),
                        lambda ep=ep: _entry_point_origin(ep))
            if err is None:
                _autoloaded.append(ep.name)
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
            warnings.warn(f"installed plugin {ep.name!r} ({dist}, entry point {ep.value}) was not loaded "
                          f"({_failure(err)}); its encoders are unavailable", PluginWarning, stacklevel=2)
    return list(_autoloaded)
