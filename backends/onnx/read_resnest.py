"""ResNeSt's split attention (timm ``SplitAttn``, ``block.spatial: {type: split_attention}``) and its
avd pool (``block.avd``) in an ONNX graph (:mod:`.reader`).

``u = Relu(Conv(x) [+ BN0])`` (``groups * radix`` groups), its splits ``s = Reshape(u, (N, radix, C, H, W))``,
``ReduceSum`` of ``s`` over axis 1, the spatial mean, ``fc1`` [+ BN1] + ``Relu``, ``fc2`` (``groups`` groups),
then a chain of ``Reshape``/``Transpose`` nodes around one ``Softmax`` giving the weights ``a`` of shape
(N, radix, C, 1, 1), and ``ReduceSum(Mul(s, a))`` over axis 1. The chain differs by writer (timm's
``RadixSoftmax`` through torch.onnx.export: Reshape (N, groups, radix, -1), Transpose, Softmax on axis 1,
Reshapes; :mod:`.resnest`'s: Reshape, Softmax on axis 2, Transpose, Reshape): it is run on numbers and must
equal the softmax across the radix of fc2's output viewed as (N, groups, radix, C / groups), radix first.
The avd pool: ``AveragePool`` 3x3, the block's stride, padding 1 counted, right after the split attention
(``after_3x3``) or right before it (``before_3x3``).

At radix 1 the weights are a sigmoid: with the splits' Reshape and sums (this project's torch module exported)
read as above; as ``Mul(u, [Reshape](Sigmoid(fc2(...))))`` (timm's, :mod:`.resnest`'s) where it is told from a
squeeze-excite gate (:meth:`SplitAttentionReader.sa1_back`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .patterns import attrs as _attrs, pool_facts, spatial_mean

WHAT = "ResNeSt split attention"
CHAIN = ("Reshape", "Transpose", "Softmax", "Sigmoid")


@dataclass(frozen=True)
class SplitAttentionFacts:
    """The nodes of one split attention: each of conv, bn0, fc1, bn1, fc2 a ``(node, inputs)`` (a BN None
    where the exporter folded it); ``radix``."""

    conv: tuple
    bn0: tuple
    fc1: tuple
    bn1: tuple
    fc2: tuple
    radix: int


class SplitAttentionReader:
    """Mixin of the graph walker: recognises split attention from its weighted sum back to its input."""

    def sa_back(self, node, ins):
        """``(facts, x)`` for ``ReduceSum(Mul(Reshape(Relu(...)), weights))``, split attention reading ``x``;
        None for another node; a half match refused in one line."""
        g = self.g
        mul = g.producer.get(ins[0]) if node.op_type == "ReduceSum" else None
        if not mul or mul[0].op_type != "Mul" or len(g.data(mul[1])) != 2:
            return None
        refuse = lambda n, why: g.refuse(n, f"{WHAT}: {why}")  # noqa: E731
        splits = [v for v in g.data(mul[1]) if self._op(v, "Reshape") and self._op(self._op(v, "Reshape")[1][0],
                                                                                    "Relu")]
        if len(splits) != 1:
            return None
        s = splits[0]
        a = next(v for v in g.data(mul[1]) if v != s)
        self._sum_over_radix(node, refuse)
        rs = self._op(s, "Reshape")
        u = rs[1][0]
        relu = self._op(u, "Relu")
        bn0 = self._op(relu[1][0], "BatchNormalization")
        conv = self._op(bn0[1][0] if bn0 else relu[1][0], "Conv")
        if not conv:
            raise refuse(relu[0], "the splits are not of a conv's (BN and) ReLU")
        radix, c = self._split_shape(rs, u, conv, refuse)
        fc2, chain = self._weights_chain(a, refuse, mul[0])
        relu1 = self._op(fc2[1][0], "Relu")
        bn1 = self._op(relu1[1][0], "BatchNormalization") if relu1 else None
        fc1 = self._op(bn1[1][0] if bn1 else relu1[1][0], "Conv") if relu1 else None
        mean = g.producer.get(fc1[1][0]) if fc1 else None
        if not mean or not spatial_mean(g, *mean) or _attrs(mean[0]).get("keepdims", 1) != 1:
            raise refuse(fc2[0], "fc2 not after fc1 (BN) ReLU of the spatial mean")
        total = g.producer.get(mean[1][0])
        if not total or total[0].op_type != "ReduceSum" or total[1][0] != s:
            raise refuse(mean[0], "the mean not of the splits' sum")
        self._sum_over_radix(total[0], refuse)
        groups = _attrs(fc2[0]).get("group", 1)
        if _attrs(fc1[0]).get("group", 1) != groups or _attrs(conv[0]).get("group", 1) != groups * radix \
                or c % groups:
            raise refuse(conv[0], f"groups conv {_attrs(conv[0]).get('group', 1)}, fc1 {_attrs(fc1[0]).get('group', 1)}"
                                  f", fc2 {groups} with radix {radix}: timm's are groups x radix, groups, groups")
        self._check_chain(chain, radix, c, groups, refuse)
        return SplitAttentionFacts(conv, bn0, fc1, bn1, fc2, radix), conv[1][0]

    def sa1_back(self, mul, ins):
        """``(facts, x)`` for ``Mul(u, [Reshape](Sigmoid(fc2(...))))``, split attention at radix 1 (a sigmoid
        gate) where it is told from a squeeze-excite: grouped fcs, a BN in the gate, or timm's Reshape after the
        Sigmoid; None otherwise (a squeeze-excite gate is read as one)."""
        g = self.g
        data = g.data(ins)
        for u, a in (data, data[::-1]) if len(data) == 2 else ():
            rs = self._op(a, "Reshape")
            sig = self._op(rs[1][0] if rs else a, "Sigmoid")
            fc2 = self._op(sig[1][0], "Conv") if sig else None
            relu1 = self._op(fc2[1][0], "Relu") if fc2 else None
            bn1 = self._op(relu1[1][0], "BatchNormalization") if relu1 else None
            fc1 = self._op(bn1[1][0] if bn1 else relu1[1][0], "Conv") if relu1 else None
            mean = g.producer.get(fc1[1][0]) if fc1 else None
            relu = self._op(u, "Relu")
            if not mean or not spatial_mean(g, *mean) or mean[1][0] != u or not relu:
                continue
            groups = _attrs(fc2[0]).get("group", 1)
            if groups == 1 and not bn1 and not rs:
                return None  # squeeze-excite's form: read as one
            bn0 = self._op(relu[1][0], "BatchNormalization")
            conv = self._op(bn0[1][0] if bn0 else relu[1][0], "Conv")
            refuse = lambda n, why: g.refuse(n, f"{WHAT} at radix 1: {why}")  # noqa: E731
            c = np.shape(g.const(conv[0], conv[1][1]))[0] if conv else 0
            if not conv or {_attrs(n).get("group", 1) for n in (conv[0], fc1[0])} != {groups} \
                    or np.shape(g.const(fc2[0], fc2[1][1]))[0] != c:
                raise refuse(mul, "not a conv's (BN and) ReLU gated by fc2 of its own width, every conv in the "
                                  "same groups")
            if rs:
                shape = [int(v) for v in g.const(rs[0], rs[1][1]).reshape(-1)]
                batch = (g.shape(g.input.name) or [None])[0]
                if len(shape) != 4 or shape[0] not in (0, batch) or shape[1] not in (-1, c) or shape[2:] != [1, 1]:
                    raise refuse(rs[0], f"the gate reshaped to {shape}; timm's is (N, C, 1, 1)")
            return SplitAttentionFacts(conv, bn0, fc1, bn1, fc2, 1), conv[1][0]
        return None

    def _op(self, v, op_type):
        p = self.g.producer.get(v)
        return p if p and p[0].op_type == op_type else None

    def _sum_over_radix(self, node, refuse):
        ins = self.g.producer[node.output[0]][1]
        axes = self.g.const(node, ins[1]).reshape(-1).tolist() if len(ins) > 1 and ins[1] else \
            _attrs(node).get("axes")
        if axes != [1] or _attrs(node).get("keepdims", 1) != 0:
            raise refuse(node, f"a sum over axes {axes} (keepdims {_attrs(node).get('keepdims', 1)}); timm sums the "
                               "splits over the radix, axis 1, without keepdims")

    def _split_shape(self, rs, u, conv, refuse):
        """``(radix, C)`` of the splits' Reshape to (N, radix, C, H, W), checked against the conv and the map."""
        shape = [int(v) for v in self.g.const(rs[0], rs[1][1]).reshape(-1)]
        out = np.shape(self.g.const(conv[0], conv[1][1]))[0]
        hw = (self.g.shape(u) or [None] * 4)[2:]
        batch = (self.g.shape(self.g.input.name) or [None])[0]
        if len(shape) == 5 and shape[2] == -1 and shape[0] != -1 and shape[1] > 0 and out % shape[1] == 0:
            shape[2] = out // shape[1]  # the channels inferred where the batch is not
        if len(shape) != 5 or shape[0] not in (0, -1, batch) or shape[1] < 1 or shape[1] * shape[2] != out \
                or shape[3:] != hw:
            raise refuse(rs[0], f"splits reshaped to {shape} from a conv of {out} channels on a {hw} map: timm's "
                                "are (N, radix, C, H, W)")
        return shape[1], shape[2]

    def _weights_chain(self, a, refuse, near):
        """(fc2, [chain nodes in order]) from the weights ``a`` back through Reshape/Transpose/Softmax."""
        chain, v = [], a
        while v in self.g.producer and self.g.producer[v][0].op_type in CHAIN and len(chain) < 16:
            chain.append(self.g.producer[v])
            v = chain[-1][1][0]
        fc2 = self._op(v, "Conv")
        if not fc2 or sum(n.op_type in ("Softmax", "Sigmoid") for n, _ in chain) != 1:
            raise refuse(near, "weights that are not one softmax (sigmoid at radix 1) of fc2's output, reshaped and "
                               "transposed")
        return fc2, chain[::-1]

    def _check_chain(self, chain, radix, c, groups, refuse):
        """Run the chain on numbers: it must give the softmax across the radix of fc2's output viewed as (N,
        groups, radix, C / groups), radix first, shaped (N, radix, C, 1, 1)."""
        z = np.random.default_rng(0).standard_normal((1, radix * c, 1, 1))
        want = z.reshape(1, groups, radix, c // groups)
        want = np.exp(want - want.max(axis=2, keepdims=True))
        want = (want / want.sum(axis=2, keepdims=True)).transpose(0, 2, 1, 3).reshape(1, radix, c, 1, 1)
        if radix == 1:  # timm's RadixSoftmax is a sigmoid there
            want = (1 / (1 + np.exp(-z))).reshape(1, 1, c, 1, 1)
        x = z
        for node, ins in chain:
            a = _attrs(node)
            if node.op_type == "Reshape":
                shape = [int(v) for v in self.g.const(node, ins[1]).reshape(-1)]
                if a.get("allowzero", 0) and 0 in shape or shape.count(-1) > 1 or \
                        np.prod([x.shape[i] if s == 0 else s for i, s in enumerate(shape) if s != -1]) == 0:
                    raise refuse(node, f"a reshape to {shape} in the attention weights")
                try:
                    x = x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])
                except ValueError:
                    raise refuse(node, f"a reshape of {list(x.shape)} to {shape} in the attention weights") from None
            elif node.op_type == "Sigmoid":
                x = 1 / (1 + np.exp(-x))
            elif node.op_type == "Transpose":
                perm = a.get("perm", list(range(x.ndim))[::-1])
                if sorted(perm) != list(range(x.ndim)):
                    raise refuse(node, f"a transpose by {perm} of a rank-{x.ndim} tensor")
                x = x.transpose(perm)
            else:
                axis = a.get("axis", -1)
                if self.g.opset < 13 or not -x.ndim <= axis < x.ndim:
                    raise refuse(node, f"a softmax on axis {axis} at opset {self.g.opset} (timm's: opset >= 13)")
                e = np.exp(x - x.max(axis=axis, keepdims=True))
                x = e / e.sum(axis=axis, keepdims=True)
        if x.shape != want.shape or not np.allclose(x, want, rtol=1e-9, atol=1e-12):
            raise refuse(chain[-1][0], f"attention weights of shape {list(x.shape)} that are not the softmax across "
                                       f"the radix ({radix}; a sigmoid at 1) of fc2's output in {groups} groups, "
                                       "shaped (N, radix, C, 1, 1)")

    def split_attention(self, name, main, node, facts: SplitAttentionFacts, slot: int):
        """Names ``<name>.conv2.conv``, ``.bn0``, ``.fc1``, ``.bn1``, ``.fc2`` (BNs an exporter folded put back:
        bn1 with a zero bias, fc1 keeping its own); the op must be a bottleneck's second conv."""
        kinds = [n.op_type if kind == "op" else kind for kind, n, _ in main]
        at = next(k for k, (_, n, _) in enumerate(main) if n is node)
        if slot != 2 or kinds[:at][-1:] not in (["Relu"], ["AveragePool"]) or "Conv" not in kinds[at + 1:at + 3]:
            raise self.g.refuse(node, f"{WHAT} away from a bottleneck's 3x3 (after conv1's ReLU, before conv3)")
        sa = f"{name}.conv2"
        self.conv(f"{sa}.conv", *facts.conv)
        self._norm_or_identity(f"{sa}.bn0", facts.bn0, f"{sa}.conv")
        self.conv(f"{sa}.fc1", *facts.fc1)
        keep = self.src.weights.get(f"{sa}.fc1.bias")
        self._norm_or_identity(f"{sa}.bn1", facts.bn1, f"{sa}.fc1")
        if facts.bn1 is None and keep is not None:  # fc1 has a bias of its own before bn1 in timm
            self.src.weights[f"{sa}.fc1.bias"] = keep
            self.src.weights[f"{sa}.bn1.bias"] = np.zeros_like(keep)
            self.src.layers[f"{sa}.fc1"].bias = True
        self.conv(f"{sa}.fc2", *facts.fc2)
        self.src.facts.setdefault("avd", None)

    def _norm_or_identity(self, bn_name, bn, conv_name):
        if bn is not None:
            self.bn(bn_name, *bn)
        else:
            self.identity_bn(bn_name, conv_name)

    def avd(self, main, node, ins, pad):
        """ResNeSt's avd pool: 3x3, stride > 1, padding 1 counted, floor; right after the split attention
        (after_3x3) or right before it, after conv1's ReLU (before_3x3)."""
        at = next(k for k, (_, n, _) in enumerate(main) if n is node)
        kinds = [n.op_type if kind == "op" else kind for kind, n, _ in main]
        where = "after_3x3" if kinds[at - 1:at] == ["sa"] else "before_3x3" if kinds[at + 1:at + 2] == ["sa"] \
            and kinds[at - 1:at] == ["Relu"] else None
        p = pool_facts(node, ins, pad)
        if where is None or (p["kernel"], p["padding"]) != (3, 1) or p["stride"] < 2 or p.get("ceil_mode") \
                or not p.get("count_include_pad") or _attrs(node).get("auto_pad", b"NOTSET") not in (b"NOTSET",
                                                                                                  "NOTSET"):
            raise self.g.refuse(node, f"an average pool {p} {'away from' if where is None else 'beside'} split "
                                      "attention: ResNeSt's avd pool is 3x3 at the block's stride, padding 1 "
                                      "counted, floor, right before or after it")
        old = self.src.facts.get("avd")
        if old not in (None, where):
            raise self.g.refuse(node, f"avd pools {old} and {where}; a spec has one block.avd")
        self.src.facts["avd"] = where
