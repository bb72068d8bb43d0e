"""No code from an input file runs unless the user opts in by name: ``verify --trust-code``.

An audit found ``verify`` running code from the files it checks: ``.pt2`` archives (pickled weights,
constants and objects that ``torch.export.load`` unpickles with ``weights_only=False``, its unsafe
fallback for sample inputs, shape expressions it hands to sympy's ``sympify``, ``guards_code`` it
``exec``s, the pre-2.7 layout), SavedModels (a serving signature calling ``tf.io.write_file``) and
``.py`` sources (executed; a ``SystemExit(0)`` in one made verify exit 0 with no report).

Each hostile file is made here from our own tiny ``.pt2`` (or a few lines of TensorFlow in a child
process) with a payload that writes a marker file. Without the flag: exit 1, one ``error:`` line naming
the file and ``--trust-code``, no marker. The payload is live: torch's own loader (or ``verify
--trust-code``) writes the marker. Our own files pass without the flag (a ``.py`` needs it).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from resnet_spec.cli import main  # noqa: E402

TINY = "extends: resnet20\nname: tiny\ninput: {size: 32}\ndepth: 8\n"
SYMBOL = "Symbol('s77', positive=True, integer=True)"


def _cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output, res.output
    return res


def _refused(res, path, *fragments) -> str:
    """The one ``error:`` line (exit 1) refusing ``path`` and naming --trust-code."""
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), res.output
    assert lines[0].endswith("; pass --trust-code to run it anyway"), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


class _Payload:
    """Unpickled, it writes the marker file (pickle stores builtins.exec and the source text)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _evil(marker) -> bytes:
    return pickle.dumps(_Payload(marker))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder with tiny.yaml, and our tiny.pt2, tiny.py, tiny.safetensors (convert's torch outputs)."""
    import resnet_spec
    from resnet_spec.backends.torch import backend as tb

    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.yaml").write_text(TINY)
    net = resnet_spec.load(TINY)
    tb.convert(net, resnet_spec.init_weights(net, seed=0), str(d))
    return d


def _rewrite(src, dst, change=None, add=None):
    """Copy the ``.pt2`` ``src`` to ``dst``: each entry's bytes through ``change(rel, data)`` (None
    drops it), then ``add`` ({relative name: bytes}) under the same root folder."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            rel = info.filename.split("/", 1)[1]
            data = zin.read(info)
            data = change(rel, data) if change else data
            if data is not None:
                zout.writestr(info.filename, data)
        for rel, data in (add or {}).items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def _json_change(target, edit):
    def change(rel, data):
        if rel != target:
            return data
        obj = json.loads(data)
        edit(obj)
        return json.dumps(obj).encode()
    return change


def _pickled_weight(src, dst, marker):
    def edit(cfg):
        cfg["config"]["conv1.weight"]["use_pickle"] = True

    def change(rel, data):
        if rel == "data/weights/weight_0":
            return _evil(marker)
        return _json_change("data/weights/model_weights_config.json", edit)(rel, data)
    return _rewrite(src, dst, change)


def _pickled_constant(prefix):
    def make(src, dst, marker):
        entry = {"path_name": f"{prefix}0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        change = _json_change("data/constants/model_constants_config.json",
                              lambda cfg: cfg["config"].update({"evil": entry}))
        return _rewrite(src, dst, change, {f"data/constants/{prefix}0": _evil(marker)})
    return make


def _sympy_expression(src, dst, marker):
    payload = f"{SYMBOL} if open({str(marker)!r}, 'w').write('ran') else {SYMBOL}"

    def change(rel, data):
        return data.replace(json.dumps(SYMBOL).encode(), json.dumps(payload).encode()) if rel == "models/model.json" \
            else data
    return _rewrite(src, dst, change)


def _guards_code(src, dst, marker):
    """Python source torch compiles into the module's input check; torch runs it when the archive holds
    example inputs (a plain tensor tuple here: the payload is the guard)."""
    import io

    buffer = io.BytesIO()
    torch.save(((torch.zeros(1, 3, 32, 32),), {}), buffer)
    edit = _json_change("models/model.json",
                        lambda p: p.update(guards_code=[f"open({str(marker)!r}, 'w').write('ran') > 0"]))
    return _rewrite(src, dst, lambda rel, data: buffer.getvalue() if rel == "data/sample_inputs/model.pt"
                    else edit(rel, data))


def _legacy_layout(src, dst, marker):
    """The pre-2.7 archive: files at the top, the state dict a pickle (unpickled after a failed safe load)."""
    with zipfile.ZipFile(src) as z:
        program = z.read(next(n for n in z.namelist() if n.endswith("models/model.json")))
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in (("version", b"8.20"), ("serialized_exported_program.json", program),
                           ("serialized_state_dict.pt", _evil(marker)), ("serialized_constants.pt", b""),
                           ("serialized_example_inputs.pt", b"")):
            z.writestr(name, data)
    return dst


#: payload -> (maker, words of the refusal)
PT2_PAYLOADS = {
    "pickled weight": (_pickled_weight, "entry conv1.weight is pickled (use_pickle)"),
    "pickled constant": (_pickled_constant("tensor_"), "entry evil is pickled (use_pickle)"),
    "pickled object": (_pickled_constant("opaque_obj_"), "entry data/constants/opaque_obj_0 is not one"),
    "sympy expression": (_sympy_expression, "a shape expression outside the grammar torch writes"),
    "guards code": (_guards_code, "guards_code holds Python source that torch.export.load executes"),
    "pre-2.7 layout": (_legacy_layout, "the pre-2.7 torch.export layout"),
}


def _load_and_run(path):
    """torch's own loader, then a forward pass: what verify did before (errors after the payload ran
    are expected; the marker tells whether it ran)."""
    try:
        torch.export.load(str(path)).module()(torch.zeros(1, 3, 32, 32))
    except Exception:  # noqa: BLE001
        pass


@pytest.mark.parametrize("payload", list(PT2_PAYLOADS))
def test_pt2_payloads_are_refused(tiny, tmp_path, payload):
    make, words = PT2_PAYLOADS[payload]
    marker = tmp_path / "marker"
    path = make(tiny / "tiny.pt2", tmp_path / "tiny.pt2", marker)
    (tmp_path / "tiny.safetensors").write_bytes((tiny / "tiny.safetensors").read_bytes())
    _refused(_cli("verify", tiny / "tiny.yaml", path), path, words)
    assert not marker.exists()
    _load_and_run(path)  # the payload is live: torch.export.load runs it
    assert marker.read_text() == "ran"


def test_pt2_payload_runs_with_trust_code(tiny, tmp_path):
    """--trust-code loads the file as torch does: the pickled weight's payload runs."""
    marker = tmp_path / "marker"
    path = _pickled_weight(tiny / "tiny.pt2", tmp_path / "tiny.pt2", marker)
    (tmp_path / "tiny.safetensors").write_bytes((tiny / "tiny.safetensors").read_bytes())
    res = _cli("verify", tiny / "tiny.yaml", path, "--trust-code")
    assert res.exit_code == 1 and marker.read_text() == "ran", res.output


