"""Residual blocks and their shortcuts in an ONNX graph (:mod:`.reader`): stage boundaries, the branch's
layers, the shortcut's projection, ResNet-D average pool, strided identity or option-A zero channels."""

from __future__ import annotations

import re

from .patterns import attrs as _attrs, channel_pad, pool_facts, shortcut_reshapes, slice_steps
from .read_layers import convs as _convs, NORM_KINDS
from .patterns_stock import ChannelPadFacts
from .read_res2net import Res2NetFacts
from .read_resnest import SplitAttentionFacts
from .read_sknet import SelectiveKernelFacts

SPATIAL = ("res2net", "sk", "sa")  # the walk's kinds of composite ops in place of a bottleneck's conv2 + bn2


class BlockReader:
    """Mixin of the graph walker: names each block's layers, gathers the shortcut facts."""

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
            convs, bns, slot = self._branch_names(add, name, main)
            self.sequence(pre, [], bns[:1], v1=False)
            if pre and not any(n.op_type == "BatchNormalization" or k in NORM_KINDS for k, n, _ in pre) \
                    and self.src.layers[self._stem_conv].bias:
                self.identity_bn(bns[0], self._stem_conv)  # the first pre-activation BN, folded into the stem
            main_bns = bns[1:] if pre else bns
            self._se_after_relu(add, main)
            mark = len(self.src.layers)
            for n, ins, pad in self.sequence(main, convs, main_bns, v1=post):
                if isinstance(ins, Res2NetFacts):
                    self.res2net(name, main, n, ins, short)
                elif isinstance(ins, SelectiveKernelFacts):
                    self.selective_kernel(name, main, n, ins, slot)
                elif isinstance(ins, SplitAttentionFacts):
                    self.split_attention(name, main, n, ins, slot)
                elif n.op_type == "AveragePool" and any(k == "sa" for k, _, _ in main):
                    self.avd(main, n, ins, pad)
                elif n.op_type == "AveragePool" or isinstance(ins, dict):  # a dict: a blur pool's facts
                    self.anti_alias(main, n, ins, pad, len(convs) + bool(slot))
                elif n.op_type != "Relu":
                    raise self.g.refuse(n, "not expected in a residual branch (conv, BN, ReLU, channel attention, "
                                           "anti-aliasing pool)")
            if slot:
                self._in_network_order(mark, name, slot)
            self._shortcut_ops(self._shortcut(name, short, post), stage)
        self._shortcut_facts()

    def _se_after_relu(self, add, main):
        """timm's legacy SEResNetBlock ends its branch with BN, ReLU, squeeze-excite (placement ``end_relu``);
        every other block gates the BN's output. One placement for the whole network, or one line."""
        if not main or main[-1][0] != "se":
            return
        after_relu = len(main) > 1 and main[-2][0] == "op" and main[-2][1].op_type == "Relu"
        seen = self.src.facts.setdefault("se_after_relu", after_relu)
        if seen != after_relu:
            raise self.g.refuse(add, "squeeze-excite after a ReLU in some blocks and straight after the BN in "
                                     "others; a spec has one placement")
        if after_relu:
            self.src.facts["se_placement"] = "end_relu"

    def _in_network_order(self, mark: int, name: str, slot: int):
        """The branch's layers (those from index ``mark`` on) in network order: the composite op's, named
        after the walk of the branch, moved to its slot (conv<slot>.*, convs.*, bns.*)."""
        keys = list(self.src.layers)

        def place(key):
            leaf = key[len(name) + 1:]
            m = re.match(r"(?:conv|bn)(\d+)(?:\.|$)", leaf)
            return int(m.group(1)) if m else slot if leaf.startswith(("convs.", "bns.")) else 99

        order = keys[:mark] + sorted(keys[mark:], key=place)
        self.src.layers = {k: self.src.layers[k] for k in order}

    def _branch_names(self, add, name, main):
        """``(conv names, BN names, slot)`` of a residual branch: conv1.. and bn1..; a composite op in place
        of the spatial conv (Res2Net's, a bottleneck's second; a selective kernel, a block's first Conv-free
        slot) takes slot ``slot`` (0: none), and in SKNet the other convs are timm's ConvNormAct
        (``conv<i>.conv``, ``conv<i>.bn``)."""
        at = [k for k, (kind, _, _) in enumerate(main) if kind in SPATIAL]
        slot = 1 + _convs(main[:at[0]]) if at else 0
        nconv = _convs(main) + len(at)
        if nconv not in (2, 3) or len(at) > 1 or (at and main[at[0]][0] in ("res2net", "sa") and (nconv, slot) != (3, 2)):
            raise self.g.refuse(add, f"the residual branch has {nconv} convolutions; ResNet blocks have 2 or 3")
        sk = at and main[at[0]][0] == "sk"
        convs = [f"{name}.conv{i}.conv" if sk else f"{name}.conv{i}" for i in range(1, nconv + 1) if i != slot]
        bns = [f"{name}.conv{i}.bn" if sk else f"{name}.bn{i}" for i in range(1, nconv + 1) if i != slot]
        return convs, bns, slot

    def _starts_stage(self, short, type_c: bool) -> bool:
        """A block opens a stage where its shortcut projects (type B; type C: and changes the shape) or
        pads channels (option A). A strided identity alone does not (Keras ResNetV2 strides a stage's
        last block)."""
        if any(isinstance(ins, ChannelPadFacts) or (n.op_type == "Pad" and channel_pad(self.g, n, ins))
               for _, n, ins in short):
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
            elif n.op_type == "Pad" or isinstance(ins, ChannelPadFacts):
                before, after = ins if isinstance(ins, ChannelPadFacts) else channel_pad(self.g, n, ins)
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
                                  f"with identity statistics (weight 1, mean 0, var + eps = 1) "
                                  "holding the folded bias; the numbers are exact")

    def _shortcut(self, name, short, v1):
        pos = 1 if self._avg_down else 0
        return self.sequence(short, [f"{name}.downsample.{pos}"], [f"{name}.downsample.{pos + 1}"], v1=v1)
