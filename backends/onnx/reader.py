"""ONNX graph -> :class:`~...importers.source.Source`: recognise the residual structure of a ResNet graph.

Read from ``torch.onnx.export`` (TorchScript and dynamo exporters), from this project's ``convert``, and
from any producer that writes the same ops: Conv, BatchNormalization, Relu, Add, MaxPool/AveragePool,
Pad (zero, spatial; zero channels in an option-A shortcut), Slice (strided identity),
GlobalAveragePool/ReduceMean, Flatten/Reshape, Gemm or MatMul+Add, and
GlobalAveragePool/ReduceMean-Conv-Relu-Conv-Sigmoid-Mul for squeeze-excite. Constant subgraphs are
folded first; the node patterns are in :mod:`.patterns`.

Every residual ``Add`` (two computed inputs) closes one block; walking back from its two inputs to the
previous block's output gives the shared pre-activation, the residual branch (the one with the most
convolutions) and the shortcut. A v1 block has a ReLU after the Add. A block whose shortcut projects
(type B) or pads channels (option A) opens a stage; where every block projects (type C), one whose
projection changes channels or stride does. Exporters fold each BatchNorm into
the preceding Conv: where a v1 network has a Conv without its BatchNorm, the import puts back a BN
with identity statistics (weight 1, running mean 0, running var 1 - eps) holding the folded bias, so
the numbers are exact and the spec is the usual one.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .patterns import attrs as _attrs, border_mask, channel_pad, check_wiring, fold, pool_facts, \
    read_constant, shortcut_reshapes, slice_steps, spatial_pad, UNREAD_JOINS
from .checked import declared_input, load_checked
from ...budgets import ONNX_MAX_FOLD_TOTAL
from ...fileio import shown
from .norm import refuse_norm_nodes
from ...importers.source import ImportRefused, Layer, Recogniser, Source

PASS_THROUGH = ("Identity", "Dropout")
EPS = 1e-5
class _Graph:
    def __init__(self, model, label: str):
        from onnx import numpy_helper

        self.path = label  # the file as messages name it
        g = model.graph
        self.consts = {}
        for t in g.initializer:
            try:
                self.consts[t.name] = np.array(numpy_helper.to_array(t))  # writable copy
            except Exception as exc:  # external data missing, corrupt tensor
                raise ImportRefused(f"{label}: initializer {t.name!r} cannot be read ({exc})") from None
        alias = {}
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
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
        check_wiring(self)  # a cycle: the walks back from each Add would never end

    def refuse(self, node, why: str) -> ImportRefused:
        name = node.name or (node.output[0] if node.output else "")
        return ImportRefused(f"{self.path}: node {name!r} ({node.op_type}): {why}")

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


def read_onnx(path: str) -> Source:
    label = shown(path)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportRefused(f"{label}: reading ONNX files needs the onnx package "
                           "(pip install 'resnet-spec[onnx]')") from None
    model = load_checked(path)  # special files, node and tensor budgets: before any tensor is read
    if not model.graph.node:
        raise ImportRefused(f"{label}: the ONNX graph has no nodes")
    refuse_norm_nodes(model, label)  # GroupNorm / weight standardization: not read back yet
    try:
        return _Walker.source(label, "onnx", {"path": path}, _Graph(model, label))
    except ImportRefused:
        raise
    except (ArithmeticError, AttributeError, IndexError, KeyError, TypeError, ValueError, RecursionError) as exc:
        # a graph malformed in a way no check above names (a node missing an input or attribute)
        raise ImportRefused(f"{label}: a malformed graph ({type(exc).__name__}: {exc})") from None


class _Walker(Recogniser):
    """Recognises stem, blocks and head, then names layers as torchvision/timm do."""

    def __init__(self, src: Source, g: _Graph):
        self.g, self.src = g, src
        self.folded = False

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
            if node.op_type in ("ReduceSum", "Softmax"):  # what backends/onnx/resnest.py writes, not read back yet
                raise self.g.refuse(node, "ResNeSt split attention, which the ONNX reader cannot read back yet")
            if node.op_type == "Mul":
                x, gate = self._se_inputs(node, ins)
                ops.append(("se", node, gate))
                value = x
                continue
            if len(data) != 1:
                raise self.g.refuse(node, UNREAD_JOINS.get(node.op_type, f"{len(data)} computed inputs; a ResNet "
                                                                         "layer has one"))
            ops.append(("op", node, ins))
            value = data[0]
        return ops[::-1]

    def _se_inputs(self, node, ins):
        data = self.g.data(ins)
        if len(data) != 2:
            raise self.g.refuse(node, "a Mul that is not a squeeze-excite gate")
        for x, gate in (data, data[::-1]):
            chain = self.back(gate, x)
            if chain and [n.op_type for _, n, _ in chain][-1] == "Sigmoid":
                return x, chain
        raise self.g.refuse(node, "a Mul that is not a squeeze-excite gate (pool-conv-relu-conv-sigmoid)")

    def residual_adds(self):
        adds = [(n, ins) for n, ins in self.g.nodes if n.op_type == "Add" and len(self.g.data(ins)) == 2]
        if not adds:
            raise ImportRefused(f"{self.g.path}: no residual connection (no Add of two computed tensors): "
                               "not a ResNet")
        return adds

    def run(self):
        x = self.g.input.name
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
                tail = [n.op_type for _, n, _ in stem[-2:]]
                if not post and main and main[0][1].op_type == "Conv" and tail[-1:] == ["Relu"] \
                        and tail[0] in ("BatchNormalization", "Conv"):
                    # a pre-activation block whose shortcut reads pre (its BN may be folded into the stem conv)
                    cut = 2 if tail[0] == "BatchNormalization" else 1
                    stem, pre = stem[:-cut], stem[-cut:]
            blocks.append((add, pre, main, short, post))
            x = out
        self.stem(stem, preact=not blocks[0][4])
        self.blocks(blocks)
        self.head(x)

    # -- layers ----------------------------------------------------------------------------------
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
            t = node.op_type if kind == "op" else "SE"
            if t == "Pad" and channel_pad(self.g, node, ins):
                t = "ChannelPad"  # option-A shortcut: left for the caller
            if t == "Relu":
                restore(True)
            elif t == "BatchNormalization":
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
            elif t == "BatchNormalization":
                if bi >= len(bn_names):
                    raise self.g.refuse(node, "one BatchNormalization more than a ResNet block or stem has here")
                self.bn(bn_names[bi], node, ins)
                bi += 1
            else:
                left.append((node, ins, pad))
            pad = 0
        restore(v1)
        return left

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

    def blocks(self, blocks):
        stage, index = 0, -1
        self._sc = {"pool_strides": {}, "pool": None, "strided": False, "zero_pad": {}}
        # ResNet-D (timm avg_down) keeps index 0 for the pool even where a block has none
        self._avg_down = any(n.op_type == "AveragePool" for b in blocks for _, n, _ in b[3])
        type_c = all(_convs(b[3]) for b in blocks)  # every block projects: stages start where shapes change
        for add, pre, main, short, post in blocks:
            if index >= 0 and self._starts_stage(short, type_c):
                stage, index = stage + 1, 0
            else:
                index += 1
            name = self._block_name = f"layer{stage + 1}.{index}"
            nconv = _convs(main)
            if nconv not in (2, 3):
                raise self.g.refuse(add, f"the residual branch has {nconv} convolutions; ResNet blocks have 2 or 3")
            convs = [f"{name}.conv{i}" for i in range(1, nconv + 1)]
            bns = [f"{name}.bn{i}" for i in range(1, nconv + 1)]
            self.sequence(pre, [], bns[:1], v1=False)
            if pre and not any(n.op_type == "BatchNormalization" for _, n, _ in pre) \
                    and self.src.layers[self._stem_conv].bias:
                self.identity_bn(bns[0], self._stem_conv)  # the first pre-activation BN, folded into the stem
            main_bns = bns[1:] if pre else bns
            for n, _, _ in self.sequence(main, convs, main_bns, v1=post):
                if n.op_type != "Relu":
                    raise self.g.refuse(n, "not expected in a residual branch (conv, BN, ReLU, squeeze-excite)")
            self._shortcut_ops(self._shortcut(name, short, post), stage)
        self._shortcut_facts()

    def _starts_stage(self, short, type_c: bool) -> bool:
        """A block opens a stage where its shortcut projects (type B; type C: and changes the shape) or
        pads channels (option A). A strided identity alone does not (Keras ResNetV2 strides a stage's
        last block)."""
        if any(n.op_type == "Pad" and channel_pad(self.g, n, ins) for _, n, ins in short):
            return True
        return bool(_convs(short)) and (not type_c or shortcut_reshapes(self.g, short))

    def _shortcut_ops(self, left, stage):
        """The shortcut's parameter-free ops: ResNet-D's average pool, a strided identity (Slice,
        1x1 MaxPool), option A's zero channels."""
        sc, steps, padded = self._sc, {}, False
        for n, ins, pad in left:
            if n.op_type == "AveragePool":
                p = pool_facts(n, ins, pad)
                sc["pool_strides"][stage] = p["stride"]
                sc["pool"] = {"ceil_mode": p.get("ceil_mode", False),
                              "count_include_pad": p.get("count_include_pad", False)}
            elif n.op_type == "Slice":
                for ax, step in slice_steps(self.g, n, ins).items():
                    steps[ax] = steps.get(ax, 1) * step
            elif n.op_type == "MaxPool" and _attrs(n).get("kernel_shape") == [1, 1]:
                steps = dict(zip((2, 3), _attrs(n).get("strides", [1, 1])))  # Keras ResNetV2's strided 1x1 pool
            elif n.op_type == "Pad":
                before, after = channel_pad(self.g, n, ins)
                extra = before + after
                mode = "split" if before == extra // 2 else "end" if before == 0 else None
                if mode is None:
                    raise self.g.refuse(n, f"zero channels {before} before and {after} after: an option-A "
                                           "shortcut pads half before (split) or all after (end)")
                sc["zero_pad"].setdefault(mode, n)
                padded = True
            else:
                raise self.g.refuse(n, "not expected in a shortcut (conv, BN, average pool, strided identity, "
                                       "zero channels)")
        if steps.get(2, 1) != steps.get(3, 1):
            raise self.g.refuse(left[-1][0], f"a strided identity with strides {steps}: not square")
        sc["strided"] = sc["strided"] or (bool(steps) and not padded)

    def _shortcut_facts(self):
        sc, f = self._sc, self.src.facts
        f.update(shortcut_pool_strides=sc["pool_strides"], strided_identity=sc["strided"])
        if sc["pool"]:
            f["shortcut_pool"] = sc["pool"]
        if len(sc["zero_pad"]) > 1:
            raise self.g.refuse(sc["zero_pad"]["end"], "option-A shortcuts pad channels both split and at the "
                                                        "end; a spec has one shortcut.zero_pad")
        if sc["zero_pad"]:
            f["zero_pad"] = next(iter(sc["zero_pad"]))
        if self.folded:
            self.src.notes.append("BatchNorm layers folded into convolutions by the exporter were restored "
                                  f"with identity statistics (weight 1, mean 0, var 1 - eps, eps {EPS:g}) "
                                  "holding the folded bias; the numbers are exact")

    def _shortcut(self, name, short, v1):
        pos = 1 if self._avg_down else 0
        return self.sequence(short, [f"{name}.downsample.{pos}"], [f"{name}.downsample.{pos + 1}"], v1=v1)

    def head(self, x):
        g = self.g
        ops = self.back(g.output, x) if g.output else None
        if ops is None:
            raise ImportRefused(f"{g.path}: the graph output is not computed from the last residual block")
        kinds = [n.op_type for _, n, _ in ops]
        seq = [(n, ins) for _, n, ins in ops]
        if seq and seq[0][0].op_type == "BatchNormalization":
            self.bn("bn_final", *seq[0])
            seq = seq[1:]
            if not seq or seq[0][0].op_type != "Relu":
                raise ImportRefused(f"{g.path}: head BatchNormalization without its ReLU")
            seq = seq[1:]
        if not seq or seq[0][0].op_type not in ("GlobalAveragePool", "ReduceMean"):
            raise ImportRefused(f"{g.path}: head {kinds} does not start with a global average pool")
        rest = [(n, ins) for n, ins in seq[1:] if n.op_type not in ("Flatten", "Reshape", "Squeeze")]
        if len(rest) == 1 and rest[0][0].op_type == "Gemm":
            self.gemm(*rest[0])
        elif len(rest) == 2 and [n.op_type for n, _ in rest] == ["MatMul", "Add"]:
            self.matmul(rest[0], rest[1])
        else:
            raise ImportRefused(f"{g.path}: head {kinds}: expected pool, flatten and one fully connected layer")

    def gemm(self, node, ins):
        a = _attrs(node)
        w = self.g.const(node, ins[1])
        w = w if a.get("transB", 0) else w.T
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise self.g.refuse(node, "Gemm with transA/alpha/beta: not a plain fully connected layer")
        bias = len(ins) > 2 and bool(ins[2])
        self._linear(node, w, self.g.const(node, ins[2]) if bias else None)

    def matmul(self, mm, add):
        w = self.g.const(mm[0], mm[1][1])
        b = [i for i in add[1] if i in self.g.consts]
        self._linear(mm[0], w.T, self.g.const(add[0], b[0]) if b else None)

    def _linear(self, node, w, b):
        self.src.weights["fc.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        if b is not None:
            self.src.weights["fc.bias"] = np.asarray(b, np.float32).reshape(-1)
        self.src.layers["fc"] = Layer("fc", "linear", tuple(w.shape), b is not None, node.name or node.output[0])


def _convs(path) -> int:
    return sum(1 for kind, n, _ in path if kind == "op" and n.op_type == "Conv")
