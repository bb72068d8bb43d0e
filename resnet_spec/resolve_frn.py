"""The resolution of the norm-act types ``norm.type: frn`` and ``evonorm_s0`` (resnet_spec/ir_frn.py): the
resolver makes each norm an op with its non-linearity (``act`` True), then :func:`fold_acts` folds the ReLU
that follows such a norm into it (timm's norm-act layers hold the activation: FilterResponseNormTlu2d's TLU,
EvoNorm2dS0's x * sigmoid(v x)) and turns a norm that no ReLU follows into the op without it (timm's
``apply_act=False``: a v1 block's last norm and its projection's). Called by :mod:`resnet_spec.resolve`."""

from __future__ import annotations

import dataclasses

from . import ir

NORM_ACTS = (ir.FRN, ir.EvoNormS0)


def norm_act(kind: str, name: str, shape, eps: float, groups: int):
    """The op of ``norm.type`` ``kind`` ('frn' or 'evonorm_s0') over ``shape``, with its activation."""
    if kind == "frn":
        return ir.FRN(name, shape[0], eps, True, shape, shape)
    return ir.EvoNormS0(name, shape[0], groups, eps, True, shape, shape)


def _fold(ops: tuple) -> tuple:
    out = []
    for i, op in enumerate(ops):
        if isinstance(op, ir.ReLU) and out and isinstance(out[-1], NORM_ACTS) and out[-1].act:
            continue  # folded into the norm before it
        if isinstance(op, NORM_ACTS):
            followed = i + 1 < len(ops) and isinstance(ops[i + 1], ir.ReLU)
            op = dataclasses.replace(op, act=followed)
        out.append(op)
    return tuple(out)


def fold_acts(net: ir.Network) -> ir.Network:
    """``net`` with every ReLU right after an FRN/EvoNorm-S0 folded into it, and the others made act-free."""
    if not any(isinstance(op, NORM_ACTS) for op in net.all_ops()):
        return net
    blocks = tuple(dataclasses.replace(b, pre=_fold(b.pre), main=_fold(b.main), shortcut=_fold(b.shortcut),
                                       post=_fold(b.post)) for b in net.blocks)
    return dataclasses.replace(net, stem=_fold(net.stem), blocks=blocks, head=_fold(net.head))
