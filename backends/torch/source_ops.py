"""How each IR op becomes a module constructor in the standalone ``.py`` (:data:`OPS`), and the helper
modules that file copies from this folder's source (:func:`helpers`), so both compute the same numbers.
Used by :mod:`.source`, which emits the file."""

from __future__ import annotations

import ast
import os
import re
import textwrap
from dataclasses import dataclass

from ... import ir
from .. import common
from .blur import blur_pool_args
from .resnest import split_attention_args

#: The helper modules an emitted file may need, copied from backends/torch/backend.py's source.
HELPER_CLASSES = ("Subsample", "ChannelPad", "PaddedMaxPool", "SqueezeExcite", "ECA", "DropPath", "GlobalAvgPool",
                  "SplitAttention", "res2net_splits", "ConvNorm", "SelectiveKernel", "StdConv2d", "BlurPool2d",
                  "FilterResponseNorm2d", "EvoNormS0")
#: The helper classes a helper class uses, copied with it; the modules of backends/torch/ whose classes and
#: functions the .py copies.
HELPER_NEEDS = {"SelectiveKernel": ("SelectiveKernelPath", "SelectiveKernelAttn")}
_HELPER_FILES = ("backend.py", "resnest.py", "res2net.py", "sknet.py", "norm.py", "blur.py", "frn.py")
def _conv(op: ir.Conv, lw) -> str:
    args = [str(op.in_channels), str(op.out_channels), str(op.kernel)]
    settings = (("stride", op.stride, 1), ("padding", op.padding, 0), ("dilation", op.dilation, 1),
                ("groups", op.groups, 1))
    args += [f"{key}={value}" for key, value, default in settings if value != default]
    return f"nn.Conv2d({', '.join(args + [f'bias={op.bias}'])})"


def _batchnorm(op: ir.BatchNorm, lw) -> str:
    if (op.eps, op.momentum) == lw.norm:
        return f"norm({op.channels})"
    return f"nn.BatchNorm2d({op.channels}, eps={op.eps!r}, momentum={op.momentum!r})"


def _pool(op: ir.Pool, lw) -> str:
    if op.kind == "avg":
        return (f"nn.AvgPool2d({op.kernel}, stride={op.stride}, padding={op.padding}, ceil_mode={op.ceil_mode}, "
                f"count_include_pad={op.count_include_pad})")
    counted, rest = op.pad_split
    if not counted:  # torch's max-pool never lets its (-inf) padding win
        ceil = ", ceil_mode=True" if op.ceil_mode else ""
        return f"nn.MaxPool2d({op.kernel}, stride={op.stride}, padding={op.padding}{ceil})"
    return f"PaddedMaxPool({op.kernel}, {op.stride}, {(counted, tuple(rest))!r}, 0.0)"


@dataclass
class Modules:
    """An op lowered to several modules at attributes of its block (``convs``, ``bns``, ``pool``: Res2Net's
    timm names) and one forward line calling a helper function on them (``{src}``: the value it reads)."""

    modules: list
    line: str


def _res2net(op: ir.Res2Net, lw) -> Modules:
    parts = common.res2net_parts(op)
    mods = [("convs", "nn.ModuleList([" + ", ".join(_conv(c, lw) for c, _ in parts) + "])")]
    if op.norm:
        mods.append(("bns", "nn.ModuleList([" + ", ".join(_batchnorm(b, lw) for _, b in parts) + "])"))
    pool = common.res2net_pool(op)
    if pool is not None:
        mods.append(("pool", _pool(pool, lw)))
    bns, p = ("self.bns" if op.norm else "[nn.Identity()] * len(self.convs)"), ("self.pool" if pool else "None")
    return Modules(mods, f"out = res2net_splits({{src}}, self.convs, {bns}, {p}, {op.width}, {op.cascade}, self.relu)")


#: How each IR op becomes a module constructor in the source (the conformance test checks it is complete).
OPS = {
    ir.Conv: _conv,
    ir.BatchNorm: _batchnorm,
    ir.ReLU: lambda op, lw: "nn.ReLU(inplace=True)",
    ir.Pool: _pool,
    ir.Subsample: lambda op, lw: f"Subsample({op.stride})",
    ir.ChannelPad: lambda op, lw: f"ChannelPad({op.before}, {op.after})",
    ir.SqueezeExcite: lambda op, lw: f"SqueezeExcite({op.channels}, {op.reduced})",
    ir.ECA: lambda op, lw: f"ECA({op.kernel}, {op.padding})",
    ir.DropPath: lambda op, lw: f"DropPath({op.rate!r})",
    ir.GlobalAvgPool: lambda op, lw: "GlobalAvgPool()",
    ir.Dropout: lambda op, lw: f"nn.Dropout({op.rate!r})",
    ir.Linear: lambda op, lw: f"nn.Linear({op.in_features}, {op.out_features}, bias={op.bias})",
    ir.SplitAttention: lambda op, lw: f"SplitAttention{split_attention_args(op)!r}",
    ir.Res2Net: _res2net,
    ir.SelectiveKernel: lambda op, lw: _selective_kernel(op),
    ir.GroupNorm: lambda op, lw: f"nn.GroupNorm({op.groups}, {op.channels}, eps={op.eps!r})",
    ir.StdConv: lambda op, lw: _conv(op, lw).replace("nn.Conv2d(", "StdConv2d(", 1)[:-1] + f", eps={op.eps!r})",
    ir.BlurPool: lambda op, lw: f"BlurPool2d{blur_pool_args(op)!r}",
    ir.FRN: lambda op, lw: f"FilterResponseNorm2d({op.channels}, {op.eps!r}, {op.act})",
    ir.EvoNormS0: lambda op, lw: f"EvoNormS0({op.channels}, {op.groups}, {op.eps!r}, {op.act})",
}


def _selective_kernel(op: ir.SelectiveKernel) -> str:
    convs = tuple(zip(op.kernels, op.paddings, op.dilations))
    slices = tuple(op.path_slice(i) for i in range(op.num_paths))
    return (f"SelectiveKernel({op.path_in_channels}, {op.out_channels}, {convs!r}, {slices!r}, {op.stride}, "
            f"{op.groups}, {op.attn_channels}, ({op.eps!r}, {op.momentum!r}))")


def helpers(text: str) -> str:
    """The helper classes ``text`` constructs, as backends/torch/backend.py defines them."""
    wanted = [name for name in HELPER_CLASSES if re.search(rf"\b{name}\(", text)]
    wanted = [need for name in wanted for need in (*HELPER_NEEDS.get(name, ()), name)]
    if not wanted:
        return ""
    found = {}
    for file in _HELPER_FILES:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), file), encoding="utf-8") as f:
            lines = f.read().splitlines()
        found.update({node.name: "\n".join(lines[node.lineno - 1:node.end_lineno])
                      for node in ast.walk(ast.parse("\n".join(lines)))
                      if isinstance(node, (ast.ClassDef, ast.FunctionDef))})
    return "".join(textwrap.dedent(found[n]) + "\n\n\n" for n in wanted)
