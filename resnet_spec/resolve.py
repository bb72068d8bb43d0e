"""Stage 3: resolve a validated :class:`~resnet_spec.spec.Spec` into the IR.

All defaults live in :data:`resnet_spec.config.DEFAULTS` (the schema's ``default`` annotations are
tested against it) and reach the resolver as typed, frozen configs (``BlockConfig``...). The semantic
checks are small rule functions (:data:`RULES`); :func:`semantic_errors` runs them all. All ResNet
semantics live here: where the stride goes, when a shortcut projects, which convs carry a bias, how
blocks are named. Backends only interpret the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import ir
from . import resolve_resnest as resnest
from . import resolve_stem
from .config import DEFAULTS, BlockConfig, HeadConfig, ShortcutConfig, StemConfig, opt  # noqa: F401
from .config import conv_config, norm_config
from .errors import SpecError
from .resolve_frn import fold_acts, norm_act
from .ir_blur import blur_pool, blur_problem
from .regnet import stage_path, stages_of
from .rules import RULES, blocks_per_stage, rule_errors  # noqa: F401  (RULES: the semantic rules)
from .sknet import is_selective_kernel, selective_kernel
from .spec import Spec, load as load_spec


@dataclass(frozen=True)
class Limits:
    """Refuse absurd models before anything is allocated. Defaults fit any published ResNet."""

    max_params: int = 2_000_000_000
    max_activation_bytes: int = 64 * 2**30  # one fp32 image's activations, all ops summed
    max_blocks: int = 10_000


#: For re-resolving, in a worker process, a spec that the caller already checked against its limits.
UNCHECKED = Limits(max_params=1 << 62, max_activation_bytes=1 << 62, max_blocks=1 << 62)


def resolve(spec: Spec, limits: Limits | None = None) -> ir.Network:
    """Turn a merged spec into an :class:`ir.Network`, enforcing the semantic rules; raises the first
    :class:`SpecError` (see :func:`semantic_errors` for all of them)."""
    for err in rule_errors(spec):
        raise err
    return _Resolver(spec, limits or Limits()).run()


def load_network(source, limits: Limits | None = None) -> ir.Network:
    """Load, validate and resolve a spec (``resnet_spec.load``). ``source``: a zoo name, a path, YAML
    text, or an :class:`ir.Network` (returned as it is)."""
    if isinstance(source, ir.Network):
        return source
    return resolve(load_spec(source), limits)


def semantic_errors(spec: Spec, limits: Limits | None = None) -> list:
    """Every semantic error of a schema-valid ``spec``, in file order (``[]`` when it resolves).

    The independent rules (:data:`RULES`) all run; when a required field is missing, only that is
    reported (the other rules need it). Errors found while building the network (a feature map that
    shrinks to nothing, a shortcut that does not fit) are reported only when every rule passes, and
    then the first one, since building cannot go on past it.
    """
    errors = list(rule_errors(spec))
    if not errors:
        try:
            _Resolver(spec, limits or Limits()).run()
        except SpecError as exc:
            errors.append(exc)
    user_file = spec.chain[0] if spec.chain else None
    return sorted(errors, key=lambda e: (e.file != user_file, e.file or "", e.line or 0, e.col or 0))


class _Resolver:
    """Builds the IR from a spec that passed the rules; raises only for facts found while building."""

    def __init__(self, spec: Spec, limits: Limits):
        self.spec, self.d, self.limits = spec, spec.data, limits
        norm = self.d.get("norm") or {}
        self.eps = float(opt(norm, "eps", "norm"))
        self.momentum = float(opt(norm, "momentum", "norm"))
        self.norm, self.conv_cfg = norm_config(norm), conv_config(self.d.get("conv"))
        self.conv_bias = self.d.get("conv_bias", DEFAULTS["conv_bias"])
        self.blk = BlockConfig.of(self.d)
        self.preact = self.blk.preact
        self.sc = ShortcutConfig.of(self.d, self.preact)
        self.nominal = None  # a stage with per-block widths: its nominal output channels (conv_widths)

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
        if self.conv_cfg["standardize"]:
            return ir.StdConv(name, c, out_ch, k, stride, pad, dil, groups, bias, shape, (out_ch, oh, ow),
                              float(self.conv_cfg["eps"]), "biased")
        return ir.Conv(name, c, out_ch, k, stride, pad, dil, groups, bias, shape, (out_ch, oh, ow))

    def bn(self, name, shape):
        """The network's normalization over ``shape``: a BatchNorm, or a GroupNorm (``norm.type: group``)."""
        if self.norm["type"] == "group":
            groups = self.norm["groups"]
            if shape[0] % groups:
                raise self.err(f"{shape[0]} channels of {name} are not divisible by groups={groups}",
                               ("norm", "groups"))
            return ir.GroupNorm(name, shape[0], groups, self.eps, shape, shape)
        if self.norm["type"] in ("frn", "evonorm_s0"):  # the ReLU after it is folded in: resolve_frn.fold_acts
            groups = self.norm.get("groups", 1)
            if shape[0] % groups:
                raise self.err(f"{shape[0]} channels of {name} are not divisible by groups={groups}",
                               ("norm", "groups"))
            return norm_act(self.norm["type"], name, shape, self.eps, groups)
        return ir.BatchNorm(name, shape[0], self.eps, self.momentum, shape, shape)

    @staticmethod
    def relu(shape):
        return ir.ReLU(shape, shape)

    # -- stem: resolve_stem.py ---------------------------------------------------------------------
    def stem(self, in_shape):
        return resolve_stem.stem(self, in_shape)

    def checked_blur(self, op: ir.BlurPool, path) -> ir.BlurPool:
        """``op``, or the located error saying why it cannot run on its input (:func:`ir_blur.blur_problem`)."""
        problem = blur_problem(op)
        if problem:
            raise self.err(problem, path)
        return op

    # -- network ---------------------------------------------------------------------------------
    def run(self) -> ir.Network:
        d = self.d
        inp = d.get("input") or {}
        size = inp.get("size", DEFAULTS["input"]["size"])
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        in_shape = (inp.get("channels", DEFAULTS["input"]["channels"]), h, w)
        stem_ops, shape = self.stem(in_shape)
        counts = blocks_per_stage(self.spec)
        if sum(counts) > self.limits.max_blocks:
            raise self.err(f"{sum(counts)} blocks exceed the limit of {self.limits.max_blocks}", ("stages",))
        blocks = self.stages(shape, counts)
        head = HeadConfig.of(d, self.preact)
        net = ir.Network(
            name=d["name"], description=d.get("description", ""), input_shape=in_shape,
            stem=stem_ops, blocks=blocks, head=self.head(head, blocks[-1].out_shape if blocks else shape),
            num_classes=head.classes, zero_init_last_bn=bool(opt(d.get("init"), "zero_init_last_bn", "init")),
            spec_yaml=self.spec.text())
        net = fold_acts(net)
        self.check_limits(net)
        return net

    def stages(self, shape, counts) -> tuple:
        base, total = self.blk, sum(counts)
        blocks, dilation, idx = [], 1, 0
        for si, (stage, n) in enumerate(zip(stages_of(self.d), counts)):
            spath = stage_path(self.d, si)
            self.blk = blk = base.for_stage(stage)  # the stage's own block type (its `block` key), else the global
            planes = stage["channels"] * self.d.get("width_multiplier", 1)
            out_ch = planes * blk.expansion
            stride = stage.get("stride", 1 if si == 0 else 2)
            prev_dilation = dilation
            if stage.get("dilate", False):
                dilation, stride = dilation * stride, 1
            width, groups = self.stage_width(stage, planes, out_ch, spath)
            self.nominal = out_ch if "widths" in stage else None  # what an SE/ECA is sized from (timm's pruning)
            for bi in range(n):
                b_stride = stride if (bi == n - 1 if blk.stride_last else bi == 0) else 1
                rate = blk.drop_path_rate * idx / (total - 1) if total > 1 and blk.drop_path_rate > 0 else 0.0
                convs = self.conv_widths(stage, bi, planes, width, out_ch)
                blocks.append(self.block(f"layer{si + 1}.{bi}", si, bi, shape, (width, groups, convs), convs[-1],
                                         b_stride, prev_dilation if bi == 0 else dilation, rate, spath))
                shape = blocks[-1].out_shape
                idx += 1
        self.blk = base
        return tuple(blocks)

    def stage_width(self, stage, planes, out_ch, spath) -> tuple:
        """``(width, groups)`` of a stage's bottleneck 3x3 conv: ResNeXt's ``width_per_group`` x ``groups``,
        or RegNet's ``group_width`` (groups = width / group_width, width defaulting to the output channels)."""
        blk = self.blk
        if "group_width" in stage:
            width = stage.get("width", out_ch)
            if width % stage["group_width"]:
                raise self.err(f"bottleneck width {width} is not a multiple of group_width {stage['group_width']}",
                               spath)
            return width, width // stage["group_width"]
        width = stage.get("width", int(planes * (blk.width_per_group / 64.0)) * blk.groups)
        if blk.kind == "bottleneck" and width < 1:
            raise self.err("bottleneck width rounds to 0; raise channels or width_per_group", spath)
        return width, blk.groups

    def conv_widths(self, stage, bi, planes, width, out_ch) -> tuple:
        """The output channels of each conv of block ``bi``'s residual branch: the stage's explicit per-block
        ``widths`` (timm's pruned models), else conv1 narrowed by ``block.reduce_first`` (SENet-154), the
        bottleneck's 3x3 conv ``width`` and the block's ``out_ch``."""
        if "widths" in stage:
            return tuple(stage["widths"][bi])
        r, blk = self.blk.reduce_first, self.blk
        if blk.kind != "bottleneck":
            first = planes // r
        else:  # Res2Net: conv1 feeds `scale` splits of `width`
            first = (width // r) * (blk.spatial["scale"] if blk.spatial["type"] == "res2net" else 1)
        if first < 1:
            raise self.err(f"reduce_first {r} narrows the first conv to 0 channels", ("block", "reduce_first"))
        return (first, width, out_ch) if blk.kind == "bottleneck" else (first, out_ch)

    def head(self, head: HeadConfig, shape) -> tuple:
        ops = [self.bn("bn_final", shape), self.relu(shape)] if head.norm else []
        c = shape[0]
        ops.append(ir.GlobalAvgPool(shape, (c,)))
        if head.dropout > 0:
            ops.append(ir.Dropout(head.dropout, (c,), (c,)))
        ops.append(ir.Linear("fc", c, head.classes, head.bias, (c,), (head.classes,)))
        return tuple(ops)

    # -- blocks ----------------------------------------------------------------------------------
    def block(self, name, si, bi, in_shape, width, out_ch, stride, dil, rate, spath) -> ir.Block:
        pre, main, out_shape = self.residual_branch(name, in_shape, width, out_ch, stride, dil, rate, spath)
        shortcut, src, shape = self.shortcut(name, in_shape, out_ch, stride, spath)
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
        post = () if self.preact else (self.relu(out_shape),)
        return ir.Block(name, si, bi, self.blk.kind, self.preact, pre, main, shortcut, src, post, in_shape,
                        out_shape, self.shortcut_kind(shortcut))

    def shortcut_kind(self, ops) -> str:
        """The ir.Block.shortcut_kind of the shortcut ops this resolver made."""
        if not ops:
            return "identity"
        if isinstance(ops[0], (ir.Subsample, ir.ChannelPad)):
            return "option_a"
        return "avgpool_projection" if self.sc.projection == "avgpool_conv" else "projection"

    def spatial_op(self, name, i, shape, geometry, projects: bool, spath):
        """The composite op that replaces conv{i} + BN + ReLU: Res2Net's split convs or SKNet's selective
        kernel (``block.spatial``); ``geometry`` is that conv's (out channels, stride, dilation, groups)."""
        oc, s, dl, g = geometry
        if self.blk.spatial["type"] == "res2net":  # the rules keep it to v1 bottlenecks, stride on the 3x3
            first = s > 1 or projects  # timm's is_first: strided, or its shortcut projects
            return ir.res2net_op(name, self.blk.spatial["scale"], oc, (s, dl, g), first, (self.eps, self.momentum),
                                 shape)
        return selective_kernel(self, f"{name}.conv{i}", shape, oc, s, dl, g, spath)

    def conv_bn_relu(self, main: list, name, i, shape, geometry, followed_by_bn: bool, last: bool, spath):
        """conv{i} (+ bn{i} and, but for the last, a ReLU in a v1 block) appended to ``main``; the output
        shape. timm's SK blocks name their other convs ConvNormAct's way: conv{i}.conv, conv{i}.bn."""
        oc, k, s, p, dl, g = geometry
        sk = is_selective_kernel(self.blk.spatial)
        cname, bname = (f"{name}.conv{i}.conv", f"{name}.conv{i}.bn") if sk else (f"{name}.conv{i}", f"{name}.bn{i}")
        conv = self.conv(cname, shape, oc, k, s, p, dl, g, self.bias_for(followed_by_bn), spath)
        main.append(conv)
        if not self.preact:
            main.append(self.bn(bname, conv.out_shape))
            if not last:
                main.append(self.relu(conv.out_shape))
        return conv.out_shape

    def residual_branch(self, name, in_shape, width, out_ch, stride, dil, rate, spath) -> tuple:
        """``(pre, main, out_shape)``. Conv i is conv{i}; v1 puts bn{i} after it, pre-activation puts
        bn{i} before it (bn1 being the block's pre-activation), as torchvision and the preact code do."""
        blk, (width, groups, c) = self.blk, width  # c: each conv's output channels (conv_widths)
        pre = (self.bn(f"{name}.bn1", in_shape), self.relu(in_shape)) if self.preact else ()
        main, shape = [], in_shape
        if blk.kind == "bottleneck":
            s1, s3 = (stride, 1) if blk.stride_on_1x1 else (1, stride)
            plan = [(c[0], 1, s1, 0, 1, 1), (c[1], 3, s3, dil, dil, groups), (c[2], 1, 1, 0, 1, 1)]
        else:
            plan = [(c[0], 3, stride, dil, dil, 1), (c[1], 3, 1, dil, dil, 1)]
        kind = blk.spatial["type"]
        spatial_i = 2 if blk.kind == "bottleneck" else 1  # which conv a composite spatial op replaces
        for i, (oc, k, s, p, dl, g) in enumerate(plan, start=1):
            last = i == len(plan)
            if i == spatial_i and kind in ("res2net", "selective_kernel"):  # the rules keep both to v1 blocks
                main.append(self.spatial_op(name, i, shape, (oc, s, dl, g), in_shape[0] != out_ch, spath))
                shape = main[-1].out_shape
                continue
            if self.preact and i > 1:
                main += [self.bn(f"{name}.bn{i}", shape), self.relu(shape)]
            followed_by_bn = not (self.preact and last)
            aa = blk.anti_alias is not None and s > 1  # the rules keep it to v1 blocks' strided 3x3 convs
            avd = blk.avd is not None and k == 3 and s > 1  # ResNeSt's: the rules keep it to v1 bottlenecks
            if avd and blk.avd == "before_3x3":
                main.append(resnest.avd_pool(self, name, shape, s, spath))
                shape = main[-1].out_shape
            if k == 3 and kind == "split_attention":  # replaces conv2 + bn2 + relu
                main.append(resnest.split_attention(self, f"{name}.conv{i}", shape, oc, (1 if avd else s, p, dl), g,
                                                    spath))
                shape = main[-1].out_shape
            else:
                shape = self.conv_bn_relu(main, name, i, shape, (oc, k, 1 if aa or avd else s, p, dl, g),
                                          followed_by_bn, last, spath)
            if aa:
                main.append(self.anti_alias(f"{name}.aa", shape, s, spath))
                shape = main[-1].out_shape
            if avd and blk.avd == "after_3x3":
                main.append(resnest.avd_pool(self, name, shape, s, spath))
                shape = main[-1].out_shape
            if blk.se is not None and (k == 3 if blk.se["placement"] == "after_3x3" else last):
                if blk.se["placement"] == "end_relu":  # timm's legacy SEResNetBlock: BN, ReLU, SE, add, ReLU
                    main.append(self.relu(shape))
                main.append(self.squeeze_excite(name, in_shape[0], self.nominal or out_ch, shape))
        if rate > 0:
            main.append(ir.DropPath(rate, shape, shape))
        return pre, tuple(main), shape

    def squeeze_excite(self, name, in_ch, out_ch, shape):
        """The block's SE over ``shape`` (the channels at its place): its reduced width from the block's
        input or output channels (``reduce_from``), by ``ir.se_reduced``; or its ECA, whose kernel is the
        spec's or timm's adaptive one from the gated channels (``ir.eca_kernel``)."""
        se = self.blk.se
        if se["type"] == "eca":
            if se["kernel"] is not None:
                return ir.ECA(f"{name}.se", shape[0], se["kernel"], shape, shape, se["placement"], None, None)
            if self.nominal:  # per-block widths: timm's kernel from the unpruned channels, stated as a given one
                return ir.ECA(f"{name}.se", shape[0], ir.eca_kernel(self.nominal, se["gamma"], se["beta"]), shape,
                              shape, se["placement"], None, None)
            kernel = ir.eca_kernel(shape[0], se["gamma"], se["beta"])
            return ir.ECA(f"{name}.se", shape[0], kernel, shape, shape, se["placement"], se["gamma"], se["beta"])
        base = in_ch if se["reduce_from"] == "input" else out_ch
        reduced = ir.se_reduced(base, se["reduction"], se["divisor"])
        return ir.SqueezeExcite(f"{name}.se", shape[0], reduced, shape, shape, placement=se["placement"],
                                reduce_from=se["reduce_from"], base=base, reduction=se["reduction"],
                                divisor=se["divisor"])

    def anti_alias(self, name, shape, stride, spath):
        """timm's ``aa_layer=nn.AvgPool2d``: ``AvgPool2d(stride)`` -- window = stride, no padding, floor
        (padding 0: count_include_pad decides nothing; PyTorch's default is kept); ``blur``: timm's
        ``BlurPool2d(channels, stride=stride)`` (3 binomial taps, reflect padding: :func:`ir_blur.blur_pool`)."""
        if self.blk.anti_alias == "blur":
            return self.checked_blur(blur_pool(name, shape, stride), spath)
        c, h, w = shape
        oh, ow = ir.pool_out(h, stride, stride, 0, False), ir.pool_out(w, stride, stride, 0, False)
        if oh < 1 or ow < 1:
            raise self.err(f"the anti-aliasing pool of {name} shrinks a {h}x{w} feature map to nothing; use a "
                           "larger input.size", spath)
        return ir.Pool(name, "avg", stride, stride, 0, False, True, "zero", shape, (c, oh, ow))

    def shortcut(self, name, in_shape, out_ch, stride, spath) -> tuple:
        """``(ops, shortcut_from, out_shape)``: option A (subsample + zero channels), a projection
        (a strided 1x1 conv, or ResNet-D's average pool + 1x1 conv), or the identity (no ops)."""
        sc, in_ch = self.sc, in_shape[0]
        if sc.type == "A" or (sc.type == "B" and sc.strided_identity and in_ch == out_ch):
            return self.option_a(in_shape, out_ch, stride, spath)
        if sc.type == "C" or stride != 1 or in_ch != out_ch:
            return self.projection(name, in_shape, out_ch, stride, spath)
        return (), "input", in_shape

    def option_a(self, in_shape, out_ch, stride, spath) -> tuple:
        in_ch, ops, shape = in_shape[0], [], in_shape
        if in_ch > out_ch:
            raise self.err(f"a type A shortcut cannot reduce channels ({in_ch} -> {out_ch})", spath)
        if stride != 1:
            _, h, w = shape
            shape = (in_ch, ir.conv_out(h, 1, stride, 0), ir.conv_out(w, 1, stride, 0))
            ops.append(ir.Subsample(stride, in_shape, shape))
        if out_ch > in_ch:
            extra = out_ch - in_ch
            before = extra // 2 if self.sc.zero_pad == "split" else 0
            new = (out_ch, shape[1], shape[2])
            ops.append(ir.ChannelPad(before, extra - before, shape, new))
            shape = new
        return tuple(ops), "input", shape

    def projection(self, name, in_shape, out_ch, stride, spath) -> tuple:
        sc, ops, shape, pos, conv_stride = self.sc, [], in_shape, 0, stride
        if sc.projection == "avgpool_conv":
            # ResNet-D / timm avg_down: the pool takes the stride, index 0 is kept for it even when
            # there is none, so conv and norm are downsample.1 and downsample.2 as in timm.
            if stride != 1:
                c, h, w = shape
                oh = ir.pool_out(h, stride, stride, 0, sc.pool_ceil_mode)
                ow = ir.pool_out(w, stride, stride, 0, sc.pool_ceil_mode)
                ops.append(ir.Pool(f"{name}.downsample.0", "avg", stride, stride, 0, sc.pool_ceil_mode,
                                   sc.pool_count_include_pad, "zero", shape, (c, oh, ow)))
                shape = (c, oh, ow)
            pos, conv_stride = 1, 1
        k = sc.kernel if conv_stride > 1 else 1  # timm's downsample_conv: an unstrided projection stays 1x1
        conv = self.conv(f"{name}.downsample.{pos}", shape, out_ch, k, conv_stride, k // 2, 1, 1,
                         self.bias_for(sc.norm), spath)
        ops.append(conv)
        if sc.norm:
            ops.append(self.bn(f"{name}.downsample.{pos + 1}", conv.out_shape))
        return tuple(ops), "pre" if self.preact else "input", conv.out_shape

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
