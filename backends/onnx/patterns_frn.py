"""The node patterns of the norm-act layers (``resnet_spec.ir_frn``: Filter Response Normalization with its TLU,
EvoNorm-S0) that the ONNX reader recognises, anchored at their one ``Sqrt`` (no other op of a ResNet graph has
one), in the forms torch.onnx.export writes timm's FilterResponseNormTlu2d and EvoNorm2dS0 (TorchScript: Mul,
Cast, ReduceMean, Div(1, .), Expand; dynamo: Pow, ReduceMean, Reciprocal, Expand) and :mod:`.frn` writes them
(GlobalAveragePool, Div):

* the statistic, backwards from the ``Sqrt``: ``Add`` of one constant (eps) <- ``ReduceMean`` or
  ``GlobalAveragePool`` <- ``Mul(a, a)`` or ``Pow(a, 2)`` (Casts and Reshapes between them passed); FRN: ``a`` is
  the norm's input ``x``; EvoNorm-S0: ``a = Sub(u, mean(u))`` with ``u = Reshape(x, (N, groups, ...))`` (the
  groups: that constant shape's second value);
* forwards from the ``Sqrt``, each value read by one node: Div, Reciprocal, Cast, Expand, Reshape, Mul, up to the
  ``Mul`` by a per-channel constant (the weight), then ``Add`` of one (the bias), then for FRN's TLU ``Max`` with
  one (tau); EvoNorm-S0's ``v``: the one ``Sigmoid``'s ``Mul(x, v)``.

What the nodes between ``x`` and the weight's ``Mul`` compute is then evaluated on two trial inputs (unit scale
and of mean square near eps, where eps counts) and compared with the op's reference formula
(``ir_frn.frn_numpy``, ``evonorm_s0_numpy``) on the facts read: a region that computes anything else, or reads
anything but ``x`` and constants, is refused in one line naming its ``Sqrt``. EvoNorm-S0 without its activation
is an affine alone (``Mul`` and ``Add``), read as such by :func:`.patterns_norm.affine_back` and named an EvoNorm
by :mod:`.read_frn` where the network's other norms are EvoNorm-S0."""

from __future__ import annotations

import numpy as np

from .patterns import EvalBudget, MAX_FOLD
from .patterns_norm import evaluate, per_channel
from ... import ir_frn

#: the ops between a norm-act's input and its weight's Mul, as the exporters and backends/onnx/frn.py write them
#: (with a dynamic batch, the shapes of Reshape and Expand computed from the input's: Shape, Gather, Concat...)
REGION_OPS = frozenset(("Mul", "Div", "Sqrt", "Add", "Sub", "Pow", "ReduceMean", "GlobalAveragePool", "Cast",
                        "Expand", "Reshape", "Reciprocal", "Sigmoid", "Unsqueeze", "Squeeze", "Shape", "Gather",
                        "Concat", "Slice", "ConstantOfShape", "Equal", "Where"))
FORWARD_OPS = ("Div", "Reciprocal", "Cast", "Expand", "Reshape", "Mul")
MAX_REGION = 80  # a dynamic batch's shape arithmetic: ~45 nodes in TorchScript's EvoNorm-S0
WHAT = "a Sqrt that is not Filter Response Normalization (timm FilterResponseNormTlu2d) nor EvoNorm-S0 (EvoNorm2dS0)"
TOLERANCE = 1e-4  # float32 reductions against the float64 reference, relative to the largest value
#: trial values all the norms of one graph may be checked on, two trials each (resnetv2_50d_frn at 224 px, batch 1:
#: 51 norms over 9.8M values, so 2 x 9.8M of it)
CHECK_TOTAL = 1 << 28


class NotNormAct(Exception):
    """Why a Sqrt's nodes are not a norm-act layer (the refusal's words)."""


def _prod(g, value):
    return g.producer.get(value, (None, None))


def _strip(g, value, ops):
    """``value`` with the nodes of ``ops`` before it (Casts, Reshapes) passed, following their first input."""
    for _ in range(8):
        node, ins = _prod(g, value)
        if node is None or node.op_type not in ops:
            break
        value = ins[0]
    return value


