"""Res2Net's split convs (``ir.Res2Net``) in ONNX, and the folding of their BNs into the convs.

Each split is a ``Slice`` of the channels; split i < scale - 1 is ``Conv`` (its BN folded in, see
:func:`fold`) and ``Relu``, after an ``Add`` of the previous output when the op cascades; the last split
is passed on or average pooled (``backends.onnx.pool``, as any pool); one ``Concat`` joins them.
"""

from __future__ import annotations

import dataclasses

from ... import ir
from .bn_fold import fold_bn
from .. import common
from .pool import pool_to_nodes


def lower(g, op: ir.Res2Net, x: str, name: str) -> str:
    w, k, s, p, d = op.width, op.kernel, op.stride, op.padding, op.dilation
    n, outs = op.name, []
    splits = [g.node("Slice", [x, g.const("starts", [i * w]), g.const("ends", [(i + 1) * w]), g.const("axes", [1])],
                     f"{n}.split{i}") for i in range(op.scale)]
    for i in range(op.convs):
        sp = g.node("Add", [outs[-1], splits[i]], f"{n}.add{i}") if op.cascade and i else splits[i]
        conv = op.conv_name(i)
        inputs = [sp, g.weight(f"{conv}.weight")] + ([g.weight(f"{conv}.bias")] if op.bias else [])
        y = g.node("Conv", inputs, conv, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], dilations=[d, d],
                   group=op.groups)
        if op.norm:
            bn = op.bn_name(i)
            y = g.node("BatchNormalization", [y] + [g.weight(f"{bn}.{leaf}") for leaf in ir.BN_LEAVES], bn,
                       epsilon=float(op.eps))
        outs.append(g.node("Relu", [y], f"{n}.relu{i}"))
    pool = common.res2net_pool(op)
    outs.append(splits[-1] if pool is None else pool_to_nodes(g, pool, splits[-1], pool.name))
    return g.node("Concat", outs, f"{n}.cat", axis=1)


def fold(op: ir.Res2Net, weights, out: dict, dtype) -> ir.Res2Net:
    """``op`` with every ``bns.i`` folded into ``convs.i`` (as ``backends.onnx.fold`` folds a BN after a
    conv: float64 arithmetic, cast to ``dtype`` once); ``out`` gets the new tensors, loses the BNs'."""
    if not op.norm:
        return op
    for i in range(op.convs):
        fold_bn(weights, out, op.conv_name(i), op.bn_name(i), op.eps, op.bias, dtype)
    return dataclasses.replace(op, bias=True, norm=False)
