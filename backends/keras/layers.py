"""The custom Keras layers of the Keras backend, written with ``keras.ops`` only (any Keras 3 backend).

They are defined on first use (:func:`define`), because subclassing ``keras.layers.Layer`` needs Keras
imported and Keras must not be imported before the caller chose ``KERAS_BACKEND``. Each is registered
as ``resnet_spec>Name`` so that a saved ``.keras`` file loads wherever :func:`define` ran.

* :class:`ConstantPad2D` -- explicit padding with 0 or -inf (-inf never wins a max-pool window).
* :class:`ExactAvgPool2D` -- average pooling with PyTorch's exact divisors (:func:`avg_pool_counts`).
* :class:`ChannelPad` -- the option-A shortcut's zero channels.
* :class:`TorchBatchNorm` -- ``BatchNormalization`` whose training-mode running variance follows the IR
  (PyTorch) convention: the *unbiased* batch variance ``var * n / (n - 1)`` updates ``moving_variance``,
  while the batch is normalized with the biased one, exactly as ``torch.nn.BatchNorm2d``. Stock Keras
  updates with the biased variance; inference is identical.
"""

from __future__ import annotations

import numpy as np

from ... import ir

PACKAGE = "resnet_spec"  # registration package of the custom layers: "resnet_spec>ConstantPad2D"
#: the classes :func:`define` registers; a ``.keras`` file names each with ``registered_name``
#: ``resnet_spec>NAME`` and ``module`` this module's name (resnet_spec/trust_keras.py allows exactly these)
CLASSES = ("ConstantPad2D", "ExactAvgPool2D", "ChannelPad", "TorchBatchNorm", "StdConv2D", "EvoNormS0")


def avg_pool_counts(size: int, kernel: int, stride: int, padding: int, out: int, count_include_pad: bool):
    """PyTorch's average-pool divisor along one axis, for each of the ``out`` windows, as float64
    (the IR's :func:`resnet_spec.ir.pool_divisors`)."""
    return np.asarray(ir.pool_divisors(size, kernel, stride, padding, out, count_include_pad), dtype=np.float64)


def _padded_out(shape, pads, kernel: int, stride: int) -> tuple:
    """NHWC output shape of a 'valid' k x k / stride s pool over ``shape`` padded by ``pads`` (t, l, b, r):
    the IR's window count (:func:`resnet_spec.ir.conv_out`), which is the op's ``out_shape`` since ``pads``
    is :attr:`resnet_spec.ir.Pool.pads`."""
    n, h, w, c = shape
    t, l, b, r = pads
    oh, ow = (None if x is None else ir.conv_out(x + extra, kernel, stride, 0) for x, extra in ((h, t + b), (w, l + r)))
    return (n, oh, ow, c)


def _pad_hw(ops, x, pads, fill=0.0):
    t, l, b, r = pads
    return ops.pad(x, [[0, 0], [t, b], [l, r], [0, 0]], constant_values=fill)


def _edge_pad_hw(ops, x, pads):
    """Pad H and W by repeating the edge rows and columns: a max-pool window never gains a value from
    it (every window that reaches into the padding also holds the edge it copies: padding is at most
    half the kernel, and the last window starts inside the input), so it pools exactly as -inf padding
    does, with values in the tensor's own range: what an int8 file needs (an -inf constant would
    stretch the tensor's quantization range to infinity)."""
    t, l, b, r = pads
    if t or b:
        x = ops.concatenate([x[:, :1]] * t + [x] + [x[:, -1:]] * b, axis=1)
    if l or r:
        x = ops.concatenate([x[:, :, :1]] * l + [x] + [x[:, :, -1:]] * r, axis=2)
    return x


def define(keras) -> dict:
    """Define and register the custom layers; returns ``{registered name: class}``."""
    from .frn import evonorm_s0_class
    from .norm import std_conv_class

    classes = (_constant_pad(keras), _exact_avg_pool(keras), _channel_pad(keras), _torch_batch_norm(keras),
               std_conv_class(keras, __name__), evonorm_s0_class(keras, __name__))
    assert tuple(cls.__name__ for cls in classes) == CLASSES, "update layers.CLASSES (the .keras allow-list)"
    register = keras.saving.register_keras_serializable(package=PACKAGE)
    return {f"{PACKAGE}>{cls.__name__}": register(cls) for cls in classes}


def _constant_pad(keras):
    from keras import ops

    class ConstantPad2D(keras.layers.Layer):
        """Pad H and W of an NHWC tensor by ``pads = (top, left, bottom, right)`` with ``value``
        ('neg_inf' or 'zero'); -inf padding never wins a max-pool window."""

        def __init__(self, pads, value="neg_inf", **kwargs):
            super().__init__(**kwargs)
            if value not in ("neg_inf", "zero"):
                raise ValueError(f"pad value must be 'neg_inf' or 'zero', not {value!r}")
            self.pads, self.value = tuple(int(p) for p in pads), value

        def call(self, x):
            if self.value == "edge":  # set by backends.keras.tflite for int8 files only (see _edge_pad_hw)
                return _edge_pad_hw(ops, x, self.pads)
            return _pad_hw(ops, x, self.pads, float("-inf") if self.value == "neg_inf" else 0.0)

        def compute_output_shape(self, shape):
            t, l, b, r = self.pads
            n, h, w, c = shape
            return (n, None if h is None else h + t + b, None if w is None else w + l + r, c)

        def get_config(self):
            return {**super().get_config(), "pads": list(self.pads), "value": self.value}

    return ConstantPad2D