def norm_acts(g) -> dict:
    """{the value each norm-act ends in: (facts, its input)} for every ``Sqrt`` of the graph; one that is not
    a norm-act as the module docstring reads them is refused in one line."""
    out, live, budget = {}, _computed(g), EvalBudget(CHECK_TOTAL)  # one budget of trial values for the graph
    for node, ins in list(g.nodes):
        if node.op_type == "Sqrt" and ins[0] in live:  # not one of a weight computed from constants
            try:
                facts, x, end = _read(g, node, ins, budget)
            except NotNormAct as why:
                raise g.refuse(node, f"{WHAT}: {why}") from None
            relu = next((n for n in g.consumers.get(end, []) if n.op_type == "Relu"), None)
            if relu is not None:
                name = "Filter Response Normalization" if facts["kind"] == "frn" else "EvoNorm-S0"
                raise g.refuse(relu, f"a ReLU right after {name} ({facts['origin']!r}, "
                                     f"{'with' if facts['act'] else 'without'} its own activation): a spec's "
                                     f"{facts['kind']} holds the ReLU after it as its activation, never both")
            out[end] = (facts, x)
    return out


def _computed(g) -> set:
    """The values computed from the graph's input."""
    seen, stack = set(), [g.input.name]
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(o for n in g.consumers.get(v, []) for o in n.output if o)
    return seen


def _read(g, sqrt, ins, budget: EvalBudget):
    facts, x = _statistic(g, ins[0])
    end, n_value, region_end = _forward(g, sqrt, facts)
    nodes = _region(g, n_value, x, region_end)
    _activation_facts(g, facts, nodes, x)
    _check(g, facts, nodes, x, end, budget)
    facts["origin"] = sqrt.name or sqrt.output[0]
    return facts, x, end


def _statistic(g, value):
    """(facts: kind, eps, groups; the norm's input) from the Sqrt's input backwards."""
    add, ains = _prod(g, _strip(g, value, ("Cast", "Reshape")))
    eps = [i for i in ains or () if i in g.consts]
    if add is None or add.op_type != "Add" or len(eps) != 1 or len(g.data(ains)) != 1 or g.consts[eps[0]].size != 1:
        raise NotNormAct("its input is not Add(statistic, eps) with a one-value constant eps")
    eps = float(str(np.float32(np.asarray(g.consts[eps[0]]).reshape(-1)[0])))
    red, rins = _prod(g, _strip(g, g.data(ains)[0], ("Cast", "Reshape")))
    if red is None or red.op_type not in ("ReduceMean", "GlobalAveragePool"):
        raise NotNormAct("eps is not added to a mean (ReduceMean, GlobalAveragePool)")
    sq, sins = _prod(g, _strip(g, rins[0], ("Cast",)))
    square = sq is not None and ((sq.op_type == "Mul" and sins[0] == sins[1]) or (
        sq.op_type == "Pow" and sins[1] in g.consts and np.all(np.asarray(g.consts[sins[1]]) == 2)))
    if not square:
        raise NotNormAct("the mean is not of squares (Mul(a, a), Pow(a, 2))")
    a = _strip(g, sins[0], ("Cast",))
    sub, subins = _prod(g, a)
    if sub is None or sub.op_type != "Sub":
        return {"kind": "frn", "eps": eps, "groups": None}, a  # FRN: the mean square of the input itself
    shaped, rsins = _prod(g, _strip(g, subins[0], ("Cast",)))
    if shaped is None or shaped.op_type != "Reshape":
        raise NotNormAct("a variance not over the input reshaped to groups (EvoNorm-S0's)")
    # the groups: the Reshape's shape (N, groups, ...), computed from the input's where the batch is dynamic
    return {"kind": "evonorm_s0", "eps": eps, "groups": rsins[1]}, _strip(g, rsins[0], ("Cast",))


def _only_consumer(g, value):
    users = g.consumers.get(value, [])
    if len(users) != 1 or value == g.output:
        raise NotNormAct(f"{value!r} is read by {len(users)} nodes; inside a norm each value is read by one")
    node = users[0]
    return node, g.producer[node.output[0]][1]


