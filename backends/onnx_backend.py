"""ONNX backend: IR + canonical weights -> ``onnx.ModelProto``, built node by node with ``onnx.helper``.

No tracing or exporting is involved: every node comes from one IR op (see :func:`block_to_nodes` and
:func:`op_to_nodes`), so the graph has exactly the ops the spec describes and nothing else.

The file's interface
--------------------
* Input ``input``: float32, NCHW ``(batch, C, H, W)``. The batch dimension is symbolic, named ``batch``
  (``dim_param``), unless a fixed ``batch=N`` is asked for; C, H and W are the spec's input shape.
* Output ``logits``: float32 ``(batch, classes)``.
* Initializers carry the canonical tensor names (``layer1.0.conv1.weight``, ``fc.bias``). With BN
  folding (the default) a convolution followed by BatchNorm keeps its own name and gains a bias:
  ``layer1.0.conv1.weight`` and ``layer1.0.conv1.bias`` hold the folded values and the BN's tensors
  disappear. A BN that follows no convolution (pre-activation nets: the BN opening a block, the final
  ``bn_final``) is kept as a ``BatchNormalization`` node with its four canonical tensors: one node
  rather than a Mul+Add pair, and the stored numbers stay the canonical ones.
  Non-weight constants (Slice and Pad arguments) are named ``const.*``.
* Values (node outputs) are named after the op that produces them; the output of the stem is named
  ``stem`` and each block's output carries the block's name (``layer2.0``), which is how
  ``taps=True`` exposes them as extra graph outputs.
* ``metadata_props``: ``resnet_spec.name`` (spec name), ``resnet_spec.spec`` (the merged, self-contained
  spec YAML; :func:`inspect` prints it back) and ``resnet_spec.version``. ``producer_name`` is
  ``resnet-spec``.
* Opsets :data:`MIN_OPSET` (13) to :data:`MAX_OPSET` (28) are supported, default
  :data:`DEFAULT_OPSET` (17); each one is checked with ``onnx.checker`` and run in ONNX Runtime by
  the tests. The IR version is the lowest one that carries the chosen opset, so older runtimes can
  read the file.
* When the initializers exceed :data:`EXTERNAL_DATA_THRESHOLD` bytes (protobuf cannot serialise
  messages over 2 GiB), tensors go to ``<name>.onnx.data`` beside ``<name>.onnx``.

Dropout and DropPath are identities at inference and produce no nodes.

:func:`infer` runs the model in ONNX Runtime on exactly the provider asked for (CPU, or CUDA when
``CUDAExecutionProvider`` is installed; never a silent fallback), float32 only, with ORT's default
graph optimisation (``ORT_ENABLE_ALL``) and intra-op thread count (one per physical core) unless the
``optimization``/``threads`` options say otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from .. import ir
from ..errors import BackendUnavailable, ResNetSpecError
from ..naming import UniqueNames
from . import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET  # framework-free facts, shared with the CLI
from .onnx_pool import pool_to_nodes

NAME = "onnx"


INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"

META_NAME = "resnet_spec.name"
META_SPEC = "resnet_spec.spec"
META_VERSION = "resnet_spec.version"
PRODUCER = "resnet-spec"

# Protobuf refuses to serialise a message of 2 GiB or more; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27
# Tensors smaller than this stay inline even in an external-data file (constants, biases).
_EXTERNAL_MIN_BYTES = 1024

try:
    import onnx
    from onnx import TensorProto, helper
except ImportError:  # pragma: no cover - exercised only without onnx
    onnx = None

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only without onnxruntime
    ort = None


def available() -> str | None:
    if onnx is None:
        return "onnx is not installed (pip install 'resnet-spec[onnx]')"
    if ort is None:
        return "onnxruntime is not installed (pip install 'resnet-spec[onnx]')"
    return None


def _require(runtime: bool = False):
    if onnx is None or (runtime and ort is None):
        raise BackendUnavailable(available())


# -- BN folding ---------------------------------------------------------------------------------


def fold_batchnorm(net: ir.Network, weights, dtype=np.float32) -> tuple:
    """Fold every BatchNorm that directly follows a Conv into that Conv; return ``(net, weights)``.

    With ``s = gamma / sqrt(running_var + eps)`` per output channel::

        W' = W * s            (each output channel's filter scaled by its s)
        b' = (b - running_mean) * s + beta      (b = 0 for a conv without bias)

    so ``conv'(x) = bn(conv(x))`` exactly in real arithmetic. The arithmetic is done in float64 and
    cast to ``dtype`` once (float32; float64 for onnx_fp16, which rounds to float16 itself). The
    folded Conv keeps its canonical name and gets ``bias=True``
    (``<conv>.weight``/``<conv>.bias``); the BN op and its four tensors are removed. A BN that follows
    anything else (a block's pre-activation, the head's ``bn_final``) is left in place. The returned
    network is a new IR; ``net`` and ``weights`` are not modified.
    """
    out = dict(weights)

    def fold_seq(ops: tuple) -> tuple:
        res = []
        for op in ops:
            prev = res[-1] if res else None
            if isinstance(op, ir.BatchNorm) and isinstance(prev, ir.Conv):
                b = (np.asarray(weights[f"{prev.name}.bias"], np.float64) if prev.bias
                     else np.zeros(prev.out_channels))
                gamma = np.asarray(weights[f"{op.name}.weight"], np.float64)
                beta = np.asarray(weights[f"{op.name}.bias"], np.float64)
                mean = np.asarray(weights[f"{op.name}.running_mean"], np.float64)
                var = np.asarray(weights[f"{op.name}.running_var"], np.float64)
                s = gamma / np.sqrt(var + op.eps)
                # Multiplied in float64 and rounded to float32 once, in one buffered pass (no float64 copy).
                w = weights[f"{prev.name}.weight"]
                out[f"{prev.name}.weight"] = np.multiply(w, s[:, None, None, None], dtype=np.float64,
                                                         out=np.empty(w.shape, dtype), casting="same_kind")
                out[f"{prev.name}.bias"] = ((b - mean) * s + beta).astype(dtype)
                for leaf in ("weight", "bias", "running_mean", "running_var"):
                    out.pop(f"{op.name}.{leaf}", None)
                res[-1] = dataclasses.replace(prev, bias=True, out_shape=op.out_shape)
                continue
            res.append(op)
        return tuple(res)

    blocks = tuple(dataclasses.replace(b, pre=fold_seq(b.pre), main=fold_seq(b.main),
                                       shortcut=fold_seq(b.shortcut), post=fold_seq(b.post))
                   for b in net.blocks)
    folded = dataclasses.replace(net, stem=fold_seq(net.stem), blocks=blocks, head=fold_seq(net.head))
    return folded, out


# -- graph construction -------------------------------------------------------------------------


class _Graph:
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
                from ..errors import WeightsError

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


def op_to_nodes(g: _Graph, op, x: str, owner: str) -> str:
    """Append the nodes for one IR op reading value ``x``; return the value it produces.

    ``owner`` (block name or '' for stem/head) prefixes the node names of ops without a name.
    """
    prefix = f"{owner}." if owner else ""
    if isinstance(op, ir.Conv):
        inputs = [x, g.weight(f"{op.name}.weight")] + ([g.weight(f"{op.name}.bias")] if op.bias else [])
        k, s, p, d = op.kernel, op.stride, op.padding, op.dilation
        return g.node("Conv", inputs, op.name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                      dilations=[d, d], group=op.groups)
    if isinstance(op, ir.BatchNorm):
        inputs = [x] + [g.weight(f"{op.name}.{leaf}") for leaf in ("weight", "bias", "running_mean", "running_var")]
        return g.node("BatchNormalization", inputs, op.name, epsilon=float(op.eps))
    if isinstance(op, ir.ReLU):
        return g.node("Relu", [x], f"{prefix}relu")
    if isinstance(op, ir.Pool):
        return pool_to_nodes(g, op, x, op.name)  # rewrite-proof forms: see onnx_pool
    if isinstance(op, ir.Subsample):
        s = op.stride
        return g.node("Slice", [x, g.const("starts", [0, 0]), g.const("ends", [2**62, 2**62]),
                                g.const("axes", [2, 3]), g.const("steps", [s, s])], f"{prefix}subsample")
    if isinstance(op, ir.ChannelPad):
        pads = g.const("pads", [0, op.before, 0, 0, 0, op.after, 0, 0])
        return g.node("Pad", [x, pads], f"{prefix}channel_pad", mode="constant")
    if isinstance(op, ir.SqueezeExcite):
        n = op.name
        s = g.node("GlobalAveragePool", [x], f"{n}.pool")
        s = g.node("Conv", [s, g.weight(f"{n}.fc1.weight"), g.weight(f"{n}.fc1.bias")], f"{n}.fc1", kernel_shape=[1, 1])
        s = g.node("Relu", [s], f"{n}.relu")
        s = g.node("Conv", [s, g.weight(f"{n}.fc2.weight"), g.weight(f"{n}.fc2.bias")], f"{n}.fc2", kernel_shape=[1, 1])
        s = g.node("Sigmoid", [s], f"{n}.gate")
        return g.node("Mul", [x, s], f"{n}.scale")
    if isinstance(op, (ir.Dropout, ir.DropPath)):
        return x  # identities at inference
    if isinstance(op, ir.GlobalAvgPool):
        x = g.node("GlobalAveragePool", [x], f"{prefix}avgpool")
        return g.node("Flatten", [x], f"{prefix}flatten", axis=1)
    if isinstance(op, ir.Linear):
        inputs = [x, g.weight(f"{op.name}.weight")] + ([g.weight(f"{op.name}.bias")] if op.bias else [])
        return g.node("Gemm", inputs, op.name, transB=1)
    raise TypeError(f"no ONNX lowering for {type(op).__name__}")


def block_to_nodes(g: _Graph, block: ir.Block, x: str) -> str:
    """How a residual block becomes ONNX nodes: ``y = post(main(a) + shortcut(s))``.

    ``a = pre(x)``; the shortcut reads ``a`` when ``shortcut_from == 'pre'``, else ``x``; an empty
    shortcut is the identity (the Add reads ``s`` directly, no Identity node). One ``Add`` joins the
    branches. The block's output value is named after the block (its tap).
    """
    a = x
    for op in block.pre:
        a = op_to_nodes(g, op, a, block.name)
    y = a
    for op in block.main:
        y = op_to_nodes(g, op, y, block.name)
    s = a if block.shortcut_from == "pre" else x
    for op in block.shortcut:
        s = op_to_nodes(g, op, s, block.name)
    y = g.node("Add", [y, s], f"{block.name}.add")
    for op in block.post:
        y = op_to_nodes(g, op, y, block.name)
    return g.rename_output(y, block.name)


def _value_info(name: str, shape: tuple, batch):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch if batch else BATCH_DIM, *shape])


def build(net: ir.Network, weights, *, fold_bn: bool = True, batch: int | None = None,
          opset: int = DEFAULT_OPSET, taps: bool = False, dtype: str = "float32", io_dtype: str = "float32"):
    """The ``onnx.ModelProto`` for ``net`` with ``weights`` (a canonical weight set).

    ``fold_bn``: fold BN into the preceding conv (:func:`fold_batchnorm`); ``batch``: a fixed batch
    size instead of the symbolic ``batch``; ``taps``: also output ``stem`` and every block's output.
    """
    model, arrays = _typed_skeleton(net, weights, dtype, io_dtype, fold_bn=fold_bn, batch=batch, opset=opset,
                                    taps=taps)
    for t in model.graph.initializer:
        t.raw_data = arrays[t.name].tobytes()
    return model


def _typed_skeleton(net, weights, dtype: str, io_dtype: str, **options):
    """:func:`_skeleton` for ``dtype`` 'float32', or the float16 file of :mod:`onnx_fp16`."""
    if dtype == "float16":
        from .onnx_fp16 import skeleton

        return skeleton(net, weights, io_dtype=io_dtype, **options)
    if dtype != "float32" or io_dtype != "float32":
        raise ResNetSpecError(f"onnx: dtype {dtype!r} with io dtype {io_dtype!r} is not supported; "
                              "use float32, or float16 with float32 or float16 I/O")
    return _skeleton(net, weights, **options)


def _skeleton(net: ir.Network, weights, *, fold_bn: bool = True, batch: int | None = None,
              opset: int = DEFAULT_OPSET, taps: bool = False):
    """:func:`build`'s model with data-less initializers, and ``{initializer name: array}``."""
    _require()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ResNetSpecError(f"onnx: opset {opset!r} is not supported; choose {MIN_OPSET} to {MAX_OPSET} "
                              f"(default {DEFAULT_OPSET})")
    if opset > onnx.defs.onnx_opset_version():
        raise BackendUnavailable(f"onnx: opset {opset} needs a newer onnx than {onnx.__version__} (its newest "
                                 f"opset is {onnx.defs.onnx_opset_version()})")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ResNetSpecError(f"onnx: batch must be a positive integer, got {batch!r}")
    from ..weights import check_weights

    weights = check_weights(net, weights, "weights", allow_nonfinite=True)
    if fold_bn:
        net, weights = fold_batchnorm(net, weights)
    model = onnx.ModelProto()
    g = _Graph(weights, model.graph)
    x = INPUT_NAME
    for op in net.stem:
        x = op_to_nodes(g, op, x, "")
    x = g.rename_output(x, "stem") if net.stem else x
    for block in net.blocks:
        x = block_to_nodes(g, block, x)
    for op in net.head:
        x = op_to_nodes(g, op, x, "")
    g.rename_output(x, OUTPUT_NAME)

    graph = model.graph
    graph.name = net.name
    graph.input.append(_value_info(INPUT_NAME, net.input_shape, batch))
    graph.output.append(_value_info(OUTPUT_NAME, (net.num_classes,), batch))
    if taps:
        shapes = net.tap_shapes()
        graph.output.extend(_value_info(t, shapes[t], batch) for t in net.tap_names() if t != "head")
    opsets = [helper.make_opsetid("", opset)]
    model.opset_import.extend(opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    model.producer_name = PRODUCER
    model.producer_version = _version()
    model.doc_string = net.description or net.name
    helper.set_model_props(model, {META_NAME: net.name, META_SPEC: net.spec_yaml, META_VERSION: _version()})
    return model, g.arrays


def _version() -> str:
    from .. import __version__

    return __version__


def initializer_bytes(model) -> int:
    return sum(_tensor_bytes(t) for t in model.graph.initializer)


def _tensor_bytes(t) -> int:
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return math.prod(t.dims) * itemsize


# Protobuf wire format, just enough to stream a ModelProto whose tensors' raw_data lives in numpy
# arrays: a length-delimited field is varint(number << 3 | 2), varint(length), payload.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int) -> bytes:
    return _varint(number << 3 | 2)


def _split(msg, number: int) -> tuple:
    """``msg``'s serialised fields numbered below and above ``number`` (that field itself left out)."""
    lo, hi = type(msg)(), type(msg)()
    lo.CopyFrom(msg)
    hi.CopyFrom(msg)
    for fd in msg.DESCRIPTOR.fields:
        if fd.number >= number:
            lo.ClearField(fd.name)
        if fd.number <= number:
            hi.ClearField(fd.name)
    return lo.SerializeToString(), hi.SerializeToString()


def _size(chunks) -> int:
    return sum(c.nbytes if isinstance(c, np.ndarray) else len(c) for c in chunks)


def _serialized_chunks(model, arrays) -> list:
    """``model.SerializeToString()`` as a list of bytes and arrays, each data-less initializer's
    raw_data taken from ``arrays``. Fields are emitted in field-number order like protobuf itself,
    so the concatenation equals the serialisation of the model with its data filled in (tested)."""
    graph = model.graph
    g_lo, g_hi = _split(graph, _GRAPH_INITIALIZER)
    g_chunks = [g_lo]
    for t in graph.initializer:
        arr = arrays.get(t.name)
        if arr is None or t.HasField("raw_data") or t.data_location == TensorProto.EXTERNAL:
            t_chunks = [t.SerializeToString()]
        else:
            t_lo, t_hi = _split(t, _TENSOR_RAW_DATA)
            t_chunks = [t_lo, _key(_TENSOR_RAW_DATA) + _varint(arr.nbytes), arr, t_hi]
        g_chunks += [_key(_GRAPH_INITIALIZER) + _varint(_size(t_chunks)), *t_chunks]
    g_chunks.append(g_hi)
    m_lo, m_hi = _split(model, _MODEL_GRAPH)
    return [m_lo, _key(_MODEL_GRAPH) + _varint(_size(g_chunks)), *g_chunks, m_hi]


def _write_chunks(path: str, chunks) -> None:
    with open(path, "wb") as fh:
        for c in chunks:
            fh.write(memoryview(c).cast("B") if isinstance(c, np.ndarray) else c)


def _externalize(model, arrays, location: str) -> list:
    """Point every data-less initializer of at least 1 KiB at ``location`` (in place); return the data
    file's chunks. Tensors are stored in graph order, each at a 64-byte aligned offset, and record
    ``location``, ``offset`` and ``length`` as the ONNX external-data format says."""
    chunks, offset = [], 0
    for t in model.graph.initializer:
        arr = arrays.get(t.name)
        if arr is None or t.HasField("raw_data") or arr.nbytes < _EXTERNAL_MIN_BYTES:
            continue
        pad = -offset % 64
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        del t.external_data[:]
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(arr.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        t.data_location = TensorProto.EXTERNAL
        chunks.append(arr)
        offset += arr.nbytes
    return chunks


def _detach(model) -> dict:
    """Move raw_data out of ``model``'s initializers (in place) into ``{name: array}``."""
    arrays = {}
    for t in model.graph.initializer:
        if t.HasField("raw_data"):
            arrays[t.name] = np.frombuffer(t.raw_data, dtype=np.uint8)
            t.ClearField("raw_data")
    return arrays


def _write_model(path: str, model, arrays, external: bool, force: bool) -> list:
    """Write ``model`` (data-less initializers + ``arrays``) atomically: one file, or with external
    data ``path + '.data'`` first. Returns the paths written."""
    from ..fileio import atomic_path, check_writable

    data_path = path + ".data"
    if external:
        check_writable(data_path, force)
        data_chunks = _externalize(model, arrays, os.path.basename(data_path))
        with atomic_path(data_path, force) as tmp:
            _write_chunks(tmp, data_chunks)
    with atomic_path(path, force) as tmp:
        _write_chunks(tmp, _serialized_chunks(model, arrays))
    return [path, data_path] if external else [path]


def _check_structure(model) -> None:
    """onnx.checker on the graph with initializers turned into typed graph inputs: every node,
    attribute, name and the opset are checked in milliseconds; the tensor data itself was laid out
    from arrays of the declared shape and needs no parsing. (The tests run the full check, shape
    inference included, on every zoo model.)"""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer)
    graph.ClearField("initializer")
    try:
        onnx.checker.check_model(probe)
    except onnx.checker.ValidationError as exc:  # pragma: no cover - a bug in this module
        raise ResNetSpecError(f"onnx: the generated model failed onnx.checker: {exc}") from None


def convert(net: ir.Network, weights, out_dir: str, *, force: bool = False, fold_bn: bool = True,
            batch: int | None = None, opset: int = DEFAULT_OPSET,
            external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, dtype: str = "float32",
            io_dtype: str = "float32") -> list:
    """Write ``<out_dir>/<name>.onnx`` (plus ``<name>.onnx.data`` when the initializers exceed
    ``external_data_threshold`` bytes); return the paths written. Nothing is overwritten without
    ``force``. The file's bytes are those of ``build(...).SerializeToString()``, written atomically
    (resnet_spec.fileio) with the weights streamed from memory rather than copied into a message."""
    _require()
    from ..fileio import check_writable

    from . import output_paths

    (path,) = output_paths("onnx", net.name, out_dir)
    check_writable(path, force)
    model, arrays = _typed_skeleton(net, weights, dtype, io_dtype, fold_bn=fold_bn, batch=batch, opset=opset)
    _check_structure(model)
    external = sum(a.nbytes for a in arrays.values()) > external_data_threshold
    os.makedirs(out_dir, exist_ok=True)
    written = _write_model(path, model, arrays, external, force)
    if not external and force and os.path.exists(path + ".data"):
        os.unlink(path + ".data")  # a stale data file from an earlier external-data conversion
    return written


# -- running ------------------------------------------------------------------------------------

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


def make_session(model, *, device: str = "cpu", dtype: str = "float32", allow_tf32: bool = False,
                 optimization: str = "all", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` for ``model`` on exactly the requested provider.

    ``optimization``: ORT graph optimisation level ('disable', 'basic', 'extended', 'layout', 'all';
    ORT's default is 'all'). ``threads``: intra-op threads (None: ORT's default, one per physical
    core). Returns ``(session, device text)``. Never falls back to another provider: CUDA is only used
    when ``CUDAExecutionProvider`` is available, and then with CPU fallback disabled.
    """
    _require(runtime=True)
    if dtype != "float32":
        raise BackendUnavailable(
            f"onnx: dtype {dtype!r} is not supported; the ONNX backend builds float32 graphs only (ONNX "
            "Runtime's CPU provider has no float16 Conv kernel and silently inserts casts to float32, so a "
            "reduced-precision run would not be what it claims)")
    opts = ort.SessionOptions()
    levels = [k for k, v in _OPT_LEVELS.items() if hasattr(ort.GraphOptimizationLevel, v)]
    if optimization not in levels:
        raise ResNetSpecError(f"onnx: unknown optimization level {optimization!r}; choose from {', '.join(levels)}")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    if device == "cpu":
        provider, provider_opts = "CPUExecutionProvider", {}
    elif device.startswith("cuda"):
        provider = "CUDAExecutionProvider"
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnx: CUDA was requested but onnxruntime {ort.__version__} offers only "
                f"{', '.join(ort.get_available_providers())} (install onnxruntime-gpu)")
        provider_opts = {"device_id": device.partition(":")[2] or "0", "use_tf32": "1" if allow_tf32 else "0"}
        # Without this ORT quietly runs nodes CUDA cannot take on the CPU.
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    else:
        raise BackendUnavailable(f"onnx: unknown device {device!r}")
    source = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    sess = ort.InferenceSession(source, sess_options=opts, providers=[(provider, provider_opts)])
    got = sess.get_providers()
    if not got or got[0] != provider:
        raise BackendUnavailable(f"onnx: asked ONNX Runtime for {provider} but the session uses {got}")
    desc = f"{device} ({provider}), onnxruntime {ort.__version__}"
    return sess, desc


def run_session(sess, x: np.ndarray, tap_names=None) -> dict:
    """Run a session from :func:`make_session`; ``tap_names`` (when the model has taps) adds them."""
    names = [OUTPUT_NAME] + [t for t in (tap_names or ()) if t != "head"]
    res = sess.run(names, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    out = {"head": res[0]}
    out.update(zip(names[1:], res[1:]))
    return out


def infer(net: ir.Network, weights, x: np.ndarray, *, device: str = "cpu", dtype: str = "float32",
          taps: bool = False, mutate=None, allow_tf32: bool = False, fold_bn: bool = True,
          opset: int = DEFAULT_OPSET, optimization: str = "all", threads: int | None = None):
    """Run ``net`` in ONNX Runtime on NCHW float32 ``x``; returns ({'head': logits, [taps]}, device text).

    ``mutate(model) -> model`` edits the ModelProto before the session is created (planted faults).
    """
    _require(runtime=True)
    model = build(net, weights, fold_bn=fold_bn, opset=opset, taps=taps)
    if mutate is not None:
        model = mutate(model) or model
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:  # too big for one protobuf message
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            _write_model(path, model, _detach(model), external=True, force=True)
            sess, desc = make_session(path, device=device, dtype=dtype, allow_tf32=allow_tf32,
                                      optimization=optimization, threads=threads)
    else:
        sess, desc = make_session(model, device=device, dtype=dtype, allow_tf32=allow_tf32,
                                  optimization=optimization, threads=threads)
    return run_session(sess, x, net.tap_names() if taps else None), desc


# -- inspecting ---------------------------------------------------------------------------------


def _dims(vi) -> list:
    out = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?"))
    return out


def inspect(path: str, *, require_metadata: bool = True) -> dict:
    """What an ONNX file holds: spec name and YAML, resnet-spec version, opset, producer, inputs and
    outputs with shapes (a symbolic dimension shows as its name), node counts by op type, initializer
    and parameter counts (float initializer elements). External data is not read.

    A file that is not ONNX raises :class:`ResNetSpecError`; so does an ONNX file without resnet-spec
    metadata when ``require_metadata`` (the message still shows what the file contains).
    """
    _require()
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ResNetSpecError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if model.ir_version <= 0 or not model.graph.node or not model.opset_import:
        raise ResNetSpecError(f"{path}: not an ONNX model (no graph, IR version or opset in it)")
    meta = {p.key: p.value for p in model.metadata_props}
    counts: dict = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    info = {
        "path": path,
        "spec_name": meta.get(META_NAME),
        "spec_yaml": meta.get(META_SPEC),
        "resnet_spec_version": meta.get(META_VERSION),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": [{"name": i.name, "shape": _dims(i)} for i in model.graph.input],
        "outputs": [{"name": o.name, "shape": _dims(o)} for o in model.graph.output],
        "nodes": sum(counts.values()),
        "node_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializers": len(model.graph.initializer),
        "parameters": sum(math.prod(t.dims) for t in model.graph.initializer
                          if t.data_type in float_types and not t.name.startswith("const.")),
        "external_data": any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer),
    }
    if require_metadata and META_SPEC not in meta:
        raise ResNetSpecError(f"{path}: not written by resnet-spec (no {META_SPEC!r} metadata); it contains:\n"
                              + format_inspect(info))
    return info


def format_inspect(info: dict) -> str:
    """Readable text for :func:`inspect`'s dict, ending with the spec YAML when there is one."""
    def shape(s):
        return "(" + ", ".join(str(d) for d in s) + ")"

    lines = []
    if info.get("spec_name"):
        lines.append(f"spec:       {info['spec_name']} (resnet-spec {info.get('resnet_spec_version') or '?'})")
    lines += [f"file:       {info['path']}" + ("  [+ external data]" if info.get("external_data") else ""),
              f"producer:   {info['producer'] or '?'}",
              f"opset:      {info['opset']} (IR version {info['ir_version']})"]
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            lines.append(f"{kind[:-1] + ':':<11} {v['name']} {shape(v['shape'])}")
    lines.append(f"nodes:      {info['nodes']} (" + ", ".join(f"{k} {v}" for k, v in info["node_counts"].items()) + ")")
    lines.append(f"weights:    {info['initializers']} initializers, {info['parameters']:,} parameters")
    if info.get("spec_yaml"):
        lines += ["", "spec YAML:", info["spec_yaml"].rstrip()]
    return "\n".join(lines)
