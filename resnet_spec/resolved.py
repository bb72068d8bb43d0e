"""The fully resolved spec (``resnet-spec resolve``) and the difference of two specs (``resnet-spec diff``).

:func:`resolved_data` fills in every default the resolver would apply, merges ``extends`` and turns
``depth`` into per-stage ``blocks``, so that the result is self-contained and loads to the identical IR
(tested for every zoo entry). :func:`to_yaml` writes it with a comment on every value that a spec file
set, naming the file and line it came from; values without a comment are defaults.
"""

from __future__ import annotations

import os

import yaml

from .config import STEM_POOL_KEYS, conv_config, norm_config, se_config, spatial_config, stage_block, stage_kinds
from .regnet import stages_of
from .resolve import DEFAULTS
from .spec import Spec, zoo_path

TOP_ORDER = ("name", "description", "reference", "input", "width_multiplier", "conv_bias", "conv", "norm", "stem",
             "block", "shortcut", "stages", "head", "init")
NOT_COMPARED = ("name", "description", "reference")


def resolved_data(spec: Spec) -> dict:
    """Every field of ``spec`` with the value the resolver uses (an ordinary, self-contained spec)."""
    d = spec.data
    blk = d["block"]
    kind, preact = blk["type"], bool(blk.get("preact", False))
    conv_bias = d.get("conv_bias", DEFAULTS["conv_bias"])
    out = {k: d[k] for k in ("name", "description", "reference") if k in d}
    inp = d.get("input") or {}
    out["input"] = {"channels": inp.get("channels", 3), "size": inp.get("size", 224)}
    out["width_multiplier"] = d.get("width_multiplier", 1)
    out["conv_bias"] = conv_bias
    out["norm"] = norm_config(d.get("norm"))
    out["conv"] = conv_config(d.get("conv"))
    out["stem"] = _stem(d.get("stem") or {}, preact, conv_bias)
    out["block"] = _block(blk, kind, preact, "bottleneck" in stage_kinds(d) + [kind])
    out["shortcut"] = _shortcut(d.get("shortcut") or {}, preact)
    out["stages"] = _stages(d, kind, out["block"], out["width_multiplier"])
    out["head"] = {**DEFAULTS["head"], "norm": preact, **(d.get("head") or {})}
    out["init"] = {**DEFAULTS["init"], **(d.get("init") or {})}
    return out


