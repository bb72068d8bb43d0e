"""Budgets on what a file someone else made declares (``resnet_spec/budgets.py``, README Limits), for
``import`` and ``--weights``: each hostile file is generated here (a few bytes to a few MB) and run through
the CLI in a child process under an address-space limit, checking the exit code, the one ``error:`` line
(naming the file and the limit), the peak memory of the command and its workers, the time, nothing written.

1. declared inputs: a fixed batch of 100,000 is never allocated (the proof runs its own, 2), a 2048x2048
   ONNX input is replaced by the import's own size, a .keras one refused before Keras builds it; the
   proof's cost at the spec's size is bounded (largest activation, multiply-adds);
2. .keras archives: deflate and HDF5 bombs, too many entries or members, a 100,000-layer config;
3. ONNX: nodes, tensor bytes (external data included), folding in total, dead nodes never run;
4. messages: names with control characters are quoted; an empty --name is a usage error.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import numpy as np
import pytest

from resnet_spec import budgets as B

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MIB, GIB = 1 << 20, 1 << 30
PEAK_LIMIT = 1536 * MIB  # the command and each of its workers
TINY = "extends: resnet20\nname: tiny\ndepth: 8\n"

_CHILD = ("import atexit, contextlib, io, json, resource, sys\n"
          "def peak():\n"
          "    own = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
          "    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
          "atexit.register(lambda: open(sys.argv[1], 'w').write(str(peak())))\n"
          "from resnet_spec.cli import main\n"
          "results = []\n"
          "for args in json.loads(sys.argv[2]):\n"
          "    err, out = io.StringIO(), io.StringIO()\n"
          "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):\n"
          "        try:\n"
          "            main(args, prog_name='resnet-spec')\n"
          "            code = 0\n"
          "        except SystemExit as exc:\n"
          "            code = exc.code\n"
          "    results.append([code, err.getvalue(), out.getvalue()])\n"
          "print(json.dumps(results))\n")


def _bounded(*commands, as_bytes=8 * GIB, seconds=60):
    """Run CLI commands in one child process (its workers inherit the address-space limit); returns the
    results ``[(exit code, stderr, stdout)]``. Asserts the peak RSS of the child and of every worker it
    waited for stays under :data:`PEAK_LIMIT`, and each command's share of the time under ``seconds``."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))

    start = time.monotonic()
    with tempfile.NamedTemporaryFile("r") as peak:
        argv = [sys.executable, "-c", _CHILD, peak.name, json.dumps([list(map(str, c)) for c in commands])]
        proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit, timeout=60 + seconds * len(commands))
        assert proc.returncode == 0, proc.stderr[-3000:]
        rss = int(peak.read().strip() or 0) * 1024
    elapsed = time.monotonic() - start
    assert 0 < rss < PEAK_LIMIT, f"peak RSS {rss / MIB:.0f} MiB"
    assert elapsed < seconds * len(commands), f"{elapsed:.0f} s"
    return json.loads(proc.stdout)


def _refused(result, *fragments) -> str:
    """The one ``error:`` line of a refused command (exit 1), holding every fragment."""
    code, err, _ = result
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def _import(path, out):
    return ["import", path, "-o", out]


def _weights(path, spec, out):  # --weights reads every source import reads, with the same checks
    return ["convert", spec, "--to", "onnx", "--weights", path, "-o", out]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


# -- ONNX files --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tiny_model_bytes() -> bytes:
    """A 3-block CIFAR ResNet (resnet20's family, depth 8) as this project's ONNX backend writes it."""
    import resnet_spec

    net = resnet_spec.load(TINY)
    weights = resnet_spec.init_weights(net, seed=0, random_bn=True)
    return resnet_spec.build(net, "onnx", weights=weights).SerializeToString()


