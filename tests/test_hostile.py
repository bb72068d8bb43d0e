"""Hostile input, round 3 (a security audit): files other people made, generated here from a few bytes.

Every case goes through the CLI's public entry (in process, click's CliRunner, unless reading the input
would cost the test process its memory) and ends in exit 1 with exactly one ``error:`` line naming the
file and the problem: no traceback, no hang (a SIGALRM guard turns a regression that blocks into a
failure; the worker pools are killed by it), nothing read outside the input, bounded memory.

1. a spec embedded in a file (safetensors, ONNX, .pt2, .keras, .tflite metadata) may ``extends`` only
   a zoo entry, never a path; what ``convert`` embeds is the merged spec, which needs no other file;
2. ONNX graphs with a cycle (a self-loop, two nodes feeding each other) are refused, not walked forever;
3. special files (FIFO, device, socket, a link to one) are refused before they are opened, by every
   command that reads a file;
4. malformed ONNX constants and .keras configs are one line, not a traceback;
5. a ``keras:NAME=FILE`` weights file that is a device says so.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import resnet_spec
from resnet_spec.cli import main
from resnet_spec.inspect_files import META_NAME, META_SPEC

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MIB = 1 << 20
FIFO, CHAR = "is a FIFO (named pipe), not a regular file", "is a character device, not a regular file"


class _Hang(BaseException):
    """Raised by the hang guard: a BaseException, so that the CLI's handlers let it through and a worker
    pool being waited on is killed (resnet_spec.isolate), and the test fails instead of blocking."""


@pytest.fixture(autouse=True)
def _hang_guard():
    def fire(_sig, _frame):
        raise _Hang("the command did not finish in 150 s: it blocks (reading a FIFO?) or loops")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(150)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output, res.output
    return res


def _error(res, *fragments) -> str:
    """The one ``error:`` line of a failed command (exit 1), holding every fragment."""
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# -- files carrying a spec ---------------------------------------------------------------------------


def _onnx_model(nodes, inits=(), props=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(inits)),
                              opset_imports=[helper.make_opsetid("", 17)])
    if props:
        helper.set_model_props(model, props)
    return model


def _write_onnx(path, nodes, inits=()):
    path.write_bytes(_onnx_model(nodes, inits).SerializeToString())
    return path


def _with_safetensors(path, spec):
    from safetensors.numpy import save_file

    save_file({"fc.bias": np.zeros(7, np.float32)}, str(path), metadata={META_NAME: "x", META_SPEC: spec})


def _with_onnx(path, spec):
    model = _onnx_model([helper.make_node("Relu", ["x"], ["y"])], props={META_NAME: "x", META_SPEC: spec})
    path.write_bytes(model.SerializeToString())


def _with_pt2(path, spec):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/models/model.json", "{}")
        z.writestr(f"m/extra/{META_NAME}", "x")
        z.writestr(f"m/extra/{META_SPEC}", spec)


def _keras_archive(path, config, meta=None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0", **(meta or {})}))
    return path


_KERAS_INPUT = {"name": "input", "class_name": "InputLayer", "config": {"batch_shape": [None, 8, 8, 3],
                                                                        "dtype": "float32"}}


def _with_keras(path, spec):
    _keras_archive(path, {"class_name": "Functional", "config": {
        "name": "m", "layers": [_KERAS_INPUT], "input_layers": [["input", 0, 0]],
        "output_layers": [["input", 0, 0]]}}, {META_NAME: "x", META_SPEC: spec})


def _with_tflite(path, spec):
    fb = pytest.importorskip("ai_edge_litert.schema_py_generated")
    import flatbuffers

    model, sg, tensor = fb.ModelT(), fb.SubGraphT(), fb.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = "x", [1, 8, 8, 3], fb.TensorType.FLOAT32, 0
    sg.tensors, sg.inputs, sg.outputs, sg.operators = [tensor], [0], [0], []
    model.version, model.subgraphs, model.operatorCodes, model.buffers = 3, [sg], [], [fb.BufferT()]
    model.metadata = []
    for key, text in ((META_NAME, "x"), (META_SPEC, spec)):
        buf, meta = fb.BufferT(), fb.MetadataT()
        buf.data = np.frombuffer(text.encode("utf-8"), np.uint8)
        meta.name, meta.buffer = key, len(model.buffers)
        model.buffers.append(buf)
        model.metadata.append(meta)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


WITH_SPEC = {".safetensors": _with_safetensors, ".onnx": _with_onnx, ".pt2": _with_pt2, ".keras": _with_keras,
             ".tflite": _with_tflite}


@pytest.fixture
def reads(monkeypatch):
    """Every spec file read (resnet_spec.yamlio.read_text), in order."""
    from resnet_spec import yamlio

    seen, real = [], yamlio.read_text
    monkeypatch.setattr(yamlio, "read_text", lambda path: seen.append(os.path.abspath(path)) or real(path))
    return seen


def _outside_zoo(paths) -> list:
    from resnet_spec.spec import zoo_path

    zoo = os.path.dirname(os.path.abspath(zoo_path("resnet20")))
    return [p for p in paths if os.path.dirname(p) != zoo]


@pytest.mark.parametrize("suffix", list(WITH_SPEC))
@pytest.mark.parametrize("extends", ["absolute", "relative", "bare", "list"])
def test_an_embedded_spec_extends_only_the_zoo(tmp_path, monkeypatch, reads, suffix, extends):
    """The audit's case: an embedded ``extends: /etc/passwd`` was followed. Here the target is a valid
    spec, so following it would succeed: the refusal, and no read, show it is not followed."""
    secret = tmp_path / "secret" / "secret.yaml"
    secret.parent.mkdir()
    secret.write_text("extends: resnet20\nname: secret\n")
    monkeypatch.chdir(secret.parent)  # a relative name would resolve to the secret
    value = {"absolute": str(secret), "relative": "../secret/secret.yaml", "bare": "secret.yaml",
             "list": "[resnet20]"}[extends]
    path = tmp_path / f"m{suffix}"
    WITH_SPEC[suffix](path, f"extends: {value}\nname: emb\n")
    shown = repr(value) if extends != "list" else "['resnet20']"
    _error(_cli("inspect", path), f"error: {path}: the embedded spec is refused: extends: {shown} is not a zoo "
                                  "entry; a spec embedded in a file may extend only a zoo entry, never a path")
    assert not _outside_zoo(reads), reads


def test_an_embedded_spec_is_yaml_text_never_a_path(tmp_path, reads):
    """Embedded text that looks like a path (no newline, no colon) was once loaded as one."""
    secret = tmp_path / "secret.yaml"
    secret.write_text("extends: resnet20\nname: secret\n")
    path = tmp_path / "m.safetensors"
    _with_safetensors(path, str(secret))
    res = _cli("inspect", path)
    assert res.exit_code == 0 and "matches:    no: the embedded spec does not load" in res.output, res.output
    assert "a spec must be a mapping of fields, got string" in res.output
    assert not reads, reads


def test_an_embedded_spec_may_extend_a_zoo_entry(tmp_path, reads):
    from safetensors.numpy import save_file

    text = "extends: resnet20\nname: emb\nhead: {classes: 7}\n"
    net = resnet_spec.load(text)
    path = tmp_path / "m.safetensors"
    save_file({t.name: np.zeros(t.shape, np.float32) for t in net.tensors()}, str(path),
              metadata={META_NAME: "emb", META_SPEC: text})
    res = _cli("inspect", path)
    assert res.exit_code == 0 and "matches:    yes" in res.output, res.output
    assert reads and not _outside_zoo(reads), reads


def test_convert_embeds_a_self_contained_spec(tmp_path):
    """A spec extending a file that extends the zoo: what convert writes into its outputs is the merged
    spec, with no ``extends`` left, so it loads from the file alone (to the same network)."""
    from resnet_spec.resolve import resolve
    from resnet_spec.spec import load_embedded

    (tmp_path / "base.yaml").write_text("extends: resnet20\nname: base20\nhead: {classes: 7}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child20\ninput: {size: 16}\n")
    res = _cli("convert", tmp_path / "child.yaml", "--to", "onnx", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    want = resnet_spec.load(str(tmp_path / "child.yaml"))
    for name in ("child20.onnx", "child20.safetensors"):
        res = _cli("inspect", "--json", tmp_path / "out" / name)
        assert res.exit_code == 0, res.output
        text = json.loads(res.output)["spec_yaml"]
        assert "extends" not in text and "base.yaml" not in text, text
        assert resolve(load_embedded(text, name)) == want


# -- ONNX graphs ---------------------------------------------------------------------------------------


CYCLES = {
    "self-loop": ([helper.make_node("Relu", ["r"], ["r"], name="loop"),
                   helper.make_node("Add", ["x", "r"], ["y"], name="add")], "node 'loop' (Relu)"),
    "two nodes": ([helper.make_node("Relu", ["b"], ["a"], name="A"), helper.make_node("Relu", ["a"], ["b"], name="B"),
                   helper.make_node("Add", ["x", "a"], ["y"], name="add")], "node 'A' (Relu)"),
}


@pytest.mark.parametrize("case", list(CYCLES))
def test_onnx_cycles_are_refused(tmp_path, case):
    nodes, node = CYCLES[case]
    path = _write_onnx(tmp_path / "cycle.onnx", nodes)
    why = "its output feeds back into its own input (a cycle in the graph); an ONNX graph is acyclic"
    _error(_cli("import", path, "-o", tmp_path / "imp"), f"error: {path}: {node}: {why}")
    _error(_cli("convert", "resnet20", "--to", "onnx", "--weights", path, "-o", tmp_path / "conv"),
           f"error: {path}: {node}: {why}")
    assert not (tmp_path / "imp").exists() and not (tmp_path / "conv").exists()


def test_malformed_onnx_constants_are_one_line(tmp_path):
    value = helper.make_tensor("v", TensorProto.FLOAT, [2], [1.0, 2.0])
    value.dims[:] = [2, 3]  # six elements declared, two stored
    bad_dims = _write_onnx(tmp_path / "dims.onnx", [helper.make_node("Constant", [], ["c"], value=value, name="const"),
                                                    helper.make_node("Add", ["x", "c"], ["y"], name="add")])
    _error(_cli("import", bad_dims, "-o", tmp_path / "o1"),
           f"error: {bad_dims}: node 'const' (Constant): its value cannot be read (ValueError: ")
    text = helper.make_tensor("w", TensorProto.STRING, [1, 1, 1, 1], [b"hello"])
    strings = _write_onnx(tmp_path / "strings.onnx", [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["c", "r"], ["y"], name="add")], [text])
    _error(_cli("import", strings, "-o", tmp_path / "o2"),
           f"error: {strings}: node 'conv' (Conv): input 'w' holds string data; expected numbers")


_PEAK = ("import atexit, contextlib, io, json, sys\n"
         "atexit.register(lambda: open(sys.argv[1], 'w').write(\n"
         "    open('/proc/self/status').read().split('VmHWM:')[1].split()[0]))\n"
         "from resnet_spec.cli import main\n"
         "results = []\n"
         "for args in json.loads(sys.argv[2]):\n"
         "    err = io.StringIO()\n"
         "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
         "        try:\n"
         "            main(args, prog_name='resnet-spec')\n"
         "            code = 0\n"
         "        except SystemExit as exc:\n"
         "            code = exc.code\n"
         "    results.append([code, err.getvalue()])\n"
         "print(json.dumps(results))\n")


def _bounded(*commands, as_bytes=1 << 30):
    """Run CLI commands in one child process under an address-space limit; (results, peak RSS in bytes),
    a result being (exit code, stderr). For inputs whose regression would read without bound."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))

    with tempfile.NamedTemporaryFile("r") as peak:
        proc = subprocess.run([sys.executable, "-c", _PEAK, peak.name, json.dumps([list(map(str, c)) for c in commands])],
                              capture_output=True, text=True, preexec_fn=limit, timeout=120)  # a hang guard
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), int(peak.read().strip() or 0) * 1024


