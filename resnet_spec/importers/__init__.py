"""Bring existing models in: ONNX graphs, Keras models, PyTorch state dicts, library models by name.

Stages: read the source into a :class:`~.source.Source` (canonical weights plus the facts it states
about each layer) -> infer and check a spec (:mod:`.infer`) -> prove it (:mod:`.run`: the source in its
own runtime against the generated PyTorch model). :func:`read_source` is also what ``--weights``
uses for files that are not canonical safetensors, followed by :func:`.source.check_source`.

Sources: ``*.onnx``; ``*.keras``; ``keras:NAME`` (keras.applications, fresh weights) or
``keras:NAME=FILE.weights.h5``; ``*.pth``/``*.pt``/``*.bin``/``*.safetensors`` state dicts;
``torchvision:NAME`` and ``timm:NAME`` (the installed library's model, fresh weights, no download).
"""

from __future__ import annotations

import os

from ..fileio import check_regular_file, shown
from ..weights.files import STATE_DICT_SUFFIXES
from .source import ImportRefused, Source, check_source, sanitize_name

LIBRARIES = ("torchvision", "timm", "keras")

__all__ = ["read_source", "import_source", "ImportRefused", "Source", "check_source", "is_foreign_weights"]


def _library(source: str):
    lib, sep, name = source.partition(":")
    if sep and lib in LIBRARIES and name and not os.path.exists(source):
        return lib, name
    return None


def is_foreign_weights(path: str) -> bool:
    """A ``--weights`` argument that is not a canonical weight file: ONNX, Keras or a library name."""
    return _library(str(path)) is not None or str(path).endswith((".onnx", ".keras", ".h5"))


def read_source(source: str, input_size=None, max_params: int | None = None) -> Source:
    """Read ``source`` into a :class:`Source`, refusing (one message, no traceback) what is not a ResNet.
    ``max_params``: the float32 parameters an ONNX file may declare (default
    :data:`~resnet_spec.budgets.IMPORT_MAX_PARAMS`; a .keras file's limit is fixed)."""
    source = os.fspath(source)
    lib = _library(source)
    if lib is not None:
        if lib[0] == "keras":
            from ..backends.keras.reader import read_keras

            return read_keras(source, input_size)
        from ..backends.torch.reader import read_library

        return read_library(*lib)
    check_regular_file(source, error=ImportRefused,  # a FIFO, a device, a folder: refused before opening
                       missing="no such file (and not torchvision:NAME, timm:NAME or keras:NAME)")
    if source.endswith(".onnx"):
        from ..backends.onnx.reader import read_onnx

        return read_onnx(source, max_params)
    if source.endswith((".keras", ".h5")):
        from ..backends.keras.reader import read_keras

        return read_keras(source, input_size)
    if source.endswith(STATE_DICT_SUFFIXES):
        from ..backends.torch.reader import read_torch_source

        return read_torch_source(source)
    raise ImportRefused(f"{shown(source)}: unknown model format; import reads .onnx, .keras, .weights.h5 (with "
                       "keras:NAME=FILE), .pth/.pt/.bin/.safetensors state dicts, torchvision:NAME, "
                       "timm:NAME and keras:NAME")


def default_name(source: str) -> str:
    lib = _library(source)
    if lib is not None:
        return sanitize_name(lib[1].split("=")[0].lower())
    base = os.path.basename(source)
    for suffix in (".weights.h5",) + STATE_DICT_SUFFIXES + (".onnx", ".keras", ".h5"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return sanitize_name(base)


def import_source(source: str, name: str | None = None, input_size=None, max_params: int | None = None) -> tuple:
    """(Source, spec YAML text, resolved network, full spec dict, checked canonical weights)."""
    from .infer import build_spec

    src = read_source(source, input_size, max_params)
    text, net, full = build_spec(src, default_name(source) if name is None else name, input_size)
    weights = check_source(net, src)
    return src, text, net, full, weights
