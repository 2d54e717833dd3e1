"""Imports point one way: no module of the project imports one that imports it back, directly or through a chain
(function-level imports included, `if TYPE_CHECKING:` ones not: they never run), and nothing imports the CLI
module. The layer rules themselves are import-linter contracts in pyproject.toml (`make lint`)."""

import ast
from pathlib import Path

from engine_helpers import REPO

PACKAGES = ("zoo", "plugins", "segdata", "segengine")


def _modules() -> dict[str, Path]:
    found = {"launch": REPO / "launch.py"}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if test is not None and "TYPE_CHECKING" in ast.unparse(test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports; `from pkg import sub` counts as importing pkg.sub when sub is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            out.update(subs or [base])
    return {m for m in out if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_and_nothing_imports_the_cli():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 40 and graph["segengine.training"] >= {"segengine.runprep", "segengine.ray_adapter"}
    assert _cycles(graph) == []
    assert [m for m, deps in graph.items() if "launch" in deps] == []


def test_the_cycle_finder_finds_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# import names of the declared dependencies whose distribution is named otherwise
IMPORT_NAMES = {"opencv-python-headless": "cv2", "pillow": "PIL", "pyyaml": "yaml",
                "segmentation-models-pytorch": "segmentation_models_pytorch", "tensorboardX": "tensorboardX"}


def test_every_third_party_package_the_code_imports_is_a_declared_dependency():
    """pyproject.toml declares what the code imports (pydantic arrived only through Ray before it was declared); the
    optional extras cover the tracking and Keras packages."""
    import re
    import sys

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    names = {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in (re.split(r"[\[<>=!~ ]", d)[0] for d in declared)}
    ours = {"launch", *PACKAGES, "tune_configs"}
    imported: dict[str, str] = {}
    for name, path in _modules().items():
        for node in _runtime_nodes(ast.parse(path.read_text())):
            roots = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for root in (r.split(".")[0] for r in roots):
                if root not in sys.stdlib_module_names and root not in ours:
                    imported.setdefault(root, name)
    missing = {root: where for root, where in imported.items() if root not in names}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
