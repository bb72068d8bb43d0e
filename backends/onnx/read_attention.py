"""Channel attention in an ONNX graph (:mod:`.reader`): a ``Mul`` of a block's path by a gate computed from
it -- squeeze-excite (pool-conv-relu-conv-sigmoid)."""

from __future__ import annotations


class AttentionReader:
    """Mixin of the graph walker: recognises the gate of a ``Mul`` and names its layers."""

    def _se_inputs(self, node, ins):
        data = self.g.data(ins)
        if len(data) != 2:
            raise self.g.refuse(node, "a Mul that is not a squeeze-excite gate")
        for x, gate in (data, data[::-1]):
            chain = self.back(gate, x)
            if chain and [n.op_type for _, n, _ in chain][-1] == "Sigmoid":
                return x, chain
        raise self.g.refuse(node, "a Mul that is not a squeeze-excite gate (pool-conv-relu-conv-sigmoid)")

    def se(self, mul, chain):
        names = iter(("fc1", "fc2"))
        prefix = self._block_name + ".se"
        kinds = [n.op_type for _, n, _ in chain]
        if kinds not in (["GlobalAveragePool", "Conv", "Relu", "Conv", "Sigmoid"],
                         ["ReduceMean", "Conv", "Relu", "Conv", "Sigmoid"]):
            raise self.g.refuse(mul, f"squeeze-excite gate {kinds}; expected pool-conv-relu-conv-sigmoid")
        for _, node, ins in chain:
            if node.op_type == "Conv":
                self.conv(f"{prefix}.{next(names)}", node, ins)
