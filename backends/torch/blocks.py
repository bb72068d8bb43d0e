"""The building blocks of PyTorch ResNet relatives that the spec language cannot express yet, and how an
import recognises each: :data:`UNSUPPORTED`, one table (building block -> how it is recognised -> the
name the user reads).

A ``torchvision:``/``timm:`` model is recognised from its module types (``CecaModule``, ``EvoNorm*``,
``BlurPool2d``, an ``AvgPool2d`` at a block's ``aa`` other than timm's ``AvgPool2d(stride)``, ...), a bare
state dict from tensor names and shapes where they are reliable (a second Conv1d in an ECA module is
timm's MLP variant; a norm with ``tau`` is FRN; a norm without running statistics is no BatchNorm). The import is
refused in one line naming the block and where it first occurs (``timm:tresnet_m uses a TResNet space-to-depth
stem (body.s2d), ...``) instead of at the first tensor that does not fit.

Nothing here imports torch: module types are compared by class name, so a timm release that moves a
class keeps matching, and a model from any library is read the same way.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, NamedTuple

from ...importers.source import ImportRefused


class Block(NamedTuple):
    """One row of :data:`UNSUPPORTED`: a building block and how it is recognised.

    ``modules``: class-name patterns (``fnmatch``) of a module that is this block; ``at``: a regex its
    qualified name must match (``re.search``; None: anywhere); ``when``: a further test
    ``when(module, modules)`` on it. ``tensors``: a regex on state-dict tensor names that is this block
    in a bare state dict (None: names and shapes cannot tell it reliably); ``tensor_when``: a further
    test ``tensor_when(name, shape, shapes)``. ``name`` is what the refusal calls it; ``{cls}`` is the
    matched module's class name."""

    name: str
    modules: tuple = ()
    at: str | None = None
    when: Callable | None = None
    tensors: str | None = None
    tensor_when: Callable | None = None


def _cls(m) -> str:
    return type(m).__name__


def _window_is_stride(m) -> bool:
    """timm's ``aa_layer=nn.AvgPool2d``: ``AvgPool2d(stride)``, window = stride, no padding, floor."""
    k, st, p = (getattr(m, a, None) for a in ("kernel_size", "stride", "padding"))
    return k == st and p in (0, (0, 0)) and not getattr(m, "ceil_mode", True)


def _plain_blur(m) -> bool:
    """timm's ``BlurPool2d(channels)`` default (``block.anti_alias: blur``): 3 taps, stride 2, reflect padding 1."""
    return (getattr(m, "filt_size", None), getattr(m, "stride", None), getattr(m, "pad_mode", None),
            list(getattr(m, "padding", ()))) == (3, 2, "reflect", [1] * 4)


def _rs_stem(pool) -> bool:
    """ResNet-RS's stem pool (timm ``replace_stem_pool``): exactly conv, BatchNorm2d, ReLU."""
    return pool is not None and [_cls(m) for m in pool.children()] == ["Conv2d", "BatchNorm2d", "ReLU"]


def _rs_stem_tensors(shapes) -> bool:
    """A bare state dict's ResNet-RS stem pool: maxpool.0 a conv, maxpool.1 a BN, nothing further."""
    extra = [n for n in shapes if n.startswith("maxpool.") and not n.startswith(("maxpool.0.", "maxpool.1."))]
    return len(shapes.get("maxpool.0.weight", ())) == 4 and "maxpool.1.running_mean" in shapes and not extra


