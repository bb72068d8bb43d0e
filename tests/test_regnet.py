"""RegNetX / RegNetY: the generating parameters against timm's and torchvision's own code, the explicit stage
list, squeeze-excite after the 3x3 conv (an IR fact), the located rule errors, the name layouts, and the zoo
entries against the library models (parameters, MACs, outputs on the same randomized weights)."""

from __future__ import annotations

import pytest
import torch

import resnet_spec
from conftest import randomize_bn, rel_err
from resnet_spec import ir
from resnet_spec.regnet import generate

ZOO = {"regnetx_032": ("timm", "regnetx_032"), "regnety_032": ("timm", "regnety_032"),
       "regnet_x_3_2gf": ("torchvision", "regnet_x_3_2gf"), "regnet_y_3_2gf": ("torchvision", "regnet_y_3_2gf")}

# A tiny RegNetY: stages of 16, 24, 32 (two blocks), 56 channels (w0 16, wa 8, wm 1.5, depth 5), group width 8.
TINY_Y = """\
name: tiny_regnety
input: {size: 40}
stem: {type: conv, channels: 8, kernel: 3, stride: 2, pool: null}
block: {type: bottleneck, expansion: 1, se: {reduction: 4, divisor: null, reduce_from: input, placement: after_3x3}}
regnet: {w0: 16, wa: 8, wm: 1.5, depth: 5, group_width: 8}
head: {classes: 10}
"""


def _tv_params():
    """{torchvision builder name: its BlockParams}, read by calling each builder with ``_regnet`` replaced
    (no model is built)."""
    import torchvision.models.regnet as tv

    real, out = tv._regnet, {}
    try:
        tv._regnet = lambda params, weights, progress, **kw: params
        for name in tv.__all__:
            if name.startswith("regnet_"):
                out[name] = getattr(tv, name)()
    finally:
        tv._regnet = real
    return out


def _timm_stages(cfg):
    import timm.models.regnet as R

    widths, n, gs = R.generate_regnet(cfg.wa, cfg.w0, cfg.wm, cfg.depth, cfg.group_size)
    sw, depths = torch.unique(torch.tensor(widths), return_counts=True)
    sw, gs = R.adjust_widths_groups_comp(sw.tolist(), [cfg.bottle_ratio] * n, gs, min_ratio=cfg.group_min_ratio)
    return sw, depths.tolist(), gs


def test_generation_equals_timm_for_every_config():
    import timm.models.regnet as R

    for name, c in R.model_cfgs.items():
        mine = generate({"w0": c.w0, "wa": c.wa, "wm": c.wm, "depth": c.depth, "group_width": c.group_size,
                         "bottleneck_ratio": c.bottle_ratio, "group_min_ratio": c.group_min_ratio})
        widths, depths, groups = _timm_stages(c)
        assert [s["channels"] for s in mine] == widths, name
        assert [s["blocks"] for s in mine] == depths, name
        assert [s["group_width"] for s in mine] == groups, name


def test_generation_equals_torchvision_for_every_builder():
    import inspect

    import torchvision.models.regnet as tv

    for name, bp in _tv_params().items():
        kw = _init_kwargs(inspect.getsource(getattr(tv, name)))
        mine = generate({"w0": kw["w_0"], "wa": kw["w_a"], "wm": kw["w_m"], "depth": kw["depth"],
                         "group_width": kw["group_width"], "group_min_ratio": 0.9})
        assert [s["channels"] for s in mine] == bp.widths, name
        assert [s["blocks"] for s in mine] == bp.depths, name
        assert [s["group_width"] for s in mine] == bp.group_widths, name


def _init_kwargs(src: str) -> dict:
    """The keyword arguments a torchvision builder passes to BlockParams.from_init_params."""
    import ast

    call = next(n for n in ast.walk(ast.parse(src.strip())) if isinstance(n, ast.Call)
                and getattr(n.func, "attr", "") == "from_init_params")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}


