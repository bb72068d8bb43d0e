"""The node patterns of the norms without running statistics (``resnet_spec.ir_norm``) that the ONNX reader
(:mod:`.read_norm`) recognises.

* GroupNorm, as :mod:`.norm` writes it and torch.onnx.export decomposes ``nn.GroupNorm`` (TorchScript and dynamo
  exporters): ``Reshape (N, G, -1)`` -> ``InstanceNormalization`` (scale 1, bias 0, eps) -> ``Reshape`` back (to a
  constant (N, C, H, W) or to the ``Shape`` of the input) -> ``Mul`` by a constant weight -> ``Add`` a constant bias
  (both of C values, shaped (C, 1, 1) or (1, C, 1, 1)).
* ONNX's own ``GroupNormalization`` from opset 21 (scale and bias per channel; the dynamo exporter's there).
* A BatchNorm in inference form as tf2onnx writes Keras 3's (``tf.nn.batch_normalization``, whose statistics
  grappler folds into constants): ``Mul`` by a constant scale, then ``Add`` of a constant shift, each of C values
  shaped (1, C, 1, 1) or (C, 1, 1); a ``Mul`` alone (shift 0) or an ``Add`` alone (scale 1: a bias the exporter
  kept apart from its conv). Read as an affine-only norm (:func:`affine_back`), which the reader writes as a BN
  with identity statistics (:meth:`.read_layers.LayerReader.affine`).
* Weight standardization (timm's StdConv2d): a ``Conv`` whose weight is computed in the graph from a constant by a
  chain of a few elementwise, reshaping and reducing nodes around one ``InstanceNormalization`` or
  ``BatchNormalization`` (its eps). What the chain computes is evaluated and compared with the weight
  standardized per output filter (biased variance, that eps): the raw weight is the chain's constant for which
  they agree. A chain that computes anything else is refused.
"""

from __future__ import annotations

import numpy as np

from .patterns import attrs, EvalBudget, fold_size, MAX_FOLD
from ...ir_norm import standardize

#: the nodes a weight-standardization chain may hold (as the exporters and backends/onnx/norm.py write it)
CHAIN_OPS = frozenset(("Reshape", "Transpose", "ReduceMean", "Sub", "Mul", "Div", "Add", "Sqrt", "Pow", "Cast",
                       "Unsqueeze", "Squeeze", "Flatten", "BatchNormalization", "InstanceNormalization"))
NORMS = ("BatchNormalization", "InstanceNormalization")
MAX_CHAIN = 24


