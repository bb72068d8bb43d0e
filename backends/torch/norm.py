"""PyTorch modules of the ops without running statistics (resnet_spec.ir_norm): the weight-standardized
convolution. GroupNorm is ``nn.GroupNorm`` itself. ``backends/torch/source.py`` copies the class into a
standalone ``.py`` as it copies backend.py's helpers."""

from __future__ import annotations

try:
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    nn = None


if nn is not None:

    class StdConv2d(nn.Conv2d):
        """A Conv2d whose weight is standardized per output filter at every call: (w - mean) / sqrt(var + eps),
        the biased variance over the filter's entries (batch_norm in training mode on the weight seen as one
        sample of ``out`` channels; no running statistics are kept). Parameter names as nn.Conv2d's."""

        def __init__(self, *args, eps: float = 1e-6, **kwargs):
            super().__init__(*args, **kwargs)
            self.eps = eps

        def forward(self, x):
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                             momentum=0.0, eps=self.eps).reshape(self.weight.shape)
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
