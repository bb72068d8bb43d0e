"""Option A's zero channels as this project's stock ``.keras`` writes them (``backends/keras/stock.py``: Reshape to
(H, W, C, 1), ``ZeroPadding3D`` on the channel axis, Reshape back) and tf2onnx converts them, read by the ONNX
reader (:mod:`.read_blocks`): ``Transpose`` to NHWC (perm [0, 2, 3, 1]) -> ``Reshape`` to (N, H, W, C, 1) (its
shape a constant, or computed: the batch from a ``Shape`` joined by ``Concat`` to constants H, W, C, 1) -> zero
``Pad`` of the 5-d tensor's channel axis only -> ``Reshape`` to (-1, H, W, C') -> ``Transpose`` back to NCHW
(perm [0, 3, 1, 2]). Every dimension is checked against the input's (ONNX shape inference); a chain that starts
so and goes otherwise is refused naming its first node. (The stock ``.keras``'s edge-copy max-pool padding is in
:mod:`.patterns`.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .patterns import attrs


class ChannelPadFacts(NamedTuple):
    """Zero channels added before and after (``ir.ChannelPad``)."""
    before: int
    after: int


def _node(g, value, op: str):
    found = g.producer.get(value)
    return found if found and found[0].op_type == op else None


def nhwc_channel_pad(g, node, ins):
    """``(ChannelPadFacts, input)`` of the chain ending at the ``Transpose`` ``node`` (see the module docstring),
    None where ``node`` does not end one."""
    if node.op_type != "Transpose" or list(attrs(node).get("perm", [])) != [0, 3, 1, 2]:
        return None
    back = _node(g, ins[0], "Reshape")
    pad = back and _node(g, back[1][0], "Pad")
    to3d = pad and _node(g, pad[1][0], "Reshape")
    to_nhwc = to3d and _node(g, to3d[1][0], "Transpose")
    if not to_nhwc or list(attrs(to_nhwc[0]).get("perm", [])) != [0, 2, 3, 1]:
        return None
    x = to_nhwc[1][0]
    why = _problem(g, x, back, pad, to3d)
    if why:
        raise g.refuse(to_nhwc[0], f"a Transpose, Reshape, Pad, Reshape, Transpose chain that is not option A's zero "
                                   f"channels (Reshape to (N, H, W, C, 1), zeros on C, Reshape back): {why}")
    p = [int(v) for v in g.const(pad[0], pad[1][1]).reshape(-1)]
    return ChannelPadFacts(p[3], p[8]), x


def _problem(g, x, back, pad, to3d) -> str | None:
    dims = g.shape(x)
    if not dims or len(dims) != 4 or None in dims[1:]:
        return f"its input's shape {dims} is not known"
    c, h, w = dims[1:]
    mode = attrs(pad[0]).get("mode", b"constant")
    pads = g.consts.get(pad[1][1]) if len(pad[1]) > 1 else None
    value = g.consts.get(pad[1][2]) if len(pad[1]) > 2 and pad[1][2] else np.zeros(1)
    p = [int(v) for v in np.ravel(pads)] if pads is not None else []
    if mode not in (b"constant", "constant") or len(p) != 10 or value is None or np.any(np.asarray(value) != 0) \
            or any(v for k, v in enumerate(p) if k not in (3, 8)) or min(p) < 0:
        return f"a Pad of {p} (mode {mode!r}) where zeros are added to axis 3 of (N, H, W, C, 1) alone"
    out = g.consts.get(back[1][1])
    if out is None or [int(v) for v in np.ravel(out)][1:] != [h, w, c + p[3] + p[8]]:
        return f"reshaped back to {None if out is None else np.ravel(out).tolist()}, not (-1, {h}, {w}, " \
               f"{c + p[3] + p[8]})"
    shape = to3d[1][1]
    if shape in g.consts:
        given = [int(v) for v in np.ravel(g.consts[shape])][1:]
    else:  # the batch from the input's Shape: Concat(batch, H, W, C, 1), maybe cast
        cast = _node(g, shape, "Cast")
        cat = _node(g, cast[1][0] if cast else shape, "Concat")
        given = [int(np.ravel(g.consts[i])[0]) if i in g.consts and np.size(g.consts[i]) == 1 else None
                 for i in cat[1][1:]] if cat else None
    if given != [h, w, c, 1]:
        return f"reshaped to (N, {given}) before the Pad, not (N, {h}, {w}, {c}, 1)"
    return None
