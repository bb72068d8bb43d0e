"""The ResNet family beyond torchvision's: timm's resnet.py, resnetv2.py, senet.py, tresnet.py.

A model built of a block the spec language cannot express is refused in one ``error:`` line naming that
block and where it first occurs (backends/torch/blocks.py's table), recognised from the library's module
types or, for a bare state dict, from tensor names and shapes; never a traceback, whatever the names and
shapes. timm's ResNetV2 (BatchNorm) and legacy SE-ResNet/ResNeXt bottlenecks import under their own
names (backends/torch/names.py), proven with randomized weights (every BN statistic and affine parameter
redrawn: timm zero-initialises the last BN of each block, which would hide a missing op).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error as _one_line_error

from resnet_spec.cli import main

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import family_coverage  # noqa: E402  (benchmarks/: the coverage run's worker is what the parity tests call)


def _cli(args):
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


# --- one-line refusals of timm: models, naming the block -------------------------------------------

REFUSED = [
    ("tresnet_m", ["space-to-depth stem (body.s2d)", "LeakyReLU activations (body.conv1.bn.act)"]),
]


@pytest.mark.parametrize("name,needles", REFUSED, ids=[r[0] for r in REFUSED])
def test_timm_model_refused_naming_the_block(tmp_path, name, needles):
    out = tmp_path / "out"
    _one_line_error(*_cli(["import", f"timm:{name}", "--input-size", "64", "-o", str(out)]),
                    f"timm:{name} uses ", "cannot express yet", *needles)
    assert not out.exists()


def test_convert_with_unsupported_weights_is_one_line(tmp_path):
    """`convert --weights timm:NAME` reads the library model the same way: the same refusal."""
    _one_line_error(*_cli(["convert", "resnet50", "--weights", "timm:tresnet_m", "--to", "torch",
                           "-o", str(tmp_path / "o")]), "timm:tresnet_m uses", "space-to-depth stem")


# --- bare state dicts: the blocks their names and shapes show ----------------------------------------

def _state_dict_file(tmp_path, name: str) -> str:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}
    path = tmp_path / f"{name}.pth"
    torch.save(state, str(path))
    return str(path)


STATE_DICTS = [
    ("resnet50_gn", "GroupNorm or another normalization without running statistics (a state dict cannot tell "
                    "which) (tensor 'bn1.weight')"),
    ("tresnet_m", "TResNet space-to-depth stem (tensor 'body.conv1.conv.weight')"),
    ("resnetv2_50d_frn", "Filter Response Normalization (a state dict cannot tell its variant and epsilon: "
                         "import timm:NAME, or pass the file as --weights to a spec) (tensor 'stem.norm1.tau')"),
]


@pytest.mark.parametrize("name,needle", STATE_DICTS, ids=[r[0] for r in STATE_DICTS])
def test_state_dict_refused_naming_the_block(tmp_path, name, needle):
    path = _state_dict_file(tmp_path, name)
    _one_line_error(*_cli(["import", path, "-o", str(tmp_path / "out")]), f"{path} uses ", needle,
                    "cannot express yet")


def _resnet18_state():
    with torch.device("meta"):
        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return {k: torch.zeros(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}


def _renamed(state, old, new):
    return {k.replace(old, new, 1) if k.startswith(old) else k: v for k, v in state.items()}


def _reshaped(state, key, shape):
    return {**state, key: torch.zeros(shape)}


ODD_STATE_DICTS = {  # names and shapes no ResNet has: each a one-line refusal naming what does not fit
    "tresnet names": lambda s: {f"body.{k}": v for k, v in s.items()},
    "downsample outside a stage": lambda s: _renamed(s, "layer2.0.downsample", "body.layer2.0.downsample"),
    "stage without a number": lambda s: _renamed(s, "layer3", "layerx"),
    "2-D stem conv": lambda s: _reshaped(s, "conv1.weight", (64, 147)),
    "4-D classifier": lambda s: _reshaped(s, "fc.weight", (10, 512, 1, 1)),
    "empty conv": lambda s: _reshaped(s, "layer1.0.conv1.weight", (0, 64, 3, 3)),
    "non-square conv": lambda s: _reshaped(s, "layer1.0.conv2.weight", (64, 64, 3, 1)),
    "block without conv1": lambda s: {k: v for k, v in s.items() if not k.startswith("layer1.0.conv1")},
    "scalar weight": lambda s: _reshaped(s, "layer1.0.bn1.weight", ()),
}


@pytest.mark.parametrize("case", sorted(ODD_STATE_DICTS))
def test_state_dict_with_unexpected_names_or_shapes_is_one_line(tmp_path, case):
    path = tmp_path / "odd.pth"
    torch.save(ODD_STATE_DICTS[case](_resnet18_state()), str(path))
    _one_line_error(*_cli(["import", str(path), "-o", str(tmp_path / "out")]), str(path))


def test_shortcut_pool_fact_ignores_names_outside_the_layout():
    """The library reader's facts: an average pool at a name that is no ``layer<N>.<M>.downsample.0``
    (TResNet's ``body.layer2.0.downsample.0``) is not parsed for a stage number."""
    from resnet_spec.backends.torch.reader import _add_facts
    from resnet_spec.importers.source import Source

    src = Source("m", "timm", {}, {})
    _add_facts(src, {"body.layer2.0.downsample.0": torch.nn.AvgPool2d(2), "layer2.0.downsample.0":
                     torch.nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)})
    assert src.facts["shortcut_pool_strides"] == {1: 2}


