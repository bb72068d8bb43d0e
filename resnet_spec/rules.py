"""The semantic rules: what a valid spec is beyond the schema. Each rule reads the merged spec and yields
its errors, located at the field (as jsonschema does per keyword); :data:`RULES` lists them in the order
:func:`resnet_spec.resolve.resolve` checks them, :func:`rule_errors` runs them all.
"""

from __future__ import annotations

from .config import (DEFAULTS, SE_KEYS, SPATIAL_KEYS, STEM_POOL_KEYS, BlockConfig, StemConfig, conv_config, norm_config,
                     opt, stage_kinds)
from .errors import SpecError
from .regnet import params_errors, stage_path, stages_of
from .rules_norm import rule_norm
from .rules_stage_block import rule_stage_block
from .rules_widths import rule_widths
from .spec import Spec


# -- semantic rules: each reads the merged spec and yields its errors (as jsonschema does per keyword) --


def _rule_required(spec: Spec):
    d = spec.data
    if "block" not in d:
        yield spec.error("missing required field 'block' (directly or through 'extends')")
    if "stages" not in d and d.get("regnet") is None:
        yield spec.error("missing required field 'stages' (or 'regnet'), directly or through 'extends'")
    if "block" in d and "type" not in d["block"]:
        yield spec.error("missing required field 'type' (basic or bottleneck)", ("block",))


def _rule_bottleneck_only(spec: Spec):
    """Bottleneck keys: the global ones need a bottleneck stage to apply to, a stage's own a bottleneck stage."""
    blk, kinds = spec.data["block"], stage_kinds(spec.data)
    if "bottleneck" not in (kinds or [blk["type"]]):
        for key in ("stride_on", "groups", "width_per_group"):
            if key in blk and blk[key] != DEFAULTS["block"][key]:
                yield spec.error(f"'{key}' applies to bottleneck blocks only", ("block", key))
    for i, s in enumerate(spec.data.get("stages") or []):  # generated stages: _rule_regnet's
        for key in ("width", "group_width"):
            if key in s and kinds[i] == "basic":
                yield spec.error(f"'{key}' applies to bottleneck blocks only", stage_path(spec.data, i, key))


def _rule_regnet(spec: Spec):
    """RegNet: its generating parameters (as the libraries assert them), the stages given once, and a
    stage's group_width instead of (not beside) the block's groups and width_per_group."""
    d = spec.data
    blk = d["block"]
    if d.get("regnet") is not None:
        if "stages" in d:
            yield spec.error("give either 'regnet' (generating parameters) or 'stages', not both", ("regnet",))
            return
        if blk.get("type") != "bottleneck" or blk.get("expansion") != 1:
            yield spec.error("'regnet' generates bottleneck blocks with expansion 1: set block type bottleneck "
                             f"and expansion 1 (it has type {blk.get('type')!r}, expansion "
                             f"{blk.get('expansion', 4 if blk.get('type') == 'bottleneck' else 1)})", ("regnet",))
            return
        for path, msg in params_errors(d["regnet"]):
            yield spec.error(msg, ("regnet", *path))
    for i, st in enumerate(stages_of(d)):
        if "group_width" not in st:
            continue
        for key in ("groups", "width_per_group"):
            if key in blk and blk[key] != DEFAULTS["block"][key]:
                yield spec.error(f"'{key}' and stages' group_width both set the 3x3 conv's groups; give one",
                                 ("block", key))
                return


def _rule_stem(spec: Spec):
    st = StemConfig.of(spec.data, bool(opt(spec.data["block"], "preact", "block")))
    if st.kind == "conv" and isinstance(st.channels, list):
        yield spec.error("a 'conv' stem takes one integer of channels; lists are for type 'deep'", ("stem", "channels"))
    if st.kind == "deep" and not isinstance(st.channels, list):
        yield spec.error("a 'deep' stem takes a list of channels, one per conv, e.g. [32, 32, 64]",
                         ("stem", "channels"))
    if st.pool is not None and st.pool["padding"] * 2 > st.pool["kernel"]:
        yield spec.error(f"pool padding {st.pool['padding']} is more than half the kernel {st.pool['kernel']}",
                         ("stem", "pool", "padding"))
    pool = (spec.data.get("stem") or {}).get("pool") or {}
    kind = pool.get("type", DEFAULTS["stem.pool"]["type"])
    if pool.get("anti_alias") is not None and pool.get("ceil_mode"):
        yield spec.error("ceil_mode decides nothing with anti_alias: the pool runs at stride 1 and the blur pool "
                         "takes the stride; leave it out", ("stem", "pool", "ceil_mode"))
    for key in pool:
        if key not in STEM_POOL_KEYS[kind]:
            takes = [k for k, keys in STEM_POOL_KEYS.items() if key in keys]
            yield spec.error(f"'{key}' applies to {' and '.join(takes)} stem pools only, not to type {kind!r}",
                             ("stem", "pool", key))


