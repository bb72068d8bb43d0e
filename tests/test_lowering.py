"""Conformance of the backends to the shared lowering walk (backends/common.py), and of every other
table of per-op facts to the IR.

Every backend that registers an ``OPS`` table must lower every IR op type, and every table keyed by IR op
type (weight initialisation, Keras weight layouts, keras.applications names, import facts) must have an
entry for each; a new op added to the IR without one fails here, not at run time on some user's spec.
"""

from __future__ import annotations

import importlib

import pytest

from resnet_spec import ir
from resnet_spec.backends import BACKENDS, common, get



#: Lowerings that are not backends of their own: the standalone .py emitter (part of 'torch').
EMITTERS = ("torch.source",)


def _table(backend: str):
    """The ``OPS`` table of the backend's module (``backends.get``) or emitter. Importing one needs no
    framework (they import theirs lazily or guarded), so TensorFlow never enters this process."""
    if backend in EMITTERS:
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
    _check_op_table(table, backend)


#: Every other table keyed by IR op type: ``module: attribute``. None is an entry meaning "nothing for this
#: op" (keras.applications names: a parameter-free op has no layer to name); a weightless op's entry in the
#: other tables is a function giving nothing, so every table is complete.
OP_TABLES = {
    "resnet_spec.weights.init": "INIT",
    "resnet_spec.importers.source": "SPEC_LAYERS",
    "resnet_spec.backends.keras.weights": "LAYOUTS",
    "resnet_spec.backends.keras.applications": "APPLICATIONS_NAMES",
}


def _check_op_table(table, what: str) -> None:
    """``table`` has an entry for every IR op type and none for anything else."""
    missing = ir.missing_op_types(table)
    assert not missing, f"{what}: no entry for IR op type(s) {', '.join(missing)}"
    extra = [t for t in table if t not in ir.OP_TYPES]
    assert not extra, f"{what}: entries for types that are not IR ops: {extra}"


@pytest.mark.parametrize("module", sorted(OP_TABLES))
def test_every_op_table_covers_every_ir_op(module):
    """Importing these modules needs no framework (Keras is imported lazily), so none enters this process."""
    what = f"{module}.{OP_TABLES[module]}"
    table = getattr(importlib.import_module(module), OP_TABLES[module])
    _check_op_table(table, what)
    entries = [e for pair in table.values() for e in (pair if isinstance(pair, tuple) else (pair,))]
    assert all(e is None or callable(e) for e in entries), what


def test_missing_op_types_names_the_gap():
    table = {t: None for t in ir.OP_TYPES if t is not ir.Dropout}
    assert ir.missing_op_types(table) == ["Dropout"]
    assert common.missing_lowerings(table) == ["Dropout"]
    with pytest.raises(TypeError, match="init: no entry for IR op Dropout"):
        ir.entry_for(table, ir.Dropout(0.1, (1,), (1,)), "init")


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