def test_a_constant_folding_bomb_is_left_unfolded(tmp_path):
    """``ConstantOfShape([16384, 16384])``: a few bytes asking for 1 GiB; folding it would allocate it."""
    shape = numpy_helper.from_array(np.array([16384, 16384], np.int64), "shape")
    path = _write_onnx(tmp_path / "bomb.onnx", [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="bomb"),
                                                helper.make_node("Add", ["x", "big"], ["y"], name="add")], [shape])
    [(code, err)], rss = _bounded(["import", path, "-o", tmp_path / "o"], as_bytes=4 << 30)
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {path}: "), err
    assert 0 < rss < 512 * MIB, rss


# -- .keras configs --------------------------------------------------------------------------------------


def _model(layers, **extra):
    return {"class_name": "Functional", "config": {"name": "m", "layers": layers, **extra}}


KERAS_CONFIGS = {
    "nested 100000 deep": ("[" * 100_000 + "]" * 100_000, "(its JSON is nested too deeply)"),
    "layer without class_name": (_model([{"name": "a"}]), "(config.json: layer 0 has no class_name string)"),
    "layers that are integers": (_model([1, 2, 3]), "(config.json: layer 0 is an integer, not a mapping)"),
    "layers not a list": (_model({"a": 1}), "(config.json: no config.layers list)"),
    "a list at the top": ([1], "(config.json: no config.layers list)"),
    "a name that is a list": (_model([{"name": ["a"], "class_name": "Dense"}]), "layer 0 has no name string"),
    "input_layers an integer": (_model([_KERAS_INPUT], input_layers=5),
                                "(config.json: input_layers is not [name, 0, 0] or a list of them)"),
    "an empty output entry": (_model([_KERAS_INPUT], output_layers=[[]]),
                              "(config.json: output_layers is not [name, 0, 0] or a list of them)"),
}


