"""The standalone PyTorch source (``<name>.py``, backends/torch/source.py): it needs only torch and
safetensors, loads the canonical weights, and computes what the torch backend computes -- for every
zoo entry (in a fresh process), for random specs across the schema, and for stages whose blocks differ."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import resnet_spec  # noqa: E402
from resnet_spec.backends.torch import backend as tb  # noqa: E402
from resnet_spec.backends.torch.source import to_source  # noqa: E402
from resnet_spec.weights import init_weights, save_weights  # noqa: E402

from conftest import rel_err, small, tiny, tiny_zoo  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from strategies import specs  # noqa: E402


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["resnet20", "resnet50d", "seresnet50", "resnet50_caffe", "keras_resnet50v2",
                                  "preact_resnet164", "resnext50_32x4d"])
def test_standalone_source_is_exact(name, tmp_path):
    """The emitted .py needs no resnet_spec and reproduces the backend (the same ops: normally bit for bit;
    held to SOURCE_TOL)."""
    net = small(name)
    w = init_weights(net, seed=0, random_bn=True)
    path = tmp_path / f"m_{name}.py"
    path.write_text(to_source(net, weights_file=f"m_{name}.safetensors"))
    save_weights(w, str(tmp_path / f"m_{name}.safetensors"))
    src = path.read_text()
    assert "resnet_spec" not in src.split('"""', 2)[2]  # only the docstring mentions the generator
    mod = _import_file(str(path), f"m_{name}")
    model = mod.load_model().eval()
    ours = tb.build(net, w).eval()
    x = torch.randn(2, *net.input_shape)
    with torch.no_grad():
        a, b = ours(x).numpy(), model(x).numpy()  # a deep net with random BN may overflow: nan in both
        assert np.array_equal(a, b, equal_nan=True) or rel_err(a, b) <= SOURCE_TOL  # not torch.equal: SOURCE_TOL


#: max |emitted - backend| / max |backend| accepted where the emitted source runs in this process: the
#: two modules run the same ops and normally agree bit for bit, but under a loaded machine the CPU kernels
#: have been seen to differ in rounding between two calls; an emitter mistake (a shifted pad, a wrong
#: shortcut) moves the outputs by 1e-2 or more.
SOURCE_TOL = 1e-5


def _emitted_error(net, source, model, x) -> float:
    """Run ``source`` (the emitted .py) with ``model``'s weights on ``x``: max rel error to ``model``."""
    import types

    mod = types.ModuleType("emitted")
    mod.__file__ = "<emitted>"
    exec(compile(source, f"<emitted {net.name}.py>", "exec"), mod.__dict__)  # noqa: S102 (our own output)
    from resnet_spec.backends.torch.source import class_name

    emitted = getattr(mod, class_name(net.name))()
    missing, unexpected = emitted.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    with torch.no_grad():
        return rel_err(model.eval()(x).numpy(), emitted.eval()(x).numpy())


@pytest.mark.slow  # a property sweep: 60 random specs, each built, emitted and run
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=specs())
def test_standalone_source_matches_random_specs(doc):
    """The emitter reads every block from the IR; random specs across every schema option check that
    each combination reproduces the backend to float32 rounding."""
    import yaml

    try:
        net = resnet_spec.load(yaml.safe_dump(doc, sort_keys=False))
    except resnet_spec.SpecError:
        return  # combinations the semantic rules refuse are covered by test_errors.py
    model = tb.build(net, init_weights(net, seed=0, random_bn=True)).eval()
    x = torch.randn(2, *net.input_shape, generator=torch.Generator().manual_seed(0))
    assert _emitted_error(net, to_source(net, weights_file="w.safetensors"), model, x) <= SOURCE_TOL


