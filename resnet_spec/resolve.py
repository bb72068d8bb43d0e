"""Stage 3: resolve a validated :class:`~resnet_spec.spec.Spec` into the IR.

All defaults live in :data:`DEFAULTS` (the schema's ``default`` annotations are tested against it),
and all ResNet semantics live here: where the stride goes, when a shortcut projects, which convs carry
a bias, how blocks are named. Backends only interpret the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import ir
from .spec import Spec

DEFAULTS = {
    "input": {"channels": 3, "size": 224},
    "width_multiplier": 1,
    "conv_bias": False,
    "norm": {"eps": 1e-5, "momentum": 0.1},
    "stem": {"type": "conv", "channels": 64, "kernel": 7, "stride": 2,
             "pool": {"type": "max", "kernel": 3, "stride": 2, "padding": 1}},
    "stem.pool": {"type": "max", "kernel": 3, "stride": 2, "padding": 1, "ceil_mode": False, "pad_value": "neg_inf"},
    "block": {"preact": False, "stride_on": "3x3", "stride_block": "first", "groups": 1,
              "width_per_group": 64, "se": None, "drop_path_rate": 0.0},
    "block.se": {"reduction": 16, "divisor": 8},
    "shortcut": {"type": "B", "projection": "conv", "strided_identity": False, "zero_pad": "split"},
    "shortcut.pool": {"ceil_mode": True, "count_include_pad": False},
    "head": {"classes": 1000, "dropout": 0.0, "bias": True},
    "init": {"zero_init_last_bn": False},
}


@dataclass(frozen=True)
class Limits:
    """Refuse absurd models before anything is allocated. Defaults fit any published ResNet."""

    max_params: int = 2_000_000_000
    max_activation_bytes: int = 64 * 2**30  # one fp32 image's activations, all ops summed
    max_blocks: int = 10_000


#: For re-resolving, in a worker process, a spec that the caller already checked against its limits.
UNCHECKED = Limits(max_params=1 << 62, max_activation_bytes=1 << 62, max_blocks=1 << 62)


def _get(d: dict | None, key: str, default):
    if d is None:
        return default
    v = d.get(key, default)
    return default if v is None and key not in d else v


def _opt(section: dict | None, key: str, defaults_key: str):
    return _get(section, key, DEFAULTS[defaults_key].get(key))


def make_divisible(v: float, divisor: int) -> int:
    """timm's make_divisible with round_limit=0: nearest multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def resolve(spec: Spec, limits: Limits | None = None) -> ir.Network:
    """Turn a merged spec into an :class:`ir.Network`, enforcing the semantic rules."""
    return _Resolver(spec, limits or Limits()).run()


