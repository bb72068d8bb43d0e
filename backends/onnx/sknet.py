"""SKNet's selective kernel (``ir.SelectiveKernel``) in ONNX: its BNs folded into the convs before them (as
``backends.onnx.fold`` does for every Conv + BN), then nodes computing timm's ``SelectiveKernel``::

    y_i = Relu(Conv_i(Slice(x) or x))                  (each path; Slice with split_input)
    s   = GlobalAveragePool(Sum(y_0 .. y_P-1))         (sum over the paths, then the mean)
    a   = Conv_select(Relu(Conv_reduce(s)))            (N, P*C, 1, 1), path-major
    a   = Softmax(Reshape(a, (0, P, C)), axis=1)       (across the paths; opset >= 13 semantics)
    out = Sum_i(y_i * Reshape(Slice(a, i), (0, C, 1, 1)))
"""

from __future__ import annotations

import dataclasses

from ... import ir
from .bn_fold import fold_bn


def fold(op: ir.SelectiveKernel, weights, out: dict, dtype) -> ir.SelectiveKernel:
    """``op`` with every BN folded into the conv before it (each path's conv, ``fc_reduce``): the folded
    weights go into ``out`` (float64 arithmetic, cast to ``dtype`` once), the BN tensors leave it."""
    pairs = [op.path_names(i) for i in range(op.num_paths)] + [op.attn_names[:2]]
    for conv, bn in pairs:
        fold_bn(weights, out, conv, bn, op.eps, False, dtype)
    return dataclasses.replace(op, folded=True)


def nodes(g, op: ir.SelectiveKernel, x: str, name: str) -> str:
    """The nodes of ``op`` (see the module docstring); BNs left in place when ``op`` is not folded."""
    n, c, p = op.name, op.out_channels, op.num_paths
    paths = []
    for i, (k, pad, d) in enumerate(zip(op.kernels, op.paddings, op.dilations)):
        conv, bn = op.path_names(i)
        xi = x
        if op.split_input:
            a, b = op.path_slice(i)
            xi = g.node("Slice", [x, g.const("starts", [a]), g.const("ends", [b]), g.const("axes", [1])],
                        f"{n}.paths.{i}.split")
        y = g.node("Conv", [xi, g.weight(f"{conv}.weight")] + ([g.weight(f"{conv}.bias")] if op.folded else []),
                   conv, kernel_shape=[k, k], strides=[op.stride] * 2, pads=[pad] * 4, dilations=[d, d],
                   group=op.groups)
        y = y if op.folded else _bn(g, op, y, bn)
        paths.append(g.node("Relu", [y], f"{n}.paths.{i}.act"))
    u = g.node("Sum", paths, f"{n}.sum") if p > 1 else paths[0]
    s = g.node("GlobalAveragePool", [u], f"{n}.attn.pool")
    reduce, bn, select = op.attn_names
    s = g.node("Conv", [s, g.weight(f"{reduce}.weight")] + ([g.weight(f"{reduce}.bias")] if op.folded else []),
               reduce, kernel_shape=[1, 1])
    s = s if op.folded else _bn(g, op, s, bn)
    s = g.node("Relu", [s], f"{n}.attn.act")
    s = g.node("Conv", [s, g.weight(f"{select}.weight")], select, kernel_shape=[1, 1])
    s = g.node("Reshape", [s, g.const("shape", [0, p, c])], f"{n}.attn.to_paths")  # 0: the symbolic batch
    s = g.node("Softmax", [s], f"{n}.attn.softmax", axis=1)
    weighted = []
    for i, y in enumerate(paths):
        a = g.node("Slice", [s, g.const("starts", [i]), g.const("ends", [i + 1]), g.const("axes", [1])],
                   f"{n}.attn.path{i}")
        a = g.node("Reshape", [a, g.const("shape", [0, c, 1, 1])], f"{n}.attn.path{i}.to_channels")
        weighted.append(g.node("Mul", [y, a], f"{n}.paths.{i}.scale"))
    return g.node("Sum", weighted, name) if p > 1 else weighted[0]


def _bn(g, op, x: str, bn: str) -> str:
    return g.node("BatchNormalization", [x] + [g.weight(f"{bn}.{leaf}") for leaf in ir.BN_LEAVES], bn,
                  epsilon=float(op.eps))
