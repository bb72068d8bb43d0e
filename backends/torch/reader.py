"""PyTorch state dicts (``.pth``/``.pt`` read with ``weights_only=True``, or ``.safetensors``) and
``torchvision:NAME`` / ``timm:NAME`` models built by the installed library without downloading weights.

A state dict holds names and shapes only: the architecture is inferred from them
(:mod:`...importers.infer`); strides, stem pooling and BN epsilon follow torchvision's conventions, and the
import says so. Container unwrapping (``{"model": ...}``, ``module.`` prefixes) is not done here: the
file must be a plain state dict with torchvision/timm names.
"""

from __future__ import annotations

import re

import numpy as np

from ...errors import WeightsError
from ...fileio import shown
from ...importers.source import ImportRefused, Source, layers_from_weights
from . import blocks, names
from .norm_reader import add_norm_facts

ASSUMED = ("strides, stem pooling and BN epsilon are not stored in a state dict: torchvision's "
           "conventions were assumed (stride on the 3x3 conv of each stage's first block, 3x3/2 max-pool "
           "after a 7x7/2 stem, none after a 3x3/1 stem, a 3x3/2 conv for a ResNet-RS stem pool (maxpool.0), "
           "eps 1e-5); anti-aliasing average pools and blur pools (timm's resnetaa and resnetblur models) hold no "
           "tensors, so none were assumed")


def read_torch_source(path: str) -> Source:
    from ...weights.check import IGNORED_SUFFIXES
    from ...weights.files import read_weights

    label = shown(path)
    try:
        weights = read_weights(path)
    except WeightsError as exc:  # its messages name the path as given: shown as every import message shows it
        raise ImportRefused(str(exc).replace(path, label) if label != path else str(exc)) from None
    weights = {k: v for k, v in weights.items() if not k.endswith(IGNORED_SUFFIXES)}
    if not weights:
        raise ImportRefused(f"{label}: no tensors in the file")
    for k, v in weights.items():
        if np.asarray(v).dtype.kind != "f":
            raise ImportRefused(f"{label}: tensor {k!r} has dtype {np.asarray(v).dtype}, not a float tensor")
    return state_dict_source(label, weights)


def state_dict_source(label: str, weights: dict) -> Source:
    """The :class:`Source` of a plain state dict of float arrays (``label``: how messages name it)."""
    blocks.check_state_dict(label, {k: np.shape(v) for k, v in weights.items()})
    weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    layout = names.layout_of(weights)
    notes = [ASSUMED]
    avg_down = layout is not None and layout.name == "timm ResNetV2" and "stem.conv1.weight" in weights
    if layout is not None:
        notes.append(f"names of {layout.name} read as torchvision's" + (
            " (a deep stem: timm's average-pool projection shortcut assumed, as every such timm ResNetV2 has)"
            if avg_down else ""))
    weights, source_names = names.canonical_weights(weights, layout, avg_down)
    return Source(label, "torch", layers_from_weights(weights, _origin(source_names)), weights,
                  facts={"source_names": source_names, **_layout_facts(layout, weights)}, notes=notes)


def _layout_facts(layout, weights) -> dict:
    """What a layout's names say about the structure: timm's and torchvision's RegNet blocks (expansion 1,
    squeeze-excite after the 3x3 conv); timm's legacy SENet basic blocks (SEResNetBlock: squeeze-excite after
    the second BN's ReLU)."""
    if layout is not None and layout in names.REGNET_LAYOUTS:
        return {"regnet": True, "se_placement": "after_3x3"}
    if layout is not None and layout.name.startswith("timm legacy SENet") and \
            not any(re.match(r"^layer\d+\.\d+\.conv3\.", k) for k in weights):
        return {"se_placement": "end_relu"}
    return {}


def _origin(source_names: dict):
    return lambda n: source_names.get(n, n)


