"""The semantic rules of a stage's own block type (``stages[i].block``: timm's per-stage block list, test_resnet's
basic, basic, bottleneck, basic); :data:`resnet_spec.rules.RULES` runs :func:`rule_stage_block`. Every other block
key stays global, so a key that applies to one block type must fit every stage of that type and no stage of the
other type may be handed it; each error is one line, located at the stage's ``block.type``."""

from __future__ import annotations

from .config import BlockConfig
from .spec import Spec


def rule_stage_block(spec: Spec):
    d = spec.data
    own = [i for i, s in enumerate(d.get("stages") or []) if "block" in s]
    if not own:
        return
    if d.get("depth") is not None:
        yield spec.error("per-stage block types need per-stage 'blocks', not a top-level 'depth' (its 6n+2 or "
                         "9n+2 rule counts blocks of one type)", ("stages", own[0], "block"))
        return
    base = BlockConfig.of(d)
    for i in own:
        blk = base.for_stage(d["stages"][i])
        if blk.kind == base.kind:
            continue  # the global type: the global rules have checked it
        where = ("stages", i, "block", "type") if "type" in d["stages"][i]["block"] else ("stages", i, "block")
        for why in (_basic_problems(blk) if blk.kind == "basic" else _bottleneck_problems(blk)):
            yield spec.error(f"a {blk.kind} stage cannot take {why}", where)


def _basic_problems(blk: BlockConfig):
    """What the global block section holds that only a bottleneck takes."""
    spatial = blk.spatial["type"]
    if spatial in ("split_attention", "res2net"):
        yield f"block.spatial type {spatial!r}, which applies to bottleneck blocks only"
    if blk.avd is not None:
        yield "block.avd, which applies to bottleneck blocks only"
    if blk.se is not None and blk.se["placement"] == "after_3x3":
        yield "block.se placement 'after_3x3', which applies to bottleneck blocks only"


def _bottleneck_problems(blk: BlockConfig):
    """What a bottleneck stage cannot combine with the global block section (the global rules check these for a
    global bottleneck type)."""
    if blk.stride_on_1x1:
        for bad, what in ((blk.anti_alias is not None, "block.anti_alias"),
                          (blk.spatial["type"] == "selective_kernel", "block.spatial type 'selective_kernel'")):
            if bad:
                yield f"{what} with block.stride_on: 1x1 (it moves the stride of the 3x3 conv)"
