"""timm's anti-aliased ResNets (``aa_layer=nn.AvgPool2d``: resnetaa*, seresnetaa*, seresnextaa*) and
ResNet-RS (``replace_stem_pool``, SE at rd_ratio 1/4) as specs: the fields ``block.anti_alias`` and
``stem.pool.type`` ('avg', 'conv'), their rules, the IR ops they resolve to, and the networks against
timm's own modules with randomized weights (every BN statistic and affine parameter redrawn: timm
zero-initialises each block's last BN, which would hide a missing op).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import resnet_spec
from resnet_spec import ir
from resnet_spec.cli import main
from resnet_spec.errors import SpecError

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import family_coverage  # noqa: E402  (benchmarks/: the coverage run's randomized weights and worker)

TINY = """\
name: tiny
input: {size: 32}
stem: {channels: 8, kernel: 3, stride: 2}
block: {type: bottleneck}
stages:
- {blocks: 1, channels: 4}
- {blocks: 2, channels: 8}
head: {classes: 5}
"""


def _spec(extra: str) -> str:
    return TINY + extra


def _net(text: str) -> ir.Network:
    return resnet_spec.load(text)


# --- schema and rules: located one-line errors ------------------------------------------------------

BAD = [
    ("stem:\n  pool: {type: conv, ceil_mode: true}\n", "'ceil_mode' applies to max and avg stem pools only, "
     "not to type 'conv'", ("stem", "pool", "ceil_mode")),
    ("stem:\n  pool: {type: avg, pad_value: zero}\n", "'pad_value' applies to max stem pools only",
     ("stem", "pool", "pad_value")),
    ("stem:\n  pool: {count_include_pad: false}\n", "'count_include_pad' applies to avg stem pools only, "
     "not to type 'max'", ("stem", "pool", "count_include_pad")),
    ("block: {preact: true, anti_alias: avgpool}\n", "not supported with pre-activation",
     ("block", "anti_alias")),
    ("block: {stride_on: 1x1, anti_alias: avgpool}\n", "it needs stride_on: 3x3", ("block", "anti_alias")),
]


@pytest.mark.parametrize("extra,message,path", BAD, ids=[b[2][-1] + str(i) for i, b in enumerate(BAD)])
def test_rule_errors_are_located(extra, message, path):
    from resnet_spec.resolve import semantic_errors
    from resnet_spec.spec import load

    # the block/stem mapping written last wins in YAML: drop TINY's own line for that section
    base = "\n".join(ln for ln in TINY.splitlines() if not ln.startswith(extra.split(":")[0] + ":"))
    if extra.startswith("block"):
        extra = extra.replace("{", "{type: bottleneck, ", 1)
    spec = load(base + "\n" + extra)
    errors = semantic_errors(spec)
    assert len(errors) == 1, errors
    err = errors[0]
    assert message in str(err) and "\n" not in str(err)
    assert err.line is not None and err.line > len(base.splitlines()), (err.line, str(err))


@pytest.mark.parametrize("value", ["blurpc", "avg"])
def test_schema_refuses_other_anti_alias(value):
    with pytest.raises(SpecError) as exc:
        _net(TINY.replace("block: {type: bottleneck}", f"block: {{type: bottleneck, anti_alias: {value}}}"))
    assert f"block.anti_alias: '{value}' is not one of avgpool" in str(exc.value)
    assert "\n" not in str(exc.value).strip()


def test_schema_refuses_unknown_pool_type():
    with pytest.raises(SpecError) as exc:
        _net(TINY.replace("stride: 2}", "stride: 2, pool: {type: lp}}", 1))
    assert "stem.pool.type: 'lp' is not one of max, avg, conv" in str(exc.value)


# --- resolution: the IR ops and their explicit fields ------------------------------------------------

def test_anti_alias_moves_the_stride_to_an_average_pool_after_the_relu():
    net = _net(TINY.replace("block: {type: bottleneck}", "block: {type: bottleneck, anti_alias: avgpool}"))
    b = next(b for b in net.blocks if b.name == "layer2.0")
    kinds = [type(op).__name__ for op in b.main]
    assert kinds == ["Conv", "BatchNorm", "ReLU", "Conv", "BatchNorm", "ReLU", "Pool", "Conv", "BatchNorm"]
    conv2, pool = b.main[3], b.main[6]
    assert conv2.name == "layer2.0.conv2" and conv2.stride == 1
    assert (pool.name, pool.kind, pool.kernel, pool.stride, pool.padding, pool.ceil_mode,
            pool.count_include_pad) == ("layer2.0.aa", "avg", 2, 2, 0, False, True)
    assert pool.out_shape[1:] == b.out_shape[1:]
    # unstrided blocks get none
    assert not any(isinstance(op, ir.Pool) for blk in net.blocks if blk.name != "layer2.0" for op in blk.main)


def test_anti_alias_in_a_basic_block_follows_the_first_relu():
    text = TINY.replace("block: {type: bottleneck}", "block: {type: basic, anti_alias: avgpool}")
    b = next(b for b in _net(text).blocks if b.name == "layer2.0")
    assert [type(op).__name__ for op in b.main] == ["Conv", "BatchNorm", "ReLU", "Pool", "Conv", "BatchNorm"]
    assert b.main[0].stride == 1 and b.main[3].name == "layer2.0.aa"


def test_avg_stem_pool_and_conv_stem_pool():
    avg = _net(TINY.replace("stride: 2}", "stride: 2, pool: {type: avg, kernel: 2, stride: 2, padding: 0}}", 1))
    pool = avg.stem[-1]
    assert (pool.name, pool.kind, pool.kernel, pool.stride, pool.padding, pool.ceil_mode,
            pool.count_include_pad) == ("maxpool", "avg", 2, 2, 0, False, True)
    conv = _net(TINY.replace("stride: 2}", "stride: 2, pool: {type: conv}}", 1))
    ops = conv.stem[-3:]
    assert [type(op).__name__ for op in ops] == ["Conv", "BatchNorm", "ReLU"]
    assert (ops[0].name, ops[0].kernel, ops[0].stride, ops[0].padding, ops[0].in_channels, ops[0].out_channels,
            ops[0].bias) == ("maxpool.0", 3, 2, 1, 8, 8, False)
    assert ops[1].name == "maxpool.1"
    names = [t.name for t in conv.tensors()]
    assert names[names.index("bn1.running_var") + 1: names.index("bn1.running_var") + 3] == \
        ["maxpool.0.weight", "maxpool.1.weight"]


def test_resolved_output_shows_only_the_keys_of_the_pool_type(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("stride: 2}", "stride: 2, pool: {type: conv}}", 1).replace(
        "block: {type: bottleneck}", "block: {type: bottleneck, anti_alias: avgpool}"))
    res = CliRunner().invoke(main, ["resolve", str(path)])
    assert res.exit_code == 0, res.output
    pool = res.output.split("  pool:\n", 1)[1].split("block:", 1)[0]
    assert [ln.split(":")[0].strip() for ln in pool.splitlines()] == ["type", "kernel", "stride", "padding"]
    assert "anti_alias: avgpool" in res.output
    again = tmp_path / "r.yaml"
    again.write_text(res.output)
    assert list(resnet_spec.load(str(again)).all_ops()) == list(resnet_spec.load(str(path)).all_ops())


# --- ours vs timm's modules, randomized weights -----------------------------------------------------

def _against_timm(name: str, size: int, **kwargs) -> float:
    """Max relative difference of the zoo/inferred spec and timm's ``name`` carrying the same randomized
    weights (CPU float32)."""
    from resnet_spec.importers import read_source
    from resnet_spec.importers.infer import build_spec

    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    weights = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items()
                                          if not k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    zoo = f"{name}" if name in resnet_spec.spec.zoo_names() else None
    if zoo:
        net = resnet_spec.load(f"extends: {zoo}\ninput: {{size: {size}}}\n")
    else:
        _, net, _ = build_spec(read_source(f"timm:{name}", size), name, size)
    built = resnet_spec.build(net, "torch", weights=weights)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32))
    with torch.inference_mode():
        ref, got = model(x), built(x)
    return float((ref - got).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", ["resnetaa50d", "seresnetaa50d", "resnetrs50", "resnetaa34d"])
def test_equals_timm_with_randomized_weights(name):
    assert _against_timm(name, 64) <= 1e-6


def test_a_missing_anti_alias_pool_is_seen():
    """The randomized check is sharp: the spec without the aa pools differs from timm's model."""
    model = timm.create_model("resnetaa50d", pretrained=False).eval()
    weights = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items()
                                          if not k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    net = resnet_spec.load("extends: resnet50d\ninput: {size: 64}\nstem: {pool: {type: avg, kernel: 2, "
                           "stride: 2, padding: 0}}\n")
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32))
    with torch.inference_mode():
        ref, got = model(x), resnet_spec.build(net, "torch", weights=weights)(x)
    assert float((ref - got).abs().max() / ref.abs().max()) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnetaa50d", "resnetrs50"])
