"""Recognised structure -> a spec: infer the architecture from canonical layer names and shapes.

Depth (blocks per stage), block type, pre-activation, groups and width, stem type, downsample type,
squeeze-excite, a ResNet-RS stem pool (``maxpool.0``) and classes come from the names and shapes; strides,
paddings, pools (the stem pool's type, anti-aliasing pools) and BN epsilon from the source's facts where it
states them (ONNX, Keras, a library's modules) and from torchvision's conventions where it cannot (a state
dict, which holds no trace of an average pool). Every candidate spec is resolved and checked against the source layer by layer
(:func:`source.first_difference`); the first one that matches is kept, written as ``extends`` of a zoo
entry when one resolves to the same network.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

from .. import ir, yamlio
from ..errors import ResNetSpecError
from ..ir import se_reduced
from ..resolve import load_network
from . import infer_resnest as resnest
from . import infer_sknet, infer_widths
from .source import Source, first_difference

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_TOP = ("conv1", "bn1", "fc", "bn_final")
#: canonical layer name pattern -> the kinds of layer it may be (a 4-D weight is a conv, 2-D a linear layer)
_KINDS = ((re.compile(r"^(conv1(\.[036])?|maxpool\.0|layer\d+\.\d+\.(conv\d|se\.fc\d|convs\.\d+))$"), ("conv",)),
          (re.compile(r"^layer\d+\.\d+\.se\.conv$"), ("conv1d",)),
          (re.compile(r"^(bn1|bn_final|conv1\.[14]|maxpool\.1|layer\d+\.\d+\.(bn\d|bns\.\d+))$"), ("bn", "gn")),
          (re.compile(r"^layer\d+\.\d+\.downsample\.\d$"), ("conv", "bn", "gn")),
          (re.compile(r"^fc$"), ("linear",)))


def _check_kind(src: Source, name: str, layer) -> None:
    """Refuse a layer whose weight has the wrong number of dimensions for its name, or an empty one."""
    kinds = next((k for pattern, k in _KINDS if pattern.match(name)), None)
    if kinds is not None and layer.kind not in kinds:
        raise src.refuse(repr(layer.origin), f"a {layer.kind} weight of shape {tuple(layer.shape)} where a "
                         f"ResNet has a {kinds[0]} layer")
    if 0 in layer.shape or (layer.kind == "conv" and layer.shape[2] != layer.shape[3]):
        raise src.refuse(repr(layer.origin), f"weight shape {tuple(layer.shape)} is empty or not square")


def _blocks(src: Source) -> list:
    """[[{leaf: Layer}] per block] per stage, refusing names outside torchvision/timm ResNets."""
    stages: dict = {}
    for name, layer in src.layers.items():
        _check_kind(src, name, layer)
        m = _BLOCK.match(name)
        if m:
            s, b, leaf = int(m.group(1)), int(m.group(2)), m.group(3)
            stages.setdefault(s, {}).setdefault(b, {})[leaf] = layer
        elif not (name in _TOP or re.match(r"^(conv1\.\d+|maxpool\.[01])$", name)):
            raise src.refuse(repr(layer.origin), "does not fit a ResNet (expected torchvision/timm names: "
                             "conv1, bn1, layer<stage>.<block>.*, fc)")
    if not stages:
        raise src.refuse("structure", "no residual blocks (no layer<stage>.<block> tensors): not a ResNet")
    out = []
    for i, s in enumerate(sorted(stages)):
        if s != i + 1 or sorted(stages[s]) != list(range(len(stages[s]))):
            raise src.refuse(f"stage layer{s}", "stages or blocks are not numbered 1.. and 0.. without gaps")
        out.append([stages[s][b] for b in range(len(stages[s]))])
    return out


def _need(src, block_name, blk, leaf):
    if leaf not in blk:
        raise src.refuse(block_name, f"has no {leaf} layer; not a torchvision/timm residual block")
    return blk[leaf]


def _stem(src: Source, preact: bool) -> dict:
    L, f = src.layers, src.facts
    if "conv1" in L:
        c = L["conv1"]
        st = {"type": "conv", "channels": c.shape[0], "kernel": c.shape[2]}
        default_stride = 2 if c.shape[2] >= 5 else 1
    elif "conv1.0" in L:
        convs = [L[n] for n in ("conv1.0", "conv1.3", "conv1.6") if n in L]
        c = convs[0]
        st = {"type": "deep", "channels": [x.shape[0] for x in convs], "kernel": c.shape[2]}
        default_stride = 2
    else:
        raise src.refuse("stem", "no stem convolution (conv1 or conv1.0)")
    st["stride"] = c.stride if c.stride is not None else default_stride
    if c.padding is not None and c.padding != c.shape[2] // 2:
        st["padding"] = c.padding
    norm = "bn1" in L
    if norm != (not preact):
        st["norm"] = norm
    if "stem_pool" in f:
        st["pool"] = f["stem_pool"]
    elif "maxpool.0" in L:  # ResNet-RS's strided conv in place of the max-pool (a state dict: 3x3/2 assumed)
        k = L["maxpool.0"].shape[2]
        st["pool"] = {"type": "conv", "kernel": k, "stride": 2, "padding": k // 2}
    elif st["stride"] == 1:
        st["pool"] = None  # CIFAR-style stem: no pooling (torchvision's convention pools after a /2 stem)
    return st


def _stage(src, si, blocks, bottleneck, preact, facts_stride, per_block=False):
    first = blocks[0]
    name = f"layer{si + 1}.0"
    if bottleneck:
        out_ch = _need(src, name, first, "conv3").shape[0]
        if out_ch % 4 and not per_block:  # per-block widths: infer_widths.apply sets the stage's channels
            raise src.refuse(f"{name}.conv3", f"{out_ch} output channels are not 4 x the block's channels")
        planes = out_ch // 4
        if "conv2.conv" in first:  # ResNeSt's split attention
            width, groups = resnest.stage_width(src, name, first)
        else:
            c2 = first.get("convs.0") or _need(src, name, first, "conv2")  # Res2Net: a split's conv
            c_in = c2.shape[0] if "convs.0" in first else _need(src, name, first, "conv1").shape[0]  # reduce_first
            if c_in % c2.shape[1]:
                raise src.refuse(f"{name}.conv2", f"weight shape {tuple(c2.shape)}: its input channels are not a "
                                 "multiple of its input channels per group")
            width, groups = c2.shape[0], c_in // c2.shape[1]
    else:
        planes, width, groups = _need(src, name, first, "conv2").shape[0], None, 1
    stage = {"blocks": len(blocks), "channels": planes}
    stride, where, at = 1, None, None
    for bi, blk in enumerate(blocks):
        for leaf in ("conv1", "conv2", "conv2.conv", "convs.0", "downsample.0", "downsample.1"):
            layer = blk.get(leaf)
            if layer is not None and layer.kind == "conv" and (layer.stride or 1) > 1:
                stride, at = layer.stride, bi
                if leaf in ("conv1", "conv2", "conv2.conv", "convs.0"):
                    where = ("1x1" if leaf == "conv1" else "3x3") if bottleneck else None
    pooled = src.facts.get("shortcut_pool_strides", {}).get(si)
    if pooled and stride == 1:
        stride = pooled
    if not facts_stride:
        stride = 1 if si == 0 else 2  # torchvision's stage strides: a state dict cannot say
    stage["stride"] = stride
    return stage, width, groups, where, at


def candidates(src: Source, name: str, input_size) -> list:
    """Candidate spec dicts for ``src``, most likely first."""
    if infer_sknet.has_selective_kernel(src):  # SKNet: the plain ResNet's candidates with each block.spatial
        return infer_sknet.candidates(candidates, src, name, input_size)
    stages = _blocks(src)
    L = src.layers
    kinds = infer_widths.stage_kinds(src, stages)  # per stage: bottleneck blocks (conv3) or basic ones
    bottleneck = kinds[0]
    first = stages[0][0]
    bn1 = first.get("bn1")
    conv1 = _need(src, "layer1.0", first, "conv1")
    preact = "bn_final" in L or (bn1 is not None and bn1.shape[0] != conv1.shape[0])
    facts_stride = any(layer.stride is not None for layer in L.values())
    stem = _stem(src, preact)
    in_ch = (L.get("conv1") or L.get("conv1.0")).shape[1]
    size = input_size or src.facts.get("input_size") or (224 if stem["stride"] > 1 else 32)
    layout = src.facts.get("layout")  # the input layout the file takes (the spec itself has none)
    d = {"name": name, "description": f"imported from {src.label}" + (f", {layout.upper()} input" if layout else ""),
         "input": {"channels": in_ch, "size": size if isinstance(size, int) else list(size)}}
    eps = src.facts.get("eps", 1e-5)
    momentum = src.facts.get("momentum", 0.1)
    groups = src.facts.get("norm_groups")  # GroupNorm (a model's reader found every norm one)
    d["norm"] = {"eps": eps, "momentum": momentum} if groups is None else {"type": "group", "groups": groups,
                                                                            "eps": eps}
    if src.facts.get("norm_act"):  # FRN or EvoNorm-S0 (backends/torch/frn_reader.py)
        d["norm"] = dict(src.facts["norm_act"])
    if src.facts.get("standardize_eps") is not None:  # weight-standardized convs (timm StdConv2d)
        d["conv"] = {"standardize": True, "eps": src.facts["standardize_eps"]}
    d["stem"] = stem
    block = {"type": "bottleneck" if bottleneck else "basic"}
    if preact:
        block["preact"] = True
    if src.facts.get("anti_alias"):
        block["anti_alias"] = src.facts["anti_alias"]
    resnest.block_keys(src, stages, block)
    if bottleneck and "convs.0" in first:
        block["spatial"] = {"type": "res2net", "scale": _res2net_scale(src, stages)}
    d["block"] = block
    fc = L.get("fc")
    if fc is None:
        raise src.refuse("head", "no classifier (fc)")
    d["head"] = {"classes": fc.shape[0]}
    if not fc.bias:
        d["head"]["bias"] = False
    if ("bn_final" in L) != preact:
        d["head"]["norm"] = "bn_final" in L
    se = next((b for s in stages for b in s if "se.fc1" in b), None)
    regnet = list(_regnet_variants(src, d, stages, se)) \
        if _regnet_like(src, stages, all(kinds), preact) and not _eca_kernels(stages) else []
    try:
        resnet = _resnet_variants(src, d, stages, se, (kinds, preact, facts_stride))
    except ResNetSpecError:
        if not regnet:
            raise
        resnet = []
    return regnet + resnet if src.facts.get("regnet") else resnet + regnet


def _resnet_variants(src, d, stages, se, kinds) -> list:
    """The candidates of a torchvision/timm ResNet's conventions (expansion 4, one stride place)."""
    kinds, preact, facts_stride = kinds
    d = {**d, "block": dict(d["block"])}
    block = d["block"]
    d["stages"], widths, wheres, ats = [], [], set(), set()
    per_block = None if _regnet_like(src, stages, all(kinds), preact) else infer_widths.irregular(stages, kinds)
    for si, blocks in enumerate(stages):
        st, width, groups, where, at = _stage(src, si, blocks, kinds[si], preact, facts_stride, per_block is not None)
        if kinds[si] != kinds[0]:  # timm's per-stage block list (test_resnet): the stage's own type
            st["block"] = {"type": "bottleneck" if kinds[si] else "basic"}
        d["stages"].append(st)
        widths.append((width, groups, st["channels"]))
        if where:
            wheres.add(where)
        if at is not None and st["blocks"] > 1:
            ats.add("first" if at == 0 else "last" if at == st["blocks"] - 1 else "middle")
    if len(wheres) > 1 or "middle" in ats or len(ats) > 1:
        raise src.refuse("strides", "the stride sits on different convs or blocks in different stages; "
                         "a spec has one block.stride_on and one block.stride_block")
    if wheres:
        block["stride_on"] = wheres.pop()
    if ats == {"last"}:
        block["stride_block"] = "last"
    if any(kinds):  # the bottleneck stages' widths and groups
        infer_widths.group_widths(d, [w for w, k in zip(widths, kinds) if k],
                                  [st for st, k in zip(d["stages"], kinds) if k])
    infer_widths.apply(d, stages, kinds, per_block)
    return list(_variants(d, src, stages, None if se is None else se["se.fc1"], preact))


