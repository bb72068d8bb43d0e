"""The selective-kernel convolution of SKNet (timm ``SelectiveKernel``) as one composite IR op.

Framework-free and independent of :mod:`resnet_spec.ir` (which imports it and lists the op in
``ir.OP_TYPES``). Every fact that decides the numbers is a field; no backend derives any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple  # (C, H, W)

#: The canonical tensor suffixes of a BatchNorm (as ``ir.BN_LEAVES``), and which are trainable.
_BN_LEAVES = (("weight", True), ("bias", True), ("running_mean", False), ("running_var", False))


@dataclass(frozen=True)
class SelectiveKernel:
    """timm's ``SelectiveKernel``: ``P`` parallel paths, path ``i`` being conv (``kernels[i]``, ``stride``,
    symmetric zero padding ``paddings[i]``, ``dilations[i]``, ``groups``, no bias) + BN + ReLU, all with
    ``out_channels`` outputs; each path reads the whole input, or with ``split_input`` its ``i``-th of
    ``P`` equal channel slices. Then attention over the paths::

        u = sum_i y_i;  s = mean_hw(u)                   (sum over the paths first, then the mean)
        z = relu(bn(fc_reduce(s)))                        (1x1 conv, no bias, attn_channels outputs)
        a = softmax(fc_select(z).view(P, C), axis=paths)  (1x1 conv, no bias, P * C outputs, path-major)
        out = sum_i a_i * y_i

    Tensor names are timm's: ``<name>.paths.<i>.conv.weight``, ``<name>.paths.<i>.bn.*``,
    ``<name>.attn.fc_reduce.weight``, ``<name>.attn.bn.*``, ``<name>.attn.fc_select.weight``. Every BN has
    ``eps`` and ``momentum``. The facts that decided ``kernels``/``dilations`` and ``attn_channels``, kept
    for every reader (the lowering reads only the fields above): ``given_kernels`` and ``keep_3x3`` (timm
    turns a k x k path into a 3x3 one with dilation ``dilation * (k - 1) // 2``), ``rd_ratio`` and
    ``rd_divisor`` (``attn_channels = make_divisible(out_channels * rd_ratio, rd_divisor)``, timm's rounding
    with its 0.9 round-up limit). ``folded``: the BNs are folded into the convs before them (each path's conv
    and ``fc_reduce`` then have a ``.bias`` and there are no BN tensors), as the ONNX backend's BN-folding
    pass makes it; the resolver never sets it.
    """

    name: str
    in_channels: int
    out_channels: int
    kernels: tuple
    dilations: tuple
    paddings: tuple
    stride: int
    groups: int
    split_input: bool
    attn_channels: int
    eps: float
    momentum: float
    in_shape: Shape
    out_shape: Shape
    given_kernels: tuple = ()
    keep_3x3: bool = True
    rd_ratio: float = 0.0625
    rd_divisor: int = 8
    folded: bool = False

    @property
    def num_paths(self) -> int:
        return len(self.kernels)

    @property
    def path_in_channels(self) -> int:
        """The input channels each path's conv reads (a slice of ``in_channels`` with ``split_input``)."""
        return self.in_channels // self.num_paths if self.split_input else self.in_channels

    def path_slice(self, i: int) -> tuple:
        """``(start, stop)``: the input channels path ``i`` reads."""
        if not self.split_input:
            return 0, self.in_channels
        n = self.path_in_channels
        return i * n, (i + 1) * n

    def path_names(self, i: int) -> tuple:
        """``(conv, bn)``: the canonical names of path ``i``'s conv and BN."""
        return f"{self.name}.paths.{i}.conv", f"{self.name}.paths.{i}.bn"

    @property
    def attn_names(self) -> tuple:
        """``(fc_reduce, bn, fc_select)``: the canonical names of the attention's layers."""
        return f"{self.name}.attn.fc_reduce", f"{self.name}.attn.bn", f"{self.name}.attn.fc_select"

    def tensors(self):
        c, a, p = self.out_channels, self.attn_channels, self.num_paths
        for i, k in enumerate(self.kernels):
            conv, bn = self.path_names(i)
            yield f"{conv}.weight", (c, self.path_in_channels // self.groups, k, k), True
            yield from self._norm(conv, bn, c)
        reduce, bn, select = self.attn_names
        yield f"{reduce}.weight", (a, c, 1, 1), True
        yield from self._norm(reduce, bn, a)
        yield f"{select}.weight", (p * c, a, 1, 1), True

    def _norm(self, conv: str, bn: str, channels: int):
        if self.folded:
            yield f"{conv}.bias", (channels,), True
            return
        for leaf, trainable in _BN_LEAVES:
            yield f"{bn}.{leaf}", (channels,), trainable

    @property
    def macs(self) -> int:
        c, h, w = self.out_shape
        paths = sum(c * h * w * (self.path_in_channels // self.groups) * k * k for k in self.kernels)
        return paths + c * self.attn_channels + self.attn_channels * c * self.num_paths


def sk_paths(kernels, dilation: int, keep_3x3: bool, stride: int) -> tuple:
    """``(kernels, dilations, paddings)`` of timm's paths from the ``kernels`` given: with ``keep_3x3`` every
    path is 3x3 with dilation ``dilation * (k - 1) // 2``, else kernel ``k`` with ``dilation``; padding is
    timm's ``((stride - 1) + dilation * (k - 1)) // 2``."""
    if keep_3x3:
        dils, ks = tuple(dilation * (k - 1) // 2 for k in kernels), (3,) * len(kernels)
    else:
        dils, ks = (dilation,) * len(kernels), tuple(kernels)
    pads = tuple(((stride - 1) + d * (k - 1)) // 2 for k, d in zip(ks, dils))
    return ks, dils, pads


def sk_attn_channels(out_channels: int, rd_ratio: float, rd_divisor: int) -> int:
    """timm's ``make_divisible(out_channels * rd_ratio, rd_divisor)``: the nearest multiple of
    ``rd_divisor`` (half up), at least ``rd_divisor``, one ``rd_divisor`` more where that is below 0.9 of
    the value."""
    v = out_channels * rd_ratio
    new = max(rd_divisor, int(v + rd_divisor / 2) // rd_divisor * rd_divisor)
    return new + rd_divisor if new < 0.9 * v else new


def sk_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1

