"""Res2Net's hierarchical split convs (timm ``Bottle2neck``: the res2net*/res2next* models) as
``block.spatial: {type: res2net, scale}``: the spec keys and their located rules, the composite IR op
(``ir.Res2Net``: scale, width per split, cascade, the last split's pool, BN eps all explicit), every
backend against torch, the zoo entries against timm's own models with randomized weights (every BN
statistic and affine parameter redrawn), params and MACs, and the import of timm's res2net.py models.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error, rel_err
from timm_checks import (assert_one_located_error, assert_timm_params_and_macs, max_rel as _max_rel, ort_at_both_levels,
                         timm_randomized as _timm_randomized)

import resnet_spec
from resnet_spec import ir
from resnet_spec.cli import main

TINY = """\
name: tiny_res2net
input: {size: 32}
stem: {channels: 8, kernel: 3, stride: 2}
stages:
- {blocks: 2, channels: 8}
- {blocks: 2, channels: 16, stride: 2}
head: {classes: 5}
"""
RES2NET = "{type: bottleneck, width_per_group: 26, spatial: {type: res2net, scale: 4}}"
RES2NEXT = "{type: bottleneck, groups: 2, width_per_group: 16, spatial: {type: res2net, scale: 3}}"


def _net(block: str = RES2NET, size: int | None = None) -> ir.Network:
    text = TINY if size is None else TINY.replace("size: 32", f"size: {size}")
    return resnet_spec.load(text + f"block: {block}\n")


# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("{type: bottleneck, spatial: {type: conv, scale: 4}}", "'scale' applies to block.spatial type 'res2net' only, "
     "not to type 'conv'", ("block", "spatial", "scale")),
    ("{type: bottleneck, spatial: {scale: 4}}", "'scale' applies to block.spatial type 'res2net' only",
     ("block", "spatial", "scale")),
    ("{type: basic, spatial: {type: res2net}}", "block.spatial type 'res2net' applies to bottleneck blocks only",
     ("block", "spatial", "type")),
    ("{type: bottleneck, preact: true, spatial: {type: res2net}}", "not supported with pre-activation",
     ("block", "spatial", "type")),
    ("{type: bottleneck, stride_on: 1x1, spatial: {type: res2net}}", "not supported with stride_on: 1x1",
     ("block", "spatial", "type")),
    ("{type: bottleneck, anti_alias: avgpool, spatial: {type: res2net}}", "not supported with anti_alias",
     ("block", "spatial", "type")),
    ("{type: bottleneck, se: {placement: after_3x3}, spatial: {type: res2net}}", "SE placement 'after_3x3'",
     ("block", "spatial", "type")),
]


@pytest.mark.parametrize("block,message,path", BAD, ids=[str(i) for i in range(len(BAD))])
def test_rule_errors_are_located(block, message, path):
    assert_one_located_error(TINY + f"block: {block}\n", message, path)


@pytest.mark.parametrize("spatial,needle", [("{type: res2net, scale: 1}", "scale"),
                                            ("{type: res2net, width: 3}", "width"),
                                            ("{type: octave}", "type")])
def test_cli_refuses_in_one_line(tmp_path, spatial, needle):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + f"block: {{type: bottleneck, spatial: {spatial}}}\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith(str(path) + ":8:"), res.output


def test_resolved_shows_the_spatial_keys_only_for_res2net(tmp_path):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(TINY + "block: {type: bottleneck, width_per_group: 26, spatial: {type: res2net}}\n")
    res = CliRunner().invoke(main, ["resolve", str(path)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output)["block"]["spatial"] == {"type": "res2net", "scale": 4}
    again = tmp_path / "r.yaml"
    again.write_text(res.output)
    assert list(resnet_spec.load(str(again)).all_ops()) == list(resnet_spec.load(str(path)).all_ops())
    plain = TINY + "block: {type: bottleneck, spatial: {type: conv}}\n"
    assert list(resnet_spec.load(plain).all_ops()) == list(resnet_spec.load(TINY + "block: {type: bottleneck}\n")
                                                           .all_ops())


# --- the IR op ----------------------------------------------------------------------------------------

def test_the_op_states_every_fact():
    net = _net()
    first, second, strided = (next(b for b in net.blocks if b.name == n) for n in ("layer1.0", "layer1.1",
                                                                                    "layer2.0"))
    assert [type(op).__name__ for op in first.main] == ["Conv", "BatchNorm", "ReLU", "Res2Net", "Conv",
                                                        "BatchNorm"]
    conv1, op = first.main[0], first.main[3]
    width = 8 * 26 // 64  # floor(channels x width_per_group / 64) x groups = 3
    assert conv1.out_channels == 4 * width and first.main[4].in_channels == 4 * width
    assert (op.name, op.scale, op.width, op.convs, op.kernel, op.stride, op.padding, op.groups, op.eps) == \
        ("layer1.0", 4, width, 3, 3, 1, 1, 1, 1e-5)
    # a stage's first block (its shortcut projects): no cascade, the last split pooled 3x3/s1/p1 (counted)
    assert (op.cascade, op.last, op.pool_kernel, op.pool_stride, op.pool_padding, op.pool_count_include_pad) == \
        (False, "pool", 3, 1, 1, True)
    assert (second.main[3].cascade, second.main[3].last) == (True, "pass")
    s = strided.main[3]
    assert (s.stride, s.pool_stride, s.cascade, s.in_shape, s.out_shape) == (2, 2, False, (24, 8, 8), (24, 4, 4))
    assert list(op.tensors())[:2] == [("layer1.0.convs.0.weight", (3, 3, 3, 3), True),
                                      ("layer1.0.convs.1.weight", (3, 3, 3, 3), True)]
    assert ("layer1.0.bns.2.running_var", (3,), False) in list(op.tensors())
    assert op.macs == 3 * 3 * 8 * 8 * 3 * 9
    grouped = _net(RES2NEXT).blocks[0].main[3]
    assert (grouped.scale, grouped.width, grouped.groups) == (3, 8 * 16 // 64 * 2, 2)
    assert list(grouped.tensors())[0] == ("layer1.0.convs.0.weight", (4, 2, 3, 3), True)


def test_an_identity_block_of_equal_channels_cascades():
    """timm's is_first is 'strided or projecting': a stride-1 block whose channels do not change cascades."""
    net = resnet_spec.load(TINY + "block: {type: bottleneck, expansion: 1, spatial: {type: res2net}}\n")
    assert net.blocks[0].in_shape[0] == net.blocks[0].out_shape[0] == 8 and not net.blocks[0].shortcut
    assert net.blocks[0].main[3].cascade and net.blocks[0].main[3].last == "pass"