def test_explicit_stage_list_is_the_same_network():
    gen = resnet_spec.load(TINY_Y)
    stages = "\n".join(f"  - {{blocks: {s['blocks']}, channels: {s['channels']}, stride: 2, group_width: 8}}"
                       for s in generate({"w0": 16, "wa": 8, "wm": 1.5, "depth": 5, "group_width": 8}))
    explicit = resnet_spec.load(TINY_Y.replace("regnet: {w0: 16, wa: 8, wm: 1.5, depth: 5, group_width: 8}",
                                               "stages:\n" + stages))
    assert [b.out_shape[0] for b in gen.blocks] == [16, 24, 32, 32, 56]
    assert gen.blocks == explicit.blocks and gen.tensors() == explicit.tensors()


def test_resolve_shows_the_generated_stages():
    from conftest import cli

    res = cli("resolve", "regnety_032")
    assert res.exit_code == 0, res.output
    assert "# stages generated from regnet {w0: 80, wa: 42.63, wm: 2.66, depth: 21, group_width: 24}" in res.output
    assert "group_width: 24" in res.output and "channels: 1512" in res.output
    again = resnet_spec.load(res.output)
    assert again.tensors() == resnet_spec.load("regnety_032").tensors()


def test_se_after_3x3_is_an_ir_fact():
    net = resnet_spec.load(TINY_Y)
    b = net.blocks[1]  # 16 -> 24 channels
    kinds = [type(op).__name__ for op in b.main]
    assert kinds == ["Conv", "BatchNorm", "ReLU", "Conv", "BatchNorm", "ReLU", "SqueezeExcite", "Conv", "BatchNorm"]
    se = b.main[6]
    assert (se.placement, se.reduce_from, se.base, se.channels, se.reduced) == ("after_3x3", "input", 16, 24, 4)
    assert se.reduced == ir.se_reduced(se.base, se.reduction, se.divisor)
    r50 = resnet_spec.load("extends: seresnet50\ninput: {size: 64}\n").blocks[0]
    assert r50.main[-1].placement == "end" and r50.main[-1].base == 256 and r50.main[-1].reduced == 16


def test_se_rounding_is_pythons_round():
    assert ir.se_reduced(10, 4, None) == 2 and ir.se_reduced(14, 4, None) == 4  # 2.5 -> 2, 3.5 -> 4
    assert ir.se_reduced(10, 4, 1) == 3


TINY = "name: t\ninput: {size: 32}\nstem: {channels: 8, kernel: 3, pool: null}\n"
BAD = [
    ("block: {type: basic, se: {placement: after_3x3}}\nstages: [{blocks: 1, channels: 8}]\n",
     "placement 'after_3x3' applies to bottleneck blocks only", ("block", "se", "placement")),
    ("block: {type: bottleneck, preact: true, se: {placement: after_3x3}}\nstages: [{blocks: 1, channels: 8}]\n",
     "not supported with pre-activation blocks", ("block", "se", "placement")),
    ("block: {type: bottleneck, anti_alias: avgpool, se: {placement: after_3x3}}\n"
     "stages: [{blocks: 1, channels: 8}]\n", "not supported with anti_alias", ("block", "se", "placement")),
    ("block: {type: basic}\nstages: [{blocks: 1, channels: 8, group_width: 4}]\n",
     "'group_width' applies to bottleneck blocks only", ("stages", 0, "group_width")),
    ("block: {type: bottleneck, groups: 4}\nstages: [{blocks: 1, channels: 8, group_width: 4}]\n",
     "'groups' and stages' group_width both set", ("block", "groups")),
    ("block: {type: bottleneck, expansion: 1}\nstages: [{blocks: 1, channels: 8}]\n"
     "regnet: {w0: 8, wa: 8, wm: 2, depth: 2, group_width: 8}\n", "give either 'regnet'", ("regnet",)),
    ("block: {type: bottleneck, expansion: 1}\nregnet: {w0: 12, wa: 8, wm: 2, depth: 2, group_width: 8}\n",
     "w0 12 is not a multiple of the quantization 8", ("regnet", "w0")),
    ("block: {type: bottleneck, expansion: 1}\nregnet: {w0: 8, wa: 8, wm: 1, depth: 2, group_width: 8}\n",
     "wm 1 must be more than 1", ("regnet", "wm")),
    ("block: {type: bottleneck, expansion: 1}\nregnet: {wa: 8, wm: 2, depth: 2, group_width: 8}\n",
     "missing required field 'w0'", ("regnet",)),
    # the generated blocks are RegNet's only with expansion 1 (a bottleneck's default 4 was 4x too wide)
    ("block: {type: bottleneck}\nregnet: {w0: 8, wa: 8, wm: 2, depth: 2, group_width: 8}\n",
     "expansion 1 (it has type 'bottleneck', expansion 4)", ("regnet",)),
    ("block: {type: basic}\nregnet: {w0: 8, wa: 8, wm: 2, depth: 2, group_width: 8}\n",
     "generates bottleneck blocks with expansion 1", ("regnet",)),
    # generated stages keep the bounds of a written stage list; no bottleneck channel is refused (was a
    # ZeroDivisionError traceback)
    ("block: {type: bottleneck, expansion: 1}\nregnet: {w0: 8, wa: 8, wm: 1.05, depth: 100, group_width: 8}\n",
     "generate 53 stages; a spec has at most 16", ("regnet",)),
    ("block: {type: bottleneck, expansion: 1}\nregnet: {w0: 8, wa: 8, wm: 2, depth: 2, group_width: 8, "
     "bottleneck_ratio: 0.05}\n", "leaves a 8-channel stage no bottleneck channel", ("regnet", "bottleneck_ratio")),
]


