"""Any weight source -> the canonical weight set, checked against a spec: :func:`load`, the one loader.

``load(net, source, options)`` is what ``--weights`` (convert, parity, verify), ``resnet_spec.build``
and ``resnet_spec.load_weights`` use. ``source`` is one of:

- ``None``: fresh weights (:func:`.init.init_weights` with ``options.seed``);
- a ``{name: array}`` mapping, checked as it is;
- a weight file: safetensors, or a torch checkpoint (:data:`.files.TORCH_SUFFIXES`). A training script
  rarely saves a bare ``state_dict``: it saves ``{"model": ..., "optimizer": ...}``, wraps the model in
  DDP (``module.`` prefixes) or ``torch.compile`` (``_orig_mod.``), keeps an EMA copy, or pickles the
  whole model. :func:`.files.read_checkpoint` finds the dictionary of tensors inside such a file, strips
  the wrapper prefixes and says in one line what it did (``options.key``, ``options.ema``); everything
  is read with ``torch.load(weights_only=True)``: nothing pickled is ever executed;
- a source only ``import`` reads (``.onnx``, ``.keras``, ``keras:NAME``, ``torchvision:NAME``,
  ``timm:NAME``), imported and checked layer by layer (:mod:`resnet_spec.importers`).

With ``options.new_head``, a classifier whose shape differs is replaced (the usual fine-tuning case:
ImageNet weights into a 10-class spec); the result is checked against the spec (:mod:`.check`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import ir
from ..errors import WeightsError
from .check import IGNORED_SUFFIXES, Weights, check_weights, fmt_shape as _fmt
from .files import read_checkpoint
from .init import init_ops, init_weights


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`load` reads its source (the CLI's ``--weights-key``, ``--ema``, ``--new-head``,
    ``--seed``, ``--allow-nonfinite``)."""

    key: str | None = None  # the checkpoint entry holding the weights, dotted for nested entries
    ema: bool = False  # take the checkpoint's EMA copy
    new_head: bool = False  # a classifier of another shape is initialised afresh (seed ``seed``)
    seed: int = 0  # fresh weights, and a new classifier
    allow_nonfinite: bool = False  # accept NaN/Inf values
    random_bn: bool = False  # fresh weights only: non-trivial BN statistics (init_weights' random_bn)


def load(net: ir.Network, source, options: LoadOptions | None = None) -> tuple[Weights, list]:
    """``(weights, notes)``: ``source`` (None, a ``{name: array}`` mapping, a weight file or an import
    source) read, unwrapped, its classifier fitted if asked, and checked against ``net``. ``notes`` say
    what was unwrapped, stripped or replaced (empty if nothing)."""
    options = options if options is not None else LoadOptions()
    if source is None:
        if options.key or options.ema or options.new_head:
            raise WeightsError("weights: --weights-key, --ema and --new-head (key, ema, new_head) need weights "
                               "to load: a file, a source name or a mapping")
        return init_weights(net, seed=options.seed, random_bn=options.random_bn), []
    if isinstance(source, (str, os.PathLike)):
        return _load_named(net, os.fspath(source), options)
    if not hasattr(source, "items"):
        raise WeightsError(f"weights: expected None, a file or source name, or a {{name: array}} mapping, got "
                           f"{type(source).__name__} (save a Keras model as .keras and pass its path)")
    if options.key or options.ema:
        raise WeightsError("weights: --weights-key and --ema apply to torch checkpoints")
    notes = []
    if options.new_head:
        source, notes = apply_head(net, dict(source), "weights", True, options.seed)
    return check_weights(net, source, "weights", options.allow_nonfinite), notes


def _load_named(net: ir.Network, path: str, options: LoadOptions) -> tuple[Weights, list]:
    """A weight file or import source: read, unwrapped, the classifier fitted, checked."""
    from ..importers import is_foreign_weights

    if is_foreign_weights(path):  # .onnx, .keras, keras:/torchvision:/timm: -- imported, checked layer by layer
        if options.key or options.ema:
            raise WeightsError(f"{path}: --weights-key and --ema apply to torch checkpoints")
        tensors, notes = read_foreign(net, path), []
    else:
        tensors, notes = read_checkpoint(path, options.key, options.ema, net)
        tensors, notes = _layout_names(net, tensors, notes)
    tensors, more = apply_head(net, tensors, path, options.new_head, options.seed)
    return check_weights(net, tensors, path, options.allow_nonfinite), notes + more


def _layout_names(net: ir.Network, tensors: dict, notes: list) -> tuple:
    """A checkpoint in another library's names that ``import`` reads (backends/torch/names.py LAYOUTS:
    timm's and torchvision's RegNet, timm's ResNetV2, legacy SENet) under the canonical names: the same
    tensors renamed (``s1.b1.conv1.conv`` and ``trunk_output.block1.block1-0.f.a.0`` are
    ``layer1.0.conv1``). Whether a ResNetV2 projection follows an average pool (its names cannot say) is
    the spec's: the renaming that gives more of its tensor names. Any other checkpoint as it is."""
    from ..backends.torch import names

    layout = names.layout_of(tensors)
    if layout is None:
        return tensors, notes
    want = {t.name for t in net.tensors()}
    renamed = max((names.canonical_weights(tensors, layout, avg_down)[0] for avg_down in (False, True)),
                  key=lambda r: len(want & set(r)))
    return renamed, notes + [f"names of {layout.name} read as the canonical ones"]


def read_foreign(net: ir.Network, path: str) -> Weights:
    """Weights from a source only ``import`` reads, imported and checked layer by layer against ``net``. An
    ONNX file may declare the spec's parameters twice over (BNs unfolded, slack), at least the import's
    default budget: the spec, not the file, says how large the model is."""
    from ..budgets import IMPORT_MAX_PARAMS
    from ..importers import check_source, read_source

    _, h, w = net.input_shape
    return check_source(net, read_source(path, h if h == w else [h, w], max(IMPORT_MAX_PARAMS, 2 * net.params)))


# -- a classifier that differs from the spec's ---------------------------------------------------------

def _classifier(net: ir.Network) -> ir.Linear:
    return next(op for op in net.head if isinstance(op, ir.Linear))


def head_tensors(net: ir.Network) -> dict:
    """The classifier's canonical tensors: ``{name: shape}``."""
    return dict((n, s) for n, s, _ in _classifier(net).tensors())


def new_head(net: ir.Network, seed: int = 0) -> dict:
    """A fresh classifier as :func:`.init.init_weights` makes it (its ``INIT`` entry): U(+-1/sqrt(fan_in))."""
    return init_ops(net, [_classifier(net)], seed)


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
