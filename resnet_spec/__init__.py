"""resnet-spec: one declarative YAML spec -> equivalent PyTorch, TensorFlow/Keras and ONNX ResNets.

>>> import resnet_spec
>>> net = resnet_spec.load("resnet50")          # zoo name, path, or YAML text -> IR
>>> net.params
25557032
>>> model = resnet_spec.build(net, "torch")     # needs the framework installed
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import ir
from .errors import BackendUnavailable, ResNetSpecError, SpecError, WeightsError
from .resolve import Limits

__all__ = ["load", "build", "load_keras", "init_weights", "load_weights", "save_weights", "ir", "Limits",
           "ResNetSpecError", "SpecError", "WeightsError", "BackendUnavailable", "__version__"]


def load(source, limits: Limits | None = None) -> ir.Network:
    """Load, validate and resolve a spec. ``source``: a zoo name, a path, or YAML text."""
    from .resolve import resolve
    from .spec import load as load_spec

    if isinstance(source, ir.Network):
        return source
    return resolve(load_spec(source), limits)


def build(spec, backend: str = "torch", weights=None, **options):
    """Build a framework model from a spec (anything :func:`load` takes, or an IR network).

    ``backend`` is ``"torch"``, ``"onnx"``, ``"keras"`` (Keras 3 on the active backend:
    ``KERAS_BACKEND=tensorflow|jax|torch``), ``"tensorflow"`` (Keras on TensorFlow, refused when Keras
    runs on another backend), ``"keras-jax"`` or ``"keras-torch"``. ``weights``: None (fresh He
    initialisation, seed 0), a path to a ``.safetensors``/``.pth`` file, or a ``{name: array}`` mapping.
    """
    from . import weights as W
    from .backends import get

    net = load(spec)
    ws = W.resolve_weights(net, weights)
    return get(backend).build(net, ws, **options)


def load_keras(path: str):
    """Load a ``.keras`` file written by ``convert --to tensorflow`` on the active Keras backend
    (TensorFlow, JAX or PyTorch); the custom layers are registered first."""
    from .backends.keras_backend import load_keras as _load

    return _load(path)


def init_weights(spec, seed: int = 0, random_bn: bool = False):
    """A fresh canonical weight set (``{name: np.ndarray}``); see :mod:`resnet_spec.weights`."""
    from .weights import init_weights as _init

    return _init(load(spec), seed=seed, random_bn=random_bn)


def load_weights(spec, path: str, **kwargs):
    """Load and check a weight file (safetensors or a torchvision/timm state_dict) against a spec."""
    from .weights import load_weights as _load

    return _load(load(spec), path, **kwargs)


def save_weights(weights, path: str, **kwargs):
    """Save a canonical weight set as safetensors, atomically."""
    from .weights import save_weights as _save

    return _save(weights, path, **kwargs)
