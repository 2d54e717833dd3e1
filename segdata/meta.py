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
MAX_LABEL_VALUE = 65535  # label files hold 8- or 16-bit values
MAX_CHANNELS = 16  # image channels: grey, RGB, multi-channel microscopy or multispectral tiles
# how label files encode classes (one spelling, everywhere): class ids; a grey level splitting two classes; any
# non-zero value is the object (instance labels); colours mapped by a palette
LabelMode = Literal["index", "threshold", "nonzero", "color"]
LABEL_MODES: tuple[str, ...] = LabelMode.__args__
BINARY_MODES = ("threshold", "nonzero")


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
    palette: list[tuple[int, int, int, int]] = field(default_factory=list)  # color mode: (R, G, B, class id)
    image_bits: int = 8  # of the stored image values (8, 16, 32)
    image_range: list[tuple[float, float]] | None = None  # per channel, mapped onto 0..255 when deeper than 8 bits

    def __post_init__(self) -> None:
        self.classes = [str(name) for name in self.classes]
        if not 1 <= len(self.classes) <= MAX_CLASSES:
            raise DataError(f"{len(self.classes)} classes: between 1 and {MAX_CLASSES} are supported")
        if self.label_mode not in LABEL_MODES:
            raise DataError(f"label_mode {self.label_mode!r}: use one of {', '.join(LABEL_MODES)}")
        if self.label_mode in BINARY_MODES and len(self.classes) != 2:
            raise DataError(f"{self.label_mode} mode makes binary masks: it needs 2 classes, got {self.classes}")
        self.palette = [tuple(int(v) for v in entry) for entry in self.palette]
        if self.label_mode == "color" and not self.palette:
            raise DataError("label_mode color needs a palette: (colour -> class) in dataset.yaml")
        if not 1 <= self.in_channels <= MAX_CHANNELS:
            raise DataError(f"in_channels {self.in_channels}: images have 1 to {MAX_CHANNELS} channels")
        if self.image_range is not None:
            self.image_range = [(float(low), float(high)) for low, high in self.image_range]
        self.colors = ([tuple(int(v) for v in color) for color in self.colors]
                       or default_palette(self.num_classes))
        if len(self.colors) < self.num_classes:
            raise DataError(f"colors has {len(self.colors)} entries for {self.num_classes} classes: give one "
                            "[R, G, B] per class")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_lut(self) -> np.ndarray:
        """256-entry table from 8-bit label values to class ids / IGNORE: for 8-bit files a label mode is one
        lookup."""
        return self._class_ids(np.arange(256))

    def to_class_ids(self, raw: np.ndarray, source: str) -> np.ndarray:
        """Stored label values (H x W integers of 8 or 16 bits, H x W x 3 colours in color mode) as an H x W uint8
        map of class ids with IGNORE: everything downstream sees this one encoding."""
        if self.label_mode == "color":
            if raw.ndim != 3:
                raise DataError(f"{source}: a grey label image, but label_mode is color; remove palette: from "
                                "dataset.yaml or give colour label images")
            known, ids = self._palette_table()
            packed = pack_colors(raw)
            at = np.minimum(np.searchsorted(known, packed), len(known) - 1)
            return np.where(known[at] == packed, ids[at], IGNORE).astype(np.uint8)
        if raw.ndim == 3:
            raise DataError(f"{source}: a colour label image; map its colours to classes with palette: in "
                            "dataset.yaml (docs/data.md)")
        if raw.dtype == np.uint8:
            return self.label_lut()[raw]
        return self._class_ids(raw)

    def unknown_values(self, raw: np.ndarray) -> list[str]:
        """The stored values (or colours) that no class stands for and that are not marked ignored."""
        if self.label_mode == "color":
            known, _ = self._palette_table()
            found = np.unique(pack_colors(raw))
            return [f"#{v:06x}" for v in found[~np.isin(found, known)]]
        if self.label_mode != "index":
            return []
        found = np.unique(raw)
        return [str(v) for v in found[(found >= self.num_classes) & (found != self.ignore_index)]]

    def _class_ids(self, values: np.ndarray) -> np.ndarray:
        if self.label_mode == "threshold":
            target = values <= self.threshold if self.target_below else values > self.threshold
            return target.astype(np.uint8)
        if self.label_mode == "nonzero":
            return (values != 0).astype(np.uint8)
        ids = np.where((values < self.num_classes) & (values != self.ignore_index), values, IGNORE)
        return ids.astype(np.uint8)

    def _palette_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Packed colours, sorted, and their class ids: a colour lookup is one binary search."""
        packed = np.array([(r << 16) | (g << 8) | b for r, g, b, _ in self.palette], dtype=np.int64)
        order = np.argsort(packed)
        return packed[order], np.array([c for *_, c in self.palette], dtype=np.int64)[order]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["colors"] = [list(color) for color in self.colors]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetMeta:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def pack_colors(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 colours as H x W integers 0xRRGGBB: a colour is one value to count, sort and look up."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


Level = Annotated[StrictInt, Field(ge=0, le=255)]
Color = Annotated[list[Level], Field(min_length=3, max_length=3)]
Folder = Annotated[StrictStr, Field(min_length=1)]


class _ImagesAndLabels(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    images: StrictStr
    labels: StrictStr


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
    threshold: _key(f"an integer label value from 0 to {MAX_LABEL_VALUE - 1}", StrictInt, ge=0,
                    le=MAX_LABEL_VALUE - 1) = None
    target_below: _key("true or false", StrictBool) = None
    ignore_index: _key("an integer from 0 to 255", Level) = None
    colors: _key("a list of [R, G, B] triples (0..255)", list[Color]) = None
    palette: _key("a mapping of class name (or ignore) to its label colour [R, G, B] or a list of them",
                  dict[StrictStr, Color | list[Color]], min_length=1) = None
    pair: _key("a regular expression whose first group is the name an image and its label share (or images: and "
               "labels: regexes)", StrictStr | _ImagesAndLabels) = None
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


def palette_classes(palette: dict[str, Any], classes: list[str] | None, source: str
                    ) -> tuple[list[str], list[tuple[int, int, int, int]]]:
    """dataset.yaml's `palette:` as class names and (R, G, B, class id) rows; `ignore` marks colours to skip."""
    names = list(classes) if classes is not None else [n for n in palette if n != "ignore"]
    rows: dict[tuple[int, ...], str] = {}
    for name, value in palette.items():
        if name != "ignore" and name not in names:
            raise DataError(f"{source}: palette: {name!r} is not one of the classes ({', '.join(names)})")
        for color in value if isinstance(value[0], list) else [value]:
            if tuple(color) in rows:
                raise DataError(f"{source}: palette: colour {color} is given to both {rows[tuple(color)]!r} and "
                                f"{name!r}")
            rows[tuple(color)] = name
    entries = [(*color, IGNORE if name == "ignore" else names.index(name)) for color, name in rows.items()]
    return names, entries


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
