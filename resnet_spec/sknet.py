"""SKNet in the resolver: the ``block.spatial`` type ``selective_kernel`` (timm's ``SelectiveKernel``)
becomes one :class:`resnet_spec.ir.SelectiveKernel` with every number-deciding fact explicit."""

from __future__ import annotations

from . import ir
from .ir_sknet import sk_attn_channels, sk_out_size, sk_paths


def is_selective_kernel(spatial: dict | None) -> bool:
    return spatial is not None and spatial["type"] == "selective_kernel"


def selective_kernel(res, name: str, shape, out_ch: int, stride: int, dilation: int, groups: int, spath):
    """The selective kernel replacing the spatial conv ``name`` (with its BN and ReLU) of a block: timm's
    paths (3x3 with dilation ``dilation * (k - 1) // 2`` under ``keep_3x3``), its padding, the block's
    ``groups`` (timm: ``min(out_channels, groups)``), the input split and the attention's rounded width.
    ``res`` is the resolver (its BN eps/momentum and located errors)."""
    sp = res.blk.spatial
    c, h, w = shape
    paths = len(sp["kernels"])
    kernels, dilations, paddings = sk_paths(sp["kernels"], dilation, sp["keep_3x3"], stride)
    groups = min(out_ch, groups)
    path_in = c // paths if sp["split_input"] else c
    if sp["split_input"] and c % paths:
        raise res.err(f"{name}: a selective kernel splitting its {c} input channels across {paths} paths needs "
                      "them to divide evenly; set split_input: false or change the widths", ("block", "spatial"))
    if path_in % groups or out_ch % groups:
        raise res.err(f"{path_in} input and {out_ch} output channels of each path of {name} are not divisible by "
                      f"groups={groups}", spath)
    sizes = {(sk_out_size(h, k, stride, p, d), sk_out_size(w, k, stride, p, d))
             for k, p, d in zip(kernels, paddings, dilations)}
    oh, ow = sizes.pop()
    if oh < 1 or ow < 1:
        raise res.err(f"the feature map shrinks to nothing at {name}: {h}x{w} input gives {oh}x{ow}; use a larger "
                      "input.size or fewer strided stages", spath)
    attn = sk_attn_channels(out_ch, sp["rd_ratio"], sp["rd_divisor"])
    return ir.SelectiveKernel(name, c, out_ch, kernels, dilations, paddings, stride, groups, sp["split_input"], attn,
                              res.eps, res.momentum, shape, (out_ch, oh, ow), tuple(sp["kernels"]), sp["keep_3x3"],
                              float(sp["rd_ratio"]), sp["rd_divisor"])