def test_zoo_entry_equals_timm_at_224(name):
    assert _against_timm(name, 224) <= 1e-6


@pytest.mark.parametrize("name", ["resnetaa50d", "resnetrs50"])
def test_zoo_entry_has_timms_parameter_count(name):
    model = timm.create_model(name, pretrained=False)
    net = resnet_spec.load(name)
    assert net.params == sum(p.numel() for p in model.parameters())
    assert resnet_spec.spec.load(name).data["reference"] == {"library": "timm", "model": name}


# --- import: by name (module types tell the fields) and from a bare state dict ------------------------

@pytest.mark.parametrize("name", ["resnetaa50d", "seresnetaa50d", "resnetrs50", "resnetaa34d"])
def test_import_by_name_with_parity(name):
    r = family_coverage.run_one(f"timm:{name}", 32, isolated=False)
    assert r["status"] == "parity", r
    assert r["max_rel"] < 1e-5


def test_import_infers_the_new_fields():
    from resnet_spec.importers import import_source

    _, text, _, full, _ = import_source("timm:resnetaa50d", input_size=32)
    assert full["block"]["anti_alias"] == "avgpool"
    assert full["stem"]["pool"] == {"type": "avg", "kernel": 2, "stride": 2, "padding": 0}
    _, text, _, full, _ = import_source("timm:resnetrs50", input_size=32)
    assert full["stem"]["pool"]["type"] == "conv" and full["block"]["se"] == {"reduction": 4, "divisor": 8}


