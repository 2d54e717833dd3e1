"""docs/plugins.md's API reference is checked against the code: every row's name imports from the path it gives,
with exactly the documented parameters (names, keyword-only marker, which have defaults, and their values)."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
ROW = re.compile(r"^\| `(?P<name>[\w.]+)` \| `(?P<signature>\(.*?\))` \|")
KNOWN = {"TUTORIAL": "Normalization(name='tutorial'"}  # defaults written by name in the table


def rows() -> list[tuple[str, str]]:
    text = DOC.read_text().split("## API reference", 1)[1]
    return [(m["name"], m["signature"]) for line in text.splitlines() if (m := ROW.match(line))]


def documented(signature: str) -> list[tuple[str, bool, str | None]]:
    """(name, keyword-only, default source text or None) per documented parameter."""
    tree = ast.parse(f"def f{signature}: pass").body[0].args
    positional = tree.posonlyargs + tree.args
    defaults = [None] * (len(positional) - len(tree.defaults)) + [ast.unparse(d) for d in tree.defaults]
    out = [(a.arg, False, d) for a, d in zip(positional, defaults, strict=True)]
    out += [(a.arg, True, None if d is None else ast.unparse(d)) for a, d in zip(tree.kwonlyargs, tree.kw_defaults,
                                                                                strict=True)]
    if tree.kwarg:
        out.append(("**" + tree.kwarg.arg, False, None))
    return out


def test_the_reference_lists_the_names_plugins_use():
    names = {name for name, _ in rows()}
    assert {"zoo.register_encoder", "zoo.create_model", "zoo.backbones.timm_unet", "zoo.testing.check_encoder",
            "plugins.load_plugins"} <= names and len(names) == len(rows())


@pytest.mark.parametrize("name, signature", rows(), ids=[name for name, _ in rows()])
def test_each_row_matches_the_code(name, signature):
    module, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    actual = []
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            actual.append(("**" + p.name, False, None))
            continue
        default = None if p.default is p.empty else repr(p.default)
        actual.append((p.name, p.kind is p.KEYWORD_ONLY, default))
    expected = documented(signature)
    assert [a[:2] for a in actual] == [e[:2] for e in expected], f"{name}: documented {signature}"
    for (pname, _, default), (_, _, written) in zip(actual, expected, strict=True):
        assert (default is None) == (written is None), f"{name}: default of {pname}"
        if written is not None:
            assert default.startswith(KNOWN.get(written, written)), f"{name}: default of {pname}: {default}"
