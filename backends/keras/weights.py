"""Canonical weights <-> Keras layer weights (layouts and order). numpy only; no Keras import.

Dictionaries of Keras arrays are keyed by canonical op names (``layer1.0.conv2``, ``layer1.0.se.fc1``);
:func:`set_keras_weights` and :func:`getter` translate to a model's layer names
(:func:`.names.layer_name`) when they touch a model.

Layouts: Conv kernels (O, I/g, kh, kw) -> (kh, kw, I/g, O) (grouped ones too) plus the bias; BN ->
[gamma, beta, moving_mean, moving_variance] = [weight, bias, running_mean, running_var]; Dense kernel =
Linear weight transposed, (in, out); SE fc1/fc2 are 1x1 Conv2D layers.
"""

from __future__ import annotations

import numpy as np

from ... import ir
from ..common import res2net_parts
from ...errors import WeightsError
from . import frn
from .names import layer_name

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def conv_to_keras(w):
    """(O, I/g, kh, kw) -> (kh, kw, I/g, O), also for grouped convs (Keras' grouped kernel layout)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def conv_from_keras(k):
    return np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1)))


def _conv_to_keras(op: ir.Conv, weights) -> dict:
    return {op.name: [conv_to_keras(weights[f"{op.name}.weight"])] + ([weights[f"{op.name}.bias"]] if op.bias else [])}


def _conv_from_keras(op: ir.Conv, get) -> dict:
    arrs = get(op.name)
    out = {f"{op.name}.weight": conv_from_keras(arrs[0])}
    if op.bias:
        out[f"{op.name}.bias"] = arrs[1]
    return out


def _bn_to_keras(op: ir.BatchNorm, weights) -> dict:
    return {op.name: [weights[f"{op.name}.{k}"] for k in BN_KEYS]}


def _bn_from_keras(op: ir.BatchNorm, get) -> dict:
    return dict(zip((f"{op.name}.{k}" for k in BN_KEYS), get(op.name)))


def _se_to_keras(op: ir.SqueezeExcite, weights) -> dict:
    return {f"{op.name}.{fc}": [conv_to_keras(weights[f"{op.name}.{fc}.weight"]), weights[f"{op.name}.{fc}.bias"]]
            for fc in ("fc1", "fc2")}


def _se_from_keras(op: ir.SqueezeExcite, get) -> dict:
    out = {}
    for fc in ("fc1", "fc2"):
        arrs = get(f"{op.name}.{fc}")
        out[f"{op.name}.{fc}.weight"] = conv_from_keras(arrs[0])
        out[f"{op.name}.{fc}.bias"] = arrs[1]
    return out


def _eca_to_keras(op: ir.ECA, weights) -> dict:
    # torch Conv1d (out, in, k) = (1, 1, k) -> Keras Conv1D (k, in, out) = (k, 1, 1)
    return {f"{op.name}.conv": [np.ascontiguousarray(weights[f"{op.name}.conv.weight"].transpose(2, 1, 0))]}


def _eca_from_keras(op: ir.ECA, get) -> dict:
    return {f"{op.name}.conv.weight": np.ascontiguousarray(get(f"{op.name}.conv")[0].transpose(2, 1, 0))}


def _gn_to_keras(op: ir.GroupNorm, weights) -> dict:
    return {op.name: [weights[f"{op.name}.weight"], weights[f"{op.name}.bias"]]}  # gamma, beta


def _gn_from_keras(op: ir.GroupNorm, get) -> dict:
    return dict(zip((f"{op.name}.weight", f"{op.name}.bias"), get(op.name)))


def _linear_to_keras(op: ir.Linear, weights) -> dict:
    kernel = np.ascontiguousarray(weights[f"{op.name}.weight"].T)
    return {op.name: [kernel] + ([weights[f"{op.name}.bias"]] if op.bias else [])}


def _linear_from_keras(op: ir.Linear, get) -> dict:
    arrs = get(op.name)
    out = {f"{op.name}.weight": np.ascontiguousarray(arrs[0].T)}
    if op.bias:
        out[f"{op.name}.bias"] = arrs[1]
    return out


def split_attention_parts(op: ir.SplitAttention) -> tuple:
    """A split attention's conv, bn0, fc1, bn1, fc2 as plain IR ops under their canonical names (its Keras
    layers are these ops' layers; ``backends/keras/resnest.py``)."""
    n, mid, attn, g = op.name, op.mid_channels, op.attn_channels, op.groups
    one = (1, 1)
    return (ir.Conv(f"{n}.conv", op.in_channels, mid, op.kernel, op.stride, op.padding, op.dilation, op.conv_groups,
                    False, op.in_shape, op.mid_shape),
            ir.BatchNorm(f"{n}.bn0", mid, op.eps, op.momentum, op.mid_shape, op.mid_shape),
            ir.Conv(f"{n}.fc1", op.channels, attn, 1, 1, 0, 1, g, True, (op.channels, *one), (attn, *one)),
            ir.BatchNorm(f"{n}.bn1", attn, op.eps, op.momentum, (attn, *one), (attn, *one)),
            ir.Conv(f"{n}.fc2", attn, mid, 1, 1, 0, 1, g, True, (attn, *one), (mid, *one)))


