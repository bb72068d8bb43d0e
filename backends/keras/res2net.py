"""Res2Net's split convs (``ir.Res2Net``) in stock Keras layers (NHWC), for the custom-layer and the stock
lowering alike (each passes its own op table, so a split's BN and pool lower as that table's do).

A split is ``Reshape`` to (H, W, C, 1), ``Cropping3D`` of the channel axis, ``Reshape`` back: a copy,
nothing computed. Split i < scale - 1 then goes through its conv, BN and ReLU (after an ``Add`` of the
previous output when the op cascades), the last split through the average pool or as is; one
``Concatenate`` joins them.
"""

from __future__ import annotations

from ... import ir
from .. import common


def _split(L, x, start: int, stop: int, base: str, namer):
    _, h, w, c = x.shape
    y = L.Reshape((h, w, c, 1), name=namer(f"{base}.as_3d"))(x)
    y = L.Cropping3D(((0, 0), (0, 0), (start, c - stop)), name=namer(f"{base}.crop"))(y)
    return L.Reshape((h, w, stop - start), name=namer(base))(y)


def relu_name(op: ir.Res2Net, i: int) -> str:
    """The canonical-style name of split conv ``i``'s ReLU layer (``layer1.0.relu_split0``)."""
    return f"{op.name}.relu_split{i}"


def lower(table: dict, L, op: ir.Res2Net, x, namer):
    """The layers of ``op`` reading ``x``; ``table`` lowers the split convs, BNs and the pool."""
    n, w = op.name, op.width
    splits = [_split(L, x, i * w, (i + 1) * w, f"{n}.split{i}", namer) for i in range(op.scale)]
    outs = []
    for i, (conv, bn) in enumerate(common.res2net_parts(op)):
        sp = L.Add(name=namer(f"{n}.add{i}"))([outs[-1], splits[i]]) if op.cascade and i else splits[i]
        y = table[ir.Conv](conv, sp, namer(conv.name), namer)
        if bn is not None:
            y = table[ir.BatchNorm](bn, y, namer(bn.name), namer)
        outs.append(L.Activation("relu", name=namer(relu_name(op, i)))(y))
    pool = common.res2net_pool(op)
    outs.append(splits[-1] if pool is None else table[ir.Pool](pool, splits[-1], namer(pool.name), namer))
    return L.Concatenate(axis=-1, name=namer(f"{n}.cat"))(outs)
