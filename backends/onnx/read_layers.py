"""The parametrised layers of an ONNX graph (:mod:`.reader`): Conv, BatchNormalization, a BatchNorm an
exporter folded into its Conv (put back with identity statistics), and the named sequence of one path."""

from __future__ import annotations

import numpy as np

from .patterns import attrs as _attrs, channel_pad, spatial_pad
from ...importers.source import Layer

EPS = 1e-5
#: the walk's kinds of a norm in a BN's slot: ONNX's BatchNormalization, a GroupNorm, a per-channel affine (Mul/Add)
NORM_KINDS = ("BatchNormalization", "gn", "affine", "normact")  # normact: FRN, EvoNorm-S0 (.read_frn)
NORMS = ("BatchNormalization", "GN", "AFFINE", "NORMACT")  # the same as sequence() spells them


def unit_variance(eps: float) -> np.float32:
    """The float32 running variance ``v`` nearest 1 - eps for which ``v + eps`` is exactly 1 in float32 (as
    torch, Keras and ONNX Runtime add them): a BN with it, mean 0, weight ``w`` and bias ``b`` computes
    ``x * w + b`` exactly."""
    e, one = np.float32(eps), np.float32(1)
    v = np.float32(one - e)
    while np.float32(v + e) > one:
        v = np.nextafter(v, np.float32(0))
    while np.float32(v + e) < one:
        v = np.nextafter(v, np.float32(2))
    return v


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
        self._unit_bn(name, np.ones(c, np.float32), bias, f"{conv.origin} (folded BatchNorm)")
        self.folded = True

    def norm(self, kind: str, name, node, facts):
        """Read the norm of walk kind ``kind`` (one of :data:`NORM_KINDS`, or as :meth:`sequence` spells it,
        :data:`NORMS`) into the BN slot ``name``."""
        read = {"batchnormalization": self.bn, "gn": self.gn, "affine": self.affine,
                "normact": self.norm_act}[kind.lower()]
        read(name, node, facts)

    def affine(self, name, node, facts):
        """A per-channel ``Mul`` [+ ``Add``] (:func:`.patterns_norm.affine_back`: a BatchNorm in inference form,
        its statistics folded into the scale and shift): a BN of weight = scale, bias = shift and identity
        statistics, so it computes ``x * scale + shift`` as the file does."""
        self._unit_bn(name, facts["scale"], facts["shift"], f"{node.name or node.output[0]} (Mul/Add BatchNorm)")

    def _unit_bn(self, name, weight, bias, origin):
        c = len(weight)
        self.src.weights.update({f"{name}.weight": np.asarray(weight, np.float32),
                                 f"{name}.bias": np.asarray(bias, np.float32),
                                 f"{name}.running_mean": np.zeros(c, np.float32)})
        self.src.layers[name] = Layer(name, "bn", (c,), True, origin)
        self._unit.append(name)  # running_var: set once the spec's eps is known (unit_variances)

    def unit_variances(self):
        """The identity-statistics BNs' running variances, for the eps the spec takes (a file's own
        BatchNormalization nodes decide it; 1e-5 where it has none): var + eps is exactly 1."""
        v = unit_variance(self.src.facts.get("eps", EPS))
        for name in self._unit:
            self.src.weights[f"{name}.running_var"] = np.full(self.src.layers[name].shape, v, np.float32)
        affine = [n for n in self._unit if self.src.layers[n].origin.endswith("(Mul/Add BatchNorm)")]
        if affine:
            self.src.notes.append(f"{len(affine)} per-channel Mul/Add pair(s) (a BatchNorm in inference form, as "
                                  f"tf2onnx writes it; {affine[0]}...) read as BatchNorms of weight = scale, bias = "
                                  "shift, mean 0, var + eps = 1: the numbers are exact")

    def sequence(self, ops, conv_names, bn_names, v1: bool):
        """Convs and BNs of one path, named in order; returns the non-parametric nodes left.

        A Conv followed directly by a ReLU had its BatchNorm folded into it, and so had, in a v1
        network, one that ends a path or feeds a squeeze-excite gate: the BN is put back (identity), holding
        the conv's bias, or zeros where the conv has none (an exporter that drops an all-zero bias, tf2onnx).
        """
        left, ci, bi, pad, pending = [], 0, 0, 0, None

        def restore(needed: bool):
            nonlocal bi, pending
            if pending and needed and (bi < len(bn_names) or self.src.layers[pending].bias):
                if bi >= len(bn_names):
                    raise self.g.refuse(node, "a convolution with a folded BatchNorm where a ResNet has none")
                self.identity_bn(bn_names[bi], pending)  # no bias: the folded BN's was zero (tf2onnx drops it)
                bi += 1
            pending = None

        for kind, node, ins in ops:
            t = node.op_type if kind == "op" else kind.upper()  # SE; BLUR: left for the caller
            if t == "Pad" and channel_pad(self.g, node, ins):
                t = "ChannelPad"  # option-A shortcut: left for the caller
            if t == "Relu":
                restore(True)
            elif t in NORMS:
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
                pending = conv_names[ci]
                ci += 1
            elif t in NORMS:
                if bi >= len(bn_names):
                    raise self.g.refuse(node, "one norm more than a ResNet block or stem has here")
                self.norm(t, bn_names[bi], node, ins)
                bi += 1
            else:
                left.append((node, ins, pad))
            pad = 0
        restore(v1)
        return left