def test_pt2_sample_inputs_are_never_unpickled(tiny, tmp_path):
    """torch.export.load falls back to an unsafe load of data/sample_inputs; verify never reads that
    entry (it loads a copy where it is empty), so a payload there cannot run, and the model verifies."""
    marker = tmp_path / "marker"
    path = _rewrite(tiny / "tiny.pt2", tmp_path / "tiny.pt2",
                    lambda rel, data: _evil(marker) if rel == "data/sample_inputs/model.pt" else data)
    (tmp_path / "tiny.safetensors").write_bytes((tiny / "tiny.safetensors").read_bytes())
    res = _cli("verify", tiny / "tiny.yaml", path)
    assert res.exit_code == 0 and "PASS: 1/1" in res.output, res.output
    assert not marker.exists()
    _load_and_run(path)
    assert marker.read_text() == "ran"


PT2_REFUSALS = {
    "compiled code": (lambda src, dst: _rewrite(src, dst, add={"data/aotinductor/model/model.so": b"\x7fELF"}),
                      "entry data/aotinductor/model/model.so is not one torch.export.save writes"),
    "operator outside the allow-list": (
        lambda src, dst: _rewrite(src, dst, lambda rel, data: data.replace(b"torch.ops.aten.relu_.default",
                                                                           b"torch.hub.load")),
        "target torch.hub.load calls an operator outside verify's allow-list"),
    "subgraph argument": (
        lambda src, dst: _rewrite(src, dst, lambda rel, data: data.replace(b'"as_none"', b'"as_graph"', 1)),
        "an argument of kind as_graph"),
}


