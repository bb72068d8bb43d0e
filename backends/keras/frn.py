"""Keras lowering of the norm-act ops (resnet_spec.ir_frn), channels-last.

* FRN, in stock layers only (so the plain-Keras ``.keras`` has it too): the mean square per sample and
  channel is the variance of ``x`` beside ``-x``, whose mean is zero. ``Concatenate([x, -x])`` along the
  width (``-x``: a 1x1 depthwise ``Conv2D`` with kernel -1, exact) -> ``GroupNormalization`` with one group
  per channel (its gamma and beta are FRN's weight and bias; epsilon the op's) -> ``Cropping2D`` back to
  the first half, which is ``x * rsqrt(mean(x^2) + eps) * weight + bias``. The TLU ``max(y, tau)``: the
  tau map is a 1x1 depthwise ``Conv2D`` (bias tau) applied to zeros (``y`` through a 1x1 depthwise
  ``Conv2D`` with kernel 0), then ``Maximum``. Every fixed kernel sits in a layer that is not trainable
  or multiplies zeros, so a training step moves only weight, bias and tau, each held once.
* EvoNorm-S0 with ``act``: the custom layer ``EvoNormS0`` (:func:`evonorm_s0_class`; on the ``.keras``
  allow-list): Keras' stock layers have no normalization by an uncentered statistic of a group (its
  GroupNormalization always subtracts the group mean). Without ``act`` (the affine alone): a 1x1 depthwise
  ``Conv2D``, kernel weight, bias bias.
"""

from __future__ import annotations

import numpy as np

from ... import ir
from .names import canonical_name, layer_name
from .zero_init import kernel_init


def _depthwise(L, c: int, name: str, bias: bool = True, trainable: bool = True):
    return L.Conv2D(c, 1, groups=c, use_bias=bias, name=name, trainable=trainable, **kernel_init())


def frn_layers(op: ir.FRN, x, name: str, namer, L):
    base, c, w = canonical_name(name), op.channels, op.in_shape[2]
    neg = _depthwise(L, c, layer_name(f"{op.name}.negate"), bias=False, trainable=False)(x)
    z = L.Concatenate(axis=2, name=namer(f"{base}.with_negated"))([x, neg])
    z = L.GroupNormalization(groups=c, axis=-1, epsilon=op.eps, name=layer_name(f"{op.name}.norm"))(z)
    y = L.Cropping2D(((0, 0), (0, w)), name=namer(f"{base}.crop") if op.act else name)(z)
    if not op.act:
        return y
    zeros = _depthwise(L, c, layer_name(f"{op.name}.zeros"), bias=False, trainable=False)(y)
    tau = _depthwise(L, c, layer_name(f"{op.name}.tau"))(zeros)
    return L.Maximum(name=name)([y, tau])


def evonorm_layers(op: ir.EvoNormS0, x, name: str, namer, L, custom):
    if not op.act:
        return _depthwise(L, op.channels, name)(x)
    return custom("EvoNormS0")(groups=op.groups, epsilon=op.eps, name=name)(x)


def _kernel(values) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(1, 1, 1, -1)


def frn_to_keras(op: ir.FRN, weights) -> dict:
    c, n = op.channels, op.name
    out = {f"{n}.negate": [_kernel(-np.ones(c))], f"{n}.norm": [weights[f"{n}.weight"], weights[f"{n}.bias"]]}
    if op.act:
        out[f"{n}.zeros"] = [_kernel(np.zeros(c))]
        out[f"{n}.tau"] = [_kernel(np.ones(c)), weights[f"{n}.tau"]]
    return out


def frn_from_keras(op: ir.FRN, get) -> dict:
    n = op.name
    out = dict(zip((f"{n}.weight", f"{n}.bias"), get(f"{n}.norm")))
    if op.act:
        out[f"{n}.tau"] = get(f"{n}.tau")[1]
    return out


def evonorm_to_keras(op: ir.EvoNormS0, weights) -> dict:
    n = op.name
    if not op.act:
        return {n: [_kernel(weights[f"{n}.weight"]), weights[f"{n}.bias"]]}
    return {n: [weights[f"{n}.weight"], weights[f"{n}.bias"], weights[f"{n}.v"]]}


def evonorm_from_keras(op: ir.EvoNormS0, get) -> dict:
    n = op.name
    if not op.act:
        kernel, bias = get(n)
        return {f"{n}.weight": np.asarray(kernel).reshape(-1), f"{n}.bias": bias}
    return dict(zip((f"{n}.weight", f"{n}.bias", f"{n}.v"), get(n)))


def evonorm_s0_class(keras, module: str):
    """The EvoNormS0 layer class (``__module__``: the module that registers it, as the allow-list checks)."""
    from keras import ops

    class EvoNormS0(keras.layers.Layer):
        """timm's EvoNorm2dS0 channels-last: x * sigmoid(v * x) / sqrt(biased variance over each group of
        ``channels // groups`` consecutive channels and all positions + epsilon) * gamma + beta; weights
        gamma, beta, v (one per channel)."""

        def __init__(self, groups: int = 32, epsilon: float = 1e-5, **kwargs):
            super().__init__(**kwargs)
            self.groups, self.epsilon = int(groups), float(epsilon)

        def build(self, input_shape):
            c = input_shape[-1]
            self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")
            self.v = self.add_weight(shape=(c,), initializer="ones", name="v")

        def call(self, x):
            _, h, w, c = x.shape
            grouped = (-1, h, w, self.groups, c // self.groups)
            g = ops.reshape(x, grouped)
            mean = ops.mean(g, axis=(1, 2, 4), keepdims=True)
            var = ops.mean(ops.square(g - mean), axis=(1, 2, 4), keepdims=True)
            num = ops.reshape(x * ops.sigmoid(x * self.v), grouped)
            y = ops.reshape(num / ops.sqrt(var + self.epsilon), (-1, h, w, c))
            return y * self.gamma + self.beta

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}

    EvoNormS0.__module__ = module
    return EvoNormS0
