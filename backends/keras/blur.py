"""timm's BlurPool2d (``ir.BlurPool``) in stock Keras layers, so a ``.keras`` holding one loads in plain Keras:

* reflect padding (Keras 3 has no reflection-padding layer): each mirrored column is a ``Cropping2D`` of the
  input (column ``p - i`` before, ``W - 2 - i`` after, for i = 0..p-1), joined to it by one ``Concatenate``
  along the width; then the same along the height of that result, which mirrors the corners as PyTorch's 2-D
  reflect does (it pads each axis in turn). Copies only: exact. ``constant`` padding is a ``ZeroPadding2D``;
* the filter: a ``DepthwiseConv2D`` (depth multiplier 1, ``valid``, no bias, not trainable) whose kernel
  (k, k, channels, 1) is set to outer(taps, taps) here and again by the weight layout (``weights.py``), which
  gives it from the op, not from canonical weights (it has none)."""

from __future__ import annotations

import numpy as np


def blur_kernel(op) -> np.ndarray:
    """The DepthwiseConv2D kernel (k, k, channels, 1) of ``op``."""
    f = np.asarray(op.filter, dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(f[:, :, None, None], (op.kernel, op.kernel, op.channels, 1)))


def _reflect(L, x, p: int, base: str, namer):
    """``x`` (NHWC, static H and W) reflect-padded by ``p`` on every side."""
    for axis, what in ((2, "cols"), (1, "rows")):
        n = x.shape[axis]
        sides = []
        for side, keep in (("first", [p - i for i in range(p)]), ("last", [n - 2 - i for i in range(p)])):
            crops = []
            for j, c in enumerate(keep):  # the one row/column at index c: cut c before it, n - 1 - c after
                span = (c, n - 1 - c)
                crops.append(L.Cropping2D(((0, 0), span) if axis == 2 else (span, (0, 0)),
                                          name=namer(f"{base}.reflect_{what}_{side}{j}"))(x))
            sides.append(crops)
        x = L.Concatenate(axis=axis, name=namer(f"{base}.pad_reflect_{what}"))(sides[0] + [x] + sides[1])
    return x


def blur_layers(op, x, name: str, namer, L):
    from .names import canonical_name

    base = canonical_name(name)
    if op.padding and op.pad_mode == "reflect":
        x = _reflect(L, x, op.padding, base, namer)
    elif op.padding:
        x = L.ZeroPadding2D(op.padding, name=namer(f"{base}.pad"))(x)
    layer = L.DepthwiseConv2D(op.kernel, strides=op.stride, padding="valid", depth_multiplier=1, use_bias=False,
                              trainable=False, name=name)
    y = layer(x)
    layer.set_weights([blur_kernel(op)])
    return y
