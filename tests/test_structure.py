"""The package's structure: no import cycles among its modules, no source file over the size limit.

The import graph is read from the source (``ast``), not from ``sys.modules``: every ``import`` and
``from ... import`` counts, at module level and inside functions alike (a deferred import is still a
dependency, only a later one), relative imports resolved, and ``from . import x`` meaning the
submodule ``x`` when there is one. A package's ``__init__`` is a module like any other: the lazy API
functions of ``resnet_spec/__init__.py`` (``build``, ``load_weights``...) are edges from
``resnet_spec`` to what they import, so nothing below may import ``resnet_spec`` itself. Imports by
computed name (``importlib.import_module(f"...{name}")``) cannot be read statically and are not
counted.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Installed package name -> folder in the repository (pyproject's ``package-dir``); subpackages are
#: found below each folder (``backends/onnx/graph.py`` is ``resnet_spec.backends.onnx.graph``).
PACKAGES = {"resnet_spec": "resnet_spec", "resnet_spec.backends": "backends", "resnet_spec.zoo": "spec",
            "resnet_spec.schemas": "schemas"}

MAX_LINES = 450


def _modules() -> dict:
    """``{module name: (path, is_package)}`` for every source file of the package."""
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if "__pycache__" in parts or not (path.parent / "__init__.py").exists():
                continue
            is_pkg = parts[-1] == "__init__"
            out[".".join((pkg,) + parts[:-1 if is_pkg else None])] = (path, is_pkg)
    return out


MODULES = _modules()


def _project_module(name: str | None):
    """``name`` or its nearest enclosing project module (``resnet_spec.ir.Network`` -> ``resnet_spec.ir``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(name: str) -> dict:
    """``{imported project module: first line}`` for module ``name``."""
    path, is_pkg = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = {}

    def add(target, line):
        target = _project_module(target)
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in MODULES else base, node.lineno)
    return found


def import_graph() -> dict:
    return {name: _imports(name) for name in MODULES}


def find_cycle(graph: dict):
    """One import cycle as a list of edges ``(module, imported module, line)``, or None."""
    state = {}  # 1: on the current path, 2: done
    stack = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                path = stack[stack.index(w):] + [w]
                return [(a, b, graph[a][b]) for a, b in zip(path, path[1:])]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def _where(module: str) -> str:
    return str(MODULES[module][0].relative_to(ROOT))


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "resnet_spec.resolve" in graph["resnet_spec"]  # module level, relative
    assert "resnet_spec.backends" in graph["resnet_spec"]  # inside a function (build)
    assert "resnet_spec.importers" in graph["resnet_spec"]  # inside a function (import_model)
    assert "resnet_spec.ir" in graph["resnet_spec"]  # `from . import ir`: the submodule
    assert "resnet_spec.errors" in graph["resnet_spec.backends.torch.backend"]  # `from ..errors import ...`


def test_find_cycle_reports_the_path():
    graph = {"a": {"b": 3}, "b": {"c": 7}, "c": {"a": 9}, "d": {}}
    assert find_cycle(graph) == [("a", "b", 3), ("b", "c", 7), ("c", "a", 9)]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    if cycle:
        steps = "\n".join(f"  {a} ({_where(a)}:{line}) imports {b}" for a, b, line in cycle)
        pytest.fail(f"import cycle of {len(cycle)} modules:\n{steps}\nMove the shared code into a lower "
                    "module, or the function into the module that uses it.")


def _long_files() -> list:
    out = []
    for name, (path, _) in MODULES.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            out.append(f"{_where(name)}: {n} lines")
    return sorted(out)


def test_no_source_file_over_the_limit():
    long = _long_files()
    assert not long, f"source files over {MAX_LINES} lines (split them by concern):\n  " + "\n  ".join(long)
