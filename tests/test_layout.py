"""``convert --layout nchw|nhwc``: every target's file in the layout it does not take by default (torch,
ONNX: NHWC; SavedModel, .keras, TFLite: NCHW) computes the default file's numbers on the transposed input,
records its layout (metadata, ``inspect``), passes ``verify`` with default options, and imports back
(``resnet-spec import``: an NHWC ONNX file, ours or tf2onnx-style, and the NCHW .keras; the proof feeds
each its own layout; a transpose of the input that is not a layout change is refused).

One module-scoped fixture makes the files of tiny_b (conftest.TINY_B without its dilated stage: no
dropout and no dilation, so that its ``.pt2`` and SavedModel pass verify's allow-lists without
``--trust-code``, which head dropout (``aten.dropout``) and dilation (``SpaceToBatchND``) do not, in
either layout) once: one CLI conversion (torch+onnx NHWC), the ONNX float16 and int8 NHWC files in this
process, and one TensorFlow worker (tests/tf_checks.py ``layout_outputs``: TensorFlow's import is paid once)
that writes the NCHW .keras, SavedModel and TFLite float32/float16/int8 files through the backends'
``convert`` and runs each beside the default ones. The CLI's mapping of ``--layout``/``--data-format`` to
those backends' options is checked on :class:`ConvertOptions` (test_cli_layout_options).
Margins against the default-layout file on the same images: float32 max |difference| <= 1e-5 (logits of
scale ~0.65; measured 0.0 for ONNX, .keras, SavedModel and TFLite, 6e-8 for torch, whose convolution takes
the permuted input's strides); float16 2e-3 of the logit scale (measured: TFLite 0.0, ONNX 8.7e-5: ONNX
Runtime picks other float16 kernels behind the Transpose); int8 the same top-1 and 2% of the scale
(measured 0.0 for both: the same quantization ranges, calibrated on the same images transposed).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import resnet_spec
from conftest import TINY_B, cli, last_line_error
from resnet_spec.errors import ResNetSpecError

F32_TOL = 1e-5
SPEC = TINY_B.replace(", dilate: true", "")
assert SPEC != TINY_B


def _nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.calibration import synthetic
    from resnet_spec.isolate import run_isolated

    import tf_checks

    d = tmp_path_factory.mktemp("layout")
    spec = d / "tiny_b.yaml"
    spec.write_text(SPEC)
    net = resnet_spec.load(SPEC)
    w = resnet_spec.init_weights(net, seed=3, random_bn=True)
    resnet_spec.save_weights(w, str(d / "w.safetensors"))
    res = cli("convert", spec, "--to", "torch,onnx", "--layout", "nhwc", "-o", d / "nhwc", "--weights",
              d / "w.safetensors")
    assert res.exit_code == 0, res.output
    calib = synthetic(net.input_shape)
    for dtype in ("float16", "int8"):
        sub = d / f"onnx-{dtype}"
        ob.convert(net, w, str(sub), layout="nhwc", dtype=dtype, calibration=calib if dtype == "int8" else None)
    ob.convert(net, w, str(d / "onnx-int8-default"), dtype="int8", calibration=calib)
    x = np.random.default_rng(4).standard_normal((3, *net.input_shape)).astype(np.float32)
    keras = run_isolated(tf_checks.layout_outputs, net, w, str(d / "nchw"), x, calib)
    return {"dir": d, "spec": spec, "net": net, "w": w, "x": x, "calib": calib, "keras": keras}


def _ort(model_or_path, x):
    import onnxruntime as ort

    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_entry_permutation_is_the_one_fact():
    from resnet_spec.backends import DEFAULT_LAYOUTS, common

    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # NCHW
    to_nchw, to_nhwc = common.entry_permutation("nhwc", "nchw"), common.entry_permutation("nchw", "nhwc")
    assert to_nchw == (0, 3, 1, 2) and to_nhwc == (0, 2, 3, 1)
    assert (x.transpose(to_nhwc).transpose(to_nchw) == x).all()
    assert common.entry_permutation("nchw", "nchw") is None and common.entry_permutation("nhwc", "nhwc") is None
    assert common.input_dims((3, 4, 5), "nhwc") == (4, 5, 3) and common.input_dims((3, 4, 5), "nchw") == (3, 4, 5)
    assert DEFAULT_LAYOUTS == {"torch": "nchw", "onnx": "nchw", "tensorflow": "nhwc", "tflite": "nhwc"}
    for bad in ("NHWC", "chw", ""):
        with pytest.raises(ResNetSpecError, match="input layout .* is not supported; choose nchw or nhwc"):
            common.entry_permutation(bad, "nchw")


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_onnx_nhwc_equals_nchw(made):
    import onnx

    from resnet_spec.backends.onnx import backend as ob

    net, w, x = made["net"], made["w"], made["x"]
    path = made["dir"] / "nhwc" / "tiny_b.onnx"
    ref = _ort(ob.build(net, w), x)
    got = _ort(path, _nhwc(x))
    assert np.abs(got - ref).max() <= F32_TOL
    model = onnx.load(str(path))
    first = model.graph.node[0]
    assert first.op_type == "Transpose" and list(first.input) == ["input"]
    assert [a.ints for a in first.attribute] == [[0, 3, 1, 2]]
    assert {p.key: p.value for p in model.metadata_props}["resnet_spec.layout"] == "nhwc"
    # the Python API builds it too (resnet_spec.build passes its keywords to the backend)
    api = resnet_spec.build(net, "onnx", weights=w, layout="nhwc")
    assert np.abs(_ort(api, _nhwc(x)) - ref).max() <= F32_TOL


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_onnx_float16_and_int8_nhwc(made):
    from resnet_spec.backends.onnx import backend as ob

    net, w, x = made["net"], made["w"], made["x"]
    half = _ort(made["dir"] / "onnx-float16" / "tiny_b.onnx", _nhwc(x))
    ref16 = _ort(ob.build(net, w, dtype="float16"), x)
    assert np.abs(half - ref16).max() <= 2e-3 * np.abs(ref16).max()
    int8 = _ort(made["dir"] / "onnx-int8" / "tiny_b.onnx", _nhwc(x))
    ref = _ort(made["dir"] / "onnx-int8-default" / "tiny_b.onnx", x)
    assert (int8.argmax(1) == ref.argmax(1)).all() and np.abs(int8 - ref).max() <= 0.02 * np.abs(ref).max()


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_torch_pt2_and_py_nhwc(made):
    import importlib.util

    import torch

    from resnet_spec.backends.torch import backend as tb

    net, w, x = made["net"], made["w"], made["x"]
    with torch.no_grad():
        ref = tb.build(net, w)(torch.from_numpy(x)).numpy()
        prog = torch.export.load(str(made["dir"] / "nhwc" / "tiny_b.pt2"))
        got = prog.module()(torch.from_numpy(_nhwc(x))).numpy()
        spec = importlib.util.spec_from_file_location("tiny_b_nhwc", made["dir"] / "nhwc" / "tiny_b.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        py = mod.load_model()(torch.from_numpy(_nhwc(x))).numpy()
    assert np.abs(got - ref).max() <= F32_TOL and np.abs(py - ref).max() <= F32_TOL
    assert mod.INPUT_LAYOUT == "nhwc"


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_keras_savedmodel_tflite_nchw(made):
    out = made["keras"]
    for label in ("keras", "savedmodel", "tflite float32"):
        ref = out["keras default" if label != "tflite float32" else "tflite float32 default"]
        assert np.abs(out[label] - ref).max() <= F32_TOL, label
    half, half_ref = out["tflite float16"], out["tflite float16 default"]
    assert np.abs(half - half_ref).max() <= 2e-3 * np.abs(half_ref).max()
    q, q_ref = out["tflite int8"], out["tflite int8 default"]
    assert (q.argmax(1) == q_ref.argmax(1)).all() and np.abs(q - q_ref).max() <= 0.02 * np.abs(q_ref).max()
    c, h, w = made["net"].input_shape
    assert all(sig == [-1, c, h, w] for sig in out["signatures"].values()), out["signatures"]


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_inspect_shows_the_layout(made):
    d, keras = made["dir"], made["keras"]["files"]
    for path, layout in ((d / "nhwc" / "tiny_b.onnx", "nhwc"), (d / "nhwc" / "tiny_b.pt2", "nhwc"),
                         (keras["keras"], "nchw"), (keras["tflite float32"], "nchw"), (keras["tflite int8"], "nchw"),
                         (d / "onnx-int8" / "tiny_b.onnx", "nhwc")):
        res = cli("inspect", path)
        assert res.exit_code == 0 and f"layout:     {layout.upper()} (" in res.output, res.output
        res = cli("inspect", path, "--json")
        assert json.loads(res.output)["layout"] == layout, path


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_verify_takes_each_files_layout(made):
    d, keras = made["dir"], made["keras"]
    files = [d / "nhwc" / "tiny_b.onnx", d / "nhwc" / "tiny_b.pt2", d / "onnx-float16" / "tiny_b.onnx",
             d / "onnx-int8" / "tiny_b.onnx", *keras["files"].values()]
    res = cli("verify", made["spec"], *files, "--weights", d / "w.safetensors", "--json", d / "verify.json")
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output.strip().splitlines()[-1]


def test_cli_layout_options():
    """--layout for every target; --data-format (Keras' words) for the Keras-made ones; else each default."""
    from resnet_spec.cli.options import ConvertOptions

    def options(*extra):
        args = {"spec": "s", "targets": "all,tflite", "weights_file": None, "seed": 0, "weights_key": None,
                "ema": False, "new_head": False, "allow_nonfinite": False, "out_dir": None, "force": False,
                "max_params": 2e9, "max_activation_gib": 64.0, "opset": 17, "no_fold_bn": False, "batch": None,
                "dtype": "float32", "io_dtype": "float32", "layout": None, "data_format": None}
        args.update(extra)
        opts = ConvertOptions.from_args(args)
        return {t: opts.backend_options(t)["layout"] for t in opts.targets}

    assert options() == {"torch": "nchw", "onnx": "nchw", "tensorflow": "nhwc", "tflite": "nhwc"}
    for layout in ("nchw", "nhwc"):
        assert set(options(("layout", layout)).values()) == {layout}
    assert options(("data_format", "channels_first")) == {"torch": "nchw", "onnx": "nchw", "tensorflow": "nchw",
                                                          "tflite": "nchw"}
    assert options(("layout", "nhwc"), ("data_format", "channels_last"))["tflite"] == "nhwc"


def test_layout_refusals(tmp_path):
    spec = tmp_path / "tiny_b.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    res = cli("convert", spec, "--layout", "NHWC", "-o", out)
    assert res.exit_code == 2 and "Invalid value for '--layout'" in res.output, res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("Error:")]) == 1
    res = cli("convert", spec, "--to", "tflite", "--layout", "nhwc", "--data-format", "channels_first",
              "-o", out)
    assert res.exit_code == 2, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert err == ["Error: --data-format channels_first is --layout nchw, not nhwc; pass --layout alone"], res.output
    assert not out.exists()  # refused before anything was written
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.backends.torch import backend as tb

    for build in (ob.build, tb.build):
        with pytest.raises(ResNetSpecError, match="input layout 'NCHW' is not supported"):
            build(resnet_spec.load(SPEC), None, layout="NCHW")


