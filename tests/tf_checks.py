"""TensorFlow/Keras worker functions for tests/test_tf_backend.py.

Run only through ``resnet_spec.isolate.run_isolated`` (TensorFlow must never be imported in the pytest
process). Each function batches many checks so that one worker pays TensorFlow's import once; inputs
and results are plain numpy arrays, IR objects and dicts. NCHW in, NCHW out.
"""

from __future__ import annotations

# inside isolate.keep_workers (the test session), run_isolated runs these in one kept TensorFlow process
KEPT_WORKER = "tests: tensorflow"

import numpy as np

from resnet_spec.backends.keras.applications import keras_applications_names
from resnet_spec.backends.keras.weights import from_arrays, from_keras_model, getter, op_to_keras


def _backend():
    from resnet_spec.backends.keras import tf as tf_backend

    tf_backend._tf()
    return tf_backend


def op_layers(T, op, x, name: str, namer):
    """The Keras layer(s) of one IR op applied to the NHWC tensor ``x``, its main layer named ``name``:
    the op's entry in the backend's ``OPS`` table (the one the model's lowering uses)."""
    return T.OPS[type(op)](op, x, name, namer)


def run_ops(cases):
    """``[(label, op, weights, x_nchw)]`` -> ``{label: y_nchw}``: each IR op as a one-op Keras model."""
    T = _backend()
    keras = T._MODULES["keras"]
    out = {}
    for label, op, weights, x in cases:
        namer = T._Namer()
        c, h, w = op.in_shape
        inp = keras.Input((h, w, c))
        model = keras.Model(inp, op_layers(T, op, inp, namer.for_op(op, "op"), namer))
        arrays = op_to_keras(op, weights)
        if arrays:
            T.set_keras_weights(model, arrays)
        y = np.asarray(model(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False))
        out[label] = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
    return out


def _zero_first_bn(model):
    """A planted fault: zero the first block's first BN scale (gamma)."""
    layer = next(layer for layer in model.layers if layer.name.startswith("layer1-0-bn"))
    gamma, *rest = layer.get_weights()
    layer.set_weights([np.zeros_like(gamma), *rest])
    return model


def _drop_path_check(T, keras):
    """DropPath(0.5) on ones: in training each sample is all 0 or all 1/(1-0.5); at inference ones."""
    from resnet_spec import ir

    op = ir.DropPath(0.5, (3, 4, 4), (3, 4, 4))
    namer = T._Namer()
    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, op_layers(T, op, inp, "drop_path", namer))
    ones = np.ones((64, 4, 4, 3), np.float32)
    train = np.asarray(model(ones, training=True))
    per_sample = {tuple(np.unique(s)) for s in train}
    return {"train_values": sorted(per_sample), "kept": int((train[:, 0, 0, 0] > 0).sum()),
            "eval_identity": bool(np.array_equal(np.asarray(model(ones, training=False)), ones))}


def _bn_settings(model, keras):
    """The distinct (epsilon, momentum) pairs of a Keras model's BatchNormalization layers, and their number."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return sorted({(float(layer.epsilon), float(layer.momentum)) for layer in bns}), len(bns)


def unit_suite(nets, x_by_net, weights_by_net, op_cases):
    """Everything the unit tests need from one worker (see test_tf_backend.py)."""
    T = _backend()
    tf, keras = T._tf()
    res = {"ops": run_ops(op_cases), "nets": {}}
    for key, net in nets.items():
        w, x = weights_by_net[key], x_by_net[key]
        r = {}
        r["taps"], r["device"] = T.infer(net, w, x, taps=True)
        r["head_cf"] = T.infer(net, w, x, data_format="channels_first")[0]["head"]
        r["fault"] = T.infer(net, w, x, mutate=_zero_first_bn)[0]["head"]
        model = T.build(net, w)
        back = from_keras_model(net, model)
        r["roundtrip_keys_equal"] = sorted(back) == sorted(w)
        r["roundtrip_max_abs"] = max(float(np.abs(back[k] - w[k]).max()) for k in w)
        r["layer_names"] = [layer.name for layer in model.layers]
        r["tap_layers"] = T.tap_layer_names(net)
        r["bn"], r["bn_count"] = _bn_settings(model, keras)
        drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
        r["dropouts"] = [(layer.name, float(layer.rate), layer.noise_shape) for layer in drops]
        for dt in ("float16", "bfloat16"):
            try:
                r[dt] = T.infer(net, w, x, dtype=dt)[0]["head"]
            except Exception as exc:  # reported, judged by the test
                r[dt] = f"{type(exc).__name__}: {exc}"
        res["nets"][key] = r
    res["drop_path"] = _drop_path_check(T, keras)
    # Refusals.
    errors = {}
    some = next(iter(nets.values()))
    for label, kwargs in {"cuda": {"device": "cuda"}, "cuda1": {"device": "cuda:1"}, "tpu": {"device": "tpu"},
                          "int8": {"dtype": "int8"}, "fmt": {"data_format": "NCHW"}}.items():
        try:
            T.infer(some, weights_by_net[next(iter(nets))], x_by_net[next(iter(nets))], **kwargs)
            errors[label] = None
        except Exception as exc:
            errors[label] = (type(exc).__name__, str(exc))
    res["errors"] = errors
    bad = dict(weights_by_net[next(iter(nets))])
    bad.pop(next(iter(bad)))
    try:
        T.build(some, bad)
        res["errors"]["missing_weight"] = None
    except Exception as exc:
        res["errors"]["missing_weight"] = (type(exc).__name__, str(exc))
    res["versions"] = T.versions()
    return res


# --- keras.applications ----------------------------------------------------------------------------

def _randomize(model, seed):
    """Seeded random weights for a keras.applications model, BN statistics included."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        if isinstance(layer, _keras().layers.BatchNormalization):
            c = ws[0].shape
            ws = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
            if layer.name.endswith("_3_bn"):  # keep a deep v1 net's activations in a sane range
                ws[0] = ws[0] * 0.3
        else:
            k = ws[0]
            fan_out = k.shape[-1] * (k.shape[0] * k.shape[1] if k.ndim == 4 else 1)
            ws = [rng.normal(0, np.sqrt(2.0 / fan_out), k.shape)] + [rng.normal(0, 0.05, b.shape) for b in ws[1:]]
        layer.set_weights([np.asarray(a, np.float32) for a in ws])
    return model