def eps_of(node) -> float:
    """A norm node's epsilon as the shortest decimal that rounds to its float32 (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(attrs(node).get("epsilon", 1e-5))))


def _const_and_data(g, node, ins):
    data = g.data(ins)
    consts = [i for i in ins if i in g.consts]
    return (data[0], g.consts[consts[0]]) if len(data) == 1 and len(consts) == 1 and len(ins) == 2 else (None, None)


def group_norm_back(g, add, ins):
    """``(facts, input)`` of the GroupNorm ending at ``add`` (see the module docstring), None where ``add`` does
    not end an affine of an ``InstanceNormalization``; a half match is refused in one line."""
    y, beta = _const_and_data(g, add, ins) if add.op_type == "Add" else (None, None)
    mul = g.producer.get(y, (None, None))
    if beta is None or mul[0] is None or mul[0].op_type != "Mul":
        return None
    y, gamma = _const_and_data(g, *mul)
    back = g.producer.get(y, (None, None))
    if gamma is None or back[0] is None or back[0].op_type != "Reshape":
        return None
    inorm = g.producer.get(back[1][0], (None, None))
    if inorm[0] is None or inorm[0].op_type != "InstanceNormalization":
        return None
    node, nins = inorm
    to_groups = g.producer.get(nins[0], (None, None))
    c = gamma.size
    why = _group_norm_problem(g, (to_groups, node, nins, back), gamma, beta)
    if why:
        raise g.refuse(add, f"a GroupNorm-like InstanceNormalization ({node.name or node.output[0]!r}): {why}")
    groups = int(g.const(to_groups[0], to_groups[1][1]).reshape(-1)[1])
    facts = {"groups": groups, "eps": eps_of(node), "weight": np.asarray(gamma, np.float32).reshape(c),
             "bias": np.asarray(beta, np.float32).reshape(c)}
    return facts, to_groups[1][0]


def group_norm_op(g, node, ins):
    """``(facts, input)`` of ONNX's own ``GroupNormalization`` (torch.onnx.export's dynamo exporter from opset 21,
    where its scale and bias are per channel); before opset 21 they are per group, which no spec says: refused."""
    a = attrs(node)
    groups = int(a.get("num_groups", 0))
    scale, bias = (np.asarray(g.const(node, i), np.float32).reshape(-1) for i in ins[1:3])
    c = scale.size
    if g.opset < 21 or bias.size != c or groups < 1 or c % groups or int(a.get("stash_type", 1)) != 1:
        raise g.refuse(node, f"GroupNormalization at opset {g.opset}, {groups} groups, scale of {c} values, "
                             f"stash_type {a.get('stash_type', 1)}: a spec's GroupNorm is opset 21's, a scale and "
                             "bias per channel, statistics in float32")
    return {"groups": groups, "eps": eps_of(node), "weight": scale, "bias": bias}, ins[0]


def _group_norm_problem(g, chain, gamma, beta):
    (to_groups, node, nins, back) = chain
    c = gamma.size
    if to_groups[0] is None or to_groups[0].op_type != "Reshape" or to_groups[1][1] not in g.consts:
        return "its input is not reshaped to (N, groups, -1) by a constant shape"
    shape = [int(v) for v in g.consts[to_groups[1][1]].reshape(-1)]
    if len(shape) != 3 or shape[0] == -1 or shape[2] != -1 or shape[1] < 1 or c % shape[1]:
        return f"its input is reshaped to {shape}; GroupNorm's is (N, groups, -1), groups dividing {c} channels"
    scale, shift = (g.consts.get(i) for i in nins[1:3])
    if scale is None or shift is None or np.any(np.asarray(scale) != 1) or np.any(np.asarray(shift) != 0):
        return "its own scale and bias are not ones and zeros (GroupNorm's affine is per channel, after it)"
    if beta.size != c or tuple(gamma.shape) not in ((c, 1, 1), (1, c, 1, 1)) or beta.shape != gamma.shape:
        return f"weight {tuple(gamma.shape)} and bias {tuple(beta.shape)}: GroupNorm's are (C, 1, 1) per channel"
    target = back[1][1]
    if target in g.consts:
        dims = [int(v) for v in g.consts[target].reshape(-1)]
        if len(dims) != 4 or dims[1] != c or dims[0] == -1:
            return f"reshaped back to {dims}, not (N, {c}, H, W)"
    elif not (target in g.producer and g.producer[target][0].op_type == "Shape"
              and g.producer[target][1][0] == to_groups[1][0]):
        return "reshaped back to a shape that is not its input's"
    return None


def per_channel(g, name):
    """A constant's C values where it is shaped (1, C, 1, 1) or (C, 1, 1) (one value per NCHW channel), else None."""
    value = g.consts.get(name)
    if value is None:
        return None
    value = np.asarray(value)
    if value.dtype.kind != "f" or value.ndim not in (3, 4) or value.shape[-2:] != (1, 1) \
            or (value.ndim == 4 and value.shape[0] != 1):
        return None
    return value.astype(np.float32).reshape(-1)


def affine_back(g, node, ins):
    """``(facts, input)`` of a per-channel affine ending at ``node`` (see the module docstring): ``Mul(x, scale)``
    then ``Add(., shift)``, ``Mul`` alone or ``Add`` alone; None for another node."""
    if node.op_type not in ("Mul", "Add") or len(ins) != 2 or len(g.data(ins)) != 1:
        return None
    x = g.data(ins)[0]
    c = next(i for i in ins if i != x)
    value = per_channel(g, c)
    if value is None:
        return None  # a Mul by another constant: refused by the walk (not a gate either), naming it
    if node.op_type == "Mul":
        return {"scale": value, "shift": np.zeros_like(value)}, x
    mul = g.producer.get(x)
    scale = affine_back(g, *mul) if mul and mul[0].op_type == "Mul" and len(g.consumers.get(x, [])) == 1 else None
    if scale is None:
        return {"scale": np.ones_like(value), "shift": value}, x
    if scale[0]["scale"].size != value.size:
        raise g.refuse(node, f"a shift of {value.size} channels after a scale of {scale[0]['scale'].size}: a "
                             "BatchNorm in inference form has one of each per channel")
    return {"scale": scale[0]["scale"], "shift": value}, scale[1]


def restandardized(w, eps: float) -> float:
    """How far standardizing ``w`` (per output filter, biased variance, ``eps``) moves it, relative to its
    largest value: ~0 for a weight an exporter stored already standardized (torch.onnx.export's dynamo exporter
    folds small ones), which then stands for its raw weight."""
    w = np.asarray(w, np.float64)
    return float(np.abs(standardize(w, eps) - w).max() / max(np.abs(w).max(), 1e-30))


