"""Fresh, seeded weights: one initialiser per IR op type (:data:`INIT`), drawn from one random stream.

Names and shapes come from the IR (:meth:`resnet_spec.ir.Network.tensors`); convolution weights are
``(out, in/groups, kh, kw)`` and linear weights ``(out, in)`` as in PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ir
from .check import Weights


def init_weights(net: ir.Network, seed: int = 0, random_bn: bool = False) -> Weights:
    """A deterministic fresh weight set for ``net``.

    Convolutions: He et al. normal, fan-out mode, std = sqrt(2 / (out_channels * k * k)) as in
    torchvision. Linear and SE layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default). BN: gamma 1,
    beta 0, running mean 0, running var 1, and gamma 0 on each block's last BN with
    ``zero_init_last_bn``.

    ``random_bn=True`` is for parity checks: every BN gets gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1),
    mean ~ N(0, 0.1), var ~ U(0.5, 2) and biases are non-zero, so that every tensor matters. Each block's
    last BN gamma is divided by sqrt(number of blocks) so that very deep nets (ResNet-1202) keep finite,
    comparable activations in eval mode; ``zero_init_last_bn`` is ignored then.

    Each op's tensors come from its entry in :data:`INIT`, op by op in network order; one random stream
    is drawn from in :meth:`~resnet_spec.ir.Network.tensors` order, so a seed always gives the same weights.
    """
    return init_ops(net, net.all_ops(), seed, random_bn)


def init_ops(net: ir.Network, ops, seed: int = 0, random_bn: bool = False) -> Weights:
    """The tensors of ``ops`` (ops of ``net``) as :func:`init_weights` makes them, drawn in order from
    one stream seeded with ``seed`` (a new classifier: ``init_ops(net, [fc], seed)``)."""
    init = _Init(np.random.default_rng(seed), random_bn, frozenset(net.last_bn_of_blocks()),
                 net.zero_init_last_bn, 1.0 / math.sqrt(max(1, len(net.blocks))))
    out: Weights = {}
    for op in ops:
        arrays = ir.entry_for(INIT, op, "init_weights")(op, init)
        names = [name for name, _, _ in op.tensors()] if hasattr(op, "tensors") else []
        if list(arrays) != names:
            raise RuntimeError(f"init_weights: the {type(op).__name__} initialiser gave {list(arrays)}, the IR "
                               f"op has {names}")
        out.update((name, np.ascontiguousarray(arr, dtype=np.float32)) for name, arr in arrays.items())
    return out


@dataclass(frozen=True)
class _Init:
    """What every initialiser of :data:`INIT` may use: the one random stream, and the network's settings."""

    rng: np.random.Generator
    random_bn: bool
    last_bns: frozenset  # each block's last BN on the residual branch
    zero_init_last_bn: bool
    depth_scale: float  # 1 / sqrt(number of blocks)

    def uniform_fan_in(self, fan_in: int, shape):
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for Linear (and for the SE convs)."""
        bound = 1 / math.sqrt(fan_in)
        return self.rng.uniform(-bound, bound, shape)


def _init_conv(op: ir.Conv, init: _Init) -> dict:
    """He normal (fan-out) weight; a bias is 0, or N(0, 0.05) with ``random_bn``."""
    (weight, shape, _), *bias = op.tensors()
    out = {weight: init.rng.normal(0.0, math.sqrt(2.0 / (op.out_channels * op.kernel * op.kernel)), shape)}
    for name, shape, _ in bias:
        out[name] = init.rng.normal(0.0, 0.05, shape) if init.random_bn else np.zeros(shape)
    return out


def _init_batchnorm(op: ir.BatchNorm, init: _Init) -> dict:
    is_last = op.name in init.last_bns
    return {name: _bn_tensor(init, leaf, shape, is_last) for (name, shape, _), leaf in zip(op.tensors(), ir.BN_LEAVES)}


def _bn_tensor(init: _Init, leaf: str, shape, is_last: bool):
    rng = init.rng
    if not init.random_bn:
        if leaf == "weight":
            return np.zeros(shape) if (is_last and init.zero_init_last_bn) else np.ones(shape)
        return np.ones(shape) if leaf == "running_var" else np.zeros(shape)
    if leaf == "weight":
        g = rng.uniform(0.5, 1.5, shape)
        return g * init.depth_scale if is_last else g
    if leaf == "bias":
        return rng.normal(0.0, 0.1, shape)
    if leaf == "running_mean":
        return rng.normal(0.0, 0.1, shape)
    return rng.uniform(0.5, 2.0, shape)


def _init_squeeze_excite(op: ir.SqueezeExcite, init: _Init) -> dict:
    """fc1 and fc2 (1x1 convs with bias): weight and bias U(+-1/sqrt(fan_in)), fan_in = their inputs."""
    shapes = {name: shape for name, shape, _ in op.tensors()}
    out = {}
    for fc, fan_in in (("fc1", op.channels), ("fc2", op.reduced)):
        for leaf in ("weight", "bias"):
            name = f"{op.name}.{fc}.{leaf}"
            out[name] = init.uniform_fan_in(fan_in, shapes[name])
    return out


def _init_eca(op: ir.ECA, init: _Init) -> dict:
    """The 1-D conv (no bias): U(+-1/sqrt(kernel)), PyTorch's default for a Conv1d of one input channel."""
    return {name: init.uniform_fan_in(op.kernel, shape) for name, shape, _ in op.tensors()}


