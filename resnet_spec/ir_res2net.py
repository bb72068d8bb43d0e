"""Res2Net's hierarchical split convolutions (timm ``Bottle2neck``): one composite IR op.

Kept apart from :mod:`resnet_spec.ir` (which imports it and lists it in ``OP_TYPES``); this module does not
import ``ir``. Shapes are ``(channels, height, width)`` for one image.
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple  # (C, H, W)

_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Res2Net:
    """What replaces a bottleneck's 3x3 conv + BN + ReLU in Res2Net (timm ``Bottle2neck``).

    The input (``scale * width`` channels, conv1's output after bn1 and its ReLU) is split along the
    channels into ``scale`` groups of ``width``. Split ``i < scale - 1`` goes through its own conv
    ``convs.i`` (``kernel`` x ``kernel``, ``stride``, symmetric zero ``padding``, ``dilation``, ``groups``,
    a bias only where ``bias``; weight ``(width, width / groups, k, k)``), BN ``bns.i`` (``eps``, ``momentum``; absent when not ``norm``) and a ReLU.
    With ``cascade`` the conv's input is split ``i`` plus the previous conv's output (for ``i > 0``);
    without it (a block that changes the shape: timm's ``is_first``) every conv reads its own split only.
    The last split is passed through unchanged (``last`` 'pass'), or average pooled (``last`` 'pool':
    ``pool_kernel``, ``pool_stride``, symmetric ``pool_padding``, ``pool_count_include_pad``, floor
    mode), so that it matches the convs' strided output. The outputs are concatenated in split order.

    ``name`` is the block's name: the tensors are the block's ``convs.i`` and ``bns.i``, timm's names
    (``layer1.0.convs.0.weight``, ``layer1.0.bns.0.running_var``).
    """

    name: str
    scale: int
    width: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int
    cascade: bool
    last: str  # "pass" | "pool"
    pool_kernel: int
    pool_stride: int
    pool_padding: int
    pool_count_include_pad: bool
    eps: float
    momentum: float
    in_shape: Shape
    out_shape: Shape
    bias: bool = False  # the split convs' bias (True only once a backend folded the BNs into them)
    norm: bool = True  # whether bns.i follow the convs (False once folded)

    @property
    def convs(self) -> int:
        """How many splits have a conv: ``scale - 1``."""
        return self.scale - 1

    @property
    def split_in_shape(self) -> Shape:
        return (self.width, *self.in_shape[1:])

    @property
    def split_out_shape(self) -> Shape:
        return (self.width, *self.out_shape[1:])

    def conv_name(self, i: int) -> str:
        return f"{self.name}.convs.{i}"

    def bn_name(self, i: int) -> str:
        return f"{self.name}.bns.{i}"

    @property
    def pool_name(self) -> str:
        return f"{self.name}.pool"

    def tensors(self):
        w, k = self.width, self.kernel
        for i in range(self.convs):
            yield f"{self.conv_name(i)}.weight", (w, w // self.groups, k, k), True
            if self.bias:
                yield f"{self.conv_name(i)}.bias", (w,), True
        for i in range(self.convs if self.norm else 0):
            for leaf in _BN_LEAVES:
                yield f"{self.bn_name(i)}.{leaf}", (w,), leaf in ("weight", "bias")

    @property
    def macs(self) -> int:
        _, h, w = self.out_shape
        return self.convs * self.width * h * w * (self.width // self.groups) * self.kernel * self.kernel


def res2net_op(name: str, scale: int, width: int, conv: tuple, first: bool, bn: tuple, in_shape: Shape) -> Res2Net:
    """timm's ``Bottle2neck`` splits: 3x3 convs (``conv`` = (stride, dilation, groups)) with padding =
    dilation, BNs ``bn`` = (eps, momentum); ``first`` (a strided block, or one whose shortcut projects)
    turns the cascade off and pools the last split with timm's ``AvgPool2d(3, stride, padding=1)``
    (count_include_pad: PyTorch's default, True)."""
    (stride, dilation, groups), (eps, momentum) = conv, bn
    _, h, w = in_shape
    # a 3x3 conv padded by its dilation, and the 3x3 pool padded by 1: both give floor((n - 1) / stride) + 1
    oh, ow = ((n - 1) // stride + 1 for n in (h, w))
    return Res2Net(name, scale, width, 3, stride, dilation, dilation, groups, not first,
                   "pool" if first else "pass", 3 if first else 0, stride if first else 0, 1 if first else 0,
                   first, eps, momentum, in_shape, (scale * width, oh, ow))
