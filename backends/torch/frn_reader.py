"""Import facts of the norm-act layers, read from a timm model's modules (``norm_reader.add_norm_facts`` calls
:func:`add_norm_act_facts`): timm's FilterResponseNormTlu2d (``norm.type: frn``) and EvoNorm2dS0
(``norm.type: evonorm_s0``), their epsilon and (EvoNorm) groups, one of each for the network, as a spec
states them once. Any other FRN or EvoNorm was refused before (``blocks.UNSUPPORTED``); a mixture a spec cannot
say is refused here in one line. Whether each layer has its activation (tau, v) follows from the network's
structure (``resolve_frn.fold_acts``) and is checked tensor by tensor against the source's state dict."""

from __future__ import annotations

_KINDS = {"FilterResponseNormTlu2d": "frn", "EvoNorm2dS0": "evonorm_s0"}


def add_norm_act_facts(src, mods: dict) -> None:
    found = {}  # (kind, eps, groups) -> first layer
    for name, layer in src.layers.items():
        m = mods.get(name)
        kind = _KINDS.get(type(m).__name__)
        if kind is None:
            continue
        layer.eps = float(m.eps)
        found.setdefault((kind, float(m.eps), getattr(m, "groups", None)), name)
    if not found:
        return
    if len(found) > 1:
        (k0, e0, g0), (k1, e1, g1) = list(found)[:2]
        what = "norm types" if k0 != k1 else "epsilons" if e0 != e1 else "EvoNorm groups"
        raise src.refuse(repr(list(found.values())[1]), f"{what} differ across the network ({k0} eps {e0:g}"
                         f"{'' if g0 is None else f' groups {g0}'}, {k1} eps {e1:g}"
                         f"{'' if g1 is None else f' groups {g1}'}); a spec has one norm")
    kind, eps, groups = next(iter(found))
    plain = [n for n, layer in src.layers.items() if layer.kind in ("bn", "gn") and (layer.eps is None)]
    if plain:
        raise src.refuse(repr(plain[0]), f"a norm beside the {kind} layers that is not one of them")
    src.facts["eps"] = eps
    src.facts["norm_act"] = {"type": kind, **({} if groups is None else {"groups": groups}), "eps": eps}
