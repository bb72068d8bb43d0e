"""Res2Net's split convs (``ir.Res2Net``) in PyTorch: :func:`res2net_splits` computes them from the block's
``convs``/``bns``/``pool`` modules, which sit on the block itself at timm's names (``layer1.0.convs.0``);
:class:`Res2NetSplits` is the unregistered callable the backend's walk runs. The ``.py`` source copies
:func:`res2net_splits` (``backends/torch/source.py``), so both compute the same numbers.
"""

from __future__ import annotations

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None


def res2net_splits(x, convs, bns, pool, width: int, cascade: bool, relu):
    """Split ``x`` into groups of ``width`` channels; group i < len(convs) -> relu(bns[i](convs[i](.)))
    of itself (plus the previous output when ``cascade``), the last group passed through or ``pool``-ed;
    concatenated in order. ``relu`` is the block's ReLU module (one per block, as timm's)."""
    splits = [x[:, i:i + width] for i in range(0, len(convs) * width + 1, width)]  # slices (torch.export: aten.slice)
    outs = []
    for i, (conv, bn) in enumerate(zip(convs, bns)):
        sp = splits[i] if i == 0 or not cascade else outs[-1] + splits[i]
        outs.append(relu(bn(conv(sp))))
    outs.append(splits[-1] if pool is None else pool(splits[-1]))
    return torch.cat(outs, 1)


def modules(op) -> dict:
    """The block's modules for ``op`` at timm's attribute names: ``convs``, ``bns`` and (pooling) ``pool``."""
    convs = nn.ModuleList(nn.Conv2d(op.width, op.width, op.kernel, op.stride, op.padding, op.dilation, op.groups,
                                    bias=False) for _ in range(op.convs))
    bns = nn.ModuleList(nn.BatchNorm2d(op.width, eps=op.eps, momentum=op.momentum) for _ in range(op.convs))
    out = {"convs": convs, "bns": bns}
    if op.last == "pool":
        out["pool"] = nn.AvgPool2d(op.pool_kernel, op.pool_stride, op.pool_padding,
                                   count_include_pad=op.pool_count_include_pad)
    return out


class Res2NetSplits:
    """Runs one block's split convs (its modules registered on the block by the builder, not here, so the
    state_dict names are timm's) with the block's ReLU module ``relu`` (``parity --train`` hooks ReLU modules)."""

    def __init__(self, op, mods: dict, relu):
        self.mods, self.width, self.cascade, self.relu = mods, op.width, op.cascade, relu

    def __call__(self, x):
        m = self.mods
        return res2net_splits(x, m["convs"], m["bns"], m.get("pool"), self.width, self.cascade, self.relu)
