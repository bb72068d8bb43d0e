"""SKNet's selective kernel (timm's ``SelectiveKernel``, the skresnet*/skresnext* models) as
``block.spatial: {type: selective_kernel}``: the spec keys and their rules, the IR op (every path's kernel,
dilation and padding, the split, the attention's rounded width explicit), every backend against torch
(ONNX float32/float16/int8, Keras, the .py source), the zoo entries against timm's own models with
randomized weights (every BN statistic and affine parameter redrawn), and the import of timm's sknet models.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rel_err, tiny, tiny_text
from timm_checks import (assert_one_located_error, emitted_source_error, max_rel as _max_rel, ort_levels,
                         timm_randomized as _timm_randomized)

import resnet_spec
from resnet_spec import ir
from resnet_spec.cli import main
from resnet_spec.errors import SpecError

TINY = """\
name: tiny
input: {size: 32}
stem: {channels: 8, kernel: 3, stride: 2}
stages:
- {blocks: 1, channels: 8}
- {blocks: 2, channels: 16, stride: 2}
head: {classes: 5}
"""


def _net(block: str) -> ir.Network:
    return resnet_spec.load(TINY + f"block: {block}\n")


def _sk(block: str, name: str = "layer2.0"):
    b = next(b for b in _net(block).blocks if b.name == name)
    return next(op for op in b.main if isinstance(op, ir.SelectiveKernel))


# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("{type: basic, spatial: {kernels: [3, 5]}}", "'kernels' applies to block.spatial type 'selective_kernel' "
     "only, not to type 'conv'", ("block", "spatial", "kernels")),
    ("{type: basic, spatial: {type: conv, split_input: false}}", "'split_input' applies to block.spatial type "
     "'selective_kernel' only", ("block", "spatial", "split_input")),
    ("{type: basic, spatial: {type: selective_kernel, kernels: [3, 4]}}", "selective kernel size 4 is even",
     ("block", "spatial", "kernels", 1)),
    ("{type: basic, preact: true, spatial: {type: selective_kernel}}", "not supported with pre-activation",
     ("block", "preact")),
    ("{type: bottleneck, anti_alias: avgpool, spatial: {type: selective_kernel}}", "not supported with anti_alias",
     ("block", "anti_alias")),
    ("{type: bottleneck, stride_on: 1x1, spatial: {type: selective_kernel}}", "not supported with stride_on: 1x1",
     ("block", "stride_on")),
    ("{type: bottleneck, se: {placement: after_3x3}, spatial: {type: selective_kernel}}",
     "not supported with an SE placed after_3x3", ("block", "se")),
]


@pytest.mark.parametrize("block,message,path", BAD, ids=[str(b[2][-1]) + str(i) for i, b in enumerate(BAD)])
def test_rule_errors_are_located(block, message, path):
    assert_one_located_error(TINY + f"block: {block}\n", message, path)


def test_cli_refuses_in_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + "block: {type: basic, spatial: {type: selective_kernel, kernels: [3, 6]}}\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "s.yaml:8:" in res.output and "selective kernel size 6 is even" in res.output


def test_uneven_split_is_refused_where_it_is_found():
    with pytest.raises(SpecError) as exc:
        _net("{type: bottleneck, width_per_group: 36, spatial: {type: selective_kernel, kernels: [3, 5, 7]}}")
    assert "splitting its 4 input channels across 3 paths" in str(exc.value)


@pytest.mark.parametrize("value", ["octave", "sk"])
def test_schema_refuses_other_types(value):
    with pytest.raises(SpecError) as exc:
        _net(f"{{type: basic, spatial: {{type: {value}}}}}")
    assert f"block.spatial.type: '{value}' is not one of" in str(exc.value)
    assert "\n" not in str(exc.value).strip()


# --- resolution: the op and its explicit facts ------------------------------------------------------

def test_basic_block_puts_it_at_conv1_with_timms_names():
    net = _net("{type: basic, spatial: {type: selective_kernel, rd_ratio: 0.125, rd_divisor: 16}}")
    b = net.blocks[1]
    assert [type(op).__name__ for op in b.main] == ["SelectiveKernel", "Conv", "BatchNorm"]
    sk = b.main[0]
    assert (sk.name, sk.in_channels, sk.out_channels, sk.stride, sk.groups) == ("layer2.0.conv1", 8, 16, 2, 1)
    assert (sk.kernels, sk.dilations, sk.paddings, sk.split_input, sk.path_in_channels) == ((3, 3), (1, 2), (1, 2),
                                                                                           True, 4)
    assert (sk.attn_channels, sk.given_kernels, sk.keep_3x3, sk.eps) == (16, (3, 5), True, 1e-5)
    assert [b.main[1].name, b.main[2].name] == ["layer2.0.conv2.conv", "layer2.0.conv2.bn"]
    assert [t.name for t in net.tensors() if t.name.startswith("layer2.0.conv1.")][:2] == \
        ["layer2.0.conv1.paths.0.conv.weight", "layer2.0.conv1.paths.0.bn.weight"]
    assert sk.out_shape == (16, 4, 4)
    macs = 2 * 16 * 16 * 4 * 9 + 16 * 16 + 16 * 16 * 2
    assert sk.macs == macs


def test_bottleneck_puts_it_at_conv2():
    b = _net("{type: bottleneck, groups: 2, spatial: {type: selective_kernel, "
             "split_input: false, kernels: [3, 5, 7], keep_3x3: false}}").blocks[0]
    assert [type(op).__name__ for op in b.main] == ["Conv", "BatchNorm", "ReLU", "SelectiveKernel", "Conv",
                                                    "BatchNorm"]
    sk = b.main[3]
    assert (sk.kernels, sk.dilations, sk.paddings, sk.groups, sk.path_in_channels) == ((3, 5, 7), (1, 1, 1),
                                                                                       (1, 2, 3), 2, 16)
    assert b.main[0].name == "layer1.0.conv1.conv" and b.main[4].name == "layer1.0.conv3.conv"


@pytest.mark.parametrize("channels,ratio,divisor", [(64, 1 / 8, 16), (128, 1 / 16, 32), (256, 1 / 16, 8),
                                                    (1024, 1 / 16, 32), (72, 1 / 16, 8), (100, 0.3, 7)])
def test_attention_width_is_timms(channels, ratio, divisor):
    timm = pytest.importorskip("timm")
    from resnet_spec.ir_sknet import sk_attn_channels

    attn = sk_attn_channels(channels, ratio, divisor)
    assert attn == timm.layers.make_divisible(channels * ratio, divisor)


def test_strided_dilated_paddings_are_timms():
    timm = pytest.importorskip("timm")
    from resnet_spec.ir_sknet import sk_paths

    for stride in (1, 2):
        for dilation in (1, 2):
            layer = timm.layers.SelectiveKernel(16, 16, stride=stride, dilation=dilation)
            ks, ds, ps = sk_paths([3, 5], dilation, True, stride)
            assert [(p.conv.kernel_size[0], p.conv.dilation[0], p.conv.padding[0]) for p in layer.paths] == \
                list(zip(ks, ds, ps))


def test_resolved_shows_only_the_keys_of_the_type(tmp_path):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(TINY + "block: {type: basic, spatial: {type: selective_kernel, split_input: false}}\n")
    res = CliRunner().invoke(main, ["resolve", str(path)])
    assert res.exit_code == 0, res.output
    got = yaml.safe_load(res.output)["block"]["spatial"]
    assert got == {"type": "selective_kernel", "kernels": [3, 5], "keep_3x3": True, "split_input": False,
                   "rd_ratio": 0.0625, "rd_divisor": 8}
    again = tmp_path / "r.yaml"
    again.write_text(res.output)
    assert list(resnet_spec.load(str(again)).all_ops()) == list(resnet_spec.load(str(path)).all_ops())


# --- backends against torch -------------------------------------------------------------------------

def test_keras_weight_layout_round_trips():
    from resnet_spec.backends.keras import weights as kw
    from resnet_spec.weights.init import init_weights

    net = tiny("skresnext50_32x4d", size=32)
    op = next(op for op in net.all_ops() if isinstance(op, ir.SelectiveKernel))
    w = init_weights(net, 1, random_bn=True)
    to, back = kw.LAYOUTS[ir.SelectiveKernel]
    arrays = to(op, w)
    assert arrays[f"{op.name}.paths.1.conv"][0].shape == (3, 3, 4, 128)
    assert arrays[f"{op.name}.attn.fc_select"][0].shape == (1, 1, 32, 256)
    got = back(op, lambda name: arrays[name])
    assert sorted(got) == sorted(n for n, _, _ in op.tensors())
    assert all(np.array_equal(got[n], w[n]) for n in got)


def test_onnx_folds_and_matches_torch():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.onnx.fold import fold_batchnorm
    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.weights.init import init_weights

    for name in ("skresnet34",):  # split input; skresnext50_32x4d (no split, groups): parity in the slow tier
        net = tiny(name, size=32)
        weights = init_weights(net, 3, random_bn=True)
        folded, fw = fold_batchnorm(net, weights)
        sk = next(op for op in folded.all_ops() if isinstance(op, ir.SelectiveKernel))
        assert sk.folded and f"{sk.name}.paths.0.conv.bias" in fw and f"{sk.name}.attn.bn.weight" not in fw
        assert sorted(n for n, _, _ in sk.tensors()) == sorted(n for n in fw if n.startswith(sk.name + "."))
        x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
        ref = torch_backend.infer(net, weights, x)[0]["head"]
        assert rel_err(ref, onnx_backend.infer(net, weights, x)[0]["head"]) <= 2e-6


def test_onnx_graph_optimizations_change_nothing(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    (tmp_path / "s.yaml").write_text(tiny_text("skresnet34", size=32))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "onnx", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    path = str(tmp_path / "o" / "skresnet34.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    outs = ort_levels(path, x)
    assert rel_err(outs[0], outs[1]) <= 1e-6


@pytest.mark.slow  # int8 calibration and verify's runtime workers
def test_onnx_float16_int8_verify(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    for name in ("skresnet34", "skresnext50_32x4d"):
        (tmp_path / f"{name}.yaml").write_text(tiny_text(name, size=40))
        for dtype in ("float16", "int8"):
            out = tmp_path / f"{name}_{dtype}"
            res = CliRunner().invoke(main, ["convert", str(tmp_path / f"{name}.yaml"), "--to", "onnx", "--dtype",
                                            dtype, "-o", str(out)])
            assert res.exit_code == 0, res.output
            res = CliRunner().invoke(main, ["verify", str(tmp_path / f"{name}.yaml"), str(out / f"{name}.onnx")])
            assert res.exit_code == 0, res.output


@pytest.mark.slow  # TensorFlow's converter in a worker, LiteRT
def test_tflite_float32_verify(tmp_path):
    if importlib.util.find_spec("tensorflow") is None:  # (never imported here: the workers run it)
        pytest.skip("needs tensorflow")
    (tmp_path / "s.yaml").write_text(tiny_text("skresnet34", size=40))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "tflite", "-o", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "s.yaml"), str(tmp_path / "t" / "skresnet34.tflite")])
    assert res.exit_code == 0 and "PASS" in res.output, res.output


@pytest.mark.slow  # two models built and run in torch twice
def test_torch_source_has_the_selective_kernel():
    pytest.importorskip("torch")
    from resnet_spec.backends.torch.source import to_source

    for name in ("skresnet34", "skresnext50_32x4d"):
        net = tiny(name, size=32)
        text = to_source(net)
        assert "class SelectiveKernel(nn.Module)" in text and "class SelectiveKernelAttn(nn.Module)" in text
        assert "ConvNorm(nn.Conv2d(" in text
        assert emitted_source_error(net) <= 1e-6


# --- the zoo entries against timm -------------------------------------------------------------------


@pytest.mark.slow  # full-depth timm models, three forward passes each
@pytest.mark.parametrize("name", ["skresnet34", "skresnext50_32x4d"])
def test_zoo_entry_equals_timm_with_randomized_weights(name):
    model, weights = _timm_randomized(name)
    assert any(k.endswith("attn.bn.running_var") and v.std() > 0.1 for k, v in weights.items())
    net = resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\n")
    assert _max_rel(model, net, weights) <= 1e-6
    # sharp: the same tensors with the paths' dilations swapped (kernels [5, 3]) differ
    swapped = resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\nblock: {{spatial: {{kernels: [5, 3]}}}}\n")
    assert [t.shape for t in swapped.tensors()] == [t.shape for t in net.tensors()]
    assert _max_rel(model, swapped, weights) > 1e-2


@pytest.mark.parametrize("name", ["skresnet34", pytest.param("skresnext50_32x4d", marks=pytest.mark.slow)])
def test_zoo_entry_has_timms_parameters_and_macs(name):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        params = sum(p.numel() for p in timm.create_model(name).parameters())
    model = timm.create_model(name, pretrained=False).eval()
    net = resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\n")
    assert net.params == params == resnet_spec.load(name).params
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert net.macs == counter.get_total_flops() // 2
    assert resnet_spec.spec.load(name).data["reference"] == {"library": "timm", "model": name}
    assert {t.name for t in net.tensors()} == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}


# --- import ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["skresnet18", "skresnet34", "skresnet50", "skresnet50d", "skresnext50_32x4d"])
def test_import_by_name_with_parity(name):
    pytest.importorskip("timm")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    assert f"timm:{name}" in family_coverage.FAMILIES["timm-sknet"][1]()
    r = family_coverage.run_one(f"timm:{name}", 64, isolated=False)
    assert r["status"] == "parity", r
    assert r["max_rel"] <= 1e-6


@pytest.mark.slow  # a timm model built, inferred and proven
def test_import_infers_the_selective_kernel():
    pytest.importorskip("timm")
    from resnet_spec.importers import import_source

    _, _, net, full, _ = import_source("timm:skresnet18", input_size=32)
    assert full["block"]["spatial"] == {"type": "selective_kernel", "rd_ratio": 0.125, "rd_divisor": 16}
    sks = [op for op in net.all_ops() if isinstance(op, ir.SelectiveKernel)]
    assert len(sks) == 8 and {(op.dilations, op.split_input) for op in sks} == {((1, 2), True)}


@pytest.mark.slow  # a full skresnext50_32x4d state dict through inference and timm's own blocks
def test_state_dict_imports_and_is_proven_in_timm(tmp_path):
    """A bare state dict: no dilations or strides; the split from the input channels, the attention width
    from every block's fc_reduce; the proof runs timm's ResNet with its sknet blocks on randomized weights."""
    torch = pytest.importorskip("torch")
    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    for name, spatial in (("skresnext50_32x4d", {"type": "selective_kernel", "split_input": False,
                                                 "rd_ratio": 1 / 16, "rd_divisor": 32}),):
        _, weights = _timm_randomized(name)
        path = tmp_path / f"{name}.pth"
        torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, str(path))
        src, _, net, full, w = import_source(str(path), "m", 32)
        assert full["block"]["spatial"] == spatial
        cmp = prove(src, net, full, w, isolated=False)
        assert cmp["passed"] and "ResNet class" in cmp["source"], cmp


def test_selective_kernel_elsewhere_is_refused_naming_it():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from resnet_spec.backends.torch import blocks

    with torch.device("meta"):
        model = timm.create_model("skresnet18")
    assert blocks.recognise_modules(model) == []
    model.layer1[0].se = timm.layers.SelectiveKernel(64, 64)
    assert blocks.recognise_modules(model) == [
        ("SKNet selective-kernel convolutions other than timm's in place of a block's spatial conv", "layer1.0.se")]


@pytest.mark.slow  # convert, then import through the ONNX reader
def test_onnx_import_reads_back(tmp_path):
    """convert's ONNX file (BN folded) imports back through the ONNX reader (backends/onnx/read_sknet.py) with
    its proof passing and the selective kernel in the spec; a half match is refused there in one line
    (tests/test_onnx_read_family.py)."""
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    (tmp_path / "s.yaml").write_text(tiny_text("skresnet34", size=32))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "onnx", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["import", str(tmp_path / "o" / "skresnet34.onnx"), "-o", str(tmp_path / "i")])
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    assert "type: selective_kernel" in (tmp_path / "i" / "skresnet34.yaml").read_text()


def test_diagram_names_the_selective_kernel():
    from resnet_spec.diagram import stage_info

    stages = stage_info(resnet_spec.load("skresnext50_32x4d"))
    assert [s["kind"] for s in stages] == ["bottleneck + SK 3x3, 3x3 d2"] * 4
    assert [s["groups"] for s in stages] == [32] * 4
    assert stages[1]["stride"] == "stride 2 on the selective kernel (first block)"


@pytest.mark.slow  # convert to .keras in a worker, then import it back with its proof
def test_keras_file_imports_back(tmp_path):
    if importlib.util.find_spec("tensorflow") is None:  # (never imported here: the workers run it)
        pytest.skip("needs tensorflow")
    (tmp_path / "s.yaml").write_text(tiny_text("skresnet34", size=32))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "tensorflow", "-o", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["import", str(tmp_path / "k" / "skresnet34.keras"), "-o", str(tmp_path / "i")])
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    back = resnet_spec.load(str(tmp_path / "i" / "skresnet34.yaml"))
    assert [op for op in back.all_ops()] == [op for op in resnet_spec.load(str(tmp_path / "s.yaml")).all_ops()]
