"""Per-conv widths and the projection's kernel: a stage's per-block ``widths`` (timm's pruned models),
``block.reduce_first`` (SENet-154's narrower 1x1 conv), ``shortcut.kernel`` (its 3x3 projections) and the SE
placement ``end_relu`` (timm's legacy SEResNetBlock). The rules (located one-line errors), the IR the resolver
makes (plain Conv/BN/ReLU ops: nothing new to lower), torch/.py source/ONNX against each other, small timm
models built the way timm builds these (randomized weights) against the resolved spec, the zoo entries
senet154 and ecaresnet50d_pruned against timm's own models, and the import of all six timm models.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rel_err
from timm_checks import (assert_one_located_error, assert_timm_params_and_macs, max_rel, ort_at_both_levels,
                         timm_randomized)

import resnet_spec
from resnet_spec import ir
from resnet_spec.cli import main

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import family_coverage  # noqa: E402

BOTTLENECK = """\
name: tiny_widths
input: {size: 32}
stem: {type: deep, channels: [8, 8, 16], kernel: 3, stride: 2}
block: {type: bottleneck, se: {type: eca}}
stages:
- {blocks: 2, channels: 64, widths: [[12, 7, 20], [9, 11, 20]]}
- {blocks: 1, channels: 128, stride: 2, widths: [[13, 6, 30]]}
- {blocks: 1, channels: 256, stride: 2, widths: [[10, 8, 24]]}
- {blocks: 1, channels: 512, stride: 2, widths: [[9, 9, 28]]}
head: {classes: 5}
"""
BASIC = """\
name: tiny_reduce
input: {size: 32}
stem: {channels: 8, kernel: 3, stride: 1, pool: null}
block: {type: basic, reduce_first: 2, se: {reduction: 4, divisor: 1, placement: end_relu}}
stages:
- {blocks: 1, channels: 8}
- {blocks: 2, channels: 16, stride: 2}
head: {classes: 5}
"""


ROWS = [[(12, 7, 20), (9, 11, 20)], [(13, 6, 30)], [(10, 8, 24)], [(9, 9, 28)]]


def _weights(net):
    from resnet_spec.weights.init import init_weights

    return init_weights(net, 3, random_bn=True)


def _x(net, seed=0):
    return np.random.default_rng(seed).standard_normal((2, *net.input_shape)).astype(np.float32)


# --- rules: located one-line errors -------------------------------------------------------------------

BASE = """\
name: t
input: {size: 32}
stem: {channels: 8, kernel: 3, stride: 1, pool: null}
head: {classes: 5}
"""
BAD = [
    ("block: {type: bottleneck}\nstages:\n- {blocks: 2, channels: 8, widths: [[4, 4, 8]]}\n",
     "1 lists of widths for 2 blocks; give one per block", ("stages", 0, "widths")),
    ("block: {type: bottleneck}\nstages:\n- {blocks: 1, channels: 8, widths: [[4, 8]]}\n",
     "2 widths for a bottleneck block of 3 convs ([conv1, conv2, conv3])", ("stages", 0, "widths", 0)),
    ("block: {type: basic}\nstages:\n- {blocks: 1, channels: 8, widths: [[4, 4, 8]]}\n",
     "3 widths for a basic block of 2 convs", ("stages", 0, "widths", 0)),
    ("stages:\n- {blocks: 1, channels: 8, widths: [[4, 4, 8]]}\nblock: {type: bottleneck, reduce_first: 2}\n",
     "'reduce_first' and stages' widths both set the first conv's width", ("block", "reduce_first")),
    ("block: {type: bottleneck}\nstages:\n- {blocks: 1, channels: 8, widths: [[4, 4, 8]], width: 4}\n",
     "'width' and 'widths' both set the stage's conv widths", ("stages", 0, "width")),
    ("block: {type: basic}\nstages:\n- {blocks: 1, channels: 8}\nshortcut: {kernel: 2}\n",
     "projection kernel 2 is even", ("shortcut", "kernel")),
    ("block: {type: basic}\nstages:\n- {blocks: 1, channels: 8}\nshortcut: {type: A, kernel: 3}\n",
     "type A shortcuts have no projection conv", ("shortcut", "kernel")),
    ("block: {type: basic}\nstages:\n- {blocks: 1, channels: 8}\nshortcut: {projection: avgpool_conv, kernel: 3}\n",
     "'kernel' applies to projection 'conv' only", ("shortcut", "kernel")),
    ("block: {type: basic}\nstages:\n- {blocks: 1, channels: 8, dilate: true}\nshortcut: {kernel: 3}\n",
     "not supported with dilated stages", ("shortcut", "kernel")),
    ("stages:\n- {blocks: 1, channels: 8}\nblock: {type: basic, preact: true, se: {placement: end_relu}}\n",
     "placement 'end_relu' is not supported with pre-activation blocks", ("block", "se", "placement")),
]


@pytest.mark.parametrize("text,message,path", BAD, ids=[f"{b[2][-1]}{i}" for i, b in enumerate(BAD)])
def test_rule_errors_are_located(text, message, path):
    assert_one_located_error(BASE + text, message, path)


def test_cli_refuses_in_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE + BAD[0][0])
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if "widths" in ln]
    assert len(lines) == 1 and f"{path}:7:" in lines[0] and "1 lists of widths for 2 blocks" in lines[0], res.output


def test_schema_refuses_a_non_integer_width():
    from resnet_spec.errors import SpecError

    with pytest.raises(SpecError, match="widths"):
        resnet_spec.load(BASE + "block: {type: basic}\nstages:\n- {blocks: 1, channels: 8, widths: [[4, 0.5]]}\n")


# --- the IR: every width, kernel and padding explicit ---------------------------------------------------

def _convs(block):
    return [op for op in block.main if isinstance(op, ir.Conv)]


def test_per_block_widths_set_every_conv_and_the_eca_follows_the_nominal_channels():
    net = resnet_spec.load(BOTTLENECK)
    assert [[c.out_channels for c in _convs(b)] for b in net.blocks] == [list(r) for s in ROWS for r in s]
    assert [[c.in_channels for c in _convs(b)] for b in net.blocks][:3] == [[16, 12, 7], [20, 9, 11], [20, 13, 6]]
    assert [b.out_shape[0] for b in net.blocks] == [20, 20, 30, 24, 28]
    assert [len(b.shortcut) for b in net.blocks] == [2, 0, 2, 2, 2]  # projections where the channels change
    eca = [op for b in net.blocks for op in b.main if isinstance(op, ir.ECA)]
    # timm's kernels from the unpruned 256..2048 channels (5, 5, 5, 7), not from the 20..30 it gates (3)
    assert [(e.channels, e.kernel, e.gamma, e.beta) for e in eca] == [
        (20, 5, None, None), (20, 5, None, None), (30, 5, None, None), (24, 5, None, None), (28, 7, None, None)]
    assert net.head[-1].in_features == 28


def test_reduce_first_end_relu_and_the_3x3_projection():
    net = resnet_spec.load(BASIC.replace("head:", "shortcut: {kernel: 3}\nhead:"))
    b0, b1 = net.blocks[0], net.blocks[1]
    assert [c.out_channels for c in _convs(b0)] == [4, 8] and [c.out_channels for c in _convs(b1)] == [8, 16]
    kinds = [type(op).__name__ for op in b1.main]
    assert kinds == ["Conv", "BatchNorm", "ReLU", "Conv", "BatchNorm", "ReLU", "SqueezeExcite"]
    se = b1.main[-1]
    assert (se.placement, se.channels, se.reduced) == ("end_relu", 16, 4)
    proj = b1.shortcut[0]  # strided: 3x3, padding 1; layer1.0 has no projection (8 -> 8, stride 1)
    assert (proj.kernel, proj.stride, proj.padding, proj.out_shape) == (3, 2, 1, (16, 16, 16))
    assert b0.shortcut == ()
    unstrided = resnet_spec.load(BASIC.replace("head:", "shortcut: {type: C, kernel: 3}\nhead:"))
    assert (unstrided.blocks[0].shortcut[0].kernel, unstrided.blocks[0].shortcut[0].padding) == (1, 0)


def test_resolved_shows_the_new_keys_and_loads_to_the_same_network(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASIC.replace("head:", "shortcut: {kernel: 3}\nhead:"))
    res = CliRunner().invoke(main, ["resolve", str(path)])
    assert res.exit_code == 0, res.output
    assert "reduce_first: 2" in res.output and "kernel: 3" in res.output and "placement: end_relu" in res.output
    again = tmp_path / "r.yaml"
    again.write_text(res.output)
    assert list(resnet_spec.load(str(again)).all_ops()) == list(resnet_spec.load(str(path)).all_ops())
    path.write_text(BOTTLENECK)
    res = CliRunner().invoke(main, ["resolve", str(path)])
    assert "widths: [[12, 7, 20], [9, 11, 20]]" in res.output
    again.write_text(res.output)
    assert list(resnet_spec.load(str(again)).all_ops()) == list(resnet_spec.load(str(path)).all_ops())


def test_diagram_shows_the_projection_kernel_and_a_narrower_first_conv():
    from resnet_spec.diagram import stage_info

    info = stage_info(resnet_spec.load(BASIC.replace("head:", "shortcut: {kernel: 3}\nhead:")))
    assert info[1]["shortcut"] == "3x3 conv/2 + BN"
    info = stage_info(resnet_spec.load(BOTTLENECK))
    assert (info[0]["in"], info[0]["width"], info[0]["out"]) == (16, "12 -> 7", 20)  # the first block's convs


# --- backends against torch ----------------------------------------------------------------------------

@pytest.mark.parametrize("text", [BOTTLENECK, BASIC.replace("head:", "shortcut: {kernel: 3}\nhead:")],
                         ids=["widths", "reduce_first"])
def test_onnx_and_torch_source_against_torch(tmp_path, text):
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.torch import backend as torch_backend, source

    net = resnet_spec.load(text)
    weights, x = _weights(net), _x(net)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    assert rel_err(ref, onnx_backend.infer(net, weights, x)[0]["head"]) <= 1e-5
    _, outs = ort_at_both_levels(net, weights, x)
    assert rel_err(outs[0], outs[1]) <= 2e-6
    code = source.to_source(net)
    ns: dict = {}
    exec(compile(code, str(tmp_path / "m.py"), "exec"), ns)
    mod = ns[source.class_name(net.name)]()
    mod.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=False)
    with torch.inference_mode():
        assert torch.equal(mod.eval()(torch.from_numpy(x)), torch_backend.build(net, weights)(torch.from_numpy(x)))


@pytest.mark.slow  # parity's worker processes: torch, .py, ONNX, Keras on TF/JAX/torch, TFLite
def test_parity_passes_every_pair(tmp_path):
    path = tmp_path / "s.yaml"  # per-block widths, an SE after the last ReLU and 3x3 projections in one net
    path.write_text(BOTTLENECK.replace("se: {type: eca}", "se: {reduction: 4, divisor: 1, placement: end_relu}")
                    .replace("head:", "shortcut: {kernel: 3}\nhead:"))
    res = CliRunner().invoke(main, ["parity", str(path)])
    assert res.exit_code == 0 and "PASS: 10/10 pairs" in res.output, res.output


# --- small timm models built as timm builds these, randomized weights -------------------------------------

def _randomized(model):
    import torch

    weights = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items()
                                          if not k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    return model.eval(), weights


SENET_LIKE = """\
name: tiny_senet
input: {size: 32}
stem: {type: deep, channels: [8, 8, 16], kernel: 3, stride: 2}
block: {type: bottleneck, groups: 4, width_per_group: 16, reduce_first: 2, se: {reduction: 16, divisor: 8}}
shortcut: {kernel: 3}
stages:
- {blocks: 1, channels: 8}
- {blocks: 2, channels: 16, stride: 2}
- {blocks: 1, channels: 32, stride: 2}
- {blocks: 1, channels: 32, stride: 2}
head: {classes: 10}
"""


def test_timm_senet154_construction_equals_the_spec():
    """timm resnet.py's senet154 arguments (deep stem, block_reduce_first 2, down_kernel_size 3, SE) on a
    small ResNet; sharp: the same weights without the 3x3 projections' padding do not load."""
    pytest.importorskip("timm")
    from timm.models import resnet

    torch_model = resnet.ResNet(resnet.Bottleneck, [1, 2, 1, 1], channels=(8, 16, 32, 32), num_classes=10,
                                cardinality=4, base_width=16, stem_type="deep", stem_width=8, down_kernel_size=3,
                                block_reduce_first=2, block_args={"attn_layer": "se"})
    model, weights = _randomized(torch_model)
    net = resnet_spec.load(SENET_LIKE)
    assert net.params == sum(p.numel() for p in model.parameters())
    assert max_rel(model, net, weights) <= 1e-6
    assert weights["layer2.0.downsample.0.weight"].shape[2:] == (3, 3)
    assert weights["layer1.0.downsample.0.weight"].shape[2:] == (1, 1)  # unstrided: 1x1 in timm too


