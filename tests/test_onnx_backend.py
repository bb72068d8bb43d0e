"""ONNX backend: graph shape (node counts, names, metadata), onnx.checker and shape inference for the
whole zoo, deterministic bytes, external data, inspect/convert through the CLI, and ONNX Runtime
outputs against the PyTorch backend.

Tolerance. Errors are measured as max|ort - torch| / max|torch| (conftest.rel_err, torch being the
reference). Over the whole zoo, batch 1 and 3, random BN statistics, the largest figure measured was
PARITY_MEASURED (docs/onnx_parity.md has the table; the median is about 6e-7). Both sides compute in
float32 with different kernels and summation orders, and the ONNX side also folds BN: the error is
a few float32 roundings (2**-23 = 1.2e-7) of the output scale, growing slowly with depth and width.
PARITY_TOL = 1e-5 (about 80 roundings) leaves an 11x margin over the worst measurement, while one
weight of a 270k-parameter net changed by 1.0 (test_mutate_planted_fault_is_caught) moves the logits
by more than 100x PARITY_TOL.

Set ONNX_PARITY_REPORT=path.jsonl to append the measured figures of the zoo sweep to that file.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest
from conftest import rel_err, small, tiny_text, tiny_zoo

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import resnet_spec  # noqa: E402
from resnet_spec import ir  # noqa: E402
from resnet_spec.backends.onnx import backend as ob, graph as onnx_graph  # noqa: E402
from resnet_spec.backends.torch import backend as tb  # noqa: E402
from resnet_spec.errors import BackendUnavailable, ResNetSpecError  # noqa: E402
from resnet_spec.weights import init_weights  # noqa: E402

PARITY_MEASURED = 8.9e-7  # resnext101_32x8d at 64 px, batch 3
PARITY_TOL = 1e-5
# Folding BN only changes the rounding (measured at most 4.0e-7).
FOLD_TOL = 1e-5

# Real input size for a few; the rest at a small size that keeps every feature map non-empty.
REAL_SIZE = {"resnet18", "resnet50", "resnet20", "resnet56", "preact_resnet164", "wrn_28_10"}
# Odd feature maps put ceil-mode extensions into resnet50d's avg-pool shortcuts and caffe's max-pool.
SIZE = {"resnet50d": 72, "resnet50_caffe": 72}

MIXED = """extends: resnet50
name: mixed_ops
input: {size: 48}
conv_bias: true
block: {type: bottleneck, groups: 2, width_per_group: 8, drop_path_rate: 0.1, se: {reduction: 4}}
stages:
  - {blocks: 1, channels: 8}
  - {blocks: 2, channels: 16, stride: 2, dilate: true}