@pytest.mark.parametrize("case", list(PT2_REFUSALS))
def test_pt2_outside_the_allow_list_is_refused(tiny, tmp_path, case):
    make, words = PT2_REFUSALS[case]
    path = make(tiny / "tiny.pt2", tmp_path / "tiny.pt2")
    _refused(_cli("verify", tiny / "tiny.yaml", path, "--weights", tiny / "tiny.safetensors"), path, words)


def test_pt2_bombs_are_refused_before_reading(tiny, tmp_path):
    """A member declaring a huge expansion, and a duplicate entry name: refused from the directory,
    with or without --trust-code (a matter of memory, not of code)."""
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/archive_format", b"pt2")
        z.writestr("m/models/model.json", b" " * (80 << 20))  # 80 MiB of spaces, deflated to ~80 KiB
    for extra in ((), ("--trust-code",)):
        res = _cli("verify", tiny / "tiny.yaml", bomb, "--weights", tiny / "tiny.safetensors", *extra)
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert f"error: {bomb}: entry models/model.json expands to 83,886,080 bytes" in res.output
    dup = _rewrite(tiny / "tiny.pt2", tmp_path / "dup.pt2", add={"models/model.json": b"{}"})
    res = _cli("verify", tiny / "tiny.yaml", dup, "--weights", tiny / "tiny.safetensors")
    assert res.exit_code == 1 and "a duplicate" in res.output, res.output


def test_our_pt2_passes_without_the_flag(tiny):
    with zipfile.ZipFile(tiny / "tiny.pt2") as z:  # convert writes no example inputs: no pickle at all
        assert [i.file_size for i in z.infolist() if "sample_inputs" in i.filename] == [0]
    res = _cli("verify", tiny / "tiny.yaml", tiny / "tiny.pt2")
    assert res.exit_code == 0 and "PASS: 1/1" in res.output, res.output


def test_pt2_expressions_follow_a_grammar():
    from resnet_spec.trust_pt2 import check_expr

    for ok in (SYMBOL, "Integer(-3)", "Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(-1))",
               "StrictLessThan(Symbol('s77', positive=True, integer=True), Integer(65537))",
               "FloorDiv(Symbol('s1'), 2)"):
        assert check_expr(ok) is None, ok
    for bad in ("__import__('os').system('true')", f"{SYMBOL}.__class__", "Pow(Integer(2), Integer(99999))",
                "Symbol('s0', evaluate=False)", "Symbol('Add')", "Add(" * 40 + "1" + ")" * 40, "Integer(1) + 1", "Symbol(s0)"):
        assert check_expr(bad) is not None, bad


# -- .py ---------------------------------------------------------------------------------------------------


