"""The shipped recipes: search files that `train --config` and `tune --config` take (each one's `train:` section is
the recipe). They are package data, so an installed `unet-zoo` finds them by name from any working directory:
`unet-zoo tune` uses `default.yaml`, `unet-zoo train --config isbi` the ISBI recipe."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT = "default.yaml"


def recipe_names() -> list[str]:
    """Names of the shipped recipes, without `.yaml`."""
    return sorted(p.name[:-5] for p in files(__name__).iterdir() if p.name.endswith(".yaml"))


def find_recipe(ref: str | None) -> str | None:
    """A config argument as a file: an existing path as given, else a shipped recipe of that name (`isbi`,
    `isbi.yaml`, `tune_configs/isbi.yaml`); None when neither exists (the caller reports the path)."""
    if ref is None:
        ref = DEFAULT
    elif Path(ref).is_file():
        return ref
    name = Path(ref).name
    name = name if name.endswith(".yaml") else f"{name}.yaml"
    shipped = files(__name__) / name
    return str(shipped) if shipped.is_file() else None
