"""Keras models -> :class:`~...importers.source.Source`: ``.keras`` files, ``keras:NAME`` (keras.applications
ResNet/ResNetV2, fresh weights) and ``keras:NAME=FILE.weights.h5``.

TensorFlow runs only in a worker process (:mod:`resnet_spec.isolate`): the worker returns the layer
list -- class, the config fields that decide the numbers, inbound layers, weight arrays -- and this
module names the layers as torchvision does (keras.applications' ``conv3_block2_1_conv`` is
``layer2.1.conv1``; this project's own Keras layers already carry canonical names) and reads strides,
paddings (``ZeroPadding2D`` before a ``valid`` conv), pools and BN epsilon/momentum from the configs.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from ..common import entry_permutation
from ...archive import check_h5, check_keras_model
from ...fileio import open_regular, shown
from ...isolate import run_isolated
from ...importers.source import ImportRefused, Layer, Recogniser, Source

_KEEP = ("strides", "padding", "use_bias", "epsilon", "momentum", "pool_size", "activation", "groups",
         "kernel_size", "pads", "value", "data_format", "kernel", "stride", "count_include_pad", "scale",
         "center", "dilation_rate", "dims")
_APP = re.compile(r"^conv(\d+)_block(\d+)_(\d+|preact)_(conv|bn)$")


def _descriptor(source: str, input_size) -> tuple:
    """(label, {how the worker gets the model}), after the checks a file gets before Keras opens it."""
    if source.startswith("keras:"):
        name, _, h5 = source[len("keras:"):].partition("=")
        if h5:  # a FIFO or /dev/zero is said to be one, and HDF5 bombs refused, before Keras opens it
            with open_regular(h5, error=ImportRefused, missing="no such weights file") as fh:
                check_h5(shown(h5), fh, os.fstat(fh.fileno()).st_size, ImportRefused)
        size = input_size or 224
        hw = [size, size] if isinstance(size, int) else list(size)
        return shown(source), {"app": name, "h5": h5 or None, "size": hw}
    if source.endswith(".h5"):
        raise ImportRefused(f"{shown(source)}: a .weights.h5 file holds no architecture; give it with its model, "
                           "e.g. " + shown("keras:ResNet50=" + source))
    check_keras_model(source, ImportRefused)  # archive bombs, layer count, declared input size
    return shown(source), {"path": os.path.abspath(source)}


def _load(desc: dict):
    """In the worker: the Keras model (softmax classifiers are left on; see :func:`_logits`)."""
    import keras

    if "path" in desc:
        from . import tf as tf_backend  # the custom layers of this project's own .keras files

        try:
            return tf_backend.load_keras(desc["path"])
        except ImportRefused:
            raise
        except Exception as exc:
            raise ImportRefused(f"{shown(desc['path'])}: not a loadable .keras model ({_first_line(exc)})") from None
    name = desc["app"]
    fn = getattr(keras.applications, name, None)
    if fn is None or not name.startswith("ResNet"):
        raise ImportRefused(f"{shown('keras:' + name)}: keras.applications has no ResNet/ResNetV2 model {name!r}")
    keras.utils.set_random_seed(0)
    model = fn(weights=None, input_shape=(*desc["size"], 3), classifier_activation=None)
    if desc["h5"]:
        from .backend import same_file

        with open_regular(desc["h5"], error=ImportRefused) as fh:  # checked again, on the file Keras reads
            check_h5(shown(desc["h5"]), fh, os.fstat(fh.fileno()).st_size, ImportRefused)
            with same_file(desc["h5"], fh, "model.weights.h5") as checked:
                try:
                    model.load_weights(checked)
                except Exception as exc:
                    raise ImportRefused(f"{shown(desc['h5'])}: cannot load into keras.applications.{name}: "
                                       f"{_first_line(exc)}") from None
    return model


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _describe(desc: dict) -> dict:
    """Worker: every layer's class, deciding config fields, inbound layer names and weights."""
    model = _load(desc)
    cfg = model.get_config()
    layers = []
    for entry in cfg["layers"]:
        conf = entry.get("config", {})
        inbound = re.findall(r'"keras_history": \["([^"]+)"', json.dumps(entry.get("inbound_nodes", [])))
        layer = model.get_layer(entry["name"])
        layers.append({"name": entry["name"], "cls": entry["class_name"].split(">")[-1],
                       "config": {k: json.loads(json.dumps(conf[k], default=str)) for k in _KEEP if k in conf},
                       "inbound": inbound, "weights": [np.asarray(w, np.float32) for w in layer.get_weights()]})
    shape = list(model.inputs[0].shape)
    return {"layers": layers, "input": [d if d is None else int(d) for d in shape]}