def _res2net_subs(op: ir.Res2Net) -> list:
    return [sub for pair in res2net_parts(op) for sub in pair if sub is not None]  # each split's conv, its BN


def _sk_subs(op: ir.SelectiveKernel) -> list:
    from ...sknet import sub_ops

    paths, attn = sub_ops(op)
    return [sub for pair in paths for sub in pair if sub is not None] + [sub for sub in attn if sub is not None]


def _composite(parts) -> tuple:
    """The ``(to_keras, from_keras)`` entry of a composite op whose Keras layers are those of its plain parts
    (``parts(op)``: Conv and BatchNorm ops under their canonical names), each laid out as that part's type is."""
    def to_keras(op, weights) -> dict:
        return {k: v for part in parts(op) for k, v in LAYOUTS[type(part)][0](part, weights).items()}

    def from_keras(op, get) -> dict:
        return {k: v for part in parts(op) for k, v in LAYOUTS[type(part)][1](part, get).items()}
    return to_keras, from_keras


#: The entry of a parameter-free op: no Keras weights either way.
NO_WEIGHTS = (lambda op, weights: {}, lambda op, get: {})

#: IR op type -> ``(to_keras, from_keras)``: ``to_keras(op, canonical weights) -> {canonical layer name:
#: [arrays in the Keras layer's weight order]}`` and its inverse ``from_keras(op, get) -> {canonical tensor
#: name: array}``, ``get(canonical layer name)`` returning that layer's arrays (every type of ``ir.OP_TYPES``).
LAYOUTS = {
    ir.Conv: (_conv_to_keras, _conv_from_keras),
    ir.BatchNorm: (_bn_to_keras, _bn_from_keras),
    ir.ReLU: NO_WEIGHTS,
    ir.Pool: NO_WEIGHTS,
    ir.Subsample: NO_WEIGHTS,
    ir.ChannelPad: NO_WEIGHTS,
    ir.SqueezeExcite: (_se_to_keras, _se_from_keras),
    ir.ECA: (_eca_to_keras, _eca_from_keras),
    ir.DropPath: NO_WEIGHTS,
    ir.GlobalAvgPool: NO_WEIGHTS,
    ir.Dropout: NO_WEIGHTS,
    ir.Linear: (_linear_to_keras, _linear_from_keras),
    ir.SplitAttention: _composite(split_attention_parts),
    ir.Res2Net: _composite(_res2net_subs),
    ir.SelectiveKernel: _composite(_sk_subs),
    ir.GroupNorm: (_gn_to_keras, _gn_from_keras),
    ir.StdConv: (_conv_to_keras, _conv_from_keras),  # the raw kernel (StdConv2D standardizes it)
    ir.BlurPool: NO_WEIGHTS,  # average pools (backends/keras/blur.py)
    ir.FRN: (frn.frn_to_keras, frn.frn_from_keras),  # backends/keras/frn.py
    ir.EvoNormS0: (frn.evonorm_to_keras, frn.evonorm_from_keras),
}


