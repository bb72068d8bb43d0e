"""Keras-side helpers for tests/test_import.py, run in worker processes only (TensorFlow never runs in
the pytest process). No torch imports here."""

from __future__ import annotations

import math

import numpy as np


def save_application(name: str, size: int, path: str, weights_only: bool, seed: int = 0) -> dict:
    """keras.applications.NAME (classifier logits) with random weights and non-trivial BN statistics,
    saved as .keras or .weights.h5; returns Keras' own parameter counts."""
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
    if weights_only:
        model.save_weights(path)
    else:
        model.save(path)
    return {"params": sum(math.prod(w.shape) for w in model.trainable_weights)}


def sweep(names: list, size: int, folder: str, x, first_seed: int = 0) -> list:
    """For each keras.applications NAME: save .keras and .weights.h5 (random weights and BN
    statistics), read both back as the importer's worker does, and run the source on ``x``. One
    TensorFlow process for the whole sweep. Returns [(source, description, logits, params)]."""
    import os

    from resnet_spec.backends.keras.reader import _describe, run_keras

    out = []
    for i, name in enumerate(names):
        for weights_only in (False, True):
            path = os.path.join(folder, f"{name}.weights.h5" if weights_only else f"{name}.keras")
            counts = save_application(name, size, path, weights_only, seed=first_seed + i)
            desc = ({"app": name, "h5": path, "size": [size, size]} if weights_only
                    else {"path": path})
            source = f"keras:{name}={path}" if weights_only else path
            out.append((source, desc, _describe(desc), run_keras(desc, x)[0], counts["params"]))
    return out
