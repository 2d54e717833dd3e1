"""Dataset metadata: the label encoding, `dataset.yaml` parsing and the error type shown to users.

After the label mode is applied every label is a uint8 map of class ids with `IGNORE` for pixels that losses
and metrics skip, so everything downstream (transforms, engine, metrics) handles one encoding only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

IGNORE = 255
MAX_CLASSES = 255  # class ids 0..254; 255 is IGNORE
LabelMode = Literal["index", "threshold"]
LABEL_MODES: tuple[str, ...] = LabelMode.__args__  # how label files encode classes: one spelling, everywhere


class DataError(ValueError):
    """A problem with the user's data or data options; launch.py prints it as one line, no traceback."""

    user_error = True


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: VOC colours match and other sets get distinct colours without a config."""
    ids = np.arange(num_classes)
    rgb = np.zeros((num_classes, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return [tuple(int(v) for v in row) for row in rgb]


@dataclass
class DatasetMeta:
    """What a dataset's labels mean; stored in checkpoint manifests so predictions can be decoded later."""

    root: str
    classes: list[str]
    label_mode: str = "index"
    threshold: int = 127
    target_below: bool = True
    ignore_index: int = IGNORE
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    in_channels: int = 3
    inferred: list[str] = field(default_factory=list)
    layout: str = "tutorial"

    def __post_init__(self) -> None:
        self.classes = [str(name) for name in self.classes]
        if not 1 <= len(self.classes) <= MAX_CLASSES:
            raise DataError(f"{len(self.classes)} classes: between 1 and {MAX_CLASSES} are supported")
        if self.label_mode not in LABEL_MODES:
            raise DataError(f"label_mode {self.label_mode!r}: use one of {', '.join(LABEL_MODES)}")
        if self.label_mode == "threshold" and len(self.classes) != 2:
            raise DataError(f"threshold mode makes binary masks: it needs 2 classes, got {self.classes}")
        if self.in_channels not in (1, 3):
            raise DataError(f"in_channels {self.in_channels}: images must be grey (1) or RGB (3)")
        self.colors = ([tuple(int(v) for v in color) for color in self.colors]
                       or default_palette(self.num_classes))
        if len(self.colors) < self.num_classes:
            raise DataError(f"colors has {len(self.colors)} entries for {self.num_classes} classes: give one "
                            "[R, G, B] per class")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_lut(self) -> np.ndarray:
        """256-entry table from raw label values to class ids / IGNORE: a label mode is one lookup."""
        values = np.arange(256)
        if self.label_mode == "threshold":
            target = values <= self.threshold if self.target_below else values > self.threshold
            return target.astype(np.uint8)
        lut = np.full(256, IGNORE, dtype=np.uint8)
        lut[: self.num_classes] = values[: self.num_classes]
        lut[self.ignore_index] = IGNORE
        return lut

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["colors"] = [list(color) for color in self.colors]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetMeta:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


Level = Annotated[StrictInt, Field(ge=0, le=255)]
Folder = Annotated[StrictStr, Field(min_length=1)]


def _key(what: str, kind: Any, **bounds: Any) -> Any:
    """A dataset.yaml key's type: its rule (pydantic) and, in the same place, the words an error shows."""
    return Annotated[kind, Field(description=what, **bounds)] | None


class DatasetYaml(BaseModel):
    """The schema of dataset.yaml (strict: no strings for numbers, no numbers for names); each key's description is
    what its error message says it takes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    classes: _key(f"a list of 1 to {MAX_CLASSES} class names", list[StrictStr | StrictInt], min_length=1,
                  max_length=MAX_CLASSES) = None
    num_classes: _key(f"an integer from 1 to {MAX_CLASSES}", StrictInt, ge=1, le=MAX_CLASSES) = None
    label_mode: _key(" or ".join(LABEL_MODES), LabelMode) = None
    threshold: _key("an integer grey level from 0 to 254", StrictInt, ge=0, le=254) = None
    target_below: _key("true or false", StrictBool) = None
    ignore_index: _key("an integer from 0 to 255", Level) = None
    colors: _key("a list of [R, G, B] triples (0..255)",
                 list[Annotated[list[Level], Field(min_length=3, max_length=3)]]) = None
    images: _key("a folder name relative to the dataset", Folder) = None
    labels: _key("a folder name relative to the dataset", Folder) = None


YAML_KEYS = tuple(DatasetYaml.model_fields)


def parse_dataset_yaml(text: str, source: str) -> dict[str, Any]:
    """Validate a dataset.yaml; every message names the file and the key so the fix is obvious."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{source}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a mapping of keys ({', '.join(YAML_KEYS)})")
    for key in data:
        if key not in YAML_KEYS:
            raise DataError(f"{source}: unknown key {key!r}; allowed keys: {', '.join(YAML_KEYS)}")

    try:
        DatasetYaml(**data)
    except ValidationError as exc:
        key = str(exc.errors()[0]["loc"][0])
        raise DataError(f"{source}: {key}: expected {_description(key)}, got {data[key]!r}") from None
    if "classes" in data and "num_classes" in data and len(data["classes"]) != data["num_classes"]:
        raise DataError(f"{source}: num_classes is {data['num_classes']} but classes lists "
                        f"{len(data['classes'])} names; keep one of the two keys")
    return data


def _description(key: str) -> str:
    """The words declared on a dataset.yaml key's type (`_key`)."""
    hint = DatasetYaml.model_fields[key].annotation
    for arg in get_args(hint) or (hint,):
        for extra in get_args(arg)[1:]:
            if getattr(extra, "description", None):
                return extra.description
    return key


def membrane_dataset_yaml(title: str) -> str:
    """dataset.yaml of a binary membrane set in the ISBI convention (label 0 = membrane)."""
    return (f"# {title}: label 0 = membrane (class 1), 255 = cell interior (class 0)\n"
            "classes: [background, membrane]\nlabel_mode: threshold\nthreshold: 127\ntarget_below: true\n"
            "colors: [[0, 0, 0], [255, 0, 0]]\n")
