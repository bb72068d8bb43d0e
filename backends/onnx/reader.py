"""ONNX graph -> :class:`~...importers.source.Source`: recognise the residual structure of a ResNet graph.

Read from ``torch.onnx.export`` (TorchScript and dynamo exporters), from this project's ``convert``, and
from any producer that writes the same ops: Conv, BatchNormalization, Relu, Add, MaxPool/AveragePool,
Pad (zero, spatial; zero channels in an option-A shortcut), Slice (strided identity),
GlobalAveragePool/ReduceMean, Flatten/Reshape, Gemm or MatMul+Add (or a 1x1 Conv), and
GlobalAveragePool/ReduceMean-Conv-Relu-Conv-Sigmoid-Mul for squeeze-excite,
GlobalAveragePool/ReduceMean-Reshape-Conv(1-d)-Sigmoid-Reshape(-Expand)-Mul for ECA, reflect padding
(Pad, or Slice copies + Concat) then a depthwise Conv of the binomial filter for a blur pool,
Reshape-InstanceNormalization-Reshape-Mul-Add (or opset 21's GroupNormalization) for GroupNorm, a Conv
weight computed by standardization, and Split/Slice-(Add)-Conv-Relu-(AveragePool)-Concat for Res2Net's split
convs (:mod:`.read_res2net`; the cascade's Adds are not residual joins), and paths of Conv-(BN)-Relu joined by
a softmax across them (Sum or Concat/ReduceSum, Reshape, Softmax, Mul) for SKNet's selective kernel
(:mod:`.read_sknet`), and Conv-(BN)-Relu-Reshape(N, radix, C, H, W) weighted by a softmax across the radix and
summed for ResNeSt's split attention (:mod:`.read_resnest`, with the avd AveragePool), and a BatchNorm in inference form, Mul [+ Add] by per-channel
constants (tf2onnx's of a Keras 3 BatchNormalization), and a stem max pool's edge-copy padding (Slice copies of the
first and last rows, then columns, joined by Concats: this project's stock .keras through tf2onnx), and
Filter Response Normalization with its TLU (Max) and EvoNorm-S0, each found from its Sqrt and its nodes evaluated
against the op's formula (:mod:`.patterns_frn`, :mod:`.read_frn`). Constant subgraphs are folded first;
the node patterns are in :mod:`.patterns`, :mod:`.patterns_blur`, :mod:`.patterns_norm` and :mod:`.patterns_frn`.

Every residual ``Add`` (two computed inputs) closes one block; walking back from its two inputs to the
previous block's output gives the shared pre-activation, the residual branch (the one with the most
convolutions) and the shortcut. A v1 block has a ReLU after the Add. A block whose shortcut projects
(type B) or pads channels (option A) opens a stage; where every block projects (type C), one whose
projection changes channels or stride does. Exporters fold each BatchNorm into
the preceding Conv: where a v1 network has a Conv without its BatchNorm, the import puts back a BN
with identity statistics (weight 1, running mean 0, running var 1 - eps) holding the folded bias, so
the numbers are exact and the spec is the usual one; a per-channel Mul/Add comes back the same way, its scale
the BN's weight and its shift the BN's bias (:meth:`.read_layers.LayerReader.affine`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .patterns_frn import norm_acts
from .patterns_norm import affine_back, standardized_weights
from .patterns_stock import nhwc_channel_pad
from .patterns import broadcast_source, check_wiring, edge_pad, fold, read_constant, UNREAD_JOINS
from .checked import load_checked
from .read_aa import AntiAliasReader
from .read_attention import AttentionReader
from .read_blocks import BlockReader
from .read_frn import NormActReader
from .read_head import HeadReader
from .read_layers import convs as _convs, LayerReader, NORM_KINDS
from .read_norm import NormReader
from .read_res2net import Res2NetReader
from .read_resnest import SplitAttentionReader
from .read_sknet import SelectiveKernelReader
from .read_stem import entry_layout, StemReader
from ...budgets import ONNX_MAX_FOLD_TOTAL
from ...fileio import shown
from ...importers.source import ImportRefused, Recogniser, Source

PASS_THROUGH = ("Identity", "Dropout")


class _Graph:
    def __init__(self, model, label: str):
        from onnx import numpy_helper

        self.path = label  # the file as messages name it
        self.model, self._shapes = model, None
        g = model.graph
        self.consts = {}
        for t in g.initializer:
            try:
                self.consts[t.name] = np.array(numpy_helper.to_array(t))  # writable copy
            except Exception as exc:  # external data missing, corrupt tensor
                raise ImportRefused(f"{label}: initializer {t.name!r} cannot be read ({exc})") from None
        alias = {}
        opset = self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.nodes, self.producer, self.consumers = [], {}, defaultdict(list)
        fold_left = ONNX_MAX_FOLD_TOTAL  # all folded values together: many small bombs are one big one
        for n in g.node:
            if n.op_type == "Constant" and read_constant(self, n):
                continue
            if n.op_type in PASS_THROUGH and n.input:
                alias[n.output[0]] = alias.get(n.input[0], n.input[0])
                continue
            ins = [alias.get(i, i) for i in n.input]
            folded = fold(n, ins, self.consts, opset, fold_left)
            if folded:
                fold_left -= folded
                continue
            self.nodes.append((n, ins))
            for o in n.output:
                self.producer[o] = (n, ins)
            for i in ins:
                if i and i not in self.consts:
                    self.consumers[i].append(n)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ImportRefused(f"{label}: expected one image input, found {len(inputs)}")
        self.input = inputs[0]
        self.output = alias.get(g.output[0].name, g.output[0].name) if g.output else None
        self.layout, self.entry = entry_layout(self)  # an NHWC input: its Transpose to NCHW, out of the walk
        self.index = {id(n): k for k, (n, _) in enumerate(self.nodes)}  # graph order, once the entry is settled
        check_wiring(self)  # a cycle: the walks back from each Add would never end
        self.std_eps = standardized_weights(self)  # weight-standardized convs: their raw weights as constants
        self.norm_acts = norm_acts(self)  # FRN, EvoNorm-S0: {the value each ends in: (facts, its input)}

    def refuse(self, node, why: str) -> ImportRefused:
        name = node.name or (node.output[0] if node.output else "")
        return ImportRefused(f"{self.path}: node {name!r} ({node.op_type}): {why}")

    def shape(self, value):
        """``value``'s dims (None where symbolic) by ONNX shape inference, run once on first use; None if unknown."""
        if self._shapes is None:
            from onnx import shape_inference

            try:
                g = shape_inference.infer_shapes(self.model).graph
            except Exception:  # an inference error leaves the shapes unknown: the caller refuses
                g = None
            infos = list(g.value_info) + list(g.input) + list(g.output) if g is not None else []
            self._shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None
                                      for d in vi.type.tensor_type.shape.dim] for vi in infos}
        return self._shapes.get(value)

    def data(self, ins):
        return [i for i in ins if i and i not in self.consts]

    def const(self, node, name):
        if name not in self.consts:
            raise self.refuse(node, f"input {name!r} is computed in the graph; expected a constant")
        value = np.asarray(self.consts[name])
        if value.dtype.kind not in "biuf":  # a string or complex tensor where numbers go
            what = "complex" if value.dtype.kind == "c" else "string"
            raise self.refuse(node, f"input {name!r} holds {what} data; expected numbers")
        return value


