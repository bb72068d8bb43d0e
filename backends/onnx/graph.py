"""How the IR becomes ONNX nodes: one lowering per IR op (:data:`OPS`), driven by the shared walk of
``backends/common.py``, and the model around the graph (inputs, outputs, opset, metadata).

A bottleneck block becomes: its main branch's Conv (+ folded BN) / Relu nodes, its shortcut's nodes
(a projection Conv, an AveragePool, or Slice + Pad for option A; none for the identity), one ``Add``
named ``<block>.add`` whose output value is renamed to the block's name (its tap), then the post
``Relu``. See ``backends.onnx.backend``'s docstring for the file's interface.
"""

from __future__ import annotations

import numpy as np

from ... import ir
from . import frn, norm
from . import res2net
from . import sknet
from .blur import blur_nodes
from .pool import pool_to_nodes as pool_nodes  # rewrite-proof pooling: see backends.onnx.pool
from .resnest import split_attention_nodes
from ...errors import BackendUnavailable, ResNetSpecError
from ...naming import UniqueNames
from .. import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, common

try:
    import onnx
    from onnx import TensorProto, helper
except ImportError:  # pragma: no cover - exercised only without onnx
    onnx = None

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"

META_NAME = "resnet_spec.name"
META_SPEC = "resnet_spec.spec"
META_VERSION = "resnet_spec.version"
PRODUCER = "resnet-spec"


def available() -> str | None:
    if onnx is None:
        return "onnx is not installed (pip install 'resnet-spec[onnx]')"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # pragma: no cover - exercised only without onnxruntime
        return "onnxruntime is not installed (pip install 'resnet-spec[onnx]')"
    return None


def require(runtime: bool = False) -> None:
    """Refuse with :class:`BackendUnavailable` when onnx (or, for ``runtime``, onnxruntime) is missing."""
    reason = available()
    if onnx is None or (runtime and reason):
        raise BackendUnavailable(reason)


class Graph:
    """Nodes and initializers under construction, written straight into ``self.graph`` (a GraphProto).
    Initializers get name, type and shape there; their data stays in ``self.arrays`` (little-endian,
    contiguous) until :func:`build` copies it in or :func:`convert` streams it to the file, so that
    hundreds of MB of weights are not copied from message to message. Every node has one output,
    named like the node."""

    def __init__(self, weights, graph=None):
        self.weights = weights
        self.graph = graph if graph is not None else onnx.GraphProto()
        self.nodes = self.graph.node
        self.arrays = {}
        self._names = UniqueNames("_")

    def _initializer(self, name: str, arr: np.ndarray) -> None:
        t = self.graph.initializer.add()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        self.arrays[name] = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))

    def weight(self, name: str) -> str:
        if name not in self.arrays:
            if name not in self.weights:
                from ...errors import WeightsError

                raise WeightsError(f"weights: missing tensor {name!r}")
            self._initializer(name, np.asarray(self.weights[name], dtype=np.float32))
        return name

    def const(self, name: str, values) -> str:
        """An int64 constant initializer (Slice/Pad arguments), shared by identical uses."""
        arr = np.asarray(values, dtype=np.int64)
        name = f"const.{name}." + "_".join(str(v) for v in arr.tolist())
        if name not in self.arrays:
            self._initializer(name, arr)
        return name

    def node(self, op_type: str, inputs: list, name: str, **attrs) -> str:
        name = self._names.take(name)
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def rename_output(self, value: str, new: str) -> str:
        """Give ``value`` (the newest node's output, not yet consumed) the name ``new``."""
        last = self.nodes[-1] if len(self.nodes) else None
        if last is None or last.output[0] != value:
            # Only reachable for an op list that emitted no node (e.g. a stem of inference-only ops).
            return self.node("Identity", [value], new)
        self._names.used.add(new)
        last.output[0] = new
        return new


def _conv(g: Graph, op: ir.Conv, x: str, name: str) -> str:
    inputs = [x, g.weight(f"{op.name}.weight")] + ([g.weight(f"{op.name}.bias")] if op.bias else [])
    k, s, p, d = op.kernel, op.stride, op.padding, op.dilation
    return g.node("Conv", inputs, name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                  dilations=[d, d], group=op.groups)