def test_recognition_is_one_table():
    """Every row names its block and has a way to recognise it; module and tensor recognition read it."""
    from resnet_spec.backends.torch import blocks

    for row in blocks.UNSUPPORTED:
        assert row.name and (row.modules or row.tensors), row
    with torch.device("meta"):
        found = blocks.recognise_modules(timm.create_model("resnetv2_50d_evos", norm_layer="evonorms0a"))
    assert found == [("EvoNorm other than EvoNorm-S0 (EvoNorm2dS0a)", "stem.norm1")]
    assert blocks.recognise_modules(timm.create_model("resnet18")) == []


# --- imported with parity, randomized weights ---------------------------------------------------------

def test_randomized_weights_leave_no_identity_tensor():
    """The coverage run's weights: timm zero-initialises every block's last BN gamma; none survives."""
    from resnet_spec.importers import read_source

    src = read_source("timm:resnet18")
    assert not src.weights["layer1.0.bn2.weight"].any()  # what a fresh timm model hides
    w = family_coverage.randomized(src.weights)
    assert set(w) == set(src.weights)
    for name, arr in w.items():
        assert arr.std() > 0.01 or arr.size == 1, name
        if name.endswith("running_var"):
            assert (arr > 0).all()


@pytest.mark.parametrize("name", ["resnetv2_50", "resnetv2_18d", "legacy_seresnext26_32x4d"])
def test_import_with_randomized_weights(name):
    """ResNetV2 (7x7 stem; deep stem with average-pool shortcuts, basic blocks) and the legacy SENet
    layout: the coverage run's worker (randomized weights, the proof in this process) finds parity."""
    r = family_coverage.run_one(f"timm:{name}", 32, isolated=False)
    assert r["status"] == "parity", r
    assert r["max_rel"] < 1e-5


def test_resnetv2_50_is_the_zoo_entry():
    """timm:resnetv2_50 infers `extends: resnetv2_50`; the zoo entry has timm's parameter count."""
    import resnet_spec
    from resnet_spec.importers import import_source

    _, text, net, _, _ = import_source("timm:resnetv2_50", input_size=32)
    assert "extends: resnetv2_50\n" in text
    model = timm.create_model("resnetv2_50", pretrained=False)
    assert net.params == resnet_spec.load("resnetv2_50").params == sum(p.numel() for p in model.parameters())


