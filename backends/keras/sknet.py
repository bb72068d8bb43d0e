"""SKNet's selective kernel (``ir.SelectiveKernel``) in stock Keras layers (NHWC), so that the ``.keras``
file plain Keras loads holds it too. Each path's conv and BN, ``fc_reduce``, its BN and ``fc_select`` are
lowered as the plain ``ir.Conv``/``ir.BatchNorm`` they are (:func:`resnet_spec.sknet.sub_ops`, through the
caller's table: custom or stock BN). The rest:

* ``split_input``: ``Reshape`` to (H*W, C, 1), ``Cropping2D`` of the path's channels, ``Reshape`` back
  (data movement only);
* attention: ``Add`` of the paths, ``GlobalAveragePooling2D(keepdims)``, ..., ``Reshape`` to (P, C),
  ``Softmax(axis=1)`` (across the paths), per path ``Cropping1D`` of its row and ``Reshape`` to (1, 1, C),
  ``Multiply`` with the path, ``Add`` of the products.
"""

from __future__ import annotations

from ...sknet import sub_ops
from .names import canonical_name, layer_name


def layers(op, x, name, namer, table, L):
    """The Keras tensors of ``op`` on ``x``; ``table`` lowers the plain sub-ops, ``L`` is keras.layers."""
    base, (c_in, h, w) = canonical_name(name), op.in_shape
    paths, (reduce, bn, select) = sub_ops(op)
    flat = L.Reshape((h * w, c_in, 1), name=namer(f"{base}.split_flat"))(x) if op.split_input else None
    ys = []
    for i, (conv, pbn) in enumerate(paths):
        xi = x
        if op.split_input:
            a, b = op.path_slice(i)
            xi = L.Cropping2D(((0, 0), (a, c_in - b)), name=namer(f"{base}.paths.{i}.split"))(flat)
            xi = L.Reshape((h, w, b - a), name=namer(f"{base}.paths.{i}.split_back"))(xi)
        y = _sub(table, conv, xi, namer)
        y = y if pbn is None else _sub(table, pbn, y, namer)
        ys.append(L.Activation("relu", name=namer(relu_names(op, base)[i]))(y))
    u = L.Add(name=namer(f"{base}.sum"))(ys) if len(ys) > 1 else ys[0]
    s = L.GlobalAveragePooling2D(keepdims=True, name=namer(f"{base}.attn.pool"))(u)
    s = _sub(table, reduce, s, namer)
    s = s if bn is None else _sub(table, bn, s, namer)
    s = L.Activation("relu", name=namer(relu_names(op, base)[-1]))(s)
    s = _sub(table, select, s, namer)
    p, c = op.num_paths, op.out_channels
    s = L.Reshape((p, c), name=namer(f"{base}.attn.to_paths"))(s)
    s = L.Softmax(axis=1, name=namer(f"{base}.attn.softmax"))(s)
    weighted = []
    for i, y in enumerate(ys):
        a = L.Cropping1D((i, p - 1 - i), name=namer(f"{base}.attn.path{i}"))(s) if p > 1 else s
        a = L.Reshape((1, 1, c), name=namer(f"{base}.attn.path{i}.to_channels"))(a)
        weighted.append(L.Multiply(name=namer(f"{base}.paths.{i}.scale") if p > 1 else name)([y, a]))
    return L.Add(name=name)(weighted) if p > 1 else weighted[0]


def relu_names(op, base: str) -> list:
    """The canonical-style names of the op's ReLU layers in torch's call order: each path's, the attention's
    (``parity --train`` pairs them with the PyTorch model's ReLU calls)."""
    return [f"{base}.paths.{i}.act" for i in range(op.num_paths)] + [f"{base}.attn.act"]


def _sub(table, op, x, namer):
    return table[type(op)](op, x, layer_name(op.name), namer)
