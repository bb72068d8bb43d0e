"""Weight files and import sources -> the canonical weight set, checked against a spec.

A training script rarely saves a bare ``state_dict``: it saves ``{"model": ..., "optimizer": ...}``,
wraps the model in DDP (``module.`` prefixes) or ``torch.compile`` (``_orig_mod.``), keeps an EMA copy,
or pickles the whole model. :func:`resnet_spec.weightfile.read_checkpoint` finds the dictionary of
tensors inside such a file, strips the wrapper prefixes and says in one line what it did;
:func:`load_checkpoint` (what ``--weights`` and ``resnet_spec.load_weights`` use) also checks the result
against a spec and, with ``new_head=True``, replaces a classifier whose shape differs (the usual
fine-tuning case: ImageNet weights into a 10-class spec). A source only ``import`` reads (``.onnx``,
``.keras``, ``torchvision:NAME``...) is imported and checked layer by layer (:mod:`resnet_spec.importers`).

Everything is read with ``torch.load(weights_only=True)``: nothing pickled is ever executed.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import ir
from .errors import WeightsError
from .weightfile import IGNORED_SUFFIXES, fmt_shape as _fmt, read_checkpoint
from .weights import Weights, check_weights, init_weights, read_weights

# -- checking against a spec, with an optional new classifier ------------------------------------------

def head_tensors(net: ir.Network) -> dict:
    """The classifier's canonical tensors: ``{name: shape}``."""
    fc = next(op for op in net.head if isinstance(op, ir.Linear))
    return dict((n, s) for n, s, _ in fc.tensors())


def new_head(net: ir.Network, seed: int = 0) -> dict:
    """A fresh classifier as :func:`resnet_spec.weights.init_weights` makes it: U(+-1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in head_tensors(net).items():
        fan_in = shape[1] if len(shape) == 2 else next(iter(head_tensors(net).values()))[1]
        bound = 1 / math.sqrt(fan_in)
        out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def apply_head(net: ir.Network, given: dict, source: str, replace: bool, seed: int = 0) -> tuple[dict, list]:
    """Handle a classifier that differs from the spec's.

    ``replace=False``: when only the classifier differs, refuse with a message naming ``--new-head``.
    ``replace=True``: give a classifier of a different shape (or a missing one) a fresh initialisation;
    every other tensor must still match (that is left to ``check_weights``).
    """
    head = head_tensors(net)
    expected = {t.name: t.shape for t in net.tensors()}
    body_ok = all(n in given and tuple(np.shape(given[n])) == tuple(s) for n, s in expected.items()
                  if n not in head) and not [n for n in given if n not in expected and n not in head
                                             and not n.endswith(IGNORED_SUFFIXES)]
    differs = [n for n, s in head.items() if n not in given or tuple(np.shape(given[n])) != tuple(s)]
    if not differs:
        return given, (["the checkpoint's classifier already matches the spec; --new-head changed nothing"]
                       if replace else [])
    w = next(iter(head))
    if not replace:
        if body_ok and w in given and tuple(np.shape(given[w])) != tuple(head[w]):
            got = f"shape {_fmt(np.shape(given[w]))}"
            raise WeightsError(f"{source}: only the classifier differs ({w!r}: the checkpoint has {got}, "
                               f"the spec expects {_fmt(head[w])}); pass --new-head (Python: new_head=True) to "
                               "load every other tensor and initialise a new classifier")
        return given, []
    if not body_ok:
        return given, []  # check_weights names the first tensor that does not fit
    fresh = new_head(net, seed)
    out = {k: v for k, v in given.items() if k not in head}
    out.update(fresh)
    was = _fmt(np.shape(given[w])) if w in given else "none"
    return out, [f"new classifier {w} {_fmt(head[w])} (the checkpoint's was {was}), initialised "
                 f"U(+-1/sqrt({head[w][1]})) with seed {seed}"]


def load_checkpoint(net: ir.Network, path: str, key: str | None = None, ema: bool = False,
                    new_head: bool = False, seed: int = 0, allow_nonfinite: bool = False) -> tuple[dict, list]:
    """Read ``path``, unwrap it, fit the classifier if asked, check everything: ``(weights, notes)``."""
    from .importers import is_foreign_weights

    path = os.fspath(path)
    if is_foreign_weights(path):  # .onnx, .keras, keras:/torchvision:/timm: -- imported, checked layer by layer
        if key or ema:
            raise WeightsError(f"{path}: --weights-key and --ema apply to torch checkpoints")
        tensors, notes = read_foreign(net, path), []
    else:
        tensors, notes = read_checkpoint(path, key, ema, net)
    tensors, more = apply_head(net, tensors, path, new_head, seed)
    return check_weights(net, tensors, path, allow_nonfinite), notes + more


def load_weights(net: ir.Network, path: str, allow_nonfinite: bool = False) -> Weights:
    """Read ``path`` (safetensors, or a torchvision/timm state_dict) and check it against ``net``.

    Any other source ``resnet-spec import`` reads (``.onnx``, ``.keras``, ``keras:NAME[=FILE.weights.h5]``,
    ``torchvision:NAME``, ``timm:NAME``) is imported and checked layer by layer against ``net`` first:
    a different network is refused naming the first differing layer (see resnet_spec.importers).
    """
    from .importers import is_foreign_weights

    if is_foreign_weights(path):
        return check_weights(net, read_foreign(net, path), path, allow_nonfinite)
    return check_weights(net, read_weights(path, net), path, allow_nonfinite)


def read_foreign(net: ir.Network, path: str) -> Weights:
    """Weights from a source only ``import`` reads, imported and checked layer by layer against ``net``."""
    from .importers import check_source, read_source

    _, h, w = net.input_shape
    return check_source(net, read_source(path, h if h == w else [h, w]))


def resolve_weights(net: ir.Network, weights=None, seed: int = 0, allow_nonfinite: bool = False) -> Weights:
    """None -> fresh init; a path -> loaded and checked; a mapping -> checked."""
    if weights is None:
        return init_weights(net, seed=seed)
    if isinstance(weights, (str, os.PathLike)):
        return load_weights(net, os.fspath(weights), allow_nonfinite)
    if not hasattr(weights, "items"):
        raise WeightsError(f"weights: expected None, a file or source name, or a {{name: array}} mapping, got "
                           f"{type(weights).__name__} (save a Keras model as .keras and pass its path)")
    return check_weights(net, weights, "weights", allow_nonfinite)
