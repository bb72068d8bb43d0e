"""ResNeSt's split attention as one IR op (imported by :mod:`resnet_spec.ir`, which lists it in ``OP_TYPES``).

Framework-free and independent of :mod:`resnet_spec.ir` (no import of it), so the IR module stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple  # (C, H, W)

#: The tensor suffixes of a BatchNorm, in state_dict order (as ``ir.BN_LEAVES``).
_BN = (("weight", True), ("bias", True), ("running_mean", False), ("running_var", False))


def split_attention_channels(channels: int, radix: int, ratio: float, divisor: int, min_channels: int,
                             round_limit: float = 0.9) -> int:
    """The attention width of timm's SplitAttn: ``make_divisible(channels * radix * ratio, divisor,
    min_value=min_channels, round_limit)`` -- the nearest multiple of ``divisor`` (half up), at least
    ``min_channels``, one ``divisor`` more where that falls below ``round_limit`` of the value."""
    v = channels * radix * ratio
    new = max(min_channels, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < round_limit * v else new


@dataclass(frozen=True)
class SplitAttention:
    """Split attention (ResNeSt, timm ``SplitAttn``), replacing a bottleneck's 3x3 conv + BN + ReLU::

        u = relu(bn0(conv(x)))                 conv: in_channels -> channels * radix, groups * radix groups,
                                               no bias; u read as (radix, channels) along the channel axis
        s = mean_hw(sum_r u_r)                 (channels,)
        a = fc2(relu(bn1(fc1(s))))             fc1: channels -> attn_channels, fc2: attn_channels ->
                                               channels * radix, both 1x1 with bias and ``groups`` groups
        g = softmax over radix of a read as (groups, radix, channels / groups)   (gate 'softmax', radix > 1)
            sigmoid(a)                                                         (gate 'sigmoid', radix 1)
        y = sum_r g_r * u_r                    g laid out (radix, channels) as u

    Every fact is a field: the conv's kernel, stride, padding, dilation; ``groups`` (the cardinality);
    ``radix``; ``attn_channels`` (decided by :func:`split_attention_channels` from ``ratio``, ``divisor``,
    ``min_channels``, ``round_limit``); both BNs' ``eps`` and ``momentum``; ``gate``. Tensors are named as
    timm's state_dict under ``name`` (``layer1.0.conv2.conv.weight``, ``.bn0.*``, ``.fc1.*``, ``.bn1.*``,
    ``.fc2.*``).
    """

    name: str
    in_channels: int
    channels: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int
    radix: int
    attn_channels: int
    eps: float
    momentum: float
    in_shape: Shape
    out_shape: Shape
    ratio: float = 0.25
    divisor: int = 8
    min_channels: int = 32
    round_limit: float = 0.9
    bn_folded: bool = False  # ONNX's folded form (backends/onnx/resnest.py): no bn0/bn1, conv and fc1 with bias

    @property
    def mid_channels(self) -> int:
        """The conv's output channels: ``channels * radix`` (radix-major)."""
        return self.channels * self.radix

    @property
    def conv_groups(self) -> int:
        return self.groups * self.radix

    @property
    def gate(self) -> str:
        """'softmax' across the radix (radix > 1) or 'sigmoid' (radix 1), as timm's RadixSoftmax."""
        return "softmax" if self.radix > 1 else "sigmoid"

    @property
    def mid_shape(self) -> Shape:
        return (self.mid_channels, *self.out_shape[1:])

    def tensors(self):
        n, mid, attn = self.name, self.mid_channels, self.attn_channels
        yield f"{n}.conv.weight", (mid, self.in_channels // self.conv_groups, self.kernel, self.kernel), True
        if self.bn_folded:
            yield f"{n}.conv.bias", (mid,), True
        for leaf, trainable in () if self.bn_folded else _BN:
            yield f"{n}.bn0.{leaf}", (mid,), trainable
        yield f"{n}.fc1.weight", (attn, self.channels // self.groups, 1, 1), True
        yield f"{n}.fc1.bias", (attn,), True
        for leaf, trainable in () if self.bn_folded else _BN:
            yield f"{n}.bn1.{leaf}", (attn,), trainable
        yield f"{n}.fc2.weight", (mid, attn // self.groups, 1, 1), True
        yield f"{n}.fc2.bias", (mid,), True

    @property
    def macs(self) -> int:
        _, h, w = self.out_shape
        conv = self.mid_channels * h * w * (self.in_channels // self.conv_groups) * self.kernel * self.kernel
        fc1 = self.attn_channels * (self.channels // self.groups)
        fc2 = self.mid_channels * (self.attn_channels // self.groups)
        return conv + fc1 + fc2
