"""The package's structure: no import cycles among its modules, no source file or function over the size
limit, no function with more parameters than an options object would take.

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


# -- functions: length and parameters ----------------------------------------------------------------

MAX_FUNCTION_LINES = 60
MAX_PARAMS = 8  # beyond this, group the values into an options object (a frozen dataclass)

#: Functions allowed more than MAX_PARAMS parameters, and why. Nothing new belongs here.
MANY_PARAMS = {
    # the backend interface: parity passes its options dict as keywords (mod.infer(net, w, x, **options))
    "backends/onnx/backend.py:infer": "backend interface: infer(net, weights, x, *, device, dtype, ...)",
    "backends/onnx/backend.py:convert": "backend interface: convert(net, weights, out_dir, *, opset, ...)",
    "backends/onnx/backend.py:build": "backend interface: build(net, weights, *, fold_bn, ..., layout), which "
                                      "resnet_spec.build passes its keywords to",
    "backends/keras/backend.py:Leg.infer": "backend interface, as onnx's infer",
    "backends/training.py:torch_step": "the training-step interface, as the backends' infer",
    "backends/training.py:keras_step": "the training-step interface, as the backends' infer",
    # the resolver's op constructors take one argument per field of the IR op they make
    "resnet_spec/resolve.py:_Resolver.conv": "one argument per ir.Conv field",
    "resnet_spec/resolve.py:_Resolver.block": "one argument per fact of the block being resolved",
}


def _functions():
    """``(where, node)`` for every function and method of the package; ``where`` is
    ``path:Class.function``."""
    out = []
    for path, _ in MODULES.values():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

        def visit(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}{child.name}"
                    out.append((f"{path.relative_to(ROOT)}:{name}", child))
                    visit(child, f"{name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return out


def _param_count(fn) -> int:
    """Parameters a caller passes (``self``/``cls`` not counted; ``*args`` and ``**kwargs`` one each)."""
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args]
    n = len(names) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    return n - 1 if names and names[0] in ("self", "cls") else n


def test_param_count_reads_every_kind_of_parameter():
    fn = ast.parse("def f(self, a, /, b, *args, c, d=1, **kw): pass").body[0]
    assert _param_count(fn) == 6


def test_no_function_over_the_length_limit():
    long = [f"{where}: {fn.end_lineno - fn.lineno + 1} lines" for where, fn in _functions()
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n  " + "\n  ".join(long)


def test_no_function_with_too_many_parameters():
    found = {where: _param_count(fn) for where, fn in _functions()}
    many = [f"{where}: {n} parameters" for where, n in found.items() if n > MAX_PARAMS and where not in MANY_PARAMS]
    assert not many, (f"functions with more than {MAX_PARAMS} parameters (take an options object, a frozen "
                      "dataclass, instead):\n  " + "\n  ".join(many))
    stale = [w for w in MANY_PARAMS if found.get(w, 0) <= MAX_PARAMS]
    assert not stale, f"MANY_PARAMS entries no longer needed (remove them): {stale}"