def library_model(lib: str, name: str):
    """A fresh model of the installed torchvision/timm, random initialisation (seed 0), eval mode."""
    import torch

    torch.manual_seed(0)
    if lib == "torchvision":
        import torchvision

        try:
            model = torchvision.models.get_model(name, weights=None)
        except ValueError:
            raise ImportRefused(f"{shown('torchvision:' + name)}: torchvision {torchvision.__version__} has no model "
                               f"{name!r}") from None
    else:
        import timm

        if not timm.is_model(name):
            raise ImportRefused(f"{shown('timm:' + name)}: timm {timm.__version__} has no model {name!r}")
        model = timm.create_model(name, pretrained=False)
    return model.eval()


def read_library(lib: str, name: str) -> Source:
    try:
        model = library_model(lib, name)
    except ModuleNotFoundError as exc:
        from ...extras import install_hint

        raise ImportRefused(f"{shown(f'{lib}:{name}')}: {exc.name} is not installed "
                           f"({install_hint(exc.name)})") from None
    label = shown(f"{lib}:{name}")
    blocks.check_model(label, model)
    weights = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    layout = names.layout_of(weights)
    avg_down = any(type(m).__name__ == "DownsampleAvg" for m in model.modules())
    weights, source_names = names.canonical_weights(weights, layout, avg_down)
    src = Source(label, lib, layers_from_weights(weights, _origin(source_names)), weights,
                 facts={"library": (lib, name), "source_names": source_names, **_layout_facts(layout, weights)})
    _add_facts(src, {names.canonical(k, layout, avg_down): m for k, m in model.named_modules()})
    return src


_SHORTCUT_POOL = re.compile(r"^layer(\d+)\.\d+\.downsample\.0$")
_ANTI_ALIAS = re.compile(r"^layer\d+\.\d+\.aa$")
#: ResNeSt's avd pool (timm ResNestBottleneck): before the 3x3 split attention (avd_first) or after it
_AVD = {"avd_first": "before_3x3", "avd_last": "after_3x3"}


def _add_facts(src: Source, mods: dict) -> None:
    """Strides, paddings, epsilons and pools read from the library's own modules (``mods``: canonical
    module name -> module)."""
    import torch.nn as nn

    for name, layer in src.layers.items():
        m = mods.get(name)
        if isinstance(m, nn.Conv2d):
            if len(set(m.stride)) != 1 or not isinstance(m.padding, tuple) or len(set(m.padding)) != 1:
                raise src.refuse(name, f"non-square stride {m.stride} or padding {m.padding}")
            layer.stride, layer.padding, layer.dilation = m.stride[0], m.padding[0], m.dilation[0]
        elif isinstance(m, nn.Conv1d) and isinstance(m.padding, tuple):  # ECA's conv across the channels
            layer.stride, layer.padding, layer.dilation = m.stride[0], m.padding[0], m.dilation[0]
        elif isinstance(m, nn.BatchNorm2d):
            layer.eps = m.eps
            src.facts["eps"] = m.eps
            src.facts["momentum"] = m.momentum if m.momentum is not None else 0.1
    src.facts["stem_pool"] = _stem_pool(src, mods.get("maxpool"))
    if src.facts["stem_pool"] == "unknown":
        del src.facts["stem_pool"]
    add_norm_facts(src, mods)  # GroupNorm groups, StdConv2d epsilon, BiT's zero-padded stem pool
    strides = {}
    for name, m in mods.items():
        if _ANTI_ALIAS.match(name) and isinstance(m, nn.AvgPool2d):
            src.facts["anti_alias"] = "avgpool"  # blocks.py refused any but timm's AvgPool2d(stride)
        if _ANTI_ALIAS.match(name) and type(m).__name__ == "BlurPool2d":
            src.facts["anti_alias"] = "blur"  # blocks.py refused any but timm's default BlurPool2d
        if isinstance(m, nn.AvgPool2d) and name.rpartition(".")[2] in _AVD:  # blocks.py: AvgPool2d(3, s, 1) only
            src.facts["avd"] = _AVD[name.rpartition(".")[2]]
        at = _SHORTCUT_POOL.match(name)
        if at and isinstance(m, nn.AvgPool2d):
            src.facts["shortcut_pool"] = {"ceil_mode": bool(m.ceil_mode),
                                          "count_include_pad": bool(m.count_include_pad)}
            strides[int(at.group(1)) - 1] = _one(m.stride)
    src.facts["shortcut_pool_strides"] = strides


