"""Everyday workflows: fine-tuning heads, real checkpoint layouts, all errors at once, resolve/diff, pictures.

Checkpoints are made here from torchvision models (the external reference), never downloaded.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import resnet_spec
from resnet_spec.cli import main
from resnet_spec.errors import WeightsError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

R18_10 = "extends: resnet18\nname: r18_10\ninput: {size: 64}\nhead: {classes: 10}\n"
R18_64 = "extends: resnet18\nname: r18_64\ninput: {size: 64}\n"


@pytest.fixture(scope="module")
def tv18():
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    from conftest import randomize_bn

    randomize_bn(m.state_dict(), seed=1)
    return m


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


# -- new head -----------------------------------------------------------------------------------------

def test_new_head_loads_the_body_and_matches_torchvision(tv18, tmp_path):
    path = _save(tv18.state_dict(), tmp_path / "imagenet.pth")
    w = resnet_spec.load_weights(R18_10, path, new_head=True, seed=3)
    sd = tv18.state_dict()
    for k, v in w.items():
        if not k.startswith("fc."):
            np.testing.assert_array_equal(v, sd[k].numpy())
    assert w["fc.weight"].shape == (10, 512) and w["fc.bias"].shape == (10,)
    assert 0 < np.abs(w["fc.weight"]).max() <= 1 / np.sqrt(512)
    # the fine-tuning model our torch backend builds = torchvision's model with the same new fc
    ours = resnet_spec.build(R18_10, "torch", weights=w)
    ref = torchvision.models.resnet18(num_classes=10).eval()
    ref.load_state_dict({**{k: v for k, v in sd.items() if not k.startswith("fc.")},
                         "fc.weight": torch.from_numpy(w["fc.weight"]), "fc.bias": torch.from_numpy(w["fc.bias"])})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.eval()(x), ref(x)
    assert a.shape == (2, 10)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-5


def test_build_takes_new_head(tv18, tmp_path):
    path = _save(tv18.state_dict(), tmp_path / "imagenet.pth")
    model = resnet_spec.build(R18_10, "torch", weights=path, new_head=True)
    assert model.fc.weight.shape == (10, 512)
    np.testing.assert_array_equal(model.conv1.weight.detach().numpy(), tv18.conv1.weight.detach().numpy())


def test_without_new_head_the_refusal_names_the_option(tv18, tmp_path):
    path = _save(tv18.state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(WeightsError, match=r"only the classifier differs .*--new-head"):
        resnet_spec.load_weights(R18_10, path)
    spec = tmp_path / "r18_10.yaml"
    spec.write_text(R18_10)
    res = CliRunner().invoke(main, ["convert", str(spec), "--to", "onnx", "--weights", path, "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "--new-head" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_new_head_still_refuses_any_other_mismatch(tv18, tmp_path):
    sd = dict(tv18.state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = _save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight.*\(64, 64, 3, 3\)"):
        resnet_spec.load_weights(R18_10, path, new_head=True)
    r50 = _save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError, match="missing tensor|unexpected tensor|shape"):
        resnet_spec.load_weights(R18_10, r50, new_head=True)


def test_new_head_when_the_head_matches_is_a_noop_with_a_note(tv18, tmp_path):
    path = _save(tv18.state_dict(), tmp_path / "imagenet.pth")
    spec = tmp_path / "r18.yaml"
    spec.write_text(R18_64)
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["convert", str(spec), "--to", "onnx", "--weights", path, "--new-head", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "already matches the spec; --new-head changed nothing" in res.output
    from safetensors.numpy import load_file

    saved = load_file(str(out / "r18_64.safetensors"))
    np.testing.assert_array_equal(saved["fc.weight"], tv18.fc.weight.detach().numpy())


def test_new_head_needs_weights():
    res = CliRunner().invoke(main, ["convert", "resnet20", "--to", "onnx", "--new-head"])
    assert res.exit_code == 2 and "need --weights" in res.output


# -- checkpoint layouts --------------------------------------------------------------------------------

def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


@pytest.mark.parametrize("layout,note", [
    (lambda sd: {"state_dict": sd, "epoch": 3}, "under 'state_dict'"),
    (lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 90}, "under 'model'"),
    (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}}, "under 'model_state_dict'"),
    (lambda sd: {"module": sd}, "under 'module'"),
    (lambda sd: _prefixed(sd, "module."), "prefix 'module.'"),
    (lambda sd: _prefixed(sd, "_orig_mod."), "prefix '_orig_mod.'"),
    (lambda sd: {"model": _prefixed(sd, "module._orig_mod.")}, "prefix 'module._orig_mod.'"),
    (lambda sd: {"state_dict": _prefixed(sd, "model.")}, "prefix 'model.'"),
])
def test_checkpoint_layouts(tv18, tmp_path, layout, note):
    from resnet_spec.weights import load

    sd = tv18.state_dict()
    path = _save(layout(dict(sd)), tmp_path / "ckpt.pth")
    w, notes = load(resnet_spec.load(R18_64), path)
    assert any(note in n for n in notes), notes
    for k, v in w.items():
        np.testing.assert_array_equal(v, sd[k].numpy())


def test_real_wrappers_state_dicts(tv18, tmp_path):
    """The prefixes as torch itself makes them: DataParallel (as DDP) and torch.compile's wrapper."""
    from resnet_spec.weights import load

    net = resnet_spec.load(R18_64)
    for wrapped, prefix in [(torch.nn.DataParallel(tv18), "module."), (torch.compile(tv18), "_orig_mod."),
                            (torch.nn.DataParallel(torch.compile(tv18)), "module._orig_mod.")]:
        sd = wrapped.state_dict()
        assert next(iter(sd)).startswith(prefix)
        path = _save({"epoch": 1, "model_state_dict": sd}, tmp_path / "w.pth")
        w, notes = load(net, path)
        assert notes == ["took the weights under 'model_state_dict'",
                         f"stripped the prefix {prefix!r} from every name"]
        np.testing.assert_array_equal(w["layer4.1.bn2.running_var"], tv18.layer4[1].bn2.running_var.numpy())