def test_verify_uses_the_recorded_layout_when_the_shape_fits_both():
    from resnet_spec.verify_inputs import decide_layout

    dims = [None, None, None, None]
    assert decide_layout("f", dims, (3, 8, 8), recorded="nhwc") == "nhwc"
    assert decide_layout("f", [1, 8, 8, 8], (8, 8, 8), recorded="nchw") == "nchw"
    with pytest.raises(ResNetSpecError, match="fits both NCHW and NHWC"):
        decide_layout("f", dims, (3, 8, 8))
    # a recorded layout the shape contradicts is not taken
    assert decide_layout("f", [None, 3, 8, 8], (3, 8, 8), recorded="nhwc") == "nchw"


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_verify_refuses_a_py_fed_against_its_input_layout(made, tmp_path):
    """A standalone .py says its layout (INPUT_LAYOUT): a --layout that contradicts it, or a layout verify
    does not know, is one line naming the file (its forward would see transposed images)."""
    import shutil

    d = made["dir"]
    res = cli("verify", made["spec"], d / "nhwc" / "tiny_b.py", "--weights", d / "w.safetensors", "--trust-code",
              "--layout", "nchw")
    last_line_error(res, "tiny_b.py", "INPUT_LAYOUT is 'nhwc' and --layout says 'nchw'")
    odd = tmp_path / "odd.py"
    odd.write_text((d / "nhwc" / "tiny_b.py").read_text().replace("INPUT_LAYOUT = 'nhwc'", "INPUT_LAYOUT = 'hwcn'"))
    assert "INPUT_LAYOUT = 'hwcn'" in odd.read_text()
    shutil.copy(d / "w.safetensors", tmp_path / "odd.safetensors")
    res = cli("verify", made["spec"], odd, "--weights", d / "w.safetensors", "--trust-code")
    last_line_error(res, "odd.py", "INPUT_LAYOUT is 'hwcn'")


