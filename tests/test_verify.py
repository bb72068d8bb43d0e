"""``resnet-spec verify``: every file ``convert`` writes passes in its runtime; a wrong file fails and
names where it diverges; bad input is one line and exit 1. Also ``convert --dtype float16`` and
``--to tflite`` (whose files are checked here through verify). TensorFlow and LiteRT run only in
verify's and convert's worker processes."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from resnet_spec.cli import main  # noqa: E402

SPEC = "resnet20"


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def _verify(*args):
    res = _cli("verify", *args)
    assert "Traceback" not in res.output, res.output
    return res


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    res = _cli("convert", SPEC, "-o", str(d / "all"), "--to", "torch,onnx,tensorflow,tflite", "--seed", "3")
    assert res.exit_code == 0, res.output
    res = _cli("convert", SPEC, "-o", str(d / "f16"), "--to", "onnx", "--dtype", "float16", "--seed", "3")
    assert res.exit_code == 0, res.output
    return d


def _runs(path):
    with open(path) as fh:
        return json.load(fh)


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow and LiteRT included
def test_every_converted_file_passes(out, tmp_path):
    a = out / "all"
    files = [a / f"{SPEC}{s}" for s in (".onnx", ".tflite", ".keras", "_savedmodel", ".pt2")]  # .py: below
    res = _verify(SPEC, *map(str, files), "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    report = _runs(tmp_path / "r.json")
    levels = [r["level"] for r in report["runs"] if r["file"].endswith(".onnx")]
    assert levels[:4] == ["disable", "basic", "extended", "all"] and "reference" in levels
    kinds = {os.path.basename(r["file"]) for r in report["runs"]}
    assert kinds == {os.path.basename(str(f)) for f in files}
    assert all(r["passed"] and r["max_rel"] < 1e-5 for r in report["runs"]), report
    assert any(r["runtime"].startswith(("LiteRT", "tf.lite")) for r in report["runs"])


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow included
def test_every_op_passes_the_allow_lists(tmp_path):
    """The files convert writes for conftest's TINY_A and TINY_B (between them every IR op: head dropout,
    drop path, dilated and grouped convolutions, SE, option-A and pooled shortcuts) pass verify without
    --trust-code: the .pt2 operator and SavedModel op allow-lists hold all of them."""
    from conftest import TINY_A, TINY_B

    for name, text in (("tiny_a", TINY_A), ("tiny_b", TINY_B)):
        (tmp_path / f"{name}.yaml").write_text(text)
        res = _cli("convert", str(tmp_path / f"{name}.yaml"), "-o", str(tmp_path / name), "--to", "torch,tensorflow")
        assert res.exit_code == 0, res.output
        net = __import__("resnet_spec").load(text)
        files = [str(tmp_path / name / f"{net.name}{s}") for s in (".pt2", "_savedmodel", ".keras")]
        res = _verify(str(tmp_path / f"{name}.yaml"), *files)
        assert res.exit_code == 0, res.output


@pytest.mark.slow  # verify/convert: a worker process per runtime
def test_a_converted_py_needs_trust_code(out):
    """A .py runs its own code when loaded: refused in one line without --trust-code (the .pt2 and
    SavedModel above pass without it: tests/test_trust_code.py), run with it."""
    py = str(out / "all" / f"{SPEC}.py")
    _one_error(_verify(SPEC, py), f"{SPEC}.py", "pass --trust-code to run it anyway")
    res = _verify(SPEC, py, "--trust-code")
    assert res.exit_code == 0 and "PASS: 1/1" in res.output, res.output


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow and LiteRT included
def test_float16_onnx_is_checked_at_its_tolerance(out, tmp_path):
    import onnx

    path = out / "f16" / f"{SPEC}.onnx"
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer if t.data_type != 7)
    res = _verify(SPEC, str(path), "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    runs = _runs(tmp_path / "r.json")["runs"]
    # really float16 (well above float32 noise), and within the documented float16 tolerance
    assert all(r["tolerance_rel"] == 1e-2 and 1e-5 < r["max_rel"] < 1e-2 for r in runs), runs


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow and LiteRT included
def test_wrong_file_fails_and_names_the_first_diverging_tap(out, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(out / "all" / f"{SPEC}.onnx"))
    t = next(t for t in model.graph.initializer if t.name == "layer2.1.conv2.weight")
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
    bad = tmp_path / f"{SPEC}.onnx"
    onnx.save(model, str(bad))
    shutil.copy(out / "all" / f"{SPEC}.safetensors", tmp_path)
    res = _verify(SPEC, str(bad), "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 1, res.output
    assert "first divergence: layer2.1" in res.output
    runs = _runs(tmp_path / "r.json")["runs"]
    ort = [r for r in runs if r["runtime"].startswith("onnxruntime")]
    assert len(ort) == 4 and all(not r["passed"] and r["first_divergence"] == "layer2.1" for r in ort)


def _one_error(res, *words):
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and res.output.strip().splitlines()[-1] == lines[0], res.output
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow and LiteRT included
def test_bad_inputs_are_one_line(out, tmp_path):
    a = out / "all"
    w = str(a / f"{SPEC}.safetensors")
    text = tmp_path / "text.onnx"
    text.write_text("not a model\n")
    _one_error(_verify(SPEC, str(text), "--weights", w), "text.onnx", "not a readable ONNX model")
    for suffix in (".onnx", ".tflite", ".keras", ".pt2"):
        data = (a / f"{SPEC}{suffix}").read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        _one_error(_verify(SPEC, str(cut), "--weights", w), f"cut{suffix}")
    other = "extends: resnet20\ninput: {size: 40}\n"
    _one_error(_verify(other, str(a / f"{SPEC}.onnx"), "--weights", w), "does not fit spec")
    _one_error(_verify(SPEC, str(tmp_path / "none.onnx")), "no such file")
    _one_error(_verify(SPEC, str(tmp_path / "text.txt")) if (tmp_path / "text.txt").write_text("x") else None,
               "not a deployable model file")
    alone = tmp_path / "alone.onnx"
    shutil.copy(a / f"{SPEC}.onnx", alone)
    _one_error(_verify(SPEC, str(alone)), "no weights")


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow and LiteRT included
def test_cuda_without_a_cuda_provider_is_one_line(out):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: covered by the GPU runs")
    res = _verify(SPEC, str(out / "all" / f"{SPEC}.onnx"), "--device", "cuda")
    _one_error(res, "CUDAExecutionProvider")


def test_float16_is_a_usage_error_elsewhere(tmp_path):
    res = _cli("convert", SPEC, "--to", "torch,onnx", "--dtype", "float16", "-o", str(tmp_path))
    assert res.exit_code == 2 and "supported by: onnx" in res.output, res.output
    res = _cli("convert", SPEC, "--to", "onnx", "--io-dtype", "float16", "-o", str(tmp_path))
    assert res.exit_code == 2 and "--dtype float16" in res.output, res.output
    assert not os.listdir(tmp_path)


def test_float16_refuses_values_beyond_its_range():
    import resnet_spec
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.errors import ResNetSpecError
    from resnet_spec.weights import init_weights

    net = resnet_spec.load(SPEC)
    w = init_weights(net, seed=0)
    w["layer1.0.bn1.running_var"] = np.full_like(w["layer1.0.bn1.running_var"], 1e-12)
    w["layer1.0.bn1.weight"] = np.full_like(w["layer1.0.bn1.weight"], 1e4)
    with pytest.raises(ResNetSpecError, match="layer1.0.conv1.*float16"):
        ob.build(net, w, dtype="float16")
    ob.build(net, w)  # float32 holds it


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow and LiteRT included
def test_savedmodel_holds_each_variable_once(out):
    """The variables file is the weights once (it held every variable twice: 2.1 MB for 1.1 MB); the
    folder still loads and matches (test_every_converted_file_passes verifies it)."""
    from resnet_spec.weights import read_safetensors

    weights = sum(a.nbytes for a in read_safetensors(str(out / "all" / f"{SPEC}.safetensors")).values())
    folder = out / "all" / f"{SPEC}_savedmodel" / "variables"
    stored = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("variables.data"))
    assert weights <= stored <= 1.1 * weights, (stored, weights)


@pytest.mark.slow  # verify/convert: a worker process per runtime, TensorFlow and LiteRT included
@pytest.mark.parametrize("suffix", [".keras", ".tflite"])
def test_inspect_keras_and_tflite(out, suffix):
    """What inspect shows for the other formats: counts, parameters, input/output, the embedded spec."""
    import resnet_spec

    path = out / "all" / f"{SPEC}{suffix}"
    res = _cli("inspect", str(path), "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    net = resnet_spec.load(SPEC)
    sizes = {t.name: math.prod(t.shape) for t in net.tensors()}
    assert info["spec_name"] == SPEC and resnet_spec.load(info["spec_yaml"]) == net
    assert info["inputs"][0]["shape"] == [None, 32, 32, 3]
    if suffix == ".keras":
        assert info["parameters"] + info["buffers"] == sum(sizes.values())
        assert info["buffers"] == sum(n for k, n in sizes.items() if k.endswith(("running_mean", "running_var")))
        assert info["outputs"] == [{"name": "fc", "layer": "Dense", "units": 10}]
        assert info["layer_classes"]["Conv2D"] == 19
    else:  # BN folded into the convolutions: conv weights and biases, the classifier
        convs = [t for t in net.tensors() if len(t.shape) == 4]
        lo = sum(sizes[t.name] for t in convs) + sizes["fc.weight"] + 10  # + the folded biases, which the
        assert lo < info["parameters"] <= lo + sum(t.shape[0] for t in convs)  # converter shares when equal
        assert info["outputs"][0]["shape"] == [None, 10] and info["op_types"]["CONV_2D"] == 19
    text = _cli("inspect", str(path)).output
    assert f"spec:       {SPEC}" in text and "spec YAML:" in text
    bad = out / f"cut{suffix}"
    bad.write_bytes(path.read_bytes()[:4000])
    _one_error(_cli("inspect", str(bad)), f"cut{suffix}")


@pytest.fixture(scope="module")
def openvino_site(tmp_path_factory):
    """A folder holding only the ``openvino`` package of the deployment matrix's cached venv
    (benchmarks/_venvs.py; built from the registry on first use), for sys.path: OpenVINO stays out of
    the project's dependencies, and verify's own worker process imports it from there."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import _venvs

    try:
        py = _venvs.ensure("openvino-2026.4.1", ["openvino==2026.4.1", "numpy"])
    except _venvs.VenvUnavailable as exc:
        pytest.skip(str(exc))
    site = os.path.join(os.path.dirname(os.path.dirname(py)), "lib",
                        f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")
    if not os.path.isdir(os.path.join(site, "openvino")):  # a venv of another Python: its wheel would not load
        pytest.skip(f"the openvino venv has no {site}/openvino")
    d = tmp_path_factory.mktemp("ov")
    os.symlink(os.path.join(site, "openvino"), d / "openvino")
    return str(d)


@pytest.mark.slow
def test_openvino_runs_in_f32_and_catches_a_wrong_file(out, openvino_site, monkeypatch, tmp_path):
    import onnx
    from onnx import numpy_helper

    import sys

    # verify's workers are spawned with this process's sys.path; this process never imports openvino
    monkeypatch.setattr(sys, "path", [*sys.path, openvino_site])
    path = out / "all" / f"{SPEC}.onnx"
    res = _verify(SPEC, str(path), "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    report = _runs(tmp_path / "r.json")
    ov = [r for r in report["runs"] if r["runtime"].startswith("openvino 2026.4.1")]
    # the level is the precision the compiled model reports (verify asks for f32; on CPUs with bf16 the
    # plugin's default would be bf16 -- this machine has none, so here the default is f32 too)
    assert len(ov) == 1 and ov[0]["level"] == "f32" and ov[0]["passed"] and ov[0]["max_rel"] < 1e-5, ov
    assert not any("OpenVINO" in n for n in report["notes"])
    model = onnx.load(str(path))
    t = next(t for t in model.graph.initializer if t.name == "layer3.0.conv1.weight")
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.1, t.name))
    onnx.save(model, str(tmp_path / f"{SPEC}.onnx"))
    res = _verify(SPEC, str(tmp_path / f"{SPEC}.onnx"), "--weights", str(out / "all" / f"{SPEC}.safetensors"),
                  "--json", str(tmp_path / "bad.json"))
    assert res.exit_code == 1, res.output
    ov = [r for r in _runs(tmp_path / "bad.json")["runs"] if r["runtime"].startswith("openvino")]
    assert len(ov) == 1 and not ov[0]["passed"] and ov[0]["max_rel"] > 1e-3, ov


def test_a_crashed_worker_is_named_by_its_file_never_by_the_spec_text():
    """A worker that dies is one line naming the file it ran; the float64 reference's call, whose first
    argument is the spec's YAML text, names the worker instead of printing the spec."""
    import faults

    from resnet_spec.errors import ResNetSpecError
    from resnet_spec.verify import _Workers

    workers = _Workers()
    try:
        with pytest.raises(ResNetSpecError) as exc:
            workers.call("torch", faults.crash, "name: s\nstages: []\n")
        assert str(exc.value).startswith("the torch worker: ") and "\n" not in str(exc.value)
        with pytest.raises(ResNetSpecError, match=r"^m\.onnx: the torch worker process crashed"):
            workers.call("torch", faults.crash, "m.onnx")
    finally:
        workers.close()
