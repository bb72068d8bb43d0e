"""One training step of the generated model, per framework, for ``parity --train``.

Every leg does the same thing from one canonical weight set and one batch ``x`` (NCHW):

* training mode: BatchNorm normalizes with the batch statistics and updates its running statistics
  (IR/PyTorch convention: ``running = (1 - m) * running + m * stat``, unbiased batch variance);
  dropout and drop-path are switched off (rate 0), since their masks are random per framework;
* the fixed loss ``L = sum(logits * g) / N`` with a fixed random ``g`` (N, classes): its gradient with
  respect to the logits is ``g / N``, so every parameter's gradient is a fixed vector-Jacobian product,
  well conditioned, with no softmax saturation;
* result: logits, L, the gradient of L for every trainable parameter by canonical name (PyTorch layout),
  and every BN's running statistics after the step by canonical name.

No optimizer is applied: an SGD update is ``w - lr * grad``, so comparing gradients compares it.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import BackendUnavailable

STAT_SUFFIXES = ("running_mean", "running_var")


def torch_step(net: ir.Network, weights, x, g, *, device="cpu", dtype="float32", allow_tf32=False, mutate=None):
    """The training step in PyTorch (the reference leg)."""
    import torch

    from . import torch_backend

    if dtype not in ("float32", "float64"):
        raise BackendUnavailable(f"torch: --train runs in float32 only, not {dtype}")
    dev, _, desc = torch_backend.device_and_dtype(device, "float32", allow_tf32)
    wide = dtype == "float64"  # the reference step of train_parity: same weights, input and loss, exact-ish
    model = torch_backend.build(net, weights)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif type(m).__name__ == "DropPath":
            m.rate = 0.0
    if mutate is not None:
        model = mutate(model) or model
    model = model.to(dev, torch.float64 if wide else torch.float32).train()
    x, g = (np.asarray(a, np.float64 if wide else np.float32) for a in (x, g))
    logits = model(torch.from_numpy(np.ascontiguousarray(x)).to(dev))
    loss = (logits * torch.from_numpy(g).to(dev)).sum() / x.shape[0]
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().numpy()
             for n, p in model.named_parameters()}
    stats = {n: b.detach().cpu().numpy() for n, b in model.named_buffers() if n.endswith(STAT_SUFFIXES)}
    out = {"logits": logits.detach().cpu().numpy(), "loss": float(loss.detach()), "grads": grads, "stats": stats}
    return out, f"{desc}, torch {torch.__version__}" + (", float64" if wide else "")


def keras_step(leg, net: ir.Network, weights, x, g, *, device="cpu", dtype="float32", allow_tf32=False,
               mutate=None):
    """The training step of the Keras model on ``leg``'s Keras backend (tf.GradientTape, jax.grad of
    the stateless call, or torch autograd)."""
    from .keras_backend import check_input, to_numpy
    from .keras_model import build, keras_module

    keras = keras_module(leg.backend)
    if dtype != "float32":
        raise BackendUnavailable(f"{leg.NAME}: --train runs in float32 only, not {dtype}")
    scope, desc = leg.device_scope(device, allow_tf32)
    x = check_input(net, x)
    with scope:
        model = build(net, weights, backend=leg.backend)
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        if mutate is not None:
            model = mutate(model) or model
        feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        step = {"tensorflow": _tf_grads, "jax": _jax_grads, "torch": _torch_grads}[leg.active()]
        logits, loss, grads = step(keras, model, feed, g)
        grads = {v.path: (np.zeros(v.shape, np.float32) if gr is None else to_numpy(gr))
                 for v, gr in zip(model.trainable_variables, grads)}
        out = {"logits": to_numpy(logits), "loss": float(to_numpy(loss)),
               "grads": _canonical_grads(net, model, grads), "stats": _canonical_stats(net, model)}
    return out, f"{desc}, {leg.versions()}"


def _loss(keras, logits, g):
    return keras.ops.sum(logits * keras.ops.convert_to_tensor(g)) / logits.shape[0]


def _tf_grads(keras, model, feed, g):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        logits = model(feed, training=True)
        loss = _loss(keras, logits, g)
    return logits, loss, tape.gradient(loss, [v.value for v in model.trainable_variables])


def _torch_grads(keras, model, feed, g):
    logits = model(feed, training=True)
    loss = _loss(keras, logits, g)
    loss.backward()
    return logits, loss, [v.value.grad for v in model.trainable_variables]


def _jax_grads(keras, model, feed, g):
    import jax

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def f(tv, ntv):
        logits, ntv = model.stateless_call(tv, ntv, feed, training=True)
        return _loss(keras, logits, g), (logits, ntv)

    (loss, (logits, frozen)), grads = jax.value_and_grad(f, has_aux=True)(trainable, frozen)
    for v, value in zip(model.non_trainable_variables, frozen):
        v.assign(value)
    return logits, loss, grads


def _canonical_grads(net: ir.Network, model, grads: dict) -> dict:
    """``{variable path: gradient}`` -> canonical names and PyTorch layouts (BN: weight, bias only)."""
    from .keras_names import canonical_name
    from .keras_weights import from_arrays, getter

    arrays = {canonical_name(layer.name): [grads.get(w.path, np.zeros(w.shape, np.float32)) for w in layer.weights]
              for layer in model.layers if layer.weights}
    out = from_arrays(net, getter(arrays))
    return {k: v for k, v in out.items() if not k.endswith(STAT_SUFFIXES)}


def _canonical_stats(net: ir.Network, model) -> dict:
    from .keras_weights import _from_keras_weights

    return {k: v for k, v in _from_keras_weights(net, model).items() if k.endswith(STAT_SUFFIXES)}