def _forward(g, sqrt, facts):
    """(the norm's last node's output, the weight Mul's data input, the weight Mul) from the Sqrt forwards;
    the weight, bias and tau into ``facts``."""
    value = sqrt.output[0]
    for _ in range(MAX_REGION):
        node, ins = _only_consumer(g, value)
        data = g.data(ins)
        weight = per_channel(g, next((i for i in ins if i in g.consts), None)) if len(ins) == 2 else None
        if node.op_type == "Mul" and len(data) == 1 and weight is not None:
            break
        if node.op_type not in FORWARD_OPS:
            raise NotNormAct(f"{node.op_type} node {node.name or node.output[0]!r} after it, before any Mul by a "
                             "per-channel weight")
        value = node.output[0]
    else:
        raise NotNormAct("no Mul by a per-channel weight after it")
    mul, n_value = node, data[0]
    add, ains = _only_consumer(g, mul.output[0])
    bias = per_channel(g, next((i for i in ains if i in g.consts), None)) if len(ains) == 2 else None
    if add.op_type != "Add" or bias is None or len(g.data(ains)) != 1:
        raise NotNormAct(f"the weight's Mul ({mul.name or mul.output[0]!r}) is not followed by an Add of a "
                         "per-channel bias")
    facts.update(weight=weight, bias=bias, tau=None, nodes=[(mul, g.producer[mul.output[0]][1]), (add, ains)])
    users = g.consumers.get(add.output[0], [])
    if len(users) == 1 and users[0].op_type == "Max" and add.output[0] != g.output:
        node = users[0]
        mins = g.producer[node.output[0]][1]
        tau = per_channel(g, next((i for i in mins if i in g.consts), None)) if len(mins) == 2 else None
        if tau is None or len(g.data(mins)) != 1:
            raise NotNormAct(f"a Max ({node.name or node.output[0]!r}) after its affine that is not by a "
                             "per-channel tau (FRN's TLU)")
        facts["tau"] = tau
        facts["nodes"].append((node, mins))
        return node.output[0], n_value, mul
    return add.output[0], n_value, mul


def _region(g, n_value, x, weight_mul):
    """The nodes computing ``n_value`` from ``x`` and constants alone (graph order); refused where they read
    anything else, hold an op of no norm, or hand a value to a node outside them."""
    nodes, stack, seen = {}, [n_value], set()
    while stack:
        v = stack.pop()
        if not v or v == x or v in g.consts or v in seen:
            continue
        seen.add(v)
        node, ins = _prod(g, v)
        if node is None:
            raise NotNormAct(f"its nodes read {v!r}, not only its input {x!r} and constants")
        if node.op_type not in REGION_OPS or len(nodes) >= MAX_REGION:
            raise NotNormAct(f"{node.op_type} node {node.name or v!r} between its input {x!r} and its result"
                             if node.op_type not in REGION_OPS else f"more than {MAX_REGION} nodes")
        nodes[id(node)] = (node, ins)
        stack.extend(ins)
    inside = {id(n) for n, _ in nodes.values()} | {id(weight_mul)}
    for node, _ in nodes.values():
        for o in node.output:
            leak = [u for u in g.consumers.get(o, []) if id(u) not in inside]
            if leak or o == g.output:
                raise NotNormAct(f"{node.op_type} node {node.name or o!r} inside it also feeds "
                                 f"{leak[0].name if leak else 'the graph output'!r}")
    return sorted(nodes.values(), key=lambda p: g.index[id(p[0])])


def _activation_facts(g, facts, nodes, x):
    """EvoNorm-S0's ``v`` (its one Sigmoid of ``Mul(x, v)``) and ``act`` into ``facts``; FRN's act is its TLU."""
    sigmoids = [(n, ins) for n, ins in nodes if n.op_type == "Sigmoid"]
    if facts["kind"] == "frn":
        if sigmoids:
            raise NotNormAct("a Sigmoid in a mean-square norm (FRN has none; EvoNorm-S0's variance is centered)")
        facts["act"] = facts["tau"] is not None
        return
    if facts["tau"] is not None:
        raise NotNormAct("a Max after an EvoNorm-S0 (its activation is x * sigmoid(v x); a TLU is FRN's)")
    if len(sigmoids) != 1:
        raise NotNormAct(f"{len(sigmoids)} Sigmoids in a group-variance norm; EvoNorm-S0 has one, of v * x")
    mul, mins = _prod(g, _strip(g, sigmoids[0][1][0], ("Cast",)))
    v = per_channel(g, next((i for i in mins if i in g.consts), None)) if mul is not None and len(mins) == 2 else None
    if mul is None or mul.op_type != "Mul" or v is None or _strip(g, g.data(mins)[0], ("Cast",)) != x:
        raise NotNormAct("its Sigmoid is not of the input times a per-channel v (EvoNorm-S0's x * sigmoid(v x))")
    facts.update(v=v, act=True)


