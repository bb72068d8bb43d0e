"""IR -> a Keras 3 functional model, on whichever Keras backend is active (TensorFlow, JAX, PyTorch).

Layout. The model computes in NHWC. TensorFlow's CPU kernels implement Conv2D only for NHWC, and a
saved model must run wherever it is loaded, so ``data_format="channels_first"`` does not build NCHW
layers: it gives the model an NCHW input followed by one transpose (the ``to_channels_last`` Permute
layer) into the same NHWC body.

Exactness. Padding is never Keras' ``'same'``: every padded conv or pool is an explicit padding layer
followed by a ``'valid'`` one, with the IR's numbers. Max-pool padding that must never win is -inf;
average pooling divides by PyTorch's exact window counts (see :mod:`.layers`). BatchNormalization
gets the IR's epsilon unchanged (Keras 3 computes ``rsqrt(var + eps)`` with no lower bound on epsilon),
Keras' momentum ``1 - m`` for the IR's (PyTorch's) ``m``, and PyTorch's unbiased running variance in
training (:class:`TorchBatchNorm`). Names: :mod:`.names`. Keras is imported on first use only.

Structure. The network is lowered by the shared walk of ``backends/common.py`` (stem; per block pre,
main, shortcut, ``Add``, post; head). :data:`OPS` gives each IR op's layers and :class:`_Lowering` names
them, so a v1 bottleneck ``layer1.0`` becomes ``layer1-0-conv1``, ``-bn1``, ``-relu``, ``-conv2-pad``,
``-conv2``, ``-bn2``, ``-relu1``, ``-conv3``, ``-bn3``, its projection ``layer1-0-downsample-0``, ``-1``,
then ``layer1-0-add`` (main + shortcut) and the ReLU ``layer1-0-out``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys

from ... import ir
from ...errors import BackendUnavailable, ResNetSpecError
from .. import common
from ..legs import DTYPES
from . import frn
from . import res2net
from . import sknet
from .blur import blur_layers
from .layers import define
from .names import Namer, canonical_name, layer_name, tap_layer_names
from .resnest import split_attention_layers
from .weights import set_keras_weights, to_keras_weights
from .zero_init import kernel_init, restore_defaults, zero_kernels

DATA_FORMATS = ("channels_last", "channels_first")
#: Keras backend -> the package it needs.
KERAS_BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

_MODULES = {}


def missing(keras_backend: str) -> str | None:
    """None when Keras and ``keras_backend``'s framework can be imported (checked without importing)."""
    extra = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[keras_backend]
    for mod in ("keras", KERAS_BACKENDS[keras_backend]):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'resnet-spec[{extra}]')"
    return None


def keras_module(backend: str | None = None):
    """Import Keras (once), check it is Keras 3 (on ``backend`` when given), register the custom layers."""
    if not _MODULES:
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if importlib.util.find_spec("keras") is None:
            raise BackendUnavailable("keras is not installed (pip install 'resnet-spec[tensorflow]' or '[jax]')")
        import keras

        if not keras.__version__.startswith("3."):
            raise BackendUnavailable(f"the Keras backend needs Keras 3, found keras {keras.__version__}")
        _MODULES.update(keras=keras, layers=define(keras))
    keras = _MODULES["keras"]
    if backend is not None and keras.backend.backend() != backend:
        raise BackendUnavailable(f"keras-{backend} needs KERAS_BACKEND={backend} set before Keras is imported; "
                                 f"this process runs Keras on {keras.backend.backend()!r}")
    return keras


def custom_objects() -> dict:
    """The custom layer classes by registered name (also registered globally on first use)."""
    keras_module()
    return dict(_MODULES["layers"])


def _custom(name):
    keras_module()
    return _MODULES["layers"][f"resnet_spec>{name}"]


@contextlib.contextmanager
def deep_recursion(layers: int):
    """Keras walks a functional graph recursively (a few frames per layer), so a 1000-layer-deep ResNet
    exceeds Python's default limit of 1000 frames."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 8 * layers + 2000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def depth(net: ir.Network) -> int:
    """An upper bound on the number of Keras layers on the longest path of ``net``'s model."""
    return 3 * sum(1 for _ in net.all_ops()) + 3 * len(net.blocks) + 10


