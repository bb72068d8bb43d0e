"""ECA channel attention (timm's EcaModule, the ecaresnet* models) as ``block.se: {type: eca}``: the spec
keys and their rules, the IR op (its kernel explicit, from timm's adaptive rule or given), every backend's
lowering against torch (ONNX float32/float16/int8, Keras), the zoo entry against timm's own model with
randomized weights (every BN statistic and affine parameter redrawn: timm zero-initialises the last BN of
each block, which would hide a missing op), and the import of timm's ecaresnet models.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error, rel_err, tiny, tiny_text
from timm_checks import (assert_one_located_error, assert_timm_params_and_macs, max_rel as _max_rel,
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
- {blocks: 1, channels: 4}
- {blocks: 2, channels: 8, stride: 2}
head: {classes: 5}
"""


def _net(block: str) -> ir.Network:
    return resnet_spec.load(TINY + f"block: {block}\n")


# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("{type: bottleneck, se: {type: eca, reduction: 16}}", "'reduction' applies to block.se type 'se' only, "
     "not to type 'eca'", ("block", "se", "reduction")),
    ("{type: bottleneck, se: {type: eca, divisor: 8}}", "'divisor' applies to block.se type 'se' only",
     ("block", "se", "divisor")),
    ("{type: bottleneck, se: {type: eca, reduce_from: input}}", "'reduce_from' applies to block.se type 'se' only",
     ("block", "se", "reduce_from")),
    ("{type: bottleneck, se: {kernel: 3}}", "'kernel' applies to block.se type 'eca' only, not to type 'se'",
     ("block", "se", "kernel")),
    ("{type: bottleneck, se: {reduction: 4, gamma: 2}}", "'gamma' applies to block.se type 'eca' only",
     ("block", "se", "gamma")),
    ("{type: bottleneck, se: {type: eca, kernel: 4}}", "ECA kernel 4 is even; it must be odd",
     ("block", "se", "kernel")),
    ("{type: bottleneck, se: {type: eca, kernel: 5, beta: 1}}", "'beta' sets the adaptive ECA kernel; it cannot "
     "be given with 'kernel'", ("block", "se", "beta")),
    ("{type: basic, se: {type: eca, placement: after_3x3}}", "placement 'after_3x3' applies to bottleneck blocks "
     "only", ("block", "se", "placement")),
]


@pytest.mark.parametrize("block,message,path", BAD, ids=[b[2][-1] + str(i) for i, b in enumerate(BAD)])
def test_rule_errors_are_located(block, message, path):
    assert_one_located_error(TINY + f"block: {block}\n", message, path)


def test_cli_refuses_in_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY + "block: {type: bottleneck, se: {type: eca, kernel: 6}}\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "ECA kernel 6 is even" in res.output


@pytest.mark.parametrize("value", ["cbam", "ECA"])
def test_schema_refuses_other_types(value):
    with pytest.raises(SpecError) as exc:
        _net(f"{{type: bottleneck, se: {{type: {value}}}}}")
    assert f"block.se.type: '{value}' is not one of se, eca" in str(exc.value)
    assert "\n" not in str(exc.value).strip()


# --- resolution: the op and its explicit kernel -----------------------------------------------------

