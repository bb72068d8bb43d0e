"""Filter Response Normalization with its TLU and EvoNorm-S0 (timm's FilterResponseNormTlu2d and EvoNorm2dS0:
resnetv2_50d_frn, resnetv2_50d_evos) as ``norm: {type: frn, eps}`` and ``norm: {type: evonorm_s0, groups, eps}``:
the located rules, the IR ops (resnet_spec.ir_frn: every number-deciding fact a field, the ReLU after each norm
folded into it), each op against timm's own layer with randomized parameters, every backend against torch, the
imports of tiny timm models against the models themselves (randomized, params and MACs), and the refusals of the
variants a spec does not say.
"""

from __future__ import annotations

import ast
import functools
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_PREACT as TINY, one_line_error, rel_err
from timm_checks import assert_one_located_error, ort_at_both_levels

import resnet_spec
from resnet_spec import ir, ir_frn
from resnet_spec.cli import main

FRN = "norm: {type: frn, eps: 1.0e-5}\n"
EVO = "norm: {type: evonorm_s0, groups: 4, eps: 1.0e-5}\n"
V1 = TINY.replace("preact: true", "preact: false")


def _net(extra: str, text: str = TINY) -> ir.Network:
    return resnet_spec.load(text + extra)


def _random_weights(net, seed: int = 3):
    from resnet_spec.weights.init import init_weights

    return init_weights(net, seed, random_bn=True)


def _x(net, seed: int = 0):
    return np.random.default_rng(seed).standard_normal((2, *net.input_shape)).astype(np.float32)


# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("norm: {type: frn, groups: 4}\n", "'groups' applies to norm type 'group' or 'evonorm_s0' only, not to type "
     "'frn'", ("norm", "groups")),
    ("norm: {type: evonorm_s0, momentum: 0.1}\n", "'momentum' applies to norm type 'batch' only, not to type "
     "'evonorm_s0'", ("norm", "momentum")),
    ("norm: {type: evonorm_s0, groups: 3}\n", "8 channels of bn1 are not divisible by groups=3", ("norm", "groups")),
]


@pytest.mark.parametrize("extra,message,path", BAD, ids=["frn_groups", "evo_momentum", "evo_groups"])
def test_rule_errors_are_located(extra, message, path):
    assert_one_located_error(V1 + extra, message, path)


def test_cli_names_the_new_types_and_composite_spatial_ops_refuse_them(tmp_path):
    from resnet_spec.resolve import semantic_errors
    from resnet_spec.spec import load

    path = tmp_path / "s.yaml"
    path.write_text(TINY + "norm: {type: frm}\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "norm.type: 'frm' is not one of batch, group, frn, evonorm_s0" in res.output
    text = V1.replace("preact: false", "preact: false, spatial: {type: res2net}") + FRN
    errors = [e for e in semantic_errors(load(text)) if "block.spatial type" in str(e)]
    assert len(errors) == 1 and "norm type 'frn'" in str(errors[0]), errors


# --- resolution: the ops, their facts, the folded ReLU ----------------------------------------------

@pytest.mark.parametrize("extra,cls,extra_leaf", [(FRN, ir.FRN, "tau"), (EVO, ir.EvoNormS0, "v")])
def test_preact_norms_hold_the_activation_and_no_relu_is_left(extra, cls, extra_leaf):
    net = _net(extra)
    ops = list(net.all_ops())
    norms = [op for op in ops if isinstance(op, cls)]
    assert not any(isinstance(op, (ir.ReLU, ir.BatchNorm, ir.GroupNorm)) for op in ops)
    assert all(op.act and op.eps == 1e-5 for op in norms) and norms[-1].name == "bn_final"
    assert list(norms[0].tensors()) == [(f"{norms[0].name}.{leaf}", (norms[0].channels,), True)
                                        for leaf in ("weight", "bias", extra_leaf)]
    if cls is ir.EvoNormS0:
        assert {(op.groups, op.variance) for op in norms} == {(4, "biased")}
    else:
        assert not any(op.eps_learnable for op in norms)
    assert net.buffers == 0
    plain = _net("")  # the same network with BatchNorm + ReLU: 3 params per norm vs BN's 2
    assert net.params == plain.params + sum(op.channels for op in norms) and net.macs == plain.macs


@pytest.mark.parametrize("extra,cls", [(FRN, ir.FRN), (EVO, ir.EvoNormS0)])
def test_v1_norms_without_a_relu_after_them_have_no_activation(extra, cls):
    """timm's apply_act=False: a v1 block's last norm (the ReLU comes after the add) and its projection's."""
    net = _net(extra, V1)
    block = net.blocks[1]
    by_name = {op.name: op for op in block.ops if isinstance(op, cls)}
    assert [by_name[n].act for n in ("layer2.0.bn1", "layer2.0.bn2", "layer2.0.bn3", "layer2.0.downsample.1")] \
        == [True, True, False, False]
    assert isinstance(block.post[0], ir.ReLU) and not any(isinstance(op, ir.ReLU) for op in block.main)
    leaves = {name.rpartition(".")[2] for name, _, _ in by_name["layer2.0.bn3"].tensors()}
    assert leaves == {"weight", "bias"}


def test_resolved_spec_and_ir_module_apart():
    import yaml

    import resnet_spec.ir_frn as mod

    net = _net(EVO)
    assert yaml.safe_load(net.spec_yaml)["norm"] == {"type": "evonorm_s0", "groups": 4, "eps": 1e-5}
    assert next(resnet_spec.load(net.spec_yaml).all_ops()) == next(net.all_ops())
    tree = ast.parse(open(mod.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.split(".")[-1] == "ir" for m in imported), imported
    assert ir.FRN in ir.OP_TYPES and ir.EvoNormS0 in ir.OP_TYPES


# --- each op against timm's own layer, randomized parameters -----------------------------------------

def _randomize(layer, seed: int = 0):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name in ("tau", "bias") else 0.5) + (
                0.0 if name in ("tau", "bias") else 1.0))
    return {f"n.{k}": v.detach().numpy().astype(np.float32) for k, v in layer.state_dict().items()}