def test_a_plain_state_dict_gives_no_note(tv18, tmp_path):
    from resnet_spec.weights import load

    path = _save(tv18.state_dict(), tmp_path / "plain.pth")
    assert load(resnet_spec.load(R18_64), path)[1] == []


def test_ema_and_weights_key(tv18, tmp_path):
    from resnet_spec.weights import LoadOptions, load

    sd = tv18.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = _save({"model": dict(sd), "model_ema": _prefixed(ema, "module.")}, tmp_path / "ckpt.pth")
    net = resnet_spec.load(R18_64)
    plain, _ = load(net, path)
    np.testing.assert_array_equal(plain["conv1.weight"], sd["conv1.weight"].numpy())
    got, notes = load(net, path, LoadOptions(ema=True))
    np.testing.assert_array_equal(got["conv1.weight"], ema["conv1.weight"].numpy())
    assert any("model_ema" in n for n in notes)
    got, _ = load(net, path, LoadOptions(key="model_ema"))
    np.testing.assert_array_equal(got["conv1.weight"], ema["conv1.weight"].numpy())
    with pytest.raises(WeightsError, match=r"no entry 'nope'; the file holds the keys 'model', 'model_ema'"):
        load(net, path, LoadOptions(key="nope"))
    only = _save({"model": dict(sd)}, tmp_path / "noema.pth")
    with pytest.raises(WeightsError, match="no EMA weights"):
        load(net, only, LoadOptions(ema=True))