# --- backends against torch -------------------------------------------------------------------------

def _weights(net):
    from resnet_spec.weights.init import init_weights

    return init_weights(net, 3, random_bn=True)


def test_keras_weight_layout_round_trips():
    from resnet_spec.backends.keras import weights as kw

    op = _net(RES2NEXT).blocks[2].main[3]
    w = {k: v for k, v in _weights(_net(RES2NEXT)).items() if k.startswith(op.name + ".convs.")
         or k.startswith(op.name + ".bns.")}
    to, back = kw.LAYOUTS[ir.Res2Net]
    arrays = to(op, w)
    assert sorted(arrays) == sorted([f"{op.name}.convs.{i}" for i in range(2)] + [f"{op.name}.bns.{i}" for i in range(2)])
    assert arrays[f"{op.name}.convs.0"][0].shape == (3, 3, 4, 8)
    got = back(op, lambda name: arrays[name])
    assert sorted(got) == sorted(w) and all(np.array_equal(got[k], w[k]) for k in w)


@pytest.mark.parametrize("block", [RES2NET, RES2NEXT], ids=["res2net", "res2next"])
def test_onnx_against_torch_and_fused_as_unfused(block):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.torch import backend as torch_backend

    net = _net(block, size=40)
    weights = _weights(net)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    assert rel_err(ref, onnx_backend.infer(net, weights, x)[0]["head"]) <= 1e-5
    model, outs = ort_at_both_levels(net, weights, x)
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]  # split BNs folded too
    assert rel_err(outs[0], outs[1]) <= 2e-6  # ORT's fusions and layouts round differently, compute the same
    assert rel_err(ref, outs[0]) <= 1e-5


def keras_stock_worker(net, weights, x):
    """In a worker (TensorFlow never runs in the pytest process): the stock-layer Keras model's output and
    the custom layers it holds (none)."""
    from resnet_spec.backends.keras import stock

    model = stock.build(net, weights, data_format="channels_first")
    return stock.custom_layers(model), np.asarray(model(x))


