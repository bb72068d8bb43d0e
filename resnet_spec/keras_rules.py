"""The shape and value rules of the ``.keras`` layer classes :mod:`resnet_spec.trust_keras` allows:
each layer's output shape from its config and its inputs' shapes, and the values it allocates when built,
as Keras computes them, from ``config.json`` alone. Shapes are (batch, ...) tuples of int or None (not
known); a rule returns None when its input shape is not known and raises :class:`Bad` when the config
cannot be read as Keras reads it."""

from __future__ import annotations

import math
from typing import Callable


class Bad(Exception):
    """A layer's config that cannot be read as Keras reads it (the message: why)."""


# -- shapes: (batch, ...) tuples of int or None; None when not known --------------------------------------


def _int(conf: dict, key: str, default=None, low: int = 0) -> int:
    value = conf.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise Bad(f"{key} is {value!r}, not an integer of at least {low}")
    return value


def _pair(conf: dict, key: str, default=None, low: int = 1) -> tuple:
    value = conf.get(key, default)
    values = value if isinstance(value, list) and len(value) == 2 else [value, value]
    return tuple(_int({key: v}, key, low=low) for v in values)


def _axis(conf: dict) -> int:
    return 1 if conf.get("data_format") == "channels_first" else -1


def _channels(conf: dict, shape, axis: int | None = None) -> int:
    axis = _axis(conf) if axis is None else axis
    if shape is None or not -len(shape) <= axis < len(shape) or shape[axis] is None:
        raise Bad("its input's channels cannot be told from config.json")
    return shape[axis]


def _spatial(conf: dict, shape, side: Callable):
    """``shape`` (rank 4) with each spatial dim ``side(dim, index)`` (None stays None)."""
    if shape is None or len(shape) != 4:
        return None
    first = conf.get("data_format") == "channels_first"
    out = list(shape)
    for i, at in enumerate((2, 3) if first else (1, 2)):
        out[at] = None if shape[at] is None else max(0, side(shape[at], i))
    return tuple(out)


