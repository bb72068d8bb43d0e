"""timm's BlurPool2d anti-aliasing as a torch module (``ir.BlurPool``). Its fixed filter is a constant tensor
(timm's is a non-persistent buffer), so the module's ``state_dict`` holds nothing and a timm ``state_dict`` loads
unchanged. The
standalone ``.py`` copies this class (``backends/torch/source_ops.py`` ``HELPER_CLASSES``)."""

from __future__ import annotations

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None


def blur_pool_args(op) -> tuple:
    """The :class:`BlurPool2d` constructor's arguments for an ``ir.BlurPool`` (torch and the .py)."""
    return (op.channels, tuple(op.taps), op.stride, op.padding, op.pad_mode)


if torch is not None:

    class BlurPool2d(nn.Module):
        """pad(x) in ``pad_mode`` by ``padding`` on every side, then each channel convolved with
        outer(taps, taps) at ``stride`` (groups = channels, no bias)."""

        def __init__(self, channels, taps, stride, padding, pad_mode):
            super().__init__()
            self.channels, self.stride, self.padding, self.pad_mode = channels, stride, padding, pad_mode
            t = torch.tensor(taps, dtype=torch.float32)
            # a constant, not a buffer: in no state_dict (timm's is non-persistent) and not counted among the
            # model's buffers (the IR's are the BN statistics); _apply moves and casts it with the module
            self.filt = (t[:, None] * t[None, :]).expand(channels, 1, len(taps), len(taps)).contiguous()

        def _apply(self, fn, recurse=True):
            self.filt = fn(self.filt)
            return super()._apply(fn, recurse)

        def forward(self, x):
            p = self.padding
            x = F.pad(x, (p, p, p, p), mode=self.pad_mode)
            return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)

        def extra_repr(self):
            return f"channels={self.channels}, stride={self.stride}, padding={self.padding}, pad_mode={self.pad_mode}"
