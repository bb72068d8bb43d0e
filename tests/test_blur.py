"""BlurPool anti-aliasing (timm's BlurPool2d, the resnetblur* models) as ``block.anti_alias: blur`` and
``stem.pool.anti_alias: blur``: the spec keys and their rules, the IR op (taps, stride, padding and its mode
explicit), every backend's lowering against torch (ONNX in process, graph optimizations included; Keras on
TensorFlow, JAX and PyTorch in the slow tier; the plain-Keras load of the stock ``.keras``: test_keras_stock.py's
resnetblur50), the zoo entry
against timm's own model with randomized weights, and the import of timm's resnetblur models.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from conftest import cli, rel_err
from timm_checks import (assert_one_located_error, assert_timm_params_and_macs, emitted_source_error, max_rel,
                         ort_levels, timm_randomized)

import resnet_spec
from resnet_spec import ir
from resnet_spec.errors import SpecError

TINY = """\
name: tinyblur
input: {size: 32}
stem: {channels: 8, kernel: 3, stride: 2, pool: {kernel: 3, stride: 2, padding: 1, anti_alias: blur}}
stages:
- {blocks: 1, channels: 4}
- {blocks: 2, channels: 8, stride: 2}
- {blocks: 1, channels: 8, stride: 2}
head: {classes: 5}
"""


def _net(block: str, size: int = 32) -> ir.Network:
    return resnet_spec.load(TINY.replace("size: 32", f"size: {size}") + f"block: {block}\n")


def _blurs(net) -> list:
    return [op for op in net.all_ops() if isinstance(op, ir.BlurPool)]


# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("stem: {pool: {type: avg, kernel: 2, stride: 2, padding: 0, anti_alias: blur}}",
     "'anti_alias' applies to max stem pools only, not to type 'avg'", ("stem", "pool", "anti_alias")),
    ("stem: {pool: {type: conv, kernel: 3, stride: 2, padding: 1, anti_alias: blur}}",
     "'anti_alias' applies to max stem pools only, not to type 'conv'", ("stem", "pool", "anti_alias")),
    ("stem: {pool: {kernel: 3, stride: 2, padding: 1, anti_alias: blur, ceil_mode: true}}",
     "ceil_mode decides nothing with anti_alias", ("stem", "pool", "ceil_mode")),
    ("block: {type: bottleneck, stride_on: 1x1, anti_alias: blur}", "it needs stride_on: 3x3",
     ("block", "anti_alias")),
    ("block: {type: basic, preact: true, anti_alias: blur}", "'anti_alias' is not supported with pre-activation",
     ("block", "anti_alias")),
]


@pytest.mark.parametrize("text,message,path", BAD, ids=[f"{b[2][-1]}{i}" for i, b in enumerate(BAD)])
def test_rule_errors_are_located(text, message, path):
    base = "name: t\ninput: {size: 32}\nstages: [{blocks: 1, channels: 4}]\n"
    if not text.startswith("block"):
        base += "block: {type: basic}\n"
    assert_one_located_error(base + text, message, path)


@pytest.mark.parametrize("value", ["blurpc", "Blur", 3])
def test_schema_refuses_other_values(tmp_path, value):
    for text in (f"block: {{type: basic, anti_alias: {value}}}\n",
                 f"stem: {{pool: {{anti_alias: {value}}}}}\nblock: {{type: basic}}\n"):
        (tmp_path / "s.yaml").write_text("name: t\nstages: [{blocks: 1, channels: 4}]\n" + text)
        res = cli("validate", tmp_path / "s.yaml")
        _one_located_line(res, "anti_alias")


def test_a_map_too_small_to_reflect_is_refused_where_found(tmp_path):
    """Reflect padding 1 needs at least two rows: the last stage's 1x1 map cannot be blurred."""
    text = TINY.replace("size: 32", "size: 8") + "block: {type: basic, anti_alias: blur}\n"
    with pytest.raises(SpecError, match=r"blur pool layer3\.0\.aa reflect-pads 1 on a 1x1 feature map"):
        resnet_spec.load(text)
    (tmp_path / "s.yaml").write_text(text)
    res = cli("validate", tmp_path / "s.yaml")
    _one_located_line(res, "stages[2]: the blur pool layer3.0.aa reflect-pads 1 on a 1x1")


def _one_located_line(res, *needles):
    """A CLI run that failed with exit 1 in one ``file:line:col: message`` line holding ``needles``."""
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "s.yaml:" in lines[0], res.output
    assert all(n in lines[0] for n in needles), lines[0]


# --- the IR: every number-deciding fact explicit ----------------------------------------------------