head: {classes: 10, dropout: 0.2}
"""


def parity_net(name):
    if name in REAL_SIZE:
        return resnet_spec.load(name)
    return small(name, SIZE.get(name))


def _x(net, batch, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)


def _counts(model):
    return dict(collections.Counter(n.op_type for n in model.graph.node))


@pytest.fixture(scope="module")
def r50():
    net = resnet_spec.load("resnet50")
    return net, init_weights(net, seed=0, random_bn=True)


@pytest.fixture(scope="module")
def r20():
    net = resnet_spec.load("resnet20")
    return net, init_weights(net, seed=0, random_bn=True)


# -- graph shape ------------------------------------------------------------------------------------


def test_folded_resnet50_is_minimal(r50):
    model = ob.build(*r50)
    assert _counts(model) == {"Conv": 53, "Relu": 49, "Add": 16, "MaxPool": 1, "GlobalAveragePool": 1,
                              "Flatten": 1, "Gemm": 1}
    assert len(model.graph.node) == 122


def test_unfolded_resnet50_keeps_batchnorm(r50):
    counts = _counts(ob.build(*r50, fold_bn=False))
    assert counts.pop("BatchNormalization") == 53
    assert sum(counts.values()) == 122


def test_preact_keeps_only_unfoldable_batchnorm():
    # keras ResNet50V2: per block, bn1 (pre-activation, after the previous Add) cannot fold; bn2/bn3
    # follow conv1/conv2 and fold. bn_final follows the last Add.
    net = small("keras_resnet50v2")
    counts = _counts(ob.build(net, init_weights(net, random_bn=True)))
    assert counts == {"Conv": 53, "BatchNormalization": 16 + 1, "Relu": 49, "Add": 16, "MaxPool": 1, "Max": 1,
                      "Slice": 3, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    counts = _counts(ob.build(net, init_weights(net, random_bn=True), fold_bn=False))
    assert counts["BatchNormalization"] == 49


def test_other_lowerings_counts():
    net = small("seresnet50")
    c = _counts(ob.build(net, init_weights(net)))
    assert c["Conv"] == 53 + 2 * 16 and c["Sigmoid"] == 16 and c["Mul"] == 16 and c["GlobalAveragePool"] == 17
    net = resnet_spec.load("resnet20")
    c = _counts(ob.build(net, init_weights(net)))
    assert c["Slice"] == 2 and c["Pad"] == 2 and "Identity" not in c
    net = resnet_spec.load(MIXED)  # dropout and drop-path produce no nodes
    c = _counts(ob.build(net, init_weights(net)))
    assert not {"Dropout", "Identity"} & set(c)


def test_names_and_interface(r50):
    net, w = r50
    model = ob.build(net, w)
    g = model.graph
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    dims = [(d.dim_param or d.dim_value) for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 224, 224]
    inits = {t.name for t in g.initializer}
    assert {"conv1.weight", "conv1.bias", "layer1.0.conv1.weight", "layer1.0.conv1.bias",
            "layer1.0.downsample.0.bias", "fc.weight", "fc.bias"} <= inits
    assert not any(".bn" in n or "running" in n for n in inits)
    # the folded conv holds W * gamma / sqrt(var + eps)
    s = w["bn1.weight"].astype(np.float64) / np.sqrt(w["bn1.running_var"].astype(np.float64) + 1e-5)
    folded = onnx.numpy_helper.to_array(next(t for t in g.initializer if t.name == "conv1.weight"))
    np.testing.assert_allclose(folded, w["conv1.weight"] * s[:, None, None, None], rtol=1e-6)
    b = onnx.numpy_helper.to_array(next(t for t in g.initializer if t.name == "conv1.bias"))
    np.testing.assert_allclose(b, -w["bn1.running_mean"] * s + w["bn1.bias"], rtol=1e-6, atol=1e-7)
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    assert {a.name: a.i for a in gemm.attribute} == {"transB": 1}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {"resnet_spec.name": "resnet50", "resnet_spec.spec": net.spec_yaml,
                    "resnet_spec.version": resnet_spec.__version__, "resnet_spec.layout": "nchw"}
    assert model.producer_name == "resnet-spec"
    assert model.opset_import[0].version == ob.DEFAULT_OPSET == 17
    fixed = ob.build(net, w, batch=4).graph
    assert fixed.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert fixed.output[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_fold_batchnorm_is_a_pure_pass(r20):
    net, w = r20
    before = {k: v.copy() for k, v in w.items()}
    fnet, fw = ob.fold_batchnorm(net, w)
    assert all(np.array_equal(w[k], before[k]) for k in w) and net.tensors() != fnet.tensors()
    assert not any(isinstance(op, ir.BatchNorm) for op in fnet.all_ops())
    assert set(fw) == {t.name for t in fnet.tensors()}


def test_deterministic_bytes(r20, tmp_path):
    net, w = r20
    a = ob.build(net, w).SerializeToString()
    b = ob.build(net, init_weights(net, seed=0, random_bn=True)).SerializeToString()
    assert a == b
    # convert streams the weights into the file: the bytes are still exactly protobuf's own.
    p1 = ob.convert(net, w, str(tmp_path / "a"))[0]
    p2 = ob.convert(net, w, str(tmp_path / "b"))[0]
    assert open(p1, "rb").read() == open(p2, "rb").read() == a
    for spec in (MIXED, "extends: keras_resnet50v2\ninput: {size: 32}"):
        net = resnet_spec.load(spec)
        w = init_weights(net, seed=0, random_bn=True)
        for kw in ({}, {"fold_bn": False, "batch": 2, "opset": 21}):
            (p,) = ob.convert(net, w, str(tmp_path / "c"), force=True, **kw)
            assert open(p, "rb").read() == ob.build(net, w, **kw).SerializeToString()


def test_bad_options(r20):
    net, w = r20
    for opset in (ob.MIN_OPSET - 1, ob.MAX_OPSET + 1):
        with pytest.raises(ResNetSpecError, match="opset"):
            ob.build(net, w, opset=opset)
    with pytest.raises(ResNetSpecError, match="batch"):
        ob.build(net, w, batch=0)
    with pytest.raises(ResNetSpecError, match="missing tensor"):
        ob.build(net, {k: v for k, v in w.items() if k != "fc.bias"})


# -- checker and shape inference --------------------------------------------------------------------


def _check(model, net, batch="batch"):
    """Full onnx.checker, then strict shape inference must reproduce the IR's shapes."""
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    shapes = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    assert shapes["logits"] == [batch, net.num_classes]
    for b in net.blocks:  # every block's output as the IR says
        assert shapes[b.name] == [batch, *b.out_shape], b.name


