"""Optional libraries, and the extra of ``pip install 'resnet-spec[...]'`` that brings each.

A command whose library is missing refuses in one line that names the extra, before it does any work
(``error: diagram needs matplotlib (pip install 'resnet-spec[plot]')``), never with a traceback.
:func:`require` checks with ``importlib.util.find_spec``: nothing is imported, so a check costs
nothing and a framework is still only ever imported in the worker process that uses it.
"""

from __future__ import annotations

import importlib.util

from .errors import BackendUnavailable

#: Top-level module -> the extra of pyproject.toml that installs it.
EXTRAS = {"matplotlib": "plot", "torch": "torch", "onnx": "onnx", "onnxruntime": "onnx",
          "tensorflow": "tensorflow", "keras": "tensorflow", "jax": "jax", "ai_edge_litert": "tflite"}


def install_hint(module: str) -> str:
    """``pip install 'resnet-spec[EXTRA]'`` for an optional library, ``pip install NAME`` for another."""
    top = module.partition(".")[0]
    return f"pip install 'resnet-spec[{EXTRAS[top]}]'" if top in EXTRAS else f"pip install {top}"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def require(what: str, *modules: str) -> None:
    """Refuse (:class:`BackendUnavailable`, one line) unless every one of ``modules`` is installed:
    ``{what} needs {module} (pip install 'resnet-spec[EXTRA]')``."""
    for module in modules:
        if not installed(module):
            raise BackendUnavailable(f"{what} needs {module} ({install_hint(module)})")


def missing_module_message(exc: ModuleNotFoundError, what: str) -> str | None:
    """The one line for a library found missing only when it was imported (the safety net of the
    CLI), or None when ``exc`` is not about a library (a module of this package itself)."""
    name = exc.name or ""
    if not name or name.partition(".")[0] == "resnet_spec":
        return None
    return f"{what} needs {name.partition('.')[0]} ({install_hint(name)})"
