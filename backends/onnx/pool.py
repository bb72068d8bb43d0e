"""Pooling in ONNX with PyTorch semantics, in a form that no known graph rewrite computes wrongly.

Why not ``Pad -> MaxPool``
--------------------------
Zero-padded max pooling (the Keras V2 stem: ``ZeroPadding2D`` then ``MaxPooling2D``; its input is a
convolution's output with no ReLU in between, so values are negative) was once written as an explicit
``Pad(constant 0)`` followed by ``MaxPool``. That is a correct ONNX graph, but two widely deployed
rewrites fold the Pad into the pool's own ``pads`` attribute, and a MaxPool's own padding acts as
-inf, not 0:

* ONNX Runtime's Pad fusion (``PadFusion``, from onnxruntime 1.17 to 1.31 at ORT_ENABLE_BASIC and
  above, the default every user gets), for MaxPool and AveragePool;
* onnxoptimizer's ``fuse_pad_into_pool`` (part of its fuse-and-eliminate pass list).

A fix that changes the Pad (another constant, another mode) is not enough: a rewrite that ignores
the pad value folds it all the same. So no Pad ever precedes a pool here; every form below is exact
and uses only a pool's own (well-defined) padding plus a constant elementwise op.

Zero-padded max pooling
-----------------------
Let ``P`` be the zero-padded input, window ``w(i, j)`` of output cell ``(i, j)``, ``R(i, j)`` the
window cells inside the input and ``Z(i, j)`` those in the zero border (``p`` cells wide; cells the
ceil-mode extension adds beyond it never count, as in PyTorch). Then::

    max_{w(i,j)} P  =  max( max_{R(i,j)} x ,  max_{Z(i,j)} 0 )
                    =  max( MaxPool_-inf(x)[i, j] ,  M[i, j] )

with ``M[i, j] = 0`` if ``Z(i, j)`` is non-empty and ``-inf`` otherwise: ``MaxPool`` with its own
pads (which act as -inf in every runtime) gives the first term, and one broadcast ``Max`` with the
constant ``M`` of shape ``(1, 1, OH, OW)`` gives the second. ``M`` depends only on the static spatial
shape. The result is bit-exact (a max never rounds), and a window that held only padding (which
PyTorch's rule ``padding <= kernel / 2`` excludes) would still give 0.

Average pooling with counted padding
------------------------------------
``count_include_pad`` divides by the window clipped to the *padded* input (PyTorch:
``(min(end, H + p) - start)`` per axis), so the ceil-mode extension is not counted but the zero border
is. Without a ceil extension that is ONNX's own ``AveragePool(count_include_pad=1)``. With one,
ONNX's count would include the extension too, so the form is::

    avg_torch[i, j] = sum_{R(i,j)} x / d(i, j)
                    = AveragePool(x, count_include_pad=0)[i, j] * (n(i, j) / d(i, j))

where ``n(i, j) = |R(i, j)|`` (the divisor ONNX uses with ``count_include_pad=0``) and ``d`` the
PyTorch divisor; the ratio is one constant ``(1, 1, OH, OW)`` tensor (one extra float rounding,
relative 2**-24). Uncounted padding (``count_include_pad=False``) and ceil mode without counted
padding map directly onto ``AveragePool(count_include_pad=0)`` / ``MaxPool`` pads.
"""

from __future__ import annotations

import numpy as np

from ... import ir


def _touches_zero_border(size: int, out: int, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Per output index along one axis: does its window reach the ``pad``-wide zero border?"""
    start = np.arange(out) * stride - pad
    return (start < 0) | (start + kernel > size)


def zero_pad_max_mask(op: ir.Pool) -> np.ndarray:
    """``M`` of the module docstring: 0 where the window reaches the zero border, -inf elsewhere."""
    _, h, w = op.in_shape
    _, oh, ow = op.out_shape
    th = _touches_zero_border(h, oh, op.kernel, op.stride, op.padding)
    tw = _touches_zero_border(w, ow, op.kernel, op.stride, op.padding)
    mask = np.where(th[:, None] | tw[None, :], 0.0, -np.inf)
    return mask.astype(np.float32)[None, None]


def counted_avg_ratio(op: ir.Pool) -> np.ndarray:
    """``n / d`` of the module docstring, shape (1, 1, OH, OW), computed in float64: ``n`` the divisors
    without the padding (:func:`ir.pool_divisors`), ``d`` the op's own (:attr:`ir.Pool.divisors`)."""
    _, h, w = op.in_shape
    _, oh, ow = op.out_shape
    nh, nw = (np.array(ir.pool_divisors(n, op.kernel, op.stride, op.padding, o, False), np.float64)
              for n, o in ((h, oh), (w, ow)))
    dh, dw = (np.array(d, np.float64) for d in op.divisors)
    return ((nh[:, None] * nw[None, :]) / (dh[:, None] * dw[None, :])).astype(np.float32)[None, None]


def _float_const(g, name: str, arr: np.ndarray) -> str:
    """A float32 constant initializer named ``const.<name>`` (shared by identical uses)."""
    if name not in g.arrays:
        g._initializer(name, np.ascontiguousarray(arr, dtype=np.float32))
    return name


def pool_to_nodes(g, op: ir.Pool, x: str, name: str) -> str:
    """The nodes for one :class:`ir.Pool` reading ``x`` (see the module docstring for the math)."""
    t, l, b, r = op.pads
    p = op.padding
    common = {"kernel_shape": [op.kernel, op.kernel], "strides": [op.stride, op.stride], "pads": [t, l, b, r]}
    if op.kind == "max":
        y = g.node("MaxPool", [x], name if not (op.pad_value == "zero" and p) else f"{name}.pool", **common)
        if op.pad_value == "zero" and p:
            mask = _float_const(g, f"const.{name}.zero_border", zero_pad_max_mask(op))
            y = g.node("Max", [y, mask], name)
        return y
    if op.count_include_pad and p:
        if (b, r) == (p, p):
            return g.node("AveragePool", [x], name, count_include_pad=1, **common)
        y = g.node("AveragePool", [x], f"{name}.pool", count_include_pad=0, **common)
        ratio = _float_const(g, f"const.{name}.divisor_ratio", counted_avg_ratio(op))
        return g.node("Mul", [y, ratio], name)
    return g.node("AveragePool", [x], name, count_include_pad=0, **common)
