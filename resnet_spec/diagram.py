"""``resnet-spec diagram``: the architecture at a glance, drawn from the IR with matplotlib.

One box per part -- input, stem, each stage, head -- left to right, so that a 20-layer and a
1001-layer network take the same space: a stage shows its block count (as ticks, or a bar when there
are too many to draw), block type, widths, where its stride sits, its shortcut and its output shape.
"""

from __future__ import annotations

import io
import os

from . import ir

FORMATS = ("svg", "png", "pdf")
STAGE_COLORS = ("#dbe9f6", "#d5efdc", "#fbe3c8", "#ead9f2", "#f6d6d6", "#e4e4e4")


def figure_format(path: str) -> str:
    """The image format named by ``path``'s extension, or a clear error."""
    from .errors import ResNetSpecError

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise ResNetSpecError(f"{path}: unknown picture format {ext or '(none)'!r}; use .svg, .png or .pdf")
    return ext


def render(fig, path: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=figure_format(path), dpi=150, bbox_inches="tight", metadata=_metadata(path))
    return buf.getvalue()


def _metadata(path: str) -> dict:
    # fixed metadata, so the same spec gives the same bytes (no creation date)
    ext = os.path.splitext(path)[1].lower()
    return {"Date": None} if ext == ".svg" else ({"CreationDate": None} if ext == ".pdf" else {})


def stage_info(net: ir.Network) -> list:
    """Per stage: name, blocks, kind, in/width/out channels, stride and where it sits, shortcut, shape."""
    out = []
    for s in range(net.stages):
        blocks = [b for b in net.blocks if b.stage == s]
        first = blocks[0]
        convs = [op for op in first.main if isinstance(op, (*ir.CONVS, ir.Res2Net, ir.SelectiveKernel))]
        strided = next(((i, b, op) for i, b in enumerate(blocks) for op in b.main
                        if isinstance(op, (*ir.CONVS, ir.Pool, ir.SplitAttention, ir.Res2Net, ir.SelectiveKernel,
                                           ir.BlurPool)) and op.stride > 1), None)
        if strided:
            i, _, op = strided
            pos = "first" if i == 0 else ("last" if i == len(blocks) - 1 else f"#{i}")
            if isinstance(op, ir.SelectiveKernel):
                where = "selective kernel"
            elif isinstance(op, ir.BlurPool):
                where = f"{op.kernel}x{op.kernel} blur pool ({op.pad_mode} pad)"
            else:
                where = f"{op.kernel}x{op.kernel} " + (f"{op.kind} pool" if isinstance(op, ir.Pool) else "conv")
            stride = f"stride {op.stride} on the {where} ({pos} block)"
        else:
            dil = max(op.dilation for b in blocks for op in b.main if isinstance(op, (*ir.CONVS, ir.Res2Net)))
            stride = "stride 1" + (f", dilation {dil}" if dil > 1 else "")
        kind = ("pre-act " if first.preact else "") + first.kind
        if any(isinstance(op, ir.SqueezeExcite) for op in first.main):
            kind += " + SE"
        eca = next((op for op in first.main if isinstance(op, ir.ECA)), None)
        if eca is not None:
            kind += f" + ECA k{eca.kernel}"
        split = next((op for op in first.main if isinstance(op, ir.SplitAttention)), None)
        if split is not None:
            kind += f" + split attention r{split.radix}"
        r2 = next((op for op in first.main if isinstance(op, ir.Res2Net)), None)
        if r2 is not None:
            kind = kind.replace(first.kind, f"Res2Net {first.kind}, {r2.scale} splits of {r2.width}")
        sk = next((op for op in first.main if isinstance(op, ir.SelectiveKernel)), None)
        if sk is not None:  # its paths: 3x3, 3x3 d2 (timm's 3 and 5 kept 3x3)
            kind += " + SK " + ", ".join(f"{k}x{k}" + (f" d{d}" if d > 1 else "")
                                         for k, d in zip(sk.kernels, sk.dilations))
        kind += _norm_tag(first)
        groups = max(op.groups for op in (*convs, *([split] if split else ())))
        width = convs[0].out_channels if first.kind == "bottleneck" else None
        if width and len(convs) > 1 and isinstance(convs[1], ir.CONVS) and convs[1].out_channels != width:
            width = f"{width} -> {convs[1].out_channels}"  # a narrower 1x1 conv (reduce_first, per-block widths)
        out.append({"name": first.name.split(".")[0], "blocks": len(blocks), "kind": kind,
                    "in": first.in_shape[0], "width": width,
                    "groups": groups, "out": first.out_shape[0], "stride": stride,
                    "shortcut": _shortcut(blocks), "shape": blocks[-1].out_shape})
    return out


