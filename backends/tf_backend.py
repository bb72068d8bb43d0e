"""TensorFlow/Keras backend: IR + canonical weights -> a Keras 3 functional model.

Layout. The model computes in NHWC. TensorFlow's CPU kernels implement Conv2D only for NHWC ("The
Conv2D op currently only supports the NHWC tensor format on the CPU"), and a saved model must run on
whatever device loads it, so ``data_format="channels_first"`` does not build NCHW layers: it gives the
model an NCHW input followed by one transpose (the ``to_channels_last`` Permute layer) into the same
NHWC body. On a GPU, Grappler's layout optimizer is free to choose NCHW kernels internally either way.

Names. Keras 3 accepts dots in layer names, so a layer carrying parameters has exactly the op's
canonical name (``layer1.0.conv1``, ``layer2.0.downsample.1``, ``layer1.0.se.fc1``, ``fc``); see
:func:`layer_name` / :func:`canonical_name`. Helper layers are named after their owner
(``layer1.0.conv2.pad``, ``layer1.0.add``); the layer producing a block's output is ``<block>.out``
(as keras.applications' ``_out``). :func:`tap_layer_names` gives the layer behind every tap.

Exactness. Padding is never Keras' ``'same'``: every padded conv or pool is an explicit padding layer
followed by a ``'valid'`` one, with the IR's numbers. Max-pool padding that must never win is -inf
(:class:`ConstantPad2D`); average pooling divides by PyTorch's exact window counts
(:class:`ExactAvgPool2D`). BatchNormalization gets the IR's epsilon unchanged: Keras 3 computes
inference BN with ``tf.nn.batch_normalization`` (``rsqrt(var + eps)``), which has no lower bound on
epsilon -- only the fused kernel of tf.keras 2 / ``tf.nn.fused_batch_norm`` clamped it to 1.001e-5, and
it is not used here. TensorFlow is imported lazily, so importing this module costs nothing and never
loads TensorFlow into a process that did not ask for it (see :mod:`resnet_spec.isolate`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import numpy as np

from .. import ir
from ..errors import BackendUnavailable, ResNetSpecError, WeightsError
from ..naming import UniqueNames

NAME = "tensorflow"

DATA_FORMATS = ("channels_last", "channels_first")
_DTYPES = ("float32", "float16", "bfloat16")
_PACKAGE = "resnet_spec"  # registration package of the custom layers: "resnet_spec>ConstantPad2D"


def available() -> str | None:
    """None when TensorFlow and Keras 3 can be imported (checked without importing them)."""
    for mod in ("tensorflow", "keras"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'resnet-spec[tensorflow]')"
    return None


_MODULES = {}


@contextlib.contextmanager
def _deep_recursion(layers: int):
    """Keras walks a functional graph recursively (``function._build_map_helper``: a few frames per
    layer), so a 1000-layer-deep ResNet exceeds Python's default limit of 1000 frames."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 8 * layers + 2000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _depth(net: ir.Network) -> int:
    """An upper bound on the number of Keras layers on the longest path of ``net``'s model."""
    return 3 * sum(1 for _ in net.all_ops()) + 3 * len(net.blocks) + 10


def _tf():
    """Import TensorFlow and Keras (once) and register the custom layers; returns (tf, keras)."""
    if not _MODULES:
        reason = available()
        if reason:
            raise BackendUnavailable(reason)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        if not keras.__version__.startswith("3."):
            raise BackendUnavailable(f"the TensorFlow backend needs Keras 3, found keras {keras.__version__}")
        if keras.backend.backend() != "tensorflow":
            raise BackendUnavailable(f"the TensorFlow backend needs KERAS_BACKEND=tensorflow, found "
                                     f"{keras.backend.backend()!r}")
        _MODULES.update(tf=tf, keras=keras, layers=_define_layers(keras))
    return _MODULES["tf"], _MODULES["keras"]


def custom_objects() -> dict:
    """The custom layer classes by registered name (also registered globally on first use)."""
    _tf()
    return dict(_MODULES["layers"])


def versions() -> str:
    tf, keras = _tf()
    return f"tensorflow {tf.__version__} / keras {keras.__version__}"


# --- custom layers ---------------------------------------------------------------------------------