def _tiny_onnx(path, dims=None, nodes=(), inits=()):
    """The tiny ResNet with its input declared ``dims`` (and its output's batch), extra nodes and
    initializers."""
    model = onnx.ModelProto.FromString(_tiny_model_bytes())
    if dims:
        for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim, dims):
            d.dim_value = v
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = dims[0]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    path.write_bytes(model.SerializeToString())
    return path


def _graph(path, nodes, inits=(), x_dims=(1, 3, 8, 8)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(list(nodes), "g", [x], [y], initializer=list(inits)),
                              opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def _proved(result, shape: str) -> str:
    code, err, out = result
    assert code == 0 and "PASS" in out and f"input {shape} (seeded normal)" in out, err + out
    return out


def test_a_declared_batch_of_100000_is_never_allocated(tmp_path):
    """The proof runs its own batch (2); the file's fixed batch is made symbolic for ONNX Runtime."""
    path = _tiny_onnx(tmp_path / "batch.onnx", [100_000, 3, 32, 32])
    [imported] = _bounded(_import(path, tmp_path / "o"))
    _proved(imported, "2x3x32x32")


def test_a_declared_2048_input_is_replaced_by_the_imports_own_size(tmp_path, tiny):
    """Import: the spec takes the default size (32 for a CIFAR stem), with a note; the graph's input
    is made symbolic for the proof. --weights: the spec's size is used, the file's never allocated."""
    path = _tiny_onnx(tmp_path / "big.onnx", [1, 3, 2048, 2048])
    imported, weights = _bounded(_import(path, tmp_path / "o"), _weights(path, tiny, tmp_path / "w"))
    out = _proved(imported, "1x3x32x32")
    assert f"declares a 2048x2048 input, over the import limit of {B.MAX_DECLARED_SIDE} px a side" in out
    import resnet_spec

    assert resnet_spec.load(str(tmp_path / "o" / "big.yaml")).input_shape == (3, 32, 32)
    assert weights[0] == 0, weights[1]


def test_nodes_that_do_not_lead_to_the_output_never_run(tmp_path):
    """A dangling ConstantOfShape of 4 GiB: too big to fold, ignored by the walk, and ONNX Runtime
    (which runs every node) would allocate it in the proof: the proof drops it."""
    shape = numpy_helper.from_array(np.array([32768, 32768], np.int64), "bomb_shape")
    path = _tiny_onnx(tmp_path / "dead.onnx", nodes=[helper.make_node("ConstantOfShape", ["bomb_shape"], ["dead"])],
                      inits=[shape])
    [imported] = _bounded(_import(path, tmp_path / "o"))
    _proved(imported, "2x3x32x32")


# slow: convert writes the .keras in a TensorFlow worker, import reads and runs it in two more
@pytest.mark.slow
def test_a_keras_models_declared_batch_is_never_allocated(tmp_path, tiny):
    """A .keras file whose input declares a batch of 100,000: the proof runs its own batch of 2."""
    from resnet_spec.backends.keras import tf as tf_backend

    if tf_backend.available() is not None:  # (asks without importing TensorFlow here)
        pytest.skip(str(tf_backend.available()))
    [(code, err, _)] = _bounded(["convert", tiny, "--to", "tensorflow", "-o", tmp_path / "c"], seconds=120)
    assert code == 0, err
    src, path = tmp_path / "c" / "tiny.keras", tmp_path / "batch.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                data = data.replace(b'"batch_shape": [null, 32, 32, 3]', b'"batch_shape": [100000, 32, 32, 3]')
                assert b"100000" in data
            zout.writestr(info, data)
    [imported] = _bounded(_import(path, tmp_path / "o"), seconds=120)
    _proved(imported, "2x3x32x32")


def test_the_proofs_cost_is_bounded(tmp_path):
    """--input-size 4096 on a CIFAR ResNet: one activation of 1 GiB per image; refused before any worker."""
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    [res] = _bounded(["import", path, "-o", tmp_path / "o", "--input-size", "4096"], as_bytes=4 * GIB)
    _refused(res, f"error: {path}: at 4096x4096 one image's largest activation takes 1,024 MiB, over the import "
                  f"limit of {B.MAX_PROOF_ACTIVATION_BYTES >> 20} MiB; pass --input-size")
    assert not (tmp_path / "o").exists()


def test_the_proofs_multiply_adds_and_batch_are_bounded():
    import resnet_spec

    why = B.proof_refusal(resnet_spec.load("extends: resnet152\ninput: {size: 1024}"))
    assert why and "G multiply-adds, over the import limit of 100 G" in why, why
    assert B.proof_refusal(resnet_spec.load("resnet152")) is None
    assert [B.proof_batch(d) for d in (None, 0, 1, 2, 3, 100_000)] == [2, 2, 1, 2, 2, 2]


def test_onnx_node_budget(tmp_path, tiny):
    n = B.ONNX_MAX_NODES + 1
    nodes = [helper.make_node("Relu", [f"r{i}" if i else "x"], [f"r{i + 1}" if i + 1 < n else "y"]) for i in range(n)]
    path = _graph(tmp_path / "deep.onnx", nodes)
    why = f"the graph has {n:,} nodes; import reads graphs of at most {B.ONNX_MAX_NODES:,}"
    for res in _bounded(_import(path, tmp_path / "o"), _weights(path, tiny, tmp_path / "w"), as_bytes=2 * GIB):
        _refused(res, f"error: {path}: {why}")
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def _declared(name, dims, external=None):
    """A float tensor declaring ``dims`` and holding no data (or data in ``external``)."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    if external is not None:
        t.data_location = TensorProto.EXTERNAL
        for k, v in external.items():
            t.external_data.add(key=k, value=str(v))
    return t


ADD = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]


def test_onnx_tensor_byte_budget(tmp_path, tiny):
    """Declared dims with no data, and a sparse 2 GiB external file (a few bytes on disk): refused from
    the declarations, before a byte of tensor data is read."""
    big = _graph(tmp_path / "big.onnx", ADD, [_declared("w", [B.ONNX_MAX_TENSOR_BYTES // 4 + 1])])
    with open(tmp_path / "w.bin", "wb") as fh:
        fh.truncate(2 * GIB)
    sparse = _graph(tmp_path / "sparse.onnx", ADD, [_declared("w", [1], {"location": "w.bin"})])
    why = f"its tensors declare more than {B.ONNX_MAX_TENSOR_BYTES:,} bytes (at 'w')"
    results = _bounded(_import(big, tmp_path / "o"), _import(sparse, tmp_path / "o"),
                       _weights(sparse, tiny, tmp_path / "w"), as_bytes=2 * GIB)
    for res, path in zip(results, (big, sparse, sparse)):
        _refused(res, f"error: {path}: {why}")


def test_onnx_tensor_budget_is_the_callers_max_params(tmp_path):
    """``import --max-onnx-params N`` sets the budget: a file holding 1,000 float32 values is refused at N = 999 (the
    message names the flag) and read at N = 1,000 (then refused for what it is, not for its size)."""
    from conftest import cli

    from resnet_spec.errors import ResNetSpecError
    from resnet_spec.importers import read_source

    path = _graph(tmp_path / "w.onnx", ADD, [numpy_helper.from_array(np.ones(1000, np.float32), "w")])
    with pytest.raises(ResNetSpecError, match="at most 999 float32 parameters .*pass --max-onnx-params N"):
        read_source(str(path), max_params=999)
    with pytest.raises(ResNetSpecError, match="no residual connection"):
        read_source(str(path), max_params=1000)
    res = cli("import", path, "--max-onnx-params", "999", "-o", tmp_path / "o")
    assert res.exit_code == 1 and "at most 999 float32 parameters (0 MiB; pass --max-onnx-params N" in res.output, res.output
    res = cli("import", path, "--max-onnx-params", "0", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--max-onnx-params" in res.output, res.output


@pytest.mark.parametrize("where", ["/dev/zero", "../outside.bin", "sub/../../outside.bin"])
def test_onnx_external_data_stays_beside_the_model(tmp_path, where):
    (tmp_path / "outside.bin").write_bytes(bytes(64))
    (tmp_path / "m").mkdir()
    path = _graph(tmp_path / "m" / "m.onnx", ADD, [_declared("w", [4], {"location": where})])
    [res] = _bounded(_import(path, tmp_path / "o"), as_bytes=2 * GIB)
    _refused(res, f"error: {path}: tensor 'w' keeps its data in {where}, not a file beside the model")


def test_constant_folding_has_one_budget_for_the_graph(tmp_path):
    """Thirty ConstantOfShape [4096, 4096]: each under the per-value cap (2^24 elements), 2 GiB
    together; folding stops at the graph's budget, the rest stays in the graph (and is refused)."""
    shape = numpy_helper.from_array(np.array([4096, 4096], np.int64), "s")
    nodes = [helper.make_node("ConstantOfShape", ["s"], [f"c{i}"], name=f"bomb{i}") for i in range(30)]
    path = _graph(tmp_path / "fold.onnx", nodes + [helper.make_node("Add", ["x", "c0"], ["y"], name="add")], [shape])
    [res] = _bounded(_import(path, tmp_path / "o"), as_bytes=3 * GIB)
    _refused(res, f"error: {path}: ")


def test_an_onnx_file_over_2_gib_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as fh:
        fh.truncate(B.ONNX_MAX_FILE_BYTES + 1)
    [res] = _bounded(_import(path, tmp_path / "o"), as_bytes=2 * GIB)
    _refused(res, f"error: {path}: file is {B.ONNX_MAX_FILE_BYTES + 1:,} bytes; the limit is {B.ONNX_MAX_FILE_BYTES:,}")


# -- .keras archives ---------------------------------------------------------------------------------


_ZEROS_MIB = zlib.compressobj(9, zlib.DEFLATED, -15)
#: raw deflate of 1 MiB of zeros ending in a full flush: it depends on nothing before it, so repeating
#: it n times (then the final block) is a valid stream of n MiB of zeros, ~1 KiB per MiB
_BLOCK = _ZEROS_MIB.compress(bytes(MIB)) + _ZEROS_MIB.flush(zlib.Z_FULL_FLUSH)
_FINAL = _ZEROS_MIB.flush()


@functools.lru_cache(maxsize=None)
def _zeros_crc(mib: int) -> int:
    crc, block = 0, bytes(64 * MIB)
    for _ in range(mib // 64):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(bytes((mib % 64) * MIB), crc)


def _member(name: str, data: bytes = b"", zeros_mib: int = 0) -> tuple:
    """(name, deflated bytes, crc, size): ``data``, or ``zeros_mib`` MiB of zeros (a deflate bomb)."""
    if zeros_mib:
        return name, _BLOCK * zeros_mib + _FINAL, _zeros_crc(zeros_mib), zeros_mib * MIB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, c.compress(data) + c.flush(), zlib.crc32(data), len(data)


def _zip(path, members):
    """A zip archive of deflated members (sizes under 4 GiB: no zip64), written as zipfile writes one."""
    local, central = bytearray(), bytearray()
    for name, packed, crc, size in members:
        raw = name.encode()
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(packed), size, len(raw), 0)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(packed), size,
                               len(raw), 0, 0, 0, 0, 0, len(local)) + raw
        local += head + raw + packed
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    with zipfile.ZipFile(path) as z:  # what Python's zipfile (and so Keras) reads: the real sizes
        assert [i.file_size for i in z.infolist()] == [m[3] for m in members]
    return path