def test_timm_legacy_se_basic_block_equals_the_spec_and_end_differs():
    """timm senet.py's SEResNetBlock (SE after the second ReLU, then add and ReLU) and its SENet stem pool
    (3x3/2, ceil mode, no padding); sharp: the SE placed at 'end' (before that ReLU) differs."""
    pytest.importorskip("timm")
    from timm.models import senet

    from resnet_spec.backends.torch import names

    model, weights = _randomized(senet.SENet(senet.SEResNetBlock, [1, 1, 1, 1], groups=1, reduction=16,
                                             num_classes=10))
    weights, _ = names.canonical_weights(weights, names.layout_of(list(weights)))
    text = """\
name: tiny_legacy
input: {size: 32}
stem: {channels: 64, kernel: 7, stride: 2, pool: {kernel: 3, stride: 2, padding: 0, ceil_mode: true}}
block: {type: basic, se: {reduction: 16, divisor: 1, placement: end_relu}}
stages: [{blocks: 1, channels: 64}, {blocks: 1, channels: 128}, {blocks: 1, channels: 256}, {blocks: 1, channels: 512}]
head: {classes: 10}
"""
    text = text.replace("128}", "128, stride: 2}").replace("256}", "256, stride: 2}").replace("512}", "512, stride: 2}")
    assert max_rel(model, resnet_spec.load(text), weights) <= 1e-6
    assert max_rel(model, resnet_spec.load(text.replace("placement: end_relu", "placement: end")), weights) > 1e-2