@pytest.mark.parametrize("opset", range(ob.MIN_OPSET, ob.MAX_OPSET + 1))
def test_every_supported_opset(opset):
    net = small("resnet18")
    w = init_weights(net, random_bn=True)
    model = ob.build(net, w, opset=opset)
    _check(model, net)
    x = _x(net, 2)
    out, _ = ob.infer(net, w, x, opset=opset)
    ref, _ = ob.infer(net, w, x)
    assert rel_err(ref["head"], out["head"]) < 1e-6


# -- external data ----------------------------------------------------------------------------------


def test_external_data(r20, tmp_path):
    net, w = r20
    paths = ob.convert(net, w, str(tmp_path), external_data_threshold=1000)
    assert [os.path.basename(p) for p in paths] == ["resnet20.onnx", "resnet20.onnx.data"]
    onnx_path, data_path = paths
    assert os.path.getsize(onnx_path) < 100_000 < os.path.getsize(data_path)
    onnx.checker.check_model(onnx_path, full_check=True)
    model = onnx.load(onnx_path)  # reads the data file back
    inline = ob.build(net, w)
    for a, b in zip(model.graph.initializer, inline.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    x = _x(net, 2)
    sess, _ = ob.make_session(onnx_path)
    np.testing.assert_array_equal(ob.run_session(sess, x)["head"], ob.infer(net, w, x)[0]["head"])
    info = ob.inspect(onnx_path)
    assert info["external_data"] and info["parameters"] == ob.inspect(ob.convert(
        net, w, str(tmp_path / "inline"))[0])["parameters"]
    # Deterministic too, and refused without force.
    again = ob.convert(net, w, str(tmp_path / "again"), external_data_threshold=1000)
    assert [open(p, "rb").read() for p in again] == [open(p, "rb").read() for p in paths]
    with pytest.raises(ResNetSpecError, match="already exists"):
        ob.convert(net, w, str(tmp_path), external_data_threshold=1000)


# -- convert / inspect / CLI ------------------------------------------------------------------------


def test_convert_refuses_overwrite(r20, tmp_path):
    net, w = r20
    (path,) = ob.convert(net, w, str(tmp_path))
    with open(path, "rb") as fh:
        first = fh.read()
    with pytest.raises(ResNetSpecError, match="already exists"):
        ob.convert(net, w, str(tmp_path), fold_bn=False)
    assert open(path, "rb").read() == first
    ob.convert(net, w, str(tmp_path), fold_bn=False, force=True)
    assert "BatchNormalization" in ob.inspect(path)["node_counts"]
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_inspect_round_trip(r50, tmp_path):
    net, w = r50
    (path,) = ob.convert(net, w, str(tmp_path))
    info = ob.inspect(path)
    assert info["spec_name"] == "resnet50" and info["spec_yaml"] == net.spec_yaml
    assert resnet_spec.load(info["spec_yaml"]) == net  # the spec comes back whole
    assert info["resnet_spec_version"] == resnet_spec.__version__ and info["opset"] == 17
    assert info["producer"] == f"resnet-spec {resnet_spec.__version__}"
    assert info["inputs"] == [{"name": "input", "shape": ["batch", 3, 224, 224]}]
    assert info["outputs"] == [{"name": "logits", "shape": ["batch", 1000]}]
    assert info["nodes"] == 122 and info["node_counts"]["Conv"] == 53
    bn = sum(int(np.prod(t.shape)) for t in net.tensors() if ".bn" in "." + t.name or "downsample.1" in t.name)
    conv_bias = sum(op.out_channels for op in net.all_ops() if isinstance(op, ir.Conv))
    assert info["parameters"] == net.params + net.buffers - bn + conv_bias
    assert info["initializers"] == 53 * 2 + 2
    text = ob.format_inspect(info)
    assert "resnet50" in text and "opset:      17" in text and net.spec_yaml.strip() in text
    assert "input (batch, 3, 224, 224)" in text


def test_inspect_rejects_foreign_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffthis is not a protobuf" * 10)
    with pytest.raises(ResNetSpecError, match="not an ONNX model"):
        ob.inspect(str(junk))
    text = tmp_path / "spec.onnx"
    text.write_text("name: resnet50\n")
    with pytest.raises(ResNetSpecError, match="not an ONNX model"):
        ob.inspect(str(text))
    # A valid ONNX file from someone else: refused, but its contents are shown.
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(helper.make_model(g, producer_name="elsewhere").SerializeToString())
    with pytest.raises(ResNetSpecError, match="not written by resnet-spec") as exc:
        ob.inspect(str(foreign))
    assert "elsewhere" in str(exc.value) and "Relu 1" in str(exc.value) and "x (n, 4)" in str(exc.value)
    info = ob.inspect(str(foreign), require_metadata=False)
    assert info["spec_name"] is None and info["nodes"] == 1


def test_cli_convert_and_inspect(tmp_path):
    from click.testing import CliRunner

    from resnet_spec.cli import main

    out = str(tmp_path / "out")
    r = CliRunner().invoke(main, ["convert", "resnet20", "--to", "onnx", "-o", out, "--batch", "2",
                                  "--opset", "18"])
    assert r.exit_code == 0, r.output
    path = os.path.join(out, "resnet20.onnx")
    assert path in r.output
    r = CliRunner().invoke(main, ["inspect", path])
    assert r.exit_code == 0, r.output
    assert "resnet20" in r.output and "opset:      18" in r.output and "input (2, 3, 32, 32)" in r.output
    assert "spec YAML:" in r.output and "name: resnet20" in r.output
    r = CliRunner().invoke(main, ["inspect", path, "--json"])
    assert json.loads(r.output)["node_counts"]["Slice"] == 2
    r = CliRunner().invoke(main, ["convert", "resnet20", "--to", "onnx", "-o", out])
    assert r.exit_code == 1 and "already exists" in r.output and "Traceback" not in r.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    r = CliRunner().invoke(main, ["inspect", str(junk)])
    assert r.exit_code == 1 and "not an ONNX model" in r.output and "Traceback" not in r.output


# -- running ------------------------------------------------------------------------------------------


def test_infer_device_text_and_refusals(r20):
    net, w = r20
    x = _x(net, 1)
    out, desc = ob.infer(net, w, x)
    assert desc == f"cpu (CPUExecutionProvider), onnxruntime {ort.__version__}"
    assert out["head"].shape == (1, 10) and out["head"].dtype == np.float32
    for dtype in ("float16", "bfloat16"):
        with pytest.raises(BackendUnavailable, match="float32"):
            ob.infer(net, w, x, dtype=dtype)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDA"):
            ob.infer(net, w, x, device="cuda")
    with pytest.raises(BackendUnavailable, match="device"):
        ob.infer(net, w, x, device="tpu")
    with pytest.raises(ResNetSpecError, match="optimization"):
        ob.infer(net, w, x, optimization="max")
    plain, _ = ob.infer(net, w, x, optimization="disable", threads=1)
    assert rel_err(out["head"], plain["head"]) < 1e-5


def test_mutate_planted_fault_is_caught(r20):
    net, w = r20
    x = _x(net, 2)
    ref, _ = ob.infer(net, w, x)

    def flip_one_weight(model):
        t = next(t for t in model.graph.initializer if t.name == "layer2.1.conv1.weight")
        arr = onnx.numpy_helper.to_array(t).copy()
        arr[0, 0, 1, 1] += 1.0
        t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
        return model

    def relu_to_sigmoid(model):
        next(n for n in model.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
        return model

    for fault in (flip_one_weight, relu_to_sigmoid):
        bad, _ = ob.infer(net, w, x, mutate=fault)
        assert rel_err(ref["head"], bad["head"]) > 100 * PARITY_TOL, fault.__name__


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "keras_resnet50v2", "resnet50d", "seresnet50"])
def test_taps_match_torch(name):
    net = parity_net(name)
    w = init_weights(net, seed=0, random_bn=True)
    x = _x(net, 2)
    got, _ = ob.infer(net, w, x, taps=True)
    ref, _ = tb.infer(net, w, x, taps=True)
    assert list(got) == ["head", *[t for t in net.tap_names() if t != "head"]]
    assert set(got) == set(ref) == set(net.tap_names())
    for t in net.tap_names():
        assert got[t].shape == ref[t].shape, t
        # worst tap measured 1.05e-6 (resnet50d layer4.2 at 72 px; AMD EPYC AVX-512, onnxruntime 1.32): margin 9.5x
        assert rel_err(ref[t], got[t]) < PARITY_TOL, t


