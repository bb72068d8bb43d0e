"""resnet-spec: one declarative YAML spec -> equivalent PyTorch, TensorFlow/Keras and ONNX ResNets.

>>> import resnet_spec
>>> net = resnet_spec.load("resnet50")          # zoo name, path, or YAML text -> IR
>>> net.params
25557032
>>> model = resnet_spec.build(net, "torch")     # needs the framework installed
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

from . import ir
from .errors import BackendUnavailable, ResNetSpecError, SpecError, WeightsError
from .resolve import Limits, load_network

__all__ = ["load", "build", "load_keras", "init_weights", "load_weights", "save_weights", "import_model", "ir",
           "Limits",
           "ResNetSpecError", "SpecError", "WeightsError", "BackendUnavailable", "__version__"]


def load(source, limits: Limits | None = None) -> ir.Network:
    """Load, validate and resolve a spec. ``source``: a zoo name, a path, or YAML text."""
    return load_network(source, limits)


def build(spec, backend: str = "torch", weights=None, **options):
    """Build a framework model from a spec (anything :func:`load` takes, or an IR network).

    ``backend`` is ``"torch"``, ``"onnx"``, ``"keras"`` (Keras 3 on the active backend:
    ``KERAS_BACKEND=tensorflow|jax|torch``), ``"tensorflow"`` (Keras on TensorFlow, refused when Keras
    runs on another backend), ``"keras-jax"`` or ``"keras-torch"``. ``weights``: None (fresh He
    initialisation, seed 0), a path to a ``.safetensors``/``.pth`` file, or a ``{name: array}`` mapping.
    With a path, ``new_head=True``, ``weights_key=...`` and ``ema=True`` work as in :func:`load_weights`.
    """
    from .backends import get
    from .weights.loader import LoadOptions, load as load_source

    net = load(spec)
    ckpt = {k: options.pop(k) for k in ("new_head", "weights_key", "ema") if k in options}
    if isinstance(weights, (str, os.PathLike)):
        ws = load_weights(net, weights, **ckpt)
    else:  # fresh weights, or a mapping (of which only new_head applies)
        new_head = bool(ckpt.get("new_head")) and weights is not None
        ws, _ = load_source(net, weights, LoadOptions(new_head=new_head))
    return get(backend).build(net, ws, **options)


def load_keras(path: str):
    """Load a ``.keras`` file written by ``convert --to tensorflow`` on the active Keras backend
    (TensorFlow, JAX or PyTorch); the custom layers are registered first. The file is checked before
    Keras sees it (archive budgets, the allow-list of classes, the variables its config declares:
    README, Security and Limits); a refusal is a :class:`ResNetSpecError`."""
    from .backends.keras.backend import load_keras as _load

    return _load(path)


def init_weights(spec, seed: int = 0, random_bn: bool = False):
    """A fresh canonical weight set (``{name: np.ndarray}``); see :mod:`resnet_spec.weights`."""
    from .weights.init import init_weights as _init

    return _init(load(spec), seed=seed, random_bn=random_bn)


def load_weights(spec, path: str, new_head: bool = False, weights_key: str | None = None, ema: bool = False,
                 allow_nonfinite: bool = False, seed: int = 0):
    """Load and check a weight file against a spec: safetensors, or a torch checkpoint (a state_dict,
    also inside ``{"model": ...}``-style containers, with ``module.``/``_orig_mod.`` prefixes stripped).

    ``new_head=True`` keeps every tensor but a classifier of another shape, which is initialised afresh
    (seed ``seed``); ``weights_key`` names the checkpoint entry to use; ``ema=True`` takes the EMA copy.
    """
    from .weights.loader import LoadOptions, load as load_source

    options = LoadOptions(key=weights_key, ema=ema, new_head=new_head, seed=seed, allow_nonfinite=allow_nonfinite)
    return load_source(load(spec), os.fspath(path), options)[0]


def save_weights(weights, path: str, **kwargs):
    """Save a canonical weight set as safetensors, atomically."""
    from .weights.files import save_weights as _save

    return _save(weights, path, **kwargs)


def import_model(source, name: str | None = None, input_size=None, max_params: int | None = None):
    """Import an existing model: ``(spec_yaml_text, weights)``.

    ``source``: an ``.onnx`` or ``.keras`` file, ``keras:NAME`` (optionally ``keras:NAME=FILE.weights.h5``),
    a ``.pth``/``.pt``/``.safetensors`` state dict with torchvision/timm names, ``torchvision:NAME`` or
    ``timm:NAME``. The architecture is inferred and checked layer by layer against the source; a source
    that does not fit raises :class:`ResNetSpecError` naming the first layer. ``resnet-spec import``
    also runs source and result on one input and writes the files only when they agree. ``max_params``:
    the float32 parameters an ONNX file may declare (default 2^28, 1 GiB), checked before its weights are read.
    """
    from .importers import import_source

    _, text, _, _, weights = import_source(source, name, input_size, max_params)
    return text, weights
