"""ONNX for ResNeSt's split attention (ir.SplitAttention): its BN folding (bn0 into the conv, bn1 into fc1,
as backends/onnx/fold.py does for every Conv + BN) and its nodes (opset 13 and later)."""

from __future__ import annotations

import dataclasses

from ... import ir
from .bn_fold import fold_bn


def fold_split_attention(op: ir.SplitAttention, weights, out: dict, dtype) -> ir.SplitAttention:
    """bn0 folded into the conv (``<name>.conv.bias`` appears) and bn1 into fc1, in float64, cast to ``dtype``
    once; the BN tensors leave ``out``. Returns the op with ``bn_folded`` set."""
    for conv, bn, bias in (("conv", "bn0", False), ("fc1", "bn1", True)):
        fold_bn(weights, out, f"{op.name}.{conv}", f"{op.name}.{bn}", op.eps, bias, dtype)
    return dataclasses.replace(op, bn_folded=True)


def split_attention_nodes(g, op: ir.SplitAttention, x: str, name: str) -> str:
    """Conv (groups * radix groups) [+ BN] + Relu; the radix splits as (N, radix, C, H, W) summed; mean; fc1
    [+ BN] + Relu; fc2; softmax across the radix of (N, groups, radix, C / groups), transposed to (N, radix,
    groups, C / groups) (Sigmoid for radix 1); the splits weighted and summed."""
    n, r, c = op.name, op.radix, op.channels
    _, h, w = op.out_shape
    u = _conv(g, op, "conv", x, (op.kernel, op.stride, op.padding, op.dilation, op.conv_groups))
    u = g.node("Relu", [_bn(g, op, "bn0", u)], f"{n}.act0")
    splits = u
    if r > 1:
        splits = g.node("Reshape", [u, g.const("shape", [0, r, c, h, w])], f"{n}.splits")
        u = g.node("ReduceSum", [splits, g.const("axes", [1])], f"{n}.sum", keepdims=0)
    s = g.node("GlobalAveragePool", [u], f"{n}.pool")
    s = g.node("Relu", [_bn(g, op, "bn1", _conv(g, op, "fc1", s, (1, 1, 0, 1, op.groups)))], f"{n}.act1")
    a = _conv(g, op, "fc2", s, (1, 1, 0, 1, op.groups))
    if r == 1:
        return g.node("Mul", [splits, g.node("Sigmoid", [a], f"{n}.gate")], f"{n}.scale")
    a = g.node("Reshape", [a, g.const("shape", [0, op.groups, r, c // op.groups])], f"{n}.to_radix")
    a = g.node("Softmax", [a], f"{n}.gate", axis=2)
    a = g.node("Transpose", [a], f"{n}.radix_first", perm=[0, 2, 1, 3])
    a = g.node("Reshape", [a, g.const("shape", [0, r, c, 1, 1])], f"{n}.to_splits")
    y = g.node("Mul", [splits, a], f"{n}.scale")
    return g.node("ReduceSum", [y, g.const("axes", [1])], f"{n}.weighted_sum", keepdims=0)


def _conv(g, op, leaf, x, geometry) -> str:
    """Conv ``<name>.<leaf>``; ``geometry`` is its (kernel, stride, padding, dilation, groups)."""
    (k, s, p, d, groups), c = geometry, f"{op.name}.{leaf}"
    has_bias = leaf != "conv" or op.bn_folded
    inputs = [x, g.weight(f"{c}.weight")] + ([g.weight(f"{c}.bias")] if has_bias else [])
    return g.node("Conv", inputs, c, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], dilations=[d, d],
                  group=groups)


def _bn(g, op, leaf, x) -> str:
    if op.bn_folded:
        return x
    b = f"{op.name}.{leaf}"
    return g.node("BatchNormalization", [x] + [g.weight(f"{b}.{t}") for t in ir.BN_LEAVES], b, epsilon=float(op.eps))
