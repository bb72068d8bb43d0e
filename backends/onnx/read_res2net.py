"""Res2Net's split convolutions (timm ``Bottle2neck``, ``block.spatial: {type: res2net}``) in an ONNX graph
(:mod:`.reader`).

One ``Concat`` over the channels joins the splits of one tensor ``x`` (its ``scale`` equal parts of ``width``
channels: a ``Split`` on axis 1, as torch.onnx.export writes ``torch.split``, or one ``Slice`` per part, as
:mod:`.res2net` writes them). Part ``i < scale - 1`` goes through ``Conv`` [+ ``BatchNormalization``, absent
where folded] + ``Relu``; with the cascade its conv reads ``Add(previous output, part i)`` for ``i > 0``. The
last part is passed on, or (no cascade: timm's ``is_first`` block) average pooled 3x3, stride = the convs'
stride, padding 1, counting the padding. Every fact is read from the nodes and checked: the parts in order
and equal, one ``x``, the cascade in every part or none, the pool's window. The walk (:meth:`.reader._Walker.back`)
steps from the ``Concat`` to ``x``; the cascade's ``Add`` nodes are not residual joins.
"""

from __future__ import annotations

from dataclasses import dataclass

from .patterns import attrs as _attrs, BIG, spatial_pad

WHAT = "Res2Net split convs"


@dataclass(frozen=True)
class Res2NetFacts:
    """What one ``Concat`` of Res2Net's splits says: ``parts`` = per conv ``(conv node, its inputs, BN node
    or None, its inputs)``, in split order."""

    scale: int
    width: int
    cascade: bool
    pooled: bool
    parts: tuple
    adds: tuple  # the cascade's Add nodes


def channel_part(g, v):
    """``(x, start, end)`` where ``v`` is channels start..end of ``x``: a ``Split`` output on axis 1, or a
    ``Slice`` of axis 1 (step 1); None for another value."""
    if v not in g.producer:
        return None
    node, ins = g.producer[v]
    if node.op_type == "Slice" and len(ins) >= 4 and ins[0] not in g.consts:
        starts, ends = g.const(node, ins[1]).reshape(-1), g.const(node, ins[2]).reshape(-1)
        axes = g.const(node, ins[3]).reshape(-1)
        steps = g.const(node, ins[4]).reshape(-1) if len(ins) > 4 and ins[4] else [1]
        if len(axes) == 1 and int(axes[0]) in (1, -3) and len(starts) == len(ends) == 1 and list(steps) == [1] \
                and 0 <= int(starts[0]) < int(ends[0]) < BIG:
            return ins[0], int(starts[0]), int(ends[0])
        return None
    if node.op_type == "Split" and _attrs(node).get("axis", 0) in (1, -3):
        sizes = _split_sizes(g, node, ins)
        k = list(node.output).index(v)
        return (ins[0], sum(sizes[:k]), sum(sizes[:k + 1])) if sizes else None
    return None