def _pool_cases():
    for kind in ("max", "avg"):
        for kernel, stride in ((3, 2), (2, 2), (3, 1)):
            for padding in range(0, kernel // 2 + 1):
                for ceil in (False, True):
                    for cip in ((False, True) if kind == "avg" else (False,)):
                        for value in (("neg_inf", "zero") if kind == "max" else ("zero",)):
                            for size in (7, 8):
                                yield kind, kernel, stride, padding, ceil, cip, value, size


def _single_op_outputs(op, x, in_shape):
    """Run one IR op both in ONNX Runtime (our lowering) and through the torch backend's module."""
    from onnx import TensorProto, helper

    g = onnx_graph.Graph({})
    y = onnx_graph.OPS[type(op)](g, op, "x", "t")  # the op's lowering, as the graph's walk applies it
    graph = g.graph
    graph.name = "t"
    for t in graph.initializer:
        t.raw_data = g.arrays[t.name].tobytes()
    graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    graph.output.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    with torch.inference_mode():
        ref = tb.OPS[type(op)](op).eval()(torch.from_numpy(x)).numpy()
    return got, ref


@pytest.mark.parametrize("case", list(_pool_cases()), ids=lambda c: "-".join(map(str, c)))
def test_pool_semantics_match_torch(case):
    kind, kernel, stride, padding, ceil, cip, value, size = case
    out = ir.pool_out(size, kernel, stride, padding, ceil)
    op = ir.Pool("p", kind, kernel, stride, padding, ceil, cip, value, (3, size, size), (3, out, out))
    # Negative inputs make a zero padding win a max, which -inf padding must never do.
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32) - 1.0
    got, ref = _single_op_outputs(op, x, op.in_shape)
    assert got.shape == ref.shape == (2, 3, out, out)
    # worst measured |got - ref| 2.4e-7 = 12% of this bound (avg k3 s1 p1 8x8; onnxruntime 1.32, AMD EPYC
    # AVX-512): margin 8.6x; max pools are exact
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_subsample_and_channel_pad_match_torch():
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 7)).astype(np.float32)
    for op in (ir.Subsample(2, (4, 7, 7), (4, 4, 4)), ir.ChannelPad(3, 5, (4, 7, 7), (12, 7, 7))):
        got, ref = _single_op_outputs(op, x, (4, 7, 7))
        np.testing.assert_array_equal(got, ref)


