"""Small ONNX patterns the graph importer (:mod:`.reader`) recognises, node by node.

* constant subgraphs folded to constants (the TorchScript exporter computes ``Pad`` amounts with
  ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast chains);
* ``Pad``: symmetric zero padding of height and width (before a conv or pool), or zero *channels*
  (an option-A shortcut: ``F.pad`` over the channel axis, ``ir.ChannelPad``);
* ``Slice``: a strided identity ``x[:, :, ::s, ::s]`` (one Slice over both axes, or one per axis as
  the exporters write it);
* ``MaxPool -> Max(M)``: resnet-spec's zero-padded max pooling (a 0/-inf border mask);
* edge-copy padding before a max pool: one ``Concat`` per axis of one-row (one-column) ``Slice`` copies of the
  first row before the input and of the last after it (this project's stock ``.keras`` pads a max pool so,
  ``Cropping2D`` + ``Concatenate``, and tf2onnx writes it so): the same as the max pool's -inf padding;
* MaxPool/AveragePool -> a spec's pool fields; a type-C projection that changes the shape;
* a channel-attention gate's spatial mean and its ``Expand`` to the gated tensor's shape; timm's
  anti-aliasing average pool (window = stride, no padding, floor).

Blur pools are in :mod:`.patterns_blur`, GroupNorm and weight standardization in :mod:`.patterns_norm`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ...importers.source import ImportRefused

# Pure functions of their inputs: evaluated once at import when every input is a constant.
FOLDABLE = frozenset(("Cast", "Concat", "ConstantOfShape", "Reshape", "Slice", "Transpose", "Unsqueeze",
                      "Squeeze", "Gather", "Range", "Expand", "Add", "Sub", "Mul", "Div", "Neg", "Where",
                      "Equal", "Flatten"))
BIG = 2**31 - 1  # a Slice end at least this large means "to the end"
MAX_FOLD = 1 << 24  # elements a folded value may hold; exporters fold shape vectors and pad amounts


def attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def fold(node, ins, consts: dict, opset: int, left: int = MAX_FOLD) -> int:
    """Evaluate ``node`` into ``consts`` when it is foldable, every input is a constant and its outputs
    hold at most ``left`` elements (the graph's budget still unspent) and :data:`MAX_FOLD`; the
    elements it was charged (0: not folded)."""
    if node.op_type not in FOLDABLE or not ins or not all(i in consts for i in ins if i):
        return 0
    size = fold_size(node, [np.asarray(consts[i]) if i else None for i in ins])
    if size > min(MAX_FOLD, left):
        return 0  # a few bytes of shape asking for gigabytes: left in the graph, refused by the walk
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph([node], "fold", [helper.make_tensor_value_info(i, 0, None) for i in ins if i],
                              [helper.make_tensor_value_info(o, 0, None) for o in node.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        outs = ReferenceEvaluator(model).run(None, {i: consts[i] for i in ins if i})
    except Exception:  # leave it in the graph; the walk names it if it is in the way
        return 0
    consts.update(zip(node.output, (np.asarray(o) for o in outs)))
    return max(1, size)


def read_constant(g, node) -> bool:
    """A ``Constant`` node's ``value`` into ``g.consts`` (False for its other forms, left in the graph);
    a value that cannot be read (dims that disagree with its data, an unknown type) is refused."""
    from onnx import numpy_helper

    try:
        a = attrs(node)
        if "value" not in a or len(node.output) != 1:
            return False
        g.consts[node.output[0]] = numpy_helper.to_array(a["value"])
    except Exception as exc:  # onnx raises ValueError, TypeError, its own errors
        raise g.refuse(node, f"its value cannot be read ({type(exc).__name__}: {exc})") from None
    return True


class EvalBudget:
    """The values the pattern checks of one graph may evaluate together (each check asks before it runs)."""

    def __init__(self, total: int):
        self.total = self.left = total

    def spend(self, n: int) -> bool:
        """Whether ``n`` more values fit; they are taken from what is left when they do."""
        if n > self.left:
            return False
        self.left -= n
        return True


def check_wiring(g) -> None:
    """Refuse a node without outputs, and a cycle (a node whose output feeds, directly or through others,
    its own input): walking back from an ``Add`` would never end. Iterative depth-first search over
    ``g.nodes`` (``(node, data inputs)``, ``g.producer``: value -> the pair that computes it, ``g.index``: a
    node's place in ``g.nodes``)."""
    index = g.index
    for n, _ in g.nodes:
        if not n.output:
            raise g.refuse(n, "a node without outputs")
    deps = [[index[id(g.producer[i][0])] for i in ins if i in g.producer] for _, ins in g.nodes]
    state = [0] * len(g.nodes)  # 0 unseen, 1 on the current path, 2 done
    for root in range(len(g.nodes)):
        stack = [] if state[root] else [(root, iter(deps[root]))]
        state[root] = state[root] or 1
        while stack:
            k, rest = stack[-1]
            nxt = next(rest, None)
            if nxt is None:
                state[k] = 2
                stack.pop()
            elif state[nxt] == 1:
                raise g.refuse(g.nodes[nxt][0], "its output feeds back into its own input (a cycle in the "
                                                "graph); an ONNX graph is acyclic")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(deps[nxt])))