def _stem_pool(src: Source, pool):
    """The spec's stem.pool for the library's ``maxpool`` module: a max or average pool, ResNet-RS's conv
    (its facts are those of layer ``maxpool.0``), None for none, 'unknown' for anything else."""
    import torch.nn as nn

    if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
        avg = isinstance(pool, nn.AvgPool2d)
        out = {"type": "avg"} if avg else {}
        out.update(kernel=_one(pool.kernel_size), stride=_one(pool.stride), padding=_one(pool.padding))
        if pool.ceil_mode:
            out["ceil_mode"] = True
        if avg and not pool.count_include_pad:
            out["count_include_pad"] = False
        return out
    if pool is None or isinstance(pool, nn.Identity):
        return None
    kinds = [type(m).__name__ for m in pool.children()] if isinstance(pool, nn.Sequential) else []
    if kinds == ["MaxPool2d", "BlurPool2d"] and _one(pool[0].stride) == 1 and not pool[0].ceil_mode:
        # timm's resnetblur stem: max-pool at stride 1, then the blur's stride (blocks.py: timm's default blur)
        return {"kernel": _one(pool[0].kernel_size), "stride": pool[1].stride, "padding": _one(pool[0].padding),
                "anti_alias": "blur"}
    conv = src.layers.get("maxpool.0")
    if isinstance(pool, nn.Sequential) and conv is not None:
        return {"type": "conv", "kernel": conv.shape[2], "stride": conv.stride, "padding": conv.padding}
    return "unknown"


def _one(v):
    return v[0] if isinstance(v, (tuple, list)) else int(v)


def timm_equivalent(spec: dict):
    """timm.models.resnet.ResNet keyword arguments for a full spec dict its ResNet class expresses,
    or None (stride on the 1x1, CIFAR stems, conv biases, per-stage widths...); a pre-activation spec gets
    timm.models.resnetv2.ResNetV2 arguments (``v2``) where that class expresses it."""
    block, stem, sc = spec["block"], spec["stem"], spec.get("shortcut", {})
    deep = stem.get("type") == "deep"
    if any("group_width" in s for s in spec["stages"]):
        return _regnet_equivalent(spec)
    if block.get("preact"):
        return _resnetv2_equivalent(spec)
    if block.get("stride_on", "3x3") != "3x3" or "stride_block" in block \
            or stem.get("stride") != 2 or stem.get("kernel") != (3 if deep else 7) \
            or "padding" in stem or "bias" in stem or any("width" in s or "widths" in s for s in spec["stages"]) \
            or sc.get("type") != "B" or "conv_bias" in spec or set(spec["head"]) != {"classes"} \
            or [s["stride"] for s in spec["stages"]] != [1] + [2] * (len(spec["stages"]) - 1) \
            or spec["norm"] != {"eps": 1e-5, "momentum": 0.1}:
        return None
    se, pool_kwargs = block.get("se"), _timm_stem_pool(stem.get("pool", "max"), block.get("anti_alias"))
    if (se is not None and se not in _TIMM_SE) or pool_kwargs is None or _timm_blocks(block, spec["stages"]) is None:
        return None
    resnest = _resnest_args(block)
    if resnest == "none" or (resnest and (se is not None or block.get("anti_alias"))):
        return None  # a ResNeSt timm expresses (ResNestBottleneck) has no SE nor anti-aliasing
    kwargs = {"layers": [s["blocks"] for s in spec["stages"]], "num_classes": spec["head"]["classes"],
              "in_chans": spec["input"]["channels"], "cardinality": block.get("groups", 1),
              "base_width": block.get("width_per_group", 64),
              "channels": [s["channels"] for s in spec["stages"]], "bottleneck": _timm_blocks(block, spec["stages"]),
              "se": None if se is None else _TIMM_SE.index(se), "zero_init_last": False, **pool_kwargs,
              **_timm_sk(block.get("spatial"))}
    if block.get("reduce_first", 1) != 1 or sc.get("kernel", 1) != 1:  # SENet-154 (timm resnet.py's senet154)
        kwargs.update(block_reduce_first=block.get("reduce_first", 1), down_kernel_size=sc.get("kernel", 1))
    if resnest:
        kwargs["resnest"] = resnest
    if (block.get("spatial") or {}).get("type") == "res2net":  # timm's Bottle2neck in the same ResNet class
        kwargs["res2net_scale"] = block["spatial"]["scale"]
    if deep:
        w = stem["channels"][0]
        if stem["channels"] != [w, w, 2 * w]:  # timm's deep stem: stem_width, stem_width, 2 x stem_width
            return None
        kwargs.update(stem_type="deep", stem_width=stem["channels"][0])
    if sc.get("projection") == "avgpool_conv":
        if sc.get("pool", _TIMM_POOL) != _TIMM_POOL:
            return None
        kwargs["avg_down"] = True
    return kwargs