def _keras():
    return _backend()._MODULES["keras"]


def from_keras_applications(net, keras_model) -> dict:
    """Weights of a keras.applications ResNet/ResNetV2 model -> canonical weights for ``net`` (e.g.
    ``keras_resnet50`` for ``ResNet50``), through ``keras_applications_names``: the 'from' direction of
    the name map. Unchecked beyond names and shapes; the package's way in for such a model is the import
    (``keras:NAME``), which checks source and spec layer by layer."""
    from resnet_spec.errors import WeightsError
    from resnet_spec.weights import check_weights

    names = keras_applications_names(net)
    unmapped = [layer.name for layer in keras_model.layers if layer.weights and layer.name not in names.values()]
    if unmapped:
        raise WeightsError(f"{keras_model.name}: layer(s) {unmapped[:3]} have no counterpart in {net.name!r}; "
                           "is it the matching keras.applications model?")
    out = from_arrays(net, getter(keras_model, rename=lambda n: names.get(n, n)))
    return check_weights(net, out, keras_model.name)


def keras_apps_suite(cases, x_by_size, out_dir):
    """For each (spec name, keras.applications class name, input size):

    * 'from': random keras.applications weights -> from_keras_applications -> our model; outputs of both
      (the canonical weights go to ``out_dir/<spec>_<size>.safetensors`` for the PyTorch comparison);
    * 'to': init_weights(random_bn=True) -> to_keras_applications -> the keras.applications model;
      outputs of both.
    """
    import resnet_spec
    from resnet_spec.weights import init_weights, save_weights

    T = _backend()
    keras = T._MODULES["keras"]
    out = {}
    for spec, cls, size in cases:
        net = resnet_spec.load(spec) if size == 224 else resnet_spec.load(f"extends: {spec}\ninput: {{size: {size}}}\n")
        x = x_by_size[size]
        xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        app = getattr(keras.applications, cls)(weights=None, classifier_activation=None, input_shape=(size, size, 3))
        _randomize(app, seed=1)
        w_from = from_keras_applications(net, app)
        ours = T.build(net, w_from)
        r = {"from_ref": np.asarray(app(xl, training=False)), "from_ours": np.asarray(ours(xl, training=False))}
        path = f"{out_dir}/{spec}_{size}.safetensors"
        save_weights(w_from, path)
        r["weights_path"] = path
        w_to = init_weights(net, seed=3, random_bn=True)
        T.to_keras_applications(net, w_to, app)
        r["to_ref"] = np.asarray(app(xl, training=False))
        T.set_keras_weights(ours, T.to_keras_weights(net, w_to))
        r["to_ours"] = np.asarray(ours(xl, training=False))
        r["bn_ours"], r["bn_ref"] = _bn_settings(ours, keras), _bn_settings(app, keras)
        r["roundtrip_max_abs"] = max(float(np.abs(v - w_to[k]).max())
                                     for k, v in from_keras_applications(net, app).items())
        try:  # a mismatched model is refused with a named layer
            from_keras_applications(resnet_spec.load("resnet20"), app)
            r["mismatch"] = None
        except Exception as exc:
            r["mismatch"] = f"{type(exc).__name__}: {exc}"
        out[(spec, size)] = r
        del app, ours
        keras.backend.clear_session()
    return out