def _pruned_string(model, rows, stem=("conv1.0", "conv1.3", "conv1.6")) -> str:
    """timm's _prune.py model string for ``model`` (a ResNet-D) with each block's convs at ``rows``."""
    import torch.nn as nn

    out, widths, prev = [], {}, model.conv1[-1].out_channels
    for si, stage_rows in enumerate(rows):
        for bi, (c1, c2, c3) in enumerate(stage_rows):
            p = f"layer{si + 1}.{bi}"
            widths.update({f"{p}.conv1": (c1, prev), f"{p}.bn1": (c1,), f"{p}.conv2": (c2, c1), f"{p}.bn2": (c2,),
                           f"{p}.conv3": (c3, c2), f"{p}.bn3": (c3,), f"{p}.downsample.1": (c3, prev),
                           f"{p}.downsample.2": (c3,)})
            prev = c3
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            shape = widths.get(name, tuple(m.weight.shape))
            out.append(f"{name}.weight:[{', '.join(map(str, shape))}]")
        elif isinstance(m, nn.Linear):
            out.append(f"{name}.weight:[{m.out_features}, {prev}]")
    return "***".join(out)


def test_timm_pruning_equals_the_spec_and_the_gated_channels_kernel_differs():
    """A small ECA-ResNet-D adapted by timm's own _prune.adapt_model_from_string to per-block widths (as
    ecaresnet50d_pruned is built); sharp: ECA kernels from the pruned channels (3) instead of timm's (5)."""
    pytest.importorskip("timm")
    from timm.models import _prune, resnet

    base = resnet.ResNet(resnet.Bottleneck, [2, 1, 1, 1], num_classes=5, stem_type="deep",
                         stem_width=8, avg_down=True, block_args={"attn_layer": "eca"})
    model, weights = _randomized(_prune.adapt_model_from_string(base, _pruned_string(base, ROWS)))
    text = BOTTLENECK.replace("block:", "shortcut: {projection: avgpool_conv}\nblock:")
    net = resnet_spec.load(text)
    assert net.params == sum(p.numel() for p in model.parameters())
    assert max_rel(model, net, weights) <= 1e-6
    wrong = resnet_spec.load(text.replace("se: {type: eca}", "se: {type: eca, kernel: 3}"))
    assert max_rel(model, wrong, {**weights, **{k: v[..., 1:4] for k, v in weights.items() if "se.conv" in k}}) > 1e-3


