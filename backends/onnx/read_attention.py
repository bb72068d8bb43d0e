"""Channel attention in an ONNX graph (:mod:`.reader`): a ``Mul`` of a block's path by a gate computed from
it -- squeeze-excite (pool-conv-relu-conv-sigmoid) or ECA (timm's EcaModule: the channel means reshaped to a
one-channel sequence (N, 1, C), a 1-d Conv across the channels, sigmoid, reshaped back to (N, C, 1, 1) and,
from torch.onnx.export, expanded to the tensor's shape)."""

from __future__ import annotations

import numpy as np

from .patterns import attrs as _attrs, spatial_mean
from ...importers.source import Layer

SE_KINDS = (["GlobalAveragePool", "Conv", "Relu", "Conv", "Sigmoid"],
            ["ReduceMean", "Conv", "Relu", "Conv", "Sigmoid"])
ECA_KINDS = (["Reshape", "Conv", "Sigmoid", "Reshape"], ["Reshape", "Conv", "Sigmoid", "Reshape", "Expand"])
NOT_A_GATE = "a Mul that is not a channel-attention gate (squeeze-excite: pool-conv-relu-conv-sigmoid; ECA: " \
             "pool-reshape-conv1d-sigmoid-reshape)"


class AttentionReader:
    """Mixin of the graph walker: recognises the gate of a ``Mul`` and names its layers."""

    def _se_inputs(self, node, ins):
        data = self.g.data(ins)
        if len(data) == 1 and len(ins) == 2:  # by a constant: not per channel, or affine_back had read it
            shape = list(np.shape(self.g.consts.get(next(i for i in ins if i != data[0]), ())))
            raise self.g.refuse(node, f"a Mul by a constant of shape {shape}: neither a BatchNorm in inference "
                                      "form (a scale per channel, shaped (1, C, 1, 1)) nor a channel-attention gate")
        if len(data) != 2:
            raise self.g.refuse(node, NOT_A_GATE)
        for x, gate in (data, data[::-1]):
            chain = self.back(gate, x)
            kinds = [n.op_type for _, n, _ in chain or []]
            if kinds and "Sigmoid" in kinds[-3:]:
                return x, chain
        raise self.g.refuse(node, NOT_A_GATE)

    def se(self, mul, chain):
        kinds = [n.op_type for _, n, _ in chain]
        if kinds[1:] in ECA_KINDS and kinds[0] in ("GlobalAveragePool", "ReduceMean"):
            return self._eca(mul, chain)
        names = iter(("fc1", "fc2"))
        prefix = self._block_name + ".se"
        if kinds not in SE_KINDS:
            raise self.g.refuse(mul, f"channel-attention gate {kinds}; expected squeeze-excite "
                                     "(pool-conv-relu-conv-sigmoid) or ECA (pool-reshape-conv1d-sigmoid-reshape)")
        for _, node, ins in chain:
            if node.op_type == "Conv":
                self.conv(f"{prefix}.{next(names)}", node, ins)

    def _eca(self, mul, chain):
        """timm's EcaModule: every step checked (the spatial mean, the reshapes keep the batch axis and
        the channel order, a 1-d conv of one channel with symmetric zero padding and no bias)."""
        g = self.g
        (_, pool, pins), (_, to_seq, sins), (_, conv, cins), _, (_, to_gate, gins) = chain[:5]
        if not spatial_mean(g, pool, pins):
            raise g.refuse(pool, "an ECA gate whose mean is not over height and width")
        for node, ins, rank in ((to_seq, sins, 3), (to_gate, gins, 4)):
            shape = [int(v) for v in g.const(node, ins[1]).reshape(-1)]
            fits = shape[1] == 1 if rank == 3 else shape[2:] == [1, 1]
            if len(shape) != rank or shape[0] == -1 or not fits:
                raise g.refuse(node, f"an ECA gate reshaped to {shape}; timm's EcaModule reshapes the channel "
                                     "means to (N, 1, C) and the gate to (N, C, 1, 1)")
        w, a = g.const(conv, cins[1]), _attrs(conv)
        pads = [int(p) for p in a.get("pads", [0, 0])]
        if w.ndim != 3 or w.shape[:2] != (1, 1) or len(set(pads)) != 1 or a.get("group", 1) != 1 \
                or list(a.get("strides", [1])) != [1] or list(a.get("dilations", [1])) != [1] \
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or (len(cins) > 2 and cins[2]):
            raise g.refuse(conv, f"an ECA conv of weight {list(w.shape)}, pads {pads}, attributes "
                                 f"{ {k: v for k, v in a.items() if k not in ('kernel_shape', 'pads')} }, bias "
                                 f"{len(cins) > 2 and bool(cins[2])}: timm's EcaModule has a (1, 1, k) conv at "
                                 "stride 1 with symmetric zero padding and no bias")
        name = f"{self._block_name}.se.conv"
        self.src.weights[f"{name}.weight"] = np.asarray(w, np.float32)
        self.src.layers[name] = Layer(name, "conv1d", tuple(w.shape), False, conv.name or conv.output[0],
                                      1, pads[0], 1)