def _stem(st: dict, preact: bool, conv_bias) -> dict:
    kind = st.get("type", "conv")
    k = st.get("kernel", 3 if kind == "deep" else 7)
    norm = st.get("norm", not preact)
    out = {"type": kind, "channels": st.get("channels", [32, 32, 64] if kind == "deep" else 64), "kernel": k,
           "stride": st.get("stride", 2), "padding": st.get("padding", k // 2)}
    if "bias" in st:
        out["bias"] = st["bias"]
    elif conv_bias != "auto":
        out["bias"] = bool(conv_bias)
    elif kind == "conv":
        out["bias"] = not norm  # 'auto' on a deep stem differs per conv: left to the rule
    out["norm"] = norm
    pool = st["pool"] if "pool" in st else DEFAULTS["stem"]["pool"]
    if pool is not None:
        pool = {**DEFAULTS["stem.pool"], **pool}
        pool = {k: pool[k] for k in STEM_POOL_KEYS[pool["type"]]}  # only the keys its type takes
        if pool.get("anti_alias", "") is None:  # shown only where given (timm's resnetblur stems)
            del pool["anti_alias"]
    out["pool"] = pool
    return out


def _block(blk: dict, kind: str, preact: bool, bottlenecks: bool) -> dict:
    """The global block section; ``bottlenecks``: whether any stage's blocks are bottlenecks (their keys shown)."""
    out = {"type": kind, "preact": preact}
    keys = ("stride_on", "stride_block", "groups", "width_per_group") if bottlenecks else ("stride_block",)
    for key in keys:
        out[key] = blk.get(key, DEFAULTS["block"][key])
    out["expansion"] = blk.get("expansion", 4 if kind == "bottleneck" else 1)
    out["se"] = se_config(blk.get("se"))
    out["anti_alias"] = blk.get("anti_alias", DEFAULTS["block"]["anti_alias"])
    spatial = spatial_config(blk.get("spatial"))
    if spatial != DEFAULTS["block"]["spatial"]:  # shown where it is not the plain conv
        out["spatial"] = spatial
    if blk.get("avd") is not None:
        out["avd"] = blk["avd"]
    if blk.get("reduce_first", 1) != 1:  # shown where conv1 is narrowed
        out["reduce_first"] = blk["reduce_first"]
    out["drop_path_rate"] = blk.get("drop_path_rate", 0.0)
    return out


def _shortcut(sc: dict, preact: bool) -> dict:
    kind = sc.get("type", "B")
    out = {"type": kind}
    if kind != "A":
        out["projection"] = sc.get("projection", "conv")
        out["norm"] = sc.get("norm", not preact)
    out["strided_identity"] = sc.get("strided_identity", False)
    out["zero_pad"] = sc.get("zero_pad", "split")
    if sc.get("kernel", 1) != 1:  # shown where the strided projection is not a 1x1 conv
        out["kernel"] = sc["kernel"]
    if out.get("projection") == "avgpool_conv":
        out["pool"] = {**DEFAULTS["shortcut.pool"], **(sc.get("pool") or {})}
    return out


def _stages(d: dict, kind: str, blk: dict, mult: int) -> list:
    stages = stages_of(d)
    if d.get("depth") is not None:
        per = (d["depth"] - 2) // ((2 if kind == "basic" else 3) * len(stages))
        counts = [per] * len(stages)
    else:
        counts = [s["blocks"] for s in stages]
    out = []
    for i, (s, n) in enumerate(zip(stages, counts)):
        row = {"blocks": n, "channels": s["channels"], "stride": s.get("stride", 1 if i == 0 else 2),
               "dilate": s.get("dilate", False)}
        st_kind, expansion = stage_block(kind, blk["expansion"], s)
        if "block" in s:  # the stage's own block type, shown with its expansion
            row["block"] = {"type": st_kind, "expansion": expansion}
        if "widths" in s:
            row["widths"] = s["widths"]
        elif st_kind == "bottleneck" and "group_width" in s:
            row["group_width"] = s["group_width"]
            row["width"] = s.get("width", s["channels"] * mult * expansion)
        elif st_kind == "bottleneck":
            planes = s["channels"] * mult
            row["width"] = s.get("width", int(planes * (blk["width_per_group"] / 64.0)) * blk["groups"])
        out.append(row)
    return out


# -- YAML with provenance comments ---------------------------------------------------------------------

def to_yaml(spec: Spec) -> str:
    """The resolved spec as YAML; each value a spec file set carries ``# file:line``."""
    data = resolved_data(spec)
    chain = " -> ".join(_where(f) for f in spec.chain)
    lines = [f"# {spec.name}, fully resolved from {chain}",
             "# Every default is filled in; a value with a '# file:line' comment was set there, the others",
             "# are defaults. Loading this file gives the same network."]
    depth_note = None
    if spec.data.get("depth") is not None:
        depth_note = f"from depth {spec.data['depth']} ({_origin(spec, ('depth',))})"
    if spec.data.get("regnet") is not None and "stages" not in spec.data:
        params = ", ".join(f"{k}: {v}" for k, v in spec.data["regnet"].items())
        lines.append(f"# stages generated from regnet {{{params}}} ({_origin(spec, ('regnet',))})")
    for key in TOP_ORDER:
        if key in data:
            _emit(lines, key, data[key], (key,), 0, spec, depth_note)
    return "\n".join(lines) + "\n"


def _emit(lines, key, value, path, indent, spec, depth_note, dash=False):
    pad = " " * indent
    lead = f"{pad}- " if dash else pad
    if isinstance(value, dict) and value:
        lines.append(f"{lead}{key}:" if key is not None else lead.rstrip())
        for k, v in value.items():
            _emit(lines, k, v, path + (k,), indent + 2, spec, depth_note)
        return
    if isinstance(value, list) and value and isinstance(value[0], dict):
        lines.append(f"{lead}{key}:")
        for i, item in enumerate(value):
            first = True
            for k, v in item.items():
                sub = path + (i, k)
                text = f"{k}: {_scalar(v)}"
                prefix = f"{pad}  - " if first else f"{pad}    "
                note = depth_note if (k == "blocks" and depth_note) else _origin(spec, sub)
                lines.append(_comment(prefix + text, note))
                first = False
        return
    lines.append(_comment(f"{lead}{key}: {_scalar(value)}", _origin(spec, path)))


def _scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def _comment(text: str, note: str | None) -> str:
    return f"{text:<44}  # {note}" if note else text


def _origin(spec: Spec, path: tuple) -> str | None:
    o = spec.origins.get(path)
    if o is None or o[1] is None:
        return None
    return f"{_where(o[0])}:{o[1]}"


def _where(file: str) -> str:
    if file and file.endswith(".yaml"):
        name = os.path.basename(file)[:-5]
        if zoo_path(name) and os.path.samefile(zoo_path(name), file):
            return f"zoo/{name}.yaml"
    if file and os.path.isabs(file):
        rel = os.path.relpath(file)
        return rel if not rel.startswith("../..") else file
    return file or "<spec>"


# -- diff ----------------------------------------------------------------------------------------------

def flatten(data, path=()) -> dict:
    """``{dotted path: leaf value}``; lists of mappings become ``stages[0].blocks``."""
    from .spec import _dotted

    out = {}
    if isinstance(data, dict) and data:
        for k, v in data.items():
            out.update(flatten(v, path + (k,)))
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        for i, v in enumerate(data):
            out.update(flatten(v, path + (i,)))
    else:
        out[_dotted(path)] = data
    return out


def diff(a: Spec, b: Spec) -> list:
    """``[(field, value in a, value in b)]`` over the resolved forms, architecture fields only."""
    fa = {k: v for k, v in flatten(resolved_data(a)).items() if k.split(".")[0] not in NOT_COMPARED}
    fb = {k: v for k, v in flatten(resolved_data(b)).items() if k.split(".")[0] not in NOT_COMPARED}
    missing = object()
    keys = list(fa) + [k for k in fb if k not in fa]
    return [(k, fa.get(k, "(absent)"), fb.get(k, "(absent)")) for k in keys
            if fa.get(k, missing) != fb.get(k, missing)]


def format_diff(name_a, name_b, rows, net_a, net_b) -> str:
    if not rows:
        return f"{name_a} and {name_b} resolve to the same network ({net_a.params:,} params, {net_a.macs / 1e9:.3f} GMACs)"
    width = max([len(r[0]) for r in rows] + [5])
    out = [f"{'field':<{width}}  {name_a}  ->  {name_b}"]
    out += [f"{f:<{width}}  {_scalar(x)}  ->  {_scalar(y)}" for f, x, y in rows]
    dp, dm = net_b.params - net_a.params, net_b.macs - net_a.macs
    out.append(f"params: {net_a.params:,} -> {net_b.params:,} ({dp:+,}); "
               f"MACs: {net_a.macs / 1e9:.3f} G -> {net_b.macs / 1e9:.3f} G ({dm / 1e9:+.3f} G)")
    return "\n".join(out)


def write_output(path: str, data: bytes, force: bool = True) -> None:
    """Write ``data`` atomically; an unwritable place is one clear error line, not a traceback."""
    from .errors import ResNetSpecError
    from .fileio import write_bytes

    try:
        write_bytes(path, data, force)
    except OSError as exc:
        raise ResNetSpecError(f"{path}: cannot write ({exc.strerror or exc})") from None


def check_output_place(path: str) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written."""
    from .errors import ResNetSpecError

    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ResNetSpecError(f"{path}: cannot write ({probe} is not a folder)")
    if not os.access(probe, os.W_OK):
        raise ResNetSpecError(f"{path}: cannot write (no write permission in {probe})")
    if os.path.isdir(path):
        raise ResNetSpecError(f"{path}: cannot write (it is a folder)")