def test_resnetv2_state_dict_proven_in_timm_resnetv2(tmp_path):
    """A bare ResNetV2-D state dict (randomized BN): names mapped, the deep stem's average-pool shortcut
    assumed (and said), and proven in timm's ResNetV2 class built from the inferred spec."""
    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    model = timm.create_model("resnetv2_18d", pretrained=False, num_classes=10)
    g = torch.Generator().manual_seed(0)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k, v in state.items():
        if k.endswith(("running_var", ".weight")) and v.ndim == 1:
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith(("running_mean", ".bias")):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    path = tmp_path / "v2.pth"
    torch.save(state, str(path))
    src, _, net, full, weights = import_source(str(path), "m", 32)
    assert any("names of timm ResNetV2" in n and "average-pool projection shortcut assumed" in n
               for n in src.notes), src.notes
    cmp = prove(src, net, full, weights, isolated=False)
    assert cmp["passed"] and "ResNetV2 class" in cmp["source"], cmp
    import resnet_spec

    built = resnet_spec.build(net, "torch", weights=weights)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with torch.inference_mode():
        ref, got = model.eval()(x), built(x)
    assert (ref - got).abs().max() <= 1e-5 * ref.abs().max()
    # --weights reads the same file for that spec (names renamed; the average-pool projection from the spec)
    again = resnet_spec.load_weights(net, str(path))
    assert set(again) == set(weights) and all(np.array_equal(again[k], weights[k]) for k in weights)


def test_legacy_senet_state_dict_proven_in_timm_resnet(tmp_path):
    """A bare legacy SE-ResNeXt state dict: its names are read as torchvision's, and the proof runs the
    inferred spec in timm's ResNet class (canonical names there, not the legacy ones)."""
    from resnet_spec.importers import import_source
    from resnet_spec.importers.run import prove

    with torch.device("meta"):
        shapes = timm.create_model("legacy_seresnext26_32x4d", pretrained=False, num_classes=10).state_dict()
    rng = np.random.default_rng(0)
    state = {k: torch.from_numpy(rng.uniform(0.5, 1.5, v.shape).astype(np.float32) if k.endswith("running_var")
                                 else rng.normal(0, 0.05, v.shape).astype(np.float32))
             for k, v in shapes.items() if v.is_floating_point()}
    path = tmp_path / "legacy.pth"
    torch.save(state, str(path))
    src, text, net, full, weights = import_source(str(path), "m", 32)
    assert any("names of timm legacy SENet" in n for n in src.notes), src.notes
    assert src.layers["layer1.0.se.fc1"].origin == "layer1.0.se_module.fc1.weight"
    cmp = prove(src, net, full, weights, isolated=False)
    assert cmp["passed"] and "ResNet class" in cmp["source"], cmp
    import resnet_spec

    again = resnet_spec.load_weights(net, str(path))  # --weights reads the legacy names too
    assert set(again) == set(weights) and all(np.array_equal(again[k], weights[k]) for k in weights)


def test_coverage_report_lists_refusals():
    class Args:
        input_size, limit, timeout = 64, 2, 600.0

    results = {"timm-senet": [("timm:legacy_seresnet50", {"status": "parity", "max_rel": 0.0, "seconds": 1.0}),
                              ("timm:legacy_seresnet18", {"status": "refused", "seconds": 1.0, "message":
                                                          "timm:legacy_seresnet18 uses X (layer1.0), which ..."})]}
    text = family_coverage.report(results, Args, 60.0)
    assert "| timm senet.py (legacy SENet) | 2 | 1 | 1 | 0 | — | — | — |" in text  # no ONNX route run
    assert "| `legacy_seresnet18` | refused | — | uses X (layer1.0), which ... |" in text
    assert "Imported with parity by every route: `legacy_seresnet50`." in text
    results["timm-senet"][0][1]["onnx"] = {"status": "parity failed", "max_rel": 0.5, "seconds": 1.0}
    text = family_coverage.report(results, Args, 60.0)
    assert "| timm senet.py (legacy SENet) | 2 | 1 | 1 | 0 | 0 | 0 | 1 |" in text
    assert "| `legacy_seresnet50` | parity | parity failed | max rel 0.5 |" in text
