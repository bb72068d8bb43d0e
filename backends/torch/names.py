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
    Layout("timm legacy SENet", r"^layer0\.conv1\.weight$", (
        (r"^layer0\.conv1\.", "conv1."), (r"^layer0\.bn1\.", "bn1."), (r"^pool0\.", "maxpool."),
        (r"\.se_module\.", ".se."), (r"^last_linear\.", "fc."))),
)


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
