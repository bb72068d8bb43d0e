"""timm's BlurPool2d (``ir.BlurPool``) as ONNX nodes: ``Pad`` in the op's mode (``reflect``: ONNX's reflect is
PyTorch's, the edge row not repeated), then a depthwise ``Conv`` (group = channels, no bias, no pads of its own)
whose weight is the fixed filter, an initializer ``<name>.filter`` of shape (channels, 1, k, k) made from the op's
taps (never a canonical weight). The Pad is kept apart from the Conv: a ``constant`` blur's zero Pad could be
fused into the Conv's pads by a runtime, which is the same numbers; a reflect Pad cannot be."""

from __future__ import annotations

import numpy as np


def blur_filter(op, dtype=np.float32) -> np.ndarray:
    """The (channels, 1, k, k) depthwise weight of ``op``: outer(taps, taps) for each channel."""
    f = np.asarray(op.filter, dtype=dtype)
    return np.ascontiguousarray(np.broadcast_to(f, (op.channels, 1, op.kernel, op.kernel)))


def blur_nodes(g, op, x: str, name: str) -> str:
    p, k, s = op.padding, op.kernel, op.stride
    if p:
        x = g.node("Pad", [x, g.const("pads", [0, 0, p, p, 0, 0, p, p])], f"{name}.pad", mode=op.pad_mode)
    weight = f"{op.name}.filter"
    if weight not in g.arrays:
        g._initializer(weight, blur_filter(op))
    return g.node("Conv", [x, weight], name, kernel_shape=[k, k], strides=[s, s], pads=[0, 0, 0, 0],
                  group=op.channels)