_TIMM_POOL = {"ceil_mode": True, "count_include_pad": False}


def _timm_blocks(block: dict, stages: list):
    """Whether timm's blocks are bottlenecks: one bool, or one per stage where a stage has its own block type
    (timm's per-stage block list, test_resnet); None where an expansion is not the type's (timm's are fixed)."""
    if "expansion" in block or any("expansion" in (s.get("block") or {}) for s in stages):
        return None
    kinds = [(s.get("block") or {}).get("type", block["type"]) == "bottleneck" for s in stages]
    return kinds if any("block" in s for s in stages) else block["type"] == "bottleneck"


def _timm_sk(spatial) -> dict:
    """timm's SelectiveKernel arguments for a block.spatial of type selective_kernel (sknet.py's blocks)."""
    from ...config import spatial_config

    sp = spatial_config(spatial)
    if sp is None or sp["type"] != "selective_kernel":
        return {}
    return {"sk": {"kernel_size": list(sp["kernels"]), "keep_3x3": sp["keep_3x3"], "split_input": sp["split_input"],
                   "rd_ratio": sp["rd_ratio"], "rd_divisor": sp["rd_divisor"]}}
#: the attention settings timm's ResNet uses: SEModule's default (rd_ratio 1/16), ResNet-RS's rd_ratio 1/4,
#: EcaModule's default (the adaptive kernel; attn_layer='eca', the ecaresnet models)
_TIMM_SE = ({"reduction": 16, "divisor": 8}, {"reduction": 4, "divisor": 8}, {"type": "eca"})


def _timm_stem_pool(pool, anti_alias):
    """timm ResNet keyword arguments for a spec's stem.pool and block.anti_alias (timm ties them: its
    ``aa_layer=nn.AvgPool2d`` also makes the stem pool ``AvgPool2d(2)``), or None."""
    from ...config import DEFAULTS, STEM_POOL_KEYS

    if pool == "max" or pool is None:
        return None if anti_alias or pool is None else {}
    full = {**DEFAULTS["stem.pool"], **pool}
    full = {k: full[k] for k in STEM_POOL_KEYS[full["type"]]}
    if full == {"type": "conv", "kernel": 3, "stride": 2, "padding": 1} and not anti_alias:
        return {"replace_stem_pool": True}
    if full == {**DEFAULTS["stem.pool"], "type": "max"} and not anti_alias:
        return {}
    if full == {**DEFAULTS["stem.pool"], "type": "max", "anti_alias": "blur"} and anti_alias == "blur":
        return {"aa_layer": "blur"}  # timm's BlurPool2d: the stem's max-pool at stride 1 and the blocks' aa
    avg2 = {"type": "avg", "kernel": 2, "stride": 2, "padding": 0, "ceil_mode": False, "count_include_pad": True}
    return {"aa_layer": "avgpool"} if full == avg2 and anti_alias == "avgpool" else None