def _norm_tag(block) -> str:
    """' (GN32)' for GroupNorm blocks, ' (GN32, WS)' with weight-standardized convs, ' (FRN)' and ' (EvoNorm-S0
    G32)' for the norm-act layers, '' otherwise."""
    gn = next((op for op in block.ops if isinstance(op, _NORMS[1:])), None)
    tags = ([_norm_word(gn)] if gn else []) + (["WS"] if any(isinstance(op, ir.StdConv) for op in block.ops) else [])
    return f" ({', '.join(tags)})" if tags else ""


def _shortcut(blocks) -> str:
    for b in blocks:
        ops = b.shortcut
        if not ops:
            continue
        kinds = [type(op).__name__ for op in ops]
        if "Subsample" in kinds or "ChannelPad" in kinds:
            return "A: strided identity" + (" + zero-pad" if "ChannelPad" in kinds else "")
        pool = next((op for op in ops if isinstance(op, ir.Pool)), None)
        conv = next(op for op in ops if isinstance(op, ir.CONVS))
        text = f"{'avgpool + ' if pool else ''}{conv.kernel}x{conv.kernel} conv/{conv.stride}"
        text += " + BN" if any(isinstance(op, ir.BatchNorm) for op in ops) else ""
        text += " + GN" if any(isinstance(op, ir.GroupNorm) for op in ops) else ""
        text += "".join(f" + {_norm_word(op)}" for op in ops if isinstance(op, (ir.FRN, ir.EvoNormS0)))
        return text + (" (pre-act)" if b.shortcut_from == "pre" else "")
    return "identity"


def _stem_lines(net: ir.Network) -> list:
    lines = []
    for op in net.stem:
        if isinstance(op, ir.CONVS):
            lines.append(f"conv {op.kernel}x{op.kernel}/{op.stride}, {op.out_channels}"
                         + (" +bias" if op.bias else "") + (" (WS)" if isinstance(op, ir.StdConv) else ""))
        elif isinstance(op, ir.Pool):
            lines.append(f"{op.kind}pool {op.kernel}x{op.kernel}/{op.stride}"
                         + (" (ceil)" if op.ceil_mode else "")
                         + (" (zero pad)" if op.kind == "max" and op.padding and op.pad_value == "zero" else ""))
        elif isinstance(op, ir.BlurPool):
            lines.append(f"blurpool {op.kernel}x{op.kernel}/{op.stride} ({op.pad_mode} pad)")
    norm = next((op for op in net.stem if isinstance(op, _NORMS) and op.name == "bn1"), None)
    if norm is not None:
        lines.insert(len([x for x in lines if x.startswith("conv")]), _norm_act_word(norm))
    c, h, w = net.stem[-1].out_shape if net.stem else net.input_shape
    return lines + [f"out {c}x{h}x{w}"]


_NORMS = (ir.BatchNorm, ir.GroupNorm, ir.FRN, ir.EvoNormS0)


def _norm_word(op) -> str:
    if isinstance(op, ir.FRN):
        return "FRN"
    if isinstance(op, ir.EvoNormS0):
        return f"EvoNorm-S0 G{op.groups}"
    return f"GN{op.groups}" if isinstance(op, ir.GroupNorm) else "BN"


def _norm_act_word(op) -> str:
    """How the stem and head show a norm and the activation after it (FRN's TLU and EvoNorm-S0's own)."""
    if isinstance(op, (ir.FRN, ir.EvoNormS0)):
        return _norm_word(op) + (" (TLU)" if isinstance(op, ir.FRN) and op.act else "")
    return f"{_norm_word(op)} + ReLU"