def test_keras_layout_and_data_format_must_agree():
    """The Python API's two spellings (``build``/``convert`` of the Keras-made targets): either, both when
    they agree, never a silent choice between two that disagree (the CLI refuses that too, above)."""
    from resnet_spec.backends.keras.model import input_layout

    assert input_layout(None, None) == "nhwc" and input_layout(None, "channels_first") == "nchw"
    assert input_layout("nchw", "channels_first") == "nchw" and input_layout("nhwc", None) == "nhwc"
    with pytest.raises(ResNetSpecError, match="tflite: data_format 'channels_first' and layout 'nhwc' name different"):
        input_layout("nhwc", "channels_first", "tflite")


# -- import: a file's input layout recognised, the network read, the proof fed the file's layout -------

SMALL = "extends: resnet20\nname: s\ndepth: 8\ninput: {size: [16, 24]}\n"  # non-square: H and W told apart


def _nhwc_onnx_files(tmp_path) -> tuple:
    """(network, weights, {how: path}) of SMALL as NHWC ONNX files: ``convert --layout nhwc``'s (BN folded
    and kept) and a tf2onnx-style one (tests/other_producers.py: no layout metadata, input ``images``)."""
    import onnx

    import other_producers
    from resnet_spec.backends.onnx import backend as ob

    net = resnet_spec.load(SMALL)
    w = resnet_spec.init_weights(net, seed=1, random_bn=True)
    paths = {}
    for how, fold in (("fold", True), ("nofold", False)):
        (paths[how],) = ob.convert(net, w, str(tmp_path / how), layout="nhwc", fold_bn=fold)[:1]
    paths["tf2onnx"] = str(tmp_path / "tf2onnx.onnx")
    onnx.save(other_producers.nhwc_onnx(ob.build(net, w)), paths["tf2onnx"])
    return net, w, paths