def test_standalone_source_odd_option_a_pads():
    """Regression: channel steps of 1 then 6 under 'split' padding (0 zeros first, then 3): the emitter
    once guessed the padding policy from the first step alone and padded the second at the end."""
    net = resnet_spec.load("""
name: odd_pads
input: {size: 16}
stem: {type: conv, channels: 5, kernel: 3, stride: 1, pool: null}
block: {type: basic}
shortcut: {type: A, zero_pad: split}
stages: [{blocks: 1, channels: 5}, {blocks: 1, channels: 6}, {blocks: 1, channels: 12}]
head: {classes: 3}
""")
    assert [(op.before, op.after) for b in net.blocks for op in b.shortcut if hasattr(op, "before")] == [(0, 1), (3, 3)]
    model = tb.build(net, init_weights(net, seed=0, random_bn=True)).eval()
    assert _emitted_error(net, to_source(net), model, torch.randn(2, *net.input_shape)) <= SOURCE_TOL


MIXED_STAGE = """
extends: resnet50
name: mixed_stage
input: {size: 64}
block: {type: bottleneck, stride_block: last, drop_path_rate: 0.2}
shortcut: {type: B, strided_identity: true}
stages: [{blocks: 2, channels: 16, stride: 1}, {blocks: 3, channels: 32, stride: 2}]
head: {classes: 7}
"""
# Dilated stages (DeepLab-style output stride 8): a stage's first block keeps the previous dilation,
# the others take the new one; with the ResNet-D avgpool shortcut and squeeze-excite.
DILATED = """
extends: seresnet50
name: dilated_stage
input: {size: 48}
stages: [{blocks: 2, channels: 16}, {blocks: 2, channels: 32}, {blocks: 3, channels: 32, dilate: true},
         {blocks: 2, channels: 64, dilate: true}]
head: {classes: 5}
"""