# --- whole zoo -------------------------------------------------------------------------------------

def zoo_suite(items, seed):
    """``[(key, spec_text, x)]`` -> ``{key: {tap: NCHW array}}`` on init_weights(seed, random_bn=True)."""
    import resnet_spec
    from resnet_spec.weights import init_weights

    T = _backend()
    keras = T._MODULES["keras"]
    out = {}
    for key, text, x in items:
        net = resnet_spec.load(text)
        out[key] = T.infer(net, init_weights(net, seed=seed, random_bn=True), x, taps=True)[0]
        keras.backend.clear_session()
    return out


# --- files -----------------------------------------------------------------------------------------

def convert_suite(net, weights, out_dir, data_format):
    """Convert; a second convert without force must be refused; returns the paths and any error."""
    T = _backend()
    paths = T.convert(net, weights, out_dir, data_format=data_format)
    try:
        T.convert(net, weights, out_dir, data_format=data_format)
        refused = None
    except Exception as exc:
        refused = f"{type(exc).__name__}: {exc}"
    again = T.convert(net, weights, out_dir, data_format=data_format, force=True)
    return {"paths": paths, "refused": refused, "again": again}


def reload_suite(items):
    """``[(keras_path, savedmodel_path, x)]`` (x in the model's layout) -> outputs of both files, batch 1
    and the whole batch; proves the custom layers reload in a fresh process."""
    T = _backend()
    out = []
    for kpath, spath, x in items:
        model = T.load_keras(kpath)
        serve = T.load_savedmodel(spath)
        r = {"keras": np.asarray(model(x, training=False)),
             "saved": np.asarray(serve(input=x)["logits"]),
             "saved_1": np.asarray(serve(input=x[:1])["logits"]),
             "signature": str(serve.structured_input_signature),
             "custom": sorted({type(layer).__name__ for layer in model.layers
                               if type(layer).__module__.startswith("resnet_spec")})}
        out.append(r)
    return out


def _tflite_logits(data: bytes, x: np.ndarray) -> np.ndarray:
    """A .tflite flatbuffer run in tf.lite's interpreter on ``x`` (in the file's own layout)."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=data)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], np.ascontiguousarray(x, np.float32))
    interp.invoke()
    return np.array(interp.get_tensor(interp.get_output_details()[0]["index"]))


def layout_outputs(net, weights, out_dir: str, x: np.ndarray, calibration: np.ndarray) -> dict:
    """tests/test_layout.py, in one TensorFlow worker: writes the NCHW files of the Keras-made targets into
    ``out_dir`` (``convert``'s ``tensorflow`` and ``tflite`` backends with ``layout="nchw"``: .keras,
    SavedModel, TFLite float32, float16 and int8) and returns ``{label: logits}`` of each fed NCHW ``x``,
    of the default (NHWC) Keras model and TFLite files fed ``x`` transposed (``<label> default``), each NCHW
    TFLite file's input signature (``signatures``) and the paths written (``files``)."""
    import os

    import tensorflow as tf

    from resnet_spec.backends.keras import tflite

    T = _backend()
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    keras_file, saved = T.convert(net, weights, out_dir, layout="nchw")
    files = {"keras": keras_file, "savedmodel": saved}
    out = {"keras default": np.asarray(T.build(net, weights)(xh, training=False)), "signatures": {}}
    for dtype in ("float32", "float16", "int8"):
        calib = calibration if dtype == "int8" else None
        default = tflite.to_bytes(net, weights, dtype=dtype, calibration=calib)
        out[f"tflite {dtype} default"] = _tflite_logits(default, xh)
        sub = os.path.join(out_dir, dtype)
        (files[f"tflite {dtype}"],) = tflite.convert(net, weights, sub, dtype=dtype, calibration=calib, layout="nchw")
    out["keras"] = np.asarray(T.load_keras(keras_file)(x, training=False))
    out["savedmodel"] = np.asarray(T.load_savedmodel(saved)(input=x)["logits"])
    for label in [k for k in files if k.startswith("tflite")]:
        with open(files[label], "rb") as fh:
            data = fh.read()
        out[label] = _tflite_logits(data, x)
        out["signatures"][label] = [int(d) for d in tf.lite.Interpreter(model_content=data).get_input_details()[0]
                                    ["shape_signature"]]
    out["files"] = files
    return out
