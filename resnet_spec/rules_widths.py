"""The semantic rules of per-conv widths and the projection's kernel: a stage's explicit per-block ``widths``
(timm's pruned models), ``block.reduce_first`` (SENet-154's narrower first conv), ``shortcut.kernel`` (its
3x3 projection) and the SE placement ``end_relu`` (timm's legacy SEResNetBlock);
:data:`resnet_spec.rules.RULES` runs :func:`rule_widths`. Each error is located at the key in question."""

from __future__ import annotations

from .config import DEFAULTS, BlockConfig, opt, stage_kinds
from .regnet import stages_of
from .spec import Spec


def rule_widths(spec: Spec):
    yield from _stage_widths(spec)
    yield from _shortcut_kernel(spec)
    blk = BlockConfig.of(spec.data)
    if blk.se is not None and blk.se["placement"] == "end_relu" and blk.preact:
        yield spec.error("placement 'end_relu' is not supported with pre-activation blocks",
                         ("block", "se", "placement"))


def _stage_widths(spec: Spec):
    """A stage's ``widths``: one list per block, as many convs as the block type has, not beside ``width``,
    ``group_width`` or ``block.reduce_first``."""
    d, blk = spec.data, spec.data["block"]
    kinds = stage_kinds(d)  # each stage's block type: its own `block.type`, else the global one
    stages = d.get("stages") or []  # RegNet's generated stages have none
    given = [i for i, s in enumerate(stages) if "widths" in s]
    if given and blk.get("reduce_first", 1) != 1:
        yield spec.error("'reduce_first' and stages' widths both set the first conv's width; give one",
                         ("block", "reduce_first"))
    for i in given:
        st, where = stages[i], ("stages", i, "widths")
        for key in ("width", "group_width"):
            if key in st:
                yield spec.error(f"'{key}' and 'widths' both set the stage's conv widths; give one",
                                 ("stages", i, key))
        if "blocks" in st and len(st["widths"]) != st["blocks"]:
            yield spec.error(f"{len(st['widths'])} lists of widths for {st['blocks']} blocks; give one per block",
                             where)
        elif "blocks" not in st and d.get("depth") is not None:
            yield spec.error("per-block 'widths' need the stage's 'blocks', not a top-level 'depth'", where)
        n_convs = 3 if kinds[i] == "bottleneck" else 2
        for bi, row in enumerate(st["widths"]):
            if len(row) != n_convs:
                yield spec.error(f"{len(row)} widths for a {kinds[i]} block of {n_convs} convs "
                                 f"([{', '.join(f'conv{k + 1}' for k in range(n_convs))}])", (*where, bi))


def _shortcut_kernel(spec: Spec):
    sc = spec.data.get("shortcut") or {}
    k = sc.get("kernel", DEFAULTS["shortcut"]["kernel"])
    if k == 1:
        return
    where = ("shortcut", "kernel")
    if k % 2 == 0:
        yield spec.error(f"projection kernel {k} is even; it must be odd (padding kernel // 2 on both sides)", where)
    elif opt(sc, "type", "shortcut") == "A":
        yield spec.error("type A shortcuts have no projection conv; 'kernel' applies to types B and C", where)
    elif opt(sc, "projection", "shortcut") != "conv":
        yield spec.error("'kernel' applies to projection 'conv' only (an 'avgpool_conv' projection's conv is 1x1)",
                         where)
    elif any(s.get("dilate", False) for s in stages_of(spec.data)):
        yield spec.error("a projection 'kernel' larger than 1 is not supported with dilated stages", where)