def fold_size(node, values) -> int:
    """An upper bound on the elements a foldable node's outputs hold, from its constant inputs (None for
    an omitted optional input), before anything is evaluated."""
    given = [v for v in values if v is not None]
    total = sum(v.size for v in given)
    try:
        if node.op_type == "ConstantOfShape":
            return math.prod(int(d) for d in given[0].reshape(-1))
        if node.op_type == "Expand":
            return math.prod(np.broadcast_shapes(given[0].shape, tuple(int(d) for d in given[1].reshape(-1))))
        if node.op_type == "Range":
            start, limit, delta = (float(v.reshape(-1)[0]) for v in given[:3])
            return max(0, math.ceil((limit - start) / delta)) if delta else MAX_FOLD + 1
        if node.op_type == "Gather":
            return total * max(1, given[1].size)
        if node.op_type in ("Add", "Sub", "Mul", "Div", "Where", "Equal"):
            return math.prod(np.broadcast_shapes(*(v.shape for v in given)))
    except (ValueError, TypeError, IndexError, OverflowError):  # bad shapes: evaluating would fail too
        return MAX_FOLD + 1
    return total  # the rest rearrange, cast or join their inputs


def pad_amounts(g, node, ins) -> list:
    """The 8 pads of a 4-d ``Pad`` (begins then ends, NCHW), refusing any mode or value but zero."""
    a = attrs(node)
    mode = a.get("mode", b"constant")
    pads = [int(p) for p in (g.const(node, ins[1]) if len(ins) > 1 and ins[1] else a.get("pads", []))]
    value = float(g.const(node, ins[2]).reshape(-1)[0]) if len(ins) > 2 and ins[2] else 0.0
    axes = [int(x) % 4 for x in g.const(node, ins[3]).reshape(-1)] if len(ins) > 3 and ins[3] else None
    if axes is not None and len(pads) == 2 * len(axes):
        full = [0] * 8
        for k, ax in enumerate(axes):
            full[ax], full[4 + ax] = pads[k], pads[len(axes) + k]
        pads = full
    if mode not in (b"constant", "constant") or value != 0 or len(pads) != 8:
        raise g.refuse(node, f"padding {pads} (mode {mode!r}, value {value}): only zero padding of height "
                             "and width, or of channels (an option-A shortcut), has a spec equivalent")
    return pads


def channel_pad(g, node, ins):
    """(before, after) zero channels of an option-A ``Pad``, or None for another Pad."""
    if node.op_type != "Pad":
        return None
    p = pad_amounts(g, node, ins)
    if p[1] + p[5] > 0 and p[0] == p[4] == 0 and not any(p[2:4] + p[6:8]):
        return p[1], p[5]
    return None


def spatial_pad(g, node, ins) -> int:
    """The symmetric zero padding of height and width a ``Pad`` adds before a conv or pool."""
    p = pad_amounts(g, node, ins)
    if p[:2] + p[4:6] != [0] * 4 or len(set(p[2:4] + p[6:8])) != 1:
        raise g.refuse(node, f"padding {p}: only symmetric zero padding of height and width (or zero "
                             "channels in a shortcut) has a spec equivalent")
    return p[2]