def _batchnorm(g: Graph, op: ir.BatchNorm, x: str, name: str) -> str:
    return g.node("BatchNormalization", [x] + [g.weight(f"{op.name}.{leaf}") for leaf in ir.BN_LEAVES], name,
                  epsilon=float(op.eps))


def _subsample(g: Graph, op: ir.Subsample, x: str, name: str) -> str:
    s = op.stride
    return g.node("Slice", [x, g.const("starts", [0, 0]), g.const("ends", [2**62, 2**62]), g.const("axes", [2, 3]),
                            g.const("steps", [s, s])], name)


def _channel_pad(g: Graph, op: ir.ChannelPad, x: str, name: str) -> str:
    return g.node("Pad", [x, g.const("pads", [0, op.before, 0, 0, 0, op.after, 0, 0])], name, mode="constant")


def _squeeze_excite(g: Graph, op: ir.SqueezeExcite, x: str, name: str) -> str:
    n = op.name
    s = g.node("GlobalAveragePool", [x], f"{n}.pool")
    s = g.node("Conv", [s, g.weight(f"{n}.fc1.weight"), g.weight(f"{n}.fc1.bias")], f"{n}.fc1", kernel_shape=[1, 1])
    s = g.node("Relu", [s], f"{n}.relu")
    s = g.node("Conv", [s, g.weight(f"{n}.fc2.weight"), g.weight(f"{n}.fc2.bias")], f"{n}.fc2", kernel_shape=[1, 1])
    s = g.node("Sigmoid", [s], f"{n}.gate")
    return g.node("Mul", [x, s], f"{n}.scale")


def _eca(g: Graph, op: ir.ECA, x: str, name: str) -> str:
    """timm's EcaModule: the channel means as a length-C sequence of one channel, (N, 1, C), a 1-D Conv
    with the canonical (1, 1, k) weight and symmetric zero padding, then the gate back as (N, C, 1, 1)."""
    n, c, p = op.name, op.channels, op.padding
    s = g.node("GlobalAveragePool", [x], f"{n}.pool")
    s = g.node("Reshape", [s, g.const("shape", [0, 1, c])], f"{n}.to_sequence")  # 0: keep the (symbolic) batch
    s = g.node("Conv", [s, g.weight(f"{n}.conv.weight")], f"{n}.conv", kernel_shape=[op.kernel], pads=[p, p])
    s = g.node("Sigmoid", [s], f"{n}.gate")
    s = g.node("Reshape", [s, g.const("shape", [0, c, 1, 1])], f"{n}.to_channels")
    return g.node("Mul", [x, s], f"{n}.scale")


def _global_avg_pool(g: Graph, op: ir.GlobalAvgPool, x: str, name: str) -> str:
    x = g.node("GlobalAveragePool", [x], name)
    return g.node("Flatten", [x], common.sibling(name, "flatten"), axis=1)


def _linear(g: Graph, op: ir.Linear, x: str, name: str) -> str:
    inputs = [x, g.weight(f"{op.name}.weight")] + ([g.weight(f"{op.name}.bias")] if op.bias else [])
    return g.node("Gemm", inputs, name, transB=1)


def _identity(g: Graph, op, x: str, name: str) -> str:
    return x  # Dropout and DropPath: identities at inference, no node


#: How each IR op becomes ONNX nodes: ``(graph, op, input value, name) -> output value``.
OPS = {
    ir.Conv: _conv,
    ir.BatchNorm: _batchnorm,
    ir.ReLU: lambda g, op, x, name: g.node("Relu", [x], name),
    ir.Pool: lambda g, op, x, name: pool_nodes(g, op, x, name),
    ir.Subsample: _subsample,
    ir.ChannelPad: _channel_pad,
    ir.SqueezeExcite: _squeeze_excite,
    ir.ECA: _eca,
    ir.DropPath: _identity,
    ir.Dropout: _identity,
    ir.GlobalAvgPool: _global_avg_pool,
    ir.Res2Net: res2net.lower,
    ir.Linear: _linear,
    ir.SplitAttention: split_attention_nodes,
    ir.SelectiveKernel: sknet.nodes,
    ir.GroupNorm: norm.group_norm,
    ir.StdConv: norm.std_conv,
    ir.BlurPool: blur_nodes,
    ir.FRN: frn.frn,
    ir.EvoNormS0: frn.evonorm_s0,
}


