"""ResNeSt's resolution: the split attention that replaces a bottleneck's 3x3 conv + BN + ReLU
(``block.spatial: {type: split_attention}``) and the 3x3 average pool that takes a strided block's
stride (``block.avd``), as timm's ResNestBottleneck builds them. Called by :mod:`resnet_spec.resolve`."""

from __future__ import annotations

from . import ir
from .ir_resnest import split_attention_channels

_WHERE = ("block", "spatial")


def split_attention(r, name, shape, width, geometry, groups, spath) -> ir.SplitAttention:
    """timm's ``SplitAttn(width, width, 3, stride, pad, dil, groups=groups, radix, norm_layer=BN)`` at
    ``<block>.conv2`` (``geometry``: (stride, pad, dil)); its attention width by
    :func:`split_attention_channels` from the spec's keys."""
    sp, (c, h, w), (stride, pad, dil) = r.blk.spatial, shape, geometry
    radix = sp["radix"]
    attn = split_attention_channels(width, radix, sp["ratio"], sp["divisor"], sp["min_channels"])
    if c % (groups * radix) or width % groups or attn % groups:
        raise r.err(f"split attention {name}: {c} input channels must divide into groups * radix = "
                    f"{groups * radix} and its width {width} and attention width {attn} into groups = {groups}",
                    (*_WHERE, "radix"))
    oh, ow = ir.conv_out(h, 3, stride, pad, dil), ir.conv_out(w, 3, stride, pad, dil)
    if oh < 1 or ow < 1:
        raise r.err(f"the feature map shrinks to nothing at {name}: {h}x{w} input gives {oh}x{ow}; use a larger "
                    "input.size", spath)
    return ir.SplitAttention(name, c, width, 3, stride, pad, dil, groups, radix, attn, r.eps, r.momentum, shape,
                             (width, oh, ow), sp["ratio"], sp["divisor"], sp["min_channels"], 0.9)


def avd_pool(r, name, shape, stride, spath) -> ir.Pool:
    """timm's ``AvgPool2d(3, stride, padding=1)``: window 3, padding 1 counted in the divisor
    (count_include_pad, PyTorch's default), floor; named as timm's module (``avd_first``/``avd_last``)."""
    c, h, w = shape
    oh, ow = ir.pool_out(h, 3, stride, 1, False), ir.pool_out(w, 3, stride, 1, False)
    if oh < 1 or ow < 1:
        raise r.err(f"the avd pool of {name} shrinks a {h}x{w} feature map to nothing; use a larger input.size", spath)
    leaf = "avd_first" if r.blk.avd == "before_3x3" else "avd_last"
    return ir.Pool(f"{name}.{leaf}", "avg", 3, stride, 1, False, True, "zero", shape, (c, oh, ow))
