"""BlurPool anti-aliasing (timm's ``BlurPool2d``, the ``resnetblur`` models) as one weightless IR op.

Kept out of :mod:`resnet_spec.ir` (which imports it), so this module imports nothing of the IR.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

Shape = tuple  # (C, H, W)

#: The padding modes a blur pool may have: 'reflect' (timm's default: the row/column next to the edge
#: mirrored, the edge itself not repeated, as torch ``F.pad(mode='reflect')`` and ONNX ``Pad(mode=reflect)``)
#: or 'constant' (zeros).
PAD_MODES = ("reflect", "constant")


def binomial_taps(size: int) -> tuple:
    """The 1-D binomial taps of a blur filter of ``size`` taps: C(size-1, k) / 2**(size-1), k = 0..size-1
    (size 3: 0.25, 0.5, 0.25). Dyadic rationals, exact in float32 and float16."""
    return tuple(comb(size - 1, k) / 2 ** (size - 1) for k in range(size))


@dataclass(frozen=True)
class BlurPool:
    """y = depthwise_conv(pad(x), outer(taps, taps), stride): a fixed low-pass filter, then the stride.

    ``pad`` adds ``padding`` rows and columns on every side in ``pad_mode`` (:data:`PAD_MODES`); the conv
    runs the same ``kernel x kernel`` filter, ``filter[i][j] = taps[i] * taps[j]``, over each of the
    ``channels`` channels alone (groups = channels), no bias. timm's ``BlurPool2d(channels, filt_size=3,
    stride=2)``: taps (0.25, 0.5, 0.25), padding ``((stride - 1) + (kernel - 1)) // 2`` = 1, reflect.

    It holds no tensors: timm keeps the filter as a non-persistent buffer (not in its ``state_dict``), and
    every backend makes it from ``taps`` (a constant, never a trained weight). ``macs`` count the depthwise
    conv's multiplies as timm's FLOP counter does.
    """

    name: str
    channels: int
    taps: tuple
    stride: int
    padding: int
    pad_mode: str
    in_shape: Shape
    out_shape: Shape

    @property
    def kernel(self) -> int:
        return len(self.taps)

    @property
    def filter(self) -> tuple:
        """The ``kernel x kernel`` filter as rows of Python floats (exact: products of dyadic taps)."""
        return tuple(tuple(a * b for b in self.taps) for a in self.taps)

    def tensors(self):
        return iter(())

    @property
    def macs(self) -> int:
        c, h, w = self.out_shape
        return c * h * w * self.kernel * self.kernel


def blur_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """A blur pool's output size along one axis: floor((n + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def blur_pool(name: str, shape: Shape, stride: int, size: int = 3, pad_mode: str = "reflect") -> BlurPool:
    """timm's ``BlurPool2d(channels, filt_size=size, stride=stride, pad_mode=pad_mode)`` over ``shape``:
    its padding is timm's ``get_padding(size, stride)``. The caller checks the sizes
    (:func:`blur_problem`)."""
    c, h, w = shape
    padding = ((stride - 1) + (size - 1)) // 2
    out = (c, blur_out(h, size, stride, padding), blur_out(w, size, stride, padding))
    return BlurPool(name, c, binomial_taps(size), stride, padding, pad_mode, shape, out)


def blur_problem(op: BlurPool) -> str | None:
    """Why ``op`` cannot run on its input, or None: reflect padding needs more rows and columns than it
    pads (a mirror of ``p`` rows reads rows 1..p), and the output must not be empty."""
    _, h, w = op.in_shape
    if op.pad_mode == "reflect" and op.padding >= min(h, w):
        return (f"the blur pool {op.name} reflect-pads {op.padding} on a {h}x{w} feature map, which needs more "
                f"than {op.padding} rows and columns; use a larger input.size")
    if min(op.out_shape[1:]) < 1:
        return f"the blur pool {op.name} shrinks a {h}x{w} feature map to nothing; use a larger input.size"
    return None
