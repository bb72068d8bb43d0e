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


def save_both(name: str, size: int, folder: str, x, seed: int) -> dict:
    """:func:`_application` saved as .keras and as .weights.h5 in ``folder``, with what the tests compare
    against: the model's logits on ``x`` (NCHW, fed as NHWC), computed once from the model in memory (both
    files hold its weights), its trainable parameter count (``params``) and Keras' ``count_params()``."""
    import os

    model = _application(name, size, seed)
    ref = np.asarray(model(np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))), training=False), np.float32)
    keras_path, h5_path = os.path.join(folder, f"{name}.keras"), os.path.join(folder, f"{name}.weights.h5")
    model.save(keras_path)
    model.save_weights(h5_path)
    made = {"keras": keras_path, "h5": h5_path, "size": size, "ref": ref,
            "params": sum(math.prod(w.shape) for w in model.trainable_weights), "count": model.count_params()}
    del model
    _release()
    return made


def describe(descs: list) -> list:
    """Each source description read back as the importer's worker does (``reader._describe``)."""
    from resnet_spec.backends.keras.reader import _describe

    out = [_describe(desc) for desc in descs]
    _release()
    return out


def _release() -> None:
    """Drop the models this kept worker built (a ResNet152 holds a quarter of a gigabyte)."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()