def test_blocks_and_stem_get_timms_blur_pools():
    net = _net("{type: basic, anti_alias: blur}")
    pool, stem_blur = net.stem[-2:]
    assert isinstance(pool, ir.Pool) and (pool.name, pool.kind, pool.kernel, pool.stride, pool.padding) == \
        ("maxpool.0", "max", 3, 1, 1)
    assert stem_blur == ir.BlurPool("maxpool.1", 8, (0.25, 0.5, 0.25), 2, 1, "reflect", (8, 16, 16), (8, 8, 8))
    assert stem_blur.filter[1] == (0.125, 0.25, 0.125) and stem_blur.tensors is not None
    assert list(stem_blur.tensors()) == [] and stem_blur.macs == 8 * 8 * 8 * 9
    blurs = _blurs(net)
    assert [b.name for b in blurs] == ["maxpool.1", "layer2.0.aa", "layer3.0.aa"]
    blk = net.blocks[1]  # layer2.0: conv1 at stride 1, bn1, relu, then the blur takes the stride
    assert [type(op).__name__ for op in blk.main[:4]] == ["Conv", "BatchNorm", "ReLU", "BlurPool"]
    assert blk.main[0].stride == 1 and blk.main[3].stride == 2 and blk.main[3].out_shape == (8, 4, 4)
    assert blk.shortcut[0].stride == 2  # the projection keeps its stride
    bottle = _net("{type: bottleneck, anti_alias: blur}")
    aa = next(op for op in bottle.blocks[1].main if isinstance(op, ir.BlurPool))
    assert aa.name == "layer2.0.aa" and aa.channels == 8  # after the 3x3 conv (width 8) and its ReLU
    assert [type(op).__name__ for op in bottle.blocks[1].main].index("BlurPool") == 6


def test_blur_and_avgpool_differ_only_in_their_pool_and_keep_the_shapes():
    blur, avg = _net("{type: basic, anti_alias: blur}"), _net("{type: basic, anti_alias: avgpool}")
    assert [b.out_shape for b in blur.blocks] == [b.out_shape for b in avg.blocks]
    assert blur.params == avg.params  # no tensors either way
    # the same stem (TINY's blurred one); the blocks' average pools count no MACs
    assert blur.macs - avg.macs == sum(op.macs for op in _blurs(blur) if op.name != "maxpool.1") > 0


def test_resolved_shows_the_stem_key_only_where_given(tmp_path):
    (tmp_path / "s.yaml").write_text(TINY + "block: {type: basic, anti_alias: blur}\n")
    res = cli("resolve", tmp_path / "s.yaml")
    assert res.exit_code == 0, res.output
    assert "anti_alias: blur" in res.output.split("block:")[0]  # the stem pool's
    res = cli("resolve", "resnet50")
    assert res.exit_code == 0 and "anti_alias: null" in res.output  # the block's, as before
    assert res.output.count("anti_alias") == 1  # no stem.pool anti_alias where it is not given


# --- lowerings --------------------------------------------------------------------------------------


def test_torch_module_holds_no_tensor_and_timms_filter():
    torch = pytest.importorskip("torch")
    net = _net("{type: basic, anti_alias: blur}")
    model = resnet_spec.build(net, "torch")
    assert not any(k.endswith("filt") or ".aa." in k for k in model.state_dict())  # as timm's: non-persistent
    assert not any(n.endswith("filt") for n, _ in model.named_buffers())  # a constant: the IR's buffers are BN's
    mod = model.get_submodule("layer2.0.aa")
    expect = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    assert mod.filt.shape == (8, 1, 3, 3) and torch.equal(mod.filt[3, 0], expect)
    assert model.double().get_submodule("layer2.0.aa").filt.dtype == torch.float64  # moved and cast with it


def test_torch_source_has_the_blur_pool():
    pytest.importorskip("torch")
    from resnet_spec.backends.torch.source import to_source

    net = _net("{type: bottleneck, anti_alias: blur}", 33)
    text = to_source(net)
    assert "class BlurPool2d(nn.Module)" in text and "BlurPool2d(8, (0.25, 0.5, 0.25), 2, 1, 'reflect')" in text
    assert emitted_source_error(net) <= 1e-6


