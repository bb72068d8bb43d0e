"""resnet-spec import: external producers (torchvision, timm, torch.onnx.export, keras.applications)
in, a spec + canonical weights out, proven equal to the source run in its own runtime.

Small inputs (64 px) and random weights keep it cheap; TensorFlow only ever runs in worker processes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import resnet_spec
from resnet_spec.cli import main

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _import(args, out):
    res = CliRunner().invoke(main, ["import", *args, "-o", str(out)])
    return res.exit_code, res.output


def _one_line_error(code, output, *needles):
    assert code == 1, output
    assert "Traceback" not in output
    err = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, output
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _torch_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize(model, seed=0):
    """Non-trivial BN statistics and affine parameters, so every tensor matters in the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_import_torchvision_by_name(tmp_path, name):
    code, out = _import([f"torchvision:{name}", "--input-size", "64"], tmp_path)
    assert code == 0, out
    assert "PASS" in out and "max_rel 0" in out
    text = (tmp_path / f"{name}.yaml").read_text()
    assert f"extends: {name}" in text  # a zoo architecture is written as extends, not in full
    net = resnet_spec.load(str(tmp_path / f"{name}.yaml"))
    model = torchvision.models.get_model(name, weights=None)
    assert net.params == _torch_params(model)
    w = resnet_spec.load_weights(net, str(tmp_path / f"{name}.safetensors"))
    assert set(w) == {t.name for t in net.tensors()}


@pytest.mark.parametrize("lib,name,suffix", [("torchvision", "wide_resnet50_2", ".pth"),
                                             ("timm", "resnet50d", ".safetensors"),
                                             ("timm", "seresnet50", ".pt")])
def test_import_checkpoint(tmp_path, lib, name, suffix):
    """A plain state dict: the architecture comes from names and shapes alone; the proof runs the
    checkpoint in timm's ResNet class, and here it is also compared with the library model itself."""
    if lib == "timm":
        timm = pytest.importorskip("timm")
        model = timm.create_model(name, pretrained=False)
    else:
        model = torchvision.models.get_model(name, weights=None)
    _randomize(model)
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    out_dir = tmp_path / "out"
    code, out = _import([str(path), "--input-size", "64", "--name", "m"], out_dir)
    assert code == 0, out
    assert "note: strides" in out  # the conventions a state dict cannot state are said
    net = resnet_spec.load(str(out_dir / "m.yaml"))
    assert net.params == _torch_params(model)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    built = resnet_spec.build(net, "torch", weights=str(out_dir / "m.safetensors"))
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
        got = built(torch.from_numpy(x)).numpy()
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()


def test_python_api(tmp_path):
    text, weights = resnet_spec.import_model("torchvision:resnet18", input_size=64)
    net = resnet_spec.load(text)
    assert net.input_shape == (3, 64, 64)
    assert set(weights) == {t.name for t in net.tensors()}


def test_not_a_resnet_checkpoint(tmp_path):
    model = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet.pth"
    torch.save(model.state_dict(), str(path))
    out_dir = tmp_path / "out"
    line = _one_line_error(*_import([str(path)], out_dir), str(path), "features.0.0.weight")
    assert "does not fit a ResNet" in line
    assert not out_dir.exists() or not os.listdir(out_dir)


def test_truncated_and_ambiguous_checkpoints(tmp_path):
    model = torchvision.models.resnet18(weights=None)
    good = tmp_path / "r18.pth"
    torch.save(model.state_dict(), str(good))
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(good.read_bytes()[: 5000])
    _one_line_error(*_import([str(bad)], tmp_path / "o1"), str(bad))
    st = tmp_path / "trunc.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    _one_line_error(*_import([str(st)], tmp_path / "o2"), str(st), "safetensors")
    # a block without its second conv: the layer named, nothing written
    state = model.state_dict()
    for k in [k for k in state if k.startswith("layer2.1.conv2")]:
        del state[k]
    holed = tmp_path / "holed.pth"
    torch.save(state, str(holed))
    _one_line_error(*_import([str(holed)], tmp_path / "o3"), str(holed), "layer2.1")
    for d in ("o1", "o2", "o3"):
        assert not (tmp_path / d).exists() or not os.listdir(tmp_path / d)


def test_existing_output_refused_before_work(tmp_path):
    (tmp_path / "resnet18.yaml").write_text("x")
    code, out = _import(["torchvision:resnet18", "--input-size", "64"], tmp_path)
    _one_line_error(code, out, "already exists")
    assert (tmp_path / "resnet18.yaml").read_text() == "x"
    assert not (tmp_path / "resnet18.safetensors").exists()


def test_bad_input_size_is_usage_error(tmp_path):
    res = CliRunner().invoke(main, ["import", "torchvision:resnet18", "--input-size", "a,b", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--input-size" in res.output
