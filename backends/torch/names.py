"""Other PyTorch ResNet layouts' names <-> canonical (torchvision) names: :data:`LAYOUTS`.

timm's ResNetV2 (``stem.conv``, ``stages.N.blocks.M.{norm1,conv1,...,downsample.conv}``, ``norm``,
``head.fc``) and timm's legacy SENet (``layer0.conv1``, ``layerN.M.se_module.fc1``, ``last_linear``) name
the layers of networks a spec expresses; a layout's renames turn their module and tensor names into the
canonical ones (``stages.0.blocks.0.norm1.weight`` -> ``layer1.0.bn1.weight``) so the reader, inference
and the check read them as any torchvision/timm ResNet, and :func:`source_state` turns canonical weights
back into the library model's own names and shapes for the proof.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Layout(NamedTuple):
    """A naming layout: ``marker`` (a regex) matches a tensor name only this layout has; ``renames`` are
    ``(regex, replacement)`` pairs applied in order to ``name + "."`` (``{ds}``: the index of the
    projection conv in the canonical ``downsample`` sequence, 1 after an average pool, else 0; ``{dn}``
    the index of its norm)."""

    name: str
    marker: str
    renames: tuple


def _block(leaf: str):
    def repl(m):
        return f"layer{int(m.group(1)) + 1}.{m.group(2)}.{leaf.format(*m.groups()[2:])}."
    return repl


_STAGE = r"^stages\.(\d+)\.blocks\.(\d+)\."

#: Layout -> how it is recognised -> its renames to canonical names.
LAYOUTS = (
    Layout("timm ResNetV2", _STAGE, (
        (r"^stem\.conv\.", "conv1."), (r"^stem\.conv1\.", "conv1.0."), (r"^stem\.norm1\.", "conv1.1."),
        (r"^stem\.conv2\.", "conv1.3."), (r"^stem\.norm2\.", "conv1.4."), (r"^stem\.conv3\.", "conv1.6."),
        (r"^stem\.norm3?\.", "bn1."), (r"^stem\.pool\.", "maxpool."),
        (_STAGE + r"norm(\d)\.", _block("bn{0}")), (_STAGE + r"conv(\d)\.", _block("conv{0}")),
        (_STAGE + r"downsample\.pool\.", _block("downsample.0")),
        (_STAGE + r"downsample\.conv\.", _block("downsample.{{ds}}")),
        (_STAGE + r"downsample\.norm\.", _block("downsample.{{dn}}")),
        (r"^norm\.", "bn_final."), (r"^head\.fc\.", "fc."))),
    Layout("timm legacy SENet (3x3 stem)", r"^layer0\.conv2\.weight$", (  # legacy_senet154's input_3x3 stem
        (r"^layer0\.conv1\.", "conv1.0."), (r"^layer0\.bn1\.", "conv1.1."), (r"^layer0\.conv2\.", "conv1.3."),
        (r"^layer0\.bn2\.", "conv1.4."), (r"^layer0\.conv3\.", "conv1.6."), (r"^layer0\.bn3\.", "bn1."),
        (r"^pool0\.", "maxpool."), (r"\.se_module\.", ".se."), (r"^last_linear\.", "fc."))),
    Layout("timm legacy SENet", r"^layer0\.conv1\.weight$", (
        (r"^layer0\.conv1\.", "conv1."), (r"^layer0\.bn1\.", "bn1."), (r"^pool0\.", "maxpool."),
        (r"\.se_module\.", ".se."), (r"^last_linear\.", "fc."))),
)


def _regnet_block(block_base: int):
    """RegNet's stage N (from 1) block M (from ``block_base``) -> ``layerN.(M - block_base).``"""
    def repl(m):
        return f"layer{int(m.group(1))}.{int(m.group(2)) - block_base}."
    return repl


_TIMM_REGNET = r"^s(\d+)\.b(\d+)\."
_TV_REGNET = r"^trunk_output\.block(\d+)\.block\d+-(\d+)\."

#: RegNet's two PyTorch layouts (timm regnet.py, torchvision regnet.py): stages and blocks numbered from 1
#: (timm ``s1.b1``) or stages from 1 and blocks from 0 (torchvision ``block1.block1-0``).
REGNET_LAYOUTS = (
    Layout("timm RegNet", _TIMM_REGNET, (
        (r"^stem\.conv\.", "conv1."), (r"^stem\.bn\.", "bn1."),
        (_TIMM_REGNET, _regnet_block(1)),
        (r"\.conv(\d)\.conv\.", r".conv\1."), (r"\.conv(\d)\.bn\.", r".bn\1."),
        (r"\.downsample\.conv\.", ".downsample.0."), (r"\.downsample\.bn\.", ".downsample.1."),
        (r"^head\.fc\.", "fc."))),
    Layout("torchvision RegNet", _TV_REGNET, (
        (r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
        (_TV_REGNET, _regnet_block(0)),
        (r"\.f\.a\.0\.", ".conv1."), (r"\.f\.a\.1\.", ".bn1."), (r"\.f\.b\.0\.", ".conv2."),
        (r"\.f\.b\.1\.", ".bn2."), (r"\.f\.c\.0\.", ".conv3."), (r"\.f\.c\.1\.", ".bn3."),
        (r"\.f\.se\.", ".se."), (r"\.proj\.(\d)\.", r".downsample.\1."))),
)
LAYOUTS = LAYOUTS + REGNET_LAYOUTS


def layout_of(names) -> Layout | None:
    """The :data:`LAYOUTS` entry whose marker one of ``names`` matches, or None (canonical names)."""
    return next((lay for lay in LAYOUTS if any(re.search(lay.marker, n) for n in names)), None)


def canonical(name: str, layout: Layout | None, avg_down: bool = False) -> str:
    """The canonical name of a module or tensor ``name`` of ``layout``."""
    if layout is None:
        return name
    out = name + "."
    for pattern, repl in layout.renames:
        out = re.sub(pattern, repl, out, count=1)
    ds = 1 if avg_down else 0
    return out[:-1].replace("{ds}", str(ds)).replace("{dn}", str(ds + 1))


def canonical_weights(weights: dict, layout: Layout | None, avg_down: bool = False) -> tuple:
    """(weights under canonical names, {canonical tensor name: source name}); a 1x1-conv classifier
    (ResNetV2's ``head.fc``) becomes the canonical Linear weight."""
    if layout is None:
        return weights, {}
    out, names = {}, {}
    for name, arr in weights.items():
        new = canonical(name, layout, avg_down)
        if new == "fc.weight" and arr.ndim == 4 and arr.shape[2:] == (1, 1):
            arr = arr.reshape(arr.shape[:2])
        out[new], names[new] = arr, name
    return out, names


def source_state(weights: dict, names: dict, shapes: dict) -> dict:
    """Canonical ``weights`` under the source's own names (``names``: canonical -> source) and in the
    source's shapes (``shapes``: the runtime model's name -> shape), for loading into the library model;
    a name the runtime model has in canonical form stays canonical."""
    out = {}
    for name, arr in weights.items():
        src = names.get(name, name)
        if src not in shapes and name in shapes:  # a runtime built in canonical names (timm's ResNet class)
            src = name
        shape = tuple(shapes.get(src, arr.shape))
        out[src] = arr.reshape(shape) if tuple(arr.shape) != shape and arr.size == _size(shape) else arr
    return out


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