def _ops_against_timm(timm_layer, op, ours, x):
    torch = pytest.importorskip("torch")
    w = _randomize(timm_layer)
    ours.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in w.items()})
    with torch.no_grad():
        ref = timm_layer(torch.from_numpy(x)).numpy()
        got = ours(torch.from_numpy(x)).numpy()
    numpy_ref = (ir_frn.frn_numpy if isinstance(op, ir.FRN) else ir_frn.evonorm_s0_numpy)(op, x, w)
    return ref, got, numpy_ref.astype(np.float32), w


@pytest.mark.parametrize("act", [True, False])
def test_frn_op_equals_timms_layer(act):
    pytest.importorskip("timm")
    from timm.layers import FilterResponseNormTlu2d

    from resnet_spec.backends.torch.frn import FilterResponseNorm2d

    x = np.random.default_rng(1).standard_normal((2, 6, 5, 7)).astype(np.float32) * 3 + 1
    op = ir.FRN("n", 6, 1e-5, act, (6, 5, 7), (6, 5, 7))
    ref, got, numpy_ref, w = _ops_against_timm(FilterResponseNormTlu2d(6, apply_act=act).eval(), op,
                                               FilterResponseNorm2d(6, 1e-5, act), x)
    assert rel_err(ref, got) <= 1e-6 and rel_err(ref, numpy_ref) <= 1e-6
    if act:
        assert (ref == w["n.tau"].reshape(1, -1, 1, 1)).mean() > 0.1  # the TLU decides somewhere
    # sharp: a centred statistic (per-channel instance norm) or another eps differs
    c11 = (1, -1, 1, 1)
    d = x - x.mean(axis=(2, 3), keepdims=True)
    centred = d / np.sqrt((d * d).mean(axis=(2, 3), keepdims=True) + 1e-5) * w["n.weight"].reshape(c11) \
        + w["n.bias"].reshape(c11)
    centred = np.maximum(centred, w["n.tau"].reshape(c11)) if act else centred
    assert rel_err(ref, centred) > 1e-2
    assert rel_err(ref, ir_frn.frn_numpy(ir.FRN("n", 6, 1.0, act, None, None), x, w)) > 1e-2