def slice_steps(g, node, ins) -> dict:
    """{axis: step} of a strided-identity ``Slice`` (start 0, to the end); refuses any other slice."""
    if len(ins) < 3:
        raise g.refuse(node, "a Slice without starts/ends inputs (opset < 10)")
    starts, ends = g.const(node, ins[1]).reshape(-1), g.const(node, ins[2]).reshape(-1)
    axes = g.const(node, ins[3]).reshape(-1) if len(ins) > 3 and ins[3] else np.arange(len(starts))
    steps = g.const(node, ins[4]).reshape(-1) if len(ins) > 4 and ins[4] else np.ones(len(starts), np.int64)
    out = {}
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = int(ax) % 4
        if int(s) != 0 or int(e) < BIG or int(st) < 1 or (ax < 2 and int(st) != 1):
            raise g.refuse(node, f"Slice starts {starts.tolist()} ends {ends.tolist()} axes {axes.tolist()} "
                                 f"steps {steps.tolist()}: only a strided identity x[:, :, ::s, ::s] has a "
                                 "spec equivalent")
        if ax >= 2:
            out[ax] = int(st)
    return out


def border_mask(g, node, ins) -> bool:
    """``MaxPool -> Max(M)`` with a constant ``M`` of 0 and -inf: zero-padded max pooling as
    resnet-spec writes it (backends/onnx/pool.py: 0 where a window reaches the zero border)."""
    if node.op_type != "Max" or len(ins) != 2:
        return False
    try:
        m = np.asarray(g.const(node, ins[1]), np.float64)
    except ImportRefused:
        return False
    return bool(m.size) and bool(np.all((m == 0) | np.isneginf(m))) and bool((m == 0).any())


class EdgePad(NamedTuple):
    """Copies of the edge rows (axis 2) or columns (axis 3): ``before`` of the first, ``after`` of the last."""
    axis: int
    before: int
    after: int


def _edge_index(g, node, x, axis: int, n: int):
    """The row/column index along ``axis`` that a ``Slice`` of ``x`` keeps alone (every other axis whole), or None."""
    ins = node.input
    if node.op_type != "Slice" or ins[0] != x or len(ins) < 3:
        return None
    starts, ends = (g.consts.get(i) for i in ins[1:3])
    axes = g.consts.get(ins[3]) if len(ins) > 3 and ins[3] else np.arange(np.size(starts))
    steps = g.consts.get(ins[4]) if len(ins) > 4 and ins[4] else np.ones(np.size(starts), np.int64)
    dims = g.shape(x)
    if any(v is None for v in (starts, ends, axes, steps)) or not dims or len(dims) != 4:
        return None
    kept = None
    for s, e, a, st in zip(*(np.ravel(v).tolist() for v in (starts, ends, axes, steps))):
        size = dims[int(a) % 4]
        if size is None and int(a) % 4 != axis and s == 0 and e >= BIG:
            continue  # a symbolic axis (the batch) kept whole
        if size is None or st != 1:
            return None
        s, e = (v + size if v < 0 else v for v in (s, e))
        s, e = max(0, min(s, size)), max(0, min(e, size))
        if int(a) % 4 == axis and e - s == 1:
            kept = s
        elif (s, e) != (0, size):
            return None
    return kept if kept in (0, n - 1) else None


def edge_pad(g, node, ins):
    """``(input, EdgePad)`` of a ``Concat`` along height or width of copies of its input's first row (column)
    before it and of its last after it (see the module docstring), None for another node."""
    axis = int(attrs(node).get("axis", 0)) % 4 if node.op_type == "Concat" else None
    if axis not in (2, 3) or len(ins) < 2:
        return None
    for x in dict.fromkeys(ins):
        dims = g.shape(x)
        if ins.count(x) != 1 or not dims or len(dims) != 4 or dims[axis] is None:
            continue
        at, n = ins.index(x), dims[axis]
        idx = [_edge_index(g, g.producer[i][0], x, axis, n) if i in g.producer else None for i in ins if i != x]
        if idx[:at] == [0] * at and idx[at:] == [n - 1] * (len(ins) - 1 - at):
            return x, EdgePad(axis, at, len(ins) - 1 - at)
    return None


