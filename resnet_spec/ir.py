"""The resolved, framework-free intermediate representation (IR).

Every fact that decides the numbers a framework computes is an explicit field here: kernel, stride,
symmetric padding, dilation, groups and bias of every convolution; BN epsilon; pool padding, ceil mode
and padding value; which input a shortcut reads. Backends interpret these ops and never apply a
framework default in their place.

Shapes are ``(channels, height, width)`` for one image. Canonical tensor names follow torchvision's
``state_dict`` (``layer2.0.downsample.0.weight``) and are shared by every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, make_dataclass

Shape = tuple  # (C, H, W)


def conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output size of a convolution: floor((n + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output size of a pooling window, PyTorch semantics.

    ``ceil_mode`` rounds ``(n + 2p - k) / s`` up, but a last window that would start in the right
    padding is dropped, so every window starts inside the input or the left padding.
    """
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_divisors(size: int, kernel: int, stride: int, padding: int, out: int, count_include_pad: bool) -> tuple:
    """An average pool's divisor along one axis for each of the ``out`` windows, PyTorch semantics.

    Window ``i`` covers padded rows ``[i*s - p, i*s - p + k)``, clipped to ``size + p`` (the ceil-mode
    extension never counts); without ``count_include_pad`` it is also clipped to the real rows
    ``[0, size)``. A 2-D window's divisor is the product of its row's and its column's.
    """
    divisors = []
    for i in range(out):
        start = i * stride - padding
        end = min(start + kernel, size + padding)
        if not count_include_pad:
            start, end = max(start, 0), min(end, size)
        divisors.append(end - start)
    return tuple(divisors)


def _op(name: str, doc: str, **fields) -> type:
    """Declare a weightless IR op: a frozen dataclass ``name`` whose fields are ``fields`` (name=type,
    in order) followed by ``in_shape`` and ``out_shape``, the last two fields of every op."""
    cls = make_dataclass(name, [*fields.items(), ("in_shape", Shape), ("out_shape", Shape)], frozen=True,
                         namespace={"__doc__": doc})
    cls.__module__ = __name__  # importable (and picklable) as resnet_spec.ir.<name>
    return cls


@dataclass(frozen=True)
class Conv:
    """2-D convolution; weight ``(out, in/groups, k, k)``, symmetric zero padding."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int
    bias: bool
    in_shape: Shape
    out_shape: Shape

    def tensors(self):
        yield f"{self.name}.weight", (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel), True
        if self.bias:
            yield f"{self.name}.bias", (self.out_channels,), True

    @property
    def macs(self) -> int:
        c, h, w = self.out_shape
        return c * h * w * (self.in_channels // self.groups) * self.kernel * self.kernel


#: The canonical tensor suffixes of a BatchNorm, in order: ``<bn>.weight`` (gamma), ``<bn>.bias``
#: (beta), then the two buffers.
BN_LEAVES = ("weight", "bias", "running_mean", "running_var")
BN_STATS = BN_LEAVES[2:]


@dataclass(frozen=True)
class BatchNorm:
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias (inference form)."""

    name: str
    channels: int
    eps: float
    momentum: float
    in_shape: Shape
    out_shape: Shape

    def tensors(self):
        for leaf in BN_LEAVES:
            yield f"{self.name}.{leaf}", (self.channels,), leaf not in BN_STATS


ReLU = _op("ReLU", "max(x, 0)")


