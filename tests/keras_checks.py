"""Worker functions for tests/test_keras_backends.py: Keras on one backend per worker process.

Each function selects its Keras backend (``KERAS_BACKEND``) before Keras is imported, so it must run
in a fresh process (``resnet_spec.isolate.run_isolated``). NCHW numpy in, NCHW numpy out.
"""

from __future__ import annotations

import sys

import numpy as np


def _err(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 -- the test inspects the type and message
        return [type(exc).__name__, str(exc)]
    return None


def write_keras(nets, weights, xs, out_dir):
    """On TensorFlow: ``convert`` each net (.keras + SavedModel) and run the reloaded .keras file."""
    import resnet_spec
    from resnet_spec.backends.keras import tf as tf_backend

    out = {}
    for key, net in nets.items():
        paths = tf_backend.convert(net, weights[key], f"{out_dir}/{key}")
        model = resnet_spec.load_keras(paths[0])
        out[key] = {"path": paths[0], "y": np.asarray(model(xs[key].transpose(0, 2, 3, 1), training=False))}
    return out


def leg_suite(backend, nets, weights, xs, keras_files):
    """On Keras backend ``backend``: infer every net with taps, reload the TensorFlow-written .keras
    files, and record what a TensorFlow-only request says; finally whether TensorFlow got imported."""
    import resnet_spec
    from resnet_spec.backends import get
    from resnet_spec.backends.keras import backend as keras_backend, tf as tf_backend

    keras_backend.select(backend)
    leg = get(f"keras-{backend}")
    res = {"nets": {}}
    for key, net in nets.items():
        r = {}
        r["taps"], r["device"] = leg.infer(net, weights[key], xs[key], taps=True)
        model = resnet_spec.build(net, "keras", weights=weights[key])
        r["layer_names"] = [layer.name for layer in model.layers]
        r["variable_paths"] = [v.path for v in model.weights]
        loaded = resnet_spec.load_keras(keras_files[key])
        r["loaded"] = np.asarray(keras_backend.to_numpy(loaded(xs[key].transpose(0, 2, 3, 1), training=False)))
        res["nets"][key] = r
    net = next(iter(nets.values()))
    res["errors"] = {
        "build_tensorflow": _err(lambda: resnet_spec.build(net, "tensorflow")),
        "savedmodel": _err(lambda: tf_backend.convert(net, None, "/nonexistent/never-written")),
        "other_leg": _err(lambda: get("keras-tensorflow" if backend != "tensorflow" else "keras-jax").build(net)),
        "cuda": _err(lambda: leg.infer(net, None, xs[next(iter(nets))], device="cuda")),
    }
    res["backend"] = __import__("keras").backend.backend()
    res["tensorflow_imported"] = "tensorflow" in sys.modules
    return res
