"""The node patterns of timm's BlurPool2d (``ir.BlurPool``) that the ONNX reader (:mod:`.read_aa`) recognises:
reflect padding then a depthwise ``Conv`` whose weight is the fixed binomial filter, no bias.

The reflect padding comes in two forms: one ``Pad(mode=reflect)`` (torch.onnx.export of timm's ``F.pad``), or,
as :mod:`.blur` writes it, one ``Concat`` per axis of one-column (one-row) ``Slice`` copies of the input around
it: column ``p - i`` before, ``n - 2 - i`` after (i = 0..p-1; ``n`` the input's size along the axis, from ONNX
shape inference). Anything else is not read as a blur pool.
"""

from __future__ import annotations

import numpy as np

from .patterns import attrs
from ...ir_blur import binomial_taps

NOTSET = (b"NOTSET", "NOTSET")


def reflect_pad(g, node, ins):
    """``(input, p)`` of a ``Pad(mode=reflect)`` adding ``p`` rows and columns on every side of height and
    width, None for another node; a reflect Pad of other amounts is refused."""
    if node.op_type != "Pad" or attrs(node).get("mode", b"constant") not in (b"reflect", "reflect"):
        return None
    pads = [int(v) for v in (g.const(node, ins[1]) if len(ins) > 1 and ins[1] else attrs(node).get("pads", []))]
    axes = [int(a) % 4 for a in g.const(node, ins[3]).reshape(-1)] if len(ins) > 3 and ins[3] else [0, 1, 2, 3]
    full = dict.fromkeys(range(8), 0)
    for k, ax in enumerate(axes):
        full[ax], full[4 + ax] = pads[k], pads[len(axes) + k]
    p = full[2]
    if len(pads) != 2 * len(axes) or [full[i] for i in range(8)] != [0, 0, p, p, 0, 0, p, p] or p < 1:
        raise g.refuse(node, f"reflect padding {pads}: a blur pool reflect-pads height and width alike")
    return ins[0], p


def _column(g, node, x, axis: int):
    """The index a one-column (row) ``Slice`` of ``x`` along ``axis`` copies, or None."""
    if node.op_type != "Slice" or node.input[0] != x or len(node.input) < 4:
        return None
    ins = node.input
    starts, ends = (g.consts.get(i) for i in ins[1:3])
    axes = g.consts.get(ins[3])
    steps = g.consts.get(ins[4]) if len(ins) > 4 and ins[4] else np.ones(1, np.int64)
    if any(v is None or np.size(v) != 1 for v in (starts, ends, axes, steps)) or int(np.ravel(steps)[0]) != 1:
        return None
    s, e, a = (int(np.ravel(v)[0]) for v in (starts, ends, axes))
    return s if a % 4 == axis and e == s + 1 and s != -1 else None


def reflect_concat(g, node, ins):
    """``(input, axis, p)`` of a ``Concat`` along height or width that reflect-pads its middle input by ``p``
    (see the module docstring), None for another Concat; copies of the wrong rows are refused."""
    axis = int(attrs(node).get("axis", 0)) % 4 if node.op_type == "Concat" else None
    if axis not in (2, 3) or len(ins) < 3 or len(ins) % 2 == 0:
        return None
    p = len(ins) // 2
    x = ins[p]
    cols = [_column(g, g.producer[i][0], x, axis) if i in g.producer else None for i in ins[:p] + ins[p + 1:]]
    if any(c is None for c in cols):
        return None
    shape = g.shape(x)
    n = shape[axis] if shape and len(shape) == 4 else None
    last = [n - 2 - i for i in range(p)] if n else None
    if cols[:p] != [p - i for i in range(p)] or cols[p:] not in (last, [-2 - i for i in range(p)]):
        raise g.refuse(node, f"copies of rows/columns {cols} around a map of size {n} along axis {axis}: reflect "
                             f"padding by {p} copies {[p - i for i in range(p)]} before and {last} after")
    return x, axis, p


def blur_filter_problem(g, node, ins, stride_pad: int) -> str | None:
    """Why the depthwise ``Conv`` after a reflect padding of ``stride_pad`` is not timm's BlurPool2d (the
    binomial 3x3 filter [1, 2, 1] x [1, 2, 1] / 16 on every channel, groups = channels, no bias, no padding
    of its own, padding ((stride - 1) + 2) // 2), or None."""
    a, w = attrs(node), g.const(node, ins[1])
    taps = np.array(binomial_taps(3))
    s = list(a.get("strides", [1, 1]))
    if w.ndim != 4 or w.shape[1] != 1 or a.get("group", 1) != w.shape[0] or (len(ins) > 2 and ins[2]):
        return f"a conv of weight {list(w.shape)}, group {a.get('group', 1)} after reflect padding: a blur pool " \
               "is a depthwise conv without bias"
    if not np.array_equal(np.asarray(w, np.float64), np.broadcast_to(np.outer(taps, taps), w.shape)):
        return "a depthwise conv after reflect padding whose filter is not the binomial [1, 2, 1] x [1, 2, 1] / 16 " \
               "on every channel"
    if len(set(s)) != 1 or any(a.get("pads", [0] * 4)) or set(a.get("dilations", [1, 1])) != {1} \
            or a.get("auto_pad", b"NOTSET") not in NOTSET or stride_pad != ((s[0] - 1) + 2) // 2:
        return f"a blur filter at strides {s}, pads {a.get('pads')} after reflect padding {stride_pad}: timm's " \
               "BlurPool2d pads ((stride - 1) + 2) // 2, square stride"
    return None