@dataclass(frozen=True)
class Pool:
    """Max or average pooling with explicit symmetric ``padding``.

    ``pads`` gives the effective (top, left, bottom, right) padding: the symmetric padding plus, in
    ceil mode, the extra bottom/right rows the last window reaches. Extra rows never count in an
    average; symmetric padding counts only with ``count_include_pad``. ``pad_value`` is 'neg_inf'
    (padding never wins a max) or 'zero' (the input is zero-padded first, as Keras does).
    """

    name: str
    kind: str  # "max" | "avg"
    kernel: int
    stride: int
    padding: int
    ceil_mode: bool
    count_include_pad: bool
    pad_value: str
    in_shape: Shape
    out_shape: Shape

    @property
    def pads(self) -> tuple:
        _, h, w = self.in_shape
        _, oh, ow = self.out_shape
        extra_h = max(0, (oh - 1) * self.stride + self.kernel - h - 2 * self.padding)
        extra_w = max(0, (ow - 1) * self.stride + self.kernel - w - 2 * self.padding)
        return (self.padding, self.padding, self.padding + extra_h, self.padding + extra_w)

    @property
    def pad_split(self) -> tuple:
        """``(counted, rest)``: how a backend pads explicitly. ``counted`` is the symmetric padding whose
        cells take part in the result -- zeros that can win a max (``pad_value`` 'zero') or that count
        in an average (``count_include_pad``) -- and is made real with zeros before pooling (0 when no
        padding counts). ``rest`` = ``pads`` minus ``counted`` is (top, left, bottom, right) padding
        that never counts: -inf for a max, left out of an average's divisor."""
        counted = self.padding if (self.pad_value == "zero" if self.kind == "max" else self.count_include_pad) else 0
        t, l, b, r = self.pads
        return counted, (t - counted, l - counted, b - counted, r - counted)

    @property
    def divisors(self) -> tuple:
        """``(rows, cols)``: an average's divisor per output row and per output column
        (:func:`pool_divisors`); window ``(i, j)`` divides by ``rows[i] * cols[j]``."""
        _, h, w = self.in_shape
        _, oh, ow = self.out_shape
        return tuple(pool_divisors(n, self.kernel, self.stride, self.padding, o, self.count_include_pad)
                     for n, o in ((h, oh), (w, ow)))

    def tensors(self):
        return iter(())


Subsample = _op("Subsample", "x[:, :, ::stride, ::stride] -- a strided identity (1x1 max-pool in Keras ResNetV2).",
                stride=int)


ChannelPad = _op("ChannelPad", "Zero channels added ``before`` and ``after`` the existing ones (option-A shortcut).",
                 before=int, after=int)


@dataclass(frozen=True)
class SqueezeExcite:
    """x * sigmoid(fc2(relu(fc1(mean_hw(x))))), fc1/fc2 being 1x1 convs with bias (timm SEModule).

    ``channels`` are the channels it gates, ``reduced`` fc1's outputs. The facts that decided them, kept
    for every reader (no backend derives anything from them; the lowering reads ``channels`` and
    ``reduced``, and the SE's position in ``Block.main``): ``placement`` -- 'end' (after the residual
    branch's last BN, timm ResNet), 'end_relu' (after that BN and a ReLU: legacy SEResNetBlock) or 'after_3x3'
    (after the 3x3 conv's BN and ReLU, before conv3: RegNetY); ``reduce_from`` -- 'output' or 'input': whose
    channel count, ``base``, the ``reduction`` divided; ``divisor`` -- ``reduced`` is
    ``make_divisible(base / reduction, divisor)``, or Python's ``round(base / reduction)`` when None.
    """

    name: str
    channels: int
    reduced: int
    in_shape: Shape
    out_shape: Shape
    placement: str
    reduce_from: str
    base: int
    reduction: int
    divisor: int | None

    def tensors(self):
        yield f"{self.name}.fc1.weight", (self.reduced, self.channels, 1, 1), True
        yield f"{self.name}.fc1.bias", (self.reduced,), True
        yield f"{self.name}.fc2.weight", (self.channels, self.reduced, 1, 1), True
        yield f"{self.name}.fc2.bias", (self.channels,), True

    @property
    def macs(self) -> int:
        return 2 * self.channels * self.reduced