def _res2net_scale(src, stages) -> int:
    """Res2Net's scale: the split convs ``convs.N`` of every block, plus the split passed on or pooled."""
    scales = {sum(1 for leaf in b if re.fullmatch(r"convs\.\d+", leaf)) + 1 for s in stages for b in s}
    if len(scales) != 1:
        raise src.refuse("structure", f"Res2Net blocks of different scales {sorted(scales)}; a spec has one "
                         "block.spatial scale")
    return scales.pop()


def _regnet_like(src, stages, bottleneck: bool, preact: bool) -> bool:
    """Whether RegNet candidates are tried: a RegNet layout (timm's or torchvision's names), or
    post-activation bottlenecks of expansion 1 in every stage. A ResNet the ResNet conventions refuse
    (expansion 4) keeps its own refusal instead of meeting a RegNet guess."""
    if not bottleneck or preact:
        return False
    if src.facts.get("regnet"):
        return True
    firsts = [blocks[0] for blocks in stages]
    return all("conv2" in b and "conv3" in b and b["conv2"].shape[0] == b["conv3"].shape[0] for b in firsts)


def _eca_kernels(stages) -> set:
    """The kernel sizes of every block's ECA conv (``se.conv``, a (1, 1, k) weight); empty: no ECA."""
    return {b["se.conv"].shape[2] for s in stages for b in s if "se.conv" in b}


