"""The ONNX backend's BatchNorm folding: a pure pass over the IR and the canonical weights.

For a BatchNorm directly after a convolution, with ``s = gamma / sqrt(running_var + eps)`` per
output channel::

    bn(conv(x)) = (W * x + b - running_mean) * s + beta
                = (W * s) * x + ((b - running_mean) * s + beta)

so the convolution with ``W' = W * s`` (each output channel's filter scaled by its ``s``) and
``b' = (b - running_mean) * s + beta`` (``b = 0`` for a conv without bias) computes the same function
in real arithmetic, and the BN disappears from the graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ... import ir
from .bn_fold import fold_bn
from .resnest import fold_split_attention
from . import res2net
from . import sknet


def fold_batchnorm(net: ir.Network, weights, dtype=np.float32) -> tuple:
    """Fold every BatchNorm that directly follows a Conv into that Conv; return ``(net, weights)``.

    With ``s = gamma / sqrt(running_var + eps)`` per output channel::

        W' = W * s            (each output channel's filter scaled by its s)
        b' = (b - running_mean) * s + beta      (b = 0 for a conv without bias)

    so ``conv'(x) = bn(conv(x))`` exactly in real arithmetic. The arithmetic is done in float64 and
    cast to ``dtype`` once (float32; float64 for backends.onnx.fp16, which rounds to float16 itself). The folded Conv keeps its canonical name and gets ``bias=True``
    (``<conv>.weight``/``<conv>.bias``); the BN op and its four tensors are removed. A BN that follows
    anything else (a block's pre-activation, the head's ``bn_final``) is left in place. The returned
    network is a new IR; ``net`` and ``weights`` are not modified.
    """
    out = dict(weights)

    def fold_seq(ops: tuple) -> tuple:
        res = []
        for op in ops:
            if isinstance(op, ir.SplitAttention):  # its own BNs, folded inside it
                res.append(fold_split_attention(op, weights, out, dtype))
                continue
            prev = res[-1] if res else None
            if isinstance(op, ir.SelectiveKernel):  # its own BNs, after its own convs
                res.append(sknet.fold(op, weights, out, dtype))
                continue
            if isinstance(op, ir.BatchNorm) and isinstance(prev, ir.Conv):
                fold_bn(weights, out, prev.name, op.name, op.eps, prev.bias, dtype)
                res[-1] = dataclasses.replace(prev, bias=True, out_shape=op.out_shape)
                continue
            if isinstance(op, ir.Res2Net):  # its split convs' BNs, folded the same way
                op = res2net.fold(op, weights, out, dtype)
            res.append(op)
        return tuple(res)

    blocks = tuple(dataclasses.replace(b, pre=fold_seq(b.pre), main=fold_seq(b.main),
                                       shortcut=fold_seq(b.shortcut), post=fold_seq(b.post))
                   for b in net.blocks)
    folded = dataclasses.replace(net, stem=fold_seq(net.stem), blocks=blocks, head=fold_seq(net.head))
    return folded, out