def test_evonorm_s0_op_equals_timms_layer():
    pytest.importorskip("timm")
    from timm.layers import EvoNorm2dS0

    from resnet_spec.backends.torch.frn import EvoNormS0

    x = np.random.default_rng(2).standard_normal((2, 8, 5, 7)).astype(np.float32) * 2 + 0.5
    op = ir.EvoNormS0("n", 8, 4, 1e-5, True, (8, 5, 7), (8, 5, 7))
    ref, got, numpy_ref, w = _ops_against_timm(EvoNorm2dS0(8, groups=4).eval(), op, EvoNormS0(8, 4, 1e-5, True), x)
    assert rel_err(ref, got) <= 1e-6 and rel_err(ref, numpy_ref) <= 1e-6
    for wrong in (ir.EvoNormS0("n", 8, 2, 1e-5, True, None, None), ir.EvoNormS0("n", 8, 4, 1e-1, True, None, None)):
        assert rel_err(ref, ir_frn.evonorm_s0_numpy(wrong, x, w)) > 1e-3  # sharp: groups, eps
    g, c11 = x.reshape(2, 4, -1).astype(np.float64), (1, -1, 1, 1)  # sharp: the unbiased variance
    std = np.broadcast_to(np.sqrt(g.var(axis=2, ddof=1, keepdims=True) + 1e-5), g.shape).reshape(x.shape)
    gated = x / (1.0 + np.exp(-x * w["n.v"].reshape(c11)))
    assert rel_err(ref, gated / std * w["n.weight"].reshape(c11) + w["n.bias"].reshape(c11)) > 1e-3
    affine = EvoNorm2dS0(8, groups=4, apply_act=False).eval()  # apply_act=False: the affine alone
    ref, got, numpy_ref, _ = _ops_against_timm(affine, ir.EvoNormS0("n", 8, 4, 1e-5, False, None, None),
                                               EvoNormS0(8, 4, 1e-5, False), x)
    assert rel_err(ref, got) == 0.0 and rel_err(ref, numpy_ref) <= 1e-6


# --- backends against torch -------------------------------------------------------------------------

@pytest.mark.parametrize("extra,text", [(FRN, TINY), (EVO, TINY), (FRN, V1), (EVO, V1)],
                         ids=["frn", "evo", "frn_v1", "evo_v1"])
def test_onnx_equals_torch_and_every_ort_level_agrees(extra, text):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from resnet_spec.backends.torch import backend as torch_backend

    net = _net(extra, text)
    weights, x = _random_weights(net), _x(net)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    model, (off, on) = ort_at_both_levels(net, weights, x)
    assert rel_err(ref, off) <= 1e-6 and rel_err(ref, on) <= 1e-6 and rel_err(off, on) <= 1e-6
    wrong = {**weights, **{k: -v for k, v in weights.items() if k.endswith((".tau", ".v"))}}
    assert rel_err(ref, ort_at_both_levels(net, wrong, x)[1][0]) > 1e-3  # sharp: tau / v matter


def test_torch_source_has_the_modules():
    from timm_checks import emitted_source_error

    pytest.importorskip("torch")
    from resnet_spec.backends.torch import source

    for extra, cls in ((FRN, "class FilterResponseNorm2d(nn.Module)"), (EVO, "class EvoNormS0(nn.Module)")):
        net = _net(extra, V1)
        assert cls in source.to_source(net)
        assert emitted_source_error(net) == 0.0


def test_keras_weight_layouts_round_trip():
    from resnet_spec.backends.keras import weights as kw

    rng = np.random.default_rng(0)
    for op in (ir.FRN("bn1", 4, 1e-5, True, (4, 3, 3), (4, 3, 3)), ir.FRN("bn1", 4, 1e-5, False, None, None),
               ir.EvoNormS0("bn1", 4, 2, 1e-5, True, None, None), ir.EvoNormS0("bn1", 4, 2, 1e-5, False, None, None)):
        w = {name: rng.standard_normal(shape).astype(np.float32) for name, shape, _ in op.tensors()}
        to, back = kw.LAYOUTS[type(op)]
        arrays = to(op, w)
        got = back(op, lambda name: arrays[name])
        assert {k: np.asarray(v).tolist() for k, v in got.items()} == {k: v.tolist() for k, v in w.items()}
    # the fixed kernels of FRN's stock layers: -1 (the negated copy), 0 (the zeros the tau map is made from)
    frn = kw.LAYOUTS[ir.FRN][0](ir.FRN("bn1", 2, 1e-5, True, None, None),
                                {"bn1.weight": np.ones(2), "bn1.bias": np.zeros(2), "bn1.tau": np.ones(2)})
    assert frn["bn1.negate"][0].tolist() == [[[[-1.0, -1.0]]]] and not frn["bn1.zeros"][0].any()


def test_keras_allow_list_rules_for_evonorm():
    from resnet_spec import keras_rules as R
    from resnet_spec.trust_keras import LAYERS

    assert LAYERS["EvoNormS0"].values is R.evonorm_values and LAYERS["Maximum"].shape is R.broadcast
    assert R.evonorm_values({"groups": 4, "epsilon": 1e-5}, (None, 8, 8, 16)) == (48, "3 vectors of 16")
    with pytest.raises(R.Bad, match="groups=3 does not divide its 16 channels"):
        R.evonorm_values({"groups": 3, "epsilon": 1e-5}, (None, 8, 8, 16))
    for eps in (0, -1.0, "1e-5", True):
        with pytest.raises(R.Bad, match="epsilon is"):
            R.evonorm_values({"groups": 4, "epsilon": eps}, (None, 8, 8, 16))