@pytest.mark.parametrize("extra,message,path", BAD, ids=[".".join(map(str, b[2])) + str(i) for i, b in enumerate(BAD)])
def test_rule_errors_are_located(extra, message, path):
    from resnet_spec.resolve import semantic_errors
    from resnet_spec.spec import load

    spec = load(TINY + extra)
    errors = semantic_errors(spec)
    assert len(errors) == 1, errors
    err = errors[0]
    assert message in str(err) and "\n" not in str(err), str(err)
    assert err.line is not None and err.line > len(TINY.splitlines()), (err.line, str(err))
    assert err.path[:len(path)] == path, err.path


def test_bad_group_width_is_a_located_resolve_error():
    from resnet_spec.resolve import semantic_errors
    from resnet_spec.spec import load

    spec = load(TINY + "block: {type: bottleneck, expansion: 1}\nstages: [{blocks: 1, channels: 24, group_width: 16}]\n")
    errors = semantic_errors(spec)
    assert len(errors) == 1 and "bottleneck width 24 is not a multiple of group_width 16" in str(errors[0])
    assert errors[0].line == 5


# -- name layouts --------------------------------------------------------------------------------------

def _tiny_library_models():
    """timm's and torchvision's RegNetY built at TINY_Y's parameters (the same stages and SE)."""
    import torchvision.models.regnet as tv
    from timm.models.regnet import RegNet, RegNetCfg

    timm_model = RegNet(RegNetCfg(w0=16, wa=8, wm=1.5, depth=5, group_size=8, se_ratio=0.25, stem_width=8),
                        num_classes=10)
    bp = tv.BlockParams.from_init_params(depth=5, w_0=16, w_a=8, w_m=1.5, group_width=8, se_ratio=0.25)
    tv_model = tv.RegNet(bp, num_classes=10, stem_width=8)
    return timm_model, tv_model