def _rule_anti_alias(spec: Spec):
    blk = BlockConfig.of(spec.data)
    if blk.anti_alias is None:
        return
    if blk.preact:
        yield spec.error("'anti_alias' is not supported with pre-activation blocks", ("block", "anti_alias"))
    elif blk.kind == "bottleneck" and blk.stride_on_1x1:
        yield spec.error("'anti_alias' moves the stride of the 3x3 conv; it needs stride_on: 3x3",
                         ("block", "anti_alias"))


def _rule_se(spec: Spec):
    blk = BlockConfig.of(spec.data)
    if blk.se is None:
        return
    given = (spec.data["block"] or {}).get("se") or {}
    kind = blk.se["type"]
    for key in given:
        if key not in SE_KEYS[kind]:
            other = next(t for t, keys in SE_KEYS.items() if key in keys)
            yield spec.error(f"'{key}' applies to block.se type {other!r} only, not to type {kind!r}",
                             ("block", "se", key))
    if kind == "eca" and given.get("kernel") is not None:
        if given["kernel"] % 2 == 0:
            yield spec.error(f"ECA kernel {given['kernel']} is even; it must be odd (PyTorch pads (kernel - 1) // 2 "
                             "on both sides)", ("block", "se", "kernel"))
        for key in ("gamma", "beta"):
            if key in given:
                yield spec.error(f"'{key}' sets the adaptive ECA kernel; it cannot be given with 'kernel'",
                                 ("block", "se", key))
    if blk.se["placement"] == "after_3x3":
        yield from _after_3x3(spec, blk)


def _after_3x3(spec: Spec, blk):
    where = ("block", "se", "placement")
    if blk.kind != "bottleneck":
        yield spec.error("placement 'after_3x3' applies to bottleneck blocks only", where)
    elif blk.preact:
        yield spec.error("placement 'after_3x3' is not supported with pre-activation blocks", where)
    elif blk.anti_alias is not None:
        yield spec.error("placement 'after_3x3' is not supported with anti_alias", where)


def _rule_spatial(spec: Spec):
    """block.spatial: only the keys of its type; split attention and Res2Net's split convs replace a v1
    bottleneck's 3x3 conv (Res2Net's also carry its stride, so nothing else may move it); a selective
    kernel: :func:`_selective_kernel`."""
    blk, given = BlockConfig.of(spec.data), (spec.data["block"] or {}).get("spatial") or {}
    kind, where = blk.spatial["type"], ("block", "spatial", "type")
    for key in given:
        if key not in SPATIAL_KEYS[kind]:
            other = next(t for t, keys in SPATIAL_KEYS.items() if key in keys)
            yield spec.error(f"'{key}' applies to block.spatial type {other!r} only, not to type {kind!r}",
                             ("block", "spatial", key))
    if kind == "conv":
        return
    norm, conv = norm_config(spec.data.get("norm")), conv_config(spec.data.get("conv"))
    for bad, why in ((norm["type"] != "batch", f"norm type {norm['type']!r} (its own norms are BatchNorms)"),
                     (conv["standardize"], "conv.standardize (its own convs are plain)")):
        if bad:
            yield spec.error(f"block.spatial type {kind!r} is not supported with {why}", where)
    if kind == "selective_kernel":
        yield from _selective_kernel(spec, blk, given)
    elif blk.kind != "bottleneck":
        yield spec.error(f"block.spatial type {kind!r} applies to bottleneck blocks only", where)
    elif blk.preact:
        yield spec.error(f"block.spatial type {kind!r} is not supported with pre-activation blocks", where)
    elif kind == "res2net":
        for bad, why in ((blk.stride_on_1x1, "stride_on: 1x1 (its 3x3 convs carry the stride)"),
                         (blk.anti_alias is not None, "anti_alias"),
                         (blk.se is not None and blk.se["placement"] == "after_3x3", "SE placement 'after_3x3'")):
            if bad:
                yield spec.error(f"block.spatial type 'res2net' is not supported with {why}", where)


