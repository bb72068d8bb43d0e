"""Kernels that start as zeros when the weights are loaded right after the model is built.

A Keras layer draws its kernel from its initializer (Glorot uniform for ``Conv2D``, ``Conv1D`` and
``Dense``) the moment it is built. :func:`.model.build` with weights overwrites every kernel at once, so
the draw is wasted work, and on JAX it is costly: one compiled random program per kernel shape (4 tiny
networks: 16.0 s of CPU with the draws, 2.6 s without; TensorFlow 1.9 s and 1.5 s; PyTorch 0.85 s and
0.72 s, AMD EPYC, Keras 3 / JAX CPU). While :func:`zero_kernels` is active, the layers that would draw a
kernel are given ``kernel_initializer="zeros"`` (:func:`kernel_init`); :func:`restore_defaults` then puts
each such layer's own default initializer back, so the model's config (what a ``.keras`` file stores and
``from_config`` rebuilds) is exactly Keras' default. Models built without weights keep the real draws.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect

_ZEROS = contextvars.ContextVar("resnet_spec_keras_zero_kernels", default=False)


@contextlib.contextmanager
def zero_kernels(active: bool):
    """Within the block, layers made with :func:`kernel_init` start their kernels as zeros (``active``)."""
    token = _ZEROS.set(active)
    try:
        yield
    finally:
        _ZEROS.reset(token)


def kernel_init() -> dict:
    """Keyword arguments for a layer with a kernel: zeros while :func:`zero_kernels` is active."""
    return {"kernel_initializer": "zeros"} if _ZEROS.get() else {}


def restore_defaults(model, keras) -> None:
    """Give every layer of ``model`` whose kernel started as zeros its class's default kernel initializer."""
    zeros = keras.initializers.Zeros
    for layer in model.layers:
        if isinstance(getattr(layer, "kernel_initializer", None), zeros):
            layer.kernel_initializer = keras.initializers.get(_default(type(layer), "kernel_initializer"))


def _default(cls, arg: str):
    """The default of ``cls(...)``'s keyword ``arg``, from the first class of its MRO that declares it."""
    for klass in cls.__mro__:
        param = inspect.signature(klass.__init__).parameters.get(arg)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    raise TypeError(f"{cls.__name__} has no default for {arg!r}")