def _head_lines(net: ir.Network) -> list:
    lines = []
    for op in net.head:
        if isinstance(op, _NORMS):
            lines.append(_norm_act_word(op))
        elif isinstance(op, ir.GlobalAvgPool):
            lines.append("global avg pool")
        elif isinstance(op, ir.Dropout):
            lines.append(f"dropout {op.rate:g}")
        elif isinstance(op, ir.Linear):
            lines.append(f"fc {op.in_features} -> {op.out_features}")
    return lines


def draw(net: ir.Network):
    """A matplotlib Figure of ``net``."""
    from .extras import require

    require("diagram", "matplotlib")
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, Rectangle

    stages = stage_info(net)
    n_boxes = len(stages) + 3
    box_w, gap, box_h = 2.6, 0.5, 2.75
    fig = Figure(figsize=(n_boxes * (box_w + gap) * 0.95, 3.9))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.2, n_boxes * (box_w + gap))
    ax.set_ylim(-0.15, box_h + 1.0)
    ax.axis("off")
    convs = sum(1 for op in net.all_ops() if isinstance(op, ir.CONVS) and ".downsample." not in op.name)
    ax.text(0, box_h + 0.7, f"{net.name}", fontsize=15, weight="bold", va="center")
    ax.text(0, box_h + 0.3, f"{convs + 1} weighted layers, {net.params:,} parameters, "
                            f"{net.macs / 1e9:.2f} GMACs at {net.input_shape[1]}x{net.input_shape[2]}",
            fontsize=10, va="center", color="#333333")
    c, h, w = net.input_shape
    boxes = [("input", [f"{c}x{h}x{w}"], "#ffffff", None)]
    boxes.append(("stem", _stem_lines(net), "#eeeeee", None))
    for i, s in enumerate(stages):
        widths = f"{s['in']} -> {s['width']} -> {s['out']}" if s["width"] else f"{s['in']} -> {s['out']}"
        lines = [f"{s['blocks']} x {s['kind']}", f"channels {widths}"]
        if s["groups"] > 1:
            lines.append(f"groups {s['groups']}")
        lines += [s["stride"].replace(" (", "\n("), f"shortcut: {s['shortcut']}",
                  "out {}x{}x{}".format(*s["shape"])]
        boxes.append((s["name"], lines, STAGE_COLORS[i % len(STAGE_COLORS)], s["blocks"]))
    boxes.append(("head", _head_lines(net), "#eeeeee", None))
    max_blocks = max(s["blocks"] for s in stages)
    for k, (title, lines, color, nblocks) in enumerate(boxes):
        x = k * (box_w + gap)
        ax.add_patch(FancyBboxPatch((x, 0), box_w, box_h, boxstyle="round,pad=0.04,rounding_size=0.12",
                                    fc=color, ec="#555555", lw=1.2))
        ax.text(x + box_w / 2, box_h - 0.28, title, ha="center", va="center", fontsize=12, weight="bold")
        ax.text(x + box_w / 2, box_h - 0.55, "\n".join(lines), ha="center", va="top", fontsize=9.5,
                linespacing=1.4)
        if nblocks:
            _block_glyphs(ax, Rectangle, x + 0.15, 0.18, box_w - 0.3, nblocks, max_blocks)
        if k < len(boxes) - 1:
            ax.annotate("", xy=(x + box_w + gap - 0.05, box_h / 2), xytext=(x + box_w + 0.05, box_h / 2),
                        arrowprops={"arrowstyle": "-|>", "color": "#444444", "lw": 1.4})
    return fig


def _block_glyphs(ax, Rectangle, x, y, width, n, max_n):
    """One tick per block when they fit (<= 40), else a bar whose length is n / (most blocks)."""
    if n <= 40:
        step = width / max(n, 20)
        for i in range(n):
            ax.add_patch(Rectangle((x + i * step, y), step * 0.7, 0.32, fc="#4a6fa5", ec="none"))
    else:
        ax.add_patch(Rectangle((x, y), width, 0.32, fc="none", ec="#4a6fa5", lw=0.8))
        ax.add_patch(Rectangle((x, y), width * n / max_n, 0.32, fc="#4a6fa5", ec="none"))
        ax.text(x + width / 2, y + 0.16, f"{n} blocks", ha="center", va="center", fontsize=7.5, color="white",
                weight="bold")


def write_diagram(net: ir.Network, path: str, force: bool = True) -> None:
    from .resolved import write_output

    figure_format(path)
    write_output(path, render(draw(net), path), force)