# -- whole zoo --------------------------------------------------------------------------------------


def _record(row):
    path = os.environ.get("ONNX_PARITY_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    print(row)


#: the checker-and-parity sweep: each distinct network at tiny depth (odd sizes where SIZE says), the
#: entries of REAL_SIZE whole at their real input size, and the 1000-layer entries whole
ZOO_PARITY = [f"{n}:tiny" for n in tiny_zoo()] + sorted(REAL_SIZE) + ["resnet1202", "preact_resnet1001", "mixed_ops"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_PARITY)
def test_zoo_checker_and_parity(name):
    """onnx.checker (full) + shape inference, then ORT vs the PyTorch backend at batch 1 and 3, folded
    and unfolded, random BN statistics."""
    if name.endswith(":tiny"):
        base = name.removesuffix(":tiny")
        net = resnet_spec.load(tiny_text(base, size=SIZE.get(base)))
    else:
        net = resnet_spec.load(MIXED) if name == "mixed_ops" else parity_net(name)
    w = init_weights(net, seed=0, random_bn=True)
    data = ob.build(net, w).SerializeToString()
    _check(data, net)
    x3 = _x(net, 3)
    # Batch 1 is compared with the same image's row of the torch batch-3 run: what is tested is that
    # the ONNX graph (dynamic batch) gives the same result at either batch size.
    tmodel = tb.build(net, w)
    with torch.inference_mode():
        ref3 = tmodel(torch.from_numpy(x3)).numpy()
    ref1 = ref3[:1]
    del tmodel
    sess, _ = ob.make_session(data)
    del data
    got3 = ob.run_session(sess, x3)["head"]
    got1 = ob.run_session(sess, x3[:1])["head"]
    del sess
    unfolded, _ = ob.infer(net, w, x3, fold_bn=False)
    row = {"name": name, "input": list(net.input_shape), "scale": float(np.abs(ref3).max()),
           "rel_b1": rel_err(ref1, got1), "rel_b3": rel_err(ref3, got3),
           "rel_unfolded": rel_err(ref3, unfolded["head"]), "rel_fold_vs_unfold": rel_err(unfolded["head"], got3)}
    _record(row)
    assert np.isfinite(got3).all() and row["scale"] > 1e-3
    assert row["rel_b1"] < PARITY_TOL and row["rel_b3"] < PARITY_TOL and row["rel_unfolded"] < PARITY_TOL
    assert row["rel_fold_vs_unfold"] < FOLD_TOL
