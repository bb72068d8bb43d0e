"""Spec core: zoo counts against the reference libraries, schema, defaults, CLI summary/validate/list."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import KERAS, TIMM, TORCHVISION
from counting import torch_counts

import resnet_spec
from resnet_spec import ir
from resnet_spec.cli import main
from resnet_spec.config import DEFAULTS
from resnet_spec.spec import schema, zoo_names

# The published figures; the tests below also ask the libraries themselves.
EXPECTED_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
    "keras_resnet50": 25_583_592, "keras_resnet101": 44_601_832, "keras_resnet152": 60_268_520,
    "keras_resnet50v2": 25_568_360, "keras_resnet101v2": 44_577_896, "keras_resnet152v2": 60_236_904,
}
EXPECTED_GMACS = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514}
# The papers quote these rounded (CIFAR ResNets: He et al. 2015 table 6; preact: He et al. 2016; WRN).
PAPER_MILLIONS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                  "resnet1202": 19.4, "preact_resnet164": 1.7, "preact_resnet1001": 10.2, "wrn_28_10": 36.5}


def test_zoo_is_complete():
    want = set(EXPECTED_PARAMS) | set(PAPER_MILLIONS) | set(TIMM) | {"resnet50_caffe"}
    assert want <= set(zoo_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_params_match_published(name):
    assert resnet_spec.load(name).params == EXPECTED_PARAMS[name]


# The 2016 paper counts conv/fc weights only (ResNet-1001: 10,178,490 without BN affine parameters,
# 10,327,706 with them); the 2015 paper includes them (ResNet-1202: 19.42M, 19.33M without).
PAPER_EXCLUDES_BN = {"preact_resnet1001"}


@pytest.mark.parametrize("name", sorted(PAPER_MILLIONS))
def test_params_match_papers(name):
    import math

    net = resnet_spec.load(name)
    count = net.params
    if name in PAPER_EXCLUDES_BN:
        count -= sum(math.prod(t.shape) for t in net.tensors() if t.trainable and ".bn" in "." + t.name)
    assert round(count / 1e6, 2 if PAPER_MILLIONS[name] < 1 else 1) == PAPER_MILLIONS[name]


@pytest.mark.parametrize("name", TORCHVISION)
def test_counts_match_torchvision(name):
    import torchvision

    ref = getattr(torchvision.models, name)()
    net = resnet_spec.load(name)
    assert torch_counts(ref) == {"params": net.params, "buffers": net.buffers}
    ref_names = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {t.name: t.shape for t in net.tensors()} == ref_names
    weights_enum = torchvision.models.get_model_weights(name)
    gflops = next(iter(weights_enum)).meta["_ops"]  # torchvision's own MAC count, in G
    assert round(net.macs / 1e9, 3) == pytest.approx(gflops, abs=0.0015)
    if name in EXPECTED_GMACS:
        assert round(net.macs / 1e9, 3) == EXPECTED_GMACS[name]


@pytest.mark.parametrize("name", TIMM)
def test_counts_match_timm(name):
    import timm

    ref = timm.create_model(name, pretrained=False)
    net = resnet_spec.load(name)
    assert torch_counts(ref)["params"] == net.params
    ref_names = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {t.name: t.shape for t in net.tensors()} == ref_names


# slow: the six keras.applications models built in a TensorFlow worker (conftest.KerasApps; a trainable
# parameter count does not depend on the input size)
@pytest.mark.slow
def test_counts_match_keras_applications(keras_apps):
    for ours, theirs in KERAS.items():
        assert resnet_spec.load(ours).params == keras_apps[theirs]["params"] == EXPECTED_PARAMS[ours], ours


def test_caffe_resnet50_structure():
    net = resnet_spec.load("resnet50_caffe")
    pool = net.stem[-1]
    assert (pool.kernel, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 0, True)
    assert pool.out_shape == (64, 56, 56)  # ceil mode: 112 -> 56 (floor would give 55)
    assert net.stem[0].bias and not any(op.bias for b in net.blocks for op in b.main if isinstance(op, ir.Conv))
    assert net.blocks[3].name == "layer2.0"
    first = [op for op in net.blocks[3].main if isinstance(op, ir.Conv)]
    assert [c.stride for c in first] == [2, 1, 1]  # stride on the first 1x1
    assert net.params == EXPECTED_PARAMS["resnet50"] + 64


def test_option_a_shortcut_structure():
    net = resnet_spec.load("resnet20")
    b = net.blocks[3]  # layer2.0: 16 -> 32 channels, stride 2
    assert b.name == "layer2.0"
    assert [type(op).__name__ for op in b.shortcut] == ["Subsample", "ChannelPad"]
    assert (b.shortcut[1].before, b.shortcut[1].after) == (8, 8)
    assert not any(isinstance(op, ir.Conv) for blk in net.blocks for op in blk.shortcut)


def test_keras_v2_structure():
    net = resnet_spec.load("keras_resnet50v2")
    names = [b.name for b in net.blocks if b.shortcut and isinstance(b.shortcut[0], ir.Subsample)]
    assert names == ["layer1.2", "layer2.3", "layer3.5"]  # stride on the last block, strided identity
    first = net.blocks[0]
    assert first.shortcut_from == "pre" and isinstance(first.shortcut[0], ir.Conv) and first.shortcut[0].bias
    assert not any(isinstance(op, ir.BatchNorm) for op in net.stem)
    assert isinstance(net.head[0], ir.BatchNorm) and net.head[0].name == "bn_final"


def test_dilation_matches_torchvision():
    import torchvision

    net = resnet_spec.load("extends: resnet50\nstages:\n  - {blocks: 3, channels: 64}\n"
                           "  - {blocks: 4, channels: 128, stride: 2}\n"
                           "  - {blocks: 6, channels: 256, stride: 2, dilate: true}\n"
                           "  - {blocks: 3, channels: 512, stride: 2, dilate: true}\n")
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    for op in (o for b in net.blocks for o in b.main if isinstance(o, ir.Conv)):
        m = ref.get_submodule(op.name)
        assert (m.stride[0], m.padding[0], m.dilation[0]) == (op.stride, op.padding, op.dilation), op.name
    assert net.blocks[-1].out_shape == (2048, 28, 28)


def test_schema_is_closed_and_documented():
    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" or (isinstance(node.get("type"), list) and "object" in node["type"]):
                assert node.get("additionalProperties") is False, path
            for key, sub in node.get("properties", {}).items():
                assert sub.get("description") and sub.get("examples"), f"{path}.{key}"
                walk(sub, f"{path}.{key}")
            if "items" in node:
                walk(node["items"], path + "[]")

    walk(schema(), "spec")


def test_schema_defaults_agree_with_resolver():
    props = schema()["properties"]
    for section in ("input", "norm", "block", "shortcut", "head", "init"):
        for key, sub in props[section]["properties"].items():
            if "default" in sub and key in DEFAULTS[section]:
                assert sub["default"] == DEFAULTS[section][key], f"{section}.{key}"
    for key in ("type", "channels", "kernel", "stride"):
        assert props["stem"]["properties"][key]["default"] == DEFAULTS["stem"][key]
    for key, sub in props["stem"]["properties"]["pool"]["properties"].items():
        assert sub["default"] == DEFAULTS["stem.pool"][key], key
    assert props["conv_bias"]["default"] == DEFAULTS["conv_bias"]


def test_extends_changes_one_field():
    r50, r101 = resnet_spec.load("resnet50"), resnet_spec.load("resnet101")
    assert len(r101.blocks) == 33 and r101.stem == r50.stem


def test_every_zoo_spec_is_short_and_documented():
    from resnet_spec.spec import load as load_spec, zoo_path

    for name in zoo_names():
        text = open(zoo_path(name)).read()
        assert len([ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]) <= 25, name
        assert load_spec(name).data.get("description"), name


def test_cli_summary_json():
    result = CliRunner().invoke(main, ["summary", "resnet50", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["params"] == 25_557_032 and info["macs"] == 4_089_184_256
    assert [s["name"] for s in info["stages"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(s["params"] for s in info["stages"]) == info["params"]
    assert info["stages"][-2]["output"] == [2048, 7, 7]


def test_cli_summary_imports_no_framework():
    code = ("import sys; from resnet_spec.cli import main\n"
            "try: main(['summary', 'resnet152'])\nexcept SystemExit: pass\n"
            "bad = [m for m in ('torch', 'tensorflow', 'onnx', 'onnxruntime', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_cli_list_and_validate_zoo():
    r = CliRunner().invoke(main, ["list"])
    assert r.exit_code == 0 and "resnet50 " in r.output and "torchvision" in r.output
    r = CliRunner().invoke(main, ["validate", *zoo_names()])
    assert r.exit_code == 0, r.output
    assert r.output.count(": ok") == len(zoo_names())


def test_user_spec_with_relative_extends(tmp_path):
    (tmp_path / "base.yaml").write_text("extends: resnet18\nhead: {classes: 10}\n")
    (tmp_path / "child.yaml").write_text("extends: ./base.yaml\ninput: {size: 64}\n")
    net = resnet_spec.load(str(tmp_path / "child.yaml"))
    assert net.name == "child" and net.num_classes == 10 and net.input_shape == (3, 64, 64)


def test_api_accepts_yaml_text():
    net = resnet_spec.load("block: {type: basic}\nstages: [{blocks: 1, channels: 8}]\ninput: {size: 32}\n")
    assert net.name == "model" and len(net.blocks) == 1


def test_spec_errors_keep_their_location_across_processes(tmp_path):
    """convert and parity run in worker processes; a located error must come back located."""
    import pickle

    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: resnet50\nblock: {grops: 2}\n")
    with pytest.raises(resnet_spec.SpecError) as info:
        resnet_spec.load(str(bad))
    back = pickle.loads(pickle.dumps(info.value))
    assert (back.file, back.line, back.col, back.path) == (str(bad), 2, 9, ("block", "grops"))
    assert str(back) == str(info.value) and type(back) is resnet_spec.SpecError


# -- typed config and semantic rules ----------------------------------------------------------------


def test_typed_configs_take_their_defaults_from_the_one_table():
    from resnet_spec.config import DEFAULTS as D, BlockConfig, HeadConfig, ShortcutConfig, StemConfig

    data = {"block": {"type": "bottleneck"}, "stages": [{"channels": 64, "blocks": 1}]}
    blk = BlockConfig.of(data)
    assert (blk.preact, blk.stride_on_1x1, blk.stride_last, blk.groups, blk.width_per_group, blk.se,
            blk.drop_path_rate) == (D["block"]["preact"], D["block"]["stride_on"] == "1x1",
                                    D["block"]["stride_block"] == "last", D["block"]["groups"],
                                    D["block"]["width_per_group"], D["block"]["se"], D["block"]["drop_path_rate"])
    sc = ShortcutConfig.of(data, preact=False)
    assert (sc.type, sc.projection, sc.strided_identity, sc.zero_pad) == tuple(
        D["shortcut"][k] for k in ("type", "projection", "strided_identity", "zero_pad"))
    assert (sc.pool_ceil_mode, sc.pool_count_include_pad) == tuple(D["shortcut.pool"].values())
    head = HeadConfig.of(data, preact=False)
    assert (head.classes, head.dropout, head.bias) == tuple(D["head"][k] for k in ("classes", "dropout", "bias"))
    stem = StemConfig.of(data, preact=False)
    assert (stem.kind, stem.channels, stem.kernel, stem.stride) == tuple(
        D["stem"][k] for k in ("type", "channels", "kernel", "stride"))
    assert stem.pool == D["stem.pool"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        blk.groups = 2


SEVERAL_ERRORS = """extends: resnet18
name: several
stem: {pool: {kernel: 3, padding: 2}}
block: {type: basic, groups: 2}
shortcut: {type: A, projection: conv}
"""


def test_semantic_errors_reports_every_rule_in_file_order(tmp_path):
    from resnet_spec.resolve import resolve, semantic_errors
    from resnet_spec.spec import load as load_spec

    path = tmp_path / "several.yaml"
    path.write_text(SEVERAL_ERRORS)
    spec = load_spec(str(path))
    errors = semantic_errors(spec)
    assert [e.line for e in errors] == [3, 4, 5], [str(e) for e in errors]
    assert "pool padding 2 is more than half the kernel 3" in errors[0].message
    assert "'groups' applies to bottleneck blocks only" in errors[1].message
    assert "type A shortcuts never project" in errors[2].message
    assert all(str(e).startswith(f"{path}:") for e in errors)
    with pytest.raises(resnet_spec.SpecError) as first:  # resolve() still raises one: the first rule's
        resolve(spec)
    assert str(first.value) in {str(e) for e in errors}


def test_semantic_errors_of_a_good_spec_and_a_build_error():
    from resnet_spec.resolve import semantic_errors
    from resnet_spec.spec import load as load_spec

    assert semantic_errors(load_spec("resnet50")) == []
    (err,) = semantic_errors(load_spec("extends: resnet50\ninput: {size: 4}\nstem: {padding: 0}\n"))
    assert "shrinks to nothing" in err.message
