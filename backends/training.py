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


def torch_model(net: ir.Network, weights, *, dtype="float32", mutate=None):
    """The PyTorch model of a training step (float32, or float64 for the reference): dropout and
    drop-path off, ``mutate`` applied, train mode, on the CPU (move it with ``.to``)."""
    import torch

    from .torch import backend as torch_backend

    model = torch_backend.build(net, weights)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif type(m).__name__ == "DropPath":
            m.rate = 0.0
    if mutate is not None:
        model = mutate(model) or model
    return model.to(torch.float64 if dtype == "float64" else torch.float32).train()


def record_relu_inputs(model, sink: list):
    """Append every ``nn.ReLU`` call's input to ``sink`` as it runs (walk order; see :func:`pack_decisions`)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.register_forward_pre_hook(lambda _m, inp: sink.append(inp[0].detach()))
    return model


def pack_decisions(inputs) -> list:
    """A ReLU's decision per entry (input > 0: the gradient passes) as ``{"shape", "bits"}``, NCHW."""
    return [{"shape": tuple(a.shape), "bits": np.packbits(np.asarray(a) > 0, axis=None)} for a in inputs]


def unpack_decisions(d: dict) -> np.ndarray:
    n = int(np.prod(d["shape"]))
    return np.unpackbits(d["bits"], count=n).astype(bool).reshape(d["shape"])


def torch_step(net: ir.Network, weights, x, g, *, device="cpu", dtype="float32", allow_tf32=False, mutate=None,
               decisions=False):
    """The training step in PyTorch (the reference leg). ``decisions``: also return every ReLU call's
    decisions (``out["relu"]``, :func:`pack_decisions`) for the float64 reference."""
    import torch

    from .torch import backend as torch_backend

    if dtype not in ("float32", "float64"):
        raise BackendUnavailable(f"torch: --train runs in float32 only, not {dtype}")
    dev, _, desc = torch_backend.device_and_dtype(device, "float32", allow_tf32)
    wide = dtype == "float64"  # the reference step of train_parity: same weights, input and loss, exact-ish
    model = torch_model(net, weights, dtype=dtype, mutate=mutate).to(dev)
    seen: list = []
    if decisions:
        record_relu_inputs(model, seen)
    x, g = (np.asarray(a, np.float64 if wide else np.float32) for a in (x, g))
    logits = model(torch.from_numpy(np.ascontiguousarray(x)).to(dev))
    loss = (logits * torch.from_numpy(g).to(dev)).sum() / x.shape[0]
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().numpy()
             for n, p in model.named_parameters()}
    stats = {n: b.detach().cpu().numpy() for n, b in model.named_buffers() if n.endswith(STAT_SUFFIXES)}
    out = {"logits": logits.detach().cpu().numpy(), "loss": float(loss.detach()), "grads": grads, "stats": stats}
    if decisions:
        out["relu"] = pack_decisions(a.cpu().numpy() for a in seen)
    return out, f"{desc}, torch {torch.__version__}" + (", float64" if wide else "")


def keras_step(leg, net: ir.Network, weights, x, g, *, device="cpu", dtype="float32", allow_tf32=False,
               mutate=None, decisions=False):
    """The training step of the Keras model on ``leg``'s Keras backend (tf.GradientTape, jax.grad of
    the stateless call, or torch autograd). ``decisions``: also return every ReLU layer's decisions in
    the PyTorch model's call order (``out["relu"]``), taken from the inputs of this very step."""
    from .keras.backend import check_input, to_numpy
    from .keras.model import build, deep_recursion, depth, keras_module, relu_layer_names

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
        stepped = model
        if decisions:  # one model whose outputs are the logits and every ReLU's input: this step's values
            sites = [model.get_layer(n).input for n in relu_layer_names(net)]
            with deep_recursion(depth(net)):  # Keras walks the graph recursively (1000-layer nets)
                stepped = keras.Model(model.inputs, [model.outputs[0]] + sites)
        step = {"tensorflow": _tf_grads, "jax": _jax_grads, "torch": _torch_grads}[leg.active()]
        outs, loss, grads = step(keras, stepped, feed, g)
        grads = {v.path: (np.zeros(v.shape, np.float32) if gr is None else to_numpy(gr))
                 for v, gr in zip(stepped.trainable_variables, grads)}
        out = {"logits": to_numpy(outs[0]), "loss": float(to_numpy(loss)),
               "grads": _canonical_grads(net, model, grads), "stats": _canonical_stats(net, model)}
        if decisions:
            out["relu"] = pack_decisions(_nchw(to_numpy(a)) for a in outs[1:])
    return out, f"{desc}, {leg.versions()}"


def _nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


# Each step function takes a model (its output: the logits, or a list [logits, ...]) and returns
# (outputs as a list, loss, grads).

def _listed(outs) -> list:
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def _loss(keras, logits, g):
    return keras.ops.sum(logits * keras.ops.convert_to_tensor(g)) / logits.shape[0]


def _tf_grads(keras, model, feed, g):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        outs = _listed(model(feed, training=True))
        loss = _loss(keras, outs[0], g)
    return outs, loss, tape.gradient(loss, [v.value for v in model.trainable_variables])


def _torch_grads(keras, model, feed, g):
    outs = _listed(model(feed, training=True))
    loss = _loss(keras, outs[0], g)
    loss.backward()
    return [o.detach() for o in outs], loss, [v.value.grad for v in model.trainable_variables]


def _jax_grads(keras, model, feed, g):
    import jax

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def f(tv, ntv):
        outs, ntv = model.stateless_call(tv, ntv, feed, training=True)
        outs = _listed(outs)
        return _loss(keras, outs[0], g), (outs, ntv)

    (loss, (outs, frozen)), grads = jax.value_and_grad(f, has_aux=True)(trainable, frozen)
    for v, value in zip(model.non_trainable_variables, frozen):
        v.assign(value)
    return outs, loss, grads


def _canonical_grads(net: ir.Network, model, grads: dict) -> dict:
    """``{variable path: gradient}`` -> canonical names and PyTorch layouts (BN: weight, bias only)."""
    from .keras.names import canonical_name
    from .keras.weights import from_arrays, getter

    arrays = {canonical_name(layer.name): [grads.get(w.path, np.zeros(w.shape, np.float32)) for w in layer.weights]
              for layer in model.layers if layer.weights}
    out = from_arrays(net, getter(arrays))
    return {k: v for k, v in out.items() if not k.endswith(STAT_SUFFIXES)}


def _canonical_stats(net: ir.Network, model) -> dict:
    from .keras.weights import from_keras_model

    return {k: v for k, v in from_keras_model(net, model).items() if k.endswith(STAT_SUFFIXES)}