def make_divisible(v: float, divisor: int, min_ratio: float = 0.0) -> int:
    """timm's and torchvision's ``make_divisible``: the nearest multiple of ``divisor`` (half up), at least
    ``divisor``; one ``divisor`` more where that falls below ``min_ratio * v`` (torchvision's 0.9)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < min_ratio * v else new


def se_reduced(base: int, reduction: int, divisor: int | None) -> int:
    """A squeeze-excite's reduced channels: timm's ``make_divisible(base / reduction, divisor)`` (nearest
    multiple, at least ``divisor``, no round-up), or ``int(round(base / reduction))`` (Python's round,
    half to even: timm's and torchvision's RegNet ``se_ratio``) when ``divisor`` is None."""
    v = base / reduction
    return int(round(v)) if divisor is None else make_divisible(v, divisor)


@dataclass(frozen=True)
class ECA:
    """Efficient channel attention (timm EcaModule): x * sigmoid(conv1d(mean_hw(x))), the 1-D conv
    running across the channels -- one input and output channel, ``kernel`` taps, zero padding
    ``(kernel - 1) // 2`` on both sides (``kernel`` is odd), no bias; weight ``(1, 1, kernel)``.

    ``channels`` are the channels it gates; ``kernel`` is what every backend reads. The facts that decided
    it, kept for every reader: ``gamma`` and ``beta`` of timm's adaptive rule (:func:`eca_kernel`), both
    None when the spec gave the kernel; ``placement`` as for :class:`SqueezeExcite`.
    """

    name: str
    channels: int
    kernel: int
    in_shape: Shape
    out_shape: Shape
    placement: str = "end"
    gamma: int | None = 2
    beta: int | None = 1

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    def tensors(self):
        yield f"{self.name}.conv.weight", (1, 1, self.kernel), True

    @property
    def macs(self) -> int:
        return self.channels * self.kernel


def eca_kernel(channels: int, gamma: int, beta: int) -> int:
    """timm's adaptive ECA kernel size: ``t = int(abs(log2(C) + beta) / gamma)``, made odd (t + 1 when t
    is even), at least 3 -- computed as timm does (``math.log(C, 2)``), so the same float rounding."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


DropPath = _op("DropPath", "Stochastic depth on the residual branch: training only, identity at inference.",
               rate=float)


GlobalAvgPool = _op("GlobalAvgPool", "Mean over height and width, then flatten to (C,).")


Dropout = _op("Dropout", "Dropout before the classifier: training only.", rate=float)


@dataclass(frozen=True)
class Linear:
    """y = x @ weight.T + bias, weight ``(out, in)`` as in PyTorch."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    in_shape: Shape
    out_shape: Shape

    def tensors(self):
        yield f"{self.name}.weight", (self.out_features, self.in_features), True
        if self.bias:
            yield f"{self.name}.bias", (self.out_features,), True

    @property
    def macs(self) -> int:
        return self.in_features * self.out_features


from .ir_resnest import SplitAttention  # noqa: E402  (ResNeSt's split attention, its own module)
from .ir_norm import GroupNorm, StdConv  # noqa: E402  (no running statistics: GN, weight standardization)

#: Every IR op type. Each backend lowers every one of them (``backends/common.py``), and every table of
#: per-op facts has an entry for each (:func:`missing_op_types`; the conformance test
#: ``tests/test_lowering.py`` checks each backend's ``OPS`` table and every other per-op table against this tuple).
from .ir_res2net import Res2Net, res2net_op  # noqa: E402  (Res2Net's split convs: its own module)
from .ir_sknet import SelectiveKernel  # noqa: E402  (SKNet's composite op, its own module)
from .ir_blur import BlurPool  # noqa: E402  (timm's BlurPool2d anti-aliasing, its own module)
from .ir_frn import FRN, EvoNormS0  # noqa: E402  (norm-act layers: FRN + TLU, EvoNorm-S0)

OP_TYPES = (Conv, BatchNorm, ReLU, Pool, Subsample, ChannelPad, SqueezeExcite, ECA, DropPath, GlobalAvgPool,
            Dropout, Linear, SplitAttention, Res2Net, SelectiveKernel, GroupNorm, StdConv, BlurPool, FRN,
            EvoNormS0)
#: The convolution op types (plain, weight-standardized); :attr:`Block.convs` and readers of conv facts.
CONVS = (Conv, StdConv)


def missing_op_types(table) -> list:
    """The names of the IR op types that ``table`` (a dict keyed by op type) has no entry for. Every
    per-op table -- each backend's ``OPS``, weight initialisation, Keras layouts, import facts -- is
    checked with it by ``tests/test_lowering.py``, so a new op type cannot be forgotten in one."""
    return [t.__name__ for t in OP_TYPES if t not in table]


def entry_for(table, op, what: str):
    """``table[type(op)]``, or a TypeError naming ``what`` (the table's purpose) and the op type when
    ``table`` has no entry for it (never a KeyError that a caller could take for a missing tensor)."""
    try:
        return table[type(op)]
    except KeyError:
        raise TypeError(f"{what}: no entry for IR op {type(op).__name__}") from None


@dataclass(frozen=True)
class Block:
    """One residual block: ``y = post(main(a) + shortcut(s))``.

    ``a = pre(x)`` (pre-activation BN+ReLU; empty for v1 blocks). The shortcut reads ``x`` when
    ``shortcut_from == "input"`` and ``a`` when it is ``"pre"``. An empty ``shortcut`` is the identity.
    ``post`` is the ReLU after the addition in v1 blocks (empty for pre-activation).
    ``shortcut_kind`` names what the resolver put in ``shortcut``: 'identity' (no ops), 'option_a'
    (Subsample and/or ChannelPad), 'projection' (strided 1x1 conv [+ BN]) or 'avgpool_projection'
    (ResNet-D: average pool + 1x1 conv [+ BN]).
    """

    name: str
    stage: int
    index: int
    kind: str  # "basic" | "bottleneck"
    preact: bool
    pre: tuple
    main: tuple
    shortcut: tuple
    shortcut_from: str
    post: tuple
    in_shape: Shape
    out_shape: Shape
    shortcut_kind: str = "identity"

    @property
    def ops(self) -> tuple:
        return self.pre + self.main + self.shortcut + self.post

    @property
    def convs(self) -> tuple:
        """The residual branch's convolutions, in order (conv1, conv2[, conv3]; a Res2Net block's split
        convs are inside its :class:`Res2Net` op, not here)."""
        return tuple(op for op in self.main if isinstance(op, CONVS))

    @property
    def stride_index(self):
        """Which of :attr:`convs` carries the block's stride (0-based), or None for a stride-1 block."""
        return next((i for i, c in enumerate(self.convs) if c.stride > 1), None)

    @property
    def downsamples(self) -> bool:
        """Whether the block changes the feature map's height or width."""
        return self.in_shape[1:] != self.out_shape[1:]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    trainable: bool  # parameter (True) or buffer such as BN running statistics (False)


