"""What a ``.keras`` file may ask of Keras, read from its ``config.json`` alone before Keras is imported
or sees the file (:func:`check_config`, from :func:`resnet_spec.archive.check_keras_model`).

Classes. Keras deserializes every mapping with a ``class_name``: the model, its layers, the objects in
their configs. ``safe_mode`` refuses only a Lambda's bytecode: a stock ``TFSMLayer`` loads a SavedModel
from any path, ``module`` and ``registered_name`` pick classes from other modules and registries. The
allow-list: the layers this project's Keras backend (stock ones, and ``backends/keras/layers.py``'s as
``resnet_spec>NAME``) and keras.applications' ResNet/ResNetV2 write, with ``ReLU`` (:data:`LAYERS`, each
from the module Keras writes for it); a ``Functional`` model at the top, none inside; :data:`OBJECTS`
(stock initializers and regularizers, float dtype policies: a quantized one makes other variables).
``compile_config`` is never deserialized (Keras loads with ``compile=False``).

Values. Keras allocates a layer's variables when it builds it, before any weight is read: on its
``build_config`` input shape, else on the shape of its first call. Each layer's values (Conv2D, Dense,
the batch norms; ExactAvgPool2D's divisor table) follow from its integer fields and its input shape,
propagated through the functional graph from the ``InputLayer``s (with the ``build_config``, the
larger); a layer whose input channels cannot be told is refused (Keras cannot build it either).
Refused: more than :data:`~.budgets.KERAS_MAX_PARAMS` together; more variables than the weights file
declares (which :func:`~.archive.check_h5` bounds by the bytes it stores); an activation over
:data:`~.budgets.KERAS_MAX_ACTIVATION` values for one image (a padding bomb).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from . import budgets as B
from . import keras_rules as R
from .backends.keras import layers as custom
from .errors import ResNetSpecError
from .fileio import shown

STOCK = "keras.layers"
MODEL = ("keras.src.models.functional", "Functional")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16")
#: the objects a layer's config may hold, by (module, class_name); ``__keras_tensor__`` (a symbolic
#: tensor in a node's arguments) has no module
OBJECTS = {(None, "__keras_tensor__")} | \
    {(module, cls) for module in ("keras", "keras.dtype_policies") for cls in ("DTypePolicy", "FloatDTypePolicy")} | \
    {("keras.initializers", name) for name in (
        "Zeros", "Ones", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal",
        "VarianceScaling", "RandomUniform", "RandomNormal", "TruncatedNormal")} | \
    {("keras.regularizers", name) for name in ("L1", "L2", "L1L2")}


@dataclass(frozen=True)
class Layer:
    """A layer class a ``.keras`` file may name: the module Keras writes for it, its output shape from
    ``(config, input shapes)``, and the values it allocates when built on a shape (None: none)."""
    module: str
    shape: Callable
    values: Callable | None = None
    variables: bool = True  # False: an array the layer builds, never saved (ExactAvgPool2D's divisors)

    def registered(self, name: str):
        """The ``registered_name`` Keras writes for class ``name`` (stock layers: none)."""
        return f"{custom.PACKAGE}>{name}" if self.module == custom.__name__ else None


#: the allow-list of layer classes, with what each declares
LAYERS = {
    "InputLayer": Layer(STOCK, R.input_shape), "Conv2D": Layer(STOCK, R.conv, R.conv_values),
    "Dense": Layer(STOCK, R.dense, R.dense_values), "BatchNormalization": Layer(STOCK, R.same_shape, R.bn_values),
    "Activation": Layer(STOCK, R.same_shape), "ReLU": Layer(STOCK, R.same_shape), "Dropout": Layer(STOCK, R.same_shape),
    "Add": Layer(STOCK, R.broadcast),
    "Multiply": Layer(STOCK, R.broadcast), "ZeroPadding2D": Layer(STOCK, R.zero_pad),
    "MaxPooling2D": Layer(STOCK, R.pool), "AveragePooling2D": Layer(STOCK, R.pool),
    "GlobalAveragePooling2D": Layer(STOCK, R.global_pool), "GlobalMaxPooling2D": Layer(STOCK, R.global_pool),
    "Permute": Layer(STOCK, R.permute),
    # the stock equivalents of this project's own layers (backends/keras/stock.py: files plain Keras loads)
    "Cropping2D": Layer(STOCK, R.crop), "Concatenate": Layer(STOCK, R.concat), "Reshape": Layer(STOCK, R.reshape),
    "ZeroPadding3D": Layer(STOCK, R.zero_pad3d),
    "Cropping3D": Layer(STOCK, R.crop3d),  # Res2Net's channel splits (backends/keras/res2net.py)
    # ECA's conv across the channels (a sequence of one feature)
    "Conv1D": Layer(STOCK, R.conv1d, R.conv1d_values), "ZeroPadding1D": Layer(STOCK, R.zero_pad1d),
    # SKNet's attention: its row per path, the softmax across the paths
    "Cropping1D": Layer(STOCK, R.crop1d), "Softmax": Layer(STOCK, R.softmax),
    "ConstantPad2D": Layer(custom.__name__, R.constant_pad), "ChannelPad": Layer(custom.__name__, R.channel_pad),
    "ExactAvgPool2D": Layer(custom.__name__, R.exact_pool, R.exact_values, variables=False),
    "TorchBatchNorm": Layer(custom.__name__, R.same_shape, R.bn_values),
    # GroupNorm (stock) and the weight-standardized conv (custom; the stock .keras holds Conv2D instead)
    "GroupNormalization": Layer(STOCK, R.group_norm, R.gn_values),
    "StdConv2D": Layer(custom.__name__, R.conv, R.std_conv_values),
    # EvoNorm-S0 (custom: backends/keras/frn.py); FRN is stock layers (GroupNormalization, Cropping2D, its TLU
    # a Maximum)
    "Maximum": Layer(STOCK, R.broadcast),
    "EvoNormS0": Layer(custom.__name__, R.group_norm, R.evonorm_values),
}
assert set(custom.CLASSES) <= set(LAYERS)


def check_config(path: str, cfg: dict, held: int | None, error=ResNetSpecError) -> int:
    """Refuse ``config.json`` (``cfg``, its layer list already checked by
    :func:`~.archive.keras_layers`) when it names a class outside the allow-list, or declares more
    values than its budgets or than the weights file declares (``held``; None: not known). Returns the
    values of the variables it declares."""
    label = f"{shown(path)}: config.json"
    _check_classes(label, cfg, error)
    return _Graph(label, cfg["config"]["layers"], error).check(held)


def _check_classes(label: str, cfg: dict, error) -> None:
    module, name = cfg.get("module"), cfg.get("class_name")
    if (module, name) != MODEL or cfg.get("registered_name") not in (None, name):
        raise error(f"{label}: the model is of class {name!r} from module {module!r}; the allow-list takes a "
                    f"{MODEL[1]!r} model from {MODEL[0]!r}")
    _check_objects(label, "the model", [v for k, v in cfg.items() if k not in ("config", "compile_config")], error)
    _check_objects(label, "the model", [v for k, v in cfg["config"].items() if k != "layers"], error)
    for layer in cfg["config"]["layers"]:
        cls, rule = layer["class_name"], LAYERS.get(layer["class_name"])
        where = f"layer {shown(layer['name'])}"
        if rule is None:
            raise error(f"{label}: {where} is of class {cls!r}, which is not on the allow-list of .keras layer "
                        "classes (the layers this project's and keras.applications' ResNets are made of)")
        registered = (None, cls) if rule.registered(cls) is None else (rule.registered(cls),)
        if layer.get("module") != rule.module or layer.get("registered_name") not in registered:
            raise error(f"{label}: {where} is of class {cls!r} from module {layer.get('module')!r}, registered as "
                        f"{layer.get('registered_name')!r}; the allow-list takes {cls!r} from {rule.module!r} "
                        f"only, registered as {registered[-1]!r}")
        build = layer.get("build_config")
        if build and (not isinstance(build, dict) or set(build) != {"input_shape"}):
            raise error(f"{label}: {where} has a build_config {_short(build)}; Keras builds the layer on it, and "
                        "the allow-list takes {'input_shape': [...]} only")
        dtype = layer["config"].get("dtype") if isinstance(layer.get("config"), dict) else None
        if isinstance(dtype, str) and dtype not in FLOAT_DTYPES:
            raise error(f"{label}: {where} has dtype {dtype!r}; the allow-list takes {', '.join(FLOAT_DTYPES)}")
        _check_objects(label, where, [v for k, v in layer.items() if k not in ("class_name", "module")], error)


def _short(value) -> str:
    """A mapping by its first keys, anything else by its type (never the whole, which may be huge)."""
    if isinstance(value, dict):
        return "with keys " + ", ".join(repr(key[:40]) for key in list(value)[:4])
    return f"of type {type(value).__name__}"


def _check_objects(label: str, where: str, value, error) -> None:
    """Every mapping with a ``class_name`` below ``value`` on :data:`OBJECTS`, dtype policies float."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
            if "class_name" not in item:
                continue
            cls = item["class_name"]
            if (item.get("module"), cls) not in OBJECTS or item.get("registered_name") not in (None, cls):
                raise error(f"{label}: {where} holds an object of class {cls!r} from module "
                            f"{item.get('module')!r}, which is not on the allow-list of .keras objects")
            policy = item.get("config") if cls.endswith("DTypePolicy") else {"name": "float32"}
            if not isinstance(policy, dict) or policy.get("name") not in FLOAT_DTYPES:
                name = policy.get("name") if isinstance(policy, dict) else policy
                raise error(f"{label}: {where} has dtype policy {name!r}; the allow-list takes "
                            f"{', '.join(FLOAT_DTYPES)}")