def _check(g, facts, nodes, x, end, budget: EvalBudget):
    """The region and affine (and TLU) evaluated on two trial inputs against the reference formula."""
    shape = g.shape(x)
    if shape is None or len(shape) != 4 or any(d is None for d in shape[1:]):
        raise NotNormAct(f"its input's shape {shape} is not a known (N, C, H, W)")
    c = shape[1]
    leaves = ("weight", "bias") + (("tau",) if facts["kind"] == "frn" and facts["act"] else ("v",) if facts["act"]
                                   else ())
    if any(facts[k].size != c for k in leaves):
        raise NotNormAct(f"{', '.join(f'{k} of {facts[k].size}' for k in leaves)} values for {c} channels")
    batch = shape[0] if shape[0] else 1  # a fixed batch may be baked into the Reshapes' shapes
    size = batch * int(np.prod(shape[1:]))
    if size > MAX_FOLD:  # checked before a trial input is drawn: the shapes are the file's own
        raise NotNormAct(f"its input of shape {[batch, *shape[1:]]} holds {size:,} values, over the "
                         f"{MAX_FOLD:,} its check evaluates (export with batch 1 or a dynamic batch)")
    if not budget.spend(2 * size):  # two trials
        raise NotNormAct(f"the graph's norms hold more than the {budget.total:,} trial values their checks evaluate")
    rng = np.random.default_rng(0)
    trials = [(rng.standard_normal((batch, *shape[1:])) * scale).astype(np.float32)
              for scale in (1.0, max(facts["eps"], 1e-12) ** 0.5)]
    if facts["groups"] is not None:
        facts["groups"] = _groups(g, nodes, facts["groups"], x, trials[0], c)
    w = {f"n.{k}": np.asarray(facts[k], np.float64) for k in leaves}
    op = ir_frn.FRN("n", c, facts["eps"], facts["act"], None, None) if facts["kind"] == "frn" else \
        ir_frn.EvoNormS0("n", c, facts["groups"], facts["eps"], True, None, None)
    reference = ir_frn.frn_numpy if facts["kind"] == "frn" else ir_frn.evonorm_s0_numpy
    chain = nodes + facts.pop("nodes")
    consts = {i: np.asarray(g.consts[i]) for _, ins in chain for i in ins if i in g.consts}
    for trial in trials:
        scale = float(np.sqrt((trial.astype(np.float64) ** 2).mean()))
        got = evaluate(g, chain, {**consts, x: trial}, end)
        ref = reference(op, trial, w) if got is not None else np.zeros(1)
        err = np.inf if got is None or got.shape != ref.shape else float(np.abs(got - ref).max())
        if not err <= TOLERANCE * float(np.abs(ref).max()):
            name = "FRN" if facts["kind"] == "frn" else "EvoNorm-S0"
            raise NotNormAct(f"its nodes compute something else than {name} of eps {facts['eps']:g}"
                             f"{'' if op.__class__ is ir_frn.FRN else f', {op.groups} groups'}"
                             f"{' with its activation' if facts['act'] else ''} on the weights read (max error "
                             f"{err:.1e} of {float(np.abs(ref).max()):.1e} on a trial input of rms {scale:.1e})")


def _groups(g, nodes, shape_value, x, trial, c) -> int:
    """EvoNorm-S0's groups: the second value of the shape its input is reshaped to (a constant, or computed from
    the input's shape: evaluated on the trial input); they must divide the channels."""
    shape = g.consts.get(shape_value)
    if shape is None:
        consts = {i: np.asarray(g.consts[i]) for _, ins in nodes for i in ins if i in g.consts}
        shape = evaluate(g, nodes, {**consts, x: trial}, shape_value)
    shape = [] if shape is None else [int(d) for d in np.asarray(shape).reshape(-1)]
    if len(shape) < 3 or shape[1] < 1 or c % shape[1]:
        raise NotNormAct(f"a variance over the input reshaped to {shape}; EvoNorm-S0's is (N, groups, ...), groups "
                         f"dividing its {c} channels")
    return shape[1]