def standardized_weights(g) -> dict:
    """Every ``Conv`` weight computed in the graph by a weight-standardization chain: its raw weight put in
    ``g.consts`` under the weight's name; returns {weight name: eps}."""
    out = {}
    # all the chains of a graph together evaluate at most twice the values of its constants
    budget = EvalBudget(max(MAX_FOLD, 2 * sum(np.asarray(v).size for v in g.consts.values())))
    for node, ins in list(g.nodes):
        if node.op_type == "Conv" and len(ins) > 1 and ins[1] and ins[1] not in g.consts:
            found = _standardized(g, node, ins[1], budget)
            if found is not None:
                g.consts[ins[1]], out[ins[1]] = found
    return out


def _chain(g, value):
    """(nodes in graph order, constant leaves) computing ``value`` from constants alone, or None."""
    nodes, leaves, stack, seen = {}, set(), [value], set()
    while stack:
        v = stack.pop()
        if not v or v in seen:
            continue
        seen.add(v)
        if v in g.consts:
            leaves.add(v)
            continue
        if v not in g.producer:
            return None
        node, ins = g.producer[v]
        if node.op_type not in CHAIN_OPS or len(nodes) >= MAX_CHAIN:
            return None
        nodes[id(node)] = (node, ins)
        stack.extend(ins)
    return sorted(nodes.values(), key=lambda p: g.index[id(p[0])]), leaves


def _standardized(g, conv, value, budget: EvalBudget):
    found = _chain(g, value)
    if found is None:
        return None
    nodes, leaves = found
    norms = [n for n, _ in nodes if n.op_type in NORMS]
    if not norms:
        return None
    if len(norms) > 1:
        raise g.refuse(conv, "a weight computed through several norms; a weight-standardized conv has one")
    eps = eps_of(norms[0])
    consts = {n: np.asarray(g.consts[n]) for n in leaves}
    # a standardized weight is no larger than its raw constant, which the file holds (BiT-M x3/x4's largest
    # convs, 6144x3072 and 8192x4096, are over MAX_FOLD): each step may be as large as the chain's constants
    need = sum(a.size for a in consts.values())
    if not budget.spend(need):
        raise g.refuse(conv, f"weight-standardization chains that evaluate more than {budget.total:,} values "
                             "together (twice the graph's constants)")
    computed = evaluate(g, nodes, consts, value, max(MAX_FOLD, need))
    if computed is not None and computed.ndim == 4:
        expected = None
        for leaf in sorted(leaves):
            raw = np.asarray(g.consts[leaf])
            if raw.size == computed.size and raw.dtype.kind == "f":
                raw = raw.reshape(computed.shape)
                expected = standardize(raw.astype(np.float64), eps)
                if np.abs(expected - computed).max() <= 1e-5 * max(1.0, float(np.abs(expected).max())):
                    return raw.astype(np.float32), eps
    raise g.refuse(conv, f"a weight computed in the graph through {norms[0].op_type} that is not a constant "
                         f"standardized per output filter (timm StdConv2d: biased variance, eps {eps:g})")


def evaluate(g, nodes, values: dict, value, cap: int = MAX_FOLD):
    """``value`` computed by ``nodes`` (in graph order) from ``values`` (their inputs' arrays: constants, and
    for :mod:`.patterns_frn` a trial input), node by node, each output at most ``cap`` elements (default
    :data:`.patterns.MAX_FOLD`: a broadcast cannot blow up); None where a node cannot run."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    values = dict(values)
    for node, ins in nodes:  # the inputs as the reader resolved them (Identity/Dropout aliases followed)
        args = [values[i] if i else None for i in ins]
        if fold_size(node, args) > cap:
            return None
        given = [i for i in ins if i]
        one = helper.make_node(node.op_type, ins, list(node.output), domain=node.domain)
        one.attribute.extend(node.attribute)
        graph = helper.make_graph([one], "standardize", [helper.make_tensor_value_info(i, 0, None) for i in given],
                                  [helper.make_tensor_value_info(o, 0, None) for o in node.output if o])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])
        try:
            outs = ReferenceEvaluator(model).run(None, {i: values[i] for i in given})
        except Exception:  # the chain cannot run: refused by the caller
            return None
        values.update(zip([o for o in node.output if o], (np.asarray(o) for o in outs)))
    return np.asarray(values[value], np.float64) if value in values else None