def _config(relus: int = 1, side: int = 32) -> bytes:
    """A Keras 3 functional model that Keras loads: an input of ``side`` x ``side`` and ``relus`` ReLUs."""
    def tensor(name):
        return {"class_name": "__keras_tensor__", "config": {"shape": [None, side, side, 3], "dtype": "float32",
                                                             "keras_history": [name, 0, 0]}}

    layers = [{"module": "keras.layers", "class_name": "InputLayer", "name": "input", "registered_name": None,
               "config": {"batch_shape": [None, side, side, 3], "dtype": "float32", "name": "input"},
               "inbound_nodes": []}]
    for i in range(relus):
        layers.append({"module": "keras.layers", "class_name": "ReLU", "config": {"name": f"r{i}"}, "name": f"r{i}",
                       "registered_name": None, "inbound_nodes": [{"args": [tensor(layers[-1]["name"])], "kwargs": {}}]})
    return json.dumps({"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
                       "config": {"name": "m", "layers": layers, "input_layers": ["input", 0, 0],
                                  "output_layers": [layers[-1]["name"], 0, 0]}}).encode()


@functools.lru_cache(maxsize=1)
def _no_weights() -> bytes:
    """The model.weights.h5 of a model without weights, as Keras writes it (its groups only)."""
    import io

    h5py = pytest.importorskip("h5py")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h:
        h.create_group("layers")
        h.create_group("vars")
    return buf.getvalue()


