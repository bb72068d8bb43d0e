"""``verify --weights W`` takes every source ``convert`` and ``parity`` take, through their loader:
safetensors, torch checkpoints (``--weights-key``, ``--ema``), ``--new-head``, and the import sources
(``.onnx``, ``.keras``, ``keras:NAME=FILE.weights.h5``, ``torchvision:NAME``, ``timm:NAME``).

Each source is checked both ways: a file converted from the source passes against it, and a file made
from other weights fails (so the reference really is the source's network). The verified files sit
alone in a folder, so no ``<name>.safetensors`` beside them can stand in for ``--weights``.
TensorFlow runs only in convert's, verify's and import's worker processes.
"""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from resnet_spec.cli import main  # noqa: E402
from resnet_spec.weights import read_safetensors  # noqa: E402

R18 = "extends: resnet18\nname: r18\ninput: {size: 32}\n"


def _cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """resnet18 at 32 px converted from fresh weights (seed 3): .pt2, .onnx, .keras, safetensors."""
    d = tmp_path_factory.mktemp("r18")
    (d / "r18.yaml").write_text(R18)
    res = _cli("convert", d / "r18.yaml", "-o", d / "out", "--to", "torch,onnx,tensorflow", "--seed", "3")
    assert res.exit_code == 0, res.output
    return d


def _alone(src, tmp_path, name="r18.pt2"):
    """A copy of ``src`` in a folder of its own (no weights beside it)."""
    d = tmp_path / f"alone{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    shutil.copy(src, d / name)
    return d / name


def _verify(spec, path, *args, code=0):
    res = _cli("verify", spec, path, *args)
    assert res.exit_code == code, res.output
    if code == 0:
        assert res.output.strip().splitlines()[-1].startswith("PASS: "), res.output
    return res


def _one_error(res, *words):
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.mark.slow  # the r18 fixture converts in torch, ONNX and TensorFlow workers; verify spawns more
def test_torch_checkpoints_with_key_ema_and_prefixes(r18, tmp_path):
    spec, pt2 = r18 / "r18.yaml", _alone(r18 / "out" / "r18.pt2", tmp_path)
    w = {k: torch.from_numpy(v) for k, v in read_safetensors(str(r18 / "out" / "r18.safetensors")).items()}
    other = {k: v * 1.5 if k.endswith("conv1.weight") else v for k, v in w.items()}
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": {f"module.{k}": v for k, v in other.items()}, "model_ema": w, "epoch": 3}, ckpt)
    res = _verify(spec, pt2, "--weights", ckpt, "--ema")
    assert "took the weights under 'model_ema'" in res.output
    _verify(spec, pt2, "--weights", ckpt, "--weights-key", "model_ema")
    res = _verify(spec, pt2, "--weights", ckpt, code=1)  # the 'model' entry: other weights, prefix stripped
    assert "stripped the prefix 'module.'" in res.output and "FAIL" in res.output
    _one_error(_cli("verify", spec, pt2, "--weights", ckpt, "--weights-key", "nope"), "'nope'", "'model'")
    res = _cli("verify", spec, pt2, "--ema")
    assert res.exit_code == 2 and "need --weights" in res.output, res.output
    # a checkpoint of another spec: the loader's refusal, naming the first tensor that does not fit
    small = {k: v for k, v in w.items() if not k.startswith("layer4")}
    torch.save(small, tmp_path / "small.pth")
    _one_error(_cli("verify", spec, pt2, "--weights", tmp_path / "small.pth"), "small.pth", "layer4")


