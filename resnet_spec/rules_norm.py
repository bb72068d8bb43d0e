"""The semantic rules of the top-level ``norm`` (type batch, group, frn or evonorm_s0) and ``conv`` (weight
standardization) sections; :data:`resnet_spec.rules.RULES` runs :func:`rule_norm`. A key that does not apply is
a located error."""

from __future__ import annotations

from .config import NORM_KEYS, norm_config
from .spec import Spec


def rule_norm(spec: Spec):
    """A key of the other norm type is an error (a base's keys of another type are not inherited by a spec
    that sets ``norm.type``: ``config.drop_other_norm_keys``)."""
    given = spec.data.get("norm") or {}
    kind = norm_config(given)["type"]
    for key in given:
        if key not in NORM_KEYS[kind]:
            other = " or ".join(repr(t) for t, keys in NORM_KEYS.items() if key in keys)
            yield spec.error(f"'{key}' applies to norm type {other} only, not to type {kind!r}", ("norm", key))
    conv = spec.data.get("conv") or {}
    if "eps" in conv and not conv.get("standardize", False):
        yield spec.error("'eps' is the weight standardization's epsilon; it applies only with standardize: true",
                         ("conv", "eps"))
