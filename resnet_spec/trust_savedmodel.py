"""SavedModel folders someone else made, checked before ``tf.saved_model.load`` (see
:mod:`resnet_spec.trust`). Runs in verify's TensorFlow worker only: ``saved_model.pb`` is read with
TensorFlow's own protobuf classes, and TensorFlow never enters the caller's process.

What passes without ``--trust-code``:

* one meta graph with an object graph (TensorFlow 2's loader, which restores variables with its own
  checkpoint reader and runs no function of the file while loading; a TensorFlow 1 SavedModel, loaded
  by running its graph's restore and init ops, is refused);
* every op of the top-level graph and of every function of the library in :data:`PURE_OPS` (math and
  array ops, calls of the library's own functions, reads of the model's variables), except in the two
  checkpoint functions the meta graph's ``saver_def`` names, which may also hold :data:`SAVE_OPS` /
  :data:`RESTORE_OPS` (the loader does not call them; nothing else may);
* every function an op refers to (``f`` of a call) is in the file's library, and no library function
  shadows an op name;
* objects of the kinds :data:`OBJECT_KINDS` only: no assets, resources (their initialisers run at
  load), saveable objects with restore functions, or registered savers.

Refused: file and I/O ops (``WriteFile``, ``ReadFile``, ``Save``, ``PrintV2``, datasets), Python
(``PyFunc``, ``EagerPyFunc``), resources (tables, queues, readers, iterators), random ops, control
flow with function bodies (``If``, ``While``), and any op not listed. The allow-list is what our
SavedModels (every zoo entry, channels_last and channels_first) and nobuco's Keras-2 SavedModels hold,
plus the ops other converters write for the same operations (fused batch norm, concat, slices, casts).
"""

from __future__ import annotations

import os

from .errors import ResNetSpecError
from .fileio import check_regular_file, check_regular_tree, shown
from .trust import refuse

MAX_PB_BYTES = 2**31 - 1  # protobuf's own limit

#: ops that compute a pure function of their inputs (SpaceToBatchND/BatchToSpaceND: TensorFlow's dilated
#: convolution), call the file's own (checked) functions, or read
#: and assign the model's variables
PURE_OPS = frozenset("""
Const Identity IdentityN NoOp Placeholder PlaceholderWithDefault StopGradient Snapshot EnsureShape
StatefulPartitionedCall PartitionedCall VarHandleOp ReadVariableOp AssignVariableOp VarIsInitializedOp
Add AddV2 AddN Sub Mul RealDiv Div DivNoNan FloorDiv FloorMod Neg Maximum Minimum Square SquaredDifference
Sqrt Rsqrt Reciprocal Exp Log Abs Sign Pow Erf Tanh Sigmoid Relu Relu6 LeakyRelu Elu Selu Softplus Softmax
LogSoftmax BiasAdd MatMul BatchMatMulV2 BatchMatMulV3 Conv2D DepthwiseConv2dNative FusedBatchNorm
FusedBatchNormV3 MaxPool AvgPool Mean Sum Max Min Prod ArgMax
Pad PadV2 MirrorPad Reshape Squeeze ExpandDims Transpose ConcatV2 Pack Unpack Slice StridedSlice Split SplitV
SpaceToBatchND BatchToSpaceND
Shape ShapeN Size Rank Fill ZerosLike OnesLike Cast Tile GatherV2 Range BroadcastTo Select SelectV2
Equal NotEqual Less LessEqual Greater GreaterEqual LogicalAnd LogicalOr LogicalNot
""".split())
#: the checkpoint writer's ops, allowed only in the function saver_def's save tensor comes from
SAVE_OPS = frozenset("SaveV2 MergeV2Checkpoints ShardedFilename StringJoin StaticRegexFullMatch "
                     "DisableCopyOnRead".split())
#: the checkpoint reader's op, allowed only in the function saver_def's restore op calls
RESTORE_OPS = frozenset({"RestoreV2"})
#: object-graph node kinds verify loads
OBJECT_KINDS = frozenset({"user_object", "variable", "function", "bare_concrete_function", "constant"})


def _read(path: str):
    from tensorflow.core.protobuf import saved_model_pb2  # in the TensorFlow worker only

    pb = os.path.join(path, "saved_model.pb")
    check_regular_file(pb, MAX_PB_BYTES)
    with open(pb, "rb") as fh:
        data = fh.read(MAX_PB_BYTES + 1)
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ResNetSpecError(f"{shown(path)}: saved_model.pb is not a SavedModel ({type(exc).__name__}: "
                              f"{exc})") from None
    return data, proto