@pytest.mark.parametrize("case", list(KERAS_CONFIGS))
def test_malformed_keras_configs_are_one_line(tmp_path, case):
    config, why = KERAS_CONFIGS[case]
    path = _keras_archive(tmp_path / "m.keras", config)
    _error(_cli("inspect", path), f"error: {path}: not a Keras .keras archive ", why)


def test_keras_metadata_of_the_wrong_type_is_one_line(tmp_path):
    path = _keras_archive(tmp_path / "m.keras", _model([_KERAS_INPUT]), {META_SPEC: {"extends": "/etc/passwd"}})
    _error(_cli("inspect", path), f"error: {path}: metadata.json: {META_SPEC} is dict, not text")
    deep = {"keras_version": "3", "x": json.loads("[" * 500 + "]" * 500)}  # shown neither as text nor JSON
    path = _keras_archive(tmp_path / "deep.keras", _model([_KERAS_INPUT]), deep)
    assert _cli("inspect", "--json", path).exit_code == 0


# -- special files -----------------------------------------------------------------------------------------


@pytest.fixture
def special(tmp_path):
    """``make(name, kind)``: a FIFO, a link to /dev/null (a device that cannot eat memory if it is read
    after all), a link to a FIFO, or a socket, under ``name``."""
    made = []

    def make(name, kind):
        path = tmp_path / name
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "devlink":
            path.symlink_to("/dev/null")
        elif kind == "fifolink":
            os.mkfifo(tmp_path / f"target-{name}")
            path.symlink_to(tmp_path / f"target-{name}")
        else:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            made.append(sock)
        return path

    yield make
    for sock in made:
        sock.close()


