"""Anti-aliased downsampling in an ONNX graph (:mod:`.reader`): the pool after a residual branch's strided
conv (timm's ``aa``, ``block.anti_alias``)."""

from __future__ import annotations

from .patterns import anti_alias_pool


class AntiAliasReader:
    """Mixin of the graph walker: the pools that take a stride from a convolution."""

    def anti_alias(self, main, node, ins, pad, nconv: int):
        """An ``AveragePool`` left in a residual branch: timm's anti-aliasing pool, where it sits (after the
        ReLU of the spatial conv -- a bottleneck's conv2, a basic block's conv1 -- right before the next conv)."""
        at = next(k for k, (_, n, _) in enumerate(main) if n is node)
        before = [n.op_type for _, n, _ in main[:at]]
        after = [n.op_type for _, n, _ in main[at + 1:at + 2]]
        if before[-1:] != ["Relu"] or before.count("Conv") != (2 if nconv == 3 else 1) or after != ["Conv"]:
            raise self.g.refuse(node, "an average pool in a residual branch away from where timm's anti-aliasing "
                                      "pool sits (after the spatial conv's ReLU, before the next conv)")
        anti_alias_pool(self.g, node, pad)
        self._aa_kind("avgpool", node)

    def _aa_kind(self, kind: str, node):
        old = self.src.facts.setdefault("anti_alias", kind)
        if old != kind:
            raise self.g.refuse(node, f"anti-aliasing pools of two kinds ({old}, {kind}); a spec has one "
                                      "block.anti_alias")
