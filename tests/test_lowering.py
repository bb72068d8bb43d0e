"""Conformance of the backends to the shared lowering walk (backends/common.py).

Every backend that registers an ``OPS`` table must lower every IR op type; a new op added to the IR
without a lowering in some backend fails here, not at run time on some user's spec.
"""

from __future__ import annotations

import pytest

from resnet_spec import ir
from resnet_spec.backends import BACKENDS, common, get



#: Lowerings that are not backends of their own: the standalone .py emitter (part of 'torch').
EMITTERS = ("torch.source",)


def _table(backend: str):
    """The ``OPS`` table of the backend's module (``backends.get``) or emitter. Importing one needs no
    framework (they import theirs lazily or guarded), so TensorFlow never enters this process."""
    if backend in EMITTERS:
        import importlib

        return getattr(importlib.import_module(f"resnet_spec.backends.{backend}"), "OPS", None)
    return getattr(get(backend), "OPS", None)


@pytest.mark.parametrize("backend", BACKENDS + EMITTERS)
def test_every_ir_op_has_a_lowering(backend):
    table = _table(backend)
    if table is None:
        pytest.fail(f"{backend}: the backend module has no OPS table")
    missing = common.missing_lowerings(table)
    assert not missing, f"{backend}: no lowering for IR op type(s) {', '.join(missing)}"
    assert all(callable(fn) for fn in table.values())
    extra = [t for t in table if t not in ir.OP_TYPES]
    assert not extra, f"{backend}: lowerings for types that are not IR ops: {extra}"


def test_op_types_are_every_ir_op():
    """ir.OP_TYPES lists every op dataclass the IR defines (the tuple the tables are checked against)."""
    import dataclasses

    containers = {ir.Block, ir.Network, ir.TensorInfo}
    defined = {v for v in vars(ir).values() if isinstance(v, type) and dataclasses.is_dataclass(v)} - containers
    assert defined == set(ir.OP_TYPES)


def test_walk_refuses_an_op_without_lowering():
    class Partial(common.Lowering):
        table, backend = {}, "partial"

    with pytest.raises(TypeError, match="partial: no lowering for IR op ReLU"):
        Partial().lowering_of(ir.ReLU((1, 1, 1), (1, 1, 1)))