@pytest.mark.parametrize("channels,kernel", [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_adaptive_kernel_is_timms(channels, kernel):
    assert ir.eca_kernel(channels, 2, 1) == kernel
    timm = pytest.importorskip("timm")
    assert timm.layers.EcaModule(channels).conv.kernel_size == (kernel,)


def test_eca_sits_after_the_last_bn_with_its_kernel():
    net = _net("{type: bottleneck, se: {type: eca}}")
    b = next(b for b in net.blocks if b.name == "layer2.1")
    assert [type(op).__name__ for op in b.main][-3:] == ["Conv", "BatchNorm", "ECA"]
    eca = b.main[-1]
    assert (eca.name, eca.channels, eca.kernel, eca.padding, eca.gamma, eca.beta, eca.placement) == \
        ("layer2.1.se", 32, 3, 1, 2, 1, "end")
    assert list(eca.tensors()) == [("layer2.1.se.conv.weight", (1, 1, 3), True)]
    assert eca.macs == 32 * 3
    given = _net("{type: bottleneck, se: {type: eca, kernel: 7}}").blocks[0].main[-1]
    assert (given.kernel, given.padding, given.gamma, given.beta) == (7, 3, None, None)
    after = _net("{type: bottleneck, se: {type: eca, placement: after_3x3}}").blocks[0].main
    assert [type(op).__name__ for op in after][5:7] == ["ReLU", "ECA"] and after[6].channels == 4


def test_resolved_shows_only_the_keys_of_the_type(tmp_path):
    for se, want in (("{type: eca}", "{type: eca, kernel: null, gamma: 2, beta: 1, placement: end}"),
                     ("{type: eca, kernel: 5}", "{type: eca, kernel: 5, placement: end}")):
        path = tmp_path / "s.yaml"
        path.write_text(TINY + f"block: {{type: bottleneck, se: {se}}}\n")
        res = CliRunner().invoke(main, ["resolve", str(path)])
        assert res.exit_code == 0, res.output
        import yaml

        got = yaml.safe_load(res.output)["block"]["se"]
        assert got == yaml.safe_load(want), got
        again = tmp_path / "r.yaml"
        again.write_text(res.output)
        assert list(resnet_spec.load(str(again)).all_ops()) == list(resnet_spec.load(str(path)).all_ops())


# --- backends against torch -------------------------------------------------------------------------

def test_keras_weight_layout_round_trips():
    from resnet_spec.backends.keras import weights as kw

    op = ir.ECA("layer1.0.se", 8, 5, (8, 4, 4), (8, 4, 4))
    w = {"layer1.0.se.conv.weight": np.arange(5, dtype=np.float32).reshape(1, 1, 5)}
    to, back = kw.LAYOUTS[ir.ECA]
    keras_arrays = to(op, w)
    assert keras_arrays["layer1.0.se.conv"][0].shape == (5, 1, 1)
    assert keras_arrays["layer1.0.se.conv"][0][:, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert back(op, lambda name: keras_arrays[name])["layer1.0.se.conv.weight"].tolist() == w[
        "layer1.0.se.conv.weight"].tolist()


@pytest.mark.slow  # int8 calibration and verify's runtime workers
def test_onnx_float32_float16_int8_against_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")  # noqa: F841
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.torch import backend as torch_backend

    from resnet_spec.weights.init import init_weights

    text = tiny_text("ecaresnet50d", size=40)
    net = resnet_spec.load(text)
    weights = init_weights(net, 3, random_bn=True)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    got = onnx_backend.infer(net, weights, x)[0]["head"]
    assert rel_err(ref, got) <= 1e-5
    (tmp_path / "s.yaml").write_text(text)
    for dtype in ("float16", "int8"):
        res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "onnx", "--dtype", dtype,
                                        "-o", str(tmp_path / dtype)])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(main, ["verify", str(tmp_path / "s.yaml"), str(tmp_path / dtype / f"{net.name}.onnx")])
        assert res.exit_code == 0, res.output


def test_torch_source_has_the_eca_module():
    pytest.importorskip("torch")
    from resnet_spec.backends.torch import source

    text = source.to_source(tiny("ecaresnet50d"))
    assert "class ECA(nn.Module)" in text and "ECA(5, 2)" in text and "ECA(7, 3)" in text


# --- the zoo entry against timm ---------------------------------------------------------------------


def test_zoo_entry_equals_timm_with_randomized_weights():
    model, weights = _timm_randomized("ecaresnet50d")
    assert any(k.endswith("se.conv.weight") and v.std() > 0.1 for k, v in weights.items())
    net = resnet_spec.load("extends: ecaresnet50d\ninput: {size: 64}\n")
    assert _max_rel(model, net, weights) <= 1e-6
    # sharp: the same network without its ECA modules differs
    plain = resnet_spec.load("extends: resnet50d\ninput: {size: 64}\n")
    without = {k: v for k, v in weights.items() if ".se." not in k}
    assert _max_rel(model, plain, without) > 1e-2


def test_zoo_entry_has_timms_parameters_and_macs():
    assert_timm_params_and_macs("ecaresnet50d")


# --- import ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["ecaresnet50d", "ecaresnet26t", "ecaresnetlight", "ecaresnext26t_32x4d",
                                  "ecaresnet50t", "ecaresnet101d", "ecaresnext50t_32x4d"])
def test_import_by_name_with_parity(name):
    pytest.importorskip("timm")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    r = family_coverage.run_one(f"timm:{name}", 64, isolated=False)
    assert r["status"] == "parity", r
    assert r["max_rel"] <= 1e-6


def test_import_infers_eca():
    pytest.importorskip("timm")
    from resnet_spec.importers import import_source

    _, _, net, full, _ = import_source("timm:ecaresnet26t", input_size=32)
    assert full["block"]["se"] == {"type": "eca"}
    assert {op.kernel for op in net.all_ops() if isinstance(op, ir.ECA)} == {5, 7}


def test_other_eca_variants_still_refused():
    """timm's circular ECA and an EcaModule other than the ecaresnet default stay refusals."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from resnet_spec.backends.torch import blocks

    with torch.device("meta"):
        model = timm.create_model("ecaresnet26t")
    assert blocks.recognise_modules(model) == []
    model.layer1[0].se = timm.layers.CecaModule(256)
    assert blocks.recognise_modules(model) == [("circular ECA channel attention", "layer1.0.se")]
    model.layer1[0].se = timm.layers.EcaModule(256, use_mlp=True)
    assert blocks.recognise_modules(model)[0][1] == "layer1.0.se"


def test_state_dict_imports_and_is_proven_in_timm(tmp_path):
    """A bare ecaresnet50d state dict: the (1, 1, k) tensors are ECA convs, the adaptive rule gives their
    kernels, and the proof runs timm's ResNet class with attn_layer='eca' on the randomized weights."""
    torch = pytest.importorskip("torch")
    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    _, weights = _timm_randomized("ecaresnet50d")
    path = tmp_path / "eca.pth"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, str(path))
    src, _, net, full, w = import_source(str(path), "m", 32)
    assert full["block"]["se"] == {"type": "eca"}
    cmp = prove(src, net, full, w, isolated=False)
    assert cmp["passed"] and "ResNet class" in cmp["source"], cmp


def test_diagram_names_the_eca_and_its_kernel():
    from resnet_spec.diagram import stage_info

    kinds = [s["kind"] for s in stage_info(resnet_spec.load("ecaresnet50d"))]
    assert kinds == ["bottleneck + ECA k5"] * 3 + ["bottleneck + ECA k7"]
