"""PyTorch modules of the norm-act ops (resnet_spec.ir_frn): Filter Response Normalization with its TLU and
EvoNorm-S0. Parameter names are timm's (``weight``, ``bias``, ``tau``; ``weight``, ``bias``, ``v``).
``backends/torch/source_ops.py`` copies both classes into a standalone ``.py``."""

from __future__ import annotations

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    nn = None


if nn is not None:

    class FilterResponseNorm2d(nn.Module):
        """x * rsqrt(mean over H, W of x^2 + eps) * weight + bias per channel, then (``act``) max(., tau)."""

        def __init__(self, channels: int, eps: float, act: bool):
            super().__init__()
            self.eps, self.act = eps, act
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
            self.tau = nn.Parameter(torch.zeros(channels)) if act else None

        def forward(self, x):
            shape = (1, -1, 1, 1)
            x = x * torch.rsqrt(x.square().mean(dim=(2, 3), keepdim=True) + self.eps)
            x = x * self.weight.view(shape) + self.bias.view(shape)
            return torch.maximum(x, self.tau.view(shape)) if self.tau is not None else x

    class EvoNormS0(nn.Module):
        """With ``act``: x * sigmoid(v * x) / sqrt(biased variance over each group of channels and H, W + eps),
        then * weight + bias per channel; without: the affine alone."""

        def __init__(self, channels: int, groups: int, eps: float, act: bool):
            super().__init__()
            self.groups, self.eps = groups, eps
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
            self.v = nn.Parameter(torch.ones(channels)) if act else None

        def forward(self, x):
            shape = (1, -1, 1, 1)
            if self.v is not None:  # the batch as -1: an exported program keeps no symbolic size in a shape
                _, c, h, w = x.shape
                groups = (-1, self.groups, c // self.groups, h, w)
                std = (x.reshape(groups).var(dim=(2, 3, 4), unbiased=False, keepdim=True) + self.eps).sqrt()
                x = ((x * torch.sigmoid(x * self.v.view(shape))).reshape(groups) / std).reshape(-1, c, h, w)
            return x * self.weight.view(shape) + self.bias.view(shape)