@pytest.mark.slow  # a TensorFlow worker
def test_keras_stock_layers_against_torch():
    import importlib.util

    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    pytest.importorskip("torch")
    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.isolate import run_isolated

    net = _net(RES2NEXT, size=40)
    weights = _weights(net)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    custom, got = run_isolated(keras_stock_worker, net, weights, x)
    assert custom == [] and rel_err(ref, got) <= 1e-5


def test_torch_source_runs_and_equals_the_backend(tmp_path):
    torch = pytest.importorskip("torch")
    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.backends.torch import source

    net = _net(RES2NEXT, size=40)
    text = source.to_source(net)
    assert "def res2net_splits(" in text and "convs=nn.ModuleList([" in text and "pool=nn.AvgPool2d(3" in text
    path = tmp_path / "m.py"
    path.write_text(text)
    ns: dict = {}
    exec(compile(text, str(path), "exec"), ns)
    model = ns[source.class_name(net.name)]()
    weights = _weights(net)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=False)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32))
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), torch_backend.build(net, weights)(x))
    assert sorted(model.state_dict()) == sorted(torch_backend.build(net, weights).state_dict())


@pytest.mark.slow  # parity's worker processes: torch, .py, ONNX, Keras on TF/JAX/torch, TFLite
def test_parity_passes_every_pair(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("size: 32", "size: 40") + f"block: {RES2NEXT}\n")
    res = CliRunner().invoke(main, ["parity", str(path)])
    assert res.exit_code == 0 and "PASS: 10/10 pairs" in res.output, res.output


@pytest.mark.slow  # one training step in every leg's worker and PyTorch's float64 reference
def test_train_parity_passes_with_every_split_relu_paired(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + f"block: {RES2NEXT}\n")
    res = CliRunner().invoke(main, ["parity", str(path), "--train"])
    assert res.exit_code == 0 and "PASS: 6/6 pairs agree in training mode" in res.output, res.output


def test_keras_relu_sites_include_each_split_conv():
    from resnet_spec.backends.keras.model import relu_layer_names

    net = _net(RES2NEXT)  # scale 3: two split convs per block
    sites = relu_layer_names(net)
    assert sites[:5] == ["stem-relu", "layer1-0-relu", "layer1-0-relu_split0", "layer1-0-relu_split1", "layer1-0-out"]
    assert len(sites) == 1 + len(net.blocks) * 4  # bn1's, two split convs', the block's output ReLU