# --- IR -> Keras layers ----------------------------------------------------------------------------

def _L():
    return keras_module().layers


def _batch_norm(op: ir.BatchNorm, x, name, namer):
    # IR momentum is PyTorch's (weight of the new batch); Keras' is the weight of the old average.
    return _custom("TorchBatchNorm")(axis=-1, epsilon=op.eps, momentum=1.0 - op.momentum, name=name)(x)


def _squeeze_excite(op: ir.SqueezeExcite, x, name, namer):
    L, base = _L(), canonical_name(name)
    s = L.GlobalAveragePooling2D(keepdims=True, name=namer(f"{base}.pool"))(x)
    s = L.Conv2D(op.reduced, 1, use_bias=True, name=layer_name(f"{op.name}.fc1"), **kernel_init())(s)
    s = L.Activation("relu", name=namer(_se_relu(base)))(s)
    s = L.Conv2D(op.channels, 1, use_bias=True, name=layer_name(f"{op.name}.fc2"), **kernel_init())(s)
    s = L.Activation("sigmoid", name=namer(f"{base}.gate"))(s)
    return L.Multiply(name=name)([x, s])


def _eca(op: ir.ECA, x, name, namer):
    """Stock layers only (the .keras plain Keras loads uses this lowering too): the channel means as a
    length-C sequence of one feature, explicit zero padding, a 'valid' Conv1D, the gate back as (1, 1, C)."""
    L, base = _L(), canonical_name(name)
    s = L.GlobalAveragePooling2D(name=namer(f"{base}.pool"))(x)
    s = L.Reshape((op.channels, 1), name=namer(f"{base}.to_sequence"))(s)
    if op.padding:
        s = L.ZeroPadding1D(op.padding, name=namer(f"{base}.pad"))(s)
    s = L.Conv1D(1, op.kernel, padding="valid", use_bias=False, data_format="channels_last",
                 name=layer_name(f"{op.name}.conv"), **kernel_init())(s)
    s = L.Activation("sigmoid", name=namer(f"{base}.gate"))(s)
    s = L.Reshape((1, 1, op.channels), name=namer(f"{base}.to_channels"))(s)
    return L.Multiply(name=name)([x, s])


def _se_relu(base: str) -> str:
    """The canonical-style name of a squeeze-excite's ReLU layer (``layer1.0.se.relu``)."""
    return f"{base}.relu"


def _drop_path(op: ir.DropPath, x, name, namer):
    # torchvision stochastic_depth(mode='row'): one Bernoulli(1 - rate) per sample, survivors
    # scaled by 1 / (1 - rate); Keras Dropout with a (batch, 1, 1, 1) mask is exactly that.
    return _L().Dropout(op.rate, noise_shape=(None, 1, 1, 1), name=name)(x)


def _conv_layers(op: ir.Conv, x, name: str, namer: Namer, conv=None):
    """``conv``: the layer class (Conv2D; StdConv2D for a weight-standardized conv, backends/keras/norm.py)."""
    L = keras_module().layers
    if op.padding:
        x = L.ZeroPadding2D(op.padding, name=namer(f"{canonical_name(name)}.pad"))(x)
    # Keras refuses stride > 1 together with dilation > 1: convolve densely, then keep every s-th
    # output, which is exactly the strided dilated convolution.
    split = op.stride > 1 and op.dilation > 1
    x = (conv or L.Conv2D)(op.out_channels, op.kernel, strides=1 if split else op.stride, padding="valid",
                 dilation_rate=op.dilation, groups=op.groups, use_bias=op.bias, name=name, **kernel_init())(x)
    if split:
        x = L.MaxPooling2D(1, strides=op.stride, name=namer(f"{canonical_name(name)}.stride"))(x)
    return x


