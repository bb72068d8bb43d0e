"""Keras-side helpers for tests/test_import.py, run in worker processes only (TensorFlow never runs in
the pytest process). No torch imports here."""

from __future__ import annotations

# inside isolate.keep_workers (the test session), run_isolated runs these in one kept TensorFlow process
KEPT_WORKER = "tests: tensorflow"

import math

import numpy as np


def _application(name: str, size: int, seed: int):
    """keras.applications.NAME (classifier logits) with random weights and non-trivial BN statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 2.0, v.shape)])
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            k, bias = layer.get_weights()
            layer.set_weights([k, rng.normal(0, 0.05, bias.shape)])
    return model


def save_application(name: str, size: int, path: str, weights_only: bool, seed: int = 0) -> dict:
    """:func:`_application` saved as .keras or .weights.h5; returns Keras' own parameter counts."""
    model = _application(name, size, seed)
    if weights_only:
        model.save_weights(path)
    else:
        model.save(path)
    return {"params": sum(math.prod(w.shape) for w in model.trainable_weights)}


def sweep(names: list, size: int, folder: str, x, first_seed: int = 0) -> list:
    """For each keras.applications NAME: one model (random weights and BN statistics) saved as .keras and
    as .weights.h5, each read back as the importer's worker does (the source description from the file),
    and the model's logits on ``x``, computed once from the model in memory (both files hold its weights;
    the importer's own way of running a source, ``run_keras``, is covered by test_import_keras). One
    TensorFlow process for the whole sweep. Returns [(source, description, info, logits, params)]."""
    import os

    from resnet_spec.backends.keras.reader import _describe

    out = []
    for i, name in enumerate(names):
        model = _application(name, size, first_seed + i)
        ref = np.asarray(model(np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))), training=False), np.float32)
        params = sum(math.prod(w.shape) for w in model.trainable_weights)
        keras_path, h5_path = os.path.join(folder, f"{name}.keras"), os.path.join(folder, f"{name}.weights.h5")
        model.save(keras_path)
        model.save_weights(h5_path)
        for source, desc in ((keras_path, {"path": keras_path}),
                             (f"keras:{name}={h5_path}", {"app": name, "h5": h5_path, "size": [size, size]})):
            out.append((source, desc, _describe(desc), ref, params))
    return out