# -- the functional graph: each node's output shape, each layer's variables ------------------------------


def _refs(node) -> list:
    """The ``(layer, node index)`` of every tensor a node takes, in order: Keras 3's ``__keras_tensor__``
    mappings (``keras_history``), or the legacy ``[layer, node, tensor, kwargs]`` lists."""
    out, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            history = item.get("config", {}).get("keras_history") if item.get("class_name") == "__keras_tensor__" \
                and isinstance(item.get("config"), dict) else None
            if isinstance(history, list) and len(history) == 3 and isinstance(history[0], str):
                out.append((history[0], history[1]))
            else:
                stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                out.append((item[0], item[1]))
            else:
                stack.extend(reversed(item))
    return out


class _Graph:
    """The functional graph of a layer list: node ``(layer name, index)`` -> (layer, its inputs' nodes)."""

    def __init__(self, label: str, layers: list, error):
        self.label, self.layers, self.error = label, layers, error
        self.nodes, self.shapes, self.keys = {}, {}, {}  # the nodes; their output shapes; each layer's nodes
        for layer in layers:
            nodes = [[]] if layer["class_name"] == "InputLayer" else layer.get("inbound_nodes")
            self.keys[id(layer)] = [(layer["name"], i) for i in range(len(nodes) if isinstance(nodes, list) else 0)]
            for key, node in zip(self.keys[id(layer)], nodes or []):
                self.nodes[key] = (layer, _refs(node))

    def refuse(self, layer: dict, why: str):
        return self.error(f"{self.label}: layer {shown(layer['name'])} ({layer['class_name']}) {why}")

    def shape(self, key):
        """The output shape of node ``key`` (None: not known), its inputs' first, without recursion."""
        stack, visiting = [key], set()
        while stack:
            k = stack[-1]
            if k in self.shapes or k not in self.nodes:
                self.shapes.setdefault(k, None)
                stack.pop()
                continue
            layer, refs = self.nodes[k]
            missing = [r for r in refs if r not in self.shapes]
            if missing and k not in visiting:  # (still missing on the way back: a cycle, not known)
                visiting.add(k)
                stack.extend(missing)
                continue
            stack.pop()
            self.shapes[k] = None if missing else self.apply(layer, LAYERS[layer["class_name"]].shape,
                                                              [self.shapes[r] for r in refs])
        return self.shapes[key]

    def apply(self, layer: dict, fn, *args):
        try:
            return fn(layer["config"] if isinstance(layer.get("config"), dict) else {}, *args)
        except R.Bad as exc:
            raise self.refuse(layer, f"cannot be built as config.json declares it: {exc}") from None
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise self.refuse(layer, f"has a malformed config ({type(exc).__name__}: {exc})") from None

    def check(self, held: int | None) -> int:
        """Refuse a layer over the budgets, then a model over its weights; returns the variables' values."""
        total = variables = 0
        for layer in self.layers:
            count, what = self._values(layer)
            total += count
            variables += count if LAYERS[layer["class_name"]].variables else 0
            if total > B.KERAS_MAX_PARAMS:
                raise self.refuse(layer, f"declares {count:,} values ({what}), {total:,} with the layers before "
                                         f"it; a .keras file read here may declare at most {B.KERAS_MAX_PARAMS:,} "
                                         "(Keras allocates them when it builds the model, before any weight is read)")
            for shape in filter(None, map(self.shape, self.keys[id(layer)])):
                values = math.prod(d or 1 for d in shape[1:])
                if values > B.KERAS_MAX_ACTIVATION:
                    dims = "x".join("?" if d is None else f"{d:,}" for d in shape[1:])
                    raise self.refuse(layer, f"outputs {dims} ({values:,}) values for one image; a .keras file read "
                                             f"here may declare at most {B.KERAS_MAX_ACTIVATION:,} for one activation")
        if held is not None and variables > held:
            raise self.error(f"{self.label}: the layers declare {variables:,} values of variables and model.weights.h5 "
                             f"holds {held:,}: the weights are not this model's (Keras would allocate the declared "
                             "ones before it compares)")
        return variables

    def _values(self, layer: dict) -> tuple:
        """(values, what) ``layer`` allocates when built: on its ``build_config`` input shape when it has
        one (Keras builds it on that as it is deserialized), else on its first node's input; the
        largest over these and its other nodes' inputs (a shared layer)."""
        fn = LAYERS[layer["class_name"]].values
        build = layer.get("build_config")
        shapes = []
        if fn is not None and isinstance(build, dict) and isinstance(build.get("input_shape"), list):
            shapes.append(self.apply(layer, lambda conf: R.input_shape({"batch_shape": build["input_shape"]}, [])))
        for key in self.keys[id(layer)] if fn is not None else []:
            refs = self.nodes[key][1]
            shapes.append(self.shape(refs[0]) if refs else None)
        if not shapes:
            return 0, ""  # no variables, or never built
        first, others = self.apply(layer, fn, shapes[0]), []
        for shape in shapes[1:]:
            try:
                others.append(fn(layer["config"], shape))
            except (R.Bad, TypeError, ValueError, IndexError, KeyError, AttributeError):
                pass  # Keras builds on the first; a call on another shape fails after it
        return max([first] + others, key=lambda v: v[0])
