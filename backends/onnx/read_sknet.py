"""SKNet's selective kernel (timm ``SelectiveKernel``, ``block.spatial: {type: selective_kernel}``) in an ONNX
graph (:mod:`.reader`).

Each path ``y_i = Relu(Conv_i(x_i) [+ BatchNormalization])``, ``x_i`` the block's tensor ``x`` or (split input)
its ``i``-th equal part over the channels (a ``Split``, or a ``Slice``). Then attention over the ``P`` paths:
``a = Softmax(Reshape(fc_select(Relu(fc_reduce(mean(sum of the paths)) [+ BN])), paths on axis 1), axis=1)``
and the paths' weighted sum. Two forms are read, every step checked:

* torch.onnx.export of timm's module (both exporters): ``Concat`` on axis 1 of ``Unsqueeze(y_i, 1)`` (the
  stack), its ``ReduceSum`` over axis 1, the mean, the convs, ``Reshape`` to (N, P, C, 1, 1), ``Softmax`` on
  axis 1, ``Mul`` by the stack, ``ReduceSum`` over axis 1;
* :mod:`.sknet`'s (``convert``): ``Sum`` of the paths, the mean, the convs, ``Reshape`` to (N, P, C),
  ``Softmax`` on axis 1, per path ``Slice`` i..i+1 of axis 1 and ``Reshape`` to (N, C, 1, 1), ``Mul`` by
  ``y_i``, one ``Sum``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .patterns import attrs as _attrs, spatial_mean
from .read_res2net import channel_part

WHAT = "a selective kernel (SKNet)"


@dataclass(frozen=True)
class SelectiveKernelFacts:
    """What one selective kernel's nodes say: ``paths`` = per path ``(conv, its inputs, BN or None, its
    inputs)``; ``attn`` = ``(fc_reduce, inputs, BN or None, inputs, fc_select, inputs)``."""

    paths: tuple
    attn: tuple
    split: bool


class SelectiveKernelReader:
    """Mixin of the graph walker: recognises a selective kernel from its weighted sum back to its input."""

    def sk_back(self, node, ins):
        """``(facts, x)`` for the weighted sum ``node`` (``Sum``, or ``ReduceSum`` of a ``Mul`` by a stack of
        paths) of a selective kernel reading ``x``; None for another node; a half match refused in one line."""
        g = self.g
        refuse = lambda n, why: g.refuse(n, f"{WHAT}: {why}")  # noqa: E731
        if node.op_type == "Sum":
            ys, a, shapes = self._sk_convert_sum(node, ins, refuse)
        elif node.op_type == "ReduceSum" and self._prod(ins[0], "Mul") and self._sk_stack(
                self._prod(ins[0], "Mul")[1], refuse, quiet=True):
            ys, a, shapes = self._sk_timm_sum(node, ins, refuse)
        else:
            return None
        return self._sk_paths_attn(node, ys, a, shapes, refuse)

    def _prod(self, v, op_type):
        p = self.g.producer.get(v)
        return p if p and p[0].op_type == op_type else None

    def _axes(self, node, ins, default=None):
        """The ``axes`` of a reduce/unsqueeze node: its second input (opset 13/18) or attribute."""
        if len(ins) > 1 and ins[1]:
            return [int(a) for a in self.g.const(node, ins[1]).reshape(-1)]
        return [int(a) for a in _attrs(node).get("axes", default or [])]

    def _sk_stack(self, mul_ins, refuse, quiet=False):
        """``(stack value, [y_i])`` of the ``Mul`` input that is ``Concat(axis 1, Unsqueeze(y_i, 1)...)``."""
        for v in self.g.data(mul_ins):
            cat = self._prod(v, "Concat")
            if cat and _attrs(cat[0]).get("axis") == 1 and all(self._prod(u, "Unsqueeze") for u in cat[1]):
                ys = []
                for u in cat[1]:
                    un, uins = self._prod(u, "Unsqueeze")
                    if self._axes(un, uins) != [1]:
                        raise refuse(un, f"a path stacked on axes {self._axes(un, uins)}; timm stacks on axis 1")
                    ys.append(uins[0])
                return v, ys
        if quiet:
            return None
        raise refuse(self.g.producer[mul_ins[0]][0], "a weighted sum that is not of the stacked paths")

    def _sk_timm_sum(self, node, ins, refuse):
        g = self.g
        mul, mins = self._prod(ins[0], "Mul")
        if self._axes(node, ins) != [1] or _attrs(node).get("keepdims", 1) != 0:
            raise refuse(node, "a weighted sum not over the paths' axis 1 without keepdims")
        stack, ys = self._sk_stack(mins, refuse)
        data = g.data(mins)
        if len(data) != 2:
            raise refuse(mul, "the paths multiplied by something other than the attention")
        sm = self._sk_softmax(data[1] if data[0] == stack else data[0], mul, refuse)
        shapes = [self._sk_reshape(sm[1][0], [len(ys), None, 1, 1], refuse)]
        return ys, (sm, stack), shapes

    def _sk_convert_sum(self, node, ins, refuse):
        g, ys, sms, shapes = self.g, [], set(), []
        for i, v in enumerate(g.data(ins)):
            mul = self._prod(v, "Mul")
            if not mul or len(g.data(mul[1])) != 2:
                raise refuse(node, "a sum of paths that are not each weighted by the attention (Mul)")
            y, r = g.data(mul[1])
            if not self._prod(r, "Reshape"):
                y, r = r, y
            rs = self._prod(r, "Reshape")
            sl = self._prod(rs[1][0], "Slice") if rs else None
            if not sl:
                raise refuse(mul[0], "a path's weight that is not a Slice of the softmax reshaped to (N, C, 1, 1)")
            shapes.append(self._sk_reshape(r, [None, 1, 1], refuse))
            part = channel_part(g, sl[0].output[0])
            if part is None or part[1:] != (i, i + 1):
                raise refuse(sl[0], f"path {i}'s weight is not entry {i} of the softmax's path axis")
            sms.add(part[0])
            ys.append(y)
        if len(sms) != 1 or len(ys) < 2:
            raise refuse(node, "the paths weighted by different softmaxes, or fewer than two paths")
        sm = self._sk_softmax(sms.pop(), node, refuse)
        shapes.append(self._sk_reshape(sm[1][0], [len(ys), None], refuse))
        return ys, (sm, None), shapes

    def _sk_softmax(self, v, near, refuse):
        sm = self._prod(v, "Softmax")
        if not sm or not self._prod(sm[1][0], "Reshape"):
            raise refuse(near, "paths weighted by something other than a softmax of reshaped attention logits")
        rs = self._prod(sm[1][0], "Reshape")
        rank = np.size(self.g.const(rs[0], rs[1][1]))
        if self.g.opset < 13 or _attrs(sm[0]).get("axis", -1) % rank != 1:
            raise refuse(sm[0], f"a softmax on axis {_attrs(sm[0]).get('axis', -1)} (opset {self.g.opset}); "
                                "timm's is across the paths, axis 1 (opset >= 13)")
        return sm

    def _sk_reshape(self, v, want, refuse):
        """The shape ``Reshape`` = ``v`` reshapes to, checked to be (batch, *want) (None: the channels)."""
        rs = self._prod(v, "Reshape")
        shape = [int(s) for s in self.g.const(rs[0], rs[1][1]).reshape(-1)]
        batch = (self.g.shape(self.g.input.name) or [None])[0]
        c = shape[1 + want.index(None)] if len(shape) == len(want) + 1 else 0
        # the channels may be -1 (inferred: fc_select's outputs / paths) where the batch is not
        if len(shape) != len(want) + 1 or shape[0] not in (0, -1, batch) or (c == -1 and shape[0] == -1) or any(
                s != w if w is not None else s < 1 and s != -1 for s, w in zip(shape[1:], want)):
            raise refuse(rs[0], f"a reshape to {shape}; timm's selective kernel reshapes to (N, "
                                f"{', '.join('C' if w is None else str(w) for w in want)})")
        return rs[0], None if c == -1 else c

    def _sk_paths_attn(self, node, ys, a, shapes, refuse):
        """The paths ``ys`` and the attention chain from the softmax back to the paths' sum checked; facts."""
        g, (sm, stack) = self.g, a
        sel = self._prod(self._prod(sm[1][0], "Reshape")[1][0], "Conv")
        if not sel:
            raise refuse(sm[0], "attention logits that are not a 1x1 conv (fc_select)")
        relu = self._prod(sel[1][0], "Relu")
        v = relu[1][0] if relu else None
        bn = self._prod(v, "BatchNormalization") if v else None
        red = self._prod(bn[1][0] if bn else v, "Conv") if v else None
        if not red:
            raise refuse(sel[0], "fc_select not after fc_reduce's (BN and) ReLU")
        mean = g.producer.get(red[1][0])
        if not mean or not spatial_mean(g, *mean) or _attrs(mean[0]).get("keepdims", 1) != 1:
            raise refuse(red[0], "fc_reduce not reading the spatial mean of the paths' sum")
        total = g.producer.get(mean[1][0])
        if stack is not None:
            ok = total and total[0].op_type == "ReduceSum" and total[1][0] == stack and \
                self._axes(*total) == [1] and _attrs(total[0]).get("keepdims", 1) == 0
        else:
            ok = total and total[0].op_type == "Sum" and sorted(g.data(total[1])) == sorted(ys)
        if not ok:
            raise refuse(mean[0], "the attention's mean not over the sum of the same paths")
        paths, xs = [], []
        for i, y in enumerate(ys):
            relu = self._prod(y, "Relu")
            v = relu[1][0] if relu else None
            pbn = self._prod(v, "BatchNormalization") if v else None
            conv = self._prod(pbn[1][0] if pbn else v, "Conv") if v else None
            if not conv:
                raise refuse(node, f"path {i} is not a conv's (BN and) ReLU")
            paths.append((conv[0], conv[1], *(pbn or (None, None))))
            xs.append(conv[1][0])
        parts = [channel_part(g, x) for x in xs]
        if all(parts) and len(set(parts)) == 1 and parts[0][1] == 0 and \
                (g.shape(parts[0][0]) or [0, 0])[1] == parts[0][2]:
            xs, parts = [parts[0][0]] * len(xs), [None]  # every path reads all channels, through a full slice
        split = all(parts)
        if split:
            width = parts[0][2] - parts[0][1]
            if len({p[0] for p in parts}) != 1 or [p[1:] for p in parts] != [(i * width, (i + 1) * width)
                                                                             for i in range(len(ys))]:
                raise refuse(node, f"paths reading channels {[p[1:] for p in parts]}: timm splits the input "
                                   "into equal parts in path order")
            x = parts[0][0]
        elif len(set(xs)) == 1:
            x = xs[0]
        else:
            raise refuse(node, "paths reading different tensors")
        attn = (red[0], red[1], *(bn or (None, None)), sel[0], sel[1])
        c, p = np.shape(g.const(sel[0], sel[1][1]))[0], len(ys)
        width = np.shape(g.const(paths[0][0], paths[0][1][1]))[0]
        if c != p * width:
            raise refuse(sel[0], f"fc_select's {c} outputs are not {p} paths x the paths' {width} channels")
        for rs, got in shapes:
            if got not in (None, width):
                raise refuse(rs, f"the attention reshaped to {got} channels; the paths have {width}")
        return SelectiveKernelFacts(tuple(paths), attn, split), x

    def selective_kernel(self, name, main, node, facts: SelectiveKernelFacts, slot: int):
        """Names the layers ``<name>.conv<slot>.paths.i.conv`` / ``.bn``, ``.attn.fc_reduce``, ``.attn.bn``,
        ``.attn.fc_select`` (BNs an exporter folded put back); the op must be the block's spatial conv."""
        kinds = [n.op_type if kind == "op" else kind for kind, n, _ in main]
        at = next(k for k, (_, n, _) in enumerate(main) if n is node)
        if kinds[:at].count("Conv") != slot - 1 or kinds[at + 1:at + 2] != ["Conv"] or (slot > 1 and kinds[at - 1]
                                                                                       != "Relu"):
            raise self.g.refuse(node, f"{WHAT} away from a block's spatial conv (a basic block's first, a "
                                      "bottleneck's second, after the first conv's ReLU, before the next conv)")
        sk = f"{name}.conv{slot}"
        pairs = [(f"{sk}.paths.{i}.conv", conv, cins, f"{sk}.paths.{i}.bn", bn, bins)
                 for i, (conv, cins, bn, bins) in enumerate(facts.paths)]
        red, rins, bn, bins, sel, sins = facts.attn
        for cname, conv, cins, bname, bn_, bins_ in pairs + [(f"{sk}.attn.fc_reduce", red, rins, f"{sk}.attn.bn",
                                                             bn, bins)]:
            self.conv(cname, conv, cins)
            if bn_ is not None:
                self.bn(bname, bn_, bins_)
            else:  # folded by the exporter (a zero bias may have been dropped): identity statistics
                self.identity_bn(bname, cname)
        self.conv(f"{sk}.attn.fc_select", sel, sins)
