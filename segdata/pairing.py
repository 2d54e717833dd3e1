"""How image and label files pair by name: identical names, else with the affixes people add stripped
(`_mask`, `man_seg`, `_manual1`, ...), else with what every name of one side shares, or by dataset.yaml's `pair:`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from segdata.meta import DataError

# words that tell a label's name from its image's (`21_manual1` / `21_training`, `man_seg13`, `x_mask`)
_AFFIX_WORDS = r"masks?|labels?|gt|seg|segmentation|annotations?|anno|manual\d*|training|train|test|val|images?|img"
_KNOWN_SUFFIX = re.compile(rf"[_\-. ]?(?:{_AFFIX_WORDS})$", re.IGNORECASE)
_KNOWN_PREFIX = re.compile(rf"^(?:man_seg|{_AFFIX_WORDS})[_\-. ]?", re.IGNORECASE)
_TOKENS = re.compile(r"[A-Za-z]+|\d+|[^A-Za-z\d]+")


def natural_key(name: str) -> list[Any]:
    """Sort '2' before '10' so listings follow the order people number their files in."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class PairRule:
    """dataset.yaml's `pair:`: a regex whose first group (or whole match) is the name an image and its label share."""

    images: re.Pattern[str]
    labels: re.Pattern[str]

    def key(self, pattern: re.Pattern[str], stem: str) -> str | None:
        match = pattern.search(stem)
        return None if match is None else (match.group(1) if pattern.groups else match.group(0))


def pair_rule(value: str | dict[str, str] | None, source: str) -> PairRule | None:
    if value is None:
        return None
    given = {"images": value, "labels": value} if isinstance(value, str) else value
    try:
        return PairRule(re.compile(given["images"]), re.compile(given["labels"]))
    except re.error as exc:
        raise DataError(f"{source}: pair: not a valid regular expression ({exc})") from None


def pair_labels(images: dict[str, list[str]], labels: dict[str, list[str]], rule: PairRule | None
                ) -> tuple[dict[str, list[str]], list[str], str | None]:
    """Labels re-keyed by the image they belong to, the label files that match no image, and a note when the
    names were paired other than as identical names: by `rule`, else with the affixes people add stripped
    (`_mask`, `man_seg`, `_manual1`, ...), then with what every name of one side shares (`t` of `t013`)."""
    if rule is not None:
        strategies = [("the pair: rule", lambda stem: rule.key(rule.images, stem),
                       lambda stem: rule.key(rule.labels, stem))]
    else:
        image_common, label_common = _common_tokens(list(images)), _common_tokens(list(labels))
        strategies = [("", str, str),
                      ("names with their affixes stripped", _without_affixes, _without_affixes),
                      ("names with their affixes and shared parts stripped",
                       lambda stem: _strip_tokens(_without_affixes(stem), image_common),
                       lambda stem: _strip_tokens(_without_affixes(stem), label_common))]
    best: tuple[int, dict[str, list[str]], list[str], str] | None = None
    for how, image_key, label_key in strategies:
        by_key = _unique_keys(images, image_key)
        label_keys = _unique_keys(labels, label_key)
        if by_key is None or label_keys is None:
            continue
        paired = {by_key[k]: labels[stem] for k, stem in label_keys.items() if k in by_key}
        keyed = set(label_keys.values())
        lonely = [p for k, stem in label_keys.items() if k not in by_key for p in labels[stem]]
        lonely += [p for stem in labels if stem not in keyed for p in labels[stem]]
        if best is None or len(paired) > best[0]:
            best = (len(paired), paired, lonely, how)
        if len(paired) == len(images):
            break
    if best is None:
        return {}, [p for paths in labels.values() for p in paths], None
    _, paired, lonely, how = best
    example = next(iter(paired.items()), None)
    note = (f"{len(paired)} images paired with their labels by {how} (e.g. {os.path.basename(images[example[0]][0])}"
            f" -> {os.path.basename(example[1][0])})" if how and example else None)
    return paired, sorted(lonely, key=natural_key), note


def _unique_keys(stems: dict[str, list[str]], key: Any) -> dict[str, str] | None:
    """key -> stem, or None when two stems give one key (the strategy cannot tell them apart)."""
    out: dict[str, str] = {}
    for stem in stems:
        k = key(stem)
        if k is None:
            continue
        if k in out or not k:
            return None
        out[k] = stem
    return out


def _without_affixes(stem: str) -> str:
    """The name without the affixes people add (lower case: `IMG_3_Mask` and `img_3` are one name)."""
    bare = _KNOWN_PREFIX.sub("", _KNOWN_SUFFIX.sub("", stem))
    return (bare or stem).lower()


def _common_tokens(stems: list[str]) -> tuple[int, int]:
    """How many leading and trailing tokens (runs of letters, digits or other) every stem of a side shares."""
    if len(stems) < 2:
        return 0, 0
    tokens = [_TOKENS.findall(_without_affixes(s)) for s in stems]
    shortest = min(len(t) for t in tokens)
    lead = next((i for i in range(shortest) if len({t[i] for t in tokens}) > 1), shortest)
    trail = next((i for i in range(shortest - lead) if len({t[-1 - i] for t in tokens}) > 1), shortest - lead)
    return lead, trail


def _strip_tokens(stem: str, common: tuple[int, int]) -> str:
    tokens = _TOKENS.findall(stem)
    lead, trail = common
    kept = tokens[lead:len(tokens) - trail]
    return "".join(kept) or stem
