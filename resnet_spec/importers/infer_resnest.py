"""ResNeSt's part of inference (:mod:`.infer`): a block whose 3x3 conv is timm's SplitAttn (tensors
``conv2.conv``, ``conv2.bn0``, ``conv2.fc1``, ``conv2.bn1``, ``conv2.fc2``) gives ``block.spatial:
{type: split_attention, radix}``; the avd pool (``avd_first``/``avd_last``, a library's modules) gives
``block.avd``. A state dict holds no trace of the avd pool: timm's default for its resnest models
(after the 3x3) is assumed there."""

from __future__ import annotations

from .source import Source


def has_split_attention(stages) -> bool:
    return any("conv2.fc1" in b for s in stages for b in s)


def stage_width(src: Source, name: str, first: dict) -> tuple:
    """``(width, groups)`` of a split-attention bottleneck: the width is conv3's input channels, the radix
    the conv's outputs over it, the groups (cardinality) the width over fc1's inputs per group."""
    try:
        conv, fc1, c3 = first["conv2.conv"], first["conv2.fc1"], first["conv3"]
    except KeyError as exc:
        raise src.refuse(name, f"has no {exc.args[0]} layer; not timm's ResNeSt bottleneck") from None
    width = c3.shape[1]
    if conv.shape[0] % width or width % fc1.shape[1]:
        raise src.refuse(f"{name}.conv2", f"split attention conv {tuple(conv.shape)} and fc1 {tuple(fc1.shape)} do "
                         f"not divide the block's width {width}")
    return width, width // fc1.shape[1]


def block_keys(src: Source, stages, block: dict) -> None:
    """Set ``block.spatial`` (one radix for every block) and ``block.avd`` in ``block`` for a ResNeSt."""
    if not has_split_attention(stages):
        return
    radixes = {b["conv2.conv"].shape[0] // b["conv3"].shape[1] for s in stages for b in s
               if "conv2.conv" in b and "conv3" in b}
    if len(radixes) != 1:
        raise src.refuse("layer1.0.conv2", f"split attention with radixes {sorted(radixes)}; a spec has one radix")
    block["spatial"] = {"type": "split_attention", "radix": radixes.pop()}
    avd = src.facts.get("avd", None if src.facts.get("library") else "after_3x3")  # a library model's modules say
    if avd is not None:
        block["avd"] = avd