@pytest.mark.parametrize("block", ["{type: basic, anti_alias: blur}", "{type: bottleneck, anti_alias: blur}"])
def test_onnx_matches_torch_and_graph_optimizations_change_nothing(tmp_path, block):
    """Odd sizes (33: the reflect padding's last column is real) through Slice + Concat + depthwise Conv; ORT's
    rewrites (ENABLE_ALL) give what the graph as written gives (DISABLE_ALL)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.weights.init import init_weights

    net = _net(block, 33)
    weights = init_weights(net, 3, random_bn=True)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    assert rel_err(ref, onnx_backend.infer(net, weights, x)[0]["head"]) <= 2e-6
    path = onnx_backend.convert(net, weights, str(tmp_path / "o"))[0]
    import onnx

    nodes = onnx.load(path).graph.node
    assert not [n for n in nodes if n.op_type == "Pad"]  # reflect padding as Slice + Concat copies
    assert [n.name for n in nodes if n.op_type == "Concat"][:2] == ["maxpool.1.pad_reflect_cols",
                                                                    "maxpool.1.pad_reflect_rows"]
    outs = ort_levels(path, x)
    assert rel_err(outs[0], outs[1]) <= 1e-6 and rel_err(ref, outs[1]) <= 2e-6


def test_keras_blur_has_no_weights():
    from resnet_spec.backends.keras import weights as kw

    assert kw.LAYOUTS[ir.BlurPool] is kw.NO_WEIGHTS  # the filter is repeated 2x2 averages (backends/keras/blur.py)


def test_binomial_filter_is_repeated_two_tap_averages():
    """What the Keras lowering relies on: k - 1 two-tap averages compose to the k binomial taps."""
    from resnet_spec.ir_blur import binomial_taps

    for k in (2, 3, 4, 5, 7):
        taps = np.array([1.0])
        for _ in range(k - 1):
            taps = np.convolve(taps, [0.5, 0.5])
        assert tuple(taps) == binomial_taps(k), k


# --- the zoo entry against timm ---------------------------------------------------------------------


def test_zoo_entry_equals_timm_with_randomized_weights():
    """resnetblur50 carrying timm's randomized weights is timm's model; a wrong variant is not: zero padding
    in place of reflect, the average-pool anti-aliasing, or no stem blur (a 3x3/2 max-pool) all differ."""
    model, weights = timm_randomized("resnetblur50")
    net = resnet_spec.load("extends: resnetblur50\ninput: {size: 64}\n")
    assert max_rel(model, net, weights) <= 1e-6
    blurs = [mod for mod in model.modules() if type(mod).__name__ == "BlurPool2d"]
    assert len(blurs) == 4  # the stem's and three strided blocks'
    for mod in blurs:
        mod.pad_mode = "constant"
    assert max_rel(model, net, weights) > 1e-3
    for mod in blurs:
        mod.pad_mode = "reflect"
    for text in ("block: {anti_alias: avgpool}\n", "stem: {pool: {anti_alias: null}}\n"):
        wrong = resnet_spec.load(f"extends: resnetblur50\ninput: {{size: 64}}\n{text}")
        assert max_rel(model, wrong, weights) > 1e-3, text


def test_zoo_entry_has_timms_parameters_and_macs():
    assert_timm_params_and_macs("resnetblur50")


# --- import -----------------------------------------------------------------------------------------


def test_other_blur_pools_are_refused_naming_them():
    pytest.importorskip("timm")
    from timm.layers import BlurPool2d
    from timm.models import resnet

    from resnet_spec.backends.torch import blocks

    def model():
        return resnet.ResNet(block=resnet.BasicBlock, layers=(1, 1), channels=(8, 16), num_classes=5,
                             aa_layer=BlurPool2d)

    assert blocks.recognise_modules(model()) == []
    other = "BlurPool2d anti-aliasing other than timm's default (3 binomial taps, reflect padding 1, stride 2)"
    zero = model()
    zero.layer2[0].aa.pad_mode = "constant"  # timm's 'blurpc'
    assert blocks.recognise_modules(zero) == [(other, "layer2.0.aa")]
    wide = model()
    wide.maxpool[1].filt_size = 5
    assert blocks.recognise_modules(wide) == [(other, "maxpool.1")]
    elsewhere = model()
    elsewhere.layer2[0].downsample = BlurPool2d(8)
    assert blocks.recognise_modules(elsewhere)[0][1] == "layer2.0.downsample"


def _family_coverage():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import family_coverage

    return family_coverage


@pytest.mark.slow  # a timm model built, inferred and proven in process (resnetblur18, 50, 101d: by hand, the docs)
@pytest.mark.parametrize("name", ["resnetblur50d"])  # the deep stem and avg-down shortcuts with the blur
def test_import_by_name_with_parity(name):
    pytest.importorskip("timm")
    res = _family_coverage().run_one(f"timm:{name}", 64, isolated=False)
    assert res["status"] == "parity" and res["max_rel"] <= 1e-6, res


@pytest.mark.slow  # a full TResNet built
def test_tresnet_refusal_no_longer_names_the_blur():
    timm = pytest.importorskip("timm")
    from resnet_spec.backends.torch import blocks

    found = blocks.recognise_modules(timm.create_model("tresnet_m"))
    assert found and not any("BlurPool" in what for what, _ in found), found


@pytest.mark.slow  # every leg, each Keras backend in a worker of its own
def test_parity_over_every_leg(tmp_path):
    (tmp_path / "s.yaml").write_text(TINY + "block: {type: basic, anti_alias: blur}\n")
    res = cli("parity", tmp_path / "s.yaml")
    assert res.exit_code == 0 and "PASS: 10/10 pairs" in res.output, res.output


def test_diagram_names_the_blur_pools():
    from resnet_spec import diagram

    net = resnet_spec.load("resnetblur50")
    assert diagram._stem_lines(net)[2:4] == ["maxpool 3x3/1", "blurpool 3x3/2 (reflect pad)"]
    assert diagram.stage_info(net)[1]["stride"] == "stride 2 on the 3x3 blur pool (reflect pad) (first block)"
