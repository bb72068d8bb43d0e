"""Weight standardization computed beforehand: an inference-only rewrite of the IR for the files that
cannot (or should not) standardize at run time -- the float16 and int8 ONNX files (the standardized weight
rounded once, from float64) and the stock-layer ``.keras`` (Keras has no stock weight-standardized
convolution). Framework-free. The float32 ONNX graph, the torch modules and the Keras model of the parity
legs standardize at run time instead, so ``parity --train`` differentiates through it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import ir
from ..ir_norm import standardize


def standardize_convs(net: ir.Network, weights, dtype=np.float32) -> tuple:
    """``(net, weights)`` with every StdConv replaced by a Conv of the same facts whose weight is the
    standardized one, computed in float64 and rounded once to ``dtype`` (inference only: the stored weight
    is no longer the raw one). ``net`` and ``weights`` are not modified."""
    if not any(isinstance(op, ir.StdConv) for op in net.all_ops()):
        return net, weights
    out = None if weights is None else dict(weights)

    def plain(ops):
        res = []
        for op in ops:
            if isinstance(op, ir.StdConv):
                key = f"{op.name}.weight"
                if weights is not None:
                    out[key] = standardize(np.asarray(weights[key], np.float64), op.eps).astype(dtype)
                fields = {f.name: getattr(op, f.name) for f in dataclasses.fields(ir.Conv)}
                op = ir.Conv(**fields)
            res.append(op)
        return tuple(res)

    blocks = tuple(dataclasses.replace(b, pre=plain(b.pre), main=plain(b.main), shortcut=plain(b.shortcut),
                                       post=plain(b.post)) for b in net.blocks)
    return dataclasses.replace(net, stem=plain(net.stem), blocks=blocks, head=plain(net.head)), out
