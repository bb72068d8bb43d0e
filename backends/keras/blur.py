"""timm's BlurPool2d (``ir.BlurPool``) in stock Keras layers without weights, so a ``.keras`` holding one loads in
plain Keras and counts no weight for it (the IR's blur has no tensors):

* reflect padding (Keras 3 has no reflection-padding layer): each mirrored column is a ``Cropping2D`` of the
  input (column ``p - i`` before, ``W - 2 - i`` after, for i = 0..p-1), joined to it by one ``Concatenate``
  along the width; then the same along the height of that result, which mirrors the corners as PyTorch's 2-D
  reflect does (it pads each axis in turn). Copies only: exact. ``constant`` padding is a ``ZeroPadding2D``;
* the filter: binomial taps of size k are the (k - 1)-fold repeated 2-tap average (0.5, 0.5) -- (1, 2, 1) / 4 is
  two of them -- so the k x k filter outer(taps, taps) at stride s is k - 1 ``AveragePooling2D(2)`` layers, all
  at stride 1 but the last at stride s (output i of the last covers rows s*i .. s*i + k - 1 of the padded input).
  The same weighted sum as the conv's, rounded in a different order (within float32 rounding, 1e-7 relative).
  Taps that are not binomial are refused (the spec makes none)."""

from __future__ import annotations

from ...errors import ResNetSpecError
from ...ir_blur import binomial_taps


def _reflect(L, x, p: int, base: str, namer):
    """``x`` (NHWC, static H and W) reflect-padded by ``p`` on every side."""
    for axis, what in ((2, "cols"), (1, "rows")):
        n = x.shape[axis]
        sides = []
        for side, keep in (("first", [p - i for i in range(p)]), ("last", [n - 2 - i for i in range(p)])):
            crops = []
            for j, c in enumerate(keep):  # the one row/column at index c: cut c before it, n - 1 - c after
                span = (c, n - 1 - c)
                crops.append(L.Cropping2D(((0, 0), span) if axis == 2 else (span, (0, 0)),
                                          name=namer(f"{base}.reflect_{what}_{side}{j}"))(x))
            sides.append(crops)
        x = L.Concatenate(axis=axis, name=namer(f"{base}.pad_reflect_{what}"))(sides[0] + [x] + sides[1])
    return x


def blur_layers(op, x, name: str, namer, L):
    from .names import canonical_name

    if tuple(op.taps) != binomial_taps(op.kernel) or op.kernel < 2:
        raise ResNetSpecError(f"keras: the blur pool {op.name} has taps {op.taps}, not binomial; only binomial "
                              "filters are lowered (as repeated 2x2 averages)")
    base = canonical_name(name)
    if op.padding and op.pad_mode == "reflect":
        x = _reflect(L, x, op.padding, base, namer)
    elif op.padding:
        x = L.ZeroPadding2D(op.padding, name=namer(f"{base}.pad"))(x)
    for i in range(op.kernel - 2):
        x = L.AveragePooling2D(2, strides=1, padding="valid", name=namer(f"{base}.blur{i}"))(x)
    return L.AveragePooling2D(2, strides=op.stride, padding="valid", name=name)(x)
