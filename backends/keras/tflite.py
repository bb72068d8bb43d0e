"""TFLite backend: ``<name>.tflite`` converted from the Keras model of :mod:`backends.keras.tf`.

The Keras model (same IR, same canonical weights, its input in ``layout``: NHWC by default, NCHW with
``layout="nchw"``, one TRANSPOSE at the entry into the NHWC body; dynamic batch) is converted with
TensorFlow's ``tf.lite.TFLiteConverter.from_keras_model`` using only TFLite's builtin ops.
``dtype="float32"`` (the default): no quantisation or other optimisation, so the file computes the
spec's function in float32 (the custom Keras layers lower to PAD, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN
and MUL). ``dtype="float16"``: TFLite's standard float16
post-training quantisation (``Optimize.DEFAULT`` with ``supported_types=[tf.float16]``): the weights
(BN folded by the converter) are stored in float16 and each feeds a DEQUANTIZE op, so the file computes
in float32 on float16-rounded weights, with float32 input and output. ``dtype="int8"``: full-integer
quantization calibrated on the caller's images (:func:`_full_integer`): int8 weights and activations,
float32 input and output. Converting needs TensorFlow;
running the file needs only a TFLite interpreter: ``verify`` uses the LiteRT package (``ai-edge-litert``)
when it is installed, else ``tf.lite.Interpreter``. The spec's name, YAML and the dtype are stored in
the flatbuffer's metadata table (``resnet_spec.name``, ``resnet_spec.spec``, ``resnet_spec.dtype``,
``resnet_spec.layout``; see
:func:`resnet_spec.inspect_files.tflite_with_spec`).
"""

from __future__ import annotations

import os

from ... import ir

NAME = "tflite"
DTYPES = ("float32", "float16", "int8")


def available() -> str | None:
    from . import tf as tf_backend

    reason = tf_backend.available()
    return f"converting to TFLite needs TensorFlow: {reason}" if reason else None


def to_bytes(net: ir.Network, weights, *, data_format: str | None = None, dtype: str = "float32",
             calibration=None, layout: str | None = None) -> bytes:
    """The .tflite flatbuffer for ``net`` with ``weights``, in ``dtype`` (float32, float16 weights, or int8
    calibrated on ``calibration``, NCHW float32 images), its input in ``layout`` ('nhwc' or 'nchw';
    default: that of ``data_format``), recorded in its metadata."""
    from ...errors import ResNetSpecError
    from . import tf as tfb

    if dtype not in DTYPES:
        raise ResNetSpecError(f"tflite: dtype {dtype!r} is not supported (choose from {', '.join(DTYPES)})")
    layout = tfb.input_layout(layout, data_format, "tflite")
    tf, _ = tfb._tf()
    with tfb.deep_recursion(tfb.depth(net)):
        model = tfb.build(net, weights, layout=layout)
        # from_keras_model freezes every variable into a constant. (A traced tf.function converted with
        # from_concrete_functions kept BN statistics as READ_VARIABLE ops that read uninitialised
        # resources in the interpreter: NaN logits. verify catches that.)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if dtype == "float16":  # float16 weights + DEQUANTIZE; the ops compute in float32
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        if dtype == "int8":
            _full_integer(tf, converter, model, calibration, layout)
        data = converter.convert()
    from tensorflow.lite.python import schema_py_generated

    from ...inspect_files import tflite_float16_weights, tflite_with_spec

    if dtype == "float16":
        _check_float16_range(net, data, schema_py_generated, tflite_float16_weights)
    return tflite_with_spec(data, net, schema_py_generated, dtype=dtype, layout=layout)  # the metadata table


def _full_integer(tf, converter, model, calibration, layout: str) -> None:
    """TFLite full-integer quantization: int8 weights (per channel) and activations, every op an int8
    builtin (TFLITE_BUILTINS_INT8: a model with an op that has no int8 kernel is refused by the converter
    rather than left in float); activation ranges from ``calibration`` (the representative dataset, one
    image a step). Input and output stay float32 (a QUANTIZE op first, a DEQUANTIZE last), so the file
    is a drop-in replacement for the float32 one. Max-pool padding, -inf in the float files, becomes edge
    padding (exact for max pools; an -inf constant would stretch its tensor's int8 range to infinity)."""
    import numpy as np

    from ...errors import ResNetSpecError

    if calibration is None:
        raise ResNetSpecError("tflite int8: calibration images are needed")
    for layer in model.layers:
        if type(layer).__name__ == "ConstantPad2D" and layer.value == "neg_inf":
            layer.value = "edge"
    images = np.asarray(calibration if layout == "nchw" else np.transpose(calibration, (0, 2, 3, 1)),
                        dtype=np.float32)

    def representative():
        for i in range(len(images)):
            yield [np.ascontiguousarray(images[i: i + 1])]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def _check_float16_range(net: ir.Network, data: bytes, fb, float16_weights) -> None:
    """Refuse a float16 file whose weights (BN folded by the converter) left float16's range (rounded to
    inf): the refusal of a float16 ONNX file (:mod:`backends.onnx.fp16`), on the values the file holds."""
    import numpy as np

    from ...errors import ResNetSpecError

    for name, values in float16_weights(data, fb):
        if values is not None and not np.isfinite(values).all():
            raise ResNetSpecError(f"tflite float16: tensor {name!r} has NaN or Inf values or values beyond "
                                  "float16's range (+-65504); keep this model in float32")


def convert(net: ir.Network, weights, out_dir: str, *, force: bool = False, data_format: str | None = None,
            dtype: str = "float32", calibration=None, layout: str | None = None) -> list:
    """Write ``<out_dir>/<name>.tflite`` atomically; nothing is overwritten without ``force``."""
    from ...fileio import atomic_path, check_writable
    from .. import output_paths

    (path,) = output_paths(NAME, net.name, out_dir)
    check_writable(path, force)
    data = to_bytes(net, weights, data_format=data_format, dtype=dtype, calibration=calibration, layout=layout)
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return [path]