def _resnest_args(block: dict):
    """timm ResNestBottleneck's block_args for a block.spatial/block.avd (None: not a ResNeSt -- a plain
    timm Bottleneck, Res2Net's Bottle2neck or an SK block; 'none': no timm block has it). timm's SplitAttn takes its attention width at rd_ratio 0.25, divisor 8,
    at least 32: other widths are 'none'."""
    from ...config import DEFAULTS, spatial_config

    spatial, avd = spatial_config(block.get("spatial")), block.get("avd")
    if spatial["type"] != "split_attention" and avd is None:  # a plain, Res2Net or selective-kernel block
        return None
    if spatial["type"] not in ("conv", "split_attention") or block["type"] != "bottleneck":
        return "none"
    if spatial["type"] == "split_attention" and \
            {**spatial, "radix": 2} != DEFAULTS["block.spatial.split_attention"]:
        return "none"
    return {"radix": spatial.get("radix", 0), "avd": avd is not None, "avd_first": avd == "before_3x3"}


def _resnetv2_equivalent(spec: dict):
    """timm.models.resnetv2.ResNetV2 keyword arguments (BatchNorm, plain convs) for a full pre-activation
    spec dict it expresses, or None."""
    block, stem, sc = spec["block"], spec["stem"], spec.get("shortcut", {})
    if set(block) - {"type", "preact", "stride_on"} or block.get("stride_on", "3x3") != "3x3" \
            or set(stem) - {"type", "channels", "kernel", "stride"} or stem.get("stride") != 2 \
            or set(sc) - {"type", "projection", "pool"} or sc.get("type") != "B" \
            or sc.get("pool", _TIMM_POOL) != _TIMM_POOL or "conv_bias" in spec or set(spec["head"]) != {"classes"} \
            or [s["stride"] for s in spec["stages"]] != [1] + [2] * (len(spec["stages"]) - 1) \
            or any(set(s) - {"blocks", "channels", "stride"} for s in spec["stages"]) \
            or spec["norm"] != {"eps": 1e-5, "momentum": 0.1}:
        return None
    deep = stem.get("type") == "deep"
    w = stem["channels"][-1] if deep else stem["channels"]
    stem_type = {(w // 2, w // 2, w): "deep", (3 * w // 8, w // 2, w): "tiered"}.get(
        tuple(stem["channels"]), None) if deep else ""
    if stem_type is None or stem.get("kernel") != (3 if deep else 7):
        return None
    basic = block["type"] == "basic"
    return {"v2": True, "layers": [s["blocks"] for s in spec["stages"]], "num_classes": spec["head"]["classes"],
            "in_chans": spec["input"]["channels"], "stem_chs": w, "stem_type": stem_type,
            "channels": [s["channels"] * (1 if basic else 4) for s in spec["stages"]], "basic": basic,
            "bottle_ratio": 1.0 if basic else 0.25, "avg_down": sc.get("projection") == "avgpool_conv"}


def _regnet_equivalent(spec: dict):
    """torchvision RegNet arguments (explicit BlockParams) for a full RegNet spec dict it expresses, or None:
    a 3x3/2 stem without pool, expansion-1 bottlenecks with a group width per stage, projection shortcuts,
    no SE or RegNetY's (after the 3x3 conv, reduced from the block's input, Python's round)."""
    block, stem, sc, stages = spec["block"], spec["stem"], spec.get("shortcut", {}), spec["stages"]
    se = block.get("se")
    if set(block) - {"type", "expansion", "se"} or block.get("expansion") != 1 or block["type"] != "bottleneck" \
            or set(stem) - {"type", "channels", "kernel", "stride", "pool"} or stem.get("pool", "max") is not None \
            or (stem.get("type"), stem.get("kernel"), stem.get("stride")) != ("conv", 3, 2) \
            or set(sc) - {"type", "projection"} or sc.get("type") != "B" or sc.get("projection", "conv") != "conv" \
            or "conv_bias" in spec or set(spec["head"]) != {"classes"} or any("group_width" not in s for s in stages) \
            or any(set(s) - {"blocks", "channels", "stride", "group_width", "width"} for s in stages) \
            or spec["norm"] != {"eps": 1e-5, "momentum": 0.1}:
        return None
    if se is not None and (se.get("placement"), se.get("reduce_from"), se.get("divisor", 8)) != \
            ("after_3x3", "input", None):
        return None
    return {"regnet": True, "depths": [s["blocks"] for s in stages], "widths": [s["channels"] for s in stages],
            "group_widths": [s["group_width"] for s in stages], "strides": [s.get("stride", 2) for s in stages],
            "bottleneck_multipliers": [s.get("width", s["channels"]) / s["channels"] for s in stages],
            "se_ratio": None if se is None else 1 / se.get("reduction", 16), "num_classes": spec["head"]["classes"],
            "stem_width": stem["channels"], "in_chans": spec["input"]["channels"]}


def build_timm(kwargs: dict):
    """The timm ResNet (or ResNetV2) of :func:`timm_equivalent`'s arguments (the runtime a checkpoint came
    from)."""
    if kwargs.get("regnet"):
        from torchvision.models import regnet

        if kwargs["in_chans"] != 3:
            raise ValueError("torchvision's RegNet takes 3 input channels")
        kw = {k: kwargs[k] for k in ("depths", "widths", "group_widths", "bottleneck_multipliers", "strides",
                                     "se_ratio")}
        return regnet.RegNet(regnet.BlockParams(**kw), num_classes=kwargs["num_classes"],
                             stem_width=kwargs["stem_width"]).eval()
    if kwargs.get("v2"):
        from timm.layers import BatchNormAct2d, create_conv2d
        from timm.models import resnetv2

        kw = {k: v for k, v in kwargs.items() if k != "v2"}
        return resnetv2.ResNetV2(**kw, conv_layer=create_conv2d, norm_layer=BatchNormAct2d).eval()
    from functools import partial

    import torch.nn as nn
    from timm.models import resnet

    kw = dict(kwargs)
    kinds = kw.pop("bottleneck")  # a list: timm's per-stage block list
    kw["block"] = [_timm_block(resnet, k) for k in kinds] if isinstance(kinds, list) else _timm_block(resnet, kinds)
    se, scale, sk = kw.pop("se"), kw.pop("res2net_scale", None), kw.pop("sk", None)
    if "resnest" in kw:
        from timm.models.resnest import ResNestBottleneck

        kw["block"], kw["block_args"] = ResNestBottleneck, kw.pop("resnest")
    elif scale is not None:
        from timm.models.res2net import Bottle2neck

        kw["block"], kw["block_args"] = Bottle2neck, {"scale": scale}
    elif sk is not None:  # timm's sknet.py blocks
        from timm.models import sknet

        kw["block"] = [_timm_block(sknet, k) for k in kinds] if isinstance(kinds, list) else _timm_block(sknet, kinds)
        kw["block_args"] = {"sk_kwargs": sk}
    kw.setdefault("block_args", {})
    if se is not None:
        kw["block_args"]["attn_layer"] = ("se", partial(resnet.get_attn("se"), rd_ratio=0.25), "eca")[se]
    if kw.get("aa_layer") == "avgpool":
        kw["aa_layer"] = nn.AvgPool2d
    elif kw.get("aa_layer") == "blur":
        from timm.layers import BlurPool2d

        kw["aa_layer"] = BlurPool2d
    return resnet.ResNet(**kw).eval()


def _timm_block(module, bottleneck: bool):
    """timm's bottleneck or basic block class of ``module`` (resnet.py's, or sknet.py's selective-kernel ones)."""
    if module.__name__.endswith("sknet"):
        return module.SelectiveKernelBottleneck if bottleneck else module.SelectiveKernelBasic
    return module.Bottleneck if bottleneck else module.BasicBlock
