"""Import of SKNet (timm's sknet.py: skresnet*, skresnext*): a source whose blocks hold timm's
``SelectiveKernel`` (``layerN.M.conv<i>.paths.<p>.conv``, ``.attn.fc_reduce``...) is read as the plain ResNet
it is built on -- the selective kernel as the spatial conv (its first path's conv and BN over the op's whole
input), the block's other ``conv<i>.conv``/``conv<i>.bn`` as ``conv<i>``/``bn<i>`` -- and every candidate
of that ResNet gets the ``block.spatial`` options the names, shapes and facts leave open: the kernels (each
path's kernel and dilation), the input split, the attention's rd_ratio/rd_divisor. Every candidate is then
checked against the real source layer by layer (``infer.build_spec``)."""

from __future__ import annotations

import re
from dataclasses import replace

from ..ir_sknet import sk_attn_channels
from .source import Source

_SK = re.compile(r"^(layer\d+\.\d+)\.conv([12])\.(paths\.(\d+)\.(conv|bn)|attn\.(fc_reduce|bn|fc_select))$")
_PLAIN = re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.(conv|bn)$")
_TIMM = ((1 / 8, 16), (1 / 16, 8), (1 / 16, 32))  # skresnet18/34; SelectiveKernel's default; skresnext50_32x4d
#: rd_ratio, rd_divisor candidates: timm's sknet models' first, then other ratios 1/2..1/64
_RATIOS = list(_TIMM) + [(1 / r, d) for r in (2, 4, 8, 16, 32, 64) for d in (1, 8, 16, 32) if (1 / r, d) not in _TIMM]


def has_selective_kernel(src: Source) -> bool:
    return any(_SK.match(n) for n in src.layers)


def plain_view(src: Source) -> tuple:
    """``(view, sk)``: a :class:`Source` with the plain ResNet names (for inferring everything but the
    selective kernel), and per block ``{conv, paths: [Layer], split: bool, attn: (C, A)}``."""
    layers, sk, prev_out = {}, {}, None
    for name, layer in src.layers.items():
        m, p = _SK.match(name), _PLAIN.match(name)
        if m:
            blk = sk.setdefault(m.group(1), {"conv": m.group(2), "paths": {}, "attn": {}, "in": prev_out})
            where = blk["paths"].setdefault(int(m.group(4)), {}) if m.group(4) is not None else blk["attn"]
            where[m.group(5) or m.group(6)] = layer
            continue
        if p:
            name = f"{p.group(1)}.{'conv' if p.group(3) == 'conv' else 'bn'}{p.group(2)}"
            layer = replace(layer, name=name)
        layers[name] = layer
        if layer.kind == "conv" and ".downsample." not in name:
            prev_out = layer.shape[0]
    for block, info in sk.items():
        paths = [info["paths"][i] for i in sorted(info["paths"])]
        if not paths or any(set(p) != {"conv", "bn"} for p in paths) or \
                set(info["attn"]) != {"fc_reduce", "bn", "fc_select"}:
            raise src.refuse(f"{block}.conv{info['conv']}", "a selective kernel without each path's conv and BN "
                             "and its attention's fc_reduce, bn and fc_select")
        first, n, in_ch = paths[0]["conv"], len(paths), info["in"]
        info["split"] = in_ch is not None and first.shape[1] * n == in_ch != first.shape[1]
        conv, bn = f"{block}.conv{info['conv']}", f"{block}.bn{info['conv']}"
        shape = (first.shape[0], in_ch if info["split"] else first.shape[1], *first.shape[2:])
        layers[conv] = replace(first, name=conv, shape=shape, padding=None, dilation=None)
        layers[bn] = replace(paths[0]["bn"], name=bn)
        info["paths"] = [p["conv"] for p in paths]
        info["attn"] = (info["attn"]["fc_reduce"].shape[1], info["attn"]["fc_reduce"].shape[0])
    return replace(src, layers=layers), sk


def spatial_options(sk: dict, src: Source) -> list:
    """The block.spatial values the selective kernels' names, shapes and facts leave open, most likely
    first: every (kernels, split, rd_ratio/rd_divisor) that all blocks agree with."""
    paths = next(iter(sk.values()))["paths"]
    if any(len(b["paths"]) != len(paths) for b in sk.values()) or len({b["split"] for b in sk.values()}) > 1:
        raise src.refuse("selective kernels", "blocks with different numbers of paths or input splits")
    kernels = [_given_kernel(p, i) for i, p in enumerate(paths)]
    split = next(iter(sk.values()))["split"]
    ratios = [(r, d) for r, d in _RATIOS if all(sk_attn_channels(c, r, d) == a for c, a in
                                                 (b["attn"] for b in sk.values()))]
    if not ratios:
        raise src.refuse("selective kernels", "an attention width that no rd_ratio 1/2..1/64 with rd_divisor 1, "
                         "8, 16 or 32 gives")
    out = []
    for r, d in ratios:
        opt = {"type": "selective_kernel"}
        if kernels != [3, 5]:
            opt["kernels"] = kernels
        if any(p.shape[2] != 3 for p in paths):
            opt["keep_3x3"] = False
        if not split:
            opt["split_input"] = False
        if (r, d) != (1 / 16, 8):
            opt.update(rd_ratio=r, rd_divisor=d)
        out.append(opt)
    return out


def _given_kernel(path, i: int) -> int:
    """A path's kernel as timm's ``kernel_size`` gives it: a 3x3 path of dilation d is a (2d + 1) kernel kept
    3x3; without the dilation (a state dict) timm's default 3, 5, 7, ... by position."""
    if path.shape[2] != 3:
        return path.shape[2]
    return 2 * path.dilation + 1 if path.dilation else 3 + 2 * i


def candidates(plain_candidates, src: Source, name: str, input_size) -> list:
    """The candidates of ``src`` (a source with selective kernels): ``plain_candidates`` (infer's) of its
    plain view, each with every block.spatial option."""
    view, sk = plain_view(src)
    options = spatial_options(sk, src)
    return [{**c, "block": {**c["block"], "spatial": opt}} for c in plain_candidates(view, name, input_size)
            for opt in options]
