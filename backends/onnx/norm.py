"""ONNX lowering of the ops without running statistics (resnet_spec.ir_norm), in nodes every onnxruntime
from 1.17 runs at every opset this project writes (13 and up): no GroupNormalization (opset 18, re-specified
in 21), but InstanceNormalization (opset 6) over a reshaped tensor.

* GroupNorm: ``Reshape (N, G, -1)`` -> ``InstanceNormalization`` (scale 1, bias 0, the op's eps: per sample
  and group, mean and biased variance) -> ``Reshape (N, C, H, W)`` -> ``Mul`` weight, ``Add`` bias (C, 1, 1).
* StdConv: the raw weight ``Reshape (1, out, -1)`` -> ``InstanceNormalization`` (the op's eps: per output
  filter, biased variance) -> ``Reshape`` back -> ``Conv``. Computed in the graph from the stored raw weight
  (ONNX Runtime folds it once at session start with its optimizations on, the same kernel either way).
  The float16 and int8 files take the weights standardized beforehand in float64 instead
  (:func:`standardize_convs`: an inference-only rewrite, StdConv -> Conv).

The import reads both patterns back (:mod:`.patterns_norm`).
"""

from __future__ import annotations

import numpy as np

from ... import ir
from ..standardize import standardize_convs  # noqa: F401  (the float16 and int8 files')


def _float_const(g, name: str, arr) -> str:
    arr = np.asarray(arr, np.float32)
    name = f"const.{name}.{arr.size}"
    if name not in g.arrays:
        g._initializer(name, arr)
    return name


def _instance_norm(g, x: str, channels: int, eps: float, name: str) -> str:
    return g.node("InstanceNormalization", [x, _float_const(g, "ones", np.ones(channels)),
                                            _float_const(g, "zeros", np.zeros(channels))], name, epsilon=float(eps))


def group_norm(g, op: ir.GroupNorm, x: str, name: str) -> str:
    c, h, w = op.in_shape
    y = g.node("Reshape", [x, g.const("shape", [0, op.groups, -1])], f"{name}.to_groups")
    y = _instance_norm(g, y, op.groups, op.eps, f"{name}.normalize")
    y = g.node("Reshape", [y, g.const("shape", [0, c, h, w])], f"{name}.to_channels")
    scale = g.node("Reshape", [g.weight(f"{op.name}.weight"), g.const("shape", [c, 1, 1])], f"{name}.scale")
    shift = g.node("Reshape", [g.weight(f"{op.name}.bias"), g.const("shape", [c, 1, 1])], f"{name}.shift")
    return g.node("Add", [g.node("Mul", [y, scale], f"{name}.mul"), shift], name)


def std_conv(g, op: ir.StdConv, x: str, name: str) -> str:
    shape = [op.out_channels, op.in_channels // op.groups, op.kernel, op.kernel]
    w = g.node("Reshape", [g.weight(f"{op.name}.weight"), g.const("shape", [1, op.out_channels, -1])],
               f"{name}.weight_rows")
    w = _instance_norm(g, w, op.out_channels, op.eps, f"{name}.standardize")
    w = g.node("Reshape", [w, g.const("shape", shape)], f"{name}.standardized")
    inputs = [x, w] + ([g.weight(f"{op.name}.bias")] if op.bias else [])
    k, s, p, d = op.kernel, op.stride, op.padding, op.dilation
    return g.node("Conv", inputs, name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                  dilations=[d, d], group=op.groups)