@pytest.mark.slow  # int8 calibration and verify's runtime workers
def test_onnx_float16_int8_verify(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "s.yaml"
    path.write_text(TINY + f"block: {RES2NEXT}\n")
    for dtype in ("float16", "int8"):
        res = CliRunner().invoke(main, ["convert", str(path), "--to", "onnx", "--dtype", dtype,
                                        "-o", str(tmp_path / dtype)])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(main, ["verify", str(path), str(tmp_path / dtype / "tiny_res2net.onnx")])
        assert res.exit_code == 0, res.output


# --- the zoo entries against timm ---------------------------------------------------------------------


ZOO = ["res2net50_26w_4s", pytest.param("res2next50", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_entry_equals_timm_with_randomized_weights(name):
    model, weights = _timm_randomized(name)
    net = resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\n")
    assert _max_rel(model, net, weights) <= 1e-6


@pytest.mark.slow  # two more full-depth runs
def test_zoo_entry_differs_from_timm_when_a_fact_is_wrong():
    """Sharp: the same network with the cascade on in every block, or the last split never pooled, differs."""
    import dataclasses

    model, weights = _timm_randomized("res2net50_26w_4s")
    net = resnet_spec.load("extends: res2net50_26w_4s\ninput: {size: 64}\n")
    for change in ({"cascade": True}, {"last": "pass"}):
        blocks = tuple(dataclasses.replace(b, main=tuple(dataclasses.replace(op, **change) if isinstance(op, ir.Res2Net)
                                                         else op for op in b.main)) for b in net.blocks[:3])
        wrong = dataclasses.replace(net, blocks=blocks + net.blocks[3:])
        if change == {"last": "pass"}:  # a stride-1 first block: the pool's shape is the input's
            assert wrong.blocks[0].main[3].last == "pass"
        assert _max_rel(model, wrong, weights) > 1e-3, change


@pytest.mark.parametrize("name", ZOO)
def test_zoo_entry_has_timms_parameters_and_macs(name):
    assert_timm_params_and_macs(name)


# --- import ------------------------------------------------------------------------------------------

TIMM_MODELS = ["res2net50_14w_8s", "res2net50_26w_4s", "res2net50_26w_6s", "res2net50_26w_8s", "res2net50_48w_2s",
               "res2net50d", "res2net101_26w_4s", "res2net101d", "res2next50"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_import_by_name_with_parity(name):
    pytest.importorskip("timm")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    assert f"timm:{name}" in family_coverage.FAMILIES["timm-res2net"][1]()
    r = family_coverage.run_one(f"timm:{name}", 64, isolated=False)
    assert r["status"] == "parity", r
    assert r["max_rel"] <= 1e-6


def _tiny_state_dict(tmp_path, drop: str | None = None):
    torch = pytest.importorskip("torch")
    net = _net(RES2NEXT)
    weights = {k: v for k, v in _weights(net).items() if drop is None or not k.startswith(drop)}
    path = tmp_path / "r2.pth"
    torch.save({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in weights.items()}, str(path))
    return net, path


def test_a_state_dict_import_infers_res2net(tmp_path):
    from resnet_spec.importers import import_source

    net, path = _tiny_state_dict(tmp_path)
    _, _, got, full, _ = import_source(str(path), "m", 32)
    assert full["block"]["spatial"] == {"type": "res2net", "scale": 3}
    assert (full["block"]["groups"], full["block"]["width_per_group"]) == (2, 16)
    def facts(n):  # a state dict holds no input size: the spatial shapes are the conventions'
        return [(op.name, op.scale, op.width, op.groups, op.stride, op.cascade, op.last, op.pool_stride)
                for op in n.all_ops() if isinstance(op, ir.Res2Net)]
    assert facts(got) == facts(net)


def test_blocks_of_different_scales_are_refused_in_one_line(tmp_path):
    _, path = _tiny_state_dict(tmp_path, drop="layer2.1.convs.1")
    res = CliRunner().invoke(main, ["import", str(path), "--input-size", "32", "-o", str(tmp_path / "o")])
    one_line_error(res.exit_code, res.output, "Res2Net blocks of different scales [2, 3]")


@pytest.mark.slow  # two timm models, each proven in timm's ResNet class with its Bottle2neck
@pytest.mark.parametrize("name", ["res2net50d", "res2next50"])
def test_state_dict_imports_and_is_proven_in_timm(tmp_path, name):
    torch = pytest.importorskip("torch")
    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    _, weights = _timm_randomized(name)
    path = tmp_path / "r2.pth"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, str(path))
    src, _, net, full, w = import_source(str(path), "m", 64)
    assert full["block"]["spatial"]["type"] == "res2net"
    cmp = prove(src, net, full, w, isolated=False)
    assert cmp["passed"] and "ResNet class" in cmp["source"] and cmp["max_rel"] <= 1e-6, cmp


def test_diagram_names_the_splits_and_the_stride():
    from resnet_spec.diagram import stage_info

    stages = stage_info(resnet_spec.load("res2next50"))
    assert [s["kind"] for s in stages] == [f"Res2Net bottleneck, 4 splits of {w}" for w in (32, 64, 128, 256)]
    assert [s["groups"] for s in stages] == [8] * 4
    assert stages[1]["stride"] == "stride 2 on the 3x3 conv (first block)"


@pytest.mark.slow  # a full-depth timm model
def test_dilated_last_stage_equals_timms_output_stride_16():
    """timm's output_stride=16: the last stage dilated, its first block's split convs at the previous
    dilation (timm's first_dilation), the pool at stride 1."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    model = timm.create_model("res2net50_26w_4s", pretrained=False, output_stride=16).eval()
    weights = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items()
                                          if not k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    net = resnet_spec.load("extends: res2net50_26w_4s\ninput: {size: 64}\nstages:\n- {blocks: 3, channels: 64}\n"
                           "- {blocks: 4, channels: 128, stride: 2}\n- {blocks: 6, channels: 256, stride: 2}\n"
                           "- {blocks: 3, channels: 512, stride: 2, dilate: true}\n")
    ops = [op for b in net.blocks if b.stage == 3 for op in b.main if isinstance(op, ir.Res2Net)]
    assert [(op.stride, op.dilation, op.last) for op in ops] == [(1, 1, "pool"), (1, 2, "pass"), (1, 2, "pass")]
    assert _max_rel(model, net, weights) <= 1e-6
