"""ResNeSt's split attention as a torch module (ir.SplitAttention), its parameters named as timm's
(``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``). The standalone ``.py`` copies this class
(``backends/torch/source.py`` ``HELPER_CLASSES``)."""

from __future__ import annotations

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None


def split_attention_args(op) -> tuple:
    """The :class:`SplitAttention` constructor's arguments for an ``ir.SplitAttention`` (torch and the .py)."""
    return (op.in_channels, op.channels, (op.kernel, op.stride, op.padding, op.dilation), op.groups, op.radix,
            op.attn_channels, (op.eps, op.momentum))


if torch is not None:

    class SplitAttention(nn.Module):
        """u = relu(bn0(conv(x))) read as (radix, channels); gate = softmax across the radix of
        fc2(relu(bn1(fc1(mean_hw(sum_r u_r))))) read as (groups, radix, channels / groups) (a sigmoid when
        radix is 1); out = sum_r gate_r * u_r."""

        def __init__(self, in_channels, channels, conv, groups, radix, attn, bn):
            """``conv``: the 3x3 conv's (kernel, stride, padding, dilation); ``bn``: both BNs' (eps, momentum)."""
            super().__init__()
            self.radix, self.groups, mid = radix, groups, channels * radix
            (kernel, stride, padding, dilation), (eps, momentum) = conv, bn
            self.conv = nn.Conv2d(in_channels, mid, kernel, stride, padding, dilation, groups=groups * radix,
                                  bias=False)
            self.bn0 = nn.BatchNorm2d(mid, eps=eps, momentum=momentum)
            self.act0 = nn.ReLU()  # modules, so that parity --train sees every ReLU call
            self.fc1 = nn.Conv2d(channels, attn, 1, groups=groups)
            self.bn1 = nn.BatchNorm2d(attn, eps=eps, momentum=momentum)
            self.act1 = nn.ReLU()
            self.fc2 = nn.Conv2d(attn, mid, 1, groups=groups)

        def forward(self, x):
            u = self.act0(self.bn0(self.conv(x)))
            n, _, h, w = u.shape
            splits = u.view(n, self.radix, -1, h, w)
            a = self.fc2(self.act1(self.bn1(self.fc1(splits.sum(1).mean((2, 3), keepdim=True)))))
            if self.radix > 1:
                gate = torch.softmax(a.view(n, self.groups, self.radix, -1).transpose(1, 2), dim=1)
            else:
                gate = torch.sigmoid(a)
            return (splits * gate.reshape(n, self.radix, -1, 1, 1)).sum(1)
