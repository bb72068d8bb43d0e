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


def sub_ops(op: ir.SelectiveKernel) -> tuple:
    """``(paths, attn)``: each path's ``(ir.Conv, ir.BatchNorm)`` and the attention's ``(fc_reduce ir.Conv,
    ir.BatchNorm, fc_select ir.Conv)``, as plain IR ops with the composite's facts and canonical names (for
    the lowerings and weight layouts that reuse the plain ops'). A folded op's convs have a bias; its BNs
    are then None."""
    c, h, w = op.in_shape
    paths = []
    for i, (k, p, d) in enumerate(zip(op.kernels, op.paddings, op.dilations)):
        conv, bn = op.path_names(i)
        paths.append((ir.Conv(conv, op.path_in_channels, op.out_channels, k, op.stride, p, d, op.groups, op.folded,
                              (op.path_in_channels, h, w), op.out_shape),
                      None if op.folded else ir.BatchNorm(bn, op.out_channels, op.eps, op.momentum, op.out_shape,
                                                          op.out_shape)))
    reduce, bn, select = op.attn_names
    a, s = (op.attn_channels, 1, 1), (op.out_channels, 1, 1)
    attn = (ir.Conv(reduce, op.out_channels, op.attn_channels, 1, 1, 0, 1, 1, op.folded, s, a),
            None if op.folded else ir.BatchNorm(bn, op.attn_channels, op.eps, op.momentum, a, a),
            ir.Conv(select, op.attn_channels, op.num_paths * op.out_channels, 1, 1, 0, 1, 1, False, a,
                    (op.num_paths * op.out_channels, 1, 1)))
    return tuple(paths), attn