def _keras(path, config=None, weights_mib=0, config_mib=0, extra=()):
    """A .keras archive Keras would load (a config of ReLUs, no weights), or with a deflate bomb of
    ``config_mib`` / ``weights_mib`` MiB of zeros in config.json / model.weights.h5."""
    config = _member("config.json", zeros_mib=config_mib) if config_mib else _member("config.json", config or _config())
    weights = _member("model.weights.h5", zeros_mib=weights_mib) if weights_mib else \
        _member("model.weights.h5", _no_weights())
    meta = _member("metadata.json", json.dumps({"keras_version": "3.15.1"}).encode())
    return _zip(path, [meta, config, weights, *(_member(name, bytes(MIB)) for name in extra)])


KERAS_CASES = {
    "weights bomb": (lambda: dict(weights_mib=3072), "model.weights.h5 expands to 3,221,225,472 bytes from "),
    "config bomb": (lambda: dict(config_mib=3072), "config.json expands to 3,221,225,472 bytes from "),
    "100,000 layers": (lambda: dict(config=_config(relus=100_000)),
                       f"config.json declares more than {B.KERAS_MAX_LAYERS:,} layers"),
    "an assets member": (lambda: dict(extra=["assets/vocab.txt"]),  # Keras would extract the archive to disk
                         "import reads .keras archives of config.json, metadata.json and model.weights.h5 (as Keras "
                         "writes a model without assets); it holds assets/vocab.txt"),
    "2048x2048 input": (lambda: dict(config=_config(side=2048)),
                        f"layer input declares a 2048x2048 input; import reads .keras models declared at most "
                        f"{B.MAX_DECLARED_SIDE} px a side"),
}