def _randomize(model, seed=0):
    """Every float tensor redrawn (timm zero-inits each block's last BN: that would hide a missing op)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if v.dtype.is_floating_point:
            v.copy_(torch.randn(v.shape, generator=g) * (0.3 if v.dim() == 1 else 0.1))
    randomize_bn(sd, seed)
    model.load_state_dict(sd)
    return model.eval()


@pytest.mark.parametrize("which", ["timm", "torchvision"])
def test_library_names_map_both_ways_and_compute_the_same(which):
    from resnet_spec.backends.torch import names as N

    model = _randomize(_tiny_library_models()[which == "torchvision"])
    sd = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    layout = N.layout_of(sd)
    assert layout.name == f"{which} RegNet"
    weights, names = N.canonical_weights(sd, layout)
    net = resnet_spec.load(TINY_Y)
    assert {t.name for t in net.tensors()} == set(weights)
    back = N.source_state(weights, names, {k: v.shape for k, v in sd.items()})
    assert set(back) == set(sd)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ours = resnet_spec.build(net, "torch", weights=weights)(x).numpy()
        assert rel_err(ours, model(x).numpy()) <= 1e-6


# -- the zoo entries against the libraries -------------------------------------------------------------

def _library_model(name):
    lib, model = ZOO[name]
    if lib == "timm":
        import timm

        return timm.create_model(model)
    import torchvision

    return getattr(torchvision.models, model)()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_counts_equal_the_library(name):
    from torch.utils.flop_counter import FlopCounterMode

    ref = _library_model(name).eval()
    net = resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\n")
    assert net.params == sum(p.numel() for p in ref.parameters())
    assert net.params == resnet_spec.load(name).params
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        ref(torch.zeros(1, 3, 64, 64))
    assert net.macs == counter.get_total_flops() // 2  # torch counts a multiply-add as two FLOPs


def _assert_same_outputs(net, weights, model, size: int) -> None:
    """The spec built with ``weights`` and the library ``model`` give the same logits (max rel <= 1e-6)."""
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert rel_err(resnet_spec.build(net, "torch", weights=weights)(x).numpy(), model(x).numpy()) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_entry_equals_the_library_model(name):
    from resnet_spec.backends.torch import names as N

    ref = _randomize(_library_model(name), seed=3)
    sd = {k: v.numpy() for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    weights, _ = N.canonical_weights(sd, N.layout_of(sd))
    _assert_same_outputs(resnet_spec.load(f"extends: {name}\ninput: {{size: 64}}\n"), weights, ref, 64)


# -- import ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("which", ["timm", "torchvision"])
def test_import_a_regnet_state_dict_with_parity(tmp_path, which):
    """A state dict in timm's or torchvision's RegNet names imports as the tiny RegNetY (expansion 1, group
    widths per stage, SE after the 3x3 conv from the block's input) and equals it on the same weights."""
    from conftest import cli

    model = _randomize(_tiny_library_models()[which == "torchvision"], seed=5)
    path = tmp_path / f"{which}.pth"
    torch.save(model.state_dict(), path)
    res = cli("import", path, "--input-size", 40, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    net = resnet_spec.load(next((tmp_path / "out").glob("*.yaml")).read_text())
    want = resnet_spec.load(TINY_Y)
    assert net.stem == want.stem and net.blocks == want.blocks and net.head == want.head
    assert "PASS" in res.output
    # the imported spec and weights against the saved model itself (the proof of a state dict builds the
    # library's class from the inferred spec; this one runs the model the file came from)
    weights = resnet_spec.load_weights(net, str(tmp_path / "out" / f"{net.name}.safetensors"))
    _assert_same_outputs(net, weights, model, 40)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["timm:regnetx_004", "torchvision:regnet_y_400mf"])
def test_import_library_regnet(tmp_path, source):
    from conftest import cli

    res = cli("import", source, "--input-size", 64, "-o", tmp_path)
    assert res.exit_code == 0 and "PASS: the generated model equals the source" in res.output, res.output


@pytest.mark.parametrize("which", ["timm", "torchvision"])
def test_weights_option_reads_library_regnet_names(tmp_path, which):
    """``--weights`` (weights.load) takes a checkpoint in either library's RegNet names."""
    model = _randomize(_tiny_library_models()[which == "torchvision"], seed=7)
    path = tmp_path / f"{which}.pth"
    torch.save(model.state_dict(), path)
    net = resnet_spec.load(TINY_Y)
    weights = resnet_spec.load_weights(net, str(path))
    assert set(weights) == {t.name for t in net.tensors()}
    _assert_same_outputs(net, weights, model, 40)


@pytest.mark.slow  # builds both 3.2 GF library models and tries the import's candidate specs
@pytest.mark.parametrize("lib,name", [("timm", "regnety_032"), ("torchvision", "regnet_y_3_2gf")])
def test_import_names_the_zoo_entry_of_its_own_library(lib, name):
    """timm's regnety_032 and torchvision's regnet_y_3_2gf are one network: each imports as ``extends:``
    its own library's zoo entry (the one whose reference it is), not the first entry in the zoo's order."""
    from resnet_spec.backends.torch.reader import read_library
    from resnet_spec.importers.infer import build_spec

    text, _, _ = build_spec(read_library(lib, name), "m", input_size=64)
    assert f"extends: {name}\n" in text, text


def test_generated_stage_bounds_are_the_schemas():
    from resnet_spec import regnet
    from resnet_spec.spec import schema

    stages = schema()["properties"]["stages"]
    assert regnet.MAX_STAGES == stages["maxItems"]
    assert regnet.MAX_CHANNELS == stages["items"]["properties"]["channels"]["maximum"]
