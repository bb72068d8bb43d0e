"""The parametrised layers of an ONNX graph (:mod:`.reader`): Conv, BatchNormalization, a BatchNorm an
exporter folded into its Conv (put back with identity statistics), and the named sequence of one path."""

from __future__ import annotations

import numpy as np

from .patterns import attrs as _attrs, channel_pad, spatial_pad
from ...importers.source import Layer

EPS = 1e-5


def convs(path) -> int:
    """The Conv nodes of a walked path (``(kind, node, inputs)`` triples)."""
    return sum(1 for kind, n, _ in path if kind == "op" and n.op_type == "Conv")


class LayerReader:
    """Mixin of the graph walker (``self.g``: the graph, ``self.src``: the Source being filled)."""

    def conv(self, name, node, ins, extra_pad=0):
        g, a = self.g, _attrs(node)
        w = g.const(node, ins[1])
        if w.ndim != 4:
            raise g.refuse(node, f"a {w.ndim - 2}-d convolution; ResNets here are 2-d")
        strides, dil = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID") and w.shape[2] > 1:
            raise g.refuse(node, f"auto_pad {a['auto_pad']!r}: asymmetric 'same' padding has no spec equivalent")
        if len(set(strides)) != 1 or len(set(pads)) != 1 or len(set(dil)) != 1 or w.shape[2] != w.shape[3]:
            raise g.refuse(node, f"non-square kernel {list(w.shape[2:])}, strides {strides}, pads {pads} or "
                                 f"dilations {dil}: a spec has square convs with symmetric padding")
        bias = len(ins) > 2 and bool(ins[2])
        if ins[1] in g.std_eps:  # computed in the graph by weight standardization (patterns_norm)
            self._std[name] = g.std_eps[ins[1]]
        self.src.weights[f"{name}.weight"] = w.astype(np.float32)
        if bias:
            self.src.weights[f"{name}.bias"] = g.const(node, ins[2]).astype(np.float32)
        self.src.layers[name] = Layer(name, "conv", tuple(w.shape), bias, node.name or node.output[0],
                                      strides[0], pads[0] + extra_pad, dil[0])

    def bn(self, name, node, ins):
        g = self.g
        # ONNX stores epsilon as float32: keep the shortest decimal that rounds to it (1.001e-05)
        eps = float(str(np.float32(_attrs(node).get("epsilon", 1e-5))))
        for leaf, i in zip(("weight", "bias", "running_mean", "running_var"), ins[1:5]):
            self.src.weights[f"{name}.{leaf}"] = g.const(node, i).astype(np.float32)
        self.src.layers[name] = Layer(name, "bn", (len(self.src.weights[f"{name}.weight"]),), True,
                                      node.name or node.output[0], eps=eps)
        self.src.facts["eps"] = eps

    def identity_bn(self, name, conv_name):
        """The BatchNorm an exporter folded into ``conv_name``: identity statistics, the conv's bias."""
        conv = self.src.layers[conv_name]
        c = conv.shape[0]
        bias = self.src.weights.pop(f"{conv_name}.bias", np.zeros(c, np.float32))
        conv.bias = False
        self.src.weights.update({f"{name}.weight": np.ones(c, np.float32), f"{name}.bias": bias,
                                 f"{name}.running_mean": np.zeros(c, np.float32),
                                 f"{name}.running_var": np.full(c, 1.0 - EPS, np.float32)})
        self.src.layers[name] = Layer(name, "bn", (c,), True, f"{conv.origin} (folded BatchNorm)")
        self.folded = True

    def sequence(self, ops, conv_names, bn_names, v1: bool):
        """Convs and BNs of one path, named in order; returns the non-parametric nodes left.

        A Conv followed directly by a ReLU had its BatchNorm folded into it, and so had, in a v1
        network, one that ends a path or feeds a squeeze-excite gate: the BN is put back (identity).
        """
        left, ci, bi, pad, pending = [], 0, 0, 0, None

        def restore(needed: bool):
            nonlocal bi, pending
            if pending and needed:
                if bi >= len(bn_names):
                    raise self.g.refuse(node, "a convolution with a folded BatchNorm where a ResNet has none")
                self.identity_bn(bn_names[bi], pending)
                bi += 1
            pending = None

        for kind, node, ins in ops:
            t = node.op_type if kind == "op" else kind.upper()  # SE; BLUR: left for the caller
            if t == "Pad" and channel_pad(self.g, node, ins):
                t = "ChannelPad"  # option-A shortcut: left for the caller
            if t == "Relu":
                restore(True)
            elif t in ("BatchNormalization", "GN"):
                pending = None
            elif t != "Pad":
                restore(v1)
            if kind == "se":
                self.se(node, ins)
            elif t == "Pad":
                pad = spatial_pad(self.g, node, ins)
                continue
            elif t == "Conv":
                if ci >= len(conv_names):
                    raise self.g.refuse(node, "one convolution more than a ResNet block or stem has here")
                self.conv(conv_names[ci], node, ins, pad)
                pending = conv_names[ci] if self.src.layers[conv_names[ci]].bias else None
                ci += 1
            elif t in ("BatchNormalization", "GN"):
                if bi >= len(bn_names):
                    raise self.g.refuse(node, "one norm more than a ResNet block or stem has here")
                (self.bn if t == "BatchNormalization" else self.gn)(bn_names[bi], node, ins)
                bi += 1
            else:
                left.append((node, ins, pad))
            pad = 0
        restore(v1)
        return left
