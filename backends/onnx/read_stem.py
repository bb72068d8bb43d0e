"""The stem of an ONNX ResNet graph (:mod:`.reader`): convolutions, BNs, ReLUs and the stem pool."""

from __future__ import annotations

from .checked import declared_input
from .patterns import border_mask, pool_facts
from ...importers.source import ImportRefused


class StemReader:
    """Mixin of the graph walker: the ops before the first residual block."""

    def stem(self, ops, preact):
        convs = sum(1 for _, n, _ in ops if n.op_type == "Conv")
        if convs == 0:
            raise ImportRefused(f"{self.g.path}: no stem convolution before the first residual block")
        names = ["conv1"] if convs == 1 else [f"conv1.{3 * i}" for i in range(convs)]
        bns = ["bn1"] if convs == 1 else [f"conv1.{3 * i + 1}" for i in range(convs - 1)] + ["bn1"]
        left = self.sequence(ops, names, bns, v1=not preact)
        self._stem_conv = names[-1]
        pools = [(n, ins, pad) for n, ins, pad in left if n.op_type in ("MaxPool", "AveragePool")]
        masked = False
        for n, ins, _ in left:
            if pools and border_mask(self.g, n, ins):
                masked = True
            elif n.op_type not in ("Relu", "MaxPool"):
                raise self.g.refuse(n, "not expected in a ResNet stem (conv, BN, ReLU, max-pool)")
        self.src.facts["stem_pool"] = pool_facts(*pools[0]) if pools else None
        if masked:
            self.src.facts["stem_pool"]["pad_value"] = "zero"
        facts, notes = declared_input(self.g.input)  # the proof runs its own batch, never the file's
        self.src.facts.update(facts)
        self.src.notes += notes