def edge_pool_facts(g, node, ins, edges) -> dict:
    """A ``MaxPool`` (no padding of its own) after edge-copy padding ``edges`` (``(concat, EdgePad, zero pad)``)
    as a spec's pool fields: the copies are its padding (-inf, as PyTorch's), more after than before its ceil mode."""
    per_axis = {2: [0, 0], 3: [0, 0]}
    for concat, e, pad in edges:
        if pad:
            raise g.refuse(concat, "edge-copy padding after zero padding: a spec's max pool pads one way")
        per_axis[e.axis][0] += e.before
        per_axis[e.axis][1] += e.after
    (t, b), (left, r) = per_axis[2], per_axis[3]
    a = attrs(node)
    if node.op_type != "MaxPool" or any(a.get("pads", [0])) or (t, b) != (left, r) or b < t \
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise g.refuse(edges[0][0], f"edge-copy padding of rows {(t, b)} and columns {(left, r)} before "
                                    f"{node.op_type} with pads {a.get('pads', [0])}: a max pool's padding is the same "
                                    "on height and width, as much or more after (ceil mode) as before")
    out = {"kernel": a.get("kernel_shape", [1])[0], "stride": a.get("strides", [1])[0], "padding": t}
    if b > t or a.get("ceil_mode", 0):
        out["ceil_mode"] = True
    return out


def pool_facts(node, ins, pad: int) -> dict:
    """A MaxPool/AveragePool as a spec's pool fields; ``pad`` is a zero Pad in front of it."""
    a = attrs(node)
    k, s = a.get("kernel_shape", [1])[0], a.get("strides", [1])[0]
    pads = a.get("pads", [0, 0, 0, 0])
    p = pads[0] + pad
    out = {"kernel": k, "stride": s, "padding": p}
    if a.get("ceil_mode", 0) or pads[2] > pads[0]:
        out["ceil_mode"] = True
    if pad:
        out["pad_value"] = "zero"
    if node.op_type == "AveragePool":
        out["count_include_pad"] = bool(a.get("count_include_pad", 0)) or bool(pad)
    return out


def spatial_mean(g, node, ins) -> bool:
    """A ``GlobalAveragePool``, or a ``ReduceMean`` over height and width (axes as attribute or input)."""
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = ins[1] if len(ins) > 1 and ins[1] else None
    axes = g.const(node, axes).reshape(-1).tolist() if axes else attrs(node).get("axes", [])
    return sorted(int(a) % 4 for a in axes) == [2, 3]


def broadcast_source(g, node, ins):
    """The input an ``Expand`` broadcasts to a shape that is a constant or the ``Shape`` of a computed
    tensor (``y.expand_as(x)``, as torch.onnx.export writes a gate), or None for another node."""
    if node.op_type != "Expand" or len(ins) != 2 or not ins[0]:
        return None
    shape = ins[1]
    if shape in g.consts or (shape in g.producer and g.producer[shape][0].op_type == "Shape"):
        return ins[0]
    return None


def anti_alias_pool(g, node, pad: int) -> None:
    """Refuse an ``AveragePool`` in a residual branch unless it is timm's anti-aliasing pool
    (``AvgPool2d(stride)``: a square window equal to its stride, no padding, floor)."""
    a = attrs(node)
    k, s, pads = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1])), list(a.get("pads", [0] * 4))
    if pad or len(set(k)) != 1 or k != s or any(pads) or a.get("ceil_mode", 0) \
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise g.refuse(node, f"an average pool of kernel {k}, strides {s}, pads {pads}"
                             f"{' after a Pad' if pad else ''}, ceil_mode {a.get('ceil_mode', 0)} in a residual "
                             "branch: timm's anti-aliasing pool (block.anti_alias: avgpool) has window = stride, no "
                             "padding, floor")


def shortcut_reshapes(g, short) -> bool:
    """Whether a projection shortcut changes the shape: channels or stride (a type-C stage start)."""
    for _, n, ins in short:
        if n.op_type == "AveragePool":
            return True
        if n.op_type == "Conv":
            w, a = g.const(n, ins[1]), attrs(n)
            if w.shape[0] != w.shape[1] * a.get("group", 1) or max(a.get("strides", [1])) > 1:
                return True
    return False


#: A node joining computed paths that the reader does not read back, by op type -> the refusal's words.
UNREAD_JOINS = {"Sum": "parallel paths joined by something other than a selective kernel's attention (SKNet)",
                "Concat": "a Concat that is neither a blur pool's reflect padding nor Res2Net's split convs (a Split or "
                          "Slices of one tensor's channels)"}
