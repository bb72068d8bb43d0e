"""Anti-aliased downsampling in an ONNX graph (:mod:`.reader`): the pool after a residual branch's strided
conv (timm's ``aa``, ``block.anti_alias``): an average pool, or a blur pool (timm's BlurPool2d, node patterns in
:mod:`.patterns_blur`), which also takes the stride of a stem's max-pool."""

from __future__ import annotations

from .patterns import anti_alias_pool, attrs as _attrs
from .patterns_blur import blur_filter_problem, reflect_concat, reflect_pad


class AntiAliasReader:
    """Mixin of the graph walker: the pools that take a stride from a convolution."""

    def anti_alias(self, main, node, ins, pad, nconv: int):
        """An ``AveragePool`` or blur pool (``ins``: its facts) left in a residual branch: timm's anti-aliasing
        pool, where it sits (after the ReLU of the spatial conv -- a bottleneck's conv2, a basic block's conv1
        -- right before the next conv)."""
        blur = isinstance(ins, dict)
        at = next(k for k, (_, n, _) in enumerate(main) if n is node)
        before = [n.op_type if kind == "op" else kind for kind, n, _ in main[:at]]
        after = [n.op_type if kind == "op" else kind for kind, n, _ in main[at + 1:at + 2]]
        if before[-1:] != ["Relu"] or before.count("Conv") != (2 if nconv == 3 else 1) or after != ["Conv"]:
            raise self.g.refuse(node, f"{'a blur' if blur else 'an average'} pool in a residual branch away from "
                                      "where timm's anti-aliasing pool sits (after the spatial conv's ReLU, before "
                                      "the next conv)")
        if blur and pad:
            raise self.g.refuse(node, "a zero Pad before a blur pool's reflect padding: not timm's BlurPool2d")
        if not blur:
            anti_alias_pool(self.g, node, pad)
        self._aa_kind("blur" if blur else "avgpool", node)

    def blur_back(self, conv, ins):
        """``(facts, input)`` of a ``Conv`` that is timm's BlurPool2d, walking back over its reflect padding
        (a reflect ``Pad``, or one reflect ``Concat`` per axis), or None for a conv without reflect padding;
        a depthwise conv after reflect padding that is not timm's blur is refused."""
        g, x, p = self.g, ins[0], {}
        while x in g.producer and len(p) < 2:
            node, nins = g.producer[x]
            padded = reflect_pad(g, node, nins)
            if padded:
                x, p[2] = padded
                p[3] = p[2]
                continue
            cat = reflect_concat(g, node, nins)
            if not cat or cat[1] in p:
                break
            x, p[cat[1]] = cat[0], cat[2]
        if not p:
            return None
        if len(p) != 2 or p[2] != p[3]:
            raise g.refuse(conv, f"reflect padding {p} by axis before a conv: a blur pool pads height and width alike")
        why = blur_filter_problem(g, conv, ins, p[2])
        if why:
            raise g.refuse(conv, why)
        return {"stride": _attrs(conv).get("strides", [1])[0], "padding": p[2]}, x

    def _aa_kind(self, kind: str, node):
        old = self.src.facts.setdefault("anti_alias", kind)
        if old != kind:
            raise self.g.refuse(node, f"anti-aliasing pools of two kinds ({old}, {kind}); a spec has one "
                                      "block.anti_alias")
