"""The stem's resolution: its conv (or timm's deep stem of three convs), BN, ReLU and pool (max, average,
ResNet-RS's strided conv, or a max pool whose stride a blur pool takes). Called by :mod:`resnet_spec.resolve`
with its resolver ``r`` (``conv``, ``bn``, ``relu``, ``err``, ``checked_blur``)."""

from __future__ import annotations

from . import ir
from .config import StemConfig
from .ir_blur import blur_pool


def stem(r, in_shape) -> tuple:
    """The stem's ops (a conv, or timm's deep stem of three; its BN and ReLU; its pool) and their output shape."""
    st = StemConfig.of(r.d, r.preact)
    ops, shape = [], in_shape
    if st.kind == "conv":
        bias = st.bias if st.bias is not None else r.bias_for(st.norm)
        ops.append(r.conv("conv1", shape, st.channels, st.kernel, st.stride, st.padding, 1, 1, bias, ("stem",)))
        shape = ops[-1].out_shape
    else:
        # timm's deep stem: conv1 = Sequential(conv, bn, act, conv, bn, act, conv); its last
        # BN is the network's bn1. Only the first conv is strided.
        n = len(st.channels)
        for i, c in enumerate(st.channels):
            last = i == n - 1
            bias = st.bias if st.bias is not None else r.bias_for(st.norm if last else True)
            first = i == 0
            ops.append(r.conv(f"conv1.{3 * i}", shape, c, st.kernel if first else 3, st.stride if first else 1,
                           st.padding if first else 1, 1, 1, bias, ("stem",)))
            shape = ops[-1].out_shape
            if not last:
                ops += [r.bn(f"conv1.{3 * i + 1}", shape), r.relu(shape)]
    if st.norm:
        ops += [r.bn("bn1", shape), r.relu(shape)]
    if st.pool is not None:
        pool_ops = stem_pool(r, st.pool, shape)
        ops += pool_ops
        shape = pool_ops[-1].out_shape
    return tuple(ops), shape


def stem_pool(r, p: dict, shape) -> list:
    """The stem's pool: a max or average ``maxpool``, or ResNet-RS's ``maxpool.0`` conv,
    ``maxpool.1`` BN and a ReLU (timm keeps the name ``maxpool`` for weight compatibility)."""
    if p["type"] == "conv":
        conv = r.conv("maxpool.0", shape, shape[0], p["kernel"], p["stride"], p["padding"], 1, 1,
                      r.bias_for(True), ("stem", "pool"))
        return [conv, r.bn("maxpool.1", conv.out_shape), r.relu(conv.out_shape)]
    c, h, w = shape
    oh = ir.pool_out(h, p["kernel"], p["stride"], p["padding"], p["ceil_mode"])
    ow = ir.pool_out(w, p["kernel"], p["stride"], p["padding"], p["ceil_mode"])
    if oh < 1 or ow < 1:
        raise r.err(f"the stem pool shrinks a {h}x{w} feature map to nothing", ("stem", "pool"))
    avg = p["type"] == "avg"
    if p.get("anti_alias") == "blur":  # timm's resnetblur stem: max-pool at stride 1, then the blur's stride
        oh, ow = (ir.pool_out(n, p["kernel"], 1, p["padding"], False) for n in (h, w))
        pool = ir.Pool("maxpool.0", "max", p["kernel"], 1, p["padding"], False, False, p["pad_value"], shape,
                       (c, oh, ow))
        return [pool, r.checked_blur(blur_pool("maxpool.1", pool.out_shape, p["stride"]), ("stem", "pool"))]
    return [ir.Pool("maxpool", p["type"], p["kernel"], p["stride"], p["padding"], p["ceil_mode"],
                    bool(p["count_include_pad"]) if avg else False, "zero" if avg else p["pad_value"],
                    shape, (c, oh, ow))]
