"""The Keras model on TensorFlow (leg ``keras-tensorflow``, alias ``tensorflow``), and the outputs only
TensorFlow can write: the SavedModel of ``convert`` (TFLite is ``backends.keras.tflite``).

The Keras model itself lives in the backend-neutral modules, split by concern:

* :mod:`.layers` -- the custom layers (``keras.ops`` only);
* :mod:`.model` -- how IR ops and residual blocks become Keras layers, ``build``, ``tap_model``;
* :mod:`.names` -- Keras layer names <-> canonical names (``layer1.0.conv1`` <-> ``layer1-0-conv1``);
* :mod:`.weights` -- canonical weights <-> Keras layouts;
* :mod:`.applications` -- keras.applications ResNet/ResNetV2 name maps and weight transfer;
* :mod:`.backend` -- a parity leg on any Keras backend (devices, ``infer``, ``load_keras``).

This module re-exports their public names, so ``backends.keras.tf.build`` etc. keep working. Keras weights
come *in* only through the checked path (``--weights``/``import``/``resnet_spec.import_model``, which
compare source and spec layer by layer); the unchecked reader for models this project built itself
(``backends.keras.weights.from_keras_model``, for the training step) is not re-exported here. TensorFlow is
imported lazily: importing this module never loads TensorFlow (see :mod:`resnet_spec.isolate`).
"""

from __future__ import annotations

import os
import sys

from ... import ir
from ...errors import BackendUnavailable
from . import stock
from .applications import keras_applications_names, to_keras_applications  # noqa: F401
from .backend import Leg, load_keras as _load_keras_any, tf_device_scope
from .layers import avg_pool_counts  # noqa: F401
from .. import common
from .model import (DATA_FORMATS, OPS, _MODULES, custom_objects, deep_recursion, depth, keras_module,  # noqa: F401
                          input_layout, layout_of, missing, tap_model)
from .names import Namer as _Namer, canonical_name, layer_name, tap_layer_names  # noqa: F401
from .weights import set_keras_weights, to_keras_weights  # noqa: F401

NAME = "tensorflow"
_LEG = Leg("tensorflow")


def available() -> str | None:
    """None when TensorFlow and Keras 3 can be imported (checked without importing them)."""
    return missing("tensorflow")


def _tf(what: str = "the tensorflow backend"):
    """Import Keras on TensorFlow (refusing another active Keras backend) and TensorFlow: (tf, keras)."""
    reason = available()
    if reason:
        raise BackendUnavailable(f"{what} needs TensorFlow: {reason}")
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    keras = keras_module()
    if keras.backend.backend() != "tensorflow":
        raise BackendUnavailable(f"{what} needs TensorFlow, and Keras in this process runs on "
                                 f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow")
    import tensorflow as tf

    _MODULES.setdefault("tf", tf)
    return tf, keras


def versions() -> str:
    tf, keras = _tf()
    return f"tensorflow {tf.__version__} / keras {keras.__version__}"


def build(net: ir.Network, weights=None, *, data_format: str | None = None, dtype: str = "float32",
          layout: str | None = None):
    """The Keras model for ``net`` on TensorFlow (see :func:`.model.build`)."""
    _tf()
    return _LEG.build(net, weights, data_format=data_format, dtype=dtype, layout=layout)


def infer(net: ir.Network, weights, x, **options):
    """Run the Keras model on TensorFlow in inference mode (see :meth:`.backend.Leg.infer`)."""
    _tf()
    return _LEG.infer(net, weights, x, **options)


def load_keras(path: str):
    """Load a ``.keras`` file written by :func:`convert` (on TensorFlow; any backend: ``resnet_spec.load_keras``)."""
    _tf()
    return _load_keras_any(path)


def device_scope(device: str, allow_tf32: bool = False):
    """(tf.device context, description) for 'cpu' or 'cuda[:i]'; never falls back to the CPU."""
    _tf()
    return tf_device_scope(device, allow_tf32)


def convert(net: ir.Network, weights, out_dir: str, *, force: bool = False,
            data_format: str | None = None, layout: str | None = None) -> list:
    """Write ``<name>.keras`` and the SavedModel folder ``<name>_savedmodel/``.

    The model is built from stock Keras layers only (:mod:`.stock`): ``keras.saving.load_model`` loads
    the ``.keras`` without this package, on any Keras backend.

    The SavedModel's ``serving_default`` signature takes ``input`` (float32, batch dimension None, in
    ``layout``: 'nhwc' or 'nchw'; default: that of ``data_format``) and returns ``{'logits': ...}``.
    The ``.keras`` file records the layout in its ``metadata.json`` (``resnet_spec.layout``). Both are
    written atomically; an existing output is replaced only with ``force``.
    """
    from ...fileio import atomic_path, check_writable
    from ...inspect_files import embed_keras_spec

    from .. import output_paths

    paths = dict(zip(("keras", "savedmodel"), output_paths("tensorflow", net.name, out_dir)))
    for p in paths.values():  # before importing TensorFlow: a refusal should be instant
        check_writable(p, force)
    layout = input_layout(layout, data_format, "tensorflow")
    _tf("a SavedModel (convert --to tensorflow)")
    os.makedirs(out_dir, exist_ok=True)
    model = stock.build(net, weights, layout=layout, backend="tensorflow")  # plain Keras loads it
    with deep_recursion(depth(net)):  # saving walks the graph recursively too
        with atomic_path(paths["keras"], force) as tmp:
            # Keras insists on the .keras suffix: save beside the temporary name, then move into place.
            try:
                model.save(tmp + ".keras")
                embed_keras_spec(tmp + ".keras", net, layout)  # name, YAML, layout in metadata.json (inspect)
                os.replace(tmp + ".keras", tmp)
            finally:
                if os.path.exists(tmp + ".keras"):
                    os.unlink(tmp + ".keras")
        with atomic_path(paths["savedmodel"], force, is_dir=True) as tmp:
            _export_savedmodel(net, model, tmp, layout)
    return [paths["keras"], paths["savedmodel"]]


def _export_savedmodel(net: ir.Network, model, path: str, layout: str) -> None:
    """SavedModel with one serving signature: ``input`` [None, ...] float32 in ``layout`` -> ``{'logits': ...}``."""
    tf, keras = _tf()
    shape = [None, *common.input_dims(net.input_shape, layout)]

    def serve(x):
        return {"logits": model(x, training=False)}

    # No archive.track(model): tracking adds the model's Keras variables, which the checkpoint saves
    # beside the tf.Variables the endpoint captures (its own `_all_variables`): every weight twice.
    # add_endpoint alone tracks exactly the variables the serving function reads.
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    archive.write_out(path, verbose=False)


def load_savedmodel(path: str):
    """The serving function of a SavedModel written by :func:`convert`: ``fn(input=x)['logits']``."""
    tf, _ = _tf("loading a SavedModel")
    return tf.saved_model.load(path).signatures["serving_default"]


