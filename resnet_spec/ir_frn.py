"""IR ops of the normalization-activation layers that hold their own non-linearity: Filter Response
Normalization with a thresholded linear unit (timm ``FilterResponseNormTlu2d``) and EvoNorm-S0 (timm
``EvoNorm2dS0``). Neither keeps running statistics: training and inference compute the same thing.

Kept apart from :mod:`resnet_spec.ir` (which imports this module and lists both ops in ``ir.OP_TYPES``);
this module does not import it. Every fact that decides the numbers is a field. The non-linearity is part of
the op (``act``): where the spec's norm is followed by a ReLU the resolver folds that ReLU into the op
(:func:`resnet_spec.resolve_frn.fold_acts`), as timm's norm-act layers do; a norm not followed by one (a v1
block's last norm, a projection's) is the op with ``act`` False -- timm's ``apply_act=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple  # (C, H, W)


@dataclass(frozen=True)
class FRN:
    """Filter Response Normalization: ``y = x * rsqrt(mean_{H,W}(x^2) + eps) * weight + bias`` per sample and
    channel (the mean of the squares: no centering), then with ``act`` the TLU ``max(y, tau)`` (a learned
    threshold per channel: ``{name}.tau``). ``eps`` is a constant (``eps_learnable`` False: timm's
    FilterResponseNormTlu2d holds it as a float, not a parameter)."""

    name: str
    channels: int
    eps: float
    act: bool
    in_shape: Shape
    out_shape: Shape
    eps_learnable: bool = False

    def tensors(self):
        yield f"{self.name}.weight", (self.channels,), True
        yield f"{self.name}.bias", (self.channels,), True
        if self.act:
            yield f"{self.name}.tau", (self.channels,), True


@dataclass(frozen=True)
class EvoNormS0:
    """EvoNorm-S0 (timm EvoNorm2dS0): with ``act``, ``y = x * sigmoid(v * x) / sqrt(var_g(x) + eps) * weight
    + bias``, ``var_g`` the variance (``variance`` 'biased': the mean of the squared deviations from the group
    mean) over each group of ``channels // groups`` consecutive channels and all of H and W, per sample; ``v``
    per channel (``{name}.v``). Without ``act`` (timm's ``apply_act=False``) it is the affine alone:
    ``y = x * weight + bias``, no normalization."""

    name: str
    channels: int
    groups: int
    eps: float
    act: bool
    in_shape: Shape
    out_shape: Shape
    variance: str = "biased"

    def tensors(self):
        yield f"{self.name}.weight", (self.channels,), True
        yield f"{self.name}.bias", (self.channels,), True
        if self.act:
            yield f"{self.name}.v", (self.channels,), True


def frn_numpy(op: FRN, x, w: dict):
    """The op on an NCHW float array ``x`` (numpy, float64 inside): the reference formula of tests and readers."""
    import numpy as np

    shape = (1, -1, 1, 1)
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x * x).mean(axis=(2, 3), keepdims=True) + op.eps)
    y = y * w[f"{op.name}.weight"].reshape(shape) + w[f"{op.name}.bias"].reshape(shape)
    return np.maximum(y, w[f"{op.name}.tau"].reshape(shape)) if op.act else y


def evonorm_s0_numpy(op: EvoNormS0, x, w: dict):
    """EvoNorm-S0 on an NCHW float array ``x`` (numpy, float64 inside)."""
    import numpy as np

    shape = (1, -1, 1, 1)
    x = np.asarray(x, np.float64)
    if op.act:
        n, c, h, wd = x.shape
        g = x.reshape(n, op.groups, -1)
        std = np.sqrt(g.var(axis=2, keepdims=True) + op.eps)
        std = np.broadcast_to(std, g.shape).reshape(x.shape)
        x = x / (1.0 + np.exp(-x * w[f"{op.name}.v"].reshape(shape))) / std
    return x * w[f"{op.name}.weight"].reshape(shape) + w[f"{op.name}.bias"].reshape(shape)
