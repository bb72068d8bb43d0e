"""A weight set checked against the IR: names, shapes, dtypes and values, every problem naming the tensor.

The lowest module of :mod:`resnet_spec.weights`: the file readers (:mod:`.files`) run the same name and
shape checks on what a file declares before reading its data, and every backend checks the weights it
is given with :func:`check_weights`.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import WeightsError

Weights = dict  # str -> np.ndarray

F32_MAX = float(np.finfo(np.float32).max)
# torch-only bookkeeping that carries no numbers a model computes with.
IGNORED_SUFFIXES = (".num_batches_tracked",)


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


def check_f32_range(arr: np.ndarray, name: str, source: str) -> None:
    big = np.isfinite(arr) & (np.abs(arr) > F32_MAX)
    if big.any():
        raise WeightsError(f"{source}: tensor {name!r} holds {float(arr[big].flat[0]):g}, a finite value "
                           "outside the float32 range (+-3.4e38)")


def check_names(net: ir.Network, tensors: dict, source: str) -> tuple:
    """Refuse missing or unexpected tensor names (naming the first of each); return
    ``({name: expected shape}, {name: value})`` without the ignored buffers."""
    expected = {t.name: tuple(t.shape) for t in net.tensors()}
    given = {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    missing = [n for n in expected if n not in given]
    unexpected = sorted(n for n in given if n not in expected)
    problems = []
    if missing:
        problems.append(f"missing tensor {missing[0]!r} (expected shape {fmt_shape(expected[missing[0]])})"
                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if unexpected:
        problems.append(f"unexpected tensor {unexpected[0]!r}"
                        + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
                        + f" (not part of spec {net.name!r})")
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))
    return expected, given


def fmt_shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def check_declared(net, declared: dict, source: str) -> None:
    """Names and shapes a file declares, checked against the spec before its data is read."""
    expected, given = check_names(net, declared, source)
    for name, shape in expected.items():
        if tuple(given[name]) != shape:
            raise WeightsError(f"{source}: tensor {name!r} has shape {fmt_shape(given[name])}, the spec expects "
                               f"{fmt_shape(shape)}")
