"""Typed resolver configuration: one frozen object per spec section, every default in one place.

:data:`DEFAULTS` holds the defaults (``tests/test_spec_core.py`` checks them against the schema's
``default`` annotations); ``BlockConfig.of(spec_data)`` and its siblings read a merged, validated
spec into the typed settings that :mod:`resnet_spec.resolve` works from, so no resolver function
looks up a default or a raw dict key itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULTS = {
    "input": {"channels": 3, "size": 224},
    "width_multiplier": 1,
    "conv_bias": False,
    "norm": {"eps": 1e-5, "momentum": 0.1},
    "norm.type": {"type": "batch", "groups": 32},
    "conv": {"standardize": False, "eps": 1e-6},
    "stem": {"type": "conv", "channels": 64, "kernel": 7, "stride": 2,
             "pool": {"type": "max", "kernel": 3, "stride": 2, "padding": 1}},
    "stem.pool": {"type": "max", "kernel": 3, "stride": 2, "padding": 1, "ceil_mode": False, "pad_value": "neg_inf",
                  "count_include_pad": True, "anti_alias": None},
    "block": {"preact": False, "stride_on": "3x3", "stride_block": "first", "groups": 1,
              "width_per_group": 64, "se": None, "anti_alias": None, "drop_path_rate": 0.0,
              "spatial": {"type": "conv"}, "avd": None, "reduce_first": 1},
    "block.se": {"type": "se", "reduction": 16, "divisor": 8, "reduce_from": "output", "placement": "end"},
    "block.se.eca": {"type": "eca", "kernel": None, "gamma": 2, "beta": 1, "placement": "end"},
    "block.spatial.split_attention": {"type": "split_attention", "radix": 2, "ratio": 0.25, "divisor": 8,
                                      "min_channels": 32},
    "block.spatial.res2net": {"type": "res2net", "scale": 4},
    "block.spatial.selective_kernel": {"type": "selective_kernel", "kernels": [3, 5], "keep_3x3": True,
                                       "split_input": True, "rd_ratio": 0.0625, "rd_divisor": 8},
    "shortcut": {"type": "B", "projection": "conv", "strided_identity": False, "zero_pad": "split", "kernel": 1},
    "shortcut.pool": {"ceil_mode": True, "count_include_pad": False},
    "head": {"classes": 1000, "dropout": 0.0, "bias": True},
    "init": {"zero_init_last_bn": False},
}

#: stem.pool type -> the stem.pool keys that apply to it (the others are refused when given, and the
#: resolved spec shows only these): a max-pool, an average pool, or timm's strided conv + BN + ReLU
#: (ResNet-RS ``replace_stem_pool``).
STEM_POOL_KEYS = {"max": ("type", "kernel", "stride", "padding", "ceil_mode", "pad_value", "anti_alias"),
                  "avg": ("type", "kernel", "stride", "padding", "ceil_mode", "count_include_pad"),
                  "conv": ("type", "kernel", "stride", "padding")}

#: block.se type -> the block.se keys that apply to it (the others are refused when given, and the resolved
#: spec shows only these): timm's SEModule, or its EcaModule (efficient channel attention).
SE_KEYS = {"se": ("type", "reduction", "divisor", "reduce_from", "placement"),
           "eca": ("type", "kernel", "gamma", "beta", "placement")}


def se_config(se: dict | None) -> dict | None:
    """``block.se`` with the defaults of its type filled in and only the keys that type takes; an ECA
    given its ``kernel`` has no ``gamma``/``beta`` (they decide nothing)."""
    if se is None:
        return None
    kind = se.get("type", "se")
    full = {**DEFAULTS["block.se.eca" if kind == "eca" else "block.se"], **se}
    keys = SE_KEYS[kind]
    if kind == "eca" and full["kernel"] is not None:
        keys = tuple(k for k in keys if k not in ("gamma", "beta"))
    return {k: full[k] for k in keys}


#: block.spatial type -> the block.spatial keys that apply to it (the others are refused when given, and the
#: resolved spec shows only these): the plain conv + BN + ReLU, ResNeSt's split attention (timm SplitAttn),
#: Res2Net's hierarchical split convs (timm Bottle2neck) or SKNet's selective kernel (timm SelectiveKernel).
SPATIAL_KEYS = {"conv": ("type",),
                "split_attention": ("type", "radix", "ratio", "divisor", "min_channels"),
                "res2net": ("type", "scale"),
                "selective_kernel": ("type", "kernels", "keep_3x3", "split_input", "rd_ratio", "rd_divisor")}


def spatial_config(spatial: dict | None) -> dict:
    """``block.spatial`` with the defaults of its type filled in and only the keys that type takes."""
    kind = (spatial or {}).get("type", "conv")
    full = {**DEFAULTS.get(f"block.spatial.{kind}", {"type": kind}), **(spatial or {})}
    return {k: full[k] for k in SPATIAL_KEYS[kind] if k in full}


#: norm type -> the norm keys that apply to it (the others are refused when given, and the resolved spec shows
#: only these): BatchNorm, or GroupNorm (no running statistics, so no momentum); the norm-act layers FRN (Filter
#: Response Normalization + TLU) and EvoNorm-S0, which fold the ReLU that follows them (resnet_spec/ir_frn.py).
NORM_KEYS = {"batch": ("type", "eps", "momentum"), "group": ("type", "groups", "eps"), "frn": ("type", "eps"),
             "evonorm_s0": ("type", "groups", "eps")}


def norm_config(norm: dict | None) -> dict:
    """The top-level ``norm`` with the defaults of its type filled in and only the keys that type takes."""
    full = {**DEFAULTS["norm"], **DEFAULTS["norm.type"], **(norm or {})}
    return {k: full[k] for k in NORM_KEYS[full["type"]]}


def drop_other_norm_keys(merged: dict, own: dict, origins: dict) -> None:
    """After ``extends`` merging: where the derived spec (``own``) sets ``norm.type``, the base's norm keys
    that do not apply to that type (a BatchNorm base's momentum under ``type: group``) are dropped, not
    inherited; so is the base's ``conv.eps`` where it sets ``conv.standardize: false``. Keys the derived spec
    gives itself stay (and a rule refuses them)."""
    kind = (own.get("norm") or {}).get("type")
    if kind in NORM_KEYS:
        _drop(merged, own, origins, "norm", NORM_KEYS[kind])
    if (own.get("conv") or {}).get("standardize") is False:
        _drop(merged, own, origins, "conv", ("standardize",))


def _drop(merged: dict, own: dict, origins: dict, section: str, keep: tuple) -> None:
    d = merged.get(section)
    if isinstance(d, dict):
        for key in [k for k in d if k not in keep and k not in own[section]]:
            del d[key]
            origins.pop((section, key), None)


def conv_config(conv: dict | None) -> dict:
    """The top-level ``conv``: ``standardize``, and its ``eps`` only when the convs are standardized."""
    full = {**DEFAULTS["conv"], **(conv or {})}
    return full if full["standardize"] else {"standardize": False}


def opt(section: dict | None, key: str, defaults_key: str):
    """``section[key]``, or the default for it; an explicit null counts as given."""
    default = DEFAULTS[defaults_key].get(key)
    if section is None:
        return default
    v = section.get(key, default)
    return default if v is None and key not in section else v


@dataclass(frozen=True)
class StemConfig:
    kind: str  # "conv" | "deep"
    kernel: int
    stride: int
    padding: int
    channels: object  # int for "conv", list of int for "deep"
    norm: bool
    bias: object  # None: decided by conv_bias
    pool: dict | None  # every stem.pool key, defaults filled in

    @classmethod
    def of(cls, d: dict, preact: bool) -> StemConfig:
        st = d.get("stem") or {}
        kind = opt(st, "type", "stem")
        k = st.get("kernel", 3 if kind == "deep" else DEFAULTS["stem"]["kernel"])
        chans = st.get("channels", [32, 32, 64] if kind == "deep" else DEFAULTS["stem"]["channels"])
        pool = st["pool"] if "pool" in st else DEFAULTS["stem"]["pool"]
        return cls(kind, k, st.get("stride", DEFAULTS["stem"]["stride"]), st.get("padding", k // 2), chans,
                   st.get("norm", not preact), st.get("bias"),
                   None if pool is None else {**DEFAULTS["stem.pool"], **pool})


@dataclass(frozen=True)
class BlockConfig:
    kind: str  # "basic" | "bottleneck"
    preact: bool
    stride_on_1x1: bool
    stride_last: bool
    groups: int
    width_per_group: int
    expansion: int
    se: dict | None  # se_config: type, placement; reduction, divisor, reduce_from (se) or kernel, gamma, beta (eca)
    drop_path_rate: float
    anti_alias: str | None = None  # "avgpool" | "blur": a strided block's stride moves to a pool after its ReLU
    spatial: dict | None = None  # spatial_config: what replaces the 3x3 conv + BN + ReLU ({type: conv} by default)
    avd: str | None = None  # "after_3x3" | "before_3x3": a strided block's stride moves to ResNeSt's 3x3 average pool
    reduce_first: int = 1  # conv1's width = the 3x3 conv's width (basic: the block's channels) // reduce_first

    @classmethod
    def of(cls, d: dict) -> BlockConfig:
        blk = d["block"]
        kind = blk["type"]
        se = blk.get("se")
        return cls(kind, bool(opt(blk, "preact", "block")), opt(blk, "stride_on", "block") == "1x1",
                   opt(blk, "stride_block", "block") == "last", opt(blk, "groups", "block"),
                   opt(blk, "width_per_group", "block"), blk.get("expansion", 4 if kind == "bottleneck" else 1),
                   se_config(se), float(opt(blk, "drop_path_rate", "block")),
                   opt(blk, "anti_alias", "block"), spatial_config(blk.get("spatial")), opt(blk, "avd", "block"),
                   opt(blk, "reduce_first", "block"))

    def for_stage(self, stage: dict) -> BlockConfig:
        """This config with a stage's own block type and expansion (its ``block`` key), or itself."""
        kind, expansion = stage_block(self.kind, self.expansion, stage)
        return self if (kind, expansion) == (self.kind, self.expansion) else replace(self, kind=kind,
                                                                                      expansion=expansion)


def stage_block(kind: str, expansion: int, stage: dict) -> tuple:
    """``(type, expansion)`` of a stage's blocks: its own ``block.type`` (timm's per-stage block list), else the
    global ``kind``; its ``block.expansion``, else the global ``expansion`` where it keeps the global type, else
    its type's default (4 bottleneck, 1 basic)."""
    own = stage.get("block") or {}
    k = own.get("type", kind)
    return k, own.get("expansion", expansion if k == kind else 4 if k == "bottleneck" else 1)


def stage_kinds(d: dict) -> list:
    """The block type of each of a merged spec's explicit stages (generated RegNet stages have none of their
    own)."""
    kind = (d.get("block") or {}).get("type")
    return [(s.get("block") or {}).get("type", kind) for s in d.get("stages") or []]


@dataclass(frozen=True)
class ShortcutConfig:
    type: str  # "A" | "B" | "C"
    projection: str  # "conv" | "avgpool_conv"
    norm: bool
    strided_identity: bool
    zero_pad: str  # "split" | "end"
    pool_ceil_mode: bool
    pool_count_include_pad: bool
    kernel: int = 1  # a strided projection conv's kernel (padding kernel // 2); unstrided ones stay 1x1

    @classmethod
    def of(cls, d: dict, preact: bool) -> ShortcutConfig:
        sc = d.get("shortcut") or {}
        pool = {**DEFAULTS["shortcut.pool"], **(sc.get("pool") or {})}
        return cls(opt(sc, "type", "shortcut"), opt(sc, "projection", "shortcut"), sc.get("norm", not preact),
                   opt(sc, "strided_identity", "shortcut"), opt(sc, "zero_pad", "shortcut"), pool["ceil_mode"],
                   pool["count_include_pad"], opt(sc, "kernel", "shortcut"))


@dataclass(frozen=True)
class HeadConfig:
    classes: int
    norm: bool
    dropout: float
    bias: bool

    @classmethod
    def of(cls, d: dict, preact: bool) -> HeadConfig:
        head = d.get("head") or {}
        return cls(opt(head, "classes", "head"), head.get("norm", preact), float(opt(head, "dropout", "head")),
                   bool(opt(head, "bias", "head")))
