"""One BatchNorm folded into the convolution before it: with ``s = gamma / sqrt(running_var + eps)`` per output
channel, ``W' = W * s`` and ``b' = (b - running_mean) * s + beta``, computed in float64 and rounded to ``dtype``
once. The one arithmetic :mod:`.fold` and the composite ops' folds (ResNeSt, SKNet, Res2Net) all use."""

from __future__ import annotations

import numpy as np

from ... import ir


def fold_bn(weights, out: dict, conv: str, bn: str, eps: float, conv_bias: bool, dtype) -> None:
    """Fold BN ``bn`` into conv ``conv`` (``conv_bias``: the conv has a bias of its own): ``out`` gets
    ``<conv>.weight`` and ``<conv>.bias`` and loses the BN's tensors."""
    gamma, beta, mean, var = (np.asarray(weights[f"{bn}.{leaf}"], np.float64) for leaf in ir.BN_LEAVES)
    s = gamma / np.sqrt(var + eps)
    w = weights[f"{conv}.weight"]
    b = np.asarray(weights[f"{conv}.bias"], np.float64) if conv_bias else np.zeros(w.shape[0])
    # multiplied in float64 and rounded once, in one buffered pass (no float64 copy of the weight)
    out[f"{conv}.weight"] = np.multiply(w, s[:, None, None, None], dtype=np.float64,
                                        out=np.empty(w.shape, dtype), casting="same_kind")
    out[f"{conv}.bias"] = ((b - mean) * s + beta).astype(dtype)
    for leaf in ir.BN_LEAVES:
        out.pop(f"{bn}.{leaf}", None)