class _Resolver:
    def __init__(self, spec: Spec, limits: Limits):
        self.spec = spec
        self.d = spec.data
        self.limits = limits
        norm = self.d.get("norm") or {}
        self.eps = float(_opt(norm, "eps", "norm"))
        self.momentum = float(_opt(norm, "momentum", "norm"))
        self.conv_bias = self.d.get("conv_bias", DEFAULTS["conv_bias"])
        for key in ("block", "stages"):
            if key not in self.d:
                raise spec.error(f"missing required field {key!r} (directly or through 'extends')")
        blk = self.d["block"]
        if "type" not in blk:
            raise spec.error("missing required field 'type' (basic or bottleneck)", ("block",))
        self.block = blk
        self.kind = blk["type"]
        self.preact = bool(_opt(blk, "preact", "block"))
        self.sc = self.d.get("shortcut") or {}

    def err(self, msg, path=()):
        return self.spec.error(msg, path)

    # -- helpers ---------------------------------------------------------------------------------
    def bias_for(self, followed_by_bn: bool) -> bool:
        if self.conv_bias == "auto":
            return not followed_by_bn
        return bool(self.conv_bias)

    def conv(self, name, shape, out_ch, k, stride, pad, dil, groups, bias, path):
        c, h, w = shape
        if c % groups or out_ch % groups:
            raise self.err(f"{c} input and {out_ch} output channels of {name} are not divisible by "
                           f"groups={groups}", path)
        oh, ow = ir.conv_out(h, k, stride, pad, dil), ir.conv_out(w, k, stride, pad, dil)
        if oh < 1 or ow < 1:
            raise self.err(f"the feature map shrinks to nothing at {name}: {h}x{w} input, kernel {k}, "
                           f"stride {stride}, padding {pad} gives {oh}x{ow}; use a larger input.size "
                           "or fewer strided stages", path)
        return ir.Conv(name, c, out_ch, k, stride, pad, dil, groups, bias, shape, (out_ch, oh, ow))

    def bn(self, name, shape):
        return ir.BatchNorm(name, shape[0], self.eps, self.momentum, shape, shape)

    @staticmethod
    def relu(shape):
        return ir.ReLU(shape, shape)

    # -- stem ------------------------------------------------------------------------------------
    def stem(self, in_shape):
        st = self.d.get("stem") or {}
        kind = _opt(st, "type", "stem")
        default_k = 3 if kind == "deep" else DEFAULTS["stem"]["kernel"]
        k = st.get("kernel", default_k)
        stride = st.get("stride", DEFAULTS["stem"]["stride"])
        pad = st.get("padding", k // 2)
        chans = st.get("channels", [32, 32, 64] if kind == "deep" else DEFAULTS["stem"]["channels"])
        norm = st.get("norm", not self.preact)
        if kind == "conv" and isinstance(chans, list):
            raise self.err("a 'conv' stem takes one integer of channels; lists are for type 'deep'",
                           ("stem", "channels"))
        if kind == "deep" and not isinstance(chans, list):
            raise self.err("a 'deep' stem takes a list of channels, one per conv, e.g. [32, 32, 64]",
                           ("stem", "channels"))
        ops, shape = [], in_shape
        if kind == "conv":
            bias = st.get("bias", self.bias_for(norm))
            ops.append(self.conv("conv1", shape, chans, k, stride, pad, 1, 1, bias, ("stem",)))
            shape = ops[-1].out_shape
        else:
            # timm's deep stem: conv1 = Sequential(conv, bn, act, conv, bn, act, conv); its last
            # BN is the network's bn1. Only the first conv is strided.
            n = len(chans)
            for i, c in enumerate(chans):
                last = i == n - 1
                bias = st.get("bias", self.bias_for(norm if last else True))
                ops.append(self.conv(f"conv1.{3 * i}", shape, c, k if i == 0 else 3, stride if i == 0 else 1,
                                     pad if i == 0 else 1, 1, 1, bias, ("stem",)))
                shape = ops[-1].out_shape
                if not last:
                    ops += [self.bn(f"conv1.{3 * i + 1}", shape), self.relu(shape)]
        if norm:
            ops += [self.bn("bn1", shape), self.relu(shape)]
        pool = st.get("pool", DEFAULTS["stem"]["pool"]) if "pool" in st else DEFAULTS["stem"]["pool"]
        if pool is not None:
            p = {**DEFAULTS["stem.pool"], **pool}
            c, h, w = shape
            if p["padding"] * 2 > p["kernel"]:
                raise self.err(f"pool padding {p['padding']} is more than half the kernel {p['kernel']}",
                               ("stem", "pool", "padding"))
            oh = ir.pool_out(h, p["kernel"], p["stride"], p["padding"], p["ceil_mode"])
            ow = ir.pool_out(w, p["kernel"], p["stride"], p["padding"], p["ceil_mode"])
            if oh < 1 or ow < 1:
                raise self.err(f"the stem pool shrinks a {h}x{w} feature map to nothing", ("stem", "pool"))
            ops.append(ir.Pool("maxpool", "max", p["kernel"], p["stride"], p["padding"], p["ceil_mode"],
                               False, p["pad_value"], shape, (c, oh, ow)))
            shape = ops[-1].out_shape
        return tuple(ops), shape

    # -- stages ----------------------------------------------------------------------------------
    def blocks_per_stage(self):
        stages = self.d["stages"]
        depth = self.d.get("depth")
        if depth is None:
            missing = [i for i, s in enumerate(stages) if "blocks" not in s]
            if missing:
                raise self.err("missing 'blocks' (or give a top-level 'depth')", ("stages", missing[0]))
            return [s["blocks"] for s in stages]
        given = [i for i, s in enumerate(stages) if "blocks" in s]
        if given:
            raise self.err("give either the top-level 'depth' or per-stage 'blocks', not both",
                           ("stages", given[0], "blocks"))
        per_block = 2 if self.kind == "basic" else 3
        S = len(stages)
        if (depth - 2) % (per_block * S) or depth <= 2:
            rule = f"{per_block * S}n+2"
            near = [per_block * S * n + 2 for n in (max(1, (depth - 2) // (per_block * S)),
                                                    (depth - 2) // (per_block * S) + 1)]
            raise self.err(f"depth {depth} is not of the form {rule} for {S} stages of {self.kind} blocks "
                           f"(nearest: {near[0]} or {near[1]})", ("depth",))
        return [(depth - 2) // (per_block * S)] * S

    def run(self) -> ir.Network:
        d = self.d
        inp = d.get("input") or {}
        size = inp.get("size", DEFAULTS["input"]["size"])
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        in_shape = (inp.get("channels", DEFAULTS["input"]["channels"]), h, w)

        blk = self.block
        if self.kind == "basic":
            for key in ("stride_on", "groups", "width_per_group"):
                if key in blk and blk[key] != DEFAULTS["block"][key]:
                    raise self.err(f"'{key}' applies to bottleneck blocks only", ("block", key))
            for i, s in enumerate(d["stages"]):
                if "width" in s:
                    raise self.err("'width' applies to bottleneck blocks only", ("stages", i, "width"))
        expansion = blk.get("expansion", 4 if self.kind == "bottleneck" else 1)
        groups = _opt(blk, "groups", "block")
        wpg = _opt(blk, "width_per_group", "block")
        stride_last = _opt(blk, "stride_block", "block") == "last"
        se = blk.get("se")
        se = None if se is None else {**DEFAULTS["block.se"], **se}
        dpr = float(_opt(blk, "drop_path_rate", "block"))
        sc_type = _opt(self.sc, "type", "shortcut")
        projection = _opt(self.sc, "projection", "shortcut")
        sc_norm = self.sc.get("norm", not self.preact)
        strided_identity = _opt(self.sc, "strided_identity", "shortcut")
        zero_pad = _opt(self.sc, "zero_pad", "shortcut")
        sc_pool = {**DEFAULTS["shortcut.pool"], **(self.sc.get("pool") or {})}
        if "pool" in self.sc and projection != "avgpool_conv":
            raise self.err("'pool' applies to projection 'avgpool_conv' only", ("shortcut", "pool"))
        if sc_type == "A" and "projection" in self.sc:
            raise self.err("type A shortcuts never project; remove 'projection' or use type B/C",
                           ("shortcut", "projection"))
        mult = d.get("width_multiplier", 1)

        stem_ops, shape = self.stem(in_shape)
        counts = self.blocks_per_stage()
        total = sum(counts)
        if total > self.limits.max_blocks:
            raise self.err(f"{total} blocks exceed the limit of {self.limits.max_blocks}", ("stages",))
        blocks, dilation, idx = [], 1, 0
        for si, (stage, n) in enumerate(zip(d["stages"], counts)):
            spath = ("stages", si)
            planes = stage["channels"] * mult
            out_ch = planes * expansion
            stride = stage.get("stride", 1 if si == 0 else 2)
            prev_dilation = dilation
            if stage.get("dilate", False):
                if stride_last:
                    raise self.err("'dilate' is not supported with block.stride_block: last", spath + ("dilate",))
                if projection == "avgpool_conv":
                    raise self.err("'dilate' is not supported with avgpool_conv projections", spath + ("dilate",))
                dilation *= stride
                stride = 1
            width = stage.get("width", int(planes * (wpg / 64.0)) * groups)
            if self.kind == "bottleneck" and width < 1:
                raise self.err("bottleneck width rounds to 0; raise channels or width_per_group", spath)
            for bi in range(n):
                b_stride = stride if (bi == n - 1 if stride_last else bi == 0) else 1
                b_dil = prev_dilation if bi == 0 else dilation
                rate = dpr * idx / (total - 1) if total > 1 and dpr > 0 else 0.0
                block = self.block_ops(f"layer{si + 1}.{bi}", si, bi, shape, planes, width, out_ch, b_stride,
                                       b_dil, groups, se, rate, sc_type, projection, sc_norm, strided_identity,
                                       zero_pad, sc_pool, spath)
                blocks.append(block)
                shape = block.out_shape
                idx += 1

        head = d.get("head") or {}
        classes = _opt(head, "classes", "head")
        head_norm = head.get("norm", self.preact)
        head_ops = []
        if head_norm:
            head_ops += [self.bn("bn_final", shape), self.relu(shape)]
        c = shape[0]
        head_ops.append(ir.GlobalAvgPool(shape, (c,)))
        drop = float(_opt(head, "dropout", "head"))
        if drop > 0:
            head_ops.append(ir.Dropout(drop, (c,), (c,)))
        head_ops.append(ir.Linear("fc", c, classes, bool(_opt(head, "bias", "head")), (c,), (classes,)))

        net = ir.Network(
            name=d["name"], description=d.get("description", ""), input_shape=in_shape,
            stem=stem_ops, blocks=tuple(blocks), head=tuple(head_ops), num_classes=classes,
            zero_init_last_bn=bool(_opt(d.get("init"), "zero_init_last_bn", "init")),
            spec_yaml=self.spec.text())
        self.check_limits(net)
        return net

    def block_ops(self, name, si, bi, in_shape, planes, width, out_ch, stride, dil, groups, se, rate,
                  sc_type, projection, sc_norm, strided_identity, zero_pad, sc_pool, spath):
        in_ch = in_shape[0]
        pre, main = [], []
        if self.preact:
            pre = [self.bn(f"{name}.bn1", in_shape), self.relu(in_shape)]
        shape = in_shape
        # Conv i of the branch is conv{i}; v1 puts bn{i} after it, pre-activation puts bn{i} before it
        # (bn1 being the block's pre-activation), as in torchvision and the preact reference code.
        if self.kind == "bottleneck":
            s1, s3 = (stride, 1) if _opt(self.block, "stride_on", "block") == "1x1" else (1, stride)
            plan = [(width, 1, s1, 0, 1, 1), (width, 3, s3, dil, dil, groups), (out_ch, 1, 1, 0, 1, 1)]
        else:
            plan = [(out_ch, 3, stride, dil, dil, 1), (out_ch, 3, 1, dil, dil, 1)]
        for i, (oc, k, s, p, dl, g) in enumerate(plan, start=1):
            last = i == len(plan)
            if self.preact:
                if i > 1:
                    main += [self.bn(f"{name}.bn{i}", shape), self.relu(shape)]
                followed_by_bn = not last
            else:
                followed_by_bn = True
            conv = self.conv(f"{name}.conv{i}", shape, oc, k, s, p, dl, g, self.bias_for(followed_by_bn), spath)
            main.append(conv)
            shape = conv.out_shape
            if not self.preact:
                main.append(self.bn(f"{name}.bn{i}", shape))
                if not last:
                    main.append(self.relu(shape))
        if se is not None:
            main.append(ir.SqueezeExcite(f"{name}.se", out_ch, make_divisible(out_ch / se["reduction"], se["divisor"]),
                                         shape, shape))
        if rate > 0:
            main.append(ir.DropPath(rate, shape, shape))
        out_shape = shape

        # Shortcut.
        reshaped = stride != 1 or in_ch != out_ch
        shortcut, src = [], "input"
        if sc_type == "A" or (sc_type == "B" and strided_identity and in_ch == out_ch):
            if in_ch > out_ch:
                raise self.err(f"a type A shortcut cannot reduce channels ({in_ch} -> {out_ch})", spath)
            shape = in_shape
            if stride != 1:
                _, h, w = shape
                shape = (in_ch, ir.conv_out(h, 1, stride, 0), ir.conv_out(w, 1, stride, 0))
                shortcut.append(ir.Subsample(stride, in_shape, shape))
            if out_ch > in_ch:
                extra = out_ch - in_ch
                before = extra // 2 if zero_pad == "split" else 0
                new = (out_ch, shape[1], shape[2])
                shortcut.append(ir.ChannelPad(before, extra - before, shape, new))
                shape = new
        elif sc_type == "C" or reshaped:
            src = "pre" if self.preact else "input"
            shape = in_shape
            pos = 0
            conv_stride = stride
            if projection == "avgpool_conv":
                # ResNet-D / timm avg_down: the pool takes the stride, index 0 is kept for it even when
                # there is none, so conv and norm are downsample.1 and downsample.2 as in timm.
                if stride != 1:
                    c, h, w = shape
                    oh = ir.pool_out(h, stride, stride, 0, sc_pool["ceil_mode"])
                    ow = ir.pool_out(w, stride, stride, 0, sc_pool["ceil_mode"])
                    shortcut.append(ir.Pool(f"{name}.downsample.0", "avg", stride, stride, 0, sc_pool["ceil_mode"],
                                            sc_pool["count_include_pad"], "zero", shape, (c, oh, ow)))
                    shape = (c, oh, ow)
                pos, conv_stride = 1, 1
            conv = self.conv(f"{name}.downsample.{pos}", shape, out_ch, 1, conv_stride, 0, 1, 1,
                             self.bias_for(sc_norm), spath)
            shortcut.append(conv)
            shape = conv.out_shape
            if sc_norm:
                shortcut.append(self.bn(f"{name}.downsample.{pos + 1}", shape))
        else:
            shape = in_shape
        if shape != out_shape:
            pool = next((op for op in shortcut if isinstance(op, ir.Pool)), None)
            if pool is not None and not pool.ceil_mode:
                raise self.err(f"block {name}: the shortcut's {stride}x{stride} average pool (ceil_mode: false) "
                               f"gives {_fmt(shape[1:])} on a {_fmt(in_shape[1:])} input, but the residual branch gives "
                               f"{_fmt(out_shape[1:])}; set ceil_mode: true or use an input size that divides evenly",
                               ("shortcut", "pool", "ceil_mode"))
            raise self.err(f"block {name}: shortcut gives {_fmt(shape)} but the residual branch gives "
                           f"{_fmt(out_shape)}; with odd feature-map sizes use a projection shortcut "
                           "(type B or C)", spath)
        post = [] if self.preact else [self.relu(out_shape)]
        kind = self.kind
        return ir.Block(name, si, bi, kind, self.preact, tuple(pre), tuple(main), tuple(shortcut), src,
                        tuple(post), in_shape, out_shape)

    def check_limits(self, net: ir.Network):
        params = net.params
        if params > self.limits.max_params:
            raise self.err(f"the model would have {params:,} parameters, over the limit of "
                           f"{self.limits.max_params:,} (raise it with --max-params)", ())
        act = 4 * sum(math.prod(op.out_shape) for op in net.all_ops())
        if act > self.limits.max_activation_bytes:
            raise self.err(f"one image's activations would take {act / 2**30:.1f} GiB, over the limit of "
                           f"{self.limits.max_activation_bytes / 2**30:.1f} GiB (raise it with "
                           "--max-activation-gib)", ("input", "size"))


def _fmt(shape) -> str:
    return "x".join(map(str, shape))