WHY = {"fifo": FIFO, "devlink": CHAR, "fifolink": FIFO, "socket": "is a socket, not a regular file"}


@pytest.mark.parametrize("kind", list(WHY))
@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".keras", ".pt2", ".py"])
def test_verify_refuses_special_files(special, kind, suffix):
    path = special(f"m{suffix}", kind)
    _error(_cli("verify", "resnet20", path), f"error: {path}: {WHY[kind]}")


def test_verify_refuses_a_savedmodel_holding_a_fifo(tmp_path, special):
    folder = tmp_path / "sm"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    os.mkfifo(folder / "variables" / "variables.index")
    _error(_cli("verify", "resnet20", folder), f"error: {folder / 'variables' / 'variables.index'}: {FIFO}")


#: (command, the suffixes of the files it reads)
READERS = {"import": (".onnx", ".keras", ".pth", ".safetensors"),
           "convert --weights": (".onnx", ".keras", ".h5", ".pth", ".safetensors"),
           "inspect": (".onnx", ".keras", ".pth", ".safetensors", ".pt2", ".tflite")}


@pytest.mark.parametrize("kind", ["fifo", "devlink"])
@pytest.mark.parametrize("command,suffix", [(c, s) for c, suffixes in READERS.items() for s in suffixes])
def test_every_reader_refuses_special_files(tmp_path, special, kind, command, suffix):
    path = special(f"m{suffix}", kind)
    args = {"import": ["import", path, "-o", tmp_path / "o"], "inspect": ["inspect", path],
            "convert --weights": ["convert", "resnet20", "--to", "onnx", "--weights", path, "-o", tmp_path / "o"]}
    line = _error(_cli(*args[command]), f"error: {path}: {WHY[kind]}")
    assert not (tmp_path / "o").exists(), line


@pytest.mark.parametrize("command", ["import", "convert"])
@pytest.mark.parametrize("kind", ["fifo", "devlink", "missing"])
def test_keras_weights_that_are_not_a_file_say_what_they_are(tmp_path, special, command, kind):
    path = tmp_path / "w.weights.h5" if kind == "missing" else special("w.weights.h5", kind)
    args = ["import", f"keras:ResNet50={path}", "-o", tmp_path / "o"] if command == "import" else \
        ["convert", "resnet50", "--to", "onnx", "--weights", f"keras:ResNet50={path}", "-o", tmp_path / "o"]
    _error(_cli(*args), f"error: {path}: {WHY.get(kind, 'no such weights file')}")


def test_links_to_dev_zero_are_refused_in_bounded_memory(tmp_path):
    """The audit's cases, in a child under a 1 GiB address-space limit (a regression reads /dev/zero)."""
    links = {}
    for suffix in (".onnx", ".keras", ".pt2", ".tflite"):
        links[suffix] = tmp_path / f"zero{suffix}"
        links[suffix].symlink_to("/dev/zero")
    commands = [["verify", "resnet20", p] for p in links.values()] + [
        ["import", links[".onnx"], "-o", tmp_path / "o"], ["inspect", links[".keras"]],
        ["import", "keras:ResNet50=/dev/zero", "-o", tmp_path / "o"]]
    results, rss = _bounded(*commands)
    paths = list(links.values()) + [links[".onnx"], links[".keras"], "/dev/zero"]
    for (code, err), path in zip(results, paths):
        assert code == 1 and err == f"error: {path}: {CHAR}\n", err
    assert 0 < rss < 512 * MIB, rss
