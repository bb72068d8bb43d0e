"""PyTorch modules of SKNet's selective kernel (``ir.SelectiveKernel``): the same parameter names as timm's
``SelectiveKernel`` (``paths.<i>.conv``, ``paths.<i>.bn``, ``attn.fc_reduce``, ``attn.bn``, ``attn.fc_select``).
Written from the IR's facts; the ``.py`` source copies these classes (``backends/torch/source.py``)."""

from __future__ import annotations

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None


if torch is not None:

    class ConvNorm(nn.Module):
        """bn(conv(x)) under the names ``conv`` and ``bn`` (timm's ConvNormAct without its activation)."""

        def __init__(self, conv, bn):
            super().__init__()
            self.conv, self.bn = conv, bn

        def forward(self, x):
            return self.bn(self.conv(x))

    class SelectiveKernelPath(nn.Module):
        """relu(bn(conv(x))): one path (timm's ConvNormAct)."""

        def __init__(self, conv, bn):
            super().__init__()
            self.conv, self.bn, self.act = conv, bn, nn.ReLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class SelectiveKernelAttn(nn.Module):
        """softmax over the paths of fc_select(relu(bn(fc_reduce(mean_hw(sum over paths)))))."""

        def __init__(self, channels, paths, attn_channels, eps, momentum):
            super().__init__()
            self.paths = paths
            self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False)
            self.bn = nn.BatchNorm2d(attn_channels, eps=eps, momentum=momentum)
            self.act = nn.ReLU()
            self.fc_select = nn.Conv2d(attn_channels, channels * paths, 1, bias=False)

        def forward(self, x):  # x: (B, paths, C, H, W)
            s = self.fc_select(self.act(self.bn(self.fc_reduce(x.sum(1).mean((2, 3), keepdim=True)))))
            return torch.softmax(s.view(s.shape[0], self.paths, -1, 1, 1), dim=1)

    class SelectiveKernel(nn.Module):
        """Paths of conv + BN + ReLU (each on its ``slices`` of the input channels), attention across them,
        the paths' weighted sum. ``convs``: per path (kernel, padding, dilation); ``slices``: per path
        (start, stop) of the input channels; ``norm``: every BN's (eps, momentum)."""

        def __init__(self, in_per_path, channels, convs, slices, stride, groups, attn_channels, norm):
            super().__init__()
            self.slices = tuple(tuple(s) for s in slices)
            self.paths = nn.ModuleList(
                SelectiveKernelPath(nn.Conv2d(in_per_path, channels, k, stride, p, d, groups, bias=False),
                                    nn.BatchNorm2d(channels, eps=norm[0], momentum=norm[1]))
                for k, p, d in convs)
            self.attn = SelectiveKernelAttn(channels, len(self.paths), attn_channels, *norm)

        def forward(self, x):
            y = torch.stack([path(x[:, a:b]) for path, (a, b) in zip(self.paths, self.slices)], dim=1)
            return (y * self.attn(y)).sum(1)

        def extra_repr(self):
            return f"slices={self.slices}"


def from_ir(op):
    """The module of an ``ir.SelectiveKernel``."""
    convs = tuple(zip(op.kernels, op.paddings, op.dilations))
    slices = tuple(op.path_slice(i) for i in range(op.num_paths))
    return SelectiveKernel(op.path_in_channels, op.out_channels, convs, slices, op.stride, op.groups,
                           op.attn_channels, (op.eps, op.momentum))