def test_keras_archives_are_checked_before_keras_loads_them(tmp_path, tiny):
    """Each case through import and --weights, refused in the command's process: Keras (its worker)
    never starts, nothing is inflated past a member's declared size."""
    commands, expect = [], []
    for i, (case, (kwargs, why)) in enumerate(KERAS_CASES.items()):
        path = _keras(tmp_path / f"case{i}.keras", **kwargs())
        commands += [_import(path, tmp_path / "o"), _weights(path, tiny, tmp_path / "w")]
        expect += [f"error: {path}: {why}"] * 2
        if "bomb" in case:  # inspect shares the archive checks (resnet_spec/archive.py)
            commands.append(["inspect", path])
            expect.append(f"error: {path}: {why}")
    for res, want in zip(_bounded(*commands, as_bytes=2 * GIB, seconds=20), expect):
        _refused(res, want)
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_keras_archive_entries_are_counted_from_the_end_record(tmp_path):
    path = _zip(tmp_path / "many.keras", [_member("config.json", _config())] +
                [_member(f"assets/{i}") for i in range(B.KERAS_MAX_ENTRIES)])
    [res] = _bounded(_import(path, tmp_path / "o"), as_bytes=2 * GIB, seconds=20)
    _refused(res, f"error: {path}: the archive declares {B.KERAS_MAX_ENTRIES + 1:,} entries")


