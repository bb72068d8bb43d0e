"""ResNeSt (timm resnest.py): split attention as ``block.spatial: {type: split_attention}`` and the avd
average pool as ``block.avd``: located rules, resolution (the attention width's rounding, the pool's facts),
the torch module against timm's SplitAttn, the Keras weight layout, ONNX, the .py source, the zoo entry
against timm's resnest50d on randomized weights (every BN statistic and affine parameter redrawn), params
and MACs, and the import of timm's resnest models.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rel_err
from timm_checks import assert_one_located_error, max_rel as _max_rel, timm_randomized as _timm_randomized

import resnet_spec
from resnet_spec import ir
from resnet_spec.cli import main
from resnet_spec.errors import SpecError
from resnet_spec.ir_resnest import split_attention_channels

TINY = """\
name: tiny
input: {size: 32}
stem: {type: deep, channels: [8, 8, 16]}
shortcut: {type: B, projection: avgpool_conv}
stages:
- {blocks: 1, channels: 16}
- {blocks: 2, channels: 32, stride: 2}
head: {classes: 5}
"""


def _net(block: str) -> ir.Network:
    return resnet_spec.load(TINY + f"block: {block}\n")


SA = "spatial: {type: split_attention}"

# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("{type: bottleneck, spatial: {type: conv, radix: 2}}", "'radix' applies to block.spatial type "
     "'split_attention' only, not to type 'conv'", ("block", "spatial", "radix")),
    ("{type: bottleneck, spatial: {min_channels: 16}}", "'min_channels' applies to block.spatial type "
     "'split_attention' only", ("block", "spatial", "min_channels")),
    ("{type: basic, " + SA + "}", "block.spatial type 'split_attention' applies to bottleneck blocks only",
     ("block", "spatial", "type")),
    ("{type: bottleneck, preact: true, " + SA + "}", "not supported with pre-activation blocks",
     ("block", "spatial", "type")),
    ("{type: basic, avd: after_3x3}", "'avd' applies to bottleneck blocks only", ("block", "avd")),
    ("{type: bottleneck, stride_on: 1x1, avd: after_3x3}", "it needs stride_on: 3x3", ("block", "avd")),
    ("{type: bottleneck, anti_alias: avgpool, avd: before_3x3}", "'avd' and 'anti_alias' both move",
     ("block", "avd")),
    # found while building: 8 input channels do not divide into groups * radix = 16
    ("{type: bottleneck, groups: 2, width_per_group: 16, spatial: {type: split_attention, radix: 8}}",
     "split attention layer1.0.conv2: 8 input channels must divide into groups * radix = 16",
     ("block", "spatial", "radix")),
]


@pytest.mark.parametrize("block,message,path", BAD, ids=[b[2][-1] + str(i) for i, b in enumerate(BAD)])
def test_rule_errors_are_located(block, message, path):
    assert_one_located_error(TINY + f"block: {block}\n", message, path)


def test_cli_refuses_in_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + "block: {type: basic, spatial: {type: split_attention}}\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "applies to bottleneck blocks only" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["splat", "SPLIT_ATTENTION"])
def test_schema_refuses_other_types(value):
    with pytest.raises(SpecError) as exc:
        _net(f"{{type: bottleneck, spatial: {{type: {value}}}}}")
    assert f"block.spatial.type: '{value}' is not one of" in str(exc.value)
    assert "\n" not in str(exc.value).strip()


# --- resolution -------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,radix,groups", [(64, 2, 1), (128, 2, 1), (512, 2, 1), (96, 1, 4), (80, 4, 2),
                                                (24, 1, 4), (320, 4, 2), (40, 2, 1), (300, 3, 1)])
def test_attention_width_is_timms(width, radix, groups):
    attn = split_attention_channels(width, radix, 0.25, 8, 32)
    timm = pytest.importorskip("timm")
    import torch.nn as nn

    m = timm.layers.SplitAttn(width, width, groups=groups, radix=radix, norm_layer=nn.BatchNorm2d)
    assert m.fc1.out_channels == attn


def test_split_attention_and_avd_sit_where_timm_puts_them():
    after = next(b for b in _net("{type: bottleneck, " + SA + ", avd: after_3x3}").blocks if b.name == "layer2.0")
    assert [type(op).__name__ for op in after.main] == ["Conv", "BatchNorm", "ReLU", "SplitAttention", "Pool",
                                                        "Conv", "BatchNorm"]
    sa, pool = after.main[3], after.main[4]
    assert (sa.name, sa.in_channels, sa.channels, sa.stride, sa.padding, sa.groups, sa.radix, sa.attn_channels,
            sa.gate, sa.mid_channels) == ("layer2.0.conv2", 32, 32, 1, 1, 1, 2, 32, "softmax", 64)
    assert (pool.name, pool.kind, pool.kernel, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad) \
        == ("layer2.0.avd_last", "avg", 3, 2, 1, False, True)
    assert pool.in_shape == (32, 8, 8) and pool.out_shape == (32, 4, 4)
    first = _net("{type: bottleneck, " + SA + ", avd: before_3x3}").blocks[1]
    assert [type(op).__name__ for op in first.main][3:5] == ["Pool", "SplitAttention"]
    assert first.main[3].name == "layer2.0.avd_first" and first.main[4].in_shape == (32, 4, 4)
    plain = _net("{type: bottleneck, " + SA + "}").blocks[1].main[3]  # no avd: the conv keeps the stride
    assert plain.stride == 2 and plain.out_shape == (32, 4, 4)
    # radix 1: a sigmoid gate; unstrided blocks never get an avd pool
    one = _net("{type: bottleneck, groups: 4, width_per_group: 24, spatial: {type: split_attention, radix: 1}, "
               "avd: before_3x3}")
    assert one.blocks[0].main[3].gate == "sigmoid" and not any(isinstance(op, ir.Pool) for op in one.blocks[0].main)


def test_tensors_are_timms_names_and_shapes():
    timm = pytest.importorskip("timm")
    import torch.nn as nn

    op = _net("{type: bottleneck, groups: 2, width_per_group: 32, spatial: {type: split_attention, radix: 4}}") \
        .blocks[1].main[3]
    m = timm.layers.SplitAttn(op.in_channels, op.channels, 3, 2, 1, groups=2, radix=4, norm_layer=nn.BatchNorm2d)
    want = {f"layer2.0.conv2.{k}": tuple(v.shape) for k, v in m.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    assert {n: s for n, s, _ in op.tensors()} == want
    assert [n for n, _, _ in op.tensors()] == list(want)


def test_resolved_shows_only_the_keys_of_the_type(tmp_path):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(TINY + "block: {type: bottleneck, spatial: {type: split_attention, radix: 4}, avd: after_3x3}\n")
    res = CliRunner().invoke(main, ["resolve", str(path)])
    assert res.exit_code == 0, res.output
    got = yaml.safe_load(res.output)["block"]
    assert got["spatial"] == {"type": "split_attention", "radix": 4, "ratio": 0.25, "divisor": 8, "min_channels": 32}
    assert got["avd"] == "after_3x3"
    again = tmp_path / "r.yaml"
    again.write_text(res.output)
    assert list(resnet_spec.load(str(again)).all_ops()) == list(resnet_spec.load(str(path)).all_ops())
    path.write_text(TINY + "block: {type: bottleneck}\n")
    plain = yaml.safe_load(CliRunner().invoke(main, ["resolve", str(path)]).output)["block"]
    assert "spatial" not in plain and "avd" not in plain


# --- backends ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("radix,groups", [(1, 4), (2, 1), (4, 2)])
def test_torch_module_equals_timms_split_attn(radix, groups):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from resnet_spec.backends.torch.backend import OPS

    op = _net(f"{{type: bottleneck, groups: {groups}, width_per_group: 32, "
              f"spatial: {{type: split_attention, radix: {radix}}}}}").blocks[1].main[3]
    ref = timm.layers.SplitAttn(op.in_channels, op.channels, 3, 2, 1, groups=groups, radix=radix,
                                norm_layer=torch.nn.BatchNorm2d).eval()
    gen = torch.Generator().manual_seed(radix)
    state = {k: (torch.rand(v.shape, generator=gen) + 0.5 if "running_var" in k else
                 torch.randn(v.shape, generator=gen) * 0.3) for k, v in ref.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    ref.load_state_dict(state, strict=False)
    mod = OPS[ir.SplitAttention](op).eval()
    mod.load_state_dict(state, strict=False)
    x = torch.randn(2, *op.in_shape, generator=gen)
    with torch.inference_mode():
        assert torch.equal(mod(x), ref(x))
        # sharp: the gate read as (radix, groups, C/groups) instead of (groups, radix, C/groups) differs
        if groups > 1 and radix > 1:
            wrong = state["fc2.weight"].view(groups, radix, -1, *state["fc2.weight"].shape[1:]).transpose(0, 1)
            mod.fc2.weight.copy_(wrong.reshape(state["fc2.weight"].shape))
            assert not torch.allclose(mod(x), ref(x), atol=1e-4)


def test_keras_weight_layout_round_trips():
    from resnet_spec.backends.keras import weights as kw
    from resnet_spec.weights.init import init_weights

    net = _net("{type: bottleneck, groups: 2, width_per_group: 32, spatial: {type: split_attention, radix: 2}}")
    op = net.blocks[0].main[3]
    w = init_weights(net, 1, random_bn=True)
    to, back = kw.LAYOUTS[ir.SplitAttention]
    arrays = to(op, w)
    assert list(arrays) == [f"layer1.0.conv2.{p}" for p in ("conv", "bn0", "fc1", "bn1", "fc2")]
    assert arrays["layer1.0.conv2.conv"][0].shape == (3, 3, 4, 32) and len(arrays["layer1.0.conv2.fc1"]) == 2
    got = back(op, lambda name: arrays[name])
    assert set(got) == {n for n, _, _ in op.tensors()} and all(np.array_equal(got[k], w[k]) for k in got)


def test_onnx_float32_equals_torch_at_every_ort_level():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    import onnxruntime as ort

    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.weights.init import init_weights

    net = _net("{type: bottleneck, groups: 2, width_per_group: 32, spatial: {type: split_attention, radix: 4}, "
               "avd: before_3x3}")
    weights = init_weights(net, 3, random_bn=True)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    model = onnx_backend.build(net, weights)
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"input": x})[0])
        assert rel_err(ref, outs[-1]) <= 1e-5
    assert rel_err(outs[0], outs[1]) <= 1e-6
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # bn0 and bn1 folded
    unfolded = onnx_backend.build(net, weights, fold_bn=False)  # convert --no-fold-bn: bn0 and bn1 as nodes
    assert {"layer1.0.conv2.bn0", "layer1.0.conv2.bn1"} <= {n.name for n in unfolded.graph.node}
    sess = ort.InferenceSession(unfolded.SerializeToString(), providers=["CPUExecutionProvider"])
    assert rel_err(ref, sess.run(None, {"input": x})[0]) <= 1e-5


def test_torch_source_has_the_split_attention_module():
    pytest.importorskip("torch")
    from resnet_spec.backends.torch import source

    net = _net("{type: bottleneck, " + SA + ", avd: after_3x3}")
    text = source.to_source(net)
    assert "class SplitAttention(nn.Module)" in text
    assert "SplitAttention(16, 16, (3, 1, 1, 1), 1, 2, 32, (1e-05, 0.1))" in text
    assert "nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=False, count_include_pad=True)" in text


def test_diagram_names_the_split_attention_and_the_avd_pool():
    from resnet_spec.diagram import stage_info

    info = stage_info(resnet_spec.load("resnest50d"))
    assert info[0]["kind"] == "bottleneck + split attention r2"
    assert info[1]["stride"] == "stride 2 on the 3x3 avg pool (first block)"


# --- the zoo entry against timm ---------------------------------------------------------------------

@functools.lru_cache(maxsize=2)


def test_zoo_entry_equals_timm_with_randomized_weights():
    model, weights = _timm_randomized("resnest50d")
    assert any(k.endswith("conv2.fc2.weight") and v.std() > 0.01 for k, v in weights.items())
    net = resnet_spec.load("extends: resnest50d\ninput: {size: 64}\n")
    assert _max_rel(model, net, weights) <= 1e-6
    # sharp: the avd pool before the split attention (timm's avd_first) differs
    first = resnet_spec.load("extends: resnest50d\ninput: {size: 64}\nblock: {avd: before_3x3}\n")
    assert _max_rel(model, first, weights) > 1e-3


def test_zoo_entry_has_timms_parameters_and_macs():
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = _timm_randomized("resnest50d")
    net = resnet_spec.load("extends: resnest50d\ninput: {size: 64}\n")
    assert net.params == sum(p.numel() for p in model.parameters()) == resnet_spec.load("resnest50d").params
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert net.macs == counter.get_total_flops() // 2
    assert resnet_spec.spec.load("resnest50d").data["reference"] == {"library": "timm", "model": "resnest50d"}


# --- slow: int8/float16 verify, CLI parity, imports -------------------------------------------------

@pytest.mark.slow  # int8 calibration and verify's runtime workers
def test_onnx_float16_int8_verify(tmp_path):
    pytest.importorskip("onnxruntime")
    text = TINY + "block: {type: bottleneck, groups: 2, width_per_group: 32, spatial: {type: split_attention, " \
                  "radix: 4}, avd: before_3x3}\n"
    (tmp_path / "s.yaml").write_text(text)
    for dtype in ("float16", "int8"):
        res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "onnx", "--dtype", dtype,
                                        "-o", str(tmp_path / dtype)])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(main, ["verify", str(tmp_path / "s.yaml"), str(tmp_path / dtype / "tiny.onnx")])
        assert res.exit_code == 0, res.output


@pytest.mark.slow  # every leg in its worker, TensorFlow included
@pytest.mark.parametrize("block", ["{type: bottleneck, groups: 2, width_per_group: 32, spatial: {type: "
                                   "split_attention, radix: 4}, avd: before_3x3}",
                                   "{type: bottleneck, groups: 4, width_per_group: 24, spatial: {type: "
                                   "split_attention, radix: 1}, avd: after_3x3}"])
def test_cli_parity_every_leg(tmp_path, block):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + f"block: {block}\n")
    res = CliRunner().invoke(main, ["parity", str(path)])
    assert res.exit_code == 0, res.output
    assert "PASS: 10/10 pairs" in res.output


@pytest.mark.slow  # a training step in every leg's worker
def test_cli_parity_train(tmp_path):
    """parity --train: the Keras legs' ReLU decisions include the split attention's two ReLUs (act0, act1)."""
    path = tmp_path / "s.yaml"
    path.write_text(TINY + "block: {type: bottleneck, groups: 2, width_per_group: 32, spatial: {type: "
                    "split_attention, radix: 4}, avd: after_3x3}\n")
    res = CliRunner().invoke(main, ["parity", str(path), "--train", "--backends", "torch,keras-tensorflow"])
    assert res.exit_code == 0, res.output
    assert "ReLU calls against" not in res.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnest14d", "resnest26d", "resnest50d", "resnest50d_1s4x24d",
                                  "resnest50d_4s2x40d", "resnest101e"])
def test_import_by_name_with_parity(name):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    pytest.importorskip("timm")
    res = family_coverage.run_one(f"timm:{name}", 64, isolated=False)
    assert res["status"] == "parity", res


@pytest.mark.slow
def test_state_dict_import_proves_against_timms_resnest(tmp_path):
    """A bare state dict: the split attention from its names and shapes, the avd pool timm's default (after the
    3x3: a state dict holds no trace of it); the proof builds timm's ResNet with ResNestBottleneck."""
    torch = pytest.importorskip("torch")
    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    _, weights = _timm_randomized("resnest26d")  # two blocks per stage: type B shortcuts, as timm's ResNet
    path = tmp_path / "rs.pth"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, str(path))
    src, _, net, full, w = import_source(str(path), "m", 64)
    assert full["block"]["spatial"] == {"type": "split_attention", "radix": 2} and full["block"]["avd"] == "after_3x3"
    cmp = prove(src, net, full, w, isolated=False)
    assert cmp["passed"] and "ResNet class" in cmp["source"], cmp


@pytest.mark.slow  # TensorFlow writes the .keras, a worker reads it back
def test_keras_file_imports_with_its_avd_pool(tmp_path):
    """A .keras this project wrote: the split attention from its layers, the avd pool's place and the stage
    stride from its AveragePooling2D layer (``layer2-0-avd_first``)."""
    import yaml

    text = TINY + "block: {type: bottleneck, groups: 2, width_per_group: 32, spatial: {type: split_attention, " \
                  "radix: 4}, avd: before_3x3}\n"
    (tmp_path / "s.yaml").write_text(text)
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "tensorflow", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["import", str(tmp_path / "tiny.keras"), "-o", str(tmp_path / "imp")])
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    got = yaml.safe_load((tmp_path / "imp" / "tiny.yaml").read_text())
    assert got["block"]["spatial"] == {"type": "split_attention", "radix": 4} and got["block"]["avd"] == "before_3x3"
    assert [s["stride"] for s in got["stages"]] == [1, 2]

