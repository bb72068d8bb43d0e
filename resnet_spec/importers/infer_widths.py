"""Per-conv widths and the projection's kernel, inferred from tensor shapes: a bottleneck whose 1x1 conv is a
fixed fraction of its 3x3 conv (SENet-154: ``block.reduce_first``), convs whose widths follow no stage rule
(timm's pruned models: a stage's per-block ``widths``), and a strided projection whose conv is larger than
1x1 (``shortcut.kernel``). :mod:`.infer` calls :func:`irregular` before reading the stages and :func:`apply`
after."""

from __future__ import annotations

#: a block's plain convs, in order (ResNeSt's ``conv2.conv``, Res2Net's ``convs.N`` and SKNet's ``conv1.conv``
#: have their own readers and are never per-block widths)
_CONVS = {True: ("conv1", "conv2", "conv3"), False: ("conv1", "conv2")}


def conv_widths(stages, bottleneck: bool):
    """``[[(conv1 out, conv2 out[, conv3 out]) per block] per stage]``, or None where a block has other convs."""
    leaves = _CONVS[bottleneck]
    out = []
    for blocks in stages:
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


def irregular(stages, bottleneck: bool) -> list | None:
    """The per-block conv widths when no stage rule gives them (timm's pruned models: each conv its own width),
    else None: every block of a stage alike, conv1 one fraction of conv2, a bottleneck's output 4 x its
    channels."""
    rows = conv_widths(stages, bottleneck)
    if rows is None:
        return None
    alike = all(len({c[1:] for c in stage}) == 1 for stage in rows)
    expands = not bottleneck or all(c[2] % 4 == 0 for stage in rows for c in stage)
    return None if alike and expands and reduce_first(rows, bottleneck) is not None else rows


def apply(d: dict, stages, bottleneck: bool, rows) -> None:
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
