"""GroupNorm and weight-standardized convolutions (timm's GroupNorm/GroupNormAct and StdConv2d: resnet50_gn,
resnetv2_50d_gn, the BiT resnetv2_*_bit models) as ``norm: {type: group, groups, eps}`` and
``conv: {standardize: true, eps}``: the spec keys and their located rules, the IR ops (resnet_spec.ir_norm: every
number-deciding fact a field), every backend against torch, the zoo entries against timm's own models with
randomized weights (every norm affine, conv and classifier weight redrawn), and the imports.
"""

from __future__ import annotations

import ast
import os
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import TINY_PREACT as TINY, one_line_error, rel_err
from timm_checks import (assert_one_located_error, assert_timm_params_and_macs, max_rel as _max_rel,
                         timm_randomized)

import resnet_spec
from resnet_spec import ir
from resnet_spec.cli import main

GN = "norm: {type: group, groups: 4, eps: 1.0e-5}\n"
WS = "conv: {standardize: true, eps: 1.0e-8}\n"


def _net(extra: str = GN + WS) -> ir.Network:
    return resnet_spec.load(TINY + extra)


def _random_weights(net, seed: int = 3):
    from resnet_spec.weights.init import init_weights

    return init_weights(net, seed, random_bn=True)


# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("norm: {type: group, groups: 4, momentum: 0.1}\n", "'momentum' applies to norm type 'batch' only, not to "
     "type 'group'", ("norm", "momentum")),
    ("norm: {groups: 4}\n", "'groups' applies to norm type 'group' or 'evonorm_s0' only, not to type 'batch'",
     ("norm", "groups")),
    ("conv: {eps: 1.0e-8}\n", "'eps' is the weight standardization's epsilon; it applies only with standardize: "
     "true", ("conv", "eps")),
    ("norm: {type: group, groups: 3}\n", "8 channels of bn1 are not divisible by groups=3", ("norm", "groups")),
]


@pytest.mark.parametrize("extra,message,path", BAD, ids=[b[2][-1] + str(i) for i, b in enumerate(BAD)])
def test_rule_errors_are_located(extra, message, path):
    assert_one_located_error(TINY.replace("preact: true", "preact: false") + extra, message, path)