def avg_pool_counts(size: int, kernel: int, stride: int, padding: int, out: int, count_include_pad: bool):
    """PyTorch's average-pool divisor along one axis, for each of the ``out`` windows.

    Window ``i`` covers padded rows ``[i*s - p, i*s - p + k)``, clipped to ``size + p`` (the ceil-mode
    extension never counts); without ``count_include_pad`` it is also clipped to the real rows
    ``[0, size)``.
    """
    start = np.arange(out) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    if not count_include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return (end - start).astype(np.float64)


def _define_layers(keras):
    """Define and register the custom layers (needs Keras, hence not at module import)."""
    from keras import ops

    register = keras.saving.register_keras_serializable(package=_PACKAGE)

    @register
    class ConstantPad2D(keras.layers.Layer):
        """Pad H and W of an NHWC tensor by ``pads = (top, left, bottom, right)`` with ``value``
        ('neg_inf' or 'zero'); -inf padding never wins a max-pool window."""

        def __init__(self, pads, value="neg_inf", **kwargs):
            super().__init__(**kwargs)
            if value not in ("neg_inf", "zero"):
                raise ValueError(f"pad value must be 'neg_inf' or 'zero', not {value!r}")
            self.pads, self.value = tuple(int(p) for p in pads), value

        def call(self, x):
            t, l, b, r = self.pads
            fill = float("-inf") if self.value == "neg_inf" else 0.0
            return ops.pad(x, [[0, 0], [t, b], [l, r], [0, 0]], constant_values=fill)

        def compute_output_shape(self, shape):
            t, l, b, r = self.pads
            n, h, w, c = shape
            return (n, None if h is None else h + t + b, None if w is None else w + l + r, c)

        def get_config(self):
            return {**super().get_config(), "pads": list(self.pads), "value": self.value}

    @register
    class ExactAvgPool2D(keras.layers.Layer):
        """Average pooling with PyTorch's divisor (NHWC).

        y[i, j] = sum(window of the zero-padded input) / (count_h[i] * count_w[j]), with the counts of
        :func:`avg_pool_counts`. Computed as ``avg_pool_valid(pad(x)) * k^2 / count``: the padded zeros
        add nothing to the sum, and the constant factor restores the exact divisor.
        """

        def __init__(self, kernel, stride, padding, pads, count_include_pad, **kwargs):
            super().__init__(**kwargs)
            self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)
            self.pads, self.count_include_pad = tuple(int(p) for p in pads), bool(count_include_pad)

        def build(self, shape):
            _, h, w, _ = shape
            t, l, b, r = self.pads
            k, s, p = self.kernel, self.stride, self.padding
            oh, ow = (h + t + b - k) // s + 1, (w + l + r - k) // s + 1
            ch = avg_pool_counts(h, k, s, p, oh, self.count_include_pad)
            cw = avg_pool_counts(w, k, s, p, ow, self.count_include_pad)
            self._factor = ((k * k) / np.outer(ch, cw))[None, :, :, None].astype(np.float32)

        def call(self, x):
            t, l, b, r = self.pads
            if any(self.pads):
                x = ops.pad(x, [[0, 0], [t, b], [l, r], [0, 0]])
            y = ops.average_pool(x, self.kernel, self.stride, padding="valid", data_format="channels_last")
            return y * ops.cast(self._factor, y.dtype)

        def compute_output_shape(self, shape):
            n, h, w, c = shape
            t, l, b, r = self.pads
            return (n, (h + t + b - self.kernel) // self.stride + 1, (w + l + r - self.kernel) // self.stride + 1, c)

        def get_config(self):
            return {**super().get_config(), "kernel": self.kernel, "stride": self.stride, "padding": self.padding,
                    "pads": list(self.pads), "count_include_pad": self.count_include_pad}

    @register
    class ChannelPad(keras.layers.Layer):
        """Zero channels ``before`` and ``after`` the existing ones (option-A shortcut), NHWC."""

        def __init__(self, before, after, **kwargs):
            super().__init__(**kwargs)
            self.before, self.after = int(before), int(after)

        def call(self, x):
            return ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

        def compute_output_shape(self, shape):
            n, h, w, c = shape
            return (n, h, w, c + self.before + self.after)

        def get_config(self):
            return {**super().get_config(), "before": self.before, "after": self.after}

    return {f"{_PACKAGE}>{cls.__name__}": cls for cls in (ConstantPad2D, ExactAvgPool2D, ChannelPad)}


def _custom(name):
    _tf()
    return _MODULES["layers"][f"{_PACKAGE}>{name}"]


# --- names -----------------------------------------------------------------------------------------

def layer_name(canonical: str) -> str:
    """Keras layer name of the op with canonical (module) name ``canonical``: the same string.

    Keras 3 forbids only '/' in layer names; canonical names never contain one.
    """
    if "/" in canonical:
        raise ResNetSpecError(f"canonical name {canonical!r} contains '/', which Keras layer names cannot")
    return canonical


def canonical_name(keras_layer_name: str) -> str:
    """Inverse of :func:`layer_name`."""
    return keras_layer_name


def tap_layer_names(net: ir.Network) -> dict:
    """Tap name -> name of the Keras layer whose output is that tap ('stem' with no stem: the input,
    or ``to_channels_last`` in a channels_first model -- see :func:`tap_model`)."""
    last = net.stem[-1] if net.stem else None
    names = {"stem": None if last is None else layer_name(last.name) if getattr(last, "name", None) else "stem.out"}
    names.update({b.name: f"{b.name}.out" for b in net.blocks})
    names["head"] = layer_name(net.head[-1].name) if isinstance(net.head[-1], ir.Linear) else "head.out"
    return names


class _Namer:
    """Unique names for helper layers: ``<owner>.<what>``, numbered from 1 on repeats."""

    _PLAIN = {ir.ReLU: "relu", ir.Pool: "pool", ir.Subsample: "subsample", ir.ChannelPad: "channel_pad",
              ir.DropPath: "drop_path", ir.GlobalAvgPool: "avgpool", ir.Dropout: "dropout"}

    def __init__(self):
        self._names = UniqueNames("")

    def __call__(self, base: str) -> str:
        return self._names.take(base)

    def for_op(self, op, owner: str) -> str:
        if getattr(op, "name", None):
            return self(layer_name(op.name))
        return self(f"{owner}.{self._PLAIN[type(op)]}")



# --- IR -> Keras layers ----------------------------------------------------------------------------

def op_layers(op, x, name: str, namer: _Namer):
    """Apply the Keras layer(s) for one IR op to the NHWC tensor ``x``; the op's main layer is ``name``.

    Exact-semantics choices (all documented on :mod:`resnet_spec.ir`): explicit padding layers and
    'valid' windows; -inf where max-pool padding must never win; exact average-pool divisors.
    """
    _, keras = _tf()
    L = keras.layers
    if isinstance(op, ir.Conv):
        if op.padding:
            x = L.ZeroPadding2D(op.padding, name=namer(f"{name}.pad"))(x)
        # Keras refuses stride > 1 together with dilation > 1: convolve densely, then keep every s-th
        # output, which is exactly the strided dilated convolution.
        split = op.stride > 1 and op.dilation > 1
        x = L.Conv2D(op.out_channels, op.kernel, strides=1 if split else op.stride, padding="valid",
                     dilation_rate=op.dilation, groups=op.groups, use_bias=op.bias, name=name)(x)
        if split:
            x = L.MaxPooling2D(1, strides=op.stride, name=namer(f"{name}.stride"))(x)
        return x
    if isinstance(op, ir.BatchNorm):
        # IR momentum is PyTorch's (weight of the new batch); Keras' is the weight of the old average.
        return L.BatchNormalization(axis=-1, epsilon=op.eps, momentum=1.0 - op.momentum, name=name)(x)
    if isinstance(op, ir.ReLU):
        return L.Activation("relu", name=name)(x)
    if isinstance(op, ir.Pool):
        return _pool_layers(op, x, name, namer)
    if isinstance(op, ir.Subsample):
        # A 1x1 max-pool with stride is x[:, ::s, ::s, :] (keras.applications' ResNetV2 shortcut).
        return L.MaxPooling2D(1, strides=op.stride, name=name)(x)
    if isinstance(op, ir.ChannelPad):
        return _custom("ChannelPad")(op.before, op.after, name=name)(x)
    if isinstance(op, ir.SqueezeExcite):
        s = L.GlobalAveragePooling2D(keepdims=True, name=namer(f"{name}.pool"))(x)
        s = L.Conv2D(op.reduced, 1, use_bias=True, name=layer_name(f"{op.name}.fc1"))(s)
        s = L.Activation("relu", name=namer(f"{name}.relu"))(s)
        s = L.Conv2D(op.channels, 1, use_bias=True, name=layer_name(f"{op.name}.fc2"))(s)
        s = L.Activation("sigmoid", name=namer(f"{name}.gate"))(s)
        return L.Multiply(name=name)([x, s])
    if isinstance(op, ir.DropPath):
        # torchvision stochastic_depth(mode='row'): one Bernoulli(1 - rate) per sample, survivors
        # scaled by 1 / (1 - rate); Keras Dropout with a (batch, 1, 1, 1) mask is exactly that, and
        # like it the identity at inference.
        return L.Dropout(op.rate, noise_shape=(None, 1, 1, 1), name=name)(x)
    if isinstance(op, ir.GlobalAvgPool):
        return L.GlobalAveragePooling2D(name=name)(x)
    if isinstance(op, ir.Dropout):
        return L.Dropout(op.rate, name=name)(x)
    if isinstance(op, ir.Linear):
        return L.Dense(op.out_features, use_bias=op.bias, name=name)(x)
    raise TypeError(f"no Keras layer for {type(op).__name__}")


def _pool_layers(op: ir.Pool, x, name: str, namer: _Namer):
    """Pooling with PyTorch semantics (see ir.Pool): ``pads`` = symmetric padding + ceil extension."""
    _, keras = _tf()
    L = keras.layers
    t, l, b, r = op.pads
    p = op.padding
    if op.kind == "max":
        if op.pad_value == "zero" and p:
            x = L.ZeroPadding2D(p, name=namer(f"{name}.pad"))(x)
            t, l, b, r = 0, 0, b - p, r - p
        if any((t, l, b, r)):
            x = _custom("ConstantPad2D")((t, l, b, r), "neg_inf", name=namer(f"{name}.pad_neg_inf"))(x)
        return L.MaxPooling2D(op.kernel, strides=op.stride, padding="valid", name=name)(x)
    if op.kind != "avg":
        raise TypeError(f"unknown pool kind {op.kind!r}")
    _, h, w = op.in_shape
    _, oh, ow = op.out_shape
    counts = np.outer(avg_pool_counts(h, op.kernel, op.stride, p, oh, op.count_include_pad),
                      avg_pool_counts(w, op.kernel, op.stride, p, ow, op.count_include_pad))
    if np.all(counts == op.kernel * op.kernel):  # every window is a full k x k: the stock layer is exact
        if any((t, l, b, r)):
            x = L.ZeroPadding2D(((t, b), (l, r)), name=namer(f"{name}.pad"))(x)
        return L.AveragePooling2D(op.kernel, strides=op.stride, padding="valid", name=name)(x)
    return _custom("ExactAvgPool2D")(op.kernel, op.stride, p, (t, l, b, r), op.count_include_pad, name=name)(x)


def block_layers(block: ir.Block, x, namer: _Namer):
    """How a residual block becomes Keras layers: ``y = post(main(a) + shortcut(s))``.

    ``a = pre(x)``; ``s = a`` when ``block.shortcut_from == "pre"``, else ``x``; an empty shortcut is
    the identity. The layer producing the block's output is named ``<block>.out``.
    """
    _, keras = _tf()
    bn = block.name
    a = x
    for op in block.pre:
        a = op_layers(op, a, namer.for_op(op, bn), namer)
    s = a if block.shortcut_from == "pre" else x
    for op in block.shortcut:
        s = op_layers(op, s, namer.for_op(op, f"{bn}.shortcut"), namer)
    y = a
    for op in block.main:
        y = op_layers(op, y, namer.for_op(op, bn), namer)
    # The residual branch first, as in y = main + shortcut (an exact, commutative fp add either way).
    y = keras.layers.Add(name=namer(f"{bn}.out" if not block.post else f"{bn}.add"))([y, s])
    for i, op in enumerate(block.post):
        last = i == len(block.post) - 1
        y = op_layers(op, y, namer(f"{bn}.out") if last else namer.for_op(op, bn), namer)
    return y


def build(net: ir.Network, weights=None, *, data_format: str = "channels_last", dtype: str = "float32"):
    """The Keras functional model for ``net``, named ``net.name``, with ``weights`` loaded.

    ``weights``: a canonical weight set (checked against the IR), or None to keep Keras' initialisers.
    ``data_format``: the input layout, 'channels_last' (N, H, W, C) or 'channels_first' (N, C, H, W);
    the body is NHWC either way (see the module docstring). ``dtype``: 'float32', or 'float16' /
    'bfloat16' for Keras mixed precision (float32 variables, reduced-precision compute).
    """
    tf, keras = _tf()
    if data_format not in DATA_FORMATS:
        raise ResNetSpecError(f"tensorflow: data_format must be one of {', '.join(DATA_FORMATS)}, "
                              f"not {data_format!r}")
    if dtype not in _DTYPES:
        raise BackendUnavailable(f"tensorflow: unsupported dtype {dtype!r} (choose from {', '.join(_DTYPES)})")
    if weights is not None:
        from ..weights import check_weights

        weights = check_weights(net, weights, "weights")
    policy = None if dtype == "float32" else keras.DTypePolicy(f"mixed_{dtype}")
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        with _deep_recursion(_depth(net)):
            model = _graph(net, data_format, keras)
    finally:
        keras.config.set_dtype_policy(previous)
    if weights is not None:
        set_keras_weights(model, to_keras_weights(net, weights))
    return model


def _graph(net: ir.Network, data_format: str, keras):
    L = keras.layers
    c, h, w = net.input_shape
    namer = _Namer()
    if data_format == "channels_first":
        inp = keras.Input((c, h, w), name=namer("input"))
        x = L.Permute((2, 3, 1), name=namer("to_channels_last"))(inp)
    else:
        inp = x = keras.Input((h, w, c), name=namer("input"))
    for i, op in enumerate(net.stem):
        last = i == len(net.stem) - 1
        name = namer.for_op(op, "stem") if (getattr(op, "name", None) or not last) else namer("stem.out")
        x = op_layers(op, x, name, namer)
    for block in net.blocks:
        x = block_layers(block, x, namer)
    for i, op in enumerate(net.head):
        last = i == len(net.head) - 1
        name = namer.for_op(op, "head") if (getattr(op, "name", None) or not last) else namer("head.out")
        x = op_layers(op, x, name, namer)
    return keras.Model(inp, x, name=net.name)


def tap_model(net: ir.Network, model):
    """A model sharing ``model``'s layers whose outputs are every tap, in ``net.tap_names()`` order.

    Taps come from the layers named by :func:`tap_layer_names`, so a ``mutate`` that returns a rebuilt
    model with the same layer names still yields its taps. Outputs are NHWC except 'head'.
    """
    _, keras = _tf()
    names = tap_layer_names(net)
    outs = []
    for tap in net.tap_names():
        lname = names[tap]
        if lname is None:  # no stem: the tap is the (NHWC) input
            lname = "to_channels_last" if _has_layer(model, "to_channels_last") else None
        outs.append(model.get_layer(lname).output if lname else model.inputs[0])
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    with _deep_recursion(_depth(net)):
        return keras.Model(inputs, outs, name=f"{model.name}_taps")


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


# --- weights ---------------------------------------------------------------------------------------

def _conv_to_keras(w):
    """(O, I/g, kh, kw) -> (kh, kw, I/g, O), also for grouped convs (Keras' grouped kernel layout)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _conv_from_keras(k):
    return np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1)))


def _op_to_keras(op, weights) -> dict:
    """Canonical tensors of one op -> {Keras layer name: [arrays in the layer's weight order]}."""
    if isinstance(op, ir.Conv):
        arrs = [_conv_to_keras(weights[f"{op.name}.weight"])]
        if op.bias:
            arrs.append(weights[f"{op.name}.bias"])
        return {layer_name(op.name): arrs}
    if isinstance(op, ir.BatchNorm):
        return {layer_name(op.name): [weights[f"{op.name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]}
    if isinstance(op, ir.SqueezeExcite):
        return {layer_name(f"{op.name}.{fc}"): [_conv_to_keras(weights[f"{op.name}.{fc}.weight"]),
                                                 weights[f"{op.name}.{fc}.bias"]] for fc in ("fc1", "fc2")}
    if isinstance(op, ir.Linear):
        arrs = [np.ascontiguousarray(weights[f"{op.name}.weight"].T)]
        if op.bias:
            arrs.append(weights[f"{op.name}.bias"])
        return {layer_name(op.name): arrs}
    return {}


def _op_from_keras(op, get) -> dict:
    """Inverse of :func:`_op_to_keras`; ``get(layer name)`` returns that layer's weight arrays."""
    out = {}
    if isinstance(op, ir.Conv):
        arrs = get(layer_name(op.name))
        out[f"{op.name}.weight"] = _conv_from_keras(arrs[0])
        if op.bias:
            out[f"{op.name}.bias"] = arrs[1]
    elif isinstance(op, ir.BatchNorm):
        arrs = get(layer_name(op.name))
        out.update(zip((f"{op.name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")), arrs))
    elif isinstance(op, ir.SqueezeExcite):
        for fc in ("fc1", "fc2"):
            arrs = get(layer_name(f"{op.name}.{fc}"))
            out[f"{op.name}.{fc}.weight"] = _conv_from_keras(arrs[0])
            out[f"{op.name}.{fc}.bias"] = arrs[1]
    elif isinstance(op, ir.Linear):
        arrs = get(layer_name(op.name))
        out[f"{op.name}.weight"] = np.ascontiguousarray(arrs[0].T)
        if op.bias:
            out[f"{op.name}.bias"] = arrs[1]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def to_keras_weights(net: ir.Network, weights) -> dict:
    """Canonical weights -> ``{layer name: [arrays]}`` in Keras' order and layouts.

    Conv kernels (O, I/g, kh, kw) -> (kh, kw, I/g, O) (grouped ones too) plus the bias; BN ->
    [gamma, beta, moving_mean, moving_variance] = [weight, bias, running_mean, running_var];
    Dense kernel = Linear weight transposed, (in, out); SE fc1/fc2 are 1x1 Conv2D layers.
    """
    out = {}
    for op in net.all_ops():
        try:
            out.update(_op_to_keras(op, weights))
        except KeyError as exc:
            raise WeightsError(f"weights: missing tensor {exc.args[0]!r} for the Keras model of {net.name!r}") from None
    return out


def from_keras_weights(net: ir.Network, model_or_arrays) -> dict:
    """A Keras model built by :func:`build` (or a ``{layer name: [arrays]}`` dict) -> canonical weights."""
    get = _getter(model_or_arrays)
    out = {}
    for op in net.all_ops():
        out.update(_op_from_keras(op, get))
    return out


def _getter(model_or_arrays, rename=None):
    rename = rename or (lambda n: n)
    if isinstance(model_or_arrays, dict):
        def get(name):
            key = rename(name)
            if key not in model_or_arrays:
                raise WeightsError(f"no weights for Keras layer {key!r}")
            return [np.asarray(a) for a in model_or_arrays[key]]
    else:
        layers = {layer.name: layer for layer in model_or_arrays.layers}

        def get(name):
            key = rename(name)
            if key not in layers:
                raise WeightsError(f"the Keras model {model_or_arrays.name!r} has no layer {key!r}")
            return [np.asarray(a) for a in layers[key].get_weights()]
    return get


def set_keras_weights(model, arrays: dict, rename=None) -> None:
    """Load ``{layer name: [arrays]}`` into ``model`` (``rename`` maps our layer names to the model's),
    checking every shape and that every weight of the model is set."""
    rename = rename or (lambda n: n)
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


# --- keras.applications ----------------------------------------------------------------------------

def keras_applications_names(net: ir.Network) -> dict:
    """Our layer name -> the keras.applications ResNet/ResNetV2 layer name, derived from the IR.

    Stem conv1/bn1 -> conv1_conv/conv1_bn; block ``layer{s+1}.{i}`` -> ``conv{s+2}_block{i+1}``; its
    k-th residual conv -> ``_k_conv``, the shortcut conv/BN -> ``_0_conv``/``_0_bn``. A v1 block's BN
    after conv k is ``_k_bn``; a pre-activation block's ``pre`` BN is ``_preact_bn`` and the BN before
    conv k is ``_{k-1}_bn``. Head BN -> ``post_bn``, classifier -> ``predictions``.
    """
    names = {}
    for op in net.stem:
        if isinstance(op, ir.Conv):
            names[layer_name(op.name)] = "conv1_conv"
        elif isinstance(op, ir.BatchNorm):
            names[layer_name(op.name)] = "conv1_bn"
    for b in net.blocks:
        prefix = f"conv{b.stage + 2}_block{b.index + 1}"
        for op in b.pre:
            if isinstance(op, ir.BatchNorm):
                names[layer_name(op.name)] = f"{prefix}_preact_bn"
        k = 0
        for op in b.main:
            if isinstance(op, ir.Conv):
                k += 1
                names[layer_name(op.name)] = f"{prefix}_{k}_conv"
            elif isinstance(op, ir.BatchNorm):
                names[layer_name(op.name)] = f"{prefix}_{k}_bn"  # k = convs seen so far
            elif isinstance(op, (ir.SqueezeExcite,)):
                raise ResNetSpecError(f"{net.name}: keras.applications ResNets have no squeeze-excite")
        for op in b.shortcut:
            if isinstance(op, ir.Conv):
                names[layer_name(op.name)] = f"{prefix}_0_conv"
            elif isinstance(op, ir.BatchNorm):
                names[layer_name(op.name)] = f"{prefix}_0_bn"
    for op in net.head:
        if isinstance(op, ir.BatchNorm):
            names[layer_name(op.name)] = "post_bn"
        elif isinstance(op, ir.Linear):
            names[layer_name(op.name)] = "predictions"
    return names


def from_keras_applications(net: ir.Network, keras_model) -> dict:
    """Weights of a keras.applications ResNet/ResNetV2 model -> canonical weights for ``net``
    (e.g. ``keras_resnet50`` for ``ResNet50``)."""
    from ..weights import check_weights

    names = keras_applications_names(net)
    unmapped = [layer.name for layer in keras_model.layers if layer.weights and layer.name not in names.values()]
    if unmapped:
        raise WeightsError(f"{keras_model.name}: layer(s) {unmapped[:3]} have no counterpart in {net.name!r}; "
                           "is it the matching keras.applications model?")
    get = _getter(keras_model, rename=lambda n: names.get(n, n))
    out = {}
    for op in net.all_ops():
        out.update(_op_from_keras(op, get))
    return check_weights(net, out, keras_model.name)


def to_keras_applications(net: ir.Network, weights, keras_model):
    """Load canonical ``weights`` of ``net`` into a keras.applications ResNet/ResNetV2 model."""
    from ..weights import check_weights

    names = keras_applications_names(net)
    arrays = to_keras_weights(net, check_weights(net, weights, "weights"))
    set_keras_weights(keras_model, arrays, rename=lambda n: names[n])
    return keras_model


# --- running ---------------------------------------------------------------------------------------

def device_scope(device: str, allow_tf32: bool = False):
    """(tf.device context, description) for 'cpu' or 'cuda[:i]'; never falls back to the CPU."""
    tf, _ = _tf()
    if device == "cpu":
        return tf.device("/CPU:0"), "cpu"
    if device.startswith("cuda"):
        gpus = tf.config.list_physical_devices("GPU")
        try:
            idx = int(device.split(":", 1)[1]) if ":" in device else 0
        except ValueError:
            raise BackendUnavailable(f"tensorflow: unknown device {device!r}") from None
        if not gpus:
            build = tf.sysconfig.get_build_info()
            raise BackendUnavailable(
                "tensorflow: CUDA was requested but TensorFlow sees no GPU (tf.config.list_physical_devices"
                f"('GPU') is empty; tensorflow {tf.__version__}, built with CUDA: "
                f"{bool(build.get('is_cuda_build'))})")
        if idx >= len(gpus):
            raise BackendUnavailable(f"tensorflow: {device} requested but only {len(gpus)} GPU(s) are visible")
        tf.config.experimental.enable_tensor_float_32_execution(bool(allow_tf32))
        details = tf.config.experimental.get_device_details(gpus[idx])
        desc = f"cuda:{idx} ({details.get('device_name', 'GPU')}), TF32 {'on' if allow_tf32 else 'off'}"
        return tf.device(f"/GPU:{idx}"), desc
    raise BackendUnavailable(f"tensorflow: unknown device {device!r}")


def infer(net: ir.Network, weights, x: np.ndarray, *, device: str = "cpu", dtype: str = "float32",
          taps: bool = False, mutate=None, allow_tf32: bool = False, data_format: str = "channels_last"):
    """Run the Keras model in inference mode on NCHW ``x``.

    Returns ({'head': logits, [every tap when ``taps``]}, device description); taps are NCHW float32.
    ``mutate(model) -> model`` is applied to the built model first (planted-fault tests).
    """
    tf, keras = _tf()
    scope, desc = device_scope(device, allow_tf32)
    if dtype not in _DTYPES:
        raise BackendUnavailable(f"tensorflow: unsupported dtype {dtype!r} (choose from {', '.join(_DTYPES)})")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(net.input_shape):
        raise ResNetSpecError(f"input of shape {x.shape} does not match the spec's (N, {', '.join(map(str, net.input_shape))})")
    with scope:
        model = build(net, weights, data_format=data_format, dtype=dtype)
        if mutate is not None:
            model = mutate(model) or model
        run = tap_model(net, model) if taps else model
        feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if data_format == "channels_last" else x)
        call = lambda t: run(t, training=False)  # noqa: E731
        if any(isinstance(op, ir.Conv) and op.groups > 1 for op in net.all_ops()):
            # Keras runs each grouped conv as its own XLA function (TF's CPU kernel lacks groups); traced
            # once inside one tf.function instead of re-traced at every eager call.
            call = tf.function(call)
        try:
            outs = call(feed)
        except (tf.errors.UnimplementedError, tf.errors.NotFoundError) as exc:
            raise BackendUnavailable(f"tensorflow: {dtype} on {desc} is not supported here: "
                                     f"{str(exc).strip().splitlines()[0][:200]}") from None
    if not taps:
        result = {"head": _to_numpy(outs)}
    else:
        result = {}
        for tap, out in zip(net.tap_names(), outs):
            arr = _to_numpy(out)
            result[tap] = np.ascontiguousarray(arr.transpose(0, 3, 1, 2)) if arr.ndim == 4 else arr
    return result, f"{desc}, {versions()}"


def _to_numpy(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t).astype(np.float32)


# --- files -----------------------------------------------------------------------------------------

def load_keras(path: str):
    """Load a ``.keras`` file written by :func:`convert` (registers the custom layers first)."""
    import json
    import zipfile

    _, keras = _tf()
    try:
        with zipfile.ZipFile(path) as zf:
            layers = len(json.loads(zf.read("config.json"))["config"]["layers"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ResNetSpecError(f"{path}: not a .keras model file ({exc})") from None
    with _deep_recursion(layers):  # plain keras.saving.load_model fails on ResNet-1202 without this
        return keras.saving.load_model(path, custom_objects=custom_objects())


def convert(net: ir.Network, weights, out_dir: str, *, force: bool = False,
            data_format: str = "channels_last") -> list:
    """Write ``<name>.keras`` and the SavedModel folder ``<name>_savedmodel/``.

    The SavedModel's ``serving_default`` signature takes ``input`` (float32, batch dimension None, in
    ``data_format`` layout) and returns ``{'logits': ...}``. Both are written atomically; an existing
    output is replaced only with ``force``.
    """
    from ..fileio import atomic_path, check_writable

    from . import output_paths

    paths = dict(zip(("keras", "savedmodel"), output_paths("tensorflow", net.name, out_dir)))
    for p in paths.values():  # before importing TensorFlow: a refusal should be instant
        check_writable(p, force)
    _tf()
    os.makedirs(out_dir, exist_ok=True)
    model = build(net, weights, data_format=data_format)
    with _deep_recursion(_depth(net)):  # saving walks the graph recursively too
        with atomic_path(paths["keras"], force) as tmp:
            # Keras insists on the .keras suffix: save beside the temporary name, then move into place.
            try:
                model.save(tmp + ".keras")
                os.replace(tmp + ".keras", tmp)
            finally:
                if os.path.exists(tmp + ".keras"):
                    os.unlink(tmp + ".keras")
        with atomic_path(paths["savedmodel"], force, is_dir=True) as tmp:
            _export_savedmodel(net, model, tmp, data_format)
    return [paths["keras"], paths["savedmodel"]]


def _export_savedmodel(net: ir.Network, model, path: str, data_format: str) -> None:
    """SavedModel with one serving signature: ``input`` [None, ...] float32 -> ``{'logits': ...}``."""
    tf, keras = _tf()
    c, h, w = net.input_shape
    shape = [None, h, w, c] if data_format == "channels_last" else [None, c, h, w]

    def serve(x):
        return {"logits": model(x, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    archive.write_out(path, verbose=False)


def load_savedmodel(path: str):
    """The serving function of a SavedModel written by :func:`convert`: ``fn(input=x)['logits']``."""
    tf, _ = _tf()
    return tf.saved_model.load(path).signatures["serving_default"]