def _se_options(se, stages) -> list:
    """The block.se values names and shapes leave open: none; ECA by timm's adaptive rule, or its one
    kernel given explicitly; SE at timm's ratios (1/16, ResNet-RS's 1/4) or any reduction with divisor 1."""
    eca = _eca_kernels(stages)
    if eca:
        return [{"type": "eca"}] + ([{"type": "eca", "kernel": eca.pop()}] if len(eca) == 1 else [])
    if se is None:
        return [None]
    ch, red = se.shape[1], se.shape[0]
    return [{"reduction": 16, "divisor": 8}] + [{"reduction": 4, "divisor": 8}] * (  # ResNet-RS: rd_ratio 1/4
        se_reduced(ch, 4, 8) == red) + [{"reduction": r, "divisor": 1} for r in range(1, 65)
                                         if se_reduced(ch, r, 1) == red]


def _regnet_variants(src, d, stages, se_block):
    """RegNet's candidates: bottlenecks of expansion 1, each stage's 3x3 conv grouped by a group width, a
    3x3/2 stem without pool (a state dict cannot say: RegNet's), every stage strided (2 unless the source
    says), squeeze-excite after the 3x3 conv reduced from the block's input (timm/torchvision RegNetY)."""
    L, stem = src.layers, dict(d["stem"])
    if L["conv1"].stride is None if "conv1" in L else True:
        stem.update(stride=2, pool=None)
    if "stem_pool" not in src.facts and "maxpool.0" not in L:
        stem["pool"] = None
    out = []
    for si, blocks in enumerate(stages):
        name, first = f"layer{si + 1}.0", blocks[0]
        c2, c3 = _need(src, name, first, "conv2"), _need(src, name, first, "conv3")
        width, groups = c2.shape[0], c2.shape[0] // c2.shape[1]
        strides = [x.stride for x in (first.get("conv2"), first.get("downsample.0")) if x is not None and x.stride]
        st = {"blocks": len(blocks), "channels": c3.shape[0], "stride": max(strides, default=2),
              "group_width": width // groups}
        if width != c3.shape[0]:
            st["width"] = width
        out.append(st)
    base = {**d, "stem": stem, "block": {"type": "bottleneck", "expansion": 1}, "stages": out}
    for se in _regnet_se(src, se_block):
        v = {**base, "block": dict(base["block"]), "shortcut": {"type": "B"}}
        if se is not None:
            v["block"]["se"] = se
        yield v


def _regnet_se(src, blk):
    """RegNet's squeeze-excite options for the first block ``blk`` that has one (None: no SE): reduced
    from the block's input channels (RegNetY's se_ratio, Python's round) after the 3x3 conv, or as a
    ResNet's SE at the end; the source's own placement first when it states it."""
    if blk is None:
        return [None]
    red, in_ch, out_ch = blk["se.fc1"].shape[0], blk["conv1"].shape[1], blk["conv3"].shape[0]
    opts = [{"reduction": r, "divisor": None, "reduce_from": frm, "placement": "after_3x3"}
            for frm, ch in (("input", in_ch), ("output", out_ch)) for r in range(1, 65) if se_reduced(ch, r, None) == red]
    ends = [{**o, "placement": "end"} for o in opts]
    return ends + opts if src.facts.get("se_placement") == "end" else opts + ends


def _variants(d, src, stages, se, preact):
    """The spec ``d`` with every combination of the knobs names and shapes leave open."""
    blocks = [b for s in stages for b in s]
    ds = [b for b in blocks if "downsample.0" in b or "downsample.1" in b]
    avg_down = any("downsample.1" in b and b["downsample.1"].kind == "conv" for b in ds)
    sc = {"type": "B", **infer_widths.shortcut_keys(ds)}
    if avg_down:
        sc["projection"] = "avgpool_conv"
        if "shortcut_pool" in src.facts:
            sc["pool"] = src.facts["shortcut_pool"]
    sc_norm = any(("downsample.2" if avg_down else "downsample.1") in b for b in ds)
    if sc_norm != (not preact):
        sc["norm"] = sc_norm
    types = ["C"] if ds and len(ds) == len(blocks) else ["B", "A"] if not ds else ["B"]
    zero_pad = src.facts.get("zero_pad")  # an option-A shortcut's channel padding (ONNX)
    option_a = {"type": "A", **({"zero_pad": zero_pad} if zero_pad not in (None, "split") else {})}
    if zero_pad:
        types = ["A"]
    se_opts = _se_options(se, stages)
    strided = [False, True] if src.facts.get("strided_identity") is None else [src.facts["strided_identity"]]
    for t, s, bias, stem_bias, si in itertools.product(types, se_opts, (False, "auto", True),
                                                       (None, True, False), strided):
        v = {**d, "conv_bias": bias, "stem": dict(d["stem"]), "block": dict(d["block"])}
        if stem_bias is not None:
            v["stem"]["bias"] = stem_bias
        if s is not None:  # timm's legacy SEResNetBlock: its reader says
            v["block"]["se"] = {**s, "placement": "end_relu"} if src.facts.get("se_placement") == "end_relu" else s
        v["shortcut"] = {**sc, "type": t} if t != "A" else dict(option_a)
        if si and t != "A":
            v["shortcut"]["strided_identity"] = True
        if not bias:
            del v["conv_bias"]
        yield v


def build_spec(src: Source, name: str, input_size=None) -> tuple:
    """(spec YAML text, resolved network, full spec dict) for ``src``; refuses naming the first layer
    that does not fit."""
    best = None
    try:
        cands = candidates(src, name, input_size)
    except ResNetSpecError:
        raise
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        # names and shapes no check above foresaw: one line naming the source, never a traceback
        raise src.refuse("structure", f"its layer names and shapes do not fit a ResNet ({type(exc).__name__}: "
                         f"{exc})") from None
    for cand in cands:
        text = yamlio.dump(_order(cand))
        try:
            net = load_network(text)
        except ResNetSpecError as exc:
            best = best or f"no spec expresses it ({exc})"
            continue
        diff = first_difference(net, src)
        if diff is None:
            return _shorten(text, net, cand, src.label), net, _order(cand)
        if best is None or best.startswith("no spec"):
            best = f"first layer that does not fit: {diff}"
    raise src.refuse("structure", best or "no candidate spec")


_ORDER = ("extends", "name", "description", "input", "conv_bias", "conv", "norm", "stem", "block", "shortcut",
          "stages", "head")


def _order(d: dict) -> dict:
    return {k: d[k] for k in _ORDER if k in d}


@lru_cache(maxsize=None)
def _zoo_net(zoo: str):
    return load_network(zoo)


def _key(net: ir.Network):
    """What decides a network's outputs: ops and block wiring (BN momentum only matters in training)."""
    import dataclasses

    ops = [dataclasses.replace(op, momentum=0.0) if isinstance(op, ir.BatchNorm) else op for op in net.all_ops()]
    wiring = [(b.name, b.shortcut_from, len(b.pre), len(b.main), len(b.shortcut), len(b.post)) for b in net.blocks]
    return net.input_shape, ops, wiring


def _same(a: ir.Network, b: ir.Network) -> bool:
    return _key(a) == _key(b)


@lru_cache(maxsize=None)
def _zoo_reference(zoo: str) -> str:
    from ..spec import load as load_spec

    ref = load_spec(zoo).data.get("reference") or {}
    return f"{ref.get('library')}:{ref.get('model')}"


def _shorten(text: str, net: ir.Network, full: dict, label: str = "") -> str:
    """``extends: <zoo entry>`` plus what differs, when a zoo entry resolves to the same network; the
    entry whose reference is the source (``timm:regnety_032``) first, where two entries are one network
    (timm's regnety_032 and torchvision's regnet_y_3_2gf)."""
    from ..spec import zoo_names

    for zoo in sorted(zoo_names(), key=lambda z: _zoo_reference(z) != label.strip("'\"")):
        base = _zoo_net(zoo)
        if len(base.blocks) != len(net.blocks) or base.params > 4 * net.params + 10**6:
            continue
        short = {"extends": zoo, "name": full["name"], "description": full["description"]}
        if base.input_shape != net.input_shape:
            short["input"] = full["input"]
        if base.num_classes != net.num_classes:
            short["head"] = {"classes": net.num_classes}
        cand = yamlio.dump(short)
        try:
            if _same(load_network(cand), net):
                return f"# {full['description']}: the zoo's {zoo} architecture.\n" + cand
        except ResNetSpecError:
            continue
    return f"# {full['description']}: architecture inferred by resnet-spec import.\n" + text
