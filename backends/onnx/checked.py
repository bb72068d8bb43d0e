"""An ONNX file someone else made: opened within the budgets of :mod:`resnet_spec.budgets`, checked on
what the file declares before a tensor is read, and the model the import's proof runs.

:func:`load_checked` (the graph importer's way in) refuses, before any tensor data is read: a file
over protobuf's 2 GiB, more than :data:`~resnet_spec.budgets.ONNX_MAX_NODES` nodes (subgraphs and
functions included), and tensors (initializers, Constant values, sparse ones, external data) that
declare more than :data:`~resnet_spec.budgets.ONNX_MAX_TENSOR_BYTES` together; external data must be
a regular file beside the model. :func:`run_source` runs the file in ONNX Runtime at the proof's own
input shape: a fixed batch or size the file declares is made symbolic (the file's batch of 100,000 is
never allocated) and nodes that do not lead to the output are dropped (ONNX Runtime would run them).
"""

from __future__ import annotations

import math
import os

import numpy as np

from ...budgets import MAX_DECLARED_SIDE, ONNX_MAX_FILE_BYTES, ONNX_MAX_NODES, ONNX_MAX_TENSOR_BYTES, side_over
from ...fileio import check_regular_file, shown
from ...importers.source import ImportRefused

_DIM_NAMES = ("batch", "channels", "height", "width")


def _graphs(model):
    """Every graph of ``model``: the main one, the subgraphs in node attributes, and function bodies
    (as objects with ``node``; functions have no initializers)."""
    stack = [model.graph] + list(model.functions)
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for a in node.attribute:
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)


def _tensors(model):
    """Every tensor the model stores: initializers, sparse initializers, tensor-valued attributes."""
    for g in _graphs(model):
        yield from getattr(g, "initializer", ())
        for sparse in getattr(g, "sparse_initializer", ()):
            yield from (sparse.values, sparse.indices)
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield from (a.sparse_tensor.values, a.sparse_tensor.indices)


