"""Framework generators. Each reads only the IR (``resnet_spec.ir``) and a canonical weight set.

Backends share one shape -- ``build(net, weights, **options)`` plus ``tap_names``/``run`` helpers --
never import each other, and are imported lazily so that ``resnet_spec`` itself needs no framework.
"""

BACKENDS = ("torch", "onnx", "tensorflow")

#: The compute dtypes a backend may be asked for (parity's tolerances are keyed by them); a backend
#: refuses the ones it cannot honour.
DTYPES = ("float32", "float16", "bfloat16")

# What ``convert`` writes, per backend: ``<out_dir>/<model name><suffix>``. Kept here, free of any
# framework import, so that the CLI can refuse an existing output before any backend runs.
OUTPUT_SUFFIXES = {"torch": (".pt2", ".py", ".safetensors"), "onnx": (".onnx",),
                   "tensorflow": (".keras", "_savedmodel"), "tflite": (".tflite",)}
# Targets ``convert`` writes beyond BACKENDS (files for a runtime, not a backend parity runs).
CONVERT_ONLY = ("tflite",)
# ``convert --dtype float16``: the backends that write float16 models.
FLOAT16_BACKENDS = ("onnx",)

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
    """Import and return the backend module for ``name`` (one of :data:`BACKENDS`)."""
    from importlib import import_module

    from ..errors import ResNetSpecError

    modules = {"torch": "torch_backend", "onnx": "onnx_backend", "tensorflow": "tf_backend",
               "tflite": "tflite_backend"}
    if name not in modules:
        raise ResNetSpecError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return import_module(f"{__name__}.{modules[name]}")


def prepare(name: str, spec_yaml: str):
    """In a worker process: the backend module for ``name`` and the network of ``spec_yaml``.

    Refuses with :class:`BackendUnavailable` when the framework is not installed. The spec is one the
    caller already resolved under the user's limits (``--max-params``...), so it is not re-checked
    against the defaults here.
    """
    from .. import load
    from ..errors import BackendUnavailable
    from ..resolve import UNCHECKED

    mod = get(name)
    reason = mod.available()
    if reason:
        raise BackendUnavailable(f"{name}: {reason}")
    return mod, load(spec_yaml, UNCHECKED)
