"""Framework generators. Each reads only the IR (``resnet_spec.ir``) and a canonical weight set.

Backends share one shape -- ``build(net, weights, **options)`` plus ``tap_names``/``run`` helpers --
and are imported lazily so that ``resnet_spec`` itself needs no framework. They build on shared,
lower modules (``common``, ``keras_*``, ``onnx_*``) and import one another only downwards:
``backends.keras.tf`` re-exports the ``keras_*`` modules and ``backends.keras.tflite`` converts through
``backends.keras.tf``, but no lower module imports a higher one (``keras_backend`` never imports
``backends.keras.tf``); ``tests/test_structure.py`` checks that the imports have no cycle.
"""

# The names of legs and targets, their aliases and devices: backends/legs.py (the one registry).
from .legs import BACKENDS, DTYPES, KERAS_LEGS, LEGS, keras_backend_of  # noqa: F401

# What ``convert`` writes, per backend: ``<out_dir>/<model name><suffix>``. Kept here, free of any
# framework import, so that the CLI can refuse an existing output before any backend runs.
OUTPUT_SUFFIXES = {"torch": (".pt2", ".py", ".safetensors"), "onnx": (".onnx",),
                   "tensorflow": (".keras", "_savedmodel"), "tflite": (".tflite",)}
# Targets ``convert`` writes beyond BACKENDS (files for a runtime, not a backend parity runs).
CONVERT_ONLY = ("tflite",)
# ``convert --dtype float16``: the backends that write float16 models (ONNX: float16 weights and compute;
# TFLite: float16 weights dequantized at run time). ``--io-dtype float16`` (float16 input and logits): ONNX only.
FLOAT16_BACKENDS = ("onnx", "tflite")
FLOAT16_IO_BACKENDS = ("onnx",)
# ``convert --dtype int8`` (calibrated static quantization, float32 input and output; --calibration):
# ONNX (QDQ, ONNX Runtime's quantizer), TFLite (full-integer, TensorFlow's converter).
INT8_BACKENDS = ("onnx", "tflite")

# ``convert --layout``: the input layout each target's files take by default (what they took before the
# option existed): PyTorch and ONNX NCHW, Keras-made files NHWC. Any target takes either (one transpose
# at the graph's entry: backends/common.py ``entry_permutation``).
DEFAULT_LAYOUTS = {"torch": "nchw", "onnx": "nchw", "tensorflow": "nhwc", "tflite": "nhwc"}

# ONNX opsets. Lowest: Pad/Slice take their arguments as inputs and every op we use has its current
# semantics from 13 on. Highest: the newest opset of onnx 1.23 (checker) that ONNX Runtime 1.32 also
# runs with all its Conv fusions (tested for every opset in between).
DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_OPSET = 28


def output_paths(backend: str, name: str, out_dir: str) -> list:
    """The files (and, for TensorFlow, the SavedModel folder) that ``backend``'s convert writes."""
    import os

    return [os.path.join(out_dir, f"{name}{suffix}") for suffix in OUTPUT_SUFFIXES[backend]]


def get(name: str):
    """The backend for ``name``: a module for torch/onnx/tensorflow (= keras-tensorflow), a
    :class:`.keras.backend.Leg` for ``keras`` (the active Keras backend), ``keras-jax``, ``keras-torch``."""
    from importlib import import_module

    from ..errors import ResNetSpecError

    modules = {"torch": "torch.backend", "onnx": "onnx.backend", "tensorflow": "keras.tf",
               "keras-tensorflow": "keras.tf", "tflite": "keras.tflite"}
    if name in modules:
        return import_module(f"{__name__}.{modules[name]}")
    if name in KERAS_LEGS:
        from .keras.backend import Leg

        return Leg(KERAS_LEGS[name])
    raise ResNetSpecError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS + tuple(KERAS_LEGS))}")


def prepare(name: str, spec_yaml: str):
    """In a worker process: the backend for ``name`` and the network of ``spec_yaml``.

    For a Keras leg, selects its Keras backend (``KERAS_BACKEND``) before Keras is imported. Refuses
    with :class:`BackendUnavailable` when the framework is not installed. The spec is one the caller
    already resolved under the user's limits (``--max-params``...), so it is not re-checked here.
    """
    from ..errors import BackendUnavailable
    from ..resolve import UNCHECKED, load_network

    mod = get(name)
    reason = mod.available()
    if reason:
        raise BackendUnavailable(f"{name}: {reason}")
    keras_backend = keras_backend_of(name)
    if keras_backend:
        from .keras.backend import select

        select(keras_backend)
    return mod, load_network(spec_yaml, UNCHECKED)