def _h5(path, external=None):
    """A weights HDF5 file whose one dataset declares 16 GiB and stores nothing (read, it is its fill
    value: Keras reads a dataset whole before it compares shapes), or keeps 16 bytes in ``external``."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as h:
        if external:
            h.create_dataset("layers/conv1_conv/vars/0", shape=(4,), dtype="float32", external=[(external, 0, 16)])
        else:
            h.create_dataset("layers/conv1_conv/vars/0", shape=(65536, 65536), dtype="float32")
    return path


def test_hdf5_weights_are_checked_before_keras_reads_them(tmp_path):
    """keras:NAME=FILE.weights.h5, and model.weights.h5 inside a .keras archive (stored, as Keras writes
    it, and compressed): a dataset declaring 16 GiB in a 4 KiB file, and one kept in /etc/hostname."""
    bomb, ext = _h5(tmp_path / "bomb.weights.h5"), _h5(tmp_path / "ext.weights.h5", "/etc/hostname")
    size = os.path.getsize(bomb)
    in_zip = {}
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        in_zip[method] = tmp_path / f"m{method}.keras"
        with zipfile.ZipFile(in_zip[method], "w", method) as z:
            z.writestr("config.json", _config())
            z.writestr("metadata.json", "{}")
            z.write(bomb, "model.weights.h5")
    sources = [f"keras:ResNet50={bomb}", f"keras:ResNet50={ext}", *in_zip.values()]
    results = _bounded(*[_import(src, tmp_path / "o") for src in sources], as_bytes=2 * GIB, seconds=20)
    why = (f"its datasets declare more than {B.KERAS_MEMBER_MIN_BYTES:,} bytes (at layers/conv1_conv/vars/0) in "
           f"{size:,} stored; the limit is {B.KERAS_MEMBER_RATIO} times the bytes stored")
    _refused(results[0], f"error: {bomb}: {why}")
    _refused(results[1], f"error: {ext}: dataset layers/conv1_conv/vars/0 keeps its data outside the file")
    for res, path in zip(results[2:], in_zip.values()):
        _refused(res, f"error: {path}: model.weights.h5: its datasets declare more than")
    assert not (tmp_path / "o").exists()


# -- messages ------------------------------------------------------------------------------------------


def test_names_with_control_characters_are_quoted(tmp_path):
    """The audit's case: the name was echoed raw, so its newline printed a second ``error:`` line."""
    n = B.ONNX_MAX_NODES + 1
    nodes = [helper.make_node("Relu", [f"r{i}" if i else "x"], [f"r{i + 1}" if i + 1 < n else "y"]) for i in range(n)]
    odd = _graph(tmp_path / "m\nerror: x\x1b[2J.onnx", nodes)
    results = _bounded(["import", "timm:resnet18\nerror: x", "-o", tmp_path / "o"], _import(odd, tmp_path / "o"),
                       as_bytes=8 * GIB)
    _refused(results[0], "error: 'timm:resnet18\\nerror: x': ")
    _refused(results[1], f"error: {str(odd)!r}: the graph has {n:,} nodes")


def test_an_empty_name_is_a_usage_error(tmp_path):
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    [(code, err, _)] = _bounded(["import", path, "--name", "", "-o", tmp_path / "o"], as_bytes=4 * GIB)
    assert code == 2 and "Invalid value for --name: an empty name" in err, err
    assert not (tmp_path / "o").exists()
