"""Import facts of the norms without running statistics and of weight standardization, read from a
torchvision/timm model's modules (``reader._add_facts`` calls :func:`add_norm_facts`): every GroupNorm's
groups and epsilon (one groups value for the network: the spec's ``norm.groups``), timm's StdConv2d epsilon
(one for every conv but the classifier: the spec's ``conv.standardize``/``eps``), and BiT's 'fixed' stem
(a constant zero pad before a max-pool without padding: the spec's ``stem.pool`` with ``pad_value: zero``).
A mixture a spec cannot say is refused in one line."""

from __future__ import annotations

from .frn_reader import add_norm_act_facts


def add_norm_facts(src, mods: dict) -> None:
    import torch.nn as nn

    groups, ws_eps, plain = {}, {}, []
    add_norm_act_facts(src, mods)  # FRN, EvoNorm-S0: backends/torch/frn_reader.py
    for name, layer in src.layers.items():
        m = mods.get(name)
        if isinstance(m, nn.GroupNorm):
            layer.eps = m.eps
            src.facts["eps"] = m.eps
            groups.setdefault(m.num_groups, name)
        elif isinstance(m, nn.Conv2d) and name != "fc":  # ResNetV2's classifier is a 1x1 Conv2d
            if type(m).__name__ == "StdConv2d":
                ws_eps.setdefault(float(m.eps), name)
            else:
                plain.append(name)
    if len(groups) > 1:
        raise src.refuse(repr(list(groups.values())[1]), f"GroupNorm groups differ across the network "
                         f"({', '.join(map(str, groups))}); a spec has one norm.groups")
    if groups:
        src.facts["norm_groups"] = next(iter(groups))
    if ws_eps:
        if plain:
            raise src.refuse(repr(plain[0]), "a plain convolution beside weight-standardized (StdConv2d) ones")
        if len(ws_eps) > 1:
            raise src.refuse(repr(list(ws_eps.values())[1]), "StdConv2d epsilons differ across the network")
        src.facts["standardize_eps"] = next(iter(ws_eps))
    _fixed_stem_pad(src, mods.get("stem.pad"))


def _fixed_stem_pad(src, pad) -> None:
    """timm ResNetV2's 'fixed' stem: ``ConstantPad2d(p, 0)`` then a max-pool without padding, which is the
    max-pool with padding ``p`` whose padding is zeros."""
    import torch.nn as nn

    if pad is None:
        return
    pool = src.facts.get("stem_pool")
    p = pad.padding if isinstance(pad, nn.ConstantPad2d) else None
    if p is None or len(set(p)) != 1 or pad.value != 0 or not isinstance(pool, dict) or pool.get("type", "max") \
            != "max" or pool.get("padding") != 0 or pool.get("ceil_mode"):
        raise src.refuse("stem.pad", "a stem padding other than a constant zero pad before a max-pool "
                         "without padding (timm's 'fixed' stem)")
    pool.update(padding=p[0], pad_value="zero")