def _selective_kernel(spec: Spec, blk, given: dict):
    """A selective kernel's odd kernels, on a v1 block whose spatial conv takes the stride, without
    anti_alias or an SE placed after the 3x3 conv."""
    for i, k in enumerate(given.get("kernels") or ()):
        if k % 2 == 0:
            yield spec.error(f"selective kernel size {k} is even; each path's kernel must be odd",
                             ("block", "spatial", "kernels", i))
    clash = [("preact", blk.preact, "pre-activation blocks"), ("anti_alias", blk.anti_alias is not None, "anti_alias"),
             ("stride_on", blk.kind == "bottleneck" and blk.stride_on_1x1, "stride_on: 1x1 (timm's selective "
              "kernel takes the block's stride)"),
             ("se", blk.se is not None and blk.se["placement"] == "after_3x3", "an SE placed after_3x3")]
    for key, bad, what in clash:
        if bad:
            yield spec.error(f"block.spatial type 'selective_kernel' is not supported with {what}", ("block", key))


def _rule_avd(spec: Spec):
    """block.avd: ResNeSt's 3x3 average-pool downsampling, in v1 bottlenecks whose 3x3 conv is strided."""
    blk, where = BlockConfig.of(spec.data), ("block", "avd")
    if blk.avd is None:
        return
    if blk.kind != "bottleneck":
        yield spec.error("'avd' applies to bottleneck blocks only", where)
    elif blk.preact:
        yield spec.error("'avd' is not supported with pre-activation blocks", where)
    elif blk.stride_on_1x1:
        yield spec.error("'avd' moves the stride of the 3x3 conv; it needs stride_on: 3x3", where)
    elif blk.anti_alias is not None:
        yield spec.error("'avd' and 'anti_alias' both move the 3x3 conv's stride to a pool; give one", where)
    elif blk.se is not None and blk.se["placement"] == "after_3x3":
        yield spec.error("'avd' is not supported with block.se placement 'after_3x3'", where)


def _rule_shortcut(spec: Spec):
    sc = spec.data.get("shortcut") or {}
    if "pool" in sc and opt(sc, "projection", "shortcut") != "avgpool_conv":
        yield spec.error("'pool' applies to projection 'avgpool_conv' only", ("shortcut", "pool"))
    if opt(sc, "type", "shortcut") == "A" and "projection" in sc:
        yield spec.error("type A shortcuts never project; remove 'projection' or use type B/C", ("shortcut", "projection"))


def _rule_depth(spec: Spec):
    if any("block" in s for s in spec.data.get("stages") or []):
        return  # per-stage block types with a depth: rule_stage_block's error
    try:
        blocks_per_stage(spec)
    except SpecError as exc:
        yield exc


def _rule_dilate(spec: Spec):
    blk = BlockConfig.of(spec.data)
    projection = opt(spec.data.get("shortcut"), "projection", "shortcut")
    for si, stage in enumerate(stages_of(spec.data)):
        if not stage.get("dilate", False):
            continue
        if blk.stride_last:
            yield spec.error("'dilate' is not supported with block.stride_block: last", ("stages", si, "dilate"))
        elif projection == "avgpool_conv":
            yield spec.error("'dilate' is not supported with avgpool_conv projections", ("stages", si, "dilate"))


#: The semantic rules that need nothing but the required fields, in the order resolve() checks them.
RULES = (_rule_bottleneck_only, _rule_regnet, _rule_spatial, _rule_se, _rule_shortcut, _rule_stem, _rule_anti_alias,
         _rule_depth, _rule_dilate, _rule_avd, rule_norm, rule_widths, rule_stage_block)


def rule_errors(spec: Spec):
    required = list(_rule_required(spec))
    if required:
        yield from required
        return
    for rule in RULES:
        yield from rule(spec)


def blocks_per_stage(spec: Spec) -> list:
    """Blocks in each stage: the stages' ``blocks``, or what the top-level ``depth`` gives."""
    stages, depth, kind = stages_of(spec.data), spec.data.get("depth"), spec.data["block"]["type"]
    if depth is None:
        missing = [i for i, s in enumerate(stages) if "blocks" not in s]
        if missing:
            raise spec.error("missing 'blocks' (or give a top-level 'depth')", ("stages", missing[0]))
        return [s["blocks"] for s in stages]
    given = [i for i, s in enumerate(stages) if "blocks" in s]
    if given:
        raise spec.error("give either the top-level 'depth' or per-stage 'blocks', not both",
                         ("stages", given[0], "blocks"))
    per_block, n_stages = (2 if kind == "basic" else 3), len(stages)
    step = per_block * n_stages
    if (depth - 2) % step or depth <= 2:
        near = [step * n + 2 for n in (max(1, (depth - 2) // step), (depth - 2) // step + 1)]
        raise spec.error(f"depth {depth} is not of the form {step}n+2 for {n_stages} stages of {kind} blocks "
                         f"(nearest: {near[0]} or {near[1]})", ("depth",))
    return [(depth - 2) // step] * n_stages
