"""The Keras lowering in stock layers only: a ``.keras`` file that plain Keras loads.

``keras.saving.load_model(path)`` in a process that has never imported resnet_spec can rebuild only
Keras' own layer classes. :func:`.model.build` with ``stock=True`` (what ``convert --to tensorflow``
writes) therefore replaces each custom layer of :mod:`.layers` by stock layers computing the same
numbers at inference:

* ``TorchBatchNorm`` -> ``BatchNormalization`` (the same epsilon, momentum and inference; only
  training-mode updates differ: Keras moves the running variance towards the biased batch variance,
  PyTorch towards the unbiased one. Training that must match PyTorch uses ``resnet_spec.build``);
* max-pool padding that never wins (``ConstantPad2D`` with -inf) -> the edge row/column repeated
  (``Cropping2D`` + ``Concatenate``). Exact: every window that reaches a padded cell also holds the edge
  cell it repeats (PyTorch's padding is at most half the kernel, and a ceil-mode window starts inside the
  input), so the window's maximum is the maximum of its real cells, as with -inf;
* ``ChannelPad`` (option-A shortcut) -> ``Reshape`` to (H, W, C, 1), ``ZeroPadding3D`` on the channel
  axis, ``Reshape`` back: zeros concatenated, nothing computed;
* Res2Net's channel splits are stock layers in both lowerings (``Reshape``, ``Cropping3D``, ``Reshape``:
  :mod:`.res2net`); its split BNs and pool lower as this table's BN and pool;
* ``ExactAvgPool2D`` -> ``AveragePooling2D(padding='same')`` when TensorFlow's 'same' windows are
  PyTorch's (the uncounted padding is the extra bottom/right row of ceil mode, the divisor the number of
  real cells: resnet50d-style shortcut pools on odd sizes). Other partial-window averages keep
  ``ExactAvgPool2D``; :func:`custom_layers` names them (no zoo entry has one).
"""

from __future__ import annotations

import math

from ... import ir
from . import res2net
from . import sknet
from .layers import CLASSES
from .model import OPS, _L, _Lowering, _conv_layers, build as _build
from .resnest import split_attention_layers
from .names import Namer, canonical_name


def _batch_norm(op: ir.BatchNorm, x, name, namer):
    return _L().BatchNormalization(axis=-1, epsilon=op.eps, momentum=1.0 - op.momentum, name=name)(x)


def _edge_pad(x, pads, base: str, namer: Namer):
    """``x`` (NHWC, static H and W) padded by (top, left, bottom, right) copies of its edge rows/columns."""
    L = _L()
    t, left, b, r = pads
    for axis, before, after, what in ((1, t, b, "rows"), (2, left, r, "cols")):
        if not (before or after):
            continue
        n = x.shape[axis]
        parts = [x]
        for first, count in ((True, before), (False, after)):
            if not count:
                continue
            span = (0, n - 1) if first else (n - 1, 0)
            crop = L.Cropping2D((span, (0, 0)) if axis == 1 else ((0, 0), span),
                                name=namer(f"{base}.edge_{what}_{'first' if first else 'last'}"))(x)
            parts = [crop] * count + parts if first else parts + [crop] * count
        x = L.Concatenate(axis=axis, name=namer(f"{base}.pad_edge_{what}"))(parts)
    return x


def _same_windows(op: ir.Pool, counted: int) -> bool:
    """True when ``AveragePooling2D(padding='same')`` on the input zero-padded by ``counted`` has
    PyTorch's windows and divisors: TensorFlow puts floor(T / 2) of the T padding cells it needs on top,
    the rest at the bottom, and divides by the real cells."""
    _, h, w = op.in_shape
    _, oh, ow = op.out_shape
    rest = op.pad_split[1]
    for n, out, (before, after) in ((h, oh, (rest[0], rest[2])), (w, ow, (rest[1], rest[3]))):
        n += 2 * counted
        total = max((out - 1) * op.stride + op.kernel - n, 0)
        if math.ceil(n / op.stride) != out or (total // 2, total - total // 2) != (before, after):
            return False
    return True


def _pool_layers(op: ir.Pool, x, name: str, namer: Namer):
    L = _L()
    base = canonical_name(name)
    counted, rest = op.pad_split
    if op.kind == "max" and any(rest):
        if counted:
            x = L.ZeroPadding2D(counted, name=namer(f"{base}.pad"))(x)
        x = _edge_pad(x, rest, base, namer)
        return L.MaxPooling2D(op.kernel, strides=op.stride, padding="valid", name=name)(x)
    rows, cols = op.divisors if op.kind == "avg" else ((op.kernel,), (op.kernel,))
    if op.kind == "avg" and set(rows) | set(cols) != {op.kernel} and _same_windows(op, counted):
        if counted:
            x = L.ZeroPadding2D(counted, name=namer(f"{base}.pad"))(x)
        return L.AveragePooling2D(op.kernel, strides=op.stride, padding="same", name=name)(x)
    return OPS[ir.Pool](op, x, name, namer)


def _channel_pad(op: ir.ChannelPad, x, name: str, namer: Namer):
    L = _L()
    _, h, w, c = x.shape
    base = canonical_name(name)
    x = L.Reshape((h, w, c, 1), name=namer(f"{base}.as_3d"))(x)
    x = L.ZeroPadding3D(((0, 0), (0, 0), (op.before, op.after)), name=namer(f"{base}.pad"))(x)
    return L.Reshape((h, w, c + op.before + op.after), name=name)(x)


#: IR op type -> stock-layer lowering; every other op lowers as in :data:`.model.OPS` (stock already)
STOCK_OPS = {**OPS, ir.BatchNorm: _batch_norm, ir.Pool: _pool_layers, ir.ChannelPad: _channel_pad,
             ir.SplitAttention: lambda op, x, name, namer: split_attention_layers(op, x, name, namer, _L(),
                                                                                  _conv_layers, _batch_norm),
             ir.Res2Net: lambda op, x, name, namer: res2net.lower(STOCK_OPS, _L(), op, x, namer),
             ir.SelectiveKernel: lambda op, x, name, namer: sknet.layers(op, x, name, namer, STOCK_OPS, _L())}


class StockLowering(_Lowering):
    """:class:`.model._Lowering` with :data:`STOCK_OPS`: the same walk and layer names."""

    table = STOCK_OPS


def custom_layers(model) -> list:
    """The names of this project's layer classes in ``model`` (plain Keras cannot load a file holding one)."""
    return sorted({type(layer).__name__ for layer in model.layers if type(layer).__name__ in CLASSES})


def build(net: ir.Network, weights=None, *, data_format: str | None = None, layout: str | None = None,
          backend: str | None = None):
    """The float32 Keras model for ``net`` in stock layers (see :func:`.model.build`); weight-standardized
    convs become Conv2D layers holding the standardized kernels (``backends/standardize.py``: inference only)."""
    from ..standardize import standardize_convs

    net, weights = standardize_convs(net, weights)
    return _build(net, weights, data_format=data_format, layout=layout, backend=backend, lowering=StockLowering)
