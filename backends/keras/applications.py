"""keras.applications ResNet / ResNetV2 layer names from our canonical names, and our weights loaded into
such a model (:func:`to_keras_applications`). The way in, a keras.applications model's weights for a
spec, is the import (``keras:NAME``, ``backends/keras/reader.py``), which checks the model layer by layer.

The names follow keras.applications' scheme (``conv3_block1_0_conv``...); the maps are keyed by
canonical op names (``layer2.0.downsample.0``), not by our Keras layer spelling.
"""

from __future__ import annotations

from ... import ir
from ...errors import ResNetSpecError
from .weights import set_keras_weights, to_keras_weights


def _no_gn(op, place):
    raise ResNetSpecError("keras.applications ResNets have no GroupNorm or weight-standardized convolutions")


def _no_se(op, place):
    raise ResNetSpecError("keras.applications ResNets have no squeeze-excite, channel or split attention")


def _no_res2net(op, place):
    raise ResNetSpecError("keras.applications ResNets have no Res2Net split convs")


def _no_sk(op, place):
    raise ResNetSpecError("keras.applications ResNets have no selective kernel convolutions")


def _no_norm_act(op, place):
    raise ResNetSpecError("keras.applications ResNets have no Filter Response Normalization or EvoNorm")


def _no_blur(op, place):
    raise ResNetSpecError("keras.applications ResNets have no blur-pool anti-aliasing")


#: IR op type -> its keras.applications layer name from its place in the network (``conv1`` in the stem,
#: ``conv3_block1_2`` for the BN after a block's second conv, ``post`` in the head; see
#: :func:`keras_applications_names`), or None for a parameter-free op (no layer of its own to map). Every
#: type of ``ir.OP_TYPES``; a squeeze-excite is refused: keras.applications has none.
APPLICATIONS_NAMES = {
    ir.Conv: lambda op, place: f"{place}_conv",
    ir.BatchNorm: lambda op, place: f"{place}_bn",
    ir.ReLU: None,
    ir.Pool: None,
    ir.Subsample: None,
    ir.ChannelPad: None,
    ir.SqueezeExcite: _no_se,
    ir.ECA: _no_se,
    ir.SplitAttention: _no_se,
    ir.Res2Net: _no_res2net,
    ir.DropPath: None,
    ir.GlobalAvgPool: None,
    ir.Dropout: None,
    ir.Linear: lambda op, place: "predictions",
    ir.SelectiveKernel: _no_sk,
    ir.GroupNorm: _no_gn,
    ir.StdConv: _no_gn,
    ir.BlurPool: _no_blur,
    ir.FRN: _no_norm_act,
    ir.EvoNormS0: _no_norm_act,
}


def keras_applications_names(net: ir.Network) -> dict:
    """Canonical op name -> the keras.applications ResNet/ResNetV2 layer name, derived from the IR.

    Stem conv1/bn1 -> conv1_conv/conv1_bn; block ``layer{s+1}.{i}`` -> ``conv{s+2}_block{i+1}``; its
    k-th residual conv -> ``_k_conv``, the shortcut conv/BN -> ``_0_conv``/``_0_bn``. A v1 block's BN
    after conv k is ``_k_bn``; a pre-activation block's ``pre`` BN is ``_preact_bn`` and the BN before
    conv k is ``_{k-1}_bn``. Head BN -> ``post_bn``, classifier -> ``predictions``. Each op's name is
    its :data:`APPLICATIONS_NAMES` entry at its place.
    """
    places = [(op, "conv1") for op in net.stem]
    for b in net.blocks:
        places.extend(_block_places(b))
    places.extend((op, "post") for op in net.head)
    names = {}
    for op, place in places:
        name_of = ir.entry_for(APPLICATIONS_NAMES, op, "keras.applications names")
        if name_of is None:
            continue
        try:
            names[op.name] = name_of(op, place)
        except ResNetSpecError as exc:
            raise ResNetSpecError(f"{net.name}: {exc}") from None
    return names


def _block_places(b: ir.Block) -> list:
    """``(op, place)`` for each op of block ``b``: the place of a residual-branch op is numbered by the
    convs seen so far (keras.applications numbers a block's layers by its convs, the shortcut's 0)."""
    prefix = f"conv{b.stage + 2}_block{b.index + 1}"
    places = [(op, f"{prefix}_preact") for op in b.pre]
    k = 0
    for op in b.main:
        k += type(op) is ir.Conv
        places.append((op, f"{prefix}_{k}"))
    places.extend((op, f"{prefix}_0") for op in b.shortcut)
    return places


def to_keras_applications(net: ir.Network, weights, keras_model):
    """Load canonical ``weights`` of ``net`` into a keras.applications ResNet/ResNetV2 model."""
    from ...weights.check import check_weights

    names = keras_applications_names(net)
    arrays = to_keras_weights(net, check_weights(net, weights, "weights"))
    set_keras_weights(keras_model, arrays, rename=lambda n: names[n])
    return keras_model