# --- the zoo entries against timm's models -----------------------------------------------------------------

@pytest.mark.slow  # senet154: 115M parameters, built once
def test_senet154_equals_timm_with_randomized_weights():
    model, weights = timm_randomized("senet154")
    net = resnet_spec.load("extends: senet154\ninput: {size: 64}\n")
    assert max_rel(model, net, weights) <= 1e-6
    assert net.params == sum(p.numel() for p in model.parameters()) == 115_088_984
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert net.macs == counter.get_total_flops() // 2
    assert resnet_spec.spec.load("senet154").data["reference"] == {"library": "timm", "model": "senet154"}


@pytest.mark.slow  # a 20M-parameter model against timm's
def test_ecaresnet50d_pruned_equals_timm_with_randomized_weights():
    model, weights = timm_randomized("ecaresnet50d_pruned")
    net = resnet_spec.load("extends: ecaresnet50d_pruned\ninput: {size: 64}\n")
    assert max_rel(model, net, weights) <= 1e-6
    assert_timm_params_and_macs("ecaresnet50d_pruned")


# --- import --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_legacy_seresnet34_imports_by_name_with_parity():
    """The coverage run's worker (randomized weights, the proof in this process); the pruned model's import
    is the CLI test's, senet154's and legacy_senet154's (115M parameters each) docs/family_coverage.md's."""
    r = family_coverage.run_one("timm:legacy_seresnet34", 64, isolated=False)
    assert r["status"] == "parity" and r["max_rel"] <= 1e-6, r


