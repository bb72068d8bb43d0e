"""RegNet's generating parameters -> stages (a spec's top-level ``regnet`` section).

RegNet (Radosavovic et al., "Designing Network Design Spaces") describes a network by a few numbers: the
initial width ``w0``, the slope ``wa``, the width multiplier ``wm``, the ``depth`` (blocks in all), the
group width and the bottleneck ratio. :func:`generate` computes the per-stage settings exactly as timm's
``generate_regnet`` + ``adjust_widths_groups_comp`` and torchvision's ``BlockParams.from_init_params`` do --
in float32, as both libraries compute them with torch tensors -- and returns ordinary stage entries
(``blocks``, ``channels``, ``stride``, ``group_width``, ``width``), so a spec given by its generating
parameters and one given by the explicit stage list resolve to the same IR. ``group_min_ratio`` chooses
how a bottleneck width is made a multiple of the group width: 0 (timm's default) rounds to the nearest
multiple (Python's ``round``, half to even); a ratio (torchvision: 0.9) uses ``make_divisible`` (half up,
never below the ratio of the width).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .ir import make_divisible

#: The defaults of the ``regnet`` section (the schema's ``default`` annotations say the same).
REQUIRED = ("w0", "wa", "wm", "depth", "group_width")
DEFAULTS = {"bottleneck_ratio": 1.0, "quantization": 8, "group_min_ratio": 0.0}
#: Every generated stage's stride (both libraries; timm's output_stride 32).
STRIDE = 2
#: the schema's bounds on an explicit ``stages`` list, which generated stages must keep too
#: (schemas/resnet.schema.json ``stages`` maxItems and a stage's ``channels`` maximum; a test checks)
MAX_STAGES, MAX_CHANNELS = 16, 65536


def block_widths(w0: int, wa: float, wm: float, depth: int, quant: int) -> list:
    """Each block's output width: ``w0 * wm ** round(log(1 + wa * i / w0) / log(wm))`` quantized to
    ``quant``, in float32 (torch's arithmetic in both libraries: the float scalars cast to float32)."""
    f32 = np.float32
    cont = np.arange(depth, dtype=f32) * f32(wa) + f32(w0)
    exps = np.round(np.log(cont / f32(w0)) / f32(math.log(wm))).astype(f32)
    widths = np.round((f32(w0) * np.power(f32(wm), exps)) / f32(quant)) * f32(quant)
    return [int(w) for w in widths]


def generate(params: dict) -> list:
    """The stage entries of the ``regnet`` section ``params`` (defaults of :data:`DEFAULTS` filled in)."""
    p = {**DEFAULTS, **params}
    widths = block_widths(p["w0"], p["wa"], p["wm"], p["depth"], p["quantization"])
    stages: list = []  # [width, blocks], in order (the widths never decrease)
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    ratio, out = p["bottleneck_ratio"], []
    for w, n in stages:
        w_bot = int(w * ratio)
        group = min(p["group_width"], w_bot)
        if p["group_min_ratio"]:
            w_bot = make_divisible(w_bot, group, p["group_min_ratio"])
        else:
            w_bot = int(round(w_bot / group) * group)
        channels = int(w_bot / ratio)
        out.append({"blocks": n, "channels": channels, "stride": STRIDE, "group_width": group,
                    "width": int(round(channels * ratio))})
    return out


def params_errors(params: dict) -> list:
    """``[(path, message)]`` (``path`` inside the ``regnet`` section) for generating parameters that are
    missing or that the libraries refuse (both assert them)."""
    p = {**DEFAULTS, **params}
    errs = [((), f"missing required field {k!r} (directly or through 'extends')") for k in REQUIRED if k not in p]
    if errs:
        return errs
    if p["w0"] % p["quantization"]:
        errs.append((("w0",), f"w0 {p['w0']} is not a multiple of the quantization {p['quantization']}"))
    if p["wm"] <= 1:
        errs.append((("wm",), f"wm {p['wm']} must be more than 1"))
    if errs:
        return errs
    widths = block_widths(p["w0"], p["wa"], p["wm"], p["depth"], p["quantization"])
    if int(min(widths) * p["bottleneck_ratio"]) < 1:
        return [(("bottleneck_ratio",), f"bottleneck_ratio {p['bottleneck_ratio']} leaves a {min(widths)}-channel "
                                        "stage no bottleneck channel")]
    stages = generate(p)
    if len(stages) > MAX_STAGES:
        errs.append(((), f"these parameters generate {len(stages)} stages; a spec has at most {MAX_STAGES}"))
    widest = max(s["channels"] for s in stages)
    if widest > MAX_CHANNELS:
        errs.append(((), f"these parameters generate a {widest:,}-channel stage; a stage has at most "
                         f"{MAX_CHANNELS:,} channels"))
    return errs


def stages_of(data: dict) -> list:
    """A merged spec's stages: its ``stages``, or the ones its ``regnet`` section generates ([] while
    that section has errors: the rules report them). The rules and the resolver ask for them a dozen
    times per spec: the generated list is computed once per distinct section (each caller gets copies)."""
    if "stages" in data or data.get("regnet") is None:
        return data["stages"]
    section = data["regnet"]
    try:
        key = tuple(sorted(section.items()))
        hash(key)
    except (AttributeError, TypeError):  # not a mapping of numbers: the schema reports it
        return [] if not isinstance(section, dict) or params_errors(section) else generate(section)
    return [dict(s) for s in _generated(key)]


@functools.lru_cache(maxsize=64)
def _generated(key: tuple) -> tuple:
    section = dict(key)
    return () if params_errors(section) else tuple(generate(section))


def stage_path(data: dict, i: int, *keys) -> tuple:
    """Where an error about stage ``i`` is located: ``stages.i.KEY``, or the ``regnet`` section that
    generated the stage."""
    return ("stages", i, *keys) if "stages" in data or data.get("regnet") is None else ("regnet",)