def read_onnx(path: str, max_params: int | None = None) -> Source:
    label = shown(path)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportRefused(f"{label}: reading ONNX files needs the onnx package "
                           "(pip install 'resnet-spec[onnx]')") from None
    model = load_checked(path, max_params)  # special files, node and tensor budgets: before any tensor is read
    if not model.graph.node:
        raise ImportRefused(f"{label}: the ONNX graph has no nodes")
    try:
        return _Walker.source(label, "onnx", {"path": path}, _Graph(model, label))
    except ImportRefused:
        raise
    except (ArithmeticError, AttributeError, IndexError, KeyError, TypeError, ValueError, RecursionError) as exc:
        # a graph malformed in a way no check above names (a node missing an input or attribute)
        raise ImportRefused(f"{label}: a malformed graph ({type(exc).__name__}: {exc})") from None


class _Walker(StemReader, BlockReader, HeadReader, AttentionReader, AntiAliasReader, NormReader, NormActReader,
              Res2NetReader, SelectiveKernelReader, SplitAttentionReader, LayerReader, Recogniser):
    """Recognises stem, blocks and head, then names layers as torchvision/timm do (the mixins: one module
    each, :mod:`.read_stem`, :mod:`.read_blocks`, :mod:`.read_head`, :mod:`.read_attention`,
    :mod:`.read_aa`, :mod:`.read_norm`, :mod:`.read_res2net`, :mod:`.read_sknet`, :mod:`.read_resnest`,
    :mod:`.read_layers`)."""

    def __init__(self, src: Source, g: _Graph):
        self.g, self.src = g, src
        self.folded, self._std, self._unit = False, {}, []  # _std: standardized conv -> eps; _unit: unit_variances
        self._norm_acts, self._norm_act_layers = {}, set()  # (kind, eps, groups) -> the first FRN/EvoNorm-S0

    # -- graph walking ---------------------------------------------------------------------------
    def back(self, value, stop) -> list:
        """The nodes from ``stop`` to ``value`` (in forward order), following each node's data input."""
        ops = []
        while value != stop:
            if value not in self.g.producer:
                return None
            node, ins = self.g.producer[value]
            if node.op_type == "Add" and len(self.g.data(ins)) == 2:
                return None  # another block's join: not on this block's path
            data = self.g.data(ins)
            sk = self.sk_back(node, ins) if node.op_type in ("Sum", "ReduceSum") else None
            sk = ("sk", sk) if sk else ("sa", self.sa_back(node, ins)) if node.op_type == "ReduceSum" else None
            if sk and sk[1]:  # SKNet's selective kernel, ResNeSt's split attention: one op from its weighted sum
                ops.append((sk[0], node, sk[1][0]))
                value = sk[1][1]
                continue
            if node.op_type in ("ReduceSum", "Softmax"):  # what backends/onnx/resnest.py writes, not read back yet
                where = "a Softmax inside the network (one is read only over the classes, ending the graph): " \
                    if node.op_type == "Softmax" else ""
                raise self.g.refuse(node, f"{where}not ResNeSt split attention (radix >= 2: ReduceSum of Mul(splits, "
                                          "softmax weights)) nor a selective kernel")
            blur = self.blur_back(node, ins) if node.op_type == "Conv" else None
            if blur:  # timm's BlurPool2d: reflect padding and a fixed depthwise filter, one op
                ops.append(("blur", node, blur[0]))
                value = blur[1]
                continue
            norm = self.norm_ops_back(value, node, ins)
            if norm:  # GroupNorm (Reshape, InstanceNormalization, Reshape, Mul, Add); FRN, EvoNorm-S0: one op each
                ops += norm[0]
                value = norm[1]
                continue
            found = self._tf2onnx_back(node, ins)
            if found:  # tf2onnx's forms: a BN as Mul [+ Add]; a max pool's edge-copy padding (Slice copies + Concat)
                ops.append((found[0], node, found[1]))
                value = found[2]
                continue
            r2n = self.res2net_back(node, ins) if node.op_type == "Concat" else None
            if r2n:  # Res2Net's split convs: one op from the Concat back to the tensor split
                ops.append(("res2net", node, r2n[0]))
                value = r2n[1]
                continue
            sa1 = self.sa1_back(node, ins) if node.op_type == "Mul" else None
            if sa1:  # ResNeSt's split attention at radix 1: a sigmoid gate told from squeeze-excite
                ops.append(("sa", node, sa1[0]))
                value = sa1[1]
                continue
            if node.op_type == "Mul":
                x, gate = self._se_inputs(node, ins)
                ops.append(("se", node, gate))
                value = x
                continue
            if broadcast_source(self.g, node, ins):  # a gate expanded to its tensor's shape
                data = [broadcast_source(self.g, node, ins)]
            if len(data) != 1:
                raise self.g.refuse(node, UNREAD_JOINS.get(node.op_type, f"{len(data)} computed inputs; a ResNet "
                                                                         "layer has one"))
            ops.append(("op", node, ins))
            value = data[0]
        return ops[::-1]

    def _tf2onnx_back(self, node, ins):
        """``(kind, facts, input)`` of a per-channel affine (``affine``: a BatchNorm in inference form), an
        edge-copy padding (``edgepad``, read by the stem pool) or option A's zero channels written through
        NHWC (``chpad``: :mod:`.patterns_stock`) ending at ``node``, or None."""
        aff = affine_back(self.g, node, ins)
        if aff:
            return "affine", aff[0], aff[1]
        edge = edge_pad(self.g, node, ins)
        if edge:
            return "edgepad", edge[1], edge[0]
        pad = nhwc_channel_pad(self.g, node, ins)  # option A's zero channels through NHWC (chpad)
        return ("chpad", pad[0], pad[1]) if pad else None

    def residual_adds(self):
        inner = self.res2net_adds()  # a Res2Net cascade's Adds join splits, not blocks
        adds = [(n, ins) for n, ins in self.g.nodes
                if n.op_type == "Add" and len(self.g.data(ins)) == 2 and id(n) not in inner]
        if not adds:
            raise ImportRefused(f"{self.g.path}: no residual connection (no Add of two computed tensors): "
                               "not a ResNet")
        return adds

    def run(self):
        x = self.g.entry  # the input, or its Transpose to NCHW
        blocks, stem = [], None
        for add, ins in self.residual_adds():
            a, b = self.g.data(ins)
            pa, pb = self.back(a, x), self.back(b, x)
            if pa is None or pb is None:
                raise self.g.refuse(add, "this Add does not join two paths from the previous block's output; "
                                         "not a chain of residual blocks")
            k = 0
            while k < min(len(pa), len(pb)) and pa[k][1] is pb[k][1]:
                k += 1
            pre, ra, rb = pa[:k], pa[k:], pb[k:]
            main, short = (ra, rb) if _convs(ra) >= _convs(rb) else (rb, ra)
            out = add.output[0]
            consumers = self.g.consumers.get(out, [])
            post = len(consumers) == 1 and consumers[0].op_type == "Relu"
            if post:
                out = consumers[0].output[0]
            if stem is None:
                stem, pre = pre, []
                tail = [n.op_type if kind == "op" else kind for kind, n, _ in stem[-2:]]
                if not post and main and main[0][1].op_type == "Conv" and tail[-1:] == ["Relu"] \
                        and tail[0] in NORM_KINDS + ("Conv",):
                    # a pre-activation block whose shortcut reads pre (its BN may be folded into the stem conv)
                    cut = 2 if tail[0] in NORM_KINDS else 1
                    stem, pre = stem[:-cut], stem[-cut:]
            blocks.append((add, pre, main, short, post))
            x = out
        self.stem(stem, preact=not blocks[0][4])
        self.blocks(blocks)
        self.head(x)
        self.standardization()
        self.norm_act_facts()
        self.unit_variances()
