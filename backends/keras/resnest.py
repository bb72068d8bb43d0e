"""Keras (stock layers only) for ResNeSt's split attention (ir.SplitAttention), NHWC: the conv, bn0, fc1,
bn1, fc2 are the layers of plain IR ops (``weights.split_attention_parts``), named ``layer1-0-conv2-conv``...;
the radix splits are a Reshape to (H*W, radix, C) and one Cropping2D per split, summed by Add; the softmax
across the radix is a Permute putting the radix last and Activation('softmax')."""

from __future__ import annotations

from ... import ir
from .names import canonical_name, layer_name as _keras
from .weights import split_attention_parts


def split_attention_layers(op: ir.SplitAttention, x, name, namer, L, conv_layers, batch_norm):
    """The layers of ``op`` from ``x``; ``L`` is keras.layers, ``conv_layers`` and ``batch_norm`` the model's
    lowerings of an ir.Conv and an ir.BatchNorm (custom or stock BN). The last layer is named ``name``."""
    base, r, c, g = canonical_name(name), op.radix, op.channels, op.groups
    _, h, w = op.out_shape
    conv, bn0, fc1, bn1, fc2 = split_attention_parts(op)
    u = conv_layers(conv, x, _keras(conv.name), namer)
    u = L.Activation("relu", name=namer(f"{base}.act0"))(batch_norm(bn0, u, _keras(bn0.name), namer))
    splits = u
    if r > 1:
        splits = L.Reshape((h * w, r, c), name=namer(f"{base}.splits"))(u)
        u = _radix_sum(splits, r, f"{base}.sum", namer, L)
    s = L.GlobalAveragePooling2D(keepdims=True, name=namer(f"{base}.pool"))(u)
    s = conv_layers(fc1, s, _keras(fc1.name), namer)
    s = L.Activation("relu", name=namer(f"{base}.act1"))(batch_norm(bn1, s, _keras(bn1.name), namer))
    a = conv_layers(fc2, s, _keras(fc2.name), namer)
    if r == 1:
        a = L.Activation("sigmoid", name=namer(f"{base}.gate"))(a)
        return L.Multiply(name=name)([splits, a])
    a = L.Reshape((g, r, c // g), name=namer(f"{base}.to_radix"))(a)
    a = L.Permute((1, 3, 2), name=namer(f"{base}.radix_last"))(a)  # (groups, C / groups, radix)
    a = L.Activation("softmax", name=namer(f"{base}.gate"))(a)
    a = L.Permute((3, 1, 2), name=namer(f"{base}.radix_first"))(a)  # (radix, groups, C / groups)
    a = L.Reshape((1, r, c), name=namer(f"{base}.to_splits"))(a)
    y = L.Multiply(name=namer(f"{base}.scale"))([splits, a])
    y = _radix_sum(y, r, f"{base}.weighted_sum", namer, L)
    return L.Reshape((h, w, c), name=name)(y)


def _radix_sum(splits, r, base, namer, L):
    """(H*W, radix, C) -> (H*W, 1, C): each split cropped out (Cropping2D), summed in radix order (Add)."""
    parts = [L.Cropping2D(((0, 0), (i, r - 1 - i)), name=namer(f"{base}.split{i}"))(splits) for i in range(r)]
    return L.Add(name=namer(base))(parts)
