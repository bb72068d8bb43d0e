"""PyTorch backend: torchvision/timm as oracles, training, compile/export/trace, weights I/O."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import resnet_spec  # noqa: E402
from resnet_spec.backends.torch import backend as tb  # noqa: E402
from resnet_spec.errors import WeightsError  # noqa: E402
from resnet_spec.weights import init_weights, save_weights  # noqa: E402

from conftest import TIMM, TORCHVISION, randomize_bn, small, tiny, tiny_zoo  # noqa: E402
from counting import torch_counts  # noqa: E402

# Max abs difference we accept against the reference library on CPU fp32. The generated module runs
# the same kernels in the same order as torchvision's, so the measured difference is 0.0; the bound
# is what the issue asks for.
REF_TOL = 1e-6
FAST_REF = ["resnet18", "resnet50", "resnext50_32x4d", "resnet50d", "seresnet50"]


def _reference(name):
    if name in TIMM:
        import timm

        return timm.create_model(name, pretrained=False)
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def _compare_with_reference(name, size=224, batch=2):
    torch.manual_seed(0)
    ref = _reference(name).eval()
    randomize_bn(ref.state_dict(), seed=1)
    net = resnet_spec.load(name)
    ours = tb.build(net, tb.state_to_weights(ref.state_dict())).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        a, b = ref(x), ours(x)
    return float((a - b).abs().max()), float(a.abs().max())


@pytest.mark.parametrize("name", FAST_REF)
def test_matches_reference(name):
    diff, scale = _compare_with_reference(name)
    print(f"{name}: max abs diff {diff:.3g} (logit scale {scale:.3g})")
    assert scale > 0.1  # the comparison is not between two near-zero tensors
    assert diff <= REF_TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TORCHVISION + TIMM if n not in FAST_REF])
def test_matches_reference_all(name):
    diff, scale = _compare_with_reference(name, batch=1)
    print(f"{name}: max abs diff {diff:.3g} (logit scale {scale:.3g})")
    assert scale > 0.1
    assert diff <= REF_TOL


def test_reference_state_dict_loads_unchanged():
    """load_state_dict(reference.state_dict()) works with strict=True for torchvision and timm."""
    for name in ("resnet50", "resnet50d", "seresnet50"):
        ref = _reference(name)
        model = tb.build(resnet_spec.load(name), init_weights(resnet_spec.load(name)))
        model.load_state_dict(ref.state_dict(), strict=True)
        keys = lambda m: [k for k in m.state_dict() if not k.endswith("num_batches_tracked")]  # noqa: E731
        assert keys(model) == keys(ref)


def test_reference_fault_is_detected():
    """The oracle comparison can fail: one perturbed weight in our copy is visible in the output."""
    ref = _reference("resnet18").eval()
    w = tb.state_to_weights(ref.state_dict())
    w["layer3.1.conv2.weight"] = w["layer3.1.conv2.weight"] * 1.01
    ours = tb.build(resnet_spec.load("resnet18"), w).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert float((ref(x) - ours(x)).abs().max()) > REF_TOL


class _CifarRef(torch.nn.Module):
    """Independent oracle for the paper's CIFAR ResNets with option-A shortcuts, written from the
    paper (He et al. 2015, sec. 4.2): 3x3 conv stem, three stages of 2n basic blocks at 16/32/64
    channels, shortcut = x[:, :, ::2, ::2] zero-padded by C/4 channels on each side."""

    def __init__(self, n):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, c in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                stride = 2 if s and i == 0 else 1
                b = nn.Module()
                b.conv1, b.bn1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
                b.conv2, b.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
                b.pad = (c - cin) // 2 if stride != 1 or cin != c else None
                blocks.append(b)
                cin = c
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        F = torch.nn.functional
        x = F.relu(self.bn1(self.conv1(x)))
        for layer in (self.layer1, self.layer2, self.layer3):
            for b in layer:
                y = F.relu(b.bn1(b.conv1(x)))
                y = b.bn2(b.conv2(y))
                if b.pad is not None:
                    x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, b.pad, b.pad))
                x = F.relu(y + x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("name,n", [("resnet20", 3), ("resnet56", 9)])
def test_cifar_option_a_matches_paper_oracle(name, n):
    torch.manual_seed(0)
    ref = _CifarRef(n).eval()
    randomize_bn(ref.state_dict(), seed=3)
    net = resnet_spec.load(name)
    ours = tb.build(net, tb.state_to_weights(ref.state_dict())).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        diff = float((ref(x) - ours(x)).abs().max())
    assert diff <= REF_TOL


#: the train-step sweep at full depth (small input): the main entry and the deepest (1001 layers)
TRAIN_FULL = ("resnet50", "preact_resnet1001")


@pytest.mark.slow
@pytest.mark.parametrize("name,full", [(n, False) for n in tiny_zoo()] + [(n, True) for n in TRAIN_FULL],
                         ids=tiny_zoo() + [f"{n}-full" for n in TRAIN_FULL])
def test_train_step_and_counts(name, full):
    """Training-mode forward/backward: every parameter gets a finite gradient; counts equal the IR. Each
    distinct network at tiny depth (conftest.tiny_zoo), two at full depth."""
    net = small(name) if full else tiny(name)
    model = tb.build(net, init_weights(net, seed=0)).train()
    assert torch_counts(model) == {"params": net.params, "buffers": net.buffers}
    assert sorted(k for k in model.state_dict() if not k.endswith("num_batches_tracked")) == sorted(
        t.name for t in net.tensors())
    x = torch.randn(2, *net.input_shape)
    out = model(x)
    assert tuple(out.shape) == (2, net.head[-1].out_features)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_stochastic_depth_is_train_only():
    net = resnet_spec.load("extends: resnet18\ninput: {size: 64}\nblock: {drop_path_rate: 0.5}")
    model = tb.build(net, init_weights(net, seed=0, random_bn=True))
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c = model(x)
        torch.manual_seed(1)
        d = model(x)
    assert not torch.equal(c, d)


def test_zero_init_residual():
    net = resnet_spec.load("extends: resnet50\ninit: {zero_init_last_bn: true}")
    w = init_weights(net, seed=0)
    for name in net.last_bn_of_blocks():
        assert not w[f"{name}.weight"].any()
    assert w["bn1.weight"].all()


def test_bn_epsilon_and_momentum_are_the_specs():
    """Every BatchNorm2d carries the spec's eps and momentum (torch convention), and a training step
    moves the running mean by exactly that momentum."""
    net = resnet_spec.load("extends: resnet20\nnorm: {eps: 1.0e-3, momentum: 0.03}")
    model = tb.build(net, init_weights(net, seed=0))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == sum(isinstance(op, resnet_spec.ir.BatchNorm) for op in net.all_ops())
    assert {(m.eps, m.momentum) for m in bns} == {(1e-3, 0.03)}
    x = torch.randn(4, *net.input_shape)
    before = model.bn1.running_mean.clone()
    model.train()(x)
    batch_mean = model.conv1(x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(model.bn1.running_mean, 0.97 * before + 0.03 * batch_mean, rtol=1e-5, atol=1e-6)


# Tracing, channels-last and torch.export depend on the ops and their wiring, not on depth: each distinct
# network runs with its stages cut to two blocks (conftest.tiny_zoo), and resnet50 at full depth (small input). At
# full depth the sweep took about four minutes of worker time (the CIFAR 110- to 1202-layer entries and
# resnet101/152 half of it) and tested nothing more.
FULL_DEPTH = ("resnet50",)


@pytest.mark.slow
@pytest.mark.parametrize("name", tiny_zoo() + [n for n in FULL_DEPTH if n not in tiny_zoo()])
def test_trace_export_channels_last(name):
    net = small(name) if name in FULL_DEPTH else tiny(name)
    model = tb.build(net, init_weights(net, seed=0, random_bn=True)).eval()
    x = torch.randn(2, *net.input_shape)
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), ref, rtol=1e-5, atol=1e-5)
        cl = model.to(memory_format=torch.channels_last)
        y = cl(x.to(memory_format=torch.channels_last))
        assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        model = model.to(memory_format=torch.contiguous_format)
    batch = torch.export.Dim("batch", min=1, max=64)
    prog = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    x3 = torch.randn(3, *net.input_shape)
    with torch.no_grad():
        assert torch.allclose(prog.module()(x3), model(x3), rtol=1e-5, atol=1e-5)


COMPILE_SET = ["resnet20", "resnet50d", "seresnet50", "resnet50_caffe", "keras_resnet50v2", "resnext50_32x4d"]


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILE_SET)
def test_torch_compile_aot_eager(name):
    """torch.compile traces every op kind (Dynamo + AOTAutograd); aot_eager skips C++ codegen to stay fast."""
    torch._dynamo.reset()
    net = small(name)
    model = tb.build(net, init_weights(net, seed=0, random_bn=True)).eval()
    x = torch.randn(2, *net.input_shape)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor():
    """One real Inductor compile (C++ codegen on CPU) of a net with every block feature."""
    torch._dynamo.reset()
    net = small("resnet20")
    model = tb.build(net, init_weights(net, seed=0, random_bn=True)).eval()
    x = torch.randn(2, *net.input_shape)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(compiled(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


# -- weights --------------------------------------------------------------------------------------


def test_weights_roundtrip_and_torchvision_file(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    net = resnet_spec.load("resnet18")
    w = resnet_spec.load_weights(net, str(tmp_path / "r18.pth"))
    assert np.array_equal(w["layer2.0.downsample.0.weight"], ref.state_dict()["layer2.0.downsample.0.weight"].numpy())
    save_weights(w, str(tmp_path / "r18.safetensors"))
    w2 = resnet_spec.load_weights(net, str(tmp_path / "r18.safetensors"))
    assert w.keys() == w2.keys() and all(np.array_equal(w[k], w2[k]) for k in w)


def test_init_weights_is_deterministic_and_he():
    net = resnet_spec.load("resnet50")
    a, b = init_weights(net, seed=3), init_weights(net, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], init_weights(net, seed=4)["conv1.weight"])
    w = a["layer3.0.conv2.weight"]  # He (fan-out, as torchvision): std = sqrt(2 / (out * kh * kw))
    assert abs(w.std() / np.sqrt(2.0 / (w.shape[0] * 9)) - 1) < 0.02


def test_weight_errors_name_the_tensor(tmp_path):
    net = resnet_spec.load("resnet18")
    w = init_weights(net)
    bad = dict(w)
    del bad["layer1.0.bn1.running_var"]
    bad["layer9.weight"] = np.zeros(3, np.float32)
    save_weights(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError) as e:
        resnet_spec.load_weights(net, str(tmp_path / "bad.safetensors"))
    msg = str(e.value)
    assert "missing tensor 'layer1.0.bn1.running_var' (expected shape (64))" in msg
    assert "unexpected tensor 'layer9.weight'" in msg
    bad = dict(w, **{"fc.weight": np.zeros((10, 512), np.float32)})
    with pytest.raises(WeightsError, match=r"'fc\.weight' has shape \(10, 512\), the spec expects \(1000, 512\)"):
        resnet_spec.build(net, "torch", weights=bad)
    bad = dict(w, **{"layer4.1.bn2.running_var": np.full(512, np.nan, np.float32)})
    with pytest.raises(WeightsError, match=r"'layer4\.1\.bn2\.running_var' contains NaN"):
        resnet_spec.build(net, "torch", weights=bad)
    bad["layer4.1.bn2.running_var"] = np.zeros(512, np.int64).astype(np.complex64)
    with pytest.raises(WeightsError, match="dtype complex64"):
        resnet_spec.build(net, "torch", weights=bad)


def test_pickle_that_is_not_a_tensor_dict_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    with pytest.raises(WeightsError, match="refused"):
        resnet_spec.load_weights(resnet_spec.load("resnet18"), str(tmp_path / "evil.pth"))
    assert not (tmp_path / "pwned").exists()
    # a {"model": ...} container is unwrapped now (tests/test_workflows.py); a value that is no tensor is not
    torch.save({"conv1.weight": [torchvision_like_nested()]}, tmp_path / "nested.pth")
    with pytest.raises(WeightsError, match="not a tensor"):
        resnet_spec.load_weights(resnet_spec.load("resnet18"), str(tmp_path / "nested.pth"))


def torchvision_like_nested():
    return {"conv1.weight": torch.zeros(1)}


def test_build_refuses_bad_weights_before_allocating():
    net = resnet_spec.load("resnet18")
    w = init_weights(net)
    w["conv1.weight"] = w["conv1.weight"][:, :2]
    with pytest.raises(WeightsError, match=r"conv1\.weight"):
        resnet_spec.build(net, "torch", weights=w)


def test_device_refusal_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(resnet_spec.BackendUnavailable, match="CUDA"):
        tb.infer(small("resnet20"), init_weights(small("resnet20")), np.zeros((1, 3, 32, 32), np.float32),
                 device="cuda")
