"""IR ops of normalization without running statistics: GroupNorm, and weight-standardized convolution.

Kept apart from :mod:`resnet_spec.ir` (which imports this module and lists both ops in ``ir.OP_TYPES``);
this module does not import it. Every fact that decides the numbers is a field: the groups and epsilon of
a GroupNorm; the epsilon of a weight standardization and which variance it divides by (``variance``:
'biased', the mean of the squared deviations -- what timm's StdConv2d computes with ``F.batch_norm`` on the
weight reshaped to one channel per output filter).
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple  # (C, H, W)


@dataclass(frozen=True)
class GroupNorm:
    """y = (x - mean_g) / sqrt(var_g + eps) * weight + bias per sample, mean and biased variance taken
    over each group of ``channels // groups`` consecutive channels and all of H and W (PyTorch's
    ``F.group_norm``, timm's GroupNorm/GroupNormAct); weight and bias per channel. No running statistics:
    training and inference compute the same thing."""

    name: str
    channels: int
    groups: int
    eps: float
    in_shape: Shape
    out_shape: Shape

    def tensors(self):
        yield f"{self.name}.weight", (self.channels,), True
        yield f"{self.name}.bias", (self.channels,), True


@dataclass(frozen=True)
class StdConv:
    """2-D convolution with weight standardization (timm StdConv2d, BiT): every output filter ``w[o]`` of
    the weight ``(out, in/groups, k, k)`` is replaced by ``(w[o] - mean(w[o])) / sqrt(var(w[o]) + eps)``
    before the convolution, at run time (the stored weight is the raw one; gradients flow through the
    standardization). ``variance`` is 'biased' (divide by the filter's ``in/groups * k * k`` entries).
    Otherwise as ``ir.Conv``: symmetric zero padding, dilation, groups, optional bias (not standardized)."""

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
    eps: float
    variance: str = "biased"

    def tensors(self):
        yield f"{self.name}.weight", (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel), True
        if self.bias:
            yield f"{self.name}.bias", (self.out_channels,), True

    @property
    def macs(self) -> int:
        c, h, w = self.out_shape
        return c * h * w * (self.in_channels // self.groups) * self.kernel * self.kernel


def standardize(weight, eps: float, xp=None):
    """``weight`` (out, ...) standardized per output filter with the biased variance (numpy, or the array
    module ``xp`` given): the one formula every precomputing reader uses (ONNX file writers, tests)."""
    import numpy as np

    xp = xp or np
    flat = weight.reshape(weight.shape[0], -1)
    mean = flat.mean(axis=1, keepdims=True)
    var = ((flat - mean) ** 2).mean(axis=1, keepdims=True)
    return ((flat - mean) / xp.sqrt(var + eps)).reshape(weight.shape)
