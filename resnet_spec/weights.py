"""The framework-neutral weight set: ``{canonical name: numpy.float32 array}``.

Names and shapes come from the IR (:meth:`resnet_spec.ir.Network.tensors`); convolution weights are
``(out, in/groups, kh, kw)`` and linear weights ``(out, in)`` as in PyTorch. Backends convert layouts
themselves (e.g. HWIO for Keras). Stored as safetensors; torchvision/timm ``state_dict`` files are read
with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects. Loading any weight file
or import source against a spec (``load_weights``, ``load_checkpoint``) is :mod:`resnet_spec.checkpoints`'.
"""

from __future__ import annotations

import math

import numpy as np

from . import ir
from .errors import WeightsError
from .fileio import atomic_path
from .weightfile import check_f32_range, check_names, fmt_shape

Weights = dict  # str -> np.ndarray


def init_weights(net: ir.Network, seed: int = 0, random_bn: bool = False) -> Weights:
    """A deterministic fresh weight set for ``net``.

    Convolutions: He et al. normal, fan-out mode, std = sqrt(2 / (out_channels * k * k)) as in
    torchvision. Linear and SE layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default). BN: gamma 1,
    beta 0, running mean 0, running var 1, and gamma 0 on each block's last BN with
    ``zero_init_last_bn``.

    ``random_bn=True`` is for parity checks: every BN gets gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1),
    mean ~ N(0, 0.1), var ~ U(0.5, 2) and biases are non-zero, so that every tensor matters. Each block's
    last BN gamma is divided by sqrt(number of blocks) so that very deep nets (ResNet-1202) keep finite,
    comparable activations in eval mode; ``zero_init_last_bn`` is ignored then.
    """
    rng = np.random.default_rng(seed)
    out: Weights = {}
    last_bns = set(net.last_bn_of_blocks())
    depth_scale = 1.0 / math.sqrt(max(1, len(net.blocks)))
    for t in net.tensors():
        name, shape = t.name, t.shape
        module, leaf = name.rsplit(".", 1)
        if len(shape) == 4:  # conv (including SE fc1/fc2)
            if ".se." in name:
                bound = 1 / math.sqrt(shape[1])
                arr = rng.uniform(-bound, bound, shape)
            else:
                std = math.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
                arr = rng.normal(0.0, std, shape)
        elif len(shape) == 2:  # linear
            bound = 1 / math.sqrt(shape[1])
            arr = rng.uniform(-bound, bound, shape)
        elif leaf in ir.BN_LEAVES and _is_bn(net, module):
            arr = _bn_tensor(rng, leaf, shape, random_bn, module in last_bns, net.zero_init_last_bn, depth_scale)
        else:  # conv / linear / SE bias
            if ".se." in name or module == "fc":
                fan_in = _fan_in(net, module)
                bound = 1 / math.sqrt(fan_in)
                arr = rng.uniform(-bound, bound, shape)
            else:
                arr = rng.normal(0.0, 0.05, shape) if random_bn else np.zeros(shape)
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


def _bn_tensor(rng, leaf, shape, random_bn, is_last, zero_init, depth_scale):
    if not random_bn:
        if leaf == "weight":
            return np.zeros(shape) if (is_last and zero_init) else np.ones(shape)
        return np.ones(shape) if leaf == "running_var" else np.zeros(shape)
    if leaf == "weight":
        g = rng.uniform(0.5, 1.5, shape)
        return g * depth_scale if is_last else g
    if leaf == "bias":
        return rng.normal(0.0, 0.1, shape)
    if leaf == "running_mean":
        return rng.normal(0.0, 0.1, shape)
    return rng.uniform(0.5, 2.0, shape)


def _bn_names(net):
    cache = getattr(_bn_names, "_cache", {})
    key = id(net)
    if key not in cache:
        cache.clear()
        cache[key] = {op.name for op in net.all_ops() if isinstance(op, ir.BatchNorm)}
        _bn_names._cache = cache
    return cache[key]


def _is_bn(net, module):
    return module in _bn_names(net)


def _fan_in(net, module):
    for op in net.all_ops():
        if isinstance(op, ir.Linear) and op.name == module:
            return op.in_features
        if isinstance(op, ir.SqueezeExcite) and module.startswith(op.name + "."):
            return op.channels if module.endswith("fc1") else op.reduced
    return 1


def check_weights(net: ir.Network, weights, source: str = "weights", allow_nonfinite: bool = False) -> Weights:
    """Check names, shapes, dtypes and values against the IR; return float32 arrays in IR order.

    Every problem names the tensor: a missing one, an unexpected one, a wrong shape (with the shape the
    spec expects), a non-float dtype, NaN or Inf values (unless ``allow_nonfinite``).
    """
    expected, given = check_names(net, weights, source)
    out: Weights = {}
    for name, shape in expected.items():
        arr = np.asarray(given[name])
        if tuple(arr.shape) != tuple(shape):
            raise WeightsError(f"{source}: tensor {name!r} has shape {fmt_shape(arr.shape)}, the spec expects "
                               f"{fmt_shape(shape)}")
        arr = _as_float32(arr, name, source)
        if not allow_nonfinite and not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "Inf"
            raise WeightsError(f"{source}: tensor {name!r} contains {bad} values (pass --allow-nonfinite "
                               "to accept them)")
        out[name] = arr
    return out


def _as_float32(arr: np.ndarray, name: str, source: str) -> np.ndarray:
    """Float tensors only (an int64 or bool tensor is a mistake, not weights); float64 values must fit
    float32 (1e39 is refused by name, not silently turned into Inf)."""
    if arr.dtype.kind != "f":
        raise WeightsError(f"{source}: tensor {name!r} has dtype {arr.dtype}; expected a float tensor")
    if arr.dtype.itemsize > 4:
        check_f32_range(arr, name, source)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(arr, dtype=np.float32)


def read_safetensors(path: str, net: ir.Network | None = None) -> Weights:
    """A safetensors file as float32 arrays; its header (and, with ``net``, the names, shapes and file
    size) is checked before any tensor data is read (see :mod:`resnet_spec.weightfile`)."""
    from . import weightfile

    with weightfile.open_checked(path) as fh:
        return weightfile.parse_safetensors(path, fh, net)


def read_torch(path: str, net: ir.Network | None = None) -> Weights:
    """A torch checkpoint, read with ``torch.load(weights_only=True)`` after its archive was checked
    against ``net`` (see :mod:`resnet_spec.weightfile`); containers and wrapper prefixes are handled
    by :func:`resnet_spec.weightfile.read_checkpoint`."""
    from .weightfile import read_checkpoint

    return read_checkpoint(path, net=net)[0]


def read_weights(path: str, net: ir.Network | None = None) -> Weights:
    """Read a weight file; with ``net``, its declared names, shapes and size are checked first."""
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return read_torch(path, net)
    return read_safetensors(path, net)


def save_weights(weights: Weights, path: str, metadata: dict | None = None, force: bool = True) -> None:
    """Write safetensors atomically; tensors are stored in sorted-name order (deterministic bytes)."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(weights[k]) for k in sorted(weights)}, metadata=metadata)
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