def test_py_needs_the_flag(tiny, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "tiny.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + (tiny / "tiny.py").read_text())
    (tmp_path / "tiny.safetensors").write_bytes((tiny / "tiny.safetensors").read_bytes())
    _refused(_cli("verify", tiny / "tiny.yaml", path), path, "a Python source file runs its own code")
    assert not marker.exists()
    res = _cli("verify", tiny / "tiny.yaml", path, "--trust-code")
    assert res.exit_code == 0 and "PASS: 1/1" in res.output, res.output
    assert marker.read_text() == "ran"  # the flag runs it, as named


@pytest.mark.parametrize("code", ["0", "None", "'bye'"])
def test_a_py_exiting_is_an_error_not_a_pass(tiny, tmp_path, code):
    """SystemExit(0) inside a trusted .py made verify exit 0 with no report."""
    path = tmp_path / "tiny.py"
    path.write_text(f"raise SystemExit({code})\n")
    res = _cli("verify", tiny / "tiny.yaml", path, "--weights", tiny / "tiny.safetensors", "--trust-code")
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith(f"error: {path}: its code exited (SystemExit(") and "while loading" in lines[-1], \
        res.output


# -- .tflite --------------------------------------------------------------------------------------------------


def _tflite_with_op(path, custom_code):
    """A one-operator TFLite model whose operator is the custom op ``custom_code`` (a Select-TF op
    such as FlexWriteFile runs in tf.lite.Interpreter, verify's fallback when LiteRT is missing)."""
    fb = pytest.importorskip("ai_edge_litert.schema_py_generated")
    import flatbuffers
    import numpy as np

    model, sg, code, op = fb.ModelT(), fb.SubGraphT(), fb.OperatorCodeT(), fb.OperatorT()
    tensors = []
    for name in ("x", "y"):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array([1, 32, 32, 3], np.int32), fb.TensorType.FLOAT32, 0
        tensors.append(t)
    code.builtinCode, code.deprecatedBuiltinCode, code.customCode = fb.BuiltinOperator.CUSTOM, 32, custom_code
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [1], [op]
    model.version, model.subgraphs, model.operatorCodes, model.buffers = 3, [sg], [code], [fb.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def test_tflite_custom_operators_are_refused(tiny, tmp_path):
    path = _tflite_with_op(tmp_path / "tiny.tflite", "FlexWriteFile")
    _refused(_cli("verify", tiny / "tiny.yaml", path, "--weights", tiny / "tiny.safetensors"), path,
             "the custom operator 'FlexWriteFile'")


# -- SavedModel (TensorFlow in child processes only; about 15 s each on the 2-core machine) ---------------------

def test_savedmodel_side_effects_are_refused(tiny, tmp_path):
    script = textwrap.dedent("""
        import sys
        import tensorflow as tf

        out, marker = sys.argv[1:3]

        class Writer(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="input")])
            def serve(self, x):
                tf.io.write_file(marker, "ran")
                return {"logits": tf.zeros([tf.shape(x)[0], 10])}

        w = Writer()
        tf.saved_model.save(w, out, signatures={"serving_default": w.serve})
    """)
    marker, path = tmp_path / "marker", tmp_path / "writer"
    subprocess.run([sys.executable, "-c", script, str(path), str(marker)], check=True, capture_output=True)
    args = ("verify", tiny / "tiny.yaml", path, "--weights", tiny / "tiny.safetensors")
    _refused(_cli(*args), path, "runs op WriteFile")
    assert not marker.exists()
    res = _cli(*args, "--trust-code")  # runs the graph: the file is written, and the zero logits fail
    assert res.exit_code == 1 and marker.read_text() == "ran", res.output


_CONVERTER_STYLE = textwrap.dedent("""
    import sys
    import keras
    import tensorflow as tf
    import resnet_spec
    from resnet_spec.backends.keras import tf as ktf

    out, spec, weights = sys.argv[1:4]
    net = resnet_spec.load(open(spec).read())
    model = ktf.build(net, resnet_spec.load_weights(net, weights))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="args_0")])
    archive.write_out(out, verbose=False)
""")


def test_our_savedmodel_and_a_converters_pass_without_the_flag(tiny, tmp_path):
    """Ours (signature input 'input') and one named as nobuco and other converters name it ('args_0',
    output 'output_0'; verify used to call the signature positionally and crash)."""
    res = _cli("convert", tiny / "tiny.yaml", "--to", "tensorflow", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    other = tmp_path / "out" / "converted"
    subprocess.run([sys.executable, "-c", _CONVERTER_STYLE, str(other), str(tiny / "tiny.yaml"),
                    str(tiny / "tiny.safetensors")], check=True, capture_output=True)
    res = _cli("verify", tiny / "tiny.yaml", tmp_path / "out" / "tiny_savedmodel", other,
               "--weights", tiny / "tiny.safetensors")
    assert res.exit_code == 0 and "PASS: 2/2" in res.output, res.output