def _called(node) -> list:
    """The function names ``node``'s attributes refer to (a call's ``f``, any list of functions)."""
    out = []
    for value in node.attr.values():
        if value.HasField("func"):
            out.append(value.func.name)
        if value.HasField("list"):
            out.extend(f.name for f in value.list.func)
    return out


def _saver_functions(path, meta) -> dict:
    """``{function name: extra ops it may hold}`` for the two functions ``saver_def`` names."""
    nodes = {n.name: n for n in meta.graph_def.node}
    extra = {}
    for tensor, ops in ((meta.saver_def.save_tensor_name, SAVE_OPS), (meta.saver_def.restore_op_name, RESTORE_OPS)):
        node = nodes.get(tensor.split(":")[0]) if tensor else None
        if node is None:
            continue
        called = _called(node)
        if node.op != "StatefulPartitionedCall" or len(called) != 1:
            raise refuse(path, f"saver_def names op {shown(node.name)} ({shown(node.op)}), not a call of a "
                               "checkpoint function")
        extra[called[0]] = ops
    return extra


def _check_nodes(path, where, nodes, allowed, library) -> list:
    """Refuse an op of ``nodes`` outside ``allowed`` or a call of a function outside ``library``;
    returns the functions called."""
    called = []
    for node in nodes:
        if node.op not in allowed:
            raise refuse(path, f"{where} runs op {shown(node.op)} (node {shown(node.name[:80])}), which is not "
                               "among the pure math and array ops verify runs without running code")
        for name in _called(node):
            if name not in library:
                raise refuse(path, f"{where} calls {shown(name[:80])}, which is not a function of the file")
            called.append(name)
    return called


def _referenced(meta) -> set:
    """Every function name the object graph (what the loader exposes: signatures, methods) and the
    gradient table refer to."""
    graph = meta.object_graph_def
    names = set(graph.concrete_functions)
    for obj in graph.nodes:
        names.update(obj.function.concrete_functions)
        names.add(obj.bare_concrete_function.concrete_function_name)
    names.update(g.gradient_func for g in meta.graph_def.library.gradient)
    return names


def _check_objects(path, meta) -> None:
    graph = meta.object_graph_def
    for i, obj in enumerate(graph.nodes):
        kind = obj.WhichOneof("kind")
        if kind not in OBJECT_KINDS or obj.saveable_objects or obj.registered_saver:
            what = kind if kind not in OBJECT_KINDS else "saveable object with its own restore function"
            raise refuse(path, f"object {i} is a {what}, whose code runs when the SavedModel is loaded")
    if meta.asset_file_def:
        raise refuse(path, "it holds assets, which verify does not load")


def check_savedmodel(path: str):
    """Check the SavedModel folder ``path`` (the module docstring); returns the bytes of its
    ``saved_model.pb`` that were checked."""
    data, proto = _read(path)
    if len(proto.meta_graphs) != 1 or not proto.meta_graphs[0].HasField("object_graph_def"):
        raise refuse(path, "not a TensorFlow 2 SavedModel (one meta graph with an object graph); a TensorFlow 1 "
                           "SavedModel is loaded by running its own graph")
    meta = proto.meta_graphs[0]
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    shadowing = sorted(set(library) & (PURE_OPS | SAVE_OPS | RESTORE_OPS))
    if shadowing:
        raise refuse(path, f"its function {shown(shadowing[0])} has the name of an op")
    savers = _saver_functions(path, meta)
    _check_nodes(path, "the graph", meta.graph_def.node, PURE_OPS, library)
    for name, fn in library.items():
        _check_nodes(path, f"function {shown(name[:80])}", fn.node_def, PURE_OPS | savers.get(name, frozenset()),
                     library)
    for name in savers:  # a checkpoint function is called by saver_def's node alone
        if name in _referenced(meta) or any(name in _called(n) for f in library.values() for n in f.node_def):
            raise refuse(path, f"the checkpoint function {shown(name[:80])} is called by another function or "
                               "an object")
    _check_objects(path, meta)
    return data


def checked_copy(path: str, tmp: str) -> str:
    """A SavedModel folder in ``tmp`` holding the ``saved_model.pb`` bytes :func:`check_savedmodel`
    checked and a link to ``path``'s ``variables/`` (data the checkpoint reader parses, never run);
    returns it, for ``tf.saved_model.load``."""
    check_regular_tree(path)
    data = check_savedmodel(path)
    out = os.path.join(tmp, "checked_savedmodel")
    os.makedirs(out)
    with open(os.path.join(out, "saved_model.pb"), "wb") as fh:
        fh.write(data)
    variables = os.path.join(os.path.realpath(path), "variables")
    if os.path.isdir(variables):
        os.symlink(variables, os.path.join(out, "variables"))
    return out