def test_cli_import_resnetaa50d(tmp_path):
    res = CliRunner().invoke(main, ["import", "timm:resnetaa50d", "--input-size", "64", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output


def _state_dict_file(tmp_path, name: str) -> str:
    model = timm.create_model(name, pretrained=False, num_classes=10)
    state = {k: torch.from_numpy(v) for k, v in family_coverage.randomized(
        {k: v.numpy() for k, v in model.state_dict().items() if v.is_floating_point()}).items()}
    path = tmp_path / f"{name}.pth"
    torch.save(state, str(path))
    return str(path)


def test_resnetrs_state_dict_proven_in_timm(tmp_path):
    """A bare ResNet-RS state dict: maxpool.0 is the strided conv (3x3/2 assumed, and said), SE 1/4; the
    proof runs timm's ResNet class with replace_stem_pool."""
    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    src, _, net, full, weights = import_source(_state_dict_file(tmp_path, "resnetrs50"), "m", 32)
    assert full["stem"]["pool"] == {"type": "conv", "kernel": 3, "stride": 2, "padding": 1}
    assert any("ResNet-RS stem pool" in n for n in src.notes), src.notes
    cmp = prove(src, net, full, weights, isolated=False)
    assert cmp["passed"] and "ResNet class" in cmp["source"], cmp


def test_anti_alias_state_dict_says_what_it_cannot_show(tmp_path):
    """An average-pool aa holds no tensors: a state dict of resnetaa50d reads as resnet50d, and the
    import's notes say anti-aliasing pools were not assumed."""
    from resnet_spec.importers import import_source

    src, _, _, full, _ = import_source(_state_dict_file(tmp_path, "resnetaa50d"), "m", 32)
    assert "anti_alias" not in full["block"]
    assert any("anti-aliasing average pools" in n for n in src.notes), src.notes


def test_other_aa_and_stem_pools_still_refused():
    """A BlurPool other than timm's default (tests/test_blur.py) and an aa AvgPool2d other than timm's
    AvgPool2d(stride) stay refusals."""
    from resnet_spec.backends.torch import blocks

    with torch.device("meta"):
        model = timm.create_model("resnetblur18")
    assert blocks.recognise_modules(model) == []
    model.layer2[0].aa.pad_mode = "constant"
    found = blocks.recognise_modules(model)
    assert found and found[0][0].startswith("BlurPool2d anti-aliasing other than timm's default")
    with torch.device("meta"):
        model = timm.create_model("resnetaa50d")
    model.layer2[0].aa = torch.nn.AvgPool2d(3, 2, 1)
    assert blocks.recognise_modules(model) == [("anti-aliasing average pools other than timm's AvgPool2d(stride)",
                                                "layer2.0.aa")]
    assert blocks.recognise_modules(timm.create_model("resnetrs50")) == []
