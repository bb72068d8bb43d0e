"""A stage's own block type (``stages[i].block: {type, expansion}``: timm's per-stage block list, its test_resnet
of basic, basic, bottleneck, basic stages): the rules' located errors, the resolved IR, every backend against
torch on one tiny mixed spec (ONNX and the ``.py`` here; every parity leg and TFLite in the slow tier), and the
import of timm's test_resnet with randomized weights, its parameters and MACs timm's."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from conftest import cli, rel_err
from timm_checks import assert_one_located_error, emitted_source_error

import resnet_spec

# one basic stage, a bottleneck stage of two blocks (its identity block reads the 4x expansion), a basic stage
# narrowing it again through a projection; average-pool projections as timm's avg_down (test_resnet's)
TINY = """\
name: mixed
input: {size: 32}
stem: {type: deep, channels: [8, 8, 16]}
block: {type: basic}
shortcut: {projection: avgpool_conv}
head: {classes: 5}
stages:
- {blocks: 1, channels: 8}
- {blocks: 2, channels: 8, block: {type: bottleneck}}
- {blocks: 1, channels: 16}
"""


def test_each_stage_resolves_to_its_block_type():
    net = resnet_spec.load(TINY)
    assert [(b.name, b.kind) for b in net.blocks] == [("layer1.0", "basic"), ("layer2.0", "bottleneck"),
                                                      ("layer2.1", "bottleneck"), ("layer3.0", "basic")]
    assert [b.out_shape[0] for b in net.blocks] == [8, 32, 32, 16]  # a bottleneck stage's expansion is 4
    assert [len([op for op in b.main if op.__class__.__name__ == "Conv"]) for b in net.blocks] == [2, 3, 3, 2]
    assert net.blocks[2].shortcut_kind == "identity" and net.blocks[3].shortcut_kind == "avgpool_projection"


def test_stage_expansion_and_global_type_keys():
    """A stage keeping the global type keeps block.expansion; one of the other type takes its type's default
    unless it sets its own; the bottleneck keys of a basic network apply to its bottleneck stages."""
    text = TINY.replace("block: {type: basic}", "block: {type: basic, groups: 2, width_per_group: 32, expansion: 2}")
    net = resnet_spec.load(text)
    assert [b.out_shape[0] for b in net.blocks] == [16, 32, 32, 32]
    assert net.blocks[1].main[3].groups == 2 and net.blocks[1].main[3].out_channels == 8  # 8 * 32/64 * 2
    net = resnet_spec.load(text.replace("{type: bottleneck}", "{type: bottleneck, expansion: 2}"))
    assert [b.out_shape[0] for b in net.blocks] == [16, 16, 16, 32]


def test_resolved_form_names_the_stage_type_and_loads_to_the_same_network(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY)
    res = cli("resolve", path, "-o", tmp_path / "r.yaml")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r.yaml").read_text()
    assert "block: {expansion: 4, type: bottleneck}" in text and "width_per_group: 64" in text
    assert resnet_spec.load(str(tmp_path / "r.yaml")).blocks == resnet_spec.load(TINY).blocks


BAD = [  # (what the last line sets, the message, where)
    ("block: {type: bottleneck, avd: after_3x3}\nstages:\n- {blocks: 1, channels: 8}\n"
     "- {blocks: 1, channels: 8, block: {type: basic}}",
     "a basic stage cannot take block.avd, which applies to bottleneck blocks only", ("stages", 1, "block", "type")),
    ("block: {type: bottleneck, spatial: {type: res2net}}\nstages:\n- {blocks: 1, channels: 8}\n"
     "- {blocks: 1, channels: 8, block: {type: basic}}",
     "a basic stage cannot take block.spatial type 'res2net'", ("stages", 1, "block", "type")),
    ("block: {type: basic, stride_on: 1x1, anti_alias: avgpool}\nstages:\n- {blocks: 1, channels: 8}\n"
     "- {blocks: 1, channels: 8, block: {type: bottleneck}}",
     "a bottleneck stage cannot take block.anti_alias with block.stride_on: 1x1", ("stages", 1, "block", "type")),
    ("depth: 20\nblock: {type: basic}\nstages:\n- {channels: 8}\n- {channels: 8, block: {type: bottleneck}}",
     "per-stage block types need per-stage 'blocks', not a top-level 'depth'", ("stages", 1, "block")),
    ("block: {type: bottleneck}\nstages:\n- {blocks: 1, channels: 8}\n"
     "- {blocks: 1, channels: 8, width: 4, block: {type: basic}}",
     "'width' applies to bottleneck blocks only", ("stages", 1, "width")),
    ("block: {type: basic}\nstages:\n- {blocks: 1, channels: 8}\n"
     "- {blocks: 1, channels: 8, block: {type: bottleneck}, widths: [[4, 8]]}",
     "2 widths for a bottleneck block of 3 convs", ("stages", 1, "widths", 0)),
]


@pytest.mark.parametrize("tail,message,path", BAD, ids=[f"{b[2][-1]}{i}" for i, b in enumerate(BAD)])
def test_bad_combinations_are_located_errors(tail, message, path):
    assert_one_located_error("name: t\ninput: {size: 32}\n" + tail + "\n", message, path)


def test_cli_refuses_a_bad_stage_block_in_one_line(tmp_path):
    """A basic stage in a network whose global block section holds a bottleneck's avd pool: one line at the
    stage's block.type, exit 1; a misspelt stage type: the schema's error at it."""
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("block: {type: basic}", "block: {type: bottleneck, avd: after_3x3}")
                    .replace("channels: 16}", "channels: 16, block: {type: basic}}"))
    res = cli("validate", path)
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == [f"{path}:10:37: stages[2].block.type: a basic stage cannot take block.avd, which applies to "
                     "bottleneck blocks only"], lines
    path.write_text(TINY.replace("{type: bottleneck}", "{type: bottlenek}"))
    res = cli("validate", path)
    assert res.exit_code == 1 and f"{path}:9:36: stages[1].block.type: 'bottlenek' is not one of basic, " \
                                  "bottleneck" in res.output, res.output


# --- every backend against torch ----------------------------------------------------------------------

def test_onnx_and_the_py_source_match_torch():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.backends.torch.source import to_source
    from resnet_spec.weights.init import init_weights

    net = resnet_spec.load(TINY)
    weights = init_weights(net, 3, random_bn=True)
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    ref = torch_backend.infer(net, weights, x)[0]["head"]
    assert rel_err(ref, onnx_backend.infer(net, weights, x)[0]["head"]) <= 2e-6
    text = to_source(net)
    assert "class BasicBlockAvgPoolProjection(" in text and "class Bottleneck(" in text
    assert emitted_source_error(net) <= 1e-6


@pytest.mark.slow  # every leg in its worker, TensorFlow, JAX and Keras on torch included
def test_parity_over_every_leg(tmp_path):
    (tmp_path / "s.yaml").write_text(TINY)
    res = cli("parity", tmp_path / "s.yaml")
    assert res.exit_code == 0 and "PASS: 10/10 pairs" in res.output, res.output


@pytest.mark.slow  # TensorFlow's converter in a worker, LiteRT
def test_tflite_verify(tmp_path):
    if importlib.util.find_spec("tensorflow") is None:  # (never imported here: the workers run it)
        pytest.skip("needs tensorflow")
    (tmp_path / "s.yaml").write_text(TINY)
    res = cli("convert", tmp_path / "s.yaml", "--to", "tflite", "-o", tmp_path / "t")
    assert res.exit_code == 0, res.output
    res = cli("verify", tmp_path / "s.yaml", tmp_path / "t" / "mixed.tflite")
    assert res.exit_code == 0 and "PASS" in res.output, res.output


def test_diagram_names_each_stage_type():
    from resnet_spec import diagram

    kinds = [s["kind"] for s in diagram.stage_info(resnet_spec.load(TINY))]
    assert kinds == ["basic", "bottleneck", "basic"]


# --- timm's test_resnet ---------------------------------------------------------------------------------

def test_timm_test_resnet_imports_with_parity_and_timms_counts():
    """Imported by name with randomized weights (the coverage run's worker), each stage's type inferred from
    its tensors (a conv3: a bottleneck); the spec has timm's parameters and, at 64 px, its MACs."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from torch.utils.flop_counter import FlopCounterMode

    from resnet_spec import summary
    from resnet_spec.importers import import_source

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import family_coverage

    assert "timm:test_resnet" in family_coverage.FAMILIES["timm-resnet"][1]()
    r = family_coverage.run_one("timm:test_resnet", 64, isolated=False)
    assert r["status"] == "parity" and r["max_rel"] <= 1e-6, r
    _, text, net, full, _ = import_source("timm:test_resnet", input_size=64)
    assert [(s.get("block") or {}).get("type") for s in full["stages"]] == [None, None, "bottleneck", None]
    assert full["block"]["type"] == "basic"
    model = timm.create_model("test_resnet", pretrained=False).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert net.params == sum(p.numel() for p in model.parameters()) == 469_688
    assert net.macs == counter.get_total_flops() // 2
    rows = {r["name"]: r["params"] for r in summary.stage_rows(net)}  # `summary`'s per-stage counts
    for i in range(1, 5):
        assert rows[f"layer{i}"] == sum(p.numel() for p in getattr(model, f"layer{i}").parameters()), i


def test_state_dict_imports_and_is_proven_in_timms_per_stage_blocks(tmp_path):
    """A bare test_resnet state dict (randomized): each stage's type from its tensors, the proof in timm's
    ResNet class built with the per-stage block list."""
    torch = pytest.importorskip("torch")
    from timm_checks import timm_randomized

    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    _, weights = timm_randomized("test_resnet")
    path = tmp_path / "t.pth"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, str(path))
    src, _, net, full, w = import_source(str(path), "m", 32)
    assert [b.kind for b in net.blocks] == ["basic", "basic", "bottleneck", "basic"]
    cmp = prove(src, net, full, w, isolated=False)
    assert cmp["passed"] and "ResNet class" in cmp["source"], cmp


@pytest.mark.slow  # convert, then import through the ONNX reader with its proof
def test_onnx_import_reads_back(tmp_path):
    pytest.importorskip("onnx")
    (tmp_path / "s.yaml").write_text(TINY)
    res = cli("convert", tmp_path / "s.yaml", "--to", "onnx", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    res = cli("import", tmp_path / "o" / "mixed.onnx", "-o", tmp_path / "i")
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    back, net = resnet_spec.load(str(tmp_path / "i" / "mixed.yaml")), resnet_spec.load(TINY)
    assert [b.kind for b in back.blocks] == [b.kind for b in net.blocks] and back.params == net.params