def op_to_keras(op, weights) -> dict:
    """Canonical tensors of one op -> {canonical layer name: [arrays in the Keras layer's weight order]}."""
    return ir.entry_for(LAYOUTS, op, "Keras weight layout")[0](op, weights)


def op_from_keras(op, get) -> dict:
    """Inverse of :func:`op_to_keras`; ``get(canonical layer name)`` returns that layer's arrays."""
    out = ir.entry_for(LAYOUTS, op, "Keras weight layout")[1](op, get)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def to_keras_weights(net: ir.Network, weights) -> dict:
    """Canonical weights -> ``{canonical layer name: [arrays]}`` in Keras' order and layouts."""
    out = {}
    for op in net.all_ops():
        try:
            out.update(op_to_keras(op, weights))
        except KeyError as exc:
            raise WeightsError(f"weights: missing tensor {exc.args[0]!r} for the Keras model of {net.name!r}") from None
    return out


def from_arrays(net: ir.Network, get) -> dict:
    """Canonical weights of ``net`` from ``get(canonical layer name) -> [arrays]``."""
    out = {}
    for op in net.all_ops():
        out.update(op_from_keras(op, get))
    return out


def from_keras_model(net: ir.Network, model_or_arrays) -> dict:
    """A Keras model built by ``build`` (or a ``{canonical layer name: [arrays]}`` dict) -> canonical weights.

    Unchecked: it trusts that the model is ``net``'s (the training step and the tests read back models
    they built themselves). For a Keras model from elsewhere use ``--weights FILE.keras``,
    ``resnet-spec import`` or ``resnet_spec.import_model``, which check it layer by layer."""
    return from_arrays(net, getter(model_or_arrays))


def getter(model_or_arrays, rename=None):
    """``get(canonical layer name) -> [numpy arrays]`` from a dict, or from a model's layer named
    ``rename(name)`` (default: :func:`layer_name`)."""
    if isinstance(model_or_arrays, dict):
        def get(name):
            key = rename(name) if rename else name
            if key not in model_or_arrays:
                raise WeightsError(f"no weights for Keras layer {key!r}")
            return [np.asarray(a) for a in model_or_arrays[key]]
        return get
    rename = rename or layer_name
    layers = {layer.name: layer for layer in model_or_arrays.layers}

    def get_layer(name):
        key = rename(name)
        if key not in layers:
            raise WeightsError(f"the Keras model {model_or_arrays.name!r} has no layer {key!r}")
        return [np.asarray(a) for a in layers[key].get_weights()]
    return get_layer


def set_keras_weights(model, arrays: dict, rename=None) -> None:
    """Load ``{canonical layer name: [arrays]}`` into ``model`` (``rename`` maps a canonical name to the
    model's layer name; default :func:`layer_name`), checking every shape and that every weight is set."""
    rename = rename or layer_name
    layers = {layer.name: layer for layer in model.layers}
    done = set()
    for name, arrs in arrays.items():
        target = rename(name)
        if target not in layers:
            raise WeightsError(f"the Keras model {model.name!r} has no layer {target!r} (for {name!r})")
        layer = layers[target]
        have = [tuple(v.shape) for v in layer.weights]
        want = [tuple(np.shape(a)) for a in arrs]
        if have != want:
            raise WeightsError(f"Keras layer {target!r} holds weights of shapes {have}; the canonical weights "
                               f"of {name!r} give {want}")
        layer.set_weights([np.asarray(a, dtype=np.float32) for a in arrs])
        done.add(target)
    left = [layer.name for layer in model.layers if layer.weights and layer.name not in done]
    if left:
        raise WeightsError(f"no canonical weights for Keras layer(s) {left[:3]}" + (" ..." if len(left) > 3 else ""))
