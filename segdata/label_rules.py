"""What label files' stored values mean, when dataset.yaml does not say: rules over the values a scan found."""

from __future__ import annotations

from dataclasses import dataclass

from segdata.meta import IGNORE, MAX_CLASSES, DataError


@dataclass(frozen=True)
class LabelValues:
    """What a scan of the label files found: pixels per stored value, their bit depth, colours of colour files."""

    counts: dict[int, int]
    files: int
    of_files: int
    bits: int
    colors: dict[int, int]  # packed 0xRRGGBB -> pixels, from colour-coded files
    example: str


@dataclass(frozen=True)
class LabelRule:
    """How the label files encode the classes, as inferred, and the note that says why."""

    label_mode: str
    classes: list[str] | None
    note: str
    threshold: int | None = None
    target_below: bool | None = None


MASK_LEVEL_GAP = 64  # two values this far apart are mask levels (0/255, 0/128), nearer ones are class ids
LOSSY_SHARE = 0.97  # lossy masks: this share of the pixels lies within a quarter of the gap of the two levels
MAX_INFERRED_CLASSES = 64  # more distinct values than this without class names are not taken for class ids


def infer_labels(found: LabelValues, *, label_mode: str | None, classes: list[str] | None,
                 ignore_index: int | None, target_below: bool | None, darker_is_object: bool, where: str
                 ) -> LabelRule:
    """The label mode (and class count) that the stored values imply; values that fit no rule are refused
    rather than read as hundreds of classes (docs/data.md, "What you have -> what to write"). 255 is a mask
    level unless `ignore_index` says it marks ignored pixels; as class ids, it is ignored by default."""
    scanned = f"{found.files} of {found.of_files} label files"
    if found.colors:
        raise _colour_labels(found)
    values = sorted(v for v in found.counts if v != ignore_index)
    total = sum(found.counts[v] for v in values)
    binary_ok = label_mode is None and (classes is None or len(classes) == 2)
    levels = sorted(sorted(values, key=found.counts.get, reverse=True)[:2])
    if binary_ok and len(levels) == 2 and levels[1] - levels[0] >= MASK_LEVEL_GAP:
        low, high = levels
        reach = (high - low) / 4
        near = sum(found.counts[v] for v in values if min(abs(v - low), abs(v - high)) <= reach) / total
        if len(values) == 2 or (found.bits == 8 and near >= LOSSY_SHARE):
            below = target_below if target_below is not None else darker_is_object
            how = (f"the labels hold only the values {low} and {high}" if len(values) == 2 else
                   f"{near:.1%} of the label pixels lie near {low} or {high}, as in lossy (JPEG) masks")
            side = (f"the darker value {low} is class 1 (as ISBI's membranes); set target_below: false if "
                    f"{high} marks your object" if below else
                    f"the brighter value {high} is class 1 (the usual mask); set target_below: true if {low} "
                    "marks your object")
            return LabelRule("threshold", classes, f"label_mode threshold: {how} ({scanned}), so they are binary "
                             f"masks, split at the midpoint {(low + high) // 2}; {side}",
                             threshold=(low + high) // 2, target_below=below)
    if label_mode is None and classes is None and found.bits == 16 and len(values) > 2:
        return LabelRule("nonzero", None, f"label_mode nonzero: 16-bit labels with {len(values)} distinct values "
                         f"({scanned}) are instance ids; any non-zero value is the object (write classes: in "
                         "dataset.yaml if they are class ids)")
    if classes is not None:
        return LabelRule("index", classes, f"label_mode index: label values are class ids ({scanned})")
    ignore_index = IGNORE if ignore_index is None else ignore_index
    values = [v for v in values if v != ignore_index]
    largest = max(values, default=0)
    if len(values) <= MAX_INFERRED_CLASSES and largest < min(MAX_CLASSES, 2 * len(values)):
        count = max(2, largest + 1)
        return LabelRule("index", [f"class{i}" for i in range(count)],
                         f"label_mode index: label values are class ids; {count} classes from the largest "
                         f"label value {largest} ({scanned}; {ignore_index} is ignored); name them with classes: "
                         "in dataset.yaml")
    raise DataError(f"{where}: the label values are neither class ids nor two mask levels ({len(values)} distinct "
                    f"values from {values[0] if values else 0} to {largest} in {scanned}, e.g. {found.example}); "
                    "say what they mean in dataset.yaml: label_mode: nonzero (any non-zero value is the object, "
                    "e.g. instance ids), label_mode: threshold with threshold: T (grey masks split at T), or "
                    "classes: [...] (class ids)")


def _colour_labels(found: LabelValues) -> DataError:
    """Colour-coded labels need their colours named: the error lists the most common ones, ready for palette:."""
    shown = ", ".join(f"[{c >> 16}, {(c >> 8) & 255}, {c & 255}]"
                      for c in sorted(found.colors, key=found.colors.get, reverse=True)[:6])
    return DataError(f"{found.example}: colour-coded labels ({len(found.colors)} colours: {shown}"
                     f"{', ...' if len(found.colors) > 6 else ''}); map each colour to its class with palette: in "
                     "dataset.yaml, e.g. palette: {background: [0, 0, 0], road: [128, 64, 128]}")