def _plain_eca(m) -> bool:
    """timm's EcaModule as ecaresnet* build it: one Conv1d(1, 1, k, padding (k-1)//2, no bias), no act, sigmoid."""
    conv = getattr(m, "conv", None)
    return getattr(m, "conv2", None) is None and getattr(m, "act", None) is None and _cls(conv) == "Conv1d" \
        and getattr(conv, "bias", 0) is None and tuple(conv.weight.shape[:2]) == (1, 1) \
        and tuple(conv.padding) == ((conv.weight.shape[2] - 1) // 2,) and _cls(getattr(m, "gate", None)) == "Sigmoid"


def _plain_split_attention(m) -> bool:
    """timm's SplitAttn as its resnest models build it: BatchNorm2d bn0/bn1, ReLU acts, no drop block."""
    return all(_cls(getattr(m, a, None)) == c for a, c in (("bn0", "BatchNorm2d"), ("bn1", "BatchNorm2d"),
                                                          ("act0", "ReLU"), ("act1", "ReLU"), ("drop", "Identity")))


def _avd_pool(m) -> bool:
    """timm ResNestBottleneck's avd pool: AvgPool2d(3, stride, padding=1), floor, padding counted."""
    k, p = getattr(m, "kernel_size", None), getattr(m, "padding", None)
    return k in (3, (3, 3)) and p in (1, (1, 1)) and not getattr(m, "ceil_mode", True) \
        and getattr(m, "count_include_pad", False) and getattr(m, "divisor_override", None) is None


def _plain_frn(m) -> bool:
    """timm's FilterResponseNormTlu2d (``norm.type: frn``): a float eps (not a parameter), TLU or none."""
    return _cls(m) == "FilterResponseNormTlu2d" and isinstance(getattr(m, "eps", None), float)


def _plain_evonorm(m) -> bool:
    """timm's EvoNorm2dS0 itself (``norm.type: evonorm_s0``; not S0a, which divides after the gate, nor S1/S2/B*)."""
    return _cls(m) == "EvoNorm2dS0" and isinstance(getattr(m, "eps", None), float) \
        and isinstance(getattr(m, "groups", None), int)


def _no_running_stats(name, shape, shapes) -> bool:
    mod = name[: -len(".weight")]
    return len(shape) == 1 and f"{mod}.bias" in shapes and f"{mod}.running_mean" not in shapes


_NOT_RELU = ("LeakyReLU", "SiLU", "Swish", "GELU", "GELUTanh", "Mish", "Hardswish", "HardSwish", "ELU", "PReLU",
             "CELU", "SELU", "Tanh", "Softplus")
_NORM_AT = r"(^|\.)(bn\d*|norm\d*|downsample\.\d|conv1\.\d)\.weight$"

#: Building block -> how it is recognised -> its name for the user, in order of precedence (each module
#: or tensor is claimed by the first row it matches; a refusal names every block found, in network order).
UNSUPPORTED = (
    Block("circular ECA channel attention", ("CecaModule",)),
    Block("ECA channel attention other than timm's EcaModule default (one bias-free conv, sigmoid gate)",
          ("EcaModule",), when=lambda m, _: not _plain_eca(m), tensors=r"\.conv2\.weight$",
          tensor_when=lambda n, s, _: len(s) == 3),
    Block("CBAM attention", ("CbamModule", "LightCbamModule"), tensors=r"\.spatial\.conv\.(conv\.)?weight$"),
    Block("gather-excite attention", ("GatherExcite",)),
    Block("global-context attention", ("GlobalContext",), tensors=r"\.conv_attn\.weight$"),
    Block("effective squeeze-excite", ("EffectiveSEModule",)),
    Block("SKNet selective-kernel convolutions other than timm's in place of a block's spatial conv",
          ("SelectiveKernel",), at=r"^(?!layer\d+\.\d+\.conv[12]$)"),
    Block("ResNeSt split attention other than timm's default (ReLU, BatchNorm, no drop block)", ("SplitAttn",),
          when=lambda m, _: not _plain_split_attention(m)),
    Block("ResNeSt average-pool downsampling other than AvgPool2d(3, stride, padding 1)", ("AvgPool2d",),
          at=r"\.avd_(first|last)$", when=lambda m, _: not _avd_pool(m)),
    Block("self-attention in place of the 3x3 conv", ("BottleneckAttn", "HaloAttn", "LambdaLayer")),
    Block("a TResNet space-to-depth stem", ("SpaceToDepth*",), tensors=r"^body\.conv1\.conv\.weight$",
          tensor_when=lambda n, s, _: len(s) == 4 and s[1] == 48),
    Block("Filter Response Normalization other than timm's FilterResponseNormTlu2d ({cls})",
          ("FilterResponseNorm*",), when=lambda m, _: not _plain_frn(m)),
    Block("Filter Response Normalization (a state dict cannot tell its variant and epsilon: import timm:NAME, "
          "or pass the file as --weights to a spec)", tensors=r"\.tau$"),
    Block("EvoNorm other than EvoNorm-S0 ({cls})", ("EvoNorm*",), when=lambda m, _: not _plain_evonorm(m)),
    Block("EvoNorm (a state dict cannot tell its variant, groups and epsilon: import timm:NAME, or pass the file "
          "as --weights to a spec)", tensors=r"\.v$", tensor_when=lambda n, s, _: len(s) in (1, 4)),
    Block("GroupNorm or another normalization without running statistics (a state dict cannot tell which)",
          tensors=_NORM_AT, tensor_when=_no_running_stats),
    Block("LayerNorm", ("LayerNorm*",)),
    Block("{cls} weight-standardized convolutions", ("StdConv2dSame", "ScaledStdConv2d*"),
          tensors=r"\.gain$"),
    Block("{cls} 'SAME' padding computed from the input size",
          ("Conv2dSame", "Conv2dSameExport", "MaxPool2dSame", "AvgPool2dSame")),
    Block("BlurPool2d anti-aliasing other than timm's default (3 binomial taps, reflect padding 1, stride 2)",
          ("BlurPool2d",), when=lambda m, _: not _plain_blur(m)),
    Block("BlurPool2d anti-aliasing elsewhere than after a strided conv (aa) or the stem's max-pool (maxpool.1)",
          ("BlurPool2d",), at=r"^(?!.*(^|\.)aa$)(?!maxpool\.1$)"),
    Block("anti-aliasing average pools other than timm's AvgPool2d(stride)", ("AvgPool2d",),
          at=r"(^|\.)aa$", when=lambda m, _: not _window_is_stride(m)),
    Block("an average pool beside other layers in place of the stem's max-pool", ("AvgPool2d",),
          at=r"^maxpool\.\d+$"),
    Block("a strided conv in place of the stem's max-pool other than ResNet-RS's conv, BN, ReLU", ("Conv2d",),
          at=r"^maxpool\.\d+$", when=lambda m, mods: not _rs_stem(mods.get("maxpool")),
          tensors=r"^maxpool\.\d+\.weight$",
          tensor_when=lambda n, s, shapes: len(s) == 4 and not _rs_stem_tensors(shapes)),
    Block("{cls} activations", _NOT_RELU),
)


def _claims(row: Block, name: str, m, mods) -> bool:
    if not any(fnmatch.fnmatchcase(_cls(m), p) for p in row.modules):
        return False
    if row.at is not None and not re.search(row.at, name):
        return False
    return row.when is None or bool(row.when(m, mods))


def recognise_modules(model) -> list:
    """``[(block name, where)]``: the unsupported blocks of a torch module, each at its first module."""
    mods = dict(model.named_modules())
    found = {}
    for name, m in mods.items():
        row = next((r for r in UNSUPPORTED if r.modules and _claims(r, name, m, mods)), None)
        if row is not None:
            found.setdefault(row.name.replace("{cls}", _cls(m)), name or "the model")
    return list(found.items())


def recognise_tensors(shapes: dict) -> list:
    """``[(block name, where)]`` for a bare state dict (``{tensor name: shape}``), from the rows with a
    tensor pattern."""
    modules: dict = {}  # module -> its tensors, in state-dict order: a row claims a whole module
    for name in shapes:
        modules.setdefault(name.rpartition(".")[0], []).append(name)
    found = {}
    for tensors in modules.values():
        hit = next(((row, n) for row in UNSUPPORTED if row.tensors for n in tensors
                    if re.search(row.tensors, n) and (row.tensor_when is None or
                                                      row.tensor_when(n, tuple(shapes[n]), shapes))), None)
        if hit is not None:
            found.setdefault(hit[0].name.replace("{cls} ", ""), f"tensor {hit[1]!r}")
    return list(found.items())


def unsupported_refusal(label: str, found: list) -> ImportRefused | None:
    """One line naming every unsupported block found (the first three, then a count), or None."""
    if not found:
        return None
    parts = [f"{what} ({where})" for what, where in found[:3]]
    if len(found) > 3:
        parts.append(f"{len(found) - 3} more")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return ImportRefused(f"{label} uses {listed}, which resnet-spec cannot express yet")


def check_model(label: str, model) -> None:
    """Refuse a torch model built of a block :data:`UNSUPPORTED` lists."""
    exc = unsupported_refusal(label, recognise_modules(model))
    if exc is not None:
        raise exc


def check_state_dict(label: str, shapes: dict) -> None:
    """Refuse a bare state dict whose names and shapes show a block :data:`UNSUPPORTED` lists."""
    exc = unsupported_refusal(label, recognise_tensors(shapes))
    if exc is not None:
        raise exc
