"""The stem of an ONNX ResNet graph (:mod:`.reader`): convolutions, BNs, ReLUs and the stem pool."""

from __future__ import annotations

from .checked import declared_input
from .patterns import attrs as _attrs, border_mask, edge_pool_facts, EdgePad, pool_facts
from ..common import entry_permutation
from ...importers.source import ImportRefused


def entry_layout(g) -> tuple:
    """(the input layout of graph ``g``, the value its NCHW body starts from): 'nchw' and the input
    itself, or 'nhwc' and the output of the one ``Transpose`` (perm [0, 3, 1, 2]) that reads the input
    -- ``convert --layout nhwc``'s entry, and tf2onnx's. That Transpose is taken out of the graph's
    walk; a Transpose of the input with any other perm, or an input read both transposed and as it is,
    is refused naming the node."""
    name = g.input.name
    users = g.consumers.get(name, [])
    node = next((n for n in users if n.op_type == "Transpose"), None)
    if node is None:
        return "nchw", name
    want = list(entry_permutation("nhwc", "nchw"))
    perm = list(_attrs(node).get("perm", []))
    if perm != want:
        shown = perm or "unset (the axes reversed)"
        raise g.refuse(node, f"a Transpose of the input with perm {shown}; import reads an NCHW input, or an "
                             f"NHWC one transposed to NCHW by perm {want}")
    if len(users) > 1:
        other = next(n for n in users if n is not node)
        raise g.refuse(other, f"reads the input as it is while {node.name or node.output[0]!r} transposes it to "
                              "NCHW; a ResNet reads its input once")
    out = node.output[0]
    g.nodes = [(n, ins) for n, ins in g.nodes if n is not node]
    del g.producer[out]
    return "nhwc", out


class StemReader:
    """Mixin of the graph walker: the ops before the first residual block."""

    def stem(self, ops, preact):
        conv_pool = self._conv_pool(ops)
        convs = sum(1 for kind, n, _ in ops if kind == "op" and n.op_type == "Conv") - bool(conv_pool)
        if convs == 0:
            raise ImportRefused(f"{self.g.path}: no stem convolution before the first residual block")
        names = ["conv1"] if convs == 1 else [f"conv1.{3 * i}" for i in range(convs)]
        bns = ["bn1"] if convs == 1 else [f"conv1.{3 * i + 1}" for i in range(convs - 1)] + ["bn1"]
        left = self.sequence(ops, names + ["maxpool.0"] * bool(conv_pool), bns + ["maxpool.1"] * bool(conv_pool),
                             v1=not preact)
        self._stem_conv = names[-1]
        pool = self.stem_pool(ops, left)
        if conv_pool and pool:
            raise self.g.refuse(conv_pool, "a strided conv stem pool and a pool after it; a spec's stem has one pool")
        if conv_pool:
            layer = self.src.layers["maxpool.0"]
            pool = {"type": "conv", "kernel": layer.shape[2], "stride": layer.stride, "padding": layer.padding}
        self.src.facts["stem_pool"] = pool
        facts, notes = declared_input(self.g.input, self.g.layout)  # the proof runs its own batch, not the file's
        self.src.facts.update(facts, layout=self.g.layout)
        if self.g.layout != "nchw":
            self.src.notes.append(f"the file takes {self.g.layout.upper()} input (one Transpose to NCHW first, as "
                                  f"convert --layout {self.g.layout} and tf2onnx write it): the spec is layout-free; "
                                  f"the proof feeds the file {self.g.layout.upper()}")
        self.src.notes += notes

    def stem_pool(self, ops, left):
        """The spec's ``stem.pool`` for the nodes the stem's convs, BNs and ReLUs left (``left``): one
        MaxPool (a border mask after it: zero padding; a blur pool after it: the blur takes its stride) or
        AveragePool after the last conv, or None."""
        pools = [(n, ins, pad) for n, ins, pad in left if n.op_type in ("MaxPool", "AveragePool")]
        blurs = [(n, ins) for n, ins, _ in left if isinstance(ins, dict)]  # a blur pool's facts
        edges = [(n, ins, pad) for n, ins, pad in left if isinstance(ins, EdgePad)]  # edge-copy padding
        masked = False
        for n, ins, _ in left:
            if isinstance(ins, (dict, EdgePad)):
                continue
            if pools and border_mask(self.g, n, ins):
                masked = True
            elif n.op_type not in ("Relu", "MaxPool", "AveragePool"):
                raise self.g.refuse(n, "not expected in a ResNet stem (conv, BN, ReLU, max or average pool)")
        if not pools and edges:
            raise self.g.refuse(edges[0][0], "edge-copy padding in the stem without the max pool it pads")
        if not pools:
            if blurs:
                raise self.g.refuse(blurs[0][0], "a blur pool in the stem without the max-pool at stride 1 before "
                                                 "it (timm's resnetblur stem)")
            return None
        if len(pools) > 1:
            raise self.g.refuse(pools[1][0], "a second pool in the stem; a spec's stem has one")
        node = pools[0][0]
        at = next(k for k, (_, n, _) in enumerate(ops) if n is node)
        if any(kind == "op" and n.op_type == "Conv" for kind, n, _ in ops[at:]):
            raise self.g.refuse(node, "a pool between the stem's convolutions; a spec's stem pools after them")
        order = [n for _, n, _ in ops]
        if any(order.index(n) > at for n, _, _ in edges) or (edges and pools[0][2]):
            raise self.g.refuse(edges[0][0], "edge-copy padding after the stem pool, or with zero padding between it "
                                             "and the pool; it alone pads the max pool")
        facts = edge_pool_facts(self.g, *pools[0][:2], edges) if edges else pool_facts(*pools[0])
        if masked:
            facts["pad_value"] = "zero"
        if node.op_type == "AveragePool":
            facts.pop("pad_value", None)  # a Pad in front: counted padding (pool_facts says so)
            counted = facts.pop("count_include_pad")
            if facts["padding"] and not counted:  # padding 0: counting decides nothing (PyTorch's default kept)
                facts["count_include_pad"] = False
            facts = {"type": "avg", **facts}
        return self._stem_blur(ops, node, facts, blurs) if blurs else facts

    def _stem_blur(self, ops, pool, facts, blurs):
        """timm's resnetblur stem: the max-pool at stride 1 (no ceil mode), then one blur pool, which takes
        the stride: the spec's ``stem.pool.anti_alias: blur``."""
        blur, blur_facts = blurs[0]
        order = [n for _, n, _ in ops]
        if len(blurs) > 1 or pool.op_type != "MaxPool" or facts["stride"] != 1 or facts.get("ceil_mode") \
                or order.index(blur) < order.index(pool):
            raise self.g.refuse(blur, "a blur pool in the stem that is not timm's (one blur after a max-pool at "
                                      "stride 1, no ceil mode)")
        return {**facts, "stride": blur_facts["stride"], "anti_alias": "blur"}

    def _conv_pool(self, ops):
        """ResNet-RS's stem pool (timm ``replace_stem_pool``): a strided conv after the stem's first conv and
        its ReLU (only a stem's first conv is strided), or None. Its BN and ReLU follow it (``maxpool.1``)."""
        convs = [k for k, (kind, n, _) in enumerate(ops) if kind == "op" and n.op_type == "Conv"]
        if len(convs) < 2:
            return None
        node, ins = ops[convs[-1]][1:]
        strides = _attrs(node).get("strides", [1, 1])
        if max(strides) == 1 or ops[convs[-1] - 1][1].op_type != "Relu":
            return None
        return node
