"""int8 files (``convert --to onnx,tflite --dtype int8``): static quantization calibrated on
``--calibration`` images (or seeded synthetic ones, with a note), the dtype in the metadata and in
``inspect`` (recognised from the file itself: QDQ nodes, int8 tensors), and verify's int8 criterion
(top-1 agreement and a max relative error bound: :data:`resnet_spec.verify.INT8_TOL`). TensorFlow runs
only in worker processes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli as _cli
from conftest import last_line_error as _one_error
from conftest import tiny, tiny_text

from resnet_spec.verify import INT8_TOL, _judge, int8_metrics

SPEC = "resnet20"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny resnet20 (32 px), seed-3 weights with random BN statistics, 8 calibration images, and
    convert's int8 ONNX file of it (the weights beside it)."""
    from resnet_spec.weights import init_weights, save_weights

    d = tmp_path_factory.mktemp("int8")
    net = tiny(SPEC)
    save_weights(init_weights(net, seed=3, random_bn=True), str(d / "w.safetensors"))
    (d / "spec.yaml").write_text(net.spec_yaml)
    np.save(d / "calib.npy", np.random.default_rng(5).standard_normal((8, *net.input_shape), dtype=np.float32))
    res = _cli("convert", d / "spec.yaml", "--to", "onnx", "--dtype", "int8", "--calibration", d / "calib.npy",
               "--weights", d / "w.safetensors", "-o", d / "i8")
    assert res.exit_code == 0, res.output
    assert "note:" not in res.output  # real (here: given) images: no synthetic-calibration note
    return d


def _verify(d, *args):
    return _cli("verify", d / "spec.yaml", "--weights", d / "w.safetensors", *args)