def _itemsize(data_type: int) -> int:
    from onnx import helper

    try:
        return max(1, np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except (KeyError, TypeError, ValueError):  # an unknown type: numpy_helper refuses it later
        return 8


def _declared_bytes(t, base_dir: str, label: str) -> int:
    """The bytes tensor ``t`` declares (dims x item size; for external data, at least what is read)."""
    from onnx import TensorProto

    if any(d < 0 for d in t.dims):
        raise ImportRefused(f"{label}: tensor {t.name!r} has negative dims {list(t.dims)}")
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    size = math.prod(t.dims) * _itemsize(t.data_type)
    if t.data_location != TensorProto.EXTERNAL:
        return size
    info = {e.key: e.value for e in t.external_data}
    where = info.get("location", "")
    if not where or os.path.isabs(where) or os.path.normpath(where).split(os.sep)[0] == os.pardir:
        raise ImportRefused(f"{label}: tensor {t.name!r} keeps its data in {shown(where)}, not a file beside "
                            "the model")
    st = check_regular_file(os.path.join(base_dir, where), error=ImportRefused)
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise ImportRefused(f"{label}: tensor {t.name!r} has a malformed external data offset or length") from None
    return max(size, length)


def check_budgets(model, path: str, label: str, max_bytes: int = ONNX_MAX_TENSOR_BYTES) -> bool:
    """Refuse ``model`` (loaded without external data) over the node budget or over ``max_bytes`` of
    tensors; whether it has external data to load."""
    from onnx import TensorProto

    nodes = sum(len(g.node) for g in _graphs(model))
    if nodes > ONNX_MAX_NODES:
        raise ImportRefused(f"{label}: the graph has {nodes:,} nodes; import reads graphs of at most "
                            f"{ONNX_MAX_NODES:,}")
    total, external = 0, False
    base_dir = os.path.dirname(os.path.abspath(path))
    for t in _tensors(model):
        total += _declared_bytes(t, base_dir, label)
        external = external or t.data_location == TensorProto.EXTERNAL
        if total > max_bytes:
            raise ImportRefused(f"{label}: its tensors declare more than {max_bytes:,} bytes (at {t.name!r}); "
                                f"import reads models of at most {max_bytes // 4:,} float32 parameters "
                                f"({max_bytes >> 20:,} MiB; pass --max-onnx-params N to read a larger one)")
    return external


def load_checked(path: str, max_params: int | None = None):
    """The ONNX model at ``path``, refused (one line naming the file and the limit) over a budget
    (``max_params``: the float32 parameters its tensors may declare, default
    :data:`~resnet_spec.budgets.IMPORT_MAX_PARAMS`) before its tensor data, or any external data, is read."""
    import onnx

    label = shown(path)
    check_regular_file(path, ONNX_MAX_FILE_BYTES, error=ImportRefused)  # a FIFO, /dev/zero: before onnx opens it
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImportRefused(f"{label}: not a readable ONNX model ({msg}); it may be truncated or corrupt") from None
    if check_budgets(model, path, label, ONNX_MAX_TENSOR_BYTES if max_params is None else 4 * int(max_params)):
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        except Exception as exc:  # a missing or short file, a path onnx refuses
            raise ImportRefused(f"{label}: its external data cannot be read ({type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    return model


def declared_input(value, layout: str = "nchw") -> tuple:
    """(facts, notes) from the image input's declared shape in ``layout`` (its height and width: dims 2
    and 3 of NCHW, 1 and 2 of NHWC): a fixed batch (the proof runs its own, never more) and the input
    size, unless a side is over the limit: then the import's own size replaces it, and the proof makes
    the graph's dims symbolic."""
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    facts, notes = {}, []
    if len(shape) == 4 and shape[0] > 0:
        facts["batch"] = shape[0]  # a graph exported with a fixed batch size
    h, w = (shape[2:4] if layout == "nchw" else shape[1:3]) if len(shape) == 4 else (0, 0)
    if h > 0 and w > 0:
        size = h if h == w else [h, w]
        if not side_over(size):
            facts["input_size"] = size
        else:
            notes.append(f"the graph declares a {h}x{w} input, over the import limit of "
                         f"{MAX_DECLARED_SIDE} px a side: the spec takes the default size instead (--input-size "
                         "sets it), and the proof runs the graph at that size")
    return facts, notes


# -- the proof's model -------------------------------------------------------------------------------

def _prune(graph) -> bool:
    """Drop the nodes no graph output depends on; whether any was dropped."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):  # ONNX graphs are topologically sorted
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            for sub in (s for a in node.attribute for s in ([a.g] if a.HasField("g") else []) + list(a.graphs)):
                needed.update(i for n in sub.node for i in n.input)  # names a subgraph takes from outside
    if len(keep) == len(graph.node):
        return False
    del graph.node[:]
    graph.node.extend(reversed(keep))
    dropped = {t.name for t in graph.initializer if t.name not in needed}  # the dropped nodes' constants
    for field in (graph.initializer, graph.input):  # (an old file lists its initializers as inputs too)
        kept = [v for v in field if v.name not in dropped]
        del field[:]
        field.extend(kept)
    return True


def _reshape_input(graph, shape) -> bool:
    """Make every fixed dim of the image input that differs from ``shape`` symbolic; whether any did
    (then the shapes recorded for inner values and outputs are dropped: they were for the old shape)."""
    inits = {t.name for t in graph.initializer}
    changed = False
    for value in (v for v in graph.input if v.name not in inits):
        dims = value.type.tensor_type.shape.dim
        for i, dim in enumerate(list(dims)[:len(shape)]):
            if dim.HasField("dim_value") and dim.dim_value != shape[i]:
                dim.dim_param = _DIM_NAMES[i] if i < len(_DIM_NAMES) else f"d{i}"
                changed = True
    if changed:
        del graph.value_info[:]
        for out in graph.output:
            out.type.tensor_type.ClearField("shape")
    return changed


def proof_model(path: str, shape, logits=None):
    """The file's model as the proof runs it at input ``shape``: None when the file itself will do,
    else the serialised model with its input made symbolic and dead nodes dropped; ``logits`` (the value
    a trailing Softmax over the classes reads, :mod:`.read_head`) made the output, the Softmax dropped."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    if logits:
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    pruned = _prune(model.graph)
    if not (_reshape_input(model.graph, shape) or pruned):
        return None
    from onnx.external_data_helper import load_external_data_for_model

    load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))  # within the tensor budget
    return model.SerializeToString()


def run_source(path: str, logits, x: np.ndarray):
    """Worker: the file in ONNX Runtime (no graph optimisation) on ``x``, up to ``logits`` where given (the
    Softmax ending the graph left out); (output, runtime)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = proof_model(path, x.shape, logits)
    sess = ort.InferenceSession(path if model is None else model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: x})[0], np.float32), f"onnxruntime {ort.__version__}"