def test_weights_key_on_the_command_line(tv18, tmp_path):
    path = _save({"weights": dict(tv18.state_dict()), "step": 5}, tmp_path / "odd.pth")
    spec = tmp_path / "r18.yaml"
    spec.write_text(R18_64)
    run = CliRunner().invoke
    res = run(main, ["convert", str(spec), "--to", "onnx", "--weights", path, "-o", str(tmp_path / "a")])
    assert res.exit_code == 1 and "--weights-key" in res.output and "'weights', 'step'" in res.output
    res = run(main, ["convert", str(spec), "--to", "onnx", "--weights", path, "--weights-key", "weights",
                     "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "took the weights under 'weights'" in res.output
    res = run(main, ["convert", str(spec), "--to", "onnx", "--weights", path, "--weights-key", "wieghts",
                     "-o", str(tmp_path / "c")])
    assert res.exit_code == 1 and "no entry 'wieghts'; the file holds the keys 'weights', 'step'" in res.output


def test_a_whole_pickled_model_is_refused_with_the_fix(tv18, tmp_path):
    path = _save(tv18, tmp_path / "whole.pt")
    with pytest.raises(WeightsError) as info:
        resnet_spec.load_weights(R18_64, path)
    msg = str(info.value)
    assert "torchvision.models.resnet.ResNet" in msg and "weights_only=True" in msg
    assert "torch.save(model.state_dict(), 'weights.pth')" in msg and "\n" not in msg


@pytest.mark.slow  # parity: a torch and an ONNX worker process
def test_parity_with_new_head(tv18, tmp_path):
    path = _save({"model": _prefixed(dict(tv18.state_dict()), "module.")}, tmp_path / "ckpt.pth")
    spec = tmp_path / "r18_10.yaml"
    spec.write_text(R18_10)
    res = CliRunner().invoke(main, ["parity", str(spec), "--backends", "torch,onnx", "--weights", path, "--new-head"])
    assert res.exit_code == 0, res.output
    assert "took the weights under 'model'" in res.output and "new classifier fc.weight (10, 512)" in res.output


# -- validate: every error at once, warnings --------------------------------------------------------

BAD = """extends: resnet50
name: bad
stem: {chanels: 32, kernal: 3}
block: {type: bottlenek, groups: 0}
head: {classes: -1}
input: {size: 0}
"""


def test_validate_reports_every_schema_error_in_file_order(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    want = ["3:8: stem.chanels: unknown key 'chanels'; did you mean 'channels'?",
            "3:21: stem.kernal: unknown key 'kernal'; did you mean 'kernel'?",
            "4:9: block.type: 'bottlenek' is not one of basic, bottleneck",
            "4:26: block.groups: 0 is out of range (must be >= 1)",
            "5:8: head.classes: -1 is out of range (must be >= 1)",
            "6:9: input.size: 0 is out of range (must be >= 1)"]
    assert lines == [f"{path}:{w}" for w in want]
    res = CliRunner().invoke(main, ["validate", "--max-errors", "2", str(path)])
    assert res.output.strip().splitlines()[2:] == [f"{path}: ... and 4 more errors (raise --max-errors)"]
    # other commands keep stopping at the first error
    res = CliRunner().invoke(main, ["summary", str(path)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1


def test_validate_reports_the_semantic_error_once_the_schema_passes(tmp_path):
    path = tmp_path / "sem.yaml"
    path.write_text("extends: resnet20\nname: sem\ndepth: 21\n")
    res = CliRunner().invoke(main, ["validate", str(path), "resnet18"])
    assert res.exit_code == 1
    assert f"{path}:3:1: depth: depth 21 is not of the form 6n+2" in res.output
    assert "resnet18: ok" in res.output


def test_extends_did_you_mean(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("extends: resnet_50\n")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and "did you mean 'resnet50'?" in res.output


@pytest.mark.parametrize("norm,fragment", [
    ("{momentum: 0.99}", "2:8: warning: norm.momentum 0.99 looks like the Keras convention"
                         " (weight of the old statistics); specs use PyTorch's (weight of the new batch): "
                         "Keras momentum 0.99 is torch momentum 0.01"),
    ("{eps: 0.001}", "2:8: warning: norm.eps 0.001 is Keras's BatchNormalization default"),
])
def test_gentle_warnings(tmp_path, norm, fragment):
    path = tmp_path / "w.yaml"
    path.write_text(f"extends: resnet20\nnorm: {norm}\n")
    for cmd in (["validate"], ["summary"]):
        res = CliRunner().invoke(main, [*cmd, str(path)])
        assert res.exit_code == 0 and f"{path}:{fragment}" in res.output, res.output


def test_no_warnings_for_the_zoo():
    res = CliRunner().invoke(main, ["validate", "resnet50", "keras_resnet50", "keras_resnet50v2", "resnet20"])
    assert res.exit_code == 0 and "warning" not in res.output


# -- resolve and diff --------------------------------------------------------------------------------

def _same_network(a, b):
    import dataclasses

    return dataclasses.replace(a, spec_yaml="") == dataclasses.replace(b, spec_yaml="")


@pytest.mark.parametrize("name", __import__("resnet_spec.spec", fromlist=["zoo_names"]).zoo_names())
def test_resolve_round_trips_for_every_zoo_entry(name, tmp_path):
    path = tmp_path / f"{name}_resolved.yaml"
    res = CliRunner().invoke(main, ["resolve", name, "-o", str(path)])
    assert res.exit_code == 0, res.output
    text = path.read_text()
    assert not [ln for ln in text.splitlines() if ln.startswith(("extends:", "depth:"))]
    again = resnet_spec.load(str(path))
    assert _same_network(again, resnet_spec.load(name))
    # resolving a resolved spec changes nothing but the provenance comments
    from resnet_spec.resolved import resolved_data
    from resnet_spec.spec import load as load_spec

    assert resolved_data(load_spec(str(path))) == resolved_data(load_spec(name))


def test_resolve_fills_defaults_and_names_origins(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("extends: resnet50\nname: mine\nhead: {classes: 10}\n")
    res = CliRunner().invoke(main, ["resolve", str(spec)])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    classes = next(ln for ln in lines if ln.strip().startswith("classes:"))
    assert classes.split("#")[0].strip() == "classes: 10" and classes.endswith("mine.yaml:3")
    eps = next(ln for ln in lines if ln.strip().startswith("eps:"))
    assert eps.endswith("zoo/resnet50.yaml:7")  # inherited from the base, with its line
    padding = next(ln for ln in lines if ln.strip().startswith("padding: 3"))
    assert "#" not in padding  # a default: no comment
    # a resolved depth names where the block counts came from
    out = CliRunner().invoke(main, ["resolve", "resnet20"]).output
    assert "blocks: 3" in out and "# from depth 20 (zoo/resnet20.yaml:8)" in out


def test_resolve_output_refuses_to_overwrite(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("x")
    res = CliRunner().invoke(main, ["resolve", "resnet18", "-o", str(path)])
    assert res.exit_code == 1 and "--force" in res.output and path.read_text() == "x"


def test_diff_names_every_difference_and_the_cost():
    res = CliRunner().invoke(main, ["diff", "resnet50", "keras_resnet50"])
    assert res.exit_code == 0
    rows = {ln.split()[0]: ln.split()[1:] for ln in res.output.splitlines()[1:-1]}
    assert rows == {"conv_bias": ["false", "->", "true"], "norm.eps": ["1.0e-05", "->", "1.001e-05"],
                    "norm.momentum": ["0.1", "->", "0.01"], "stem.bias": ["false", "->", "true"],
                    "stem.pool.pad_value": ["neg_inf", "->", "zero"], "block.stride_on": ["3x3", "->", "1x1"]}
    a, b = resnet_spec.load("resnet50"), resnet_spec.load("keras_resnet50")
    assert f"({b.params - a.params:+,})" in res.output.splitlines()[-1]


def test_diff_of_identical_specs(tmp_path):
    copy = tmp_path / "copy.yaml"
    copy.write_text("extends: resnet18\nname: copy\n")
    res = CliRunner().invoke(main, ["diff", "resnet18", str(copy)])
    assert res.exit_code == 0 and "resolve to the same network" in res.output
    res = CliRunner().invoke(main, ["diff", "resnet18", "resnet34"])
    assert "stages[1].blocks  2  ->  4" in res.output


# -- pictures ---------------------------------------------------------------------------------------

def test_stage_facts_drawn_come_from_the_ir():
    from resnet_spec.diagram import stage_info

    r50 = stage_info(resnet_spec.load("resnet50"))
    assert [s["blocks"] for s in r50] == [3, 4, 6, 3] and r50[1]["kind"] == "bottleneck"
    assert (r50[1]["in"], r50[1]["width"], r50[1]["out"]) == (256, 128, 512)
    assert r50[1]["stride"] == "stride 2 on the 3x3 conv (first block)" and r50[0]["stride"] == "stride 1"
    assert r50[1]["shortcut"] == "1x1 conv/2 + BN" and r50[1]["shape"] == (512, 28, 28)
    assert stage_info(resnet_spec.load("keras_resnet50"))[1]["stride"] == "stride 2 on the 1x1 conv (first block)"
    v2 = stage_info(resnet_spec.load("keras_resnet50v2"))
    assert v2[0]["stride"] == "stride 2 on the 3x3 conv (last block)" and v2[0]["kind"] == "pre-act bottleneck"
    assert stage_info(resnet_spec.load("resnet20"))[1]["shortcut"] == "A: strided identity + zero-pad"
    assert stage_info(resnet_spec.load("resnet50d"))[1]["shortcut"].startswith("avgpool + 1x1 conv/1")
    assert stage_info(resnet_spec.load("seresnet50"))[0]["kind"] == "bottleneck + SE"
    assert stage_info(resnet_spec.load("resnext50_32x4d"))[0]["groups"] == 32


@pytest.mark.parametrize("name,fragments", [
    ("resnet20", ["3 x basic", "A: strided identity + zero-pad", "fc 64 -&gt; 10"]),
    ("preact_resnet1001", ["111 blocks", "111 x pre-act bottleneck", "1001 weighted layers"]),
])
def test_diagram_svg(tmp_path, name, fragments):
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text, so the test can read it
    out = tmp_path / "d.svg"
    res = CliRunner().invoke(main, ["diagram", name, "-o", str(out)])
    assert res.exit_code == 0, res.output
    svg = out.read_text()
    for f in fragments:
        assert f in svg, f


def test_diagram_png_and_bad_outputs(tmp_path):
    out = tmp_path / "r50.png"
    assert CliRunner().invoke(main, ["diagram", "resnet50", "-o", str(out)]).exit_code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for path, fragment in [(blocker / "d.png", "is not a folder"), (tmp_path / "d.jpg", "unknown picture format 'jpg'"),
                           (out, "already exists; pass --force")]:
        res = CliRunner().invoke(main, ["diagram", "resnet50", "-o", str(path)])
        assert res.exit_code == 1 and fragment in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["afile", "r50.png"]


@pytest.mark.slow  # parity: a torch and an ONNX worker process
def test_parity_plot_marks_the_first_divergence(tmp_path):
    import matplotlib

    import faults
    from resnet_spec import parity
    from resnet_spec.parityplot import write_plot

    matplotlib.rcParams["svg.fonttype"] = "none"
    net = resnet_spec.load("resnet20")
    w = resnet_spec.init_weights(net, seed=0, random_bn=True)
    report = parity.run(net, w, backends=("torch", "onnx"), layers=True, mutate={"torch": faults.torch_scale_layer3_1})
    assert report.pairs[0]["first_divergence"] == "layer3.1"
    out = tmp_path / "p.svg"
    write_plot(report.to_json(), str(out))
    svg = out.read_text()
    assert "first divergence: layer3.1" in svg and "tolerance 1e-04 (float32)" in svg and "FAIL" in svg


@pytest.mark.slow  # parity: a torch and an ONNX worker process
def test_parity_plot_on_the_command_line(tmp_path):
    out = tmp_path / "p.png"
    res = CliRunner().invoke(main, ["parity", "resnet20", "--backends", "torch,onnx", "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG" and "layer3.2" in res.output  # --plot implies --layers
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(main, ["parity", "resnet20", "--backends", "torch,onnx", "--plot",
                                    str(tmp_path / "afile" / "x.png")])
    assert res.exit_code == 1 and "cannot write" in res.output and "torch:" not in res.output


# -- small fixes ------------------------------------------------------------------------------------

def test_parity_on_a_missing_gpu_is_one_clear_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(main, ["parity", "resnet20", "--backends", "torch,onnx", "--device", "cuda"])
    assert res.exit_code == 1
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "nothing was compared: 0 of 2 backends could run on cuda" in errors[0]
    assert "torch.cuda.is_available() is False" in errors[0] and "max abs" not in res.output


def test_parity_options_have_help():
    out = CliRunner().invoke(main, ["parity", "--help"]).output
    assert "Precision every backend computes in" in out and "Images in the random input batch" in out


def test_readme_python_example_does_its_work_under_the_main_guard():
    import ast

    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    code = text.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(code)
    top = [type(n).__name__ for n in tree.body]
    # only imports, definitions and the guard at module level: spawned parity workers re-import the file
    assert set(top) <= {"Import", "ImportFrom", "FunctionDef", "If"} and top[-1] == "If", top



def test_readme_family_table_is_the_coverage_scripts():
    """The README's import-coverage table is the one benchmarks/family_coverage.py writes in
    docs/family_coverage.md (a row updated in one and not the other went unnoticed before)."""
    root = os.path.join(os.path.dirname(__file__), "..")

    def table(name):
        lines = open(os.path.join(root, name), encoding="utf-8").read().splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("| family | models |"))
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
        return lines[start:end]

    assert len(table("README.md")) > 2 and table("README.md") == table("docs/family_coverage.md")

# -- inspect ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def r20_torch(tmp_path_factory):
    """``convert resnet20 --to torch`` once for the tests below (it runs in a worker process)."""
    out = tmp_path_factory.mktemp("r20") / "o"
    res = CliRunner().invoke(main, ["convert", "resnet20", "--to", "torch", "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_inspect_safetensors_pt2_and_checkpoints(tv18, tmp_path, r20_torch):
    import json

    out = r20_torch
    net = resnet_spec.load("resnet20")
    res = CliRunner().invoke(main, ["inspect", "--json", str(out / "resnet20.safetensors")])
    info = json.loads(res.output)
    assert (info["spec_name"], info["parameters"], info["matches_spec"]) == ("resnet20", net.params, "yes")
    assert info["tensors"] == len(net.tensors()) and info["spec_yaml"] == net.spec_yaml
    res = CliRunner().invoke(main, ["inspect", str(out / "resnet20.pt2")])
    assert res.exit_code == 0 and "torch.export" in res.output
    ck = _save({"model": _prefixed(dict(tv18.state_dict()), "module.")}, tmp_path / "ck.pth")
    res = CliRunner().invoke(main, ["inspect", "--json", ck])
    info = json.loads(res.output)
    assert info["parameters"] == sum(p.numel() for p in tv18.parameters())
    assert info["notes"] == ["took the weights under 'model'", "stripped the prefix 'module.' from every name"]
    bad = tmp_path / "x.keras"
    bad.write_bytes(b"PK")
    res = CliRunner().invoke(main, ["inspect", str(bad)])
    assert res.exit_code == 1 and "x.keras: not a Keras .keras archive" in res.output, res.output
    other = tmp_path / "x.h5"
    other.write_bytes(b"\x89HDF")
    res = CliRunner().invoke(main, ["inspect", str(other)])
    assert res.exit_code == 1 and "x.h5: inspect reads .onnx, .safetensors, .pt2, .keras, .tflite" in res.output


def test_inspect_reports_weights_that_do_not_match_their_spec(tmp_path):
    from resnet_spec.inspect_files import weights_metadata

    net = resnet_spec.load("resnet20")
    w = resnet_spec.init_weights(net)
    w["fc.weight"] = w["fc.weight"][:5]
    path = tmp_path / "w.safetensors"
    resnet_spec.save_weights(w, str(path), metadata=weights_metadata(net))
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert "matches:    no: 1 tensor(s) differ, first 'fc.weight'" in res.output


def test_output_folders_get_the_usual_mode(tmp_path):
    from resnet_spec.fileio import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "saved"), is_dir=True) as tmp:
            open(os.path.join(tmp, "x"), "w").close()
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "saved").st_mode & 0o777) == 0o755  # mkdtemp alone gives 0700


def test_convert_embeds_the_spec_in_the_pt2_program(r20_torch):
    """The .pt2 carries the spec (torch.export extra files); inspect reads it back, identical."""
    out = r20_torch
    res = CliRunner().invoke(main, ["inspect", str(out / "resnet20.pt2"), "--json"])
    assert res.exit_code == 0, res.output
    import json

    info = json.loads(res.output)
    assert info["spec_name"] == "resnet20"
    assert resnet_spec.load(info["spec_yaml"]) == resnet_spec.load("resnet20")


def test_python_dash_m_runs_the_cli():
    """``python -m resnet_spec`` is the same CLI as ``resnet-spec`` (no console script needed)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "resnet_spec", "validate", "resnet20"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resnet20" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "resnet_spec", "validate", "no_such_spec"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