def _split_sizes(g, node, ins):
    """The part sizes of a ``Split``: its ``split`` input or attribute, else equal parts of the input's
    channels (ONNX shape inference); None where unknown."""
    if len(ins) > 1 and ins[1]:
        return [int(s) for s in g.const(node, ins[1]).reshape(-1)]
    if "split" in _attrs(node):
        return [int(s) for s in _attrs(node)["split"]]
    shape, n = g.shape(ins[0]), len(node.output)
    if not shape or len(shape) != 4 or shape[1] is None or shape[1] % n:
        return None
    return [shape[1] // n] * n


class Res2NetReader:
    """Mixin of the graph walker: recognises Res2Net's split convs and names their layers."""

    def res2net_back(self, node, ins):
        """``(facts, x)`` of a ``Concat`` joining Res2Net's splits of ``x``; None for a Concat whose inputs
        are no splits of one tensor over the channels; a half-matching one is refused in one line."""
        cache = self.__dict__.setdefault("_r2n", {})
        if id(node) not in cache:
            cache[id(node)] = self._read_res2net(node, ins)
        return cache[id(node)]

    def res2net_adds(self) -> set:
        """The ``Add`` nodes of every Res2Net cascade in the graph (not residual joins)."""
        adds = set()
        for n, ins in self.g.nodes:
            found = self.res2net_back(n, ins) if n.op_type == "Concat" else None
            adds.update(id(a) for a in found[0].adds) if found else None
        return adds

    def _read_res2net(self, cat, ins):
        g, data = self.g, self.g.data(ins)
        if _attrs(cat).get("axis") not in (1, -3) or len(data) != len(ins) or len(data) < 2:
            return None
        last = self._pool_of_part(data[-1])
        part = channel_part(g, last[0] if last else data[-1])
        if part is None:
            return None
        x, scale = part[0], len(data)
        refuse = lambda n, why: g.refuse(n, f"{WHAT} (timm Bottle2neck): {why}")  # noqa: E731
        width = part[2] - part[1]
        parts, adds, cascades = [], [], set()
        for i, y in enumerate(data[:-1]):
            conv, cins, bn, bins, sp = self._split_conv(y, refuse, cat)
            if sp in g.producer and g.producer[sp][0].op_type == "Add" and len(g.data(g.producer[sp][1])) == 2:
                add, ains = g.producer[sp]
                a, b = g.data(ains)
                if i == 0 or data[i - 1] not in (a, b):
                    raise refuse(add, f"split {i}'s conv reads an Add that does not add the previous split's output")
                sp = b if a == data[i - 1] else a
                adds.append(add)
                cascades.add(True)
            else:
                cascades.add(False) if i else None
            self._check_part(sp, x, i, width, refuse, conv)
            parts.append((conv, cins, bn, bins))
        self._check_part(last[0] if last else data[-1], x, scale - 1, width, refuse, cat)
        shape = g.shape(x)
        if shape and len(shape) == 4 and shape[1] is not None and shape[1] != scale * width:
            raise refuse(cat, f"{scale} splits of {width} channels of a tensor of {shape[1]} channels")
        # one split conv (scale 2) has no Add to show a cascade: the last split's pool (or none) tells the block
        cascade = cascades == {True} if cascades else not last
        if len(cascades) > 1:
            raise refuse(cat, "the cascade (a split's conv reading the previous output + its split) in some "
                              "splits only")
        if bool(last) == cascade:
            raise refuse(cat, f"the last split {'pooled' if last else 'passed on'} in a block "
                              f"{'with' if cascade else 'without'} the cascade: timm pools it exactly where the "
                              "convs do not cascade")
        if last:
            self._check_pool(last[1], last[2], parts[0][0], refuse)
        return Res2NetFacts(scale, width, cascade, bool(last), tuple(parts), tuple(adds)), x

    def _pool_of_part(self, y):
        """``(input, AveragePool node, zero Pad before it)`` where ``y`` is an average pool, else None."""
        g = self.g
        if y not in g.producer or g.producer[y][0].op_type != "AveragePool":
            return None
        pool, pins = g.producer[y]
        x, pad = pins[0], 0
        if x in g.producer and g.producer[x][0].op_type == "Pad":
            pad = spatial_pad(g, *g.producer[x])
            x = g.producer[x][1][0]
        return x, pool, pad

    def _split_conv(self, y, refuse, cat):
        """(conv, its inputs, BN or None, its inputs, the conv's input) of ``Relu(BN?(Conv(sp)))`` = ``y``."""
        g = self.g
        relu = g.producer.get(y)
        if relu is None or relu[0].op_type != "Relu":
            raise refuse(relu[0] if relu else cat, "a split's output that is not a conv's ReLU")
        v = relu[1][0]
        bn = bins = None
        if v in g.producer and g.producer[v][0].op_type == "BatchNormalization":
            bn, bins = g.producer[v]
            v = bins[0]
        if v not in g.producer or g.producer[v][0].op_type != "Conv":
            raise refuse(relu[0], "a split's ReLU that does not follow its conv (and BN)")
        conv, cins = g.producer[v]
        return conv, cins, bn, bins, cins[0]

    def _check_part(self, v, x, i, width, refuse, node):
        part = channel_part(self.g, v)
        if part is None or part[0] != x or part[1:] != (i * width, (i + 1) * width):
            raise refuse(node, f"split {i} is not channels {i * width}..{(i + 1) * width} of the block's tensor "
                               f"(found {part[1:] if part else 'no split'})")

    def _check_pool(self, pool, pad, conv, refuse):
        a, s = _attrs(pool), _attrs(conv).get("strides", [1, 1])
        pads = [int(p) + pad for p in a.get("pads", [0] * 4)]
        k = list(a.get("kernel_shape", []))
        include = bool(a.get("count_include_pad", 0)) or bool(pad)
        if k != [3, 3] or list(a.get("strides", [1, 1])) != list(s) or pads != [1] * 4 or not include \
                or a.get("ceil_mode", 0) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise refuse(pool, f"the last split's average pool of kernel {k}, strides {a.get('strides')}, pads "
                               f"{pads}, count_include_pad {int(include)}: timm pools it 3x3 at the convs' stride "
                               f"{list(s)}, padding 1, counting the padding")

    def res2net(self, name, main, node, facts: Res2NetFacts, short):
        """Names the split convs ``<name>.convs.i`` and BNs ``<name>.bns.i`` (put back with identity
        statistics where the exporter folded them) and checks where the op sits: a bottleneck's middle,
        after conv1's ReLU, before conv3; the cascade off exactly in a block that strides or projects."""
        at = next(k for k, (_, n, _) in enumerate(main) if n is node)
        kinds = [n.op_type if kind == "op" else kind for kind, n, _ in main]
        if kinds[:at][-1:] != ["Relu"] or kinds[:at].count("Conv") != 1 or kinds[at + 1:at + 2] != ["Conv"]:
            raise self.g.refuse(node, f"{WHAT} away from a bottleneck's middle (after conv1's ReLU, before conv3)")
        stride = _attrs(facts.parts[0][0]).get("strides", [1])[0]
        first = stride > 1 or any(n.op_type == "Conv" for _, n, _ in short)
        if first == facts.cascade:
            raise self.g.refuse(node, f"{WHAT} {'with' if facts.cascade else 'without'} the cascade in a block "
                                      f"that {'strides or projects' if first else 'neither strides nor projects'}: "
                                      "timm's Bottle2neck cascades exactly where it does neither")
        for i, (conv, cins, bn, bins) in enumerate(facts.parts):
            self.conv(f"{name}.convs.{i}", conv, cins)
            if bn is not None:
                self.bn(f"{name}.bns.{i}", bn, bins)
            else:  # folded by the exporter (a zero bias may have been dropped): identity statistics
                self.identity_bn(f"{name}.bns.{i}", f"{name}.convs.{i}")