def _state_dict(tmp_path, model) -> str:
    import torch

    path = tmp_path / "m.pth"  # randomized: no zero-initialised last BN hides a branch from the proof
    state = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items() if v.is_floating_point()})
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, str(path))
    return str(path)


def test_state_dict_import_infers_the_widths(tmp_path):
    """Names and shapes alone: reduce_first and the projection kernel (a SENet-like timm ResNet), the
    end_relu SE of the legacy layout's basic blocks, per-block widths of a pruned ECA-ResNet-D."""
    pytest.importorskip("timm")
    import torch
    from timm.models import _prune, resnet, senet

    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    torch.manual_seed(0)
    senet_like = resnet.ResNet(resnet.Bottleneck, [1, 2, 1, 1], channels=(8, 16, 32, 32), num_classes=10, cardinality=4,
                               base_width=16, stem_type="deep", stem_width=8, down_kernel_size=3,
                               block_reduce_first=2, block_args={"attn_layer": "se"})
    src, _, net, full, weights = import_source(_state_dict(tmp_path, senet_like), "m", 32)
    assert full["block"]["reduce_first"] == 2 and full["shortcut"]["kernel"] == 3
    assert list(net.all_ops()) == list(resnet_spec.load(SENET_LIKE).all_ops())
    cmp = prove(src, net, full, weights, isolated=False)  # in timm's ResNet: block_reduce_first, down_kernel_size
    assert cmp["passed"] and "ResNet class" in cmp["source"], cmp
    legacy = senet.SENet(senet.SEResNetBlock, [1, 1, 1, 1], groups=1, reduction=16, num_classes=10)
    _, _, _, full, _ = import_source(_state_dict(tmp_path, legacy), "m", 32)
    assert full["block"]["se"]["placement"] == "end_relu"
    base = resnet.ResNet(resnet.Bottleneck, [2, 1, 1, 1], num_classes=5, stem_type="deep",
                         stem_width=8, avg_down=True, block_args={"attn_layer": "eca"})
    pruned = _prune.adapt_model_from_string(base, _pruned_string(base, ROWS))
    _, _, net, full, _ = import_source(_state_dict(tmp_path, pruned), "m", 32)
    assert [s["widths"] for s in full["stages"]] == [[list(r) for r in s] for s in ROWS]
    assert [op.kernel for op in net.all_ops() if isinstance(op, ir.ECA)] == [5, 5, 5, 5, 7]


@pytest.mark.slow  # one CLI import with its proof
def test_cli_import_of_the_pruned_model(tmp_path):
    res = CliRunner().invoke(main, ["import", "timm:ecaresnet50d_pruned", "--input-size", "64",
                                    "-o", str(tmp_path / "o")])
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    assert "extends: ecaresnet50d_pruned" in (tmp_path / "o" / "ecaresnet50d_pruned.yaml").read_text()
