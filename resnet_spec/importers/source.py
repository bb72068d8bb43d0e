"""What an importer recognised in a source model, and the check of a source against a spec.

Every importer (ONNX graph, Keras model, PyTorch state dict, torchvision/timm/keras.applications by
name) turns its input into one :class:`Source`: the canonical weight set (torchvision names, PyTorch
layouts) plus one :class:`Layer` per parametrised layer with the facts the source states about it --
kernel shape, bias present or not, stride, padding, BN epsilon -- and its own name for the layer, so a
refusal can point at the node, layer or tensor the user knows. A fact the source cannot state (a state
dict holds no strides) is ``None`` and is not checked.

:func:`check_source` compares a source with a resolved spec layer by layer and refuses at the first
difference; it runs before any weights are used, so a mismatch is never a silently wrong model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .. import ir
from ..errors import ResNetSpecError


class ImportRefused(ResNetSpecError):
    """A source that cannot be imported: the message names the file and the first node/layer/tensor."""


@dataclass
class Layer:
    name: str  # canonical (torchvision) name, e.g. layer2.0.downsample.0
    kind: str  # "conv" | "bn" | "gn" (GroupNorm) | "linear" | "conv1d"
    shape: tuple  # weight shape, PyTorch layout; (channels,) for BN
    bias: bool
    origin: str  # the source's own name for it (ONNX node, Keras layer, state-dict tensor)
    stride: int | None = None
    padding: int | None = None
    dilation: int | None = None
    eps: float | None = None


@dataclass
class Source:
    label: str  # the file or library name, as the user gave it
    kind: str  # "onnx" | "keras" | "torch" | "torchvision" | "timm"
    layers: dict  # canonical name -> Layer, in network order
    weights: dict  # canonical name -> float32 array
    facts: dict = field(default_factory=dict)  # stem_pool, shortcut_pool, eps, momentum, input_size...
    notes: list = field(default_factory=list)  # what the import assumed or changed, for the user

    def refuse(self, what: str, message: str) -> ImportRefused:
        return ImportRefused(f"{self.label}: {what}: {message}")


class Recogniser:
    """Reads one model description (an ONNX graph, a Keras layer list) into a new :class:`Source`:
    a subclass takes ``(src, description)`` and fills ``src`` in :meth:`run`."""

    def __init__(self, src: Source, description):
        self.src = src

    def run(self) -> None:
        raise NotImplementedError

    @classmethod
    def source(cls, label: str, kind: str, facts: dict, description) -> Source:
        src = Source(label, kind, {}, {}, facts=facts)
        cls(src, description).run()
        return src


def layers_from_weights(weights: dict, origin=None) -> dict:
    """Layers of a state dict from names and shapes alone (no strides or paddings: it has none)."""
    origin = origin or (lambda n: n)
    layers = {}
    for name, arr in weights.items():
        if not name.endswith(".weight"):
            continue
        mod = name[: -len(".weight")]
        shape = tuple(np.shape(arr))
        if len(shape) == 4:
            kind = "conv"
        elif len(shape) == 3:
            kind = "conv1d"  # ECA's conv across the channels
        elif len(shape) == 2:
            kind = "linear"
        elif len(shape) == 1 and f"{mod}.running_mean" in weights:
            kind = "bn"
        elif len(shape) == 1 and f"{mod}.bias" in weights:
            kind = "gn"  # a norm without running statistics (a model's reader has checked it is a GroupNorm)
        else:
            continue
        layers[mod] = Layer(mod, kind, shape, kind not in ("bn", "gn") and f"{mod}.bias" in weights, origin(name))
    return layers


class SpecLayer(NamedTuple):
    """What the spec states about one parametrised layer: the facts a source's :class:`Layer` is
    checked against (None: not a fact of this kind of layer)."""

    name: str
    kind: str
    shape: tuple
    bias: bool
    stride: int | None = None
    padding: int | None = None
    dilation: int | None = None
    eps: float | None = None


def _conv_layers(op: ir.Conv) -> tuple:
    shape = (op.out_channels, op.in_channels // op.groups, op.kernel, op.kernel)
    return (SpecLayer(op.name, "conv", shape, op.bias, op.stride, op.padding, op.dilation),)


def _se_layers(op: ir.SqueezeExcite) -> tuple:
    return tuple(SpecLayer(f"{op.name}.{fc}", "conv", (o, i, 1, 1), True, 1, 0, 1)
                 for fc, (o, i) in (("fc1", (op.reduced, op.channels)), ("fc2", (op.channels, op.reduced))))


def _eca_layers(op: ir.ECA) -> tuple:
    return (SpecLayer(f"{op.name}.conv", "conv1d", (1, 1, op.kernel), False, 1, op.padding, 1),)


def _split_attention_layers(op: ir.SplitAttention) -> tuple:
    """timm SplitAttn's conv (groups * radix groups, no bias), bn0, fc1 and fc2 (1x1, groups groups, bias), bn1."""
    n, mid, attn, g = op.name, op.mid_channels, op.attn_channels, op.groups
    return (SpecLayer(f"{n}.conv", "conv", (mid, op.in_channels // op.conv_groups, op.kernel, op.kernel), False,
                      op.stride, op.padding, op.dilation),
            SpecLayer(f"{n}.bn0", "bn", (mid,), True, eps=op.eps),
            SpecLayer(f"{n}.fc1", "conv", (attn, op.channels // g, 1, 1), True, 1, 0, 1),
            SpecLayer(f"{n}.bn1", "bn", (attn,), True, eps=op.eps),
            SpecLayer(f"{n}.fc2", "conv", (mid, attn // g, 1, 1), True, 1, 0, 1))


def _res2net_layers(op: ir.Res2Net) -> tuple:
    """timm's ``convs.i`` (3x3, no bias) and ``bns.i`` of a Res2Net block."""
    w, k = op.width, op.kernel
    convs = tuple(SpecLayer(op.conv_name(i), "conv", (w, w // op.groups, k, k), op.bias, op.stride, op.padding,
                            op.dilation) for i in range(op.convs))
    bns = tuple(SpecLayer(op.bn_name(i), "bn", (w,), True, eps=op.eps) for i in range(op.convs if op.norm else 0))
    return convs + bns


def _sk_layers(op: ir.SelectiveKernel) -> tuple:
    """Each path's conv and BN, fc_reduce, its BN, fc_select: the layers of the plain ops they are."""
    from ..sknet import sub_ops

    paths, attn = sub_ops(op)
    subs = [sub for pair in paths for sub in pair] + list(attn)
    return tuple(layer for sub in subs if sub is not None for layer in SPEC_LAYERS[type(sub)](sub))


def _no_layers(op) -> tuple:
    return ()


#: IR op type -> ``fn(op) -> (SpecLayer, ...)``: the layers a source must have for the op, in order (every
#: type of ``ir.OP_TYPES``; a parameter-free op has none, as an importer recognises no layer for it).
SPEC_LAYERS = {
    ir.Conv: _conv_layers,
    ir.StdConv: _conv_layers,  # a conv's facts; that it is standardized is read from the source's modules
    ir.GroupNorm: lambda op: (SpecLayer(op.name, "gn", (op.channels,), True, eps=op.eps),),
    ir.BatchNorm: lambda op: (SpecLayer(op.name, "bn", (op.channels,), True, eps=op.eps),),
    ir.ReLU: _no_layers,
    ir.Pool: _no_layers,
    ir.Subsample: _no_layers,
    ir.ChannelPad: _no_layers,
    ir.SqueezeExcite: _se_layers,
    ir.ECA: _eca_layers,
    ir.Res2Net: _res2net_layers,
    ir.DropPath: _no_layers,
    ir.GlobalAvgPool: _no_layers,
    ir.Dropout: _no_layers,
    ir.Linear: lambda op: (SpecLayer(op.name, "linear", (op.out_features, op.in_features), op.bias),),
    ir.SplitAttention: _split_attention_layers,
    ir.SelectiveKernel: _sk_layers,
    ir.BlurPool: _no_layers,  # timm's BlurPool2d holds its filter as a non-persistent buffer
    # norms without running statistics; which one (and its tau or v) is read from the source's modules
    ir.FRN: lambda op: (SpecLayer(op.name, "gn", (op.channels,), True, eps=op.eps),),
    ir.EvoNormS0: lambda op: (SpecLayer(op.name, "gn", (op.channels,), True, eps=op.eps),),
}


def _spec_layers(net: ir.Network):
    """The :class:`SpecLayer` of every parametrised layer of ``net``, in network order."""
    for op in net.all_ops():
        yield from ir.entry_for(SPEC_LAYERS, op, "import facts")(op)


def _shape(s) -> str:
    return "(" + ", ".join(map(str, s)) + ")"


def layer_difference(layer: Layer, kind, shape, bias, stride, padding, dilation, eps) -> str | None:
    """How the source's ``layer`` differs from the spec's layer, or None."""
    if layer.kind != kind:
        return f"the source has a {layer.kind} layer here, the spec a {kind} layer"
    if tuple(layer.shape) != tuple(shape):
        return f"weight shape {_shape(layer.shape)} in the source, {_shape(shape)} in the spec"
    if kind not in ("bn", "gn") and layer.bias != bias:
        return "the source has a bias, the spec has none" if layer.bias else \
            "the spec has a bias, the source has none"
    if layer.stride is not None and stride is not None and layer.stride != stride:
        return f"stride {layer.stride} in the source, {stride} in the spec"
    if layer.padding is not None and padding is not None and layer.padding != padding:
        return f"padding {layer.padding} in the source, {padding} in the spec"
    if layer.dilation is not None and dilation is not None and layer.dilation != dilation:
        return f"dilation {layer.dilation} in the source, {dilation} in the spec"
    if layer.eps is not None and eps is not None and not np.isclose(layer.eps, eps, rtol=1e-6, atol=0):
        return f"{'norm' if kind == 'gn' else 'BN'} epsilon {layer.eps:g} in the source, {eps:g} in the spec"
    return None


def first_difference(net: ir.Network, src: Source) -> str | None:
    """The first layer, in network order, where ``src`` and ``net`` differ (a message), or None."""
    seen = set()
    for name, kind, shape, bias, stride, padding, dilation, eps in _spec_layers(net):
        seen.add(name)
        layer = src.layers.get(name)
        if layer is None:
            return f"the spec's layer {name!r} ({kind} {_shape(shape)}) has no counterpart in the source"
        diff = layer_difference(layer, kind, shape, bias, stride, padding, dilation, eps)
        if diff:
            return f"layer {_described(layer)}: {diff}"
    for name, layer in src.layers.items():
        if name not in seen:
            return f"the source's layer {_described(layer)} ({layer.kind} {_shape(layer.shape)}) has no " \
                   "counterpart in the spec"
    return None


def _described(layer: Layer) -> str:
    return repr(layer.name) if layer.origin == layer.name else f"{layer.origin!r} ({layer.name})"


def check_source(net: ir.Network, src: Source) -> dict:
    """Refuse unless ``src`` describes the network ``net`` layer for layer; return checked weights."""
    from ..weights.check import check_weights

    diff = first_difference(net, src)
    if diff:
        raise ImportRefused(f"{src.label} does not match spec {net.name!r}: first differing {diff}")
    return check_weights(net, src.weights, src.label)


def sanitize_name(text: str) -> str:
    """A spec name (schema pattern ``[A-Za-z_][A-Za-z0-9_.-]{0,63}``) from a file or model name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "imported"
    return name if re.match(r"[A-Za-z_]", name) else f"m_{name}"[:64]