def test_diagram_names_the_norms():
    from resnet_spec.diagram import _head_lines, stage_info

    assert {s["kind"] for s in stage_info(_net(FRN))} == {"pre-act bottleneck (FRN)"}
    assert {s["kind"] for s in stage_info(_net(EVO))} == {"pre-act bottleneck (EvoNorm-S0 G4)"}
    assert _head_lines(_net(FRN))[0] == "FRN (TLU)" and _head_lines(_net(EVO))[0] == "EvoNorm-S0 G4"


# --- import: tiny timm models against themselves (randomized), params and MACs ----------------------------

def _tiny_timm(kind: str):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kw = dict(layers=[1, 1, 1, 1], channels=(32, 64, 128, 256), stem_chs=32, num_classes=10)
    if kind == "frn":
        return timm.create_model("resnetv2_50d_frn", **kw).eval()
    from timm.layers import EvoNorm2dS0

    return timm.create_model("resnetv2_50d_evos", norm_layer=functools.partial(EvoNorm2dS0, groups=8), **kw).eval()


def _randomized_tau_v(weights: dict) -> dict:
    """family_coverage.randomized, with FRN's tau around 0 (so the TLU clamps some values, not all) and v
    both signs."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    out = family_coverage.randomized(weights)
    rng = np.random.default_rng(5)
    for k, v in out.items():
        if k.endswith(".tau"):
            out[k] = rng.normal(-0.1, 0.2, v.shape).astype(np.float32)
        elif k.endswith(".v"):
            out[k] = rng.normal(0.5, 0.7, v.shape).astype(np.float32)
    return out


def _import(monkeypatch, kind: str):
    from resnet_spec.backends.torch import reader
    from resnet_spec.importers.infer import build_spec

    model = _tiny_timm(kind)
    monkeypatch.setattr(reader, "library_model", lambda lib, name: model)
    src = reader.read_library("timm", f"tiny_{kind}")
    src.weights = _randomized_tau_v(src.weights)
    _, net, full = build_spec(src, f"tiny_{kind}", 64)
    return model, src, net, full


@pytest.mark.parametrize("kind,norm", [("frn", {"type": "frn", "eps": 1e-5}),
                                       ("evo", {"type": "evonorm_s0", "groups": 8, "eps": 1e-5})])
def test_import_of_a_tiny_timm_model_is_proven(monkeypatch, kind, norm):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    import yaml

    from resnet_spec.importers.run import prove
    from resnet_spec.importers.source import ImportRefused, check_source

    model, src, net, full = _import(monkeypatch, kind)
    assert full["norm"] == norm and full["block"]["preact"] is True
    cmp = prove(src, net, full, check_source(net, src), isolated=False)
    assert cmp["passed"] and cmp["max_rel"] <= 1e-6, cmp
    assert net.params == sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert net.macs == counter.get_total_flops() // 2
    # sharp: another eps is refused by the layer check, and it (or other EvoNorm groups) changes the numbers
    wrong = {**full, "norm": {**norm, "eps": 1e-1}}
    with pytest.raises(ImportRefused, match=r"\(conv1.1\): norm epsilon 1e-05 in the source, 0.1 in the spec"):
        check_source(resnet_spec.load(yaml.safe_dump(wrong)), src)
    if kind == "evo":
        wrong = {**full, "norm": {**norm, "groups": 4}}
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with torch.inference_mode():
        good = resnet_spec.build(net, "torch", weights=src.weights)(x)
        bad = resnet_spec.build(resnet_spec.load(yaml.safe_dump(wrong)), "torch", weights=src.weights)(x)
    assert rel_err(good.numpy(), bad.numpy()) > 1e-4


def _refused(monkeypatch, model):
    from resnet_spec.backends.torch import reader

    monkeypatch.setattr(reader, "library_model", lambda lib, name: model)
    res = CliRunner().invoke(main, ["import", "timm:tiny", "--input-size", "64", "-o", "/nonexistent/o"])
    return res.exit_code, res.output


def test_other_variants_refused_in_one_line(monkeypatch):
    pytest.importorskip("timm")
    from timm.layers import EvoNorm2dS0a, FilterResponseNormAct2d

    kw = dict(layers=[1, 1, 1, 1], channels=(64, 128, 256, 512), stem_chs=64, num_classes=10)
    import timm

    model = timm.create_model("resnetv2_50d_frn", norm_layer=FilterResponseNormAct2d, **kw).eval()
    one_line_error(*_refused(monkeypatch, model), "timm:tiny uses Filter Response Normalization other than timm's "
                   "FilterResponseNormTlu2d (FilterResponseNormAct2d) (stem.norm1)", "cannot express yet")
    model = timm.create_model("resnetv2_50d_evos", norm_layer=EvoNorm2dS0a, **kw).eval()
    one_line_error(*_refused(monkeypatch, model), "EvoNorm other than EvoNorm-S0 (EvoNorm2dS0a) (stem.norm1)")


def test_mixed_epsilons_refused_in_one_line(monkeypatch):
    pytest.importorskip("timm")
    model = _tiny_timm("frn")
    model.stages[1].blocks[0].norm2.eps = 1e-3
    one_line_error(*_refused(monkeypatch, model), "epsilons differ across the network", "a spec has one norm")


# --- every backend, every pair (slow: workers, TensorFlow, JAX) -----------------------------------------

def _parity(tmp_path, extra, *args):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + extra)
    return CliRunner().invoke(main, ["parity", str(path), *args])


@pytest.mark.slow
def test_cli_parity_passes_every_pair_frn(tmp_path):
    res = _parity(tmp_path, FRN)
    assert res.exit_code == 0, res.output
    assert "PASS: 10/10 pairs" in res.output


@pytest.mark.slow
def test_cli_parity_evonorm_and_train(tmp_path):
    """EvoNorm-S0 against torch on ONNX and Keras-on-PyTorch (its TensorFlow and JAX legs were measured by hand:
    the commit message); one training step of each type in torch and Keras-on-PyTorch."""
    res = _parity(tmp_path, EVO, "--backends", "torch,onnx,keras-torch")
    assert res.exit_code == 0, res.output
    assert "PASS: 3/3 pairs" in res.output
    for extra in (FRN, EVO):
        res = _parity(tmp_path, extra, "--train", "--backends", "torch,keras-torch")
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("extra,text", [(FRN, TINY), (EVO, V1)], ids=["frn_preact", "evo_v1"])
def test_convert_onnx_file_round_trips(tmp_path, extra, text):
    """``convert``'s ONNX file (BN folding changes nothing here) imports back to the same network and the same
    weights, tau and v included: FRN with its TLU in a pre-activation net, EvoNorm-S0 in v1 blocks (the last norm
    of each and the projections' without activation: their affine alone), and the generated model equals ONNX
    Runtime on the file."""
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.importers import import_source
    from resnet_spec.importers.infer import _key

    net = _net(extra, text)
    weights = _randomized_tau_v(_random_weights(net))
    (path,) = onnx_backend.convert(net, weights, str(tmp_path / "c"))[:1]
    _, spec_text, got, _, back = import_source(str(path), "m")
    assert extra.split(",")[0] in spec_text and _key(got) == _key(net), spec_text
    assert sorted(back) == sorted(weights) and all(np.array_equal(back[k], weights[k]) for k in weights)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _x(net)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.inference_mode():
        out = resnet_spec.build(got, "torch", weights=back).eval()(torch.from_numpy(x)).numpy()
    assert rel_err(ref, out) <= 1e-5


def test_onnx_relu_after_a_norm_act_is_refused_in_one_line(tmp_path):
    """An FRN without its TLU then a ReLU (convert's file, its first TLU made a Relu) is not a spec's: one line
    naming the ReLU, never a spec whose FRN would hold a TLU the file does not have."""
    onnx = pytest.importorskip("onnx")
    from resnet_spec.backends.onnx import backend as onnx_backend

    net = _net(FRN)
    (path,) = onnx_backend.convert(net, _random_weights(net), str(tmp_path / "c"))[:1]
    model = onnx.load(str(path))
    tlu = next(n for n in model.graph.node if n.op_type == "Max")
    tlu.op_type = "Relu"
    del tlu.input[1:]
    onnx.save(model, str(path))
    res = CliRunner().invoke(main, ["import", str(path), "-o", str(tmp_path / "o")])
    one_line_error(res.exit_code, res.output, f"node {tlu.name!r} (Relu): a ReLU right after Filter Response "
                   "Normalization", "without its own activation): a spec's frn holds the ReLU after it")


def test_state_dict_files_refused_in_one_line(tmp_path):
    """A bare state dict cannot tell the variant (its weights load fine into a spec: --weights)."""
    from resnet_spec.weights.files import save_weights

    net = _net(FRN)
    save_weights(_random_weights(net), str(tmp_path / "w.safetensors"))
    res = CliRunner().invoke(main, ["import", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "o")])
    one_line_error(res.exit_code, res.output, "uses Filter Response Normalization (a state dict cannot tell")
