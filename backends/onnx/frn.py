"""ONNX lowering of the norm-act ops (resnet_spec.ir_frn), in nodes of every opset this project writes (13
and up; reductions over H and W are ``GlobalAveragePool``, whose form does not change with the opset):

* FRN: ``Mul x x`` -> ``GlobalAveragePool`` (the mean square per sample and channel) -> ``Add eps`` ->
  ``Sqrt`` -> ``Div`` -> ``Mul`` weight, ``Add`` bias (C, 1, 1) -> with ``act`` ``Max`` tau (C, 1, 1).
* EvoNorm-S0 with ``act``: ``Reshape (N, G, 1, -1)`` -> ``GlobalAveragePool`` (the group mean) -> ``Sub``
  -> ``Mul`` by itself -> ``GlobalAveragePool`` (the biased group variance) -> ``Add eps`` -> ``Sqrt``; the
  numerator ``x * Sigmoid(x * v)`` divided by it group-wise (``Reshape`` to the groups and back), then the
  affine. Without ``act`` the affine alone.
"""

from __future__ import annotations

import numpy as np

from ... import ir


def _scalar(g, eps: float) -> str:
    name = f"const.eps.{float(eps)!r}"
    if name not in g.arrays:
        g._initializer(name, np.asarray([eps], np.float32))
    return name


def _per_channel(g, op, leaf: str, name: str) -> str:
    return g.node("Reshape", [g.weight(f"{op.name}.{leaf}"), g.const("shape", [op.channels, 1, 1])],
                  f"{name}.{leaf}_c11")


def _affine(g, op, y: str, name: str, last: bool) -> str:
    y = g.node("Mul", [y, _per_channel(g, op, "weight", name)], f"{name}.mul")
    return g.node("Add", [y, _per_channel(g, op, "bias", name)], name if last else f"{name}.add")


def frn(g, op: ir.FRN, x: str, name: str) -> str:
    ms = g.node("GlobalAveragePool", [g.node("Mul", [x, x], f"{name}.square")], f"{name}.mean_square")
    rms = g.node("Sqrt", [g.node("Add", [ms, _scalar(g, op.eps)], f"{name}.add_eps")], f"{name}.rms")
    y = _affine(g, op, g.node("Div", [x, rms], f"{name}.normalize"), name, last=not op.act)
    return g.node("Max", [y, _per_channel(g, op, "tau", name)], name) if op.act else y


def evonorm_s0(g, op: ir.EvoNormS0, x: str, name: str) -> str:
    if not op.act:
        return _affine(g, op, x, name, last=True)
    c, h, w = op.in_shape
    groups = g.const("shape", [0, op.groups, 1, -1])
    xg = g.node("Reshape", [x, groups], f"{name}.to_groups")
    d = g.node("Sub", [xg, g.node("GlobalAveragePool", [xg], f"{name}.mean")], f"{name}.centered")
    var = g.node("GlobalAveragePool", [g.node("Mul", [d, d], f"{name}.square")], f"{name}.variance")
    std = g.node("Sqrt", [g.node("Add", [var, _scalar(g, op.eps)], f"{name}.add_eps")], f"{name}.std")
    gate = g.node("Sigmoid", [g.node("Mul", [x, _per_channel(g, op, "v", name)], f"{name}.vx")], f"{name}.gate")
    num = g.node("Reshape", [g.node("Mul", [x, gate], f"{name}.gated"), groups], f"{name}.gated_groups")
    y = g.node("Reshape", [g.node("Div", [num, std], f"{name}.normalize"), g.const("shape", [0, c, h, w])],
               f"{name}.to_channels")
    return _affine(g, op, y, name, last=True)