@dataclass(frozen=True)
class Network:
    """A whole model: ``head(blocks(stem(x)))``. Taps (block boundaries) are 'stem', each block's
    name, and 'head' (the logits)."""

    name: str
    description: str
    input_shape: Shape
    stem: tuple
    blocks: tuple
    head: tuple
    num_classes: int
    zero_init_last_bn: bool
    spec_yaml: str  # the merged, self-contained spec this was resolved from

    @property
    def stages(self) -> int:
        return max(b.stage for b in self.blocks) + 1

    def all_ops(self):
        yield from self.stem
        for b in self.blocks:
            yield from b.ops
        yield from self.head

    def tensors(self) -> tuple:
        """Every parameter and buffer, canonical name and shape, in a deterministic order."""
        out = []
        for op in self.all_ops():
            if hasattr(op, "tensors"):
                out.extend(TensorInfo(n, s, t) for n, s, t in op.tensors())
        return tuple(out)

    @property
    def params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors() if t.trainable)

    @property
    def buffers(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors() if not t.trainable)

    @property
    def macs(self) -> int:
        return sum(getattr(op, "macs", 0) for op in self.all_ops())

    def tap_names(self) -> tuple:
        return ("stem",) + tuple(b.name for b in self.blocks) + ("head",)

    def tap_shapes(self) -> dict:
        shapes = {"stem": self.stem[-1].out_shape if self.stem else self.input_shape}
        shapes.update({b.name: b.out_shape for b in self.blocks})
        shapes["head"] = (self.num_classes,)
        return shapes

    def last_bn_of_blocks(self) -> tuple:
        """Names of each block's last BatchNorm on the residual branch (zero-init-residual targets)."""
        names = []
        for b in self.blocks:
            bns = [op.name for op in b.main if isinstance(op, (BatchNorm, GroupNorm, FRN, EvoNormS0))]
            if bns:
                names.append(bns[-1])
        return tuple(names)