@pytest.mark.slow  # the r18 fixture converts in torch, ONNX and TensorFlow workers; verify spawns more
def test_new_head(r18, tmp_path):
    spec = r18 / "r18.yaml"
    w = {k: torch.from_numpy(v) for k, v in read_safetensors(str(r18 / "out" / "r18.safetensors")).items()}
    w["fc.weight"], w["fc.bias"] = torch.randn(100, 512), torch.randn(100)
    ckpt = tmp_path / "c100.pth"
    torch.save({"state_dict": w}, ckpt)
    line = _one_error(_cli("verify", spec, r18 / "out" / "r18.pt2", "--weights", ckpt), "c100.pth", "--new-head")
    assert "only the classifier differs" in line
    res = _cli("convert", spec, "--to", "torch", "--weights", ckpt, "--new-head", "--seed", "7", "-o", tmp_path / "c")
    assert res.exit_code == 0, res.output
    pt2 = _alone(tmp_path / "c" / "r18.pt2", tmp_path)
    res = _verify(spec, pt2, "--weights", ckpt, "--new-head", "--seed", "7")
    assert "new classifier fc" in res.output
    _verify(spec, pt2, "--weights", ckpt, "--new-head", "--seed", "8", code=1)  # another fresh head


@pytest.mark.slow  # the r18 fixture converts in torch, ONNX and TensorFlow workers; verify spawns more
@pytest.mark.parametrize("kind", [".onnx", ".keras"])
def test_onnx_and_keras_files_as_weights(r18, tmp_path, kind):
    spec, src = r18 / "r18.yaml", r18 / "out" / f"r18{kind}"
    _verify(spec, _alone(r18 / "out" / "r18.pt2", tmp_path), "--weights", src)
    # a file made from other weights fails against the same source
    res = _cli("convert", spec, "--to", "torch", "--seed", "4", "-o", tmp_path / "s4")
    assert res.exit_code == 0, res.output
    _verify(spec, _alone(tmp_path / "s4" / "r18.pt2", tmp_path), "--weights", src, code=1)


@pytest.mark.slow  # the r18 fixture converts in torch, ONNX and TensorFlow workers; verify spawns more
@pytest.mark.parametrize("source", ["torchvision:resnet18", "timm:resnet18"])
def test_library_models_as_weights(r18, tmp_path, source):
    pytest.importorskip(source.split(":")[0])
    spec = r18 / "r18.yaml"
    res = _cli("convert", spec, "--to", "torch", "--weights", source, "-o", tmp_path / "c")
    assert res.exit_code == 0, res.output
    _verify(spec, _alone(tmp_path / "c" / "r18.pt2", tmp_path), "--weights", source)
    _verify(spec, _alone(r18 / "out" / "r18.pt2", tmp_path), "--weights", source, code=1)
    # the spec's own checks: a library model of another architecture is refused, naming the layer
    _one_error(_cli("verify", spec, r18 / "out" / "r18.pt2", "--weights", source.replace("18", "34")), "layer1.2")


@pytest.mark.slow
def test_keras_applications_weights_h5(tmp_path, keras_apps):
    h5 = keras_apps["ResNet50"]["h5"]  # written from a 64 px model: a weights file has no input size
    (tmp_path / "k50.yaml").write_text("extends: keras_resnet50\nname: k50\ninput: {size: 32}\n")
    source = f"keras:ResNet50={h5}"
    res = _cli("convert", tmp_path / "k50.yaml", "--to", "torch", "--weights", source, "-o", tmp_path / "c")
    assert res.exit_code == 0, res.output
    pt2 = _alone(tmp_path / "c" / "k50.pt2", tmp_path, "k50.pt2")
    _verify(tmp_path / "k50.yaml", pt2, "--weights", source)
    _verify(tmp_path / "k50.yaml", pt2, "--weights", "keras:ResNet50", code=1)  # fresh Keras weights differ
    # the torchvision spec is refused with the importer's message (the conv biases Keras has)
    (tmp_path / "r50.yaml").write_text("extends: resnet50\nname: k50\ninput: {size: 32}\n")
    _one_error(_cli("verify", tmp_path / "r50.yaml", pt2, "--weights", source), "conv1_conv", "bias")


@pytest.mark.slow  # the r18 fixture converts in torch, ONNX and TensorFlow workers; verify spawns more
def test_safetensors_still_default_beside_and_explicit(r18, tmp_path):
    out = r18 / "out"
    _verify(r18 / "r18.yaml", out / "r18.pt2")  # <name>.safetensors beside it
    _verify(r18 / "r18.yaml", _alone(out / "r18.pt2", tmp_path), "--weights", out / "r18.safetensors")