def _init_res2net(op: ir.Res2Net, init: _Init) -> dict:
    """Each split conv as :func:`_init_conv` (He normal, fan-out ``width * k * k``), each split BN as a
    block's inner BN (:func:`_bn_tensor`, never the zero-init target)."""
    out, std = {}, math.sqrt(2.0 / (op.width * op.kernel * op.kernel))
    for name, shape, _ in op.tensors():
        leaf = name.rpartition(".")[2]
        if name.startswith(f"{op.name}.convs.") and leaf == "weight":
            out[name] = init.rng.normal(0.0, std, shape)
        elif name.startswith(f"{op.name}.convs."):  # a bias (folded form only)
            out[name] = init.rng.normal(0.0, 0.05, shape) if init.random_bn else np.zeros(shape)
        else:
            out[name] = _bn_tensor(init, leaf, shape, False)
    return out


def _init_selective_kernel(op: ir.SelectiveKernel, init: _Init) -> dict:
    """Each path's conv He normal (fan-out), its BN as any BN; fc_reduce and fc_select (1x1 convs, no bias)
    He normal (fan-out) as timm's ResNet initialises every conv; the attention's BN as any BN."""
    out = {}
    for name, shape, _ in op.tensors():
        leaf = name.rpartition(".")[2]
        if name.endswith("conv.weight") or ".attn.fc_" in name:
            out[name] = init.rng.normal(0.0, math.sqrt(2.0 / (shape[0] * shape[2] * shape[3])), shape)
        else:
            out[name] = _bn_tensor(init, leaf, shape, False)
    return out


def _init_linear(op: ir.Linear, init: _Init) -> dict:
    return {name: init.uniform_fan_in(op.in_features, shape) for name, shape, _ in op.tensors()}


def _init_split_attention(op: ir.SplitAttention, init: _Init) -> dict:
    """The conv He normal (fan-out) as :func:`_init_conv`; bn0 and bn1 as every BN that is not a block's last;
    fc1 and fc2 (1x1 grouped convs with bias) U(+-1/sqrt(fan_in)), fan_in = their inputs per group."""
    out, n = {}, op.name
    fan_in = {"fc1": op.channels // op.groups, "fc2": op.attn_channels // op.groups}
    for name, shape, _ in op.tensors():
        part, leaf = name[len(n) + 1:].split(".")
        if part == "conv":
            out[name] = init.rng.normal(0.0, math.sqrt(2.0 / (op.mid_channels * op.kernel * op.kernel)), shape)
        elif part in ("bn0", "bn1"):
            out[name] = _bn_tensor(init, leaf, shape, False)
        else:
            out[name] = init.uniform_fan_in(fan_in[part], shape)
    return out


def _init_groupnorm(op: ir.GroupNorm, init: _Init) -> dict:
    """As a BatchNorm's weight and bias (ones and zeros, the last of a block zero with zero_init_last_bn;
    random around them with ``random_bn``); a GroupNorm has no running statistics."""
    is_last = op.name in init.last_bns
    return {name: _bn_tensor(init, leaf, shape, is_last) for (name, shape, _), leaf in zip(op.tensors(), ir.BN_LEAVES)}


def _init_norm_act(op, init: _Init) -> dict:
    """FRN and EvoNorm-S0 (timm's reset_parameters): weight and bias as a BatchNorm's (the last of a block zero
    with zero_init_last_bn); FRN's tau 0, EvoNorm's v 1. With ``random_bn`` weight and bias as a BatchNorm's,
    tau ~ N(0, 0.1) and v ~ U(0.5, 1.5), so that every tensor matters."""
    out, is_last = {}, op.name in init.last_bns
    for name, shape, _ in op.tensors():
        leaf = name.rpartition(".")[2]
        if leaf in ("weight", "bias"):
            out[name] = _bn_tensor(init, leaf, shape, is_last)
        elif leaf == "tau":
            out[name] = init.rng.normal(0.0, 0.1, shape) if init.random_bn else np.zeros(shape)
        else:  # v
            out[name] = init.rng.uniform(0.5, 1.5, shape) if init.random_bn else np.ones(shape)
    return out


def _no_tensors(op, init: _Init) -> dict:
    return {}


#: IR op type -> its initialiser ``(op, _Init) -> {canonical name: array}``, in the op's ``tensors()``
#: order (every type of ``ir.OP_TYPES``; a parameter-free op has none: :func:`_no_tensors`).
INIT = {
    ir.Conv: _init_conv,
    ir.BatchNorm: _init_batchnorm,
    ir.ReLU: _no_tensors,
    ir.Pool: _no_tensors,
    ir.Subsample: _no_tensors,
    ir.ChannelPad: _no_tensors,
    ir.SqueezeExcite: _init_squeeze_excite,
    ir.ECA: _init_eca,
    ir.Res2Net: _init_res2net,
    ir.DropPath: _no_tensors,
    ir.GlobalAvgPool: _no_tensors,
    ir.Dropout: _no_tensors,
    ir.Linear: _init_linear,
    ir.SplitAttention: _init_split_attention,
    ir.SelectiveKernel: _init_selective_kernel,


    ir.GroupNorm: _init_groupnorm,
    ir.StdConv: _init_conv,
    ir.BlurPool: _no_tensors,  # a fixed filter, no tensors (timm's is a non-persistent buffer)
    ir.FRN: _init_norm_act,
    ir.EvoNormS0: _init_norm_act,
}
