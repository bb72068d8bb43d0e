"""``convert --layout nchw|nhwc``: every target's file in the layout it does not take by default (torch,
ONNX: NHWC; SavedModel, .keras, TFLite: NCHW) computes the default file's numbers on the transposed input,
records its layout (metadata, ``inspect``), and passes ``verify`` with default options.

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