def test_cli_refuses_in_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + "norm: {type: layer}\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{path}:{len(TINY.splitlines()) + 1}:8: norm.type: 'layer' is not one of batch, group" in res.output
    path.write_text(TINY + "conv: {eps: 1.0e-8}\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{path}:{len(TINY.splitlines()) + 1}:" in res.output and "applies only with standardize" in res.output


def test_a_derived_spec_switching_to_group_drops_the_bases_batch_keys():
    """resnet50 says momentum: 0.1; a spec extending it with type group does not inherit it (resolved and
    re-resolved from its merged text, as a worker does), but a momentum given beside the type is refused."""
    net = resnet_spec.load("extends: resnet50\nnorm: {type: group}\ninput: {size: 64}\n")
    assert "momentum" not in yaml.safe_load(net.spec_yaml)["norm"]
    assert resnet_spec.load(net.spec_yaml).all_ops().__next__() == next(net.all_ops())
    with pytest.raises(resnet_spec.errors.SpecError, match="'momentum' applies to norm type 'batch' only"):
        resnet_spec.load("extends: resnet50\nnorm: {type: group, momentum: 0.1}\n")


# --- resolution: the ops and their explicit facts ---------------------------------------------------

def test_every_norm_is_a_groupnorm_and_every_conv_standardized():
    net = _net()
    ops = list(net.all_ops())
    assert not any(isinstance(op, (ir.BatchNorm, ir.Conv)) for op in ops)
    gns = [op for op in ops if isinstance(op, ir.GroupNorm)]
    assert {(op.groups, op.eps) for op in gns} == {(4, 1e-5)}
    assert [op.name for op in gns][-1] == "bn_final"
    convs = [op for op in ops if isinstance(op, ir.StdConv)]
    assert {(op.eps, op.variance) for op in convs} == {(1e-8, "biased")}
    assert [c.name for c in net.blocks[0].convs] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3"]
    assert list(gns[0].tensors()) == [(f"{gns[0].name}.weight", (gns[0].channels,), True),
                                      (f"{gns[0].name}.bias", (gns[0].channels,), True)]
    assert net.buffers == 0  # no running statistics anywhere
    plain = _net(GN)  # GroupNorm without weight standardization (resnet50_gn)
    assert any(isinstance(op, ir.Conv) for op in plain.all_ops())
    assert not any(isinstance(op, ir.StdConv) for op in plain.all_ops())
    assert plain.params == net.params and plain.macs == net.macs


def test_resolved_shows_only_the_keys_of_the_type(tmp_path):
    path = tmp_path / "s.yaml"
    for extra, norm, conv in ((GN + WS, {"type": "group", "groups": 4, "eps": 1e-5}, {"standardize": True,
                                                                                   "eps": 1e-8}),
                              ("", {"type": "batch", "eps": 1e-5, "momentum": 0.1}, {"standardize": False})):
        path.write_text(TINY + extra)
        res = CliRunner().invoke(main, ["resolve", str(path)])
        assert res.exit_code == 0, res.output
        got = yaml.safe_load(res.output)
        assert (got["norm"], got["conv"]) == (norm, conv)


def test_ir_norm_does_not_import_the_ir():
    import resnet_spec.ir_norm as mod

    tree = ast.parse(open(mod.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.split(".")[-1] == "ir" for m in imported), imported
    assert ir.GroupNorm in ir.OP_TYPES and ir.StdConv in ir.OP_TYPES


def test_standardize_is_per_filter_with_the_biased_variance():
    torch = pytest.importorskip("torch")
    from resnet_spec.ir_norm import standardize

    w = np.random.default_rng(0).standard_normal((6, 3, 3, 3)) * 0.1 + 0.02
    got = standardize(w, 1e-8)
    flat = got.reshape(6, -1)
    assert np.allclose(flat.mean(1), 0, atol=1e-12) and np.allclose(flat.var(1), 1, atol=1e-6)
    t = torch.from_numpy(w)
    ref = torch.nn.functional.batch_norm(t.reshape(1, 6, -1), None, None, training=True, momentum=0.0,
                                         eps=1e-8).reshape(w.shape).numpy()
    assert np.abs(got - ref).max() < 1e-9
    unbiased = (w.reshape(6, -1) - w.reshape(6, -1).mean(1, keepdims=True)) / w.reshape(6, -1).std(1, ddof=1,
                                                                                                 keepdims=True)
    assert np.abs(got - unbiased.reshape(w.shape)).max() > 1e-3  # sharp: the unbiased variance differs


# --- backends against torch -------------------------------------------------------------------------

def test_keras_weight_layout_round_trips():
    from resnet_spec.backends.keras import weights as kw

    op = ir.GroupNorm("bn1", 8, 4, 1e-5, (8, 4, 4), (8, 4, 4))
    w = {"bn1.weight": np.arange(8.0), "bn1.bias": -np.arange(8.0)}
    to, back = kw.LAYOUTS[ir.GroupNorm]
    arrays = to(op, w)
    assert [a.tolist() for a in arrays["bn1"]] == [w["bn1.weight"].tolist(), w["bn1.bias"].tolist()]
    assert {k: v.tolist() for k, v in back(op, lambda name: arrays[name]).items()} == \
        {k: v.tolist() for k, v in w.items()}
    assert kw.LAYOUTS[ir.StdConv] == kw.LAYOUTS[ir.Conv]  # the raw kernel; StdConv2D standardizes it


def test_onnx_decomposes_and_every_ort_level_agrees():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.torch import backend as torch_backend

    net = _net()
    weights = _random_weights(net)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    outs = {}
    for opset in (13, 17, 21):
        model = onnx_backend.build(net, weights, opset=opset)
        types = {n.op_type for n in model.graph.node}
        assert "InstanceNormalization" in types and "GroupNormalization" not in types
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            outs[opset, level] = sess.run(None, {"input": x})[0]
            assert rel_err(ref, outs[opset, level]) <= 2e-6, (opset, level)
    assert rel_err(outs[17, "ORT_DISABLE_ALL"], outs[17, "ORT_ENABLE_ALL"]) <= 1e-6
    # sharp: the same graph with a wrong standardization epsilon differs from torch
    wrong = onnx_backend.build(_net(GN + "conv: {standardize: true, eps: 1.0e-2}\n"), weights)
    got = ort.InferenceSession(wrong.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert rel_err(ref, got[0]) > 1e-3


def test_precomputed_standardization_is_close_to_the_graphs():
    """float16/int8 ONNX and the stock .keras take the weights standardized beforehand (float64, rounded
    once); on float32 that differs from the run-time standardization by rounding only."""
    pytest.importorskip("torch")
    from resnet_spec.backends.standardize import standardize_convs
    from resnet_spec.backends.torch import backend as torch_backend

    net = _net()
    weights = _random_weights(net)
    plain_net, plain_w = standardize_convs(net, weights)
    assert not any(isinstance(op, ir.StdConv) for op in plain_net.all_ops())
    assert plain_net.params == net.params and set(plain_w) == set(weights)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    a = torch_backend.infer(net, weights, x)[0]["head"]
    b = torch_backend.infer(plain_net, plain_w, x)[0]["head"]
    assert rel_err(a, b) <= 1e-6


def test_torch_source_has_the_std_conv_module(tmp_path):
    torch = pytest.importorskip("torch")
    from resnet_spec.backends.torch import backend as torch_backend, source

    net = _net()
    text = source.to_source(net)
    assert "class StdConv2d(nn.Conv2d)" in text and "eps=1e-08)" in text and "nn.GroupNorm(4, " in text
    ns: dict = {}
    exec(compile(text, str(tmp_path / "m.py"), "exec"), ns)  # noqa: S102  (our own emitted source)
    model = ns[source.class_name(net.name)]()
    weights = _random_weights(net)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in weights.items()})
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    with torch.inference_mode():
        got = model.eval()(torch.from_numpy(x)).numpy()
    assert rel_err(torch_backend.infer(net, weights, x)[0]["head"], got) == 0.0


# --- the zoo entries against timm -------------------------------------------------------------------

def _timm_randomized(name: str):
    return timm_randomized(name, canonical=True)


@pytest.mark.parametrize("name", ["resnet50_gn", "resnetv2_50x1_bit"])
def test_zoo_entry_equals_timm_with_randomized_weights(name):
    model, weights = _timm_randomized(name)
    assert any(k.endswith(".bias") and v.ndim == 1 and v.std() > 0.05 for k, v in weights.items())
    net = resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\n")
    assert _max_rel(model, net, weights) <= 1e-6


@pytest.mark.slow  # three more full-depth builds
@pytest.mark.parametrize("name,wrongs", [
    ("resnet50_gn", ["norm: {type: group, groups: 16}\n"]),
    ("resnetv2_50x1_bit", ["conv: {standardize: false}\n", "conv: {eps: 1.0e-4}\n"]),
])
def test_wrong_variants_of_the_zoo_entries_differ_from_timm(name, wrongs):
    """Sharp: the equality above fails for the same network with another groups, no standardization or
    another standardization epsilon."""
    model, weights = _timm_randomized(name)
    for wrong in wrongs:
        assert _max_rel(model, resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\n{wrong}"), weights) > 1e-4


@pytest.mark.parametrize("name", ["resnet50_gn", "resnetv2_50x1_bit"])
def test_zoo_entry_has_timms_parameters_and_macs(name):
    assert_timm_params_and_macs(name)


def test_diagram_names_the_norm_and_standardization():
    from resnet_spec.diagram import stage_info

    kinds = {s["kind"] for s in stage_info(resnet_spec.load("resnetv2_50x1_bit"))}
    assert kinds == {"pre-act bottleneck (GN32, WS)"}
    assert {s["kind"] for s in stage_info(resnet_spec.load("resnet50_gn"))} == {"bottleneck (GN32)"}
    assert {s["kind"] for s in stage_info(resnet_spec.load("resnet50"))} == {"bottleneck"}
    from resnet_spec.diagram import _head_lines, _stem_lines

    bit = resnet_spec.load("resnetv2_50x1_bit")
    assert _stem_lines(bit)[:2] == ["conv 7x7/2, 64 (WS)", "maxpool 3x3/2 (zero pad)"]
    assert _head_lines(bit)[0] == "GN32 + ReLU" and "GN32 + ReLU" in _stem_lines(resnet_spec.load("resnet50_gn"))


# --- import -----------------------------------------------------------------------------------------

def test_import_infers_group_norm_and_standardization():
    pytest.importorskip("timm")
    from resnet_spec.importers import import_source

    _, _, net, full, _ = import_source("timm:resnetv2_50d_gn", input_size=32)
    assert full["norm"] == {"type": "group", "groups": 32, "eps": 1e-5} and "conv" not in full
    _, _, net, full, _ = import_source("timm:resnetv2_50x1_bit", input_size=32)
    assert full["conv"] == {"standardize": True, "eps": 1e-8}
    assert full["stem"]["pool"] == {"kernel": 3, "stride": 2, "padding": 1, "pad_value": "zero"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50_gn", "resnetv2_50d_gn", "resnetv2_50x1_bit", "resnetv2_101x1_bit"])
def test_import_by_name_with_parity(name):
    pytest.importorskip("timm")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    r = family_coverage.run_one(f"timm:{name}", 64, isolated=False)
    assert r["status"] == "parity", r
    assert r["max_rel"] <= 1e-6


def test_mixed_standardized_and_plain_convs_refused(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.layers import GroupNormAct
    from timm.models import resnetv2

    from resnet_spec.backends.torch import reader
    from resnet_spec.importers.source import ImportRefused

    model = resnetv2.ResNetV2(layers=[1, 1], channels=(256, 512), num_classes=5, stem_type="fixed",
                              norm_layer=GroupNormAct).eval()  # StdConv2d everywhere ...
    model.stem.conv = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)  # ... but the stem's
    monkeypatch.setattr(reader, "library_model", lambda lib, name: model)
    with pytest.raises(ImportRefused, match="a plain convolution beside weight-standardized"):
        reader.read_library("timm", "mixed")


# --- every backend, every file (slow: workers, TensorFlow, int8 calibration) -------------------------

@pytest.mark.slow
def test_cli_parity_passes_every_pair(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + GN + WS)
    res = CliRunner().invoke(main, ["parity", str(path)])
    assert res.exit_code == 0, res.output
    assert "PASS: 10/10 pairs" in res.output


@pytest.mark.slow
def test_cli_parity_train_passes(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + GN + WS)
    res = CliRunner().invoke(main, ["parity", str(path), "--train"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_every_converted_file_verifies(tmp_path):
    """float32/float16/int8 ONNX, the stock .keras (pre-standardized Conv2D kernels), SavedModel, TFLite,
    .pt2; and the .keras passes the trust allow-list with Keras' own count of its values."""
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY + GN + WS)
    runs = [("all,tflite", "float32"), ("onnx", "float16"), ("onnx", "int8")]
    for to, dtype in runs:
        out = tmp_path / dtype
        res = CliRunner().invoke(main, ["convert", str(spec), "--to", to, "--dtype", dtype, "-o", str(out)])
        assert res.exit_code == 0, res.output
    files = [tmp_path / "float32" / f for f in ("tiny.onnx", "tiny.keras", "tiny.tflite", "tiny.pt2",
                                                "tiny_savedmodel")]
    files += [tmp_path / "float16" / "tiny.onnx", tmp_path / "int8" / "tiny.onnx"]
    for f in files:
        res = CliRunner().invoke(main, ["verify", str(spec), str(f)])
        assert res.exit_code == 0, (f, res.output)


def test_keras_allow_list_rules_for_group_norm_and_std_conv():
    from resnet_spec import keras_rules as R
    from resnet_spec.trust_keras import LAYERS

    assert LAYERS["GroupNormalization"].shape is R.group_norm and LAYERS["StdConv2D"].values is R.std_conv_values
    assert R.group_norm({"groups": 4, "axis": -1}, [(None, 8, 8, 16)]) == (None, 8, 8, 16)
    assert R.gn_values({"groups": 4}, (None, 8, 8, 16)) == (32, "2 vectors of 16")
    with pytest.raises(R.Bad, match="groups=3 does not divide its 16 channels"):
        R.group_norm({"groups": 3}, [(None, 8, 8, 16)])
    conf = {"filters": 8, "kernel_size": [3, 3], "use_bias": False, "eps": 1e-8}
    assert R.std_conv_values(conf, (None, 8, 8, 4))[0] == 3 * 3 * 4 * 8
    for eps in (-1.0, 0, "1e-8", True, 2.0):
        with pytest.raises(R.Bad, match="eps is"):
            R.std_conv_values({**conf, "eps": eps}, (None, 8, 8, 4))


def test_group_norm_of_one_group_and_default_std_conv_eps_are_proven(monkeypatch):
    """timm's GroupNorm1Act (a GroupNorm of one group) in a ResNetV2 of StdConv2d at their default eps 1e-6:
    inferred as norm groups 1 and conv eps 1e-6, and proven against the model itself (randomized weights)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.layers import GroupNorm1Act
    from timm.models import resnetv2

    from resnet_spec.backends.torch import reader
    from resnet_spec.importers.infer import build_spec
    from resnet_spec.importers.run import prove
    from resnet_spec.importers.source import check_source

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    torch.manual_seed(0)
    model = resnetv2.ResNetV2(layers=[1, 1], channels=(256, 512), num_classes=5, norm_layer=GroupNorm1Act).eval()
    monkeypatch.setattr(reader, "library_model", lambda lib, name: model)
    src = reader.read_library("timm", "gn1")
    src.weights = family_coverage.randomized(src.weights)
    _, net, full = build_spec(src, "gn1", 32)
    assert full["norm"] == {"type": "group", "groups": 1, "eps": 1e-5}
    assert full["conv"] == {"standardize": True, "eps": 1e-6}
    cmp = prove(src, net, full, check_source(net, src), isolated=False)
    assert cmp["passed"] and cmp["max_rel"] <= 1e-6, cmp


@pytest.mark.parametrize("spatial", ["split_attention", "res2net", "selective_kernel"])
@pytest.mark.parametrize("extra,why", [(GN, "norm type 'group'"), (WS, "conv.standardize")])
def test_composite_spatial_ops_refuse_group_norm_and_standardized_convs(spatial, extra, why):
    """Split attention, Res2Net's split convs and a selective kernel hold their own BatchNorms and plain
    convs: with a GroupNorm network or standardized convs they would silently keep them, so they are
    refused, located at block.spatial.type."""
    from resnet_spec.resolve import semantic_errors
    from resnet_spec.spec import load

    text = TINY.replace("preact: true", f"preact: false, spatial: {{type: {spatial}}}") + extra
    errors = [e for e in semantic_errors(load(text)) if "block.spatial type" in str(e)]
    assert len(errors) == 1 and why in str(errors[0]), errors
    assert tuple(errors[0].path) == ("block", "spatial", "type") and errors[0].line == 4
