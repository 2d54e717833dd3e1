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

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from zoo._registry import one_line, registering_as

GROUP = "unet_zoo.encoders"
NO_AUTOLOAD_ENV = "UNET_ZOO_NO_AUTOLOAD"

__all__ = ["GROUP", "NO_AUTOLOAD_ENV", "PluginError", "PluginWarning", "autoload", "load_on_worker", "load_plugins",
           "resolve_plugin_refs", "runtime_env"]


class PluginWarning(UserWarning):
    """An installed plugin could not be loaded; its encoders are missing, everything else works."""


class PluginError(RuntimeError):
    """A plugin the user named could not be loaded; one line for the CLI."""

    user_error = True


_autoloaded: list[str] | None = None
_loaded: set[str] = set()  # module names, absolute file paths and entry points imported so far


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


def _load(ref: str, source: str, load: Callable[[], object]) -> BaseException | None:
    """Import once; the error, if the plugin failed."""
    if ref in _loaded:
        return None
    try:
        with registering_as(source):
            load()
    except Exception as err:
        return err
    _loaded.add(ref)
    return None


def load_plugins(names: Sequence[str]) -> list[str]:
    """Import plugins named by module (`my_pkg.encoders`) or file (`path/to/encoders.py`); returns their names.
    Loading a name twice does nothing; one that is missing or raises is a PluginError naming it."""
    for name in names:
        if _is_file_ref(name):
            path = Path(resolve_plugin_refs([name])[0])
            err = _load(str(path), path.stem, lambda path=path: _import_file(path))
        else:
            err = _load(name, name, lambda name=name: importlib.import_module(name))
        if err is not None:
            raise PluginError(f"plugin {name!r} could not be loaded: {one_line(err)} (fix it, or drop it from "
                              "--plugin / plugins:)") from None
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


def _load_entry_point(ep: EntryPoint) -> None:
    obj = ep.load()
    if callable(obj):
        obj()


def autoload() -> list[str]:
    """Load every installed plugin (entry points in group `unet_zoo.encoders`) once; returns their names.
    Set UNET_ZOO_NO_AUTOLOAD=1 to skip this (explicitly named plugins still load)."""
    global _autoloaded
    if os.environ.get(NO_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return []
    if _autoloaded is None:
        _autoloaded = []
        for ep in entry_points(group=GROUP):
            err = _load(f"{ep.name} = {ep.value}", ep.name, lambda ep=ep: _load_entry_point(ep))
            if err is None:
                _autoloaded.append(ep.name)
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
            warnings.warn(f"installed plugin {ep.name!r} ({dist}, entry point {ep.value}) was not loaded "
                          f"({one_line(err)}); its encoders are unavailable", PluginWarning, stacklevel=2)
    return list(_autoloaded)
