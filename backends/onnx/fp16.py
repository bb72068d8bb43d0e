"""float16 ONNX: weights and compute in float16, input and output float32 unless asked otherwise.

How the file is made (``convert --to onnx --dtype float16 [--io-dtype float16]``):

1. BN is folded into the convolutions in float64 (:func:`backends.onnx.fold.fold_batchnorm` with
   ``dtype=float64``), so the folded weights ``W * s`` and biases ``(b - mean) * s + beta`` are rounded
   once, straight to float16 -- never float64 -> float32 -> float16.
2. Every tensor is checked before the cast: finite (a zero or negative ``running_var + eps`` makes
   ``s = gamma / sqrt(var + eps)`` NaN or Inf) and within float16's range (|x| <= 65504). A tensor
   that fails is named in one error; nothing is written.
3. The graph is built as usual from those float16-exact values, then :func:`to_float16` retypes the
   finished ModelProto: float initializers (weights and the pooling constants of backends.onnx.pool, whose 0,
   -inf and small ratios are exact or within one float16 rounding) become FLOAT16; with float32 I/O a
   ``Cast`` after ``input`` and one before ``logits`` keep the interface of the float32 file; tap
   outputs (``taps=True``) are float16.
4. The classifier ``Gemm`` runs in float32 (:func:`_gemm_in_float32`): its float16 input and weights
   are cast up; with float32 I/O it writes the float32 logits directly (no float16 rounding of the
   logits), else its result is cast back to float16. A float16 Gemm may accumulate its K products in
   float16: onnxruntime 1.29.0's CPU kernel does (measured: its output is bit-identical to summing the
   products one by one in float16), and for K = 2048 inputs that error reached 1.3e-2 of the logit
   scale, against one float16 rounding (2**-11 relative) for a float32 accumulation. No release showed
   such a problem with the convolutions (docs/deployment.md), so only the Gemm pays for the Casts.

Accuracy: float16 has a relative step of 2**-11 (4.9e-4). Measured against the float64 torch
reference the files stay within :data:`resnet_spec.verify.FLOAT16_TOL` of the logit scale
(docs/deployment.md), which is what ``verify`` checks for a float16 file.
"""

from __future__ import annotations

import numpy as np

FLOAT16_MAX = 65504.0
IO_DTYPES = ("float32", "float16")  # the float16 file's input/output dtype


def half_weights(net, weights, fold_bn: bool):
    """``(net, weights)`` with BN folded in float64 (when ``fold_bn``) and every value rounded once to
    float16 (held in float32 arrays, which represent float16 values exactly)."""
    from ...errors import ResNetSpecError
    from ...weights.check import check_weights
    from .fold import fold_batchnorm

    from .norm import standardize_convs

    weights = check_weights(net, weights, "weights", allow_nonfinite=True)
    net, weights = standardize_convs(net, weights, dtype=np.float64)  # weight standardization, in float64
    if fold_bn:
        net, weights = fold_batchnorm(net, weights, dtype=np.float64)
    out = {}
    for name, arr in weights.items():
        a = np.asarray(arr, np.float64)
        if not np.isfinite(a).all():
            raise ResNetSpecError(f"onnx float16: tensor {name!r} has NaN or Inf values"
                                  + (" after folding BN (running_var + eps <= 0?)" if fold_bn else ""))
        big = float(np.abs(a).max()) if a.size else 0.0
        if big > FLOAT16_MAX:
            raise ResNetSpecError(f"onnx float16: tensor {name!r} reaches {big:.4g}, beyond float16's range "
                                  f"(+-{FLOAT16_MAX:g}); keep this model in float32")
        out[name] = a.astype(np.float16).astype(np.float32)
    return net, out


def to_float16(model, arrays: dict, io_dtype: str = "float32"):
    """Retype a finished ModelProto (data-less initializers + ``arrays``) to float16, in place."""
    from onnx import TensorProto, helper

    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.data_type = TensorProto.FLOAT16
            arrays[t.name] = np.ascontiguousarray(arrays[t.name], dtype="<f2")
    graph = model.graph
    x, y = graph.input[0], graph.output[0]
    direct = _gemm_in_float32(graph, y.name if io_dtype == "float32" else None)
    for vi in list(graph.input) + list(graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    if io_dtype == "float16":
        return model, arrays
    x.type.tensor_type.elem_type = TensorProto.FLOAT
    y.type.tensor_type.elem_type = TensorProto.FLOAT
    inner_x, inner_y = f"{x.name}.float16", f"{y.name}.float16"
    for node in graph.node:
        node.input[:] = [inner_x if i == x.name else i for i in node.input]
        if not direct:
            node.output[:] = [inner_y if o == y.name else o for o in node.output]
    tail = [] if direct else [helper.make_node("Cast", [inner_y], [y.name], name=f"{y.name}.float32",
                                               to=TensorProto.FLOAT)]
    nodes = [helper.make_node("Cast", [x.name], [inner_x], name=inner_x, to=TensorProto.FLOAT16), *graph.node,
             *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    return model, arrays


def _gemm_in_float32(graph, float32_output=None) -> bool:
    """Wrap every Gemm as Cast(float32) -> Gemm -> Cast(float16), in place (see point 4 above); a Gemm
    that makes ``float32_output`` writes it directly, in float32. Returns whether one did. The same for every
    InstanceNormalization (GroupNorm's statistics, backends/onnx/norm.py): a group's mean and variance over
    thousands of float16 values, squares of a pre-activation network's growing residual sums, overflow or
    lose float16's precision (onnx's ReferenceEvaluator computed resnetv2_50x1_bit's logits 1.0 of their
    scale off, ONNX Runtime 1.9e-2); the normalized output, of order 1, is cast back."""
    from onnx import TensorProto, helper

    nodes, direct = [], False
    for node in graph.node:
        if node.op_type not in ("Gemm", "InstanceNormalization"):
            nodes.append(node)
            continue
        # (InstanceNormalization's shared scale and bias constants: one Cast, one output name per node)
        ups = [helper.make_node("Cast", [i], [f"{i}.float32" if node.op_type == "Gemm" else f"{node.name}.{k}.float32"],
                                name=f"{node.name}.{k}.float32", to=TensorProto.FLOAT) for k, i in enumerate(node.input)]
        out = node.output[0]
        node.input[:] = [u.output[0] for u in ups]
        if out == float32_output:
            direct = True
            nodes.extend([*ups, node])
            continue
        node.output[:] = [f"{out}.float32"]
        down = helper.make_node("Cast", [f"{out}.float32"], [out], name=f"{node.name}.float16",
                                to=TensorProto.FLOAT16)
        nodes.extend([*ups, node, down])
    del graph.node[:]
    graph.node.extend(nodes)
    return direct


def skeleton(net, weights, *, io_dtype: str = "float32", fold_bn: bool = True, **options):
    """:func:`backends.onnx.graph.skeleton` for a float16 file: ``(model, arrays)``."""
    from ...errors import ResNetSpecError
    from .graph import skeleton as float_skeleton

    if io_dtype not in IO_DTYPES:
        raise ResNetSpecError(f"onnx: io dtype {io_dtype!r} is not supported; choose from {', '.join(IO_DTYPES)}")
    net, weights = half_weights(net, weights, fold_bn)
    model, arrays = float_skeleton(net, weights, fold_bn=False, **options)
    return to_float16(model, arrays, io_dtype)
