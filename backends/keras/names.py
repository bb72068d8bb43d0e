"""Keras layer names <-> canonical (torchvision module) names, and the layer behind every tap.

Keras 3 on PyTorch registers each layer's variables in a ``torch.nn.ParameterDict`` keyed by the
variable path, and PyTorch forbids '.' there ("parameter name can't contain '.'"), so a Keras layer
name cannot be the canonical name as is. The mapping, valid on TensorFlow, JAX and PyTorch alike:

    Keras layer name = canonical name with every '.' replaced by '-'      (layer_name)
    canonical name   = Keras layer name with every '-' replaced by '.'    (canonical_name)

e.g. ``layer2.0.downsample.1`` <-> ``layer2-0-downsample-1``, ``layer1.0.se.fc1`` <-> ``layer1-0-se-fc1``.
It is reversible because canonical names never contain '-' (nor '/', which Keras forbids); both are
refused with a clear error. Helper layers are named after their owner (``layer1-0-conv2-pad``,
``layer1-0-add``), and the layer producing a block's output is ``<block>-out`` (keras.applications'
``_out``). Weight dictionaries (:mod:`.weights`) stay keyed by canonical op names; only a model's
layers carry the Keras spelling.
"""

from __future__ import annotations

from ... import ir
from ...errors import ResNetSpecError
from ...naming import UniqueNames
from ..common import HELPER_NAMES

SEP = "-"  # the Keras spelling of the canonical '.'


def layer_name(canonical: str) -> str:
    """The Keras layer name of the op (or helper) with canonical name ``canonical``."""
    if "/" in canonical or SEP in canonical:
        raise ResNetSpecError(f"canonical name {canonical!r} contains '/' or {SEP!r}, which the Keras "
                              "layer-name mapping cannot represent reversibly")
    return canonical.replace(".", SEP)


def canonical_name(keras_layer_name: str) -> str:
    """Inverse of :func:`layer_name`."""
    return keras_layer_name.replace(SEP, ".")


def tap_layer_names(net: ir.Network) -> dict:
    """Tap name -> name of the Keras layer whose output is that tap ('stem' with no stem: None, the
    input, or ``to_channels_last`` in a channels_first model -- see ``backends.keras.model.tap_model``)."""
    last = net.stem[-1] if net.stem else None
    if last is None:
        stem = None
    else:
        stem = layer_name(last.name if getattr(last, "name", None) else "stem.out")
    names = {"stem": stem}
    names.update({b.name: layer_name(f"{b.name}.out") for b in net.blocks})
    names["head"] = layer_name(net.head[-1].name if isinstance(net.head[-1], ir.Linear) else "head.out")
    return names


class Namer:
    """Unique Keras layer names: ``for_op`` gives an op its canonical name (Keras spelling); helpers get
    ``<owner>.<what>`` (Keras spelling), numbered from 1 on repeats."""

    def __init__(self):
        self._names = UniqueNames("")

    def __call__(self, base: str) -> str:
        """A unique Keras name for the canonical-style ``base`` (dots allowed)."""
        return self._names.take(layer_name(base))

    def for_op(self, op, owner: str) -> str:
        if getattr(op, "name", None):
            return self(op.name)
        return self(f"{owner}.{HELPER_NAMES[type(op)]}")
