"""resnet-spec import: external producers (torchvision, timm, torch.onnx.export, keras.applications)
in, a spec + canonical weights out, proven equal to the source run in its own runtime.

Small inputs (64 px) and random weights keep it cheap; TensorFlow only ever runs in worker processes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import KERAS, one_line_error as _one_line_error

import resnet_spec
from resnet_spec.cli import main

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _import(args, out):
    res = CliRunner().invoke(main, ["import", *args, "-o", str(out)])
    return res.exit_code, res.output


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


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnext50_32x4d", marks=pytest.mark.slow)])  # slow: big model
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


@pytest.mark.parametrize("lib,name,suffix", [pytest.param("torchvision", "wide_resnet50_2", ".pth",
                                                          marks=pytest.mark.slow),  # slow: big model
                                             pytest.param("timm", "resnet50d", ".safetensors", marks=pytest.mark.slow),
                                             pytest.param("timm", "seresnet50", ".pt", marks=pytest.mark.slow)])
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


# --- ONNX ------------------------------------------------------------------------------------------

def _export(model, path, dynamo: bool, opset: int, size=64):
    import warnings

    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, opset_version=opset, verbose=False)
    return path


def _library(lib, name):
    if lib == "timm":
        timm = pytest.importorskip("timm")
        return _randomize(timm.create_model(name, pretrained=False))
    return _randomize(torchvision.models.get_model(name, weights=None))


def _check_onnx_import(tmp_path, model, onnx_path):
    out_dir = tmp_path / "out"
    code, out = _import([str(onnx_path), "--name", "m"], out_dir)
    assert code == 0, out
    assert "PASS" in out and "identity statistics" in out  # exporters fold BN; the import says so
    net = resnet_spec.load(str(out_dir / "m.yaml"))
    assert net.params == _torch_params(model)
    return net, out


# slow params: 50-layer library models, exported and proven in worker processes
@pytest.mark.parametrize("lib,name,dynamo,opset", [("torchvision", "resnet18", False, 13),
                                                   pytest.param("timm", "seresnet50", False, 17, marks=pytest.mark.slow),
                                                   pytest.param("timm", "resnet50d", True, 18, marks=pytest.mark.slow)])
def test_import_torch_onnx_export(tmp_path, lib, name, dynamo, opset):
    if dynamo:
        pytest.importorskip("onnxscript")
    model = _library(lib, name)
    path = _export(model, tmp_path / f"{name}.onnx", dynamo, opset)
    net, _ = _check_onnx_import(tmp_path, model, path)
    text = (tmp_path / "out" / "m.yaml").read_text()
    assert f"extends: {name}" in text


# slow: convert and import each run in worker processes (3 per case); test_import_zoo.py's
# test_convert_then_import_cli[resnet20-convert] keeps convert -> import in the fast tier
@pytest.mark.slow
@pytest.mark.parametrize("spec,fold", [("keras_resnet50v2", True), ("keras_resnet50", False),
                                       ("preact_resnet164", True)])
def test_import_own_onnx(tmp_path, spec, fold):
    """Files written by 'resnet-spec convert', BN folded or kept, pre-activation and v1."""
    size = 32 if spec.startswith("preact") else 64
    (tmp_path / "s.yaml").write_text(f"extends: {spec}\nname: s\ninput: {{size: {size}}}\n"
                                     + ("depth: 29\n" if spec.startswith("preact") else ""))
    args = ["convert", str(tmp_path / "s.yaml"), "--to", "onnx", "-o", str(tmp_path / "c"),
            "--weights", str(tmp_path / "w.safetensors")]
    net = resnet_spec.load(str(tmp_path / "s.yaml"))
    resnet_spec.save_weights(resnet_spec.init_weights(net, random_bn=True), str(tmp_path / "w.safetensors"))
    res = CliRunner().invoke(main, args + ([] if fold else ["--no-fold-bn"]))
    assert res.exit_code == 0, res.output
    code, out = _import([str(tmp_path / "c" / "s.onnx"), "--name", "m"], tmp_path / "out")
    assert code == 0, out
    got = resnet_spec.load(str(tmp_path / "out" / "m.yaml"))
    if not fold:
        assert got.params == net.params and f"extends: {spec}" in (tmp_path / "out" / "m.yaml").read_text()


class _Plain(torch.nn.Module):
    """VGG-like: no residual connection at all."""

    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))

    def forward(self, x):
        return self.f(x)


def test_onnx_not_a_resnet(tmp_path):
    vgg = _export(_Plain().eval(), tmp_path / "vgg.onnx", False, 17, size=32)
    line = _one_line_error(*_import([str(vgg)], tmp_path / "o1"), "vgg.onnx", "no residual connection")
    mobile = _export(torchvision.models.mobilenet_v2(weights=None).eval(), tmp_path / "mobilenet.onnx", False, 17)
    line = _one_line_error(*_import([str(mobile)], tmp_path / "o2"), "mobilenet.onnx", "node ")
    assert "Clip" in line or "not expected" in line
    broken = tmp_path / "trunc.onnx"
    broken.write_bytes(mobile.read_bytes()[:3000])
    _one_line_error(*_import([str(broken)], tmp_path / "o3"), "trunc.onnx")
    for d in ("o1", "o2", "o3"):
        assert not (tmp_path / d).exists() or not os.listdir(tmp_path / d)


# --- Keras (TensorFlow only in worker processes) ---------------------------------------------------

# slow: full keras.applications models built and run in TensorFlow worker processes
@pytest.mark.slow
# (ResNet101/152 are imported in-process by test_sweep_keras_applications; here the CLI path, once per format)
@pytest.mark.parametrize("name,zoo,weights_only", [("ResNet50", "keras_resnet50", False),
                                                   ("ResNet50V2", "keras_resnet50v2", True)])
def test_import_keras(tmp_path, keras_apps, name, zoo, weights_only):
    app = keras_apps[name]
    path = app["h5" if weights_only else "keras"]
    source = f"keras:{name}={path}" if weights_only else str(path)
    out_dir = tmp_path / "out"
    code, out = _import([source, "--name", "m", "--input-size", "64"], out_dir)
    assert code == 0, out
    assert "PASS" in out and "keras" in out
    assert f"extends: {zoo}" in (out_dir / "m.yaml").read_text()
    assert resnet_spec.load(str(out_dir / "m.yaml")).params == app["params"]


# slow: full keras.applications models built and run in TensorFlow worker processes
@pytest.mark.slow
def test_keras_weights_into_torchvision_spec_refused(tmp_path):
    """The issue's silent 19% error: keras.applications ResNet50 weights for the torchvision resnet50
    spec. Refused, naming the first differing layer, from the CLI and from the Python API."""
    (tmp_path / "r50.yaml").write_text("extends: resnet50\nname: r50\ninput: {size: 64}\n")
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "r50.yaml"), "--to", "torch", "--weights",
                                    "keras:ResNet50", "-o", str(tmp_path / "c")])
    line = _one_line_error(res.exit_code, res.output, "'conv1_conv' (conv1)", "bias")
    assert "does not match spec 'r50'" in line
    assert not (tmp_path / "c").exists()
    with pytest.raises(resnet_spec.ResNetSpecError, match="conv1_conv"):
        resnet_spec.build(str(tmp_path / "r50.yaml"), "torch", weights="keras:ResNet50")
    # the matching spec takes them, and parity holds
    (tmp_path / "k50.yaml").write_text("extends: keras_resnet50\nname: k50\ninput: {size: 64}\n")
    res = CliRunner().invoke(main, ["parity", str(tmp_path / "k50.yaml"), "--backends", "torch,onnx",
                                    "--weights", "keras:ResNet50"])
    assert res.exit_code == 0, res.output


def test_onnx_as_weights(tmp_path):
    model = _library("torchvision", "resnet18")
    path = _export(model, tmp_path / "r18.onnx", False, 17)
    (tmp_path / "r18.yaml").write_text("extends: resnet18\nname: r18\ninput: {size: 64}\n")
    (tmp_path / "r34.yaml").write_text("extends: resnet34\nname: r34\ninput: {size: 64}\n")
    net = resnet_spec.load(str(tmp_path / "r18.yaml"))
    built = resnet_spec.build(net, "torch", weights=str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref, got = model(x).numpy(), built(x).numpy()
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
    with pytest.raises(resnet_spec.ResNetSpecError, match="layer1.2"):
        resnet_spec.load_weights(str(tmp_path / "r34.yaml"), str(path))
    with pytest.raises(resnet_spec.WeightsError, match="mapping"):
        resnet_spec.build(net, "torch", weights=object())


# --- the whole sweep: every external producer ------------------------------------------------------

SWEEP_TORCH = [("torchvision", n) for n in ("resnet18", "resnet50", "resnet101", "resnext50_32x4d",
                                             "wide_resnet50_2")] + [("timm", "resnet50d"), ("timm", "seresnet50")]
SWEEP_KERAS = list(KERAS.values())


def _proved(src, x, ref, params, zoo=None):
    """Import ``src`` in-process: the spec has the source's parameter count and the generated torch
    model reproduces ``ref`` (the source run in its own runtime)."""
    from resnet_spec.importers.infer import build_spec
    from resnet_spec.importers.source import check_source

    text, net, _ = build_spec(src, "m")
    weights = check_source(net, src)
    assert net.params == params, src.label
    if zoo:
        assert f"extends: {zoo}" in text, (src.label, text)
    model = resnet_spec.build(net, "torch", weights=weights)
    with torch.inference_mode():
        got = model(torch.from_numpy(x)).numpy()
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max(), src.label


# one test per model, so that the sweep spreads over the test workers
@pytest.mark.slow
@pytest.mark.parametrize("lib,name", SWEEP_TORCH, ids=[f"{lib}:{name}" for lib, name in SWEEP_TORCH])
def test_sweep_torch_onnx_exporters(tmp_path, lib, name):
    """torchvision/timm models x {TorchScript exporter opset 13, dynamo exporter opset 20}: each ONNX
    file imported and proven against ONNX Runtime running it, with the library model's parameter count."""
    import onnxruntime as ort

    from resnet_spec.backends.onnx.reader import read_onnx

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    try:
        import onnxscript  # noqa: F401
        exporters = ((False, 13), (True, 20))
    except ImportError:
        exporters = ((False, 13),)
    model = _library(lib, name)
    for dynamo, opset in exporters:
        path = _export(model, tmp_path / f"{name}_{int(dynamo)}.onnx", dynamo, opset)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        _proved(read_onnx(str(path)), x, ref, _torch_params(model), zoo=name)
        path.unlink()


# one test per model; the files are conftest.KerasApps', shared with the other tests that read them
@pytest.mark.slow
@pytest.mark.parametrize("app", SWEEP_KERAS)
def test_sweep_keras_applications(keras_apps, app):
    """keras.applications ResNet50/101/152 and V2 x {.keras, .weights.h5}: each imported and proven
    against Keras running it (the files and logits: conftest.KerasApps)."""
    from resnet_spec.backends.keras.reader import _Mapper
    from resnet_spec.importers.source import Source
    from resnet_spec.isolate import run_isolated

    import keras_sources

    made = keras_apps[app]
    size = [made["size"]] * 2
    sources = {made["keras"]: {"path": made["keras"]},
               f"keras:{app}={made['h5']}": {"app": app, "h5": made["h5"], "size": size}}
    infos = run_isolated(keras_sources.describe, list(sources.values()))
    for (source, desc), info in zip(sources.items(), infos):
        src = Source(source, "keras", {}, {}, facts={"keras_source": desc})
        _Mapper(src, info).run()
        _proved(src, keras_apps.x, made["ref"], made["params"], zoo=f"keras_{app.lower()}")