def _window(conf: dict, shape, kernel: tuple, strides: tuple, dilation=(1, 1)):
    if conf.get("padding", "valid") not in ("valid", "same"):
        raise Bad(f"padding is {conf.get('padding')!r}")
    if conf.get("padding") == "same":
        return _spatial(conf, shape, lambda d, i: -(-d // strides[i]))
    return _spatial(conf, shape, lambda d, i: (d - dilation[i] * (kernel[i] - 1) - 1) // strides[i] + 1)


def input_shape(conf, inputs):
    shape = conf.get("batch_shape", conf.get("batch_input_shape"))
    if not isinstance(shape, list):
        return None
    return tuple(None if d is None else _int({"batch_shape": d}, "batch_shape") for d in shape)


def _first(inputs):
    return inputs[0] if inputs else None


def same_shape(conf, inputs):
    return _first(inputs)


def broadcast(conf, inputs):
    if not inputs or any(s is None for s in inputs) or len({len(s) for s in inputs}) != 1:
        return None
    dims = zip(*inputs)
    return tuple(None if None in d else max(d) for d in dims)


def conv(conf, inputs):
    kernel, strides = _pair(conf, "kernel_size"), _pair(conf, "strides", 1)
    out = _window(conf, _first(inputs), kernel, strides, _pair(conf, "dilation_rate", 1))
    filters = _int(conf, "filters", low=1)
    return None if out is None else tuple(filters if i == _axis(conf) % 4 else d for i, d in enumerate(out))


def dense(conf, inputs):
    shape = _first(inputs)
    return None if shape is None else shape[:-1] + (_int(conf, "units", low=1),)


def pool(conf, inputs):
    size = _pair(conf, "pool_size", 2)
    strides = size if conf.get("strides") is None else _pair(conf, "strides")
    return _window(conf, _first(inputs), size, strides)


def global_pool(conf, inputs):
    shape = _first(inputs)
    if shape is None or len(shape) != 4:
        return None
    c = shape[_axis(conf)]
    if not conf.get("keepdims", False):
        return (shape[0], c)
    return (shape[0], c, 1, 1) if _axis(conf) == 1 else (shape[0], 1, 1, c)


def permute(conf, inputs):
    shape, dims = (_first(inputs)), conf.get("dims")
    if shape is None:
        return None
    if not isinstance(dims, list) or sorted(dims) != list(range(1, len(shape))):
        raise Bad(f"dims is {dims!r}")
    return (shape[0],) + tuple(shape[d] for d in dims)


def zero_pad(conf, inputs):
    p = conf.get("padding", 1)
    pairs = [[v, v] if not isinstance(v, list) else v for v in (p if isinstance(p, list) else [p, p])]
    if len(pairs) != 2 or any(len(pair) != 2 for pair in pairs):
        raise Bad(f"padding is {p!r}")
    pads = [[_int({"padding": v}, "padding") for v in pair] for pair in pairs]
    return _spatial(conf, _first(inputs), lambda d, i: d + sum(pads[i]))


def _pads(conf) -> tuple:
    pads = conf.get("pads")
    if not isinstance(pads, list) or len(pads) != 4:
        raise Bad(f"pads is {pads!r}")
    return tuple(_int({"pads": v}, "pads") for v in pads)  # top, left, bottom, right


def constant_pad(conf, inputs):
    t, left, b, r = _pads(conf)
    return _spatial({}, _first(inputs), lambda d, i: d + (t + b, left + r)[i])


def exact_pool(conf, inputs):
    k, s = _int(conf, "kernel", low=1), _int(conf, "stride", low=1)
    return _window({}, constant_pad(conf, inputs), (k, k), (s, s))


def channel_pad(conf, inputs):
    shape = _first(inputs)
    extra = _int(conf, "before") + _int(conf, "after")
    return None if shape is None else shape[:-1] + (None if shape[-1] is None else shape[-1] + extra,)


def _pairs(conf: dict, key: str, n: int) -> list:
    """``conf[key]`` as ``n`` (before, after) pairs of non-negative integers (an int or a pair: every axis)."""
    p = conf.get(key, 1 if key == "padding" else 0)
    items = p if isinstance(p, list) and len(p) == n else [p] * n
    pairs = [v if isinstance(v, list) else [v, v] for v in items]
    if any(len(pair) != 2 for pair in pairs):
        raise Bad(f"{key} is {p!r}")
    return [[_int({key: v}, key) for v in pair] for pair in pairs]


def crop(conf, inputs):
    rows, cols = _pairs(conf, "cropping", 2)
    return _spatial(conf, _first(inputs), lambda d, i: d - sum((rows, cols)[i]))


def concat(conf, inputs):
    if not inputs or any(s is None for s in inputs) or len({len(s) for s in inputs}) != 1:
        return None
    axis = _int({"axis": conf.get("axis", -1) % len(inputs[0])}, "axis", low=1)
    dims = [s[axis] for s in inputs]
    return inputs[0][:axis] + (None if None in dims else sum(dims),) + inputs[0][axis + 1:]


def reshape(conf, inputs):
    target, shape = conf.get("target_shape"), _first(inputs)
    if not isinstance(target, list) or not target:
        raise Bad(f"target_shape is {target!r}")
    dims = [-1 if d == -1 else _int({"target_shape": d}, "target_shape", low=1) for d in target]
    if dims.count(-1) > 1:
        raise Bad(f"target_shape is {target!r}")
    if shape is None or None in shape[1:]:
        return None if -1 in dims else (None, *dims)
    values = math.prod(shape[1:])
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if values % known:
            raise Bad(f"target_shape {target!r} does not divide {values:,} values")
        dims = [values // known if d == -1 else d for d in dims]
    elif known != values:
        raise Bad(f"target_shape {target!r} holds {known:,} values, its input {values:,}")
    return (shape[0], *dims)


def conv1d(conf, inputs):
    """Conv1D on channels_last (batch, steps, features) inputs (ECA's conv across the channels)."""
    shape = _first(inputs)
    if shape is None:
        return None
    if len(shape) != 3 or conf.get("data_format", "channels_last") != "channels_last":
        raise Bad("Conv1D is read on channels_last 3-D inputs only")
    if conf.get("padding", "valid") != "valid":
        raise Bad(f"padding is {conf.get('padding')!r}")
    k, s, d = (_int({key: _one_of(conf, key, 1)}, key, low=1) for key in ("kernel_size", "strides", "dilation_rate"))
    steps = None if shape[1] is None else max(0, (shape[1] - d * (k - 1) - 1) // s + 1)
    return (shape[0], steps, _int(conf, "filters", low=1))


def _one_of(conf: dict, key: str, default):
    """A 1-D layer's int or one-element list option."""
    value = conf.get(key, default)
    if isinstance(value, list):
        if len(value) != 1:
            raise Bad(f"{key} is {value!r}")
        return value[0]
    return value


def zero_pad1d(conf, inputs):
    shape, p = _first(inputs), conf.get("padding", 1)
    pair = p if isinstance(p, list) else [p, p]
    if len(pair) != 2:
        raise Bad(f"padding is {p!r}")
    pads = [_int({"padding": v}, "padding") for v in pair]
    if shape is None:
        return None
    if len(shape) != 3:
        raise Bad("ZeroPadding1D is read on 3-D inputs only")
    return (shape[0], None if shape[1] is None else shape[1] + sum(pads), shape[2])


def crop1d(conf, inputs):
    """Cropping1D on (batch, steps, features): steps less the cropping (SKNet's attention row per path)."""
    shape, c = _first(inputs), conf.get("cropping", [1, 1])
    pair = c if isinstance(c, list) else [c, c]
    if len(pair) != 2:
        raise Bad(f"cropping is {c!r}")
    crops = [_int({"cropping": v}, "cropping") for v in pair]
    if shape is None:
        return None
    if len(shape) != 3:
        raise Bad("Cropping1D is read on 3-D inputs only")
    return (shape[0], None if shape[1] is None else max(0, shape[1] - sum(crops)), shape[2])


def softmax(conf, inputs):
    """Softmax along one axis: the input's shape (SKNet's attention across the paths)."""
    axis = conf.get("axis", -1)
    axes = axis if isinstance(axis, list) else [axis]
    shape = _first(inputs)
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool) or (shape is not None and not -len(shape) <= a < len(shape)):
            raise Bad(f"axis is {axis!r}")
    return shape


def zero_pad3d(conf, inputs):
    shape = _first(inputs)
    if shape is None or len(shape) != 5 or conf.get("data_format") == "channels_first":
        raise Bad("ZeroPadding3D is read on channels_last 5-D inputs only")
    pads = _pairs(conf, "padding", 3)
    return (shape[0], *(None if d is None else d + sum(p) for d, p in zip(shape[1:4], pads)), shape[4])


def crop3d(conf, inputs):
    """Cropping3D on channels_last 5-D inputs (Res2Net's channel splits: (H, W, C, 1) cropped along C)."""
    shape = _first(inputs)
    if shape is None or len(shape) != 5 or conf.get("data_format") == "channels_first":
        raise Bad("Cropping3D is read on channels_last 5-D inputs only")
    crops = _pairs(conf, "cropping", 3)
    dims = tuple(None if d is None else d - sum(c) for d, c in zip(shape[1:4], crops))
    if any(d is not None and d < 1 for d in dims):
        raise Bad(f"cropping {crops!r} leaves nothing of {shape}")
    return (shape[0], *dims, shape[4])


# -- values: (how many, what) a layer allocates when it is built on ``shape`` -----------------------------


def _plain(conf: dict) -> None:
    """Refuse the options that add variables this estimate does not count (LoRA, quantization)."""
    for key in ("lora_rank", "quantization_config"):
        if conf.get(key) not in (None, 0):
            raise Bad(f"{key} is {conf.get(key)!r}; a ResNet's layer has none")


def conv_values(conf, shape) -> tuple:
    _plain(conf)
    kh, kw = _pair(conf, "kernel_size")
    cin, filters = _channels(conf, shape) // _int(conf, "groups", 1, low=1), _int(conf, "filters", low=1)
    bias = filters if conf.get("use_bias", True) else 0
    return kh * kw * cin * filters + bias, f"a {kh}x{kw}x{cin:,}x{filters:,} kernel"


def conv1d_values(conf, shape) -> tuple:
    _plain(conf)
    k = _int({"kernel_size": _one_of(conf, "kernel_size", None)}, "kernel_size", low=1)
    cin = _channels(conf, shape, -1) // _int(conf, "groups", 1, low=1)
    filters = _int(conf, "filters", low=1)
    return k * cin * filters + (filters if conf.get("use_bias", True) else 0), f"a {k}x{cin:,}x{filters:,} kernel"


def dense_values(conf, shape) -> tuple:
    _plain(conf)
    cin, units = _channels(conf, shape, -1), _int(conf, "units", low=1)
    return cin * units + (units if conf.get("use_bias", True) else 0), f"a {cin:,}x{units:,} kernel"


def bn_values(conf, shape) -> tuple:
    axis = conf.get("axis", -1)
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise Bad(f"axis is {axis!r}")
    c = _channels(conf, shape, axis)
    per = 2 + bool(conf.get("center", True)) + bool(conf.get("scale", True)) + 3 * bool(conf.get("renorm"))
    return per * c, f"{per} vectors of {c:,}"


def exact_values(conf, shape) -> tuple:
    out = exact_pool(conf, [shape])
    if out is None or out[1] is None or out[2] is None:
        raise Bad("its input's size cannot be told from config.json")
    return out[1] * out[2], f"a {out[1]:,}x{out[2]:,} table of divisors"


def group_norm(conf, inputs):
    """GroupNormalization: its input's shape; ``groups`` must divide the channels of its axis."""
    shape, groups, axis = _first(inputs), _int(conf, "groups", low=1), conf.get("axis", -1)
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise Bad(f"axis is {axis!r}")
    if shape is not None and -len(shape) <= axis < len(shape) and shape[axis] is not None and shape[axis] % groups:
        raise Bad(f"groups={groups} does not divide its {shape[axis]} channels")
    return shape


def gn_values(conf, shape) -> tuple:
    group_norm(conf, [shape])
    c = _channels(conf, shape, conf.get("axis", -1))
    per = bool(conf.get("center", True)) + bool(conf.get("scale", True))
    return per * c, f"{per} vectors of {c:,}"


def evonorm_values(conf, shape) -> tuple:
    """EvoNormS0 (this project's, backends/keras/frn.py): gamma, beta and v per channel; groups divide them."""
    group_norm({**conf, "axis": -1}, [shape])
    eps = conf.get("epsilon")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps <= 1:
        raise Bad(f"epsilon is {eps!r}, not a number in (0, 1]")
    c = _channels(conf, shape, -1)
    return 3 * c, f"3 vectors of {c:,}"


def std_conv_values(conf, shape) -> tuple:
    """StdConv2D (this project's weight-standardized Conv2D): a Conv2D's kernel and bias, and its epsilon."""
    eps = conf.get("eps")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps <= 1:
        raise Bad(f"eps is {eps!r}, not a number in (0, 1]")
    return conv_values(conf, shape)
