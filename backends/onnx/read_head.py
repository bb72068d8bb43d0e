"""The head of an ONNX ResNet graph (:mod:`.reader`): optional final BN (or GroupNorm, or a per-channel Mul/Add)
+ ReLU, global average pool, flatten and one fully connected layer (Gemm, MatMul + Add, a MatMul alone: bias
zeros, or a 1x1 Conv), and a trailing Softmax over the classes (tf2onnx's files of keras.applications models, whose
classifier_activation is "softmax"): left out, as the ``.keras`` importer does, and the proof compares the
file's logits, the Softmax's input (:func:`.checked.run_source`)."""

from __future__ import annotations

import numpy as np

from .patterns import attrs as _attrs
from .read_layers import NORM_KINDS
from ...importers.source import ImportRefused, Layer


class HeadReader:
    """Mixin of the graph walker: the ops after the last residual block."""

    def head(self, x):
        g = self.g
        ops = self.back(self._logits(g.output), x) if g.output else None
        if ops is None:
            raise ImportRefused(f"{g.path}: the graph output is not computed from the last residual block")
        kinds = [n.op_type if kind == "op" else kind for kind, n, _ in ops]
        seq = [(n, ins) for _, n, ins in ops]
        if kinds and kinds[0] in NORM_KINDS:
            self.norm(kinds[0], "bn_final", *seq[0])
            seq = seq[1:]
            if not seq or seq[0][0].op_type != "Relu":
                raise ImportRefused(f"{g.path}: head norm without its ReLU")
            seq = seq[1:]
        if not seq or seq[0][0].op_type not in ("GlobalAveragePool", "ReduceMean"):
            raise ImportRefused(f"{g.path}: head {kinds} does not start with a global average pool")
        rest = [(n, ins) for n, ins in seq[1:] if n.op_type not in ("Flatten", "Reshape", "Squeeze")]
        if len(rest) == 1 and rest[0][0].op_type == "Gemm":
            self.gemm(*rest[0])
        elif len(rest) == 2 and [n.op_type for n, _ in rest] == ["MatMul", "Add"]:
            self.matmul(rest[0], rest[1])
        elif len(rest) == 1 and rest[0][0].op_type == "MatMul":
            self.matmul(rest[0], None)
        elif len(rest) == 1 and rest[0][0].op_type == "Conv":
            self.conv_fc(*rest[0])
        else:
            raise ImportRefused(f"{g.path}: head {kinds}: expected pool, flatten and one fully connected layer")

    def _logits(self, out):
        """The value the classifier computes: ``out`` itself, or the input of a Softmax over the class axis that
        ends the graph (then the proof runs the file up to it: ``facts["logits"]``). Any other Softmax is refused."""
        node, ins = self.g.producer.get(out, (None, None))
        if node is None or node.op_type != "Softmax":
            return out
        shape = self.g.shape(node.input[0])
        axis = _attrs(node).get("axis", 1 if self.g.opset < 13 else -1)
        rank = len(shape) if shape is not None else None
        trailing = rank is not None and all(d == 1 for d in shape[2:])  # (N, classes) or (N, classes, 1, 1)
        if rank is None or rank < 2 or axis not in (1, 1 - rank) or not trailing:
            raise self.g.refuse(node, f"a Softmax on axis {axis} of a tensor of shape {shape}: only a Softmax over "
                                      "the classes (axis 1) after the classifier is read (and left out)")
        self.src.facts["logits"] = node.input[0]
        self.src.notes.append(f"the file applies a Softmax over the classes after the classifier "
                              f"({node.name or out!r}): left out (the generated model outputs logits); the proof "
                              "compares the file's logits, the Softmax's input")
        return ins[0]

    def gemm(self, node, ins):
        a = _attrs(node)
        w = self.g.const(node, ins[1])
        w = w if a.get("transB", 0) else w.T
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise self.g.refuse(node, "Gemm with transA/alpha/beta: not a plain fully connected layer")
        bias = len(ins) > 2 and bool(ins[2])
        self._linear(node, w, self.g.const(node, ins[2]) if bias else None)

    def conv_fc(self, node, ins):
        """A 1x1 Conv after the global pool (timm's ClassifierHead with use_conv, ResNetV2): a linear layer."""
        a, w = _attrs(node), self.g.const(node, ins[1])
        if w.ndim != 4 or w.shape[2:] != (1, 1) or a.get("group", 1) != 1 or set(a.get("strides", [1])) != {1} \
                or any(a.get("pads", [0])) or set(a.get("dilations", [1])) != {1} or ins[1] in self.g.std_eps:
            raise self.g.refuse(node, f"a head conv of weight {list(w.shape)}, attributes {a}: a fully connected "
                                      "layer as a conv is 1x1, stride 1, unpadded, ungrouped")
        bias = len(ins) > 2 and bool(ins[2])
        self._linear(node, w.reshape(w.shape[:2]), self.g.const(node, ins[2]) if bias else None)

    def matmul(self, mm, add):
        """MatMul [+ Add]. A MatMul alone is read with a bias of zeros (the spec keeps ``head.bias``): tf2onnx
        drops an all-zero bias Add (Keras' Dense initialises its bias to zeros), and the numbers are the same."""
        w = self.g.const(mm[0], mm[1][1])
        if w.ndim != 2:
            raise self.g.refuse(mm[0], f"a MatMul by a weight of shape {list(w.shape)}: a fully connected layer's is "
                                       "(in, out)")
        if add is None:
            self.src.notes.append(f"the classifier ({mm[0].name or mm[0].output[0]!r}) is a MatMul without a bias "
                                  "Add (tf2onnx drops an all-zero one): read with a bias of zeros")
            self._linear(mm[0], w.T, np.zeros(w.shape[1], np.float32))
            return
        b = [i for i in add[1] if i in self.g.consts]
        self._linear(mm[0], w.T, self.g.const(add[0], b[0]) if b else None)

    def _linear(self, node, w, b):
        self.src.weights["fc.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        if b is not None:
            self.src.weights["fc.bias"] = np.asarray(b, np.float32).reshape(-1)
        self.src.layers["fc"] = Layer("fc", "linear", tuple(w.shape), b is not None, node.name or node.output[0])
