"""Every error of a spec at once (for ``validate``), and gentle warnings for every command.

Other commands stop at the first error (:func:`resnet_spec.load`); ``validate`` wants the whole list so
that each typo does not cost another run: every schema error of the user's file, in file order, then
the semantic errors of the merged spec.
"""

from __future__ import annotations

import os

from . import spec as S
from . import yamlio
from .errors import SpecError

#: Other frameworks' BatchNorm epsilon defaults that a spec (PyTorch convention) rarely means.
OTHER_EPS = {1e-3: "Keras's BatchNormalization default (torchvision and keras.applications ResNets use "
                   "1e-5 and 1.001e-5)"}


def _document(source: str) -> yamlio.Document:
    """The user's own document (before ``extends``), parsed as :func:`resnet_spec.spec.load` does."""
    source = os.fspath(source)
    if S.looks_like_yaml_text(source):
        return yamlio.parse(source, "<string>")
    path = S.zoo_path(source) if (os.sep not in source and not source.endswith((".yaml", ".yml"))) else None
    if path is None:
        if not os.path.exists(source):
            raise SpecError(S._unknown_source_message(source), source)
        path = source
    return yamlio.parse(yamlio.read_text(path), path)


def semantic_errors(spec: S.Spec, limits=None) -> list:
    """The semantic errors of a merged spec: every independent rule's, in file order (see
    :func:`resnet_spec.resolve.semantic_errors`)."""
    from .resolve import semantic_errors as rules

    return rules(spec, limits)


def all_errors(source: str, limits=None) -> tuple[list, S.Spec | None]:
    """``(errors, spec)``: every error in file order; ``spec`` is the merged spec when it loaded."""
    try:
        doc = _document(source)
    except SpecError as exc:  # unreadable or invalid YAML: nothing more can be said
        return [exc], None
    if not isinstance(doc.data, dict):
        return [doc.error(f"a spec must be a mapping of fields, got {S._type_name(doc.data)}")], None
    errors = S.schema_errors(doc)
    if errors:
        return errors, None
    try:
        spec = S.load(source)
    except SpecError as exc:  # extends problems, or an error in a base file
        return [exc], None
    return semantic_errors(spec, limits), spec


def spec_warnings(spec: S.Spec) -> list:
    """Values that are valid but probably meant in another framework's convention: ``file:line:col:
    warning: ...`` lines."""
    out = []
    norm = spec.data.get("norm") or {}
    m = norm.get("momentum")
    if isinstance(m, (int, float)) and m >= 0.5:
        out.append(_warn(spec, ("norm", "momentum"),
                         f"norm.momentum {m:g} looks like the Keras convention (weight of the old statistics); "
                         f"specs use PyTorch's (weight of the new batch): Keras momentum {m:g} is torch "
                         f"momentum {1 - m:.4g}"))
    eps = norm.get("eps")
    for value, what in OTHER_EPS.items():
        if isinstance(eps, (int, float)) and abs(eps - value) <= 1e-12:
            out.append(_warn(spec, ("norm", "eps"), f"norm.eps {eps:g} is {what}; is that intended?"))
    return [text for _, text in sorted(out)]  # in file order


def _warn(spec: S.Spec, path: tuple, message: str) -> str:
    err = spec.error(message, path)
    where = err.file or "<spec>"
    if err.line is not None:
        where += f":{err.line}:{err.col or 1}"
    return (err.line or 0, err.col or 0), f"{where}: warning: {message}"