def _exact_avg_pool(keras):
    from keras import ops

    class ExactAvgPool2D(keras.layers.Layer):
        """Average pooling with PyTorch's divisor (NHWC).

        y[i, j] = sum(window of the zero-padded input) / (count_h[i] * count_w[j]), with the counts of
        :func:`avg_pool_counts`. Computed as ``avg_pool_valid(pad(x)) * k^2 / count``: the padded zeros
        add nothing to the sum, and the constant factor restores the exact divisor.
        """

        def __init__(self, kernel, stride, padding, pads, count_include_pad, **kwargs):
            super().__init__(**kwargs)
            self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)
            self.pads, self.count_include_pad = tuple(int(p) for p in pads), bool(count_include_pad)

        def build(self, shape):
            _, h, w, _ = shape
            _, oh, ow, _ = _padded_out(shape, self.pads, self.kernel, self.stride)
            k, s, p = self.kernel, self.stride, self.padding
            ch = avg_pool_counts(h, k, s, p, oh, self.count_include_pad)
            cw = avg_pool_counts(w, k, s, p, ow, self.count_include_pad)
            self._factor = ((k * k) / np.outer(ch, cw))[None, :, :, None].astype(np.float32)

        def call(self, x):
            if any(self.pads):
                x = _pad_hw(ops, x, self.pads)
            y = ops.average_pool(x, self.kernel, self.stride, padding="valid", data_format="channels_last")
            return y * ops.cast(self._factor, y.dtype)

        def compute_output_shape(self, shape):
            return _padded_out(shape, self.pads, self.kernel, self.stride)

        def get_config(self):
            return {**super().get_config(), "kernel": self.kernel, "stride": self.stride, "padding": self.padding,
                    "pads": list(self.pads), "count_include_pad": self.count_include_pad}

    return ExactAvgPool2D


def _channel_pad(keras):
    from keras import ops

    class ChannelPad(keras.layers.Layer):
        """Zero channels ``before`` and ``after`` the existing ones (option-A shortcut), NHWC."""

        def __init__(self, before, after, **kwargs):
            super().__init__(**kwargs)
            self.before, self.after = int(before), int(after)

        def call(self, x):
            return ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

        def compute_output_shape(self, shape):
            n, h, w, c = shape
            return (n, h, w, c + self.before + self.after)

        def get_config(self):
            return {**super().get_config(), "before": self.before, "after": self.after}

    return ChannelPad


def _torch_batch_norm(keras):
    from keras import ops

    class TorchBatchNorm(keras.layers.BatchNormalization):
        """BatchNormalization with the IR's (PyTorch's) training-mode statistics.

        Training: ``y = (x - mean_B) / sqrt(var_B + eps) * gamma + beta`` with the biased batch
        variance ``var_B``, and ``moving = moving * momentum + stat * (1 - momentum)`` where ``stat`` is
        ``mean_B`` and ``var_B * n / (n - 1)`` (``n`` = values per channel). ``momentum`` is Keras'
        (the weight of the old average, ``1 - torch momentum``). Inference: the stock layer.
        """

        def call(self, inputs, training=None, mask=None):
            if not (training and self.trainable) or mask is not None or self.renorm:
                return super().call(inputs, training=training, mask=mask)
            x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
            reduce = [i for i in range(len(x.shape)) if i != self.axis % len(x.shape)]
            mean, var, y = self._normalize(x, reduce)
            n = 1
            for i in reduce:
                n = n * ops.shape(x)[i]
            n = ops.cast(n, x.dtype)
            m = self.momentum
            self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * m + mean * (1.0 - m))
            unbiased = var * n / ops.maximum(n - 1.0, 1.0)
            self.moving_variance.assign(ops.cast(self.moving_variance, x.dtype) * m + unbiased * (1.0 - m))
            return ops.cast(y, self.compute_dtype)

        def _normalize(self, x, reduce):
            """(mean_B, var_B, y) by one formula on every backend: two passes, ``d = x - mean_B``
            first, ``var_B = mean(d^2)``, ``y = d * gamma / sqrt(var_B + eps) + beta``. ``ops.moments``
            on PyTorch computes ``E[x^2] - E[x]^2`` and ``ops.batch_normalization`` on TensorFlow and
            JAX ``x * inv - mean * inv``; both cancel when a channel's mean is large against its spread.
            One formula keeps the three Keras legs' float32 rounding alike; it does not by itself bring
            them to PyTorch's float64 step: the remaining gap was ReLU kinks, which the float64 reference
            now takes from each leg (backends/train_reference.py, docs/parity.md)."""
            mean = ops.mean(x, axis=reduce, keepdims=True)
            d = x - mean
            var = ops.mean(ops.square(d), axis=reduce, keepdims=True)
            inv = ops.rsqrt(var + self.epsilon)
            if self.scale:
                inv = inv * ops.reshape(ops.cast(self.gamma, x.dtype), ops.shape(inv))
            y = d * inv
            if self.center:
                y = y + ops.reshape(ops.cast(self.beta, x.dtype), ops.shape(inv))
            return ops.squeeze(mean, reduce), ops.squeeze(var, reduce), y

    return TorchBatchNorm