def _std_conv2d(eps: float):
    cls = _custom("StdConv2D")
    return lambda *args, **kwargs: cls(*args, eps=eps, **kwargs)


def _pool_layers(op: ir.Pool, x, name: str, namer: Namer):
    """Pooling with PyTorch semantics, from the IR's padding split (``ir.Pool.pad_split``): the counted
    padding is made real with zeros, the rest is -inf (max) or left out of the divisor (average)."""
    L = keras_module().layers
    base = canonical_name(name)
    counted, rest = op.pad_split
    if op.kind == "max":
        if counted:
            x = L.ZeroPadding2D(counted, name=namer(f"{base}.pad"))(x)
        if any(rest):
            x = _custom("ConstantPad2D")(rest, "neg_inf", name=namer(f"{base}.pad_neg_inf"))(x)
        return L.MaxPooling2D(op.kernel, strides=op.stride, padding="valid", name=name)(x)
    if op.kind != "avg":
        raise TypeError(f"unknown pool kind {op.kind!r}")
    rows, cols = op.divisors
    if set(rows) | set(cols) == {op.kernel}:  # every window is a full k x k (so no padding is left out)
        if counted:
            x = L.ZeroPadding2D(counted, name=namer(f"{base}.pad"))(x)
        return L.AveragePooling2D(op.kernel, strides=op.stride, padding="valid", name=name)(x)
    return _custom("ExactAvgPool2D")(op.kernel, op.stride, op.padding, op.pads, op.count_include_pad, name=name)(x)


#: IR op type -> Keras lowering ``(op, x, name, namer) -> tensor`` (every type of ``ir.OP_TYPES``).
OPS = {
    ir.Conv: lambda op, x, name, namer: _conv_layers(op, x, name, namer),
    ir.BatchNorm: _batch_norm,
    ir.ReLU: lambda op, x, name, namer: _L().Activation("relu", name=name)(x),
    ir.Pool: lambda op, x, name, namer: _pool_layers(op, x, name, namer),
    # a 1x1 max-pool with stride is x[:, ::s, ::s, :] (keras.applications' ResNetV2 shortcut)
    ir.Subsample: lambda op, x, name, namer: _L().MaxPooling2D(1, strides=op.stride, name=name)(x),
    ir.ChannelPad: lambda op, x, name, namer: _custom("ChannelPad")(op.before, op.after, name=name)(x),
    ir.SqueezeExcite: _squeeze_excite,
    ir.ECA: _eca,
    ir.DropPath: _drop_path,
    ir.GlobalAvgPool: lambda op, x, name, namer: _L().GlobalAveragePooling2D(name=name)(x),
    ir.Dropout: lambda op, x, name, namer: _L().Dropout(op.rate, name=name)(x),
    ir.Linear: lambda op, x, name, namer: _L().Dense(op.out_features, use_bias=op.bias, name=name, **kernel_init())(x),
    ir.SplitAttention: lambda op, x, name, namer: split_attention_layers(op, x, name, namer, _L(), _conv_layers,
                                                                         _batch_norm),
    ir.Res2Net: lambda op, x, name, namer: res2net.lower(OPS, _L(), op, x, namer),
    ir.SelectiveKernel: lambda op, x, name, namer: sknet.layers(op, x, name, namer, OPS, _L()),
    ir.GroupNorm: lambda op, x, name, namer: _L().GroupNormalization(groups=op.groups, axis=-1, epsilon=op.eps,
                                                                      name=name)(x),
    # the custom StdConv2D (backends/keras/norm.py) standardizes the raw kernel at every call
    ir.StdConv: lambda op, x, name, namer: _conv_layers(op, x, name, namer, conv=_std_conv2d(op.eps)),
    ir.BlurPool: lambda op, x, name, namer: blur_layers(op, x, name, namer, _L()),  # stock layers
    ir.FRN: lambda op, x, name, namer: frn.frn_layers(op, x, name, namer, _L()),  # stock layers
    ir.EvoNormS0: lambda op, x, name, namer: frn.evonorm_layers(op, x, name, namer, _L(), _custom),
}


