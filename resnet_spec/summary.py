"""Sizes and costs computed from the IR alone: no framework is imported here.

``params`` counts learnable tensors (torch ``parameters()``, Keras trainable weights); BN running
statistics are ``buffers``. ``macs`` counts the multiply-adds of convolutions (SE's 1x1 convs
included) and the classifier for one image at the spec's input size -- torchvision's GFLOPS convention.
"""

from __future__ import annotations

import math

from . import ir


def _count(ops):
    params = buffers = macs = 0
    for op in ops:
        for _, shape, trainable in getattr(op, "tensors", lambda: ())():
            if trainable:
                params += math.prod(shape)
            else:
                buffers += math.prod(shape)
        macs += getattr(op, "macs", 0)
    return params, buffers, macs


def stage_rows(net: ir.Network) -> list[dict]:
    """One row per stem / stage / head: output shape, parameters, buffers, multiply-adds, blocks."""
    rows = []
    p, b, m = _count(net.stem)
    rows.append({"name": "stem", "blocks": 0,
                 "output": list(net.stem[-1].out_shape if net.stem else net.input_shape),
                 "params": p, "buffers": b, "macs": m})
    for s in range(net.stages):
        blocks = [blk for blk in net.blocks if blk.stage == s]
        p, b, m = _count([op for blk in blocks for op in blk.ops])
        rows.append({"name": f"layer{s + 1}", "blocks": len(blocks), "output": list(blocks[-1].out_shape),
                     "params": p, "buffers": b, "macs": m})
    p, b, m = _count(net.head)
    rows.append({"name": "head", "blocks": 0, "output": [net.num_classes], "params": p, "buffers": b, "macs": m})
    return rows


def summarize(net: ir.Network) -> dict:
    rows = stage_rows(net)
    acts = sum(math.prod(op.out_shape) for op in net.all_ops())
    return {
        "name": net.name,
        "description": net.description,
        "input": list(net.input_shape),
        "params": net.params,
        "buffers": net.buffers,
        "macs": net.macs,
        "blocks": len(net.blocks),
        "tensors": len(net.tensors()),
        "activations_per_image": acts,
        "stages": rows,
    }


def _h(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f}{unit}" if unit == "G" else f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(info: dict) -> str:
    head = ["stage", "blocks", "output (CxHxW)", "params", "MACs"]
    body = [[r["name"], str(r["blocks"] or ""), "x".join(map(str, r["output"])), f"{r['params']:,}", _h(r["macs"])]
            for r in info["stages"]]
    body.append(["total", str(info["blocks"]), "", f"{info['params']:,}", _h(info["macs"])])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    align = [str.ljust, str.rjust, str.rjust, str.rjust, str.rjust]

    def line(row):
        return "  ".join(align[i](c, widths[i]) for i, c in enumerate(row)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    out = [f"{info['name']}: {info['description']}".rstrip(": ") if info["description"] else info["name"],
           f"input {'x'.join(map(str, info['input']))}", "", line(head), sep]
    out += [line(r) for r in body[:-1]] + [sep, line(body[-1]), ""]
    out.append(f"params {info['params']:,} ({_h(info['params'])}), BN buffers {info['buffers']:,}, "
               f"MACs {info['macs']:,} ({_h(info['macs'])})")
    return "\n".join(out)