def test_import_nhwc_onnx(tmp_path):
    """``convert --layout nhwc`` (BN folded or not) and a tf2onnx-style file import back: the leading
    Transpose (perm [0, 3, 1, 2]) is the file's layout, not a layer; the height and width come from the
    NHWC input's dims; the CLI's proof feeds the file NHWC and says so, and so does the spec's description.
    Measured: the CLI proof's max_rel 2.9e-7; the in-process runs below agree within 1e-5."""
    import onnxruntime as ort
    import torch
    from test_import_zoo import _same

    from resnet_spec.importers import import_source

    net, w, paths = _nhwc_onnx_files(tmp_path)
    x = np.random.default_rng(2).standard_normal((2, *net.input_shape)).astype(np.float32)
    for how, path in paths.items():
        src, text, got, _, weights = import_source(path, "m")
        assert src.facts["layout"] == "nhwc" and _same(got, net), (how, text)
        assert "imported from" in text and "NHWC input" in text.splitlines()[0], text
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: _nhwc(x)})[0]
        with torch.inference_mode():
            out = resnet_spec.build(got, "torch", weights=weights).eval()(torch.from_numpy(x)).numpy()
        assert np.abs(out - ref).max() <= F32_TOL * np.abs(ref).max(), how
    res = cli("import", paths["fold"], "--name", "m", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "fed to the source as NHWC 2x16x24x3 (its input layout)" in res.output and "PASS" in res.output
    assert "takes NHWC input" in res.output  # the note
    spec = (tmp_path / "out" / "m.yaml").read_text()
    assert "NHWC input" in spec and _same(resnet_spec.load(spec), net), spec
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "m.safetensors"), "np") as fh:
        assert fh.metadata()["imported_layout"] == "nhwc"
    # --weights takes the same file through the same reader (BN kept: the very tensors come back)
    got_w = resnet_spec.load_weights(net, paths["nofold"])
    assert all(np.allclose(got_w[k], v, atol=1e-6) for k, v in w.items())


