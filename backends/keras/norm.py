"""The Keras layer of the ops without running statistics (resnet_spec.ir_norm); their lowerings are
``backends/keras/model.py``'s ``_group_norm`` and ``_std_conv``.

* GroupNorm -> the stock ``keras.layers.GroupNormalization`` (groups, epsilon, channels-last axis): per
  sample and group, mean and biased variance over the group's channels and all positions (its
  ``ops.moments``), then ``gamma``/``beta`` per channel -- PyTorch's ``F.group_norm``.
* StdConv -> ``StdConv2D`` (a custom layer, :func:`std_conv_class`): a ``Conv2D`` whose kernel is
  standardized per output filter at every call with ``keras.ops`` (mean and biased variance over the
  kernel's (kh, kw, in/groups) axes), so a training step differentiates through it as PyTorch does. The
  stock-layer ``.keras`` (``backends/keras/stock.py``) has no such layer: it takes a plain ``Conv2D`` with
  the standardized kernel computed beforehand (``backends/standardize.py``; inference only).
"""

from __future__ import annotations


def std_conv_class(keras, module: str):
    """The StdConv2D class, its ``__module__`` the module that registers it (``layers``: a ``.keras`` file
    names one module for every class this project registers, and the trust allow-list checks it)."""
    from keras import ops

    class StdConv2D(keras.layers.Conv2D):
        """Conv2D with weight standardization: the kernel's every output filter made (w - mean) /
        sqrt(var + eps) (biased variance over kh, kw, in/groups) before convolving; the stored kernel is raw."""

        def __init__(self, *args, eps: float = 1e-6, **kwargs):
            super().__init__(*args, **kwargs)
            self.eps = float(eps)

        def convolution_op(self, inputs, kernel):
            mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
            centered = kernel - mean
            var = ops.mean(ops.square(centered), axis=(0, 1, 2), keepdims=True)
            return super().convolution_op(inputs, centered / ops.sqrt(var + self.eps))

        def get_config(self):
            return {**super().get_config(), "eps": self.eps}

    StdConv2D.__module__ = module
    return StdConv2D
