"""keras.applications ResNet / ResNetV2 layer names <-> our canonical names, and weight transfer.

This is the one place that knows keras.applications' naming (``conv3_block1_0_conv``...). The maps are
keyed by canonical op names (``layer2.0.downsample.0``), not by our Keras layer spelling.
"""

from __future__ import annotations

from ... import ir
from ...errors import ResNetSpecError, WeightsError
from .weights import from_arrays, getter, set_keras_weights, to_keras_weights


def keras_applications_names(net: ir.Network) -> dict:
    """Canonical op name -> the keras.applications ResNet/ResNetV2 layer name, derived from the IR.

    Stem conv1/bn1 -> conv1_conv/conv1_bn; block ``layer{s+1}.{i}`` -> ``conv{s+2}_block{i+1}``; its
    k-th residual conv -> ``_k_conv``, the shortcut conv/BN -> ``_0_conv``/``_0_bn``. A v1 block's BN
    after conv k is ``_k_bn``; a pre-activation block's ``pre`` BN is ``_preact_bn`` and the BN before
    conv k is ``_{k-1}_bn``. Head BN -> ``post_bn``, classifier -> ``predictions``.
    """
    names = {}
    for op in net.stem:
        if isinstance(op, ir.Conv):
            names[op.name] = "conv1_conv"
        elif isinstance(op, ir.BatchNorm):
            names[op.name] = "conv1_bn"
    for b in net.blocks:
        names.update(_block_names(net, b))
    for op in net.head:
        if isinstance(op, ir.BatchNorm):
            names[op.name] = "post_bn"
        elif isinstance(op, ir.Linear):
            names[op.name] = "predictions"
    return names


def _block_names(net: ir.Network, b: ir.Block) -> dict:
    prefix = f"conv{b.stage + 2}_block{b.index + 1}"
    names = {}
    for op in b.pre:
        if isinstance(op, ir.BatchNorm):
            names[op.name] = f"{prefix}_preact_bn"
    k = 0
    for op in b.main:
        if isinstance(op, ir.Conv):
            k += 1
            names[op.name] = f"{prefix}_{k}_conv"
        elif isinstance(op, ir.BatchNorm):
            names[op.name] = f"{prefix}_{k}_bn"  # k = convs seen so far
        elif isinstance(op, ir.SqueezeExcite):
            raise ResNetSpecError(f"{net.name}: keras.applications ResNets have no squeeze-excite")
    for op in b.shortcut:
        if isinstance(op, ir.Conv):
            names[op.name] = f"{prefix}_0_conv"
        elif isinstance(op, ir.BatchNorm):
            names[op.name] = f"{prefix}_0_bn"
    return names


def _from_keras_applications(net: ir.Network, keras_model) -> dict:
    """Weights of a keras.applications ResNet/ResNetV2 model -> canonical weights for ``net``
    (e.g. ``keras_resnet50`` for ``ResNet50``).

    Private and unchecked: it maps by layer names and shapes only, so a model of another family (a
    keras.applications ResNet50 for the torchvision ``resnet50`` spec: conv biases) would come back
    without the tensors ``net`` has no place for. The public way checks source and spec layer by layer
    first: ``--weights keras:NAME[=FILE.weights.h5]``, ``resnet-spec import`` or
    ``resnet_spec.import_model``."""
    from ...weights import check_weights

    names = keras_applications_names(net)
    unmapped = [layer.name for layer in keras_model.layers if layer.weights and layer.name not in names.values()]
    if unmapped:
        raise WeightsError(f"{keras_model.name}: layer(s) {unmapped[:3]} have no counterpart in {net.name!r}; "
                           "is it the matching keras.applications model?")
    out = from_arrays(net, getter(keras_model, rename=lambda n: names.get(n, n)))
    return check_weights(net, out, keras_model.name)


def to_keras_applications(net: ir.Network, weights, keras_model):
    """Load canonical ``weights`` of ``net`` into a keras.applications ResNet/ResNetV2 model."""
    from ...weights import check_weights

    names = keras_applications_names(net)
    arrays = to_keras_weights(net, check_weights(net, weights, "weights"))
    set_keras_weights(keras_model, arrays, rename=lambda n: names[n])
    return keras_model
