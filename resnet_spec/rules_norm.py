"""The semantic rules of the top-level ``norm`` (type batch or group) and ``conv`` (weight standardization)
sections; :data:`resnet_spec.rules.RULES` runs :func:`rule_norm`. A key that does not apply is a located error."""

from __future__ import annotations

from .config import NORM_KEYS, norm_config
from .spec import Spec


def _depth(spec: Spec, path: tuple) -> int:
    """Where in the ``extends`` chain ``path`` was given: 0 the user's file, higher a base (-1 unknown)."""
    file = (spec.origins.get(path) or (None,))[0]
    return spec.chain.index(file) if file in spec.chain else -1


def rule_norm(spec: Spec):
    """A key of the other norm type is an error where it is given beside (or below) the type; a base's
    BatchNorm keys (momentum) that a derived spec's ``type: group`` overrides are dropped, not refused."""
    given = spec.data.get("norm") or {}
    kind = norm_config(given)["type"]
    type_at = _depth(spec, ("norm", "type")) if "type" in given else len(spec.chain)
    for key in given:
        if key not in NORM_KEYS[kind] and _depth(spec, ("norm", key)) <= type_at:
            other = next(t for t, keys in NORM_KEYS.items() if key in keys)
            yield spec.error(f"'{key}' applies to norm type {other!r} only, not to type {kind!r}", ("norm", key))
    conv = spec.data.get("conv") or {}
    if "eps" in conv and not conv.get("standardize", False):
        yield spec.error("'eps' is the weight standardization's epsilon; it applies only with standardize: true",
                         ("conv", "eps"))