def test_import_refuses_other_input_transposes(tmp_path):
    """A Transpose of the input that is not NHWC -> NCHW, or an input read both transposed and as it is,
    is one line naming the node (the CLI: exit 1, nothing written)."""
    import onnx
    from onnx import helper

    from resnet_spec.importers.source import ImportRefused

    _, _, paths = _nhwc_onnx_files(tmp_path)
    model = onnx.load(paths["tf2onnx"])
    first = model.graph.node[0]
    assert first.op_type == "Transpose" and first.name == "to_nchw"
    first.attribute[0].ints[:] = [0, 2, 3, 1]
    onnx.save(model, str(tmp_path / "perm.onnx"))
    del first.attribute[:]  # no perm: the axes reversed
    onnx.save(model, str(tmp_path / "noperm.onnx"))
    first.attribute.append(helper.make_attribute("perm", [0, 3, 1, 2]))
    model.graph.node.insert(1, helper.make_node("Identity", ["images"], ["unused"], name="reads_it"))
    model.graph.node.insert(2, helper.make_node("Relu", ["images"], ["twice"], name="twice"))
    onnx.save(model, str(tmp_path / "twice.onnx"))
    for name, words in (("perm.onnx", "node 'to_nchw' (Transpose): a Transpose of the input with perm [0, 2, 3, 1]; "
                                      "import reads an NCHW input, or an NHWC one transposed to NCHW by perm "
                                      "[0, 3, 1, 2]"),
                        ("noperm.onnx", "with perm unset (the axes reversed)"),
                        ("twice.onnx", "node 'twice' (Relu): reads the input as it is while 'to_nchw' transposes it")):
        with pytest.raises(ImportRefused) as info:
            resnet_spec.import_model(str(tmp_path / name))
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    res = cli("import", tmp_path / "perm.onnx", "-o", tmp_path / "out")
    last_line_error(res, "perm.onnx", "perm [0, 2, 3, 1]")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the module fixture: a TensorFlow worker, int8 calibration, torch.export
def test_import_nchw_keras(made, tmp_path):
    """``convert --layout nchw``'s .keras imports back: its entry Permute (dims (2, 3, 1)) is the file's
    layout, the input size comes from the NCHW input, and the CLI's proof feeds the model NCHW (measured:
    max_rel 1.1e-7). A Permute of the input with other dims is refused naming the layer."""
    import json
    import zipfile

    from test_import_zoo import _same

    import keras_sources
    from resnet_spec.backends.keras.reader import _Mapper
    from resnet_spec.importers.source import ImportRefused, Source
    from resnet_spec.isolate import run_isolated

    path = made["keras"]["files"]["keras"]
    res = cli("import", path, "--name", "m", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "fed to the source as NCHW 2x3x33x33 (its input layout)" in res.output and "PASS" in res.output
    assert "takes NCHW input" in res.output
    spec = (tmp_path / "out" / "m.yaml").read_text()
    assert "NCHW input" in spec and _same(resnet_spec.load(spec), made["net"]), spec
    got = resnet_spec.load_weights(made["net"], str(tmp_path / "out" / "m.safetensors"))
    assert all(np.allclose(got[k], v, atol=1e-6) for k, v in made["w"].items())
    # the same file with its Permute turned into an (H, W) swap as well: refused, naming the layer
    bad = tmp_path / "swap.keras"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                permute = next(la for la in config["config"]["layers"] if la["class_name"] == "Permute")
                assert permute["config"]["dims"] == [2, 3, 1]
                permute["config"]["dims"] = [3, 2, 1]
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    (info,) = run_isolated(keras_sources.describe, [{"path": str(bad)}])  # the kept TensorFlow worker
    with pytest.raises(ImportRefused, match=r"layer 'to_channels_last' \(Permute\): a Permute of the input with "
                                            r"dims \[3, 2, 1\]; import reads an NHWC input, or an NCHW one "
                                            r"permuted to NHWC by dims \[2, 3, 1\]"):
        _Mapper.source("swap.keras", "keras", {}, info)