def run_keras(desc: dict, x: np.ndarray):
    """Worker: run the source model on ``x``, in the layout the model takes (the reader's
    ``facts['layout']``: NHWC, or NCHW behind an entry Permute), returning logits."""
    import keras

    model = _logits(_load(desc))
    y = model(x, training=False)
    return np.asarray(keras.ops.convert_to_numpy(y), np.float32), f"keras {keras.__version__}"


def _logits(model):
    import keras

    last = model.layers[-1]
    if last.__class__.__name__ == "Dense" and getattr(last, "activation", None) is not keras.activations.linear:
        last.activation = keras.activations.linear  # compare logits: a spec's head ends at the classifier
    return model


def read_keras(source: str, input_size=None) -> Source:
    from ...extras import require

    require(f"reading {shown(source)}", "keras")
    label, desc = _descriptor(source, input_size)  # the file's checks: in this process, before the worker
    return _Mapper.source(label, "keras", {"keras_source": desc}, run_isolated(_describe, desc))


#: this project's name of ResNeSt's avd pool layer (``layer2-0-avd_first``): its stage and place
_AVD = re.compile(r"^layer(\d+)[.-]\d+[.-]avd_(first|last)$")


class _Mapper(Recogniser):
    def __init__(self, src: Source, info: dict):
        self.src, self.info = src, info
        self.by_name = {layer["name"]: layer for layer in info["layers"]}
        self.preact = any(n.endswith("_preact_bn") for n in self.by_name)

    def canonical(self, name: str) -> str | None:
        fixed = {"conv1_conv": "conv1", "conv1_bn": "bn1", "post_bn": "bn_final", "predictions": "fc"}
        if name in fixed:
            return fixed[name]
        m = _APP.match(name)
        if m is None:  # this project's own Keras layers: canonical names with '.' spelled as backends.keras.names.SEP
            from .names import canonical_name

            return canonical_name(name)
        s, b, k, t = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        blk = f"layer{s - 1}.{b - 1}"
        if k == "0":
            return f"{blk}.downsample.{0 if t == 'conv' else 1}"
        if k == "preact":
            return f"{blk}.bn1"
        return f"{blk}.conv{k}" if t == "conv" else f"{blk}.bn{int(k) + 1 if self.preact else k}"

    def refuse(self, layer, why):
        return ImportRefused(f"{self.src.label}: layer {layer['name']!r} ({layer['cls']}): {why}")

    def run(self):
        self.src.facts["layout"] = self.entry_layout()
        for layer in self.info["layers"]:
            c = layer["config"]
            if c.get("data_format") == "channels_first":
                raise self.refuse(layer, "channels_first models are not supported; import the channels_last one")
            if not layer["weights"]:
                continue
            name = self.canonical(layer["name"])
            {"Conv2D": self.conv, "BatchNormalization": self.bn, "TorchBatchNorm": self.bn, "Dense": self.dense}.get(
                layer["cls"], self.unknown)(name, layer)
        self.facts()

    def entry_layout(self) -> str:
        """The input layout the model takes: NHWC (Keras' own), or NCHW when the layer reading the input
        is a ``Permute`` to NHWC (dims (2, 3, 1): ``convert --layout nchw``'s entry). A Permute of the
        input with other dims, or an input read both permuted and as it is, is refused naming the layer."""
        inputs = {layer["name"] for layer in self.info["layers"] if layer["cls"] == "InputLayer"}
        users = [layer for layer in self.info["layers"] if inputs & set(layer["inbound"])]
        permute = next((layer for layer in users if layer["cls"] == "Permute"), None)
        if permute is None:
            return "nhwc"
        want = list(entry_permutation("nchw", "nhwc")[1:])  # Keras counts the axes from 1, without the batch
        dims = list(permute["config"].get("dims") or [])
        if dims != want:
            raise self.refuse(permute, f"a Permute of the input with dims {dims}; import reads an NHWC input, or "
                                       f"an NCHW one permuted to NHWC by dims {want}")
        if len(users) > 1:
            other = next(layer for layer in users if layer is not permute)
            raise self.refuse(other, f"reads the input as it is while {permute['name']!r} permutes it to NHWC; "
                                     "a ResNet reads its input once")
        self.src.notes.append("the model takes NCHW input (one Permute to NHWC first, as convert --layout nchw "
                              "writes it): the spec is layout-free; the proof feeds the model NCHW")
        return "nchw"

    def unknown(self, name, layer):
        raise self.refuse(layer, "a layer with weights that a ResNet does not have")

    def conv(self, name, layer):
        c, w = layer["config"], layer["weights"]
        k = w[0].shape[0]
        s = c.get("strides", [1, 1])
        if len(set(s)) != 1 or w[0].shape[0] != w[0].shape[1] or len(set(c.get("dilation_rate", [1, 1]))) != 1:
            raise self.refuse(layer, f"non-square kernel or strides {s}")
        if c.get("padding") == "same":
            if s[0] > 1 and k > 1:
                raise self.refuse(layer, f"'same' padding with stride {s[0]} pads asymmetrically (TensorFlow "
                                         "puts the extra row at the bottom); a spec pads symmetrically")
            pad = k // 2
        else:
            pad = self.zero_pad(layer)
        self.src.weights[f"{name}.weight"] = np.ascontiguousarray(np.transpose(w[0], (3, 2, 0, 1)))
        bias = bool(c.get("use_bias", len(w) > 1))
        if bias:
            self.src.weights[f"{name}.bias"] = w[1]
        # a strided dilated conv is written dense, then every s-th output kept (model._conv_layers)
        sub = self.by_name.get(f"{layer['name']}-stride")
        stride = sub["config"]["strides"][0] if sub and sub["cls"] == "MaxPooling2D" and s[0] == 1 else s[0]
        self.src.layers[name] = Layer(name, "conv", self.src.weights[f"{name}.weight"].shape, bias, layer["name"],
                                      stride, pad, c.get("dilation_rate", [1])[0])

    def zero_pad(self, layer) -> int:
        prev = self.by_name.get(layer["inbound"][0]) if layer["inbound"] else None
        if prev is None or prev["cls"] != "ZeroPadding2D":
            return 0
        p = prev["config"]["padding"]
        flat = [v for pair in p for v in pair] if isinstance(p[0], list) else list(p)
        if len(set(flat)) != 1:
            raise self.refuse(prev, f"asymmetric zero padding {p}; a spec pads symmetrically")
        return flat[0]

    def bn(self, name, layer):
        c, w = layer["config"], layer["weights"]
        if not c.get("scale", True) or not c.get("center", True) or len(w) != 4:
            raise self.refuse(layer, "BatchNormalization without scale or center; a spec's BN has both")
        for leaf, arr in zip(("weight", "bias", "running_mean", "running_var"), w):
            self.src.weights[f"{name}.{leaf}"] = arr
        eps = float(str(np.float32(c.get("epsilon", 1e-3))))
        self.src.layers[name] = Layer(name, "bn", (w[0].shape[0],), True, layer["name"], eps=eps)
        self.src.facts.setdefault("eps", eps)
        self.src.facts.setdefault("momentum", round(1.0 - float(c.get("momentum", 0.99)), 6))

    def dense(self, name, layer):
        w = layer["weights"]
        if layer["config"].get("activation") not in ("linear", "softmax", None):
            raise self.refuse(layer, f"classifier activation {layer['config']['activation']!r}")
        if layer["config"].get("activation") == "softmax":
            self.src.notes.append(f"the source applies softmax after {layer['name']!r}; compared on logits")
        self.src.weights[f"{name}.weight"] = np.ascontiguousarray(w[0].T)
        if len(w) > 1:
            self.src.weights[f"{name}.bias"] = w[1]
        self.src.layers[name] = Layer(name, "linear", (w[0].shape[1], w[0].shape[0]), len(w) > 1, layer["name"])

    def facts(self):
        f = self.src.facts
        f["stem_pool"] = None
        for layer in self.info["layers"]:
            c = layer["config"]
            if layer["cls"] == "MaxPooling2D" and layer["name"] in ("pool1_pool", "maxpool"):
                f["stem_pool"] = self.stem_pool(layer)
            elif layer["cls"] == "MaxPooling2D" and c.get("pool_size") in ([1, 1], 1):
                f["strided_identity"] = True
            elif layer["cls"] in ("AveragePooling2D", "ExactAvgPool2D") and _AVD.match(layer["name"]):
                # ResNeSt's avd pool: where it sits, and the stage's stride (its split attention keeps stride 1)
                stage, where = _AVD.match(layer["name"]).groups()
                f["avd"] = "before_3x3" if where == "first" else "after_3x3"
                stride = c.get("stride") or c.get("strides", [2])[0]
                f.setdefault("shortcut_pool_strides", {})[int(stage) - 1] = stride
            elif layer["cls"] in ("AveragePooling2D", "ExactAvgPool2D"):
                stage = re.match(r"^layer(\d+)\.", layer["name"])
                if stage:
                    stride = c.get("stride") or c.get("strides", [2])[0]
                    f.setdefault("shortcut_pool_strides", {})[int(stage.group(1)) - 1] = stride
                    if "count_include_pad" in c:
                        f["shortcut_pool"] = {"ceil_mode": True, "count_include_pad": bool(c["count_include_pad"])}
        f.setdefault("strided_identity", False)
        shape = self.info["input"]
        h, w = shape[1:3] if f.get("layout", "nhwc") == "nhwc" else shape[2:4]
        if h and w:
            f["input_size"] = h if h == w else [h, w]

    def stem_pool(self, layer) -> dict:
        c = layer["config"]
        ps = c["pool_size"][0] if isinstance(c["pool_size"], list) else c["pool_size"]
        st = c["strides"][0] if isinstance(c["strides"], list) else c["strides"]
        out = {"kernel": ps, "stride": st, "padding": 0}
        prev = self.by_name.get(layer["inbound"][0]) if layer["inbound"] else None
        while prev is not None and prev["cls"] in ("ZeroPadding2D", "ConstantPad2D", "Concatenate"):
            body = None
            if prev["cls"] == "ZeroPadding2D":
                out.update(padding=self.zero_pad(layer), pad_value="zero")
            else:
                t, b, body = self.stem_pad(prev)
                if out["padding"] == 0 and (body or prev["config"].get("value") == "neg_inf"):
                    out["padding"] = t
                if b > t:
                    out["ceil_mode"] = True
            layer = prev
            prev = self.by_name.get(body or layer["inbound"][0]) if layer["inbound"] else None
        return out

    def stem_pad(self, layer) -> tuple:
        """(top, bottom, the padded layer's name or None) of a stem pool's padding layer: this
        project's ConstantPad2D, or the stock file's edge rows (Concatenate of Cropping2D copies
        around the tensor, ``backends/keras/stock.py``; its columns are the same numbers)."""
        if layer["cls"] == "ConstantPad2D":
            t, _, b, _ = layer["config"]["pads"]
            return t, b, None
        names = layer["inbound"]
        crops = [self.by_name.get(n, {}).get("cls") == "Cropping2D" for n in names]
        if crops.count(False) != 1:
            raise self.refuse(layer, "a Concatenate before the stem pool that is not edge padding")
        i = crops.index(False)
        return i, len(names) - 1 - i, names[i]
