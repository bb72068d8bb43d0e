"""TFLite backend: ``<name>.tflite`` (float32) converted from the Keras model of :mod:`backends.keras.tf`.

The Keras model (same IR, same canonical weights, ``data_format`` layout, channels_last by default;
dynamic batch) is converted with TensorFlow's ``tf.lite.TFLiteConverter.from_keras_model`` using
only TFLite's builtin ops, no quantisation or other optimisation,
so the file computes the spec's function in float32 (the custom Keras layers lower to PAD,
MAX_POOL_2D, AVERAGE_POOL_2D, MEAN and MUL). Converting needs TensorFlow; running the file needs only
a TFLite interpreter: ``verify`` uses the LiteRT package (``ai-edge-litert``) when it is installed,
else ``tf.lite.Interpreter``. The spec's name and YAML are stored in the flatbuffer's metadata table
(``resnet_spec.name``, ``resnet_spec.spec``; see :func:`resnet_spec.inspect_files.tflite_with_spec`).
"""

from __future__ import annotations

import os

from ... import ir

NAME = "tflite"


def available() -> str | None:
    from . import tf as tf_backend

    reason = tf_backend.available()
    return f"converting to TFLite needs TensorFlow: {reason}" if reason else None


def to_bytes(net: ir.Network, weights, *, data_format: str = "channels_last") -> bytes:
    """The .tflite flatbuffer for ``net`` with ``weights``."""
    from . import tf as tfb

    tf, _ = tfb._tf()
    with tfb.deep_recursion(tfb.depth(net)):
        model = tfb.build(net, weights, data_format=data_format)
        # from_keras_model freezes every variable into a constant. (A traced tf.function converted with
        # from_concrete_functions kept BN statistics as READ_VARIABLE ops that read uninitialised
        # resources in the interpreter: NaN logits. verify catches that.)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        data = converter.convert()
    from tensorflow.lite.python import schema_py_generated

    from ...inspect_files import tflite_with_spec

    return tflite_with_spec(data, net, schema_py_generated)  # the spec in the metadata table


def convert(net: ir.Network, weights, out_dir: str, *, force: bool = False,
            data_format: str = "channels_last") -> list:
    """Write ``<out_dir>/<name>.tflite`` atomically; nothing is overwritten without ``force``."""
    from ...fileio import atomic_path, check_writable
    from .. import output_paths

    (path,) = output_paths(NAME, net.name, out_dir)
    check_writable(path, force)
    data = to_bytes(net, weights, data_format=data_format)
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return [path]
