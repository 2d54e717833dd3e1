"""The text table behind `launch.py encoders`."""

from __future__ import annotations

from ._errors import ZooError, one_line
from ._registry import (
    LIST_HINT,
    family_prefixes,
    family_source,
    get_spec,
    has_wildcards,
    is_featured,
    list_encoders,
)

DETAIL_LIMIT = 40  # beyond this, rows of non-featured family names are not built (each one builds a model)
_HEADER = ("NAME", "SOURCE", "PARAMS@2", "CHANNELS", "REDUCTIONS", "DESCRIPTION")


def _row(name: str) -> tuple[str, ...]:
    try:
        spec = get_spec(name)
        params = f"{spec.params_at(num_classes=2):,}"
    except Exception as err:  # one broken plugin encoder must not hide the others
        message = str(err) if isinstance(err, ZooError) else one_line(err)
        return (name, family_source(name) or "?", "-", "-", "-", f"unusable: {message}")
    return (name, spec.source, params, ",".join(map(str, spec.channels)), ",".join(map(str, spec.reductions)),
            spec.description)


def encoder_table(pattern: str = "*") -> str:
    """Name, source, trainable parameters at 2 classes, feature channels, reductions and description of every
    encoder matching `pattern`; a plain name that matches nothing raises UnknownEncoderError with suggestions."""
    names = list_encoders(pattern)
    if not names:
        if not has_wildcards(pattern):
            names = [get_spec(pattern).name]
        else:
            raise ZooError(f"no encoder matches '{pattern}' ({LIST_HINT})")
    detailed = len(names) <= DETAIL_LIMIT
    rows = [_HEADER] + [_row(n) if detailed or is_featured(n) else (n, family_source(n) or "", "", "", "", "")
                        for n in names]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER) - 1)]
    lines = ["  ".join([c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]]).rstrip() for r in rows]
    lines.append("")
    lines.append("PARAMS@2: trainable parameters with 2 classes and 3 input channels; CHANNELS and REDUCTIONS: the "
                 "encoder features, shallow to deep")
    if not detailed:
        prefix = next((p for p in family_prefixes() if pattern.startswith(p)), "")
        lines.append(f"{len(names)} names match: details are shown for featured ones only; narrow the pattern "
                     f"(e.g. '{prefix}res*') to see all columns")
    others = [p for p in family_prefixes() if not pattern.startswith(p)]
    if others:
        lines.append(f"plugin families, listed in full with their prefix: {', '.join(p + '*' for p in others)} "
                     f"(e.g. python launch.py encoders '{others[-1]}res*')")
    return "\n".join(lines)
