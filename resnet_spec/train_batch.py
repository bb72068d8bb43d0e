"""The batch of ``parity --train`` (:func:`resnet_spec.train_parity.run_train`) when none is given.

A training-mode BatchNorm normalizes each channel over batch x height x width values. Where its map is 1x1
(the attention BN of SKNet's selective kernel and of ResNeSt's split attention, which normalize the pooled
vector; any BN of a network whose last maps shrink to 1x1), the default batch of 2 gives it 2 values per
channel: the normalized outputs are +-1 whatever the inputs, the variance of two nearly equal numbers is
ill-conditioned, and float32 legs that agree to 1e-6 elsewhere differ by 1e-4 to 2e-4 (skresnet34 at 32 px,
README). Such networks train at :data:`POINTWISE_BN_BATCH` by default, with a note saying why; an explicit
batch is honoured, with a warning when it is smaller.
"""

from __future__ import annotations

from . import ir
from .ir_resnest import SplitAttention
from .ir_sknet import SelectiveKernel

#: ``parity --train``'s batch without ``--batch``
DEFAULT_BATCH = 2
#: ... and where a training-mode BN normalizes a 1x1 map (skresnet34 at 32 px: 6/6 pairs, logits 2.3e-6)
POINTWISE_BN_BATCH = 8


def pointwise_bns(net: ir.Network) -> tuple:
    """Names of the BatchNorms of ``net`` that normalize a 1x1 map in training mode, in network order."""
    names = []
    for op in net.all_ops():
        if isinstance(op, SelectiveKernel) and not op.folded:
            names.append(op.attn_names[1])  # over the pooled paths' sum: always 1x1
        elif isinstance(op, SplitAttention) and not op.bn_folded:
            names.append(f"{op.name}.bn1")  # over the pooled splits' sum: always 1x1
        if tuple(getattr(op, "out_shape", (0, 0, 0))[1:]) != (1, 1):
            continue
        # the op's own BNs (a BatchNorm, a path's or split's BN) normalize its 1x1 output
        names += [t.name[:-len(".running_mean")] for t in _tensors(op) if t.name.endswith(".running_mean")
                  and t.name[:-len(".running_mean")] not in names]
    return tuple(names)


def _tensors(op):
    return (ir.TensorInfo(*t) for t in op.tensors()) if hasattr(op, "tensors") else ()


def train_batch(net: ir.Network, batch: int | None) -> tuple:
    """``(batch, notes)``: ``batch`` when given (with a ``warning:`` note when a BN over a 1x1 map gets fewer
    than :data:`POINTWISE_BN_BATCH` values per channel), else the default for ``net`` (with a ``note:``
    when it is raised)."""
    bns = pointwise_bns(net)
    if not bns or (batch is not None and batch >= POINTWISE_BN_BATCH):
        return (DEFAULT_BATCH if batch is None else batch), ()
    where = f"{len(bns)} training-mode BatchNorm(s) normalize a 1x1 map ({bns[0]}{', ...' if len(bns) > 1 else ''})"
    if batch is None:
        return POINTWISE_BN_BATCH, (f"note: batch {POINTWISE_BN_BATCH}, not {DEFAULT_BATCH}: {where}, so each "
                                    "channel's statistics come from the batch alone; --batch N overrides",)
    return batch, (f"warning: batch {batch}: {where}, {batch} values per channel in a training step, which "
                   f"amplifies float32 rounding (legs may differ by over 1e-4); --batch {POINTWISE_BN_BATCH} or "
                   "more avoids it",)