def test_int8_onnx_holds_qdq_int8_weights_and_runs_in_onnxruntime(files):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(files / "i8" / f"{SPEC}.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8) >= 10  # every conv's weight, int8 per channel
    assert {p.key: p.value for p in model.metadata_props}["resnet_spec.dtype"] == "int8"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O
    sess = ort.InferenceSession(str(files / "i8" / f"{SPEC}.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 10) and out.dtype == np.float32 and np.isfinite(out).all()
    info = json.loads(_cli("inspect", files / "i8" / f"{SPEC}.onnx", "--json").output)
    assert info["dtype"] == "int8" and info["dtype_recorded"] == "int8"
    assert "dtype:      int8 (QDQ: " in _cli("inspect", files / "i8" / f"{SPEC}.onnx").output


def test_int8_onnx_is_verified_at_the_int8_criterion_ours_or_anothers(files, tmp_path):
    """Was: FAIL at the float32 tolerance (1e-4). Now judged on top-1 agreement and INT8_TOL, recognised
    from the QDQ nodes with or without our metadata."""
    import onnx

    model = onnx.load(str(files / "i8" / f"{SPEC}.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(files / "other_i8.onnx"))
    res = _verify(files, files / "i8" / f"{SPEC}.onnx", files / "other_i8.onnx", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert f"int8 criterion: max rel <= {INT8_TOL:g}" in res.output and "top-5 " in res.output
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert len(runs) == 8 and all(r["int8"] and r["tolerance_rel"] == INT8_TOL for r in runs), runs
    assert all(1e-4 < r["max_rel"] < INT8_TOL / 3 and r["top1"] >= 0.5 and r["top5"] == 1.0 for r in runs), runs
    assert all(0 < r["mean_rel"] < r["max_rel"] for r in runs)


def test_int8_onnx_of_other_weights_fails_verify(files, tmp_path):
    """A broken int8 file (quantized from seed-7 weights) fails against the seed-3 reference."""
    res = _cli("convert", files / "spec.yaml", "--to", "onnx", "--dtype", "int8", "--seed", "7", "-o", tmp_path)
    assert res.exit_code == 0 and "note: int8 calibrated on 32 synthetic" in res.output, res.output
    res = _verify(files, tmp_path / f"{SPEC}.onnx")
    assert res.exit_code == 1 and "FAIL: 0/4 runs within tolerance" in res.output, res.output


def test_int8_criterion_is_the_max_rel_bound_top1_is_reported():
    ref = np.array([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 2.0, 1.0, -1.0, -2.0, -3.0]])
    m = int8_metrics(ref, ref + 0.01)
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and m["mean_rel"] == pytest.approx(0.01 / 3)
    assert _judge({"int8": True}, ref, ref + 0.01) == (INT8_TOL, m, True)
    tied = ref.copy()
    tied[0, 1], tied[1, 2] = 2.99, 1.99  # near ties on both images
    flipped = tied.copy()
    flipped[0, :2], flipped[1, 1:3] = [2.99, 3.0], [1.99, 2.0]  # both top-1 classes lost by 0.01/3 of the scale
    tol, m, ok = _judge({"int8": True}, tied, flipped)
    assert m["top1"] == 0.0 and m["top5"] == 1.0 and ok is True  # reported, not judged: within the bound
    wrong = ref.copy()
    wrong[:, 0], wrong[:, 1] = ref[:, 1], ref[:, 0]  # a swap the bound cannot allow (2/3 of the scale)
    assert _judge({"int8": True}, ref, wrong)[2] is False
    assert _judge({"int8": True}, ref, ref * 1.5)[2] is False  # top-1 kept, max rel 0.5: FAIL
    assert _judge({}, ref, ref + 0.01)[2] is False  # a float32 file is still held to 1e-4


@pytest.mark.parametrize("make, words", [
    (lambda p: np.save(p, np.zeros((2, 3, 16, 16), np.float32)), ("shape (2, 3, 16, 16)", "(N, 3, 32, 32)")),
    (lambda p: np.save(p, np.zeros((2, 3, 32, 32), np.float64)), ("dtype float64", "float32")),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), ("Python objects", "pickled")),
    (lambda p: p.write_bytes(b"not an array at all"), ("not a .npy file",)),
    (lambda p: np.save(p, np.full((1, 32, 32, 3), np.nan, np.float32)), ("NaN or Inf",)),
])
def test_calibration_file_refusals_are_one_line(tmp_path, make, words):
    path = tmp_path / "c.npy"
    make(path)
    res = _cli("convert", SPEC, "--to", "onnx", "--dtype", "int8", "--calibration", path, "-o", tmp_path / "o")
    _one_error(res, "--calibration", *words)
    assert not (tmp_path / "o").exists()


def test_calibration_file_budget_is_checked_from_the_header(tmp_path, monkeypatch):
    from resnet_spec import calibration

    np.save(tmp_path / "c.npy", np.zeros((4, 3, 32, 32), np.float32))
    monkeypatch.setattr(calibration, "MAX_IMAGES", 3)
    with pytest.raises(Exception, match=r"4 images .* expected 1 to 3 images"):
        calibration.load(str(tmp_path / "c.npy"), (3, 32, 32))
    monkeypatch.setattr(calibration, "MAX_IMAGES", 100)
    nhwc = np.random.default_rng(0).standard_normal((4, 32, 32, 3), dtype=np.float32)
    np.save(tmp_path / "h.npy", nhwc)  # channels-last is taken and given to the quantizers as NCHW
    assert np.array_equal(calibration.load(str(tmp_path / "h.npy"), (3, 32, 32)), nhwc.transpose(0, 3, 1, 2))


def test_int8_usage_errors(tmp_path):
    res = _cli("convert", SPEC, "--to", "torch,onnx", "--dtype", "int8", "-o", tmp_path)
    assert res.exit_code == 2 and "--dtype int8 is supported by: onnx, tflite" in res.output, res.output
    res = _cli("convert", SPEC, "--to", "onnx", "--calibration", tmp_path / "c.npy", "-o", tmp_path)
    assert res.exit_code == 2 and "--calibration needs --dtype int8" in res.output, res.output
    res = _cli("convert", SPEC, "--to", "onnx", "--dtype", "int8", "--io-dtype", "float16", "-o", tmp_path)
    assert res.exit_code == 2 and "--io-dtype float16 needs --dtype float16" in res.output, res.output
    for args in (("--to", "onnx"), ("--to", "tflite", "--dtype", "int8")):
        res = _cli("convert", SPEC, *args, "--int8-activations", "uint8", "-o", tmp_path)
        assert res.exit_code == 2 and "--int8-activations needs --dtype int8 and the onnx target" in res.output


def test_uint8_activations_make_a_u8s8_file_that_verifies(files, tmp_path):
    """--int8-activations uint8: activations quantized to uint8 (U8S8), weights still int8; verified."""
    import onnx

    res = _cli("convert", files / "spec.yaml", "--to", "onnx", "--dtype", "int8", "--int8-activations", "uint8",
               "--calibration", files / "calib.npy", "--weights", files / "w.safetensors", "-o", tmp_path / "u8")
    assert res.exit_code == 0, res.output
    path = tmp_path / "u8" / f"{SPEC}.onnx"
    model = onnx.load(str(path))
    zero_points = {t.data_type for t in model.graph.initializer if t.name.endswith("zero_point") and not t.dims}
    assert onnx.TensorProto.UINT8 in zero_points  # activations (per tensor, scalar zero points) are uint8
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) >= 10
    res = _verify(files, path)
    assert res.exit_code == 0, res.output


@pytest.mark.slow  # TensorFlow converts in a worker; LiteRT and the reference in theirs
def test_int8_tflite_is_made_recorded_and_verified(tmp_path):
    """resnet18 cut to two blocks a stage at 64 px: its max pool's -inf padding, which made an int8
    tensor's scale 1e36 and the interpreter abort, is edge padding in the int8 file."""
    (tmp_path / "s.yaml").write_text(tiny_text("resnet18", 2, 64))
    res = _cli("convert", tmp_path / "s.yaml", "--to", "tflite", "--dtype", "int8", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    path = tmp_path / "o" / "resnet18.tflite"
    info = json.loads(_cli("inspect", path, "--json").output)
    assert info["dtype"] == "int8" and info["dtype_recorded"] == "int8" and info["int8_tensors"] > 20, info
    assert info["inputs"][0]["dtype"] == "float32" and info["outputs"][0]["dtype"] == "float32"
    assert info["op_types"]["QUANTIZE"] == 1 and info["op_types"]["DEQUANTIZE"] == 1, info["op_types"]
    res = _cli("verify", tmp_path / "s.yaml", path, "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    (run,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert run["int8"] and 1e-4 < run["max_rel"] < INT8_TOL / 3 and run["top1"] >= 0.5, run


def _out(n, k, s, p, ceil):
    """PyTorch's pooled size: the last window starts inside the input or its left padding."""
    out = -(-(n + 2 * p - k) // s) + 1 if ceil else (n + 2 * p - k) // s + 1
    return out - 1 if ceil and (out - 1) * s >= n + p else out


def test_edge_padding_pools_as_neg_inf_padding():
    """The int8 TFLite file's max-pool padding (backends.keras.layers._edge_pad_hw): every window that
    reaches into the padding holds the edge it copies, for every padding PyTorch allows (at most half
    the kernel) and ceil mode's extra rows (numpy stands in for keras.ops)."""
    from types import SimpleNamespace

    from resnet_spec import ir
    from resnet_spec.backends.keras.layers import _edge_pad_hw, _pad_hw

    ops = SimpleNamespace(concatenate=np.concatenate,
                          pad=lambda x, widths, constant_values: np.pad(x, widths, constant_values=constant_values))
    rng = np.random.default_rng(0)
    checked = 0
    for n in range(1, 8):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(0, k // 2 + 1):
                    for ceil in (False, True):
                        if n + 2 * p < k:
                            continue
                        o = _out(n, k, s, p, ceil)
                        pool = ir.Pool("p", "max", k, s, p, ceil, False, "neg_inf", (1, n, n), (1, o, o))
                        x = rng.standard_normal((1, n, n, 1))
                        pads = pool.pads
                        a, b = _pad_hw(ops, x, pads, -np.inf), _edge_pad_hw(ops, x, pads)
                        win = [(i * s, i * s + k) for i in range(o)]
                        got = [[b[0, r0:r1, c0:c1].max() for c0, c1 in win] for r0, r1 in win]
                        want = [[a[0, r0:r1, c0:c1].max() for c0, c1 in win] for r0, r1 in win]
                        assert got == want, (n, k, s, p, ceil)
                        checked += 1
    assert checked > 200


def test_channel_padding_nets_quantize_activations_symmetrically(tmp_path):
    """An option-A shortcut pads channels with zeros (ONNX Pad), Res2Net's 3x3 average pools count their
    zero padding. Such int8 files have every activation zero point 0, so the padded zeros stay zeros in a
    runtime that pads the int8 tensor (OpenVINO 2026.4.1 pads with 0, not the zero point: resnet20 was off
    by 0.57 of its logit scale there, res2net50_26w_4s by 0.23, docs/deployment.md); a net that pads
    nothing keeps ONNX Runtime's asymmetric activations (more accurate there)."""
    import onnx
    from onnx import numpy_helper

    import resnet_spec
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.calibration import synthetic

    zero_points = {}
    for name in ("resnet20", "resnet18", "res2net50_26w_4s"):
        net = tiny(name)
        w = resnet_spec.init_weights(net, seed=0, random_bn=True)
        ob.convert(net, w, str(tmp_path / name), dtype="int8", calibration=synthetic(net.input_shape))
        model = onnx.load(str(tmp_path / name / f"{net.name}.onnx"))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        zero_points[name] = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"
                             and len(n.input) > 2 and n.input[2] in inits]
        assert zero_points[name], name
    assert ("Pad" in {n.op_type for n in onnx.load(str(tmp_path / "resnet20" / f"{tiny('resnet20').name}.onnx")).graph.node})
    assert all(not zp.any() for zp in zero_points["resnet20"])
    assert all(not zp.any() for zp in zero_points["res2net50_26w_4s"])
    assert any(zp.any() for zp in zero_points["resnet18"])


def test_group_norms_stay_float_in_the_int8_file(tmp_path):
    """A GroupNorm (Reshape, InstanceNormalization, Reshape, Mul by its scale, Add of its shift) is left in
    float32 by the quantizer: OpenVINO 2026.4.1 ran resnetv2_50x1_bit's int8 file with quantized GroupNorms
    0.49 of the logit scale off (ONNX Runtime 0.10); with them in float, 0.10 in both (docs/deployment.md).
    Every conv is still int8 and the file holds the int8 bound in ONNX Runtime."""
    import onnx
    import onnxruntime as ort
    import torch

    import resnet_spec
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.backends.onnx.int8 import float_norm_nodes
    from resnet_spec.backends.torch import backend as tb
    from resnet_spec.calibration import synthetic

    net = tiny("resnetv2_50x1_bit", blocks=1)
    w = resnet_spec.init_weights(net, seed=0, random_bn=True)
    gns = [op for op in net.all_ops() if type(op).__name__ == "GroupNorm"]
    floats = float_norm_nodes(ob.build(net, w).graph)
    assert gns and len(floats) == 7 * len(gns), (len(gns), floats[:7])
    ob.convert(net, w, str(tmp_path), dtype="int8", calibration=synthetic(net.input_shape))
    model = onnx.load(str(tmp_path / f"{net.name}.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == len(gns) and all(producer[n.input[0]].op_type == "Reshape" for n in norms)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)  # int8 weights
    x = np.random.default_rng(1).standard_normal((4, *net.input_shape)).astype(np.float32)
    with torch.inference_mode():
        ref = tb.build(net, w).double().eval()(torch.from_numpy(x.astype(np.float64))).numpy()
    sess = ort.InferenceSession(str(tmp_path / f"{net.name}.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    assert _judge({"int8": True}, ref, got)[2], int8_metrics(ref, got)