class _Lowering(common.Lowering):
    """The shared walk (backends/common.py) creating Keras layers (:data:`OPS`) under unique Keras
    names (:class:`Namer`): an op's canonical name, else ``<owner>.<what>`` (``stem.relu``,
    ``layer1.0.relu``, ``layer2.0.shortcut.subsample``); the layer giving a tap is ``<tap>.out``
    (``stem.out``, ``layer1.0.out``, ``head.out``) unless it is a named stem or head op (``fc``)."""

    table, backend = OPS, "keras"

    def __init__(self, namer: Namer):
        self.namer = namer

    def name(self, op, owner, branch):
        if getattr(op, "name", None):
            return op.name
        if branch == "shortcut":
            owner = f"{owner}.shortcut"
        return common.join(owner or branch, common.HELPER_NAMES[type(op)])  # the stem's and head's owner is ''

    def op(self, op, x, name, tap):
        block_tap = tap is not None and tap not in (common.STEM, common.HEAD)
        if tap is not None and (block_tap or not getattr(op, "name", None)):
            name = f"{tap}.out"
        return self.lower(op, x, self.namer(name))

    def lower(self, op, x, layer: str):
        return self.lowering_of(op)(op, x, layer, self.namer)

    def add(self, y, s, block, tap):
        # main branch first, as in y = main + shortcut (an exact, commutative fp add either way)
        return keras_module().layers.Add(name=self.namer(f"{tap}.out" if tap else f"{block.name}.add"))([y, s])