@pytest.mark.parametrize("text", [MIXED_STAGE, DILATED], ids=["mixed_stage", "dilated_stage"])
def test_standalone_source_blocks_differ_within_a_stage(text, tmp_path):
    """Stages whose blocks differ (mixed_stage: a projection, an identity and a strided identity that
    carries the stage's stride on its last block, per-block drop-path rates; dilated_stage: the first
    block's dilation differs from the rest): the .py reads each block from the IR and computes what the
    torch backend and ONNX Runtime compute on the same weights."""
    onnx_backend = pytest.importorskip("resnet_spec.backends.onnx.backend")
    pytest.importorskip("onnxruntime")
    net = resnet_spec.load(text)
    stages = {}
    for b in net.blocks:
        stages.setdefault(b.stage, []).append((b.shortcut_kind, b.stride_index, [c.dilation for c in b.convs]))
    if net.name == "mixed_stage":
        assert [k for k, _, _ in stages[1]] == ["projection", "identity", "option_a"]
        assert [s for _, s, _ in stages[1]] == [None, None, 1]
    else:
        assert [[d[1] for _, _, d in stages[s]] for s in (2, 3)] == [[1, 2, 2], [2, 4]]
    w = init_weights(net, seed=0, random_bn=True)
    path = tmp_path / f"{net.name}.py"
    path.write_text(to_source(net, weights_file=f"{net.name}.safetensors"))
    save_weights(w, str(tmp_path / f"{net.name}.safetensors"))
    model = _import_file(str(path), net.name).load_model().eval()
    x = torch.randn(2, *net.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emitted, backend = model(x), tb.build(net, w).eval()(x)
    same = 0.0 if np.array_equal(backend.numpy(), emitted.numpy(), equal_nan=True) else rel_err(backend.numpy(),
                                                                                                  emitted.numpy())
    assert same <= SOURCE_TOL  # normally 0 (the same ops); not torch.equal: see SOURCE_TOL
    onnx = onnx_backend.infer(net, w, x.numpy())[0]["head"]
    err = rel_err(onnx, emitted.numpy())
    print(f"{net.name}: .py vs torch backend: max rel {same:.3g}; .py vs ONNX Runtime: max rel {err:.3g}")
    assert err <= 1e-4


# Runs in a fresh interpreter: loads each emitted .py by path, runs it on the saved input, saves the
# logits; fails if anything imported resnet_spec (the file must stand alone).
_RUN_EMITTED = """
import importlib.util, sys
import numpy as np, torch
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("emitted", path + ".py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with torch.no_grad():
        y = mod.load_model(path + ".safetensors")(torch.from_numpy(np.load(path + ".x.npy")))
    np.save(path + ".y.npy", y.numpy())
    del mod, y
assert not [m for m in sys.modules if m.startswith("resnet_spec")], "the emitted source imported resnet_spec"
"""


def _emitted_vs_backend(nets: dict, tmp_path, edits=None) -> dict:
    """Write each net's .py (changed by ``edits[name]``, if any) and seeded weights, run them all in one
    fresh process, and return ``{name: max rel error of its logits to the torch backend's}``."""
    import subprocess
    import sys

    expected = {}
    for name, net in nets.items():
        w = init_weights(net, seed=0, random_bn=True)
        base = str(tmp_path / name)
        with open(base + ".py", "w") as f:
            f.write((edits or {}).get(name, str)(to_source(net, weights_file=name + ".safetensors")))
        save_weights(w, base + ".safetensors")
        x = torch.randn(2, *net.input_shape, generator=torch.Generator().manual_seed(0))
        np.save(base + ".x.npy", x.numpy())
        with torch.no_grad():
            expected[name] = tb.build(net, w)(x).numpy()
    subprocess.run([sys.executable, "-c", _RUN_EMITTED, *(str(tmp_path / n) for n in nets)], check=True,
                   cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    return {n: rel_err(expected[n], np.load(str(tmp_path / n) + ".y.npy")) for n in nets}


@pytest.mark.slow
def test_standalone_source_whole_zoo(tmp_path):
    """Every zoo entry's .py, loaded in a fresh process with the weights file beside it, computes the
    torch backend's logits (the guard that convert once ran on each file it wrote). Each entry's ops and
    wiring at two blocks per stage (conftest.tiny); two whole entries (basic and pre-activation
    bottleneck, 110 and 164 layers) for the stage loops at depth."""
    nets = {n: tiny(n) for n in tiny_zoo()}  # each distinct network at tiny depth once
    errors = _emitted_vs_backend({**nets, **{f"{n}_full": small(n) for n in ("resnet110", "preact_resnet164")}},
                                 tmp_path)
    for name, err in errors.items():
        print(f"{name}: .py vs torch backend max rel {err:.3g}")
    assert max(errors.values()) <= SOURCE_TOL


def test_standalone_source_check_catches_a_wrong_emission(tmp_path):
    """The zoo check fails for a wrong emission: the residual added with the wrong sign."""
    net = small("resnet20")
    errors = _emitted_vs_backend({"good": net, "bad": net}, tmp_path,
                                 {"bad": lambda src: src.replace("out = out + x", "out = out - x")})
    assert errors["good"] <= SOURCE_TOL < 1e-2 < errors["bad"]


def test_convert_writes_consistent_files(tmp_path):
    net = small("resnet18")
    w = init_weights(net, seed=0, random_bn=True)
    paths = tb.convert(net, w, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        [f"{net.name}.pt2", f"{net.name}.py", f"{net.name}.safetensors"])
    prog = torch.export.load(str(tmp_path / f"{net.name}.pt2"))
    mod = _import_file(str(tmp_path / f"{net.name}.py"), "converted_resnet18")
    model = mod.load_model().eval()
    x = torch.randn(5, *net.input_shape)  # the .pt2 has a dynamic batch
    with torch.no_grad():
        assert torch.allclose(prog.module()(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(resnet_spec.ResNetSpecError, match="exists"):
        tb.convert(net, w, str(tmp_path))
    tb.convert(net, w, str(tmp_path), force=True)
