"""Framework generators. Each reads only the IR (``resnet_spec.ir``) and a canonical weight set.

Backends share one shape -- ``build(net, weights, **options)`` plus ``tap_names``/``run`` helpers --
never import each other, and are imported lazily so that ``resnet_spec`` itself needs no framework.
"""

BACKENDS = ("torch", "onnx", "tensorflow")


def get(name: str):
    """Import and return the backend module for ``name`` (one of :data:`BACKENDS`)."""
    from importlib import import_module

    from ..errors import ResNetSpecError

    modules = {"torch": "torch_backend", "onnx": "onnx_backend", "tensorflow": "tf_backend"}
    if name not in modules:
        raise ResNetSpecError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return import_module(f"{__name__}.{modules[name]}")