def build(net: ir.Network, weights=None, *, data_format: str | None = None, dtype: str = "float32",
          backend: str | None = None, layout: str | None = None, lowering=None):
    """The Keras functional model for ``net`` on the active Keras backend, with ``weights`` loaded.

    ``weights``: a canonical weight set (checked against the IR), or None to keep Keras' initialisers.
    ``data_format``: the input layout, 'channels_last' (N, H, W, C, the default) or 'channels_first'
    (N, C, H, W); the body is NHWC either way. ``layout`` ('nhwc' or 'nchw', the spelling of ``convert
    --layout``) says the same; both given and disagreeing is an error. ``dtype``: 'float32', or 'float16' / 'bfloat16' for Keras mixed
    precision (float32 variables, reduced-precision compute). ``backend``: refuse unless Keras runs on it.
    ``lowering``: the :class:`_Lowering` subclass to walk with (``.stock.StockLowering``: stock layers only).
    """
    keras = keras_module(backend)
    layout = input_layout(layout, data_format)
    if dtype not in DTYPES:
        raise BackendUnavailable(f"keras: unsupported dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if weights is not None:
        from ...weights.check import check_weights

        weights = check_weights(net, weights, "weights")
    previous = keras.config.dtype_policy()
    if dtype != "float32":
        keras.config.set_dtype_policy(keras.DTypePolicy(f"mixed_{dtype}"))
    try:
        with deep_recursion(depth(net)), zero_kernels(weights is not None):
            model = _graph(net, layout, keras, lowering or _Lowering)
    finally:
        keras.config.set_dtype_policy(previous)
    if weights is not None:
        set_keras_weights(model, to_keras_weights(net, weights))
        restore_defaults(model, keras)
    return model


def input_layout(layout: str | None, data_format: str | None, target: str = "keras") -> str:
    """The input layout a Keras-made file takes, from the ``layout`` and ``data_format`` arguments of
    ``build`` and of the tensorflow and tflite ``convert`` (either, both when they agree, or neither:
    'nhwc'); ``target`` names the caller in errors."""
    if layout is None:
        return layout_of(data_format or "channels_last")
    layout = common.check_layout(layout, target)
    if data_format is not None and layout_of(data_format) != layout:
        raise ResNetSpecError(f"{target}: data_format {data_format!r} and layout {layout!r} name different "
                              "input layouts; give one of them")
    return layout


def layout_of(data_format: str) -> str:
    """Keras' ``data_format`` as an input layout: 'channels_last' is 'nhwc', 'channels_first' 'nchw'."""
    if data_format not in DATA_FORMATS:
        raise ResNetSpecError(f"keras: data_format must be one of {', '.join(DATA_FORMATS)}, not {data_format!r}")
    return "nchw" if data_format == "channels_first" else "nhwc"


def _graph(net: ir.Network, layout: str, keras, lowering):
    """Input in ``layout``, one ``Permute`` into the NHWC body where it is NCHW (the shared entry
    transpose, :func:`backends.common.entry_permutation`), then the walk."""
    namer = Namer()
    inp = x = keras.Input(common.input_dims(net.input_shape, layout), name=namer("input"))
    perm = common.entry_permutation(layout, "nhwc")
    if perm is not None:  # Keras' Permute counts axes from 1, without the batch
        x = keras.layers.Permute(perm[1:], name=namer(common.ENTRY_NAMES["nhwc"]))(inp)
    x = common.walk(lowering(namer), net, x)
    return keras.Model(inp, x, name=net.name)


class _ReluSites(_Lowering):
    """The shared walk without Keras, naming layers as :class:`_Lowering` does: records the Keras name of
    every ReLU layer in walk order (an IR ReLU, the ReLU inside each squeeze-excite, a split attention's
    two). Helper layers other than those are not named here; their names have bases of their own (``.pad``,
    ``.pool``), so skipping them changes no ReLU's name. A name that missed would fail ``model.get_layer`` in
    the training step, and a site out of order would fail the decisions' shapes or the gradients; the
    train-parity tests count the sites of every leg against the IR's ReLUs (and squeeze-excites)."""

    def __init__(self, namer: Namer):
        super().__init__(namer)
        self.sites: list = []

    def lower(self, op, x, layer: str):
        if isinstance(op, ir.ReLU):
            self.sites.append(layer)
        elif isinstance(op, ir.SqueezeExcite):
            self.sites.append(self.namer(_se_relu(canonical_name(layer))))
        elif isinstance(op, ir.SplitAttention):  # its two ReLUs (backends/keras/resnest.py names them)
            self.sites += [self.namer(f"{canonical_name(layer)}.{act}") for act in ("act0", "act1")]
        elif isinstance(op, ir.Res2Net):  # each split conv's ReLU, named as backends/keras/res2net.py names it
            self.sites += [self.namer(res2net.relu_name(op, i)) for i in range(op.convs)]
        elif isinstance(op, ir.SelectiveKernel):  # each path's ReLU, then the attention's (torch's call order)
            self.sites += [self.namer(name) for name in sknet.relu_names(op, canonical_name(layer))]
        return x

    def add(self, y, s, block, tap):
        self.namer(f"{tap}.out" if tap else f"{block.name}.add")
        return y


def relu_layer_names(net: ir.Network) -> list:
    """The Keras layer name of every ReLU call of ``net``'s model, in the order of the shared walk: the
    order in which the PyTorch model calls its ``nn.ReLU`` modules (``parity --train`` pairs them up)."""
    namer = Namer()
    namer("input")
    lw = _ReluSites(namer)
    common.walk(lw, net, None)
    return lw.sites


def tap_model(net: ir.Network, model):
    """A model sharing ``model``'s layers whose outputs are every tap, in ``net.tap_names()`` order.

    Taps come from the layers named by :func:`tap_layer_names`, so a ``mutate`` that returns a rebuilt
    model with the same layer names still yields its taps. Outputs are NHWC except 'head'.
    """
    keras = keras_module()
    names = tap_layer_names(net)
    have = {layer.name for layer in model.layers}
    outs = []
    for tap in net.tap_names():
        lname = names[tap]
        if lname is None:  # no stem: the tap is the (NHWC) input
            entry = common.ENTRY_NAMES["nhwc"]
            lname = entry if entry in have else None
        outs.append(model.get_layer(lname).output if lname else model.inputs[0])
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    with deep_recursion(depth(net)):
        return keras.Model(inputs, outs, name=f"{model.name}_taps")