class _Lowering(common.Lowering):
    """The shared walk (backends/common.py) emitting nodes into ``g``; each tap value is renamed to
    the tap's name (``stem``, ``layer2.0``; the head's to ``logits``)."""

    table, backend = OPS, "onnx"

    def __init__(self, g: Graph, has_stem: bool):
        self.g, self.has_stem = g, has_stem

    def op(self, op, x, name, tap):
        return self.lowering_of(op)(self.g, op, x, name)

    def add(self, y, s, block, tap):
        return self.g.node("Add", [y, s], f"{block.name}.add")

    def tap(self, x, name):
        if name == common.STEM and not self.has_stem:
            return x
        return self.g.rename_output(x, OUTPUT_NAME if name == common.HEAD else name)


def _entry(g: Graph, layout: str) -> str:
    """The graph's input as NCHW: the input itself, or a ``Transpose`` of an NHWC input (the shared entry
    transpose of :func:`backends.common.entry_permutation`)."""
    perm = common.entry_permutation(layout, "nchw")
    if perm is None:
        return INPUT_NAME
    return g.node("Transpose", [INPUT_NAME], common.ENTRY_NAMES["nchw"], perm=list(perm))


def _value_info(name: str, shape: tuple, batch):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch if batch else BATCH_DIM, *shape])


def _check_options(opset, batch) -> None:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ResNetSpecError(f"onnx: opset {opset!r} is not supported; choose {MIN_OPSET} to {MAX_OPSET} "
                              f"(default {DEFAULT_OPSET})")
    if opset > onnx.defs.onnx_opset_version():
        raise BackendUnavailable(f"onnx: opset {opset} needs a newer onnx than {onnx.__version__} (its newest "
                                 f"opset is {onnx.defs.onnx_opset_version()})")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ResNetSpecError(f"onnx: batch must be a positive integer, got {batch!r}")


def skeleton(net: ir.Network, weights, *, fold_bn: bool = True, batch: int | None = None,
             opset: int = DEFAULT_OPSET, taps: bool = False, layout: str = "nchw"):
    """The model of ``backends.onnx.backend.build`` with data-less initializers, and ``{initializer name: array}``
    (the data, kept out of the message until it is copied in or streamed to a file). ``layout``: the
    input's, 'nchw' or 'nhwc' (one Transpose into the NCHW graph), recorded in the metadata."""
    _check_options(opset, batch)
    common.check_layout(layout, "onnx")
    from ...weights.check import check_weights
    from .fold import fold_batchnorm

    weights = check_weights(net, weights, "weights", allow_nonfinite=True)
    if fold_bn:
        net, weights = fold_batchnorm(net, weights)
    model = onnx.ModelProto()
    g = Graph(weights, model.graph)
    common.walk(_Lowering(g, bool(net.stem)), net, _entry(g, layout))

    graph = model.graph
    graph.name = net.name
    graph.input.append(_value_info(INPUT_NAME, common.input_dims(net.input_shape, layout), batch))
    graph.output.append(_value_info(OUTPUT_NAME, (net.num_classes,), batch))
    if taps:
        shapes = net.tap_shapes()
        graph.output.extend(_value_info(t, shapes[t], batch) for t in net.tap_names() if t != common.HEAD)
    opsets = [helper.make_opsetid("", opset)]
    model.opset_import.extend(opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    model.producer_name = PRODUCER
    model.producer_version = _version()
    model.doc_string = net.description or net.name
    helper.set_model_props(model, {META_NAME: net.name, META_SPEC: net.spec_yaml, META_VERSION: _version(),
                                   common.META_LAYOUT: layout})
    return model, g.arrays


def _version() -> str:
    from ... import __version__

    return __version__
