"""timm's BlurPool2d (``ir.BlurPool``) as ONNX nodes: the padding, then a depthwise ``Conv`` (group = channels, no
bias) whose weight is the fixed filter, an initializer ``<name>.filter`` of shape (channels, 1, k, k) made from the
op's taps (never a canonical weight).

Reflect padding is built from copies, never a ``Pad`` node: each mirrored column is a one-column ``Slice`` of the
input (column ``p - i`` before it, ``W - 2 - i`` after it, i = 0..p-1), joined to it by one ``Concat`` along the
width; then the same along the height of that result (PyTorch's 2-D reflect pads each axis in turn, so the corners
agree). No ``Pad`` feeds the Conv, so no Pad-into-Conv rewrite (onnxruntime's PadFusion, onnxoptimizer's
``fuse_pad_into_conv``) can fold it into the Conv's own zero ``pads``, whatever the rewrite reads of the mode, and
int8 sees no zero padding (every padded cell is a copy of a real one). ``constant`` padding is the Conv's own
``pads`` (zeros, as the op's)."""

from __future__ import annotations

import numpy as np


def blur_filter(op, dtype=np.float32) -> np.ndarray:
    """The (channels, 1, k, k) depthwise weight of ``op``: outer(taps, taps) for each channel."""
    f = np.asarray(op.filter, dtype=dtype)
    return np.ascontiguousarray(np.broadcast_to(f, (op.channels, 1, op.kernel, op.kernel)))


def reflect_nodes(g, x: str, p: int, size: tuple, name: str) -> str:
    """``x`` (N, C, H, W with ``size`` = (H, W)) reflect-padded by ``p`` on every side, by Slice + Concat."""
    h, w = size
    for axis, n, what in ((3, w, "cols"), (2, h, "rows")):
        parts = {"first": [p - i for i in range(p)], "last": [n - 2 - i for i in range(p)]}
        sliced = {side: [g.node("Slice", [x, g.const("starts", [c]), g.const("ends", [c + 1]), g.const("axes", [axis])],
                                f"{name}.reflect_{what}_{side}{j}") for j, c in enumerate(cols)]
                  for side, cols in parts.items()}
        x = g.node("Concat", sliced["first"] + [x] + sliced["last"], f"{name}.pad_reflect_{what}", axis=axis)
    return x


def blur_nodes(g, op, x: str, name: str) -> str:
    p, k, s = op.padding, op.kernel, op.stride
    own = 0
    if p and op.pad_mode == "reflect":
        x = reflect_nodes(g, x, p, op.in_shape[1:], name)
    else:
        own = p  # zeros: the Conv's own padding
    weight = f"{op.name}.filter"
    if weight not in g.arrays:
        g._initializer(weight, blur_filter(op))
    return g.node("Conv", [x, weight], name, kernel_shape=[k, k], strides=[s, s], pads=[own] * 4, group=op.channels)
