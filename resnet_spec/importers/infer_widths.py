"""Per-conv widths and the projection's kernel, inferred from tensor shapes: a bottleneck whose 1x1 conv is a
fixed fraction of its 3x3 conv (SENet-154: ``block.reduce_first``), convs whose widths follow no stage rule
(timm's pruned models: a stage's per-block ``widths``), and a strided projection whose conv is larger than
1x1 (``shortcut.kernel``). :mod:`.infer` calls :func:`irregular` before reading the stages and :func:`apply`
after; :func:`stage_kinds` reads each stage's block type (a network whose stages differ: timm's per-stage block
list) and :func:`group_widths` the bottleneck stages' groups and widths."""

from __future__ import annotations

#: a block's plain convs, in order (ResNeSt's ``conv2.conv``, Res2Net's ``convs.N`` and SKNet's ``conv1.conv``
#: have their own readers and are never per-block widths)
_CONVS = {True: ("conv1", "conv2", "conv3"), False: ("conv1", "conv2")}


def per_stage(stages, bottleneck) -> list:
    """Whether each stage's blocks are bottlenecks: ``bottleneck`` as it is (one bool per stage, a network
    whose stages differ: timm's per-stage block list), or the one bool for every stage."""
    return list(bottleneck) if isinstance(bottleneck, (list, tuple)) else [bottleneck] * len(stages)


def conv_widths(stages, bottleneck):
    """``[[(conv1 out, conv2 out[, conv3 out]) per block] per stage]``, or None where a block has other convs;
    ``bottleneck``: one bool, or one per stage."""
    out = []
    for blocks, kind in zip(stages, per_stage(stages, bottleneck)):
        leaves = _CONVS[kind]
        rows = []
        for blk in blocks:
            layers = [blk.get(leaf) for leaf in leaves]
            if any(x is None or x.kind != "conv" for x in layers) or "convs.0" in blk or "conv2.conv" in blk:
                return None
            rows.append(tuple(x.shape[0] for x in layers))
        out.append(rows)
    return out


def reduce_first(rows, bottleneck: bool):
    """The one ``r`` with conv1 = conv2 // r in every block (bottleneck: conv2 is the 3x3 width; basic: the
    block's channels), or None."""
    r = rows[0][0][1] // rows[0][0][0] if rows[0][0][0] else 0
    ok = r >= 1 and all(c[1] // r == c[0] for stage in rows for c in stage)
    return r if ok else None


def irregular(stages, bottleneck) -> list | None:
    """The per-block conv widths when no stage rule gives them (timm's pruned models: each conv its own width),
    else None: every block of a stage alike, conv1 one fraction of conv2, a bottleneck's output 4 x its
    channels."""
    rows = conv_widths(stages, bottleneck)
    if rows is None:
        return None
    alike = all(len({c[1:] for c in stage}) == 1 for stage in rows)
    expands = all(c[2] % 4 == 0 for stage, b in zip(rows, per_stage(stages, bottleneck)) if b for c in stage)
    return None if alike and expands and reduce_first(rows, bottleneck) is not None else rows


def apply(d: dict, stages, bottleneck, rows) -> None:
    """Write the widths inferred into the spec dict ``d``: each stage's ``widths`` (``rows`` from
    :func:`irregular`; the stage's channels then the nominal ones, timm's 64 x 2^i: an ECA kernel follows
    them), or ``block.reduce_first`` where conv1 is a fraction of conv2; and ``shortcut.kernel``."""
    if rows is not None:
        for si, (st, stage_rows) in enumerate(zip(d["stages"], rows)):
            st["channels"] = 64 << si
            st.pop("width", None)
            st["widths"] = [list(c) for c in stage_rows]
        d["block"].pop("width_per_group", None)
    else:
        plain = conv_widths(stages, bottleneck)
        r = reduce_first(plain, bottleneck) if plain is not None else None
        if r is not None and r > 1:
            d["block"]["reduce_first"] = r


def shortcut_keys(blocks) -> dict:
    """``{"kernel": k}`` where the projection conv of a strided block is k x k (k > 1), else ``{}``."""
    kernels = {b[leaf].shape[2] for b in blocks for leaf in ("downsample.0", "downsample.1")
               if leaf in b and b[leaf].kind == "conv"}
    k = max(kernels, default=1)
    return {"kernel": k} if k > 1 else {}


def stage_kinds(src, stages) -> list:
    """Whether each stage's blocks are bottlenecks (a conv3), refusing a stage whose blocks differ."""
    kinds = [{"conv3" in b for b in blocks} for blocks in stages]
    mixed = next((si for si, k in enumerate(kinds) if len(k) > 1), None)
    if mixed is not None:
        raise src.refuse(f"stage layer{mixed + 1}", "basic and bottleneck blocks in one stage; a spec has one "
                         "block type per stage")
    return [k.pop() for k in kinds]


def group_widths(d, widths, stages):
    """``block.groups`` and ``width_per_group`` where one pair gives every (bottleneck) stage's ``(width, groups,
    channels)`` in ``widths``, else each of ``stages``' own ``width``."""
    groups = {g for _, g, _ in widths}
    wpg = {w * 64 / (p * g) for w, g, p in widths}
    if len(groups) == 1 and len(wpg) == 1 and float(next(iter(wpg))).is_integer():
        g, w = groups.pop(), int(wpg.pop())
        if g != 1:
            d["block"]["groups"] = g
        if w != 64:
            d["block"]["width_per_group"] = w
        if g != 1 or w != 64:
            return
    else:
        for st, (w, _, _) in zip(stages, widths):
            st["width"] = w
        if len(groups) == 1 and next(iter(groups)) != 1:
            d["block"]["groups"] = groups.pop()
