"""Training-mode parity (``parity --train``): one step per leg, and planted faults the report names.

Legs: torch (reference), keras-tensorflow, keras-jax (when JAX is installed), keras-torch, each in its
own worker. Tolerances: resnet_spec.train_parity.TRAIN_TOLERANCES (pairwise, float32) and GRAD_BANDS (each
leg's gradients against PyTorch's float64 step of the same training step; measured values in docs/parity.md).
"""

from __future__ import annotations

import json
import os
import re

import faults
import pytest
from click.testing import CliRunner

import resnet_spec
from resnet_spec import parity as P
from resnet_spec import train_parity as T
from resnet_spec.backends.keras import model as keras_model
from resnet_spec.cli import main
from resnet_spec.weights import init_weights

pytest.importorskip("torch")
LEGS = ["torch"] + [f"keras-{b}" for b in ("tensorflow", "jax", "torch") if keras_model.missing(b) is None]


#: The workers' ATen kernels: the machine's own (AVX2/AVX-512 where it has them) and ATen's portable ones.
#: The verdicts must not depend on which (the float64 reference takes each leg's ReLU decisions).
CAPABILITIES = {"machine-kernels": None, "aten-default": "default"}


@pytest.fixture(scope="module", params=list(CAPABILITIES))
def runner(request):
    """A worker pool whose workers run with ATEN_CPU_CAPABILITY set as the param says."""
    old = os.environ.get("ATEN_CPU_CAPABILITY")
    if CAPABILITIES[request.param]:
        os.environ["ATEN_CPU_CAPABILITY"] = CAPABILITIES[request.param]
    try:
        with P.Runner() as r:
            yield r
    finally:
        os.environ.pop("ATEN_CPU_CAPABILITY", None)
        if old is not None:
            os.environ["ATEN_CPU_CAPABILITY"] = old


@pytest.fixture(scope="module")
def machine_runner():
    with P.Runner() as r:
        yield r


def _net(name, size=None):
    text = resnet_spec.load(name).spec_yaml
    if size:
        text = re.sub(r"size: \d+", f"size: {size}", text, count=1)
    return resnet_spec.load(text)


def _run(net, runner, **kw):
    return T.run_train(net, init_weights(net, seed=0, random_bn=True), runner=runner, **kw)


def test_resnet20_every_leg_agrees(runner):
    want = os.environ.get("ATEN_CPU_CAPABILITY")
    assert want is None or runner.call("torch", faults.aten_capability).lower() == want  # the setting took
    r = _run(_net("resnet20"), runner, backends=LEGS)
    assert r.passed and not r.not_run and len(r.pairs) == len(LEGS) * (len(LEGS) - 1) // 2
    net = resnet_spec.load("resnet20")
    for p in r.pairs:
        assert p["grads_total"] == sum(1 for k in init_weights(net) if not k.endswith(("running_mean", "running_var")))
        assert p["stats_total"] == 2 * sum(1 for op in net.all_ops() if type(op).__name__ == "BatchNorm")
        assert p["logits_max_rel"] < 1e-5 and p["grads_max_rel"] < 1e-4 and p["stats_max_rel"] < 1e-5
    # every leg against PyTorch's float64 step: every tensor within float32's band, a float32-sized error
    assert sorted(r.reference) == sorted(LEGS)
    relus = sum(1 for op in net.all_ops() if type(op).__name__ == "ReLU")  # one call per IR ReLU
    for leg, v in r.reference.items():
        assert v["passed"] and v["total"] == r.pairs[0]["grads_total"], (leg, v)
        assert v["grads_max_rel"] < 1e-4 and v["float32_own_max_rel"] < 1e-4, (leg, v)
        assert v["relu_calls"] == relus and v["decision_conflicts"] == 0, (leg, v)
    text = T.report_text(r)
    assert "gradients against PyTorch float64" in text and text.endswith(f"{len(r.pairs)}/{len(r.pairs)} pairs "
                                                                         "agree in training mode")


def test_planted_momentum_convention_fault_is_named(runner):
    """Keras BN given PyTorch's momentum unconverted: the forward and the gradients are unchanged, the
    running statistics after the step are not, and the report says so."""
    r = _run(_net("resnet20"), runner, backends=["torch", "keras-torch"],
             mutate={"keras-torch": faults.keras_bn_momentum_unconverted})
    (p,) = r.pairs
    assert p["checks"] == {"logits": True, "loss": True, "grads": True, "stats": False}
    assert p["stats_failing"] == p["stats_total"]
    text = T.format_train_report(r)
    assert "stats differ" in text and "momentum convention" in text and "FAIL" in text
    assert p["worst_stats"][0]["tensor"].endswith(("running_mean", "running_var"))
    assert all(v["passed"] for v in r.reference.values())  # the gradients are not what is wrong


def test_planted_gradient_blocking_op_is_named(runner):
    """A detached conv output in torch: same logits and statistics, and the gradients name the conv."""
    r = _run(_net("resnet20"), runner, backends=["torch", "keras-torch"],
             mutate={"torch": faults.torch_block_gradient_layer2_0_conv1})
    (p,) = r.pairs
    assert p["checks"] == {"logits": True, "loss": True, "grads": False, "stats": True}
    assert p["no_grad"] == {"a": ["layer2.0.conv1.weight"], "b": []}
    assert "layer2.0.conv1.weight" in [row["tensor"] for row in p["worst_grads"]]
    assert p["grads_max_rel"] > T.TRAIN_TOLERANCES["grads"]
    assert "no gradient at all in torch (blocked?): layer2.0.conv1.weight" in T.format_train_report(r)
    assert not r.reference["torch"]["passed"] and r.reference["keras-torch"]["passed"]
    assert "layer2.0.conv1.weight" in [row["tensor"] for row in r.reference["torch"]["worst"]]


def test_small_gradient_fault_fails_against_float64(runner):
    """layer3.2.conv2's weight gradient 1% too large in torch: within 2e-2 of the largest gradient (the
    pairwise bound passes it), but 1e-2 of the tensor's own scale is far outside float32's band around the
    float64 step, so the gradients fail and the report names the tensor."""
    r = _run(_net("resnet20"), runner, backends=["torch", "keras-torch"], strict_grads=True,
             mutate={"torch": faults.torch_grad_off_by_1pct_layer3_2_conv2})
    (p,) = r.pairs
    assert p["grads_max_rel"] < T.TRAIN_TOLERANCES["grads"]
    assert p["checks"] == {"logits": True, "loss": True, "grads": False, "stats": True} and not r.passed
    ref = r.reference["torch"]
    assert not ref["passed"] and ref["failing"] == 1 and r.reference["keras-torch"]["passed"]
    assert ref["worst"][0]["tensor"] == "layer3.2.conv2.weight" and 0.9e-2 < ref["worst"][0]["max_rel"] < 1.1e-2
    assert "layer3.2.conv2.weight" in T.report_text(r)
    # with --no-strict-grads the same finding is reported, not enforced (the pairwise bound decides)
    lax = _run(_net("resnet20"), runner, backends=["torch", "keras-torch"], strict_grads=False,
               mutate={"torch": faults.torch_grad_off_by_1pct_layer3_2_conv2})
    assert lax.passed and not lax.reference["torch"]["passed"]
    assert "not enforced" in T.report_text(lax) and "layer3.2.conv2.weight" in T.report_text(lax)


@pytest.mark.slow  # two 50-layer nets (the fast tier has resnet20 on every leg, under two kernel settings)
@pytest.mark.parametrize("name", ["seresnet50", "resnet50d"])
def test_se_and_avgpool_shortcut_nets_agree_small(machine_runner, name):
    """SE gates and ResNet-D average-pool shortcuts (gradient through exact divisors), 48x48 input; every
    ReLU call (the squeeze-excite's too) has its decisions matched between the legs."""
    net = _net(name, 48)
    r = _run(net, machine_runner, backends=["torch", LEGS[-1]])
    assert r.passed, T.format_train_report(r)
    calls = sum(1 for op in net.all_ops() if type(op).__name__ in ("ReLU", "SqueezeExcite"))
    assert all(v["relu_calls"] == calls and v["decision_conflicts"] == 0 for v in r.reference.values()), r.reference


def test_bad_input_is_one_clear_line(machine_runner):
    net = _net("resnet20")
    with pytest.raises(resnet_spec.ResNetSpecError, match="--batch of at least 2"):
        _run(net, machine_runner, batch=1)
    r = _run(net, machine_runner, backends=["torch", "onnx"])
    assert r.runs["onnx"].error.startswith("onnx: no training step") and not r.passed
    res = CliRunner().invoke(main, ["parity", "resnet20", "--train", "--dtype", "float16"])
    assert res.exit_code == 2 and "float32 only" in res.output


def test_cli_train_json():
    res = CliRunner().invoke(main, ["parity", "resnet20", "--train", "--backends", "torch,keras-torch", "--json", "-"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert rep["mode"] == "train" and rep["passed"] and rep["tolerances_rel"] == T.TRAIN_TOLERANCES
    assert rep["grad_band"] == T.GRAD_BANDS["float32"] and sorted(rep["against_float64"]) == ["keras-torch", "torch"]
    assert [(p["a"], p["b"]) for p in rep["pairs"]] == [("torch", "keras-torch")]
    assert rep["strict_grads"] is True  # the float64 gradient check decides by default


def test_all_lists_uninstalled_legs_and_unknown_legs_are_refused(monkeypatch):
    """'all' = every installed leg; an uninstalled one is listed as not installed, never a failure."""
    from resnet_spec.backends.keras import backend as keras_backend

    real = keras_backend.missing
    monkeypatch.setattr(keras_backend, "missing", lambda b: "jax is not installed (pip install 'resnet-spec[jax]')"
                        if b == "jax" else real(b))
    legs, skipped = P.parse_legs("all")
    assert "keras-jax" not in legs and skipped == {"keras-jax": "jax is not installed (pip install 'resnet-spec[jax]')"}
    assert P.parse_legs("torch,tf,keras-jax") == (["torch", "tensorflow", "keras-jax"], {})
    with pytest.raises(resnet_spec.ResNetSpecError, match="unknown backend 'keras-mxnet'"):
        P.parse_legs("torch,keras-mxnet")
    res = CliRunner().invoke(main, ["parity", "resnet20", "--backends", "torch,keras-mxnet"])
    assert res.exit_code == 2 and "unknown backend 'keras-mxnet'" in res.output


def _planted_kink(net, weights, relu="layer2.0.relu", bn="layer2.0.bn1", channel=3):
    """Shift ``bn``'s bias so that one entry of its (training-mode) output, which ``relu`` reads first,
    is 1e-7 of that call's scale above zero in PyTorch's float64 step: below float32's resolution."""
    import numpy as np

    from resnet_spec.backends import training

    seen = {}

    def keep(module, inputs, out):
        seen.setdefault("y", out.detach().double().numpy().copy())

    def capture(model):
        dict(model.named_modules())[bn].register_forward_hook(keep)
        return model
    x, g = P.make_input(net, 2, 0), T.make_loss_weights(net, 2, 0)
    training.torch_step(net, weights, x, g, dtype="float64", mutate=capture)
    y = seen["y"]
    c = y[:, channel]
    idx = np.unravel_index(np.argmin(np.abs(c - np.median(c))), c.shape)  # an entry in the middle of the channel
    weights = dict(weights)
    bias = weights[f"{bn}.bias"].astype(np.float64)
    bias[channel] += 1e-7 * np.abs(y).max() - c[idx]
    weights[f"{bn}.bias"] = bias.astype(np.float32)
    return weights, x, g, (int(idx[0]), channel, int(idx[1]), int(idx[2]))


def _relu_calls(net, weights, x, g):
    """[(module name, float64 input)] of every nn.ReLU call of PyTorch's float64 step, in call order,
    and that step's packed decisions."""
    from resnet_spec.backends import training

    calls = []

    def record(model):
        for name, m in model.named_modules():
            if type(m).__name__ == "ReLU":
                m.register_forward_pre_hook(lambda _m, inp, n=name: calls.append((n, inp[0].detach().numpy().copy())))
        return model
    step, _ = training.torch_step(net, weights, x, g, dtype="float64", mutate=record, decisions=True)
    return calls, step["relu"]


def _flipped_at(relu: str, index: tuple, to: float):
    """A ``mutate``: the first call of ``relu`` passes (``to`` = 1) or blocks (0) the gradient at ``index``
    whatever its input's sign (forward unchanged)."""
    def mutate(model):
        import torch

        m, first = model.get_submodule(relu), []
        m.inplace = False

        def hook(_m, inp, out):
            if first:
                return out
            first.append(True)
            s = torch.zeros_like(out)
            s[index] = to - float(inp[0][index] > 0)
            return out + s * (inp[0] - inp[0].detach())
        m.register_forward_hook(hook)
        return model
    return mutate


def test_a_leg_on_the_other_side_of_a_kink_is_judged_by_its_own_decision():
    """A leg whose step blocked the gradient at a ReLU input that float64 puts 1e-7 of its scale above zero
    (a float32 step may round it either way): against a reference that takes float64's decision it fails;
    against the reference built from its own decisions it passes, with that one decision adopted. A 1%
    error in a gradient downstream of the kink, which no decision explains, still fails; so does a
    decision that differs far from zero, which is not adopted and is counted as a conflict."""
    import numpy as np

    from resnet_spec.backends import train_reference, training

    net = _net("resnet20")
    weights, x, g, index = _planted_kink(net, init_weights(net, seed=0, random_bn=True))
    calls, own = _relu_calls(net, weights, x, g)
    site = next(i for i, (n, _) in enumerate(calls) if n == "layer2.0.relu")
    v = calls[site][1]
    assert 0 < v[index] <= 1e-6 * np.abs(v[:, index[1]]).max()  # the planted kink: passed in float64
    other, _ = training.torch_step(net, weights, x, g, dtype="float64", mutate=_flipped_at("layer2.0.relu", index, 0.0))
    leg = {"grads": {n: a.astype(np.float32) for n, a in other["grads"].items()}}
    mine = [dict(d) for d in own]
    blocked = training.unpack_decisions(mine[site])
    blocked[index] = False
    mine[site] = {"shape": blocked.shape, "bits": np.packbits(blocked, axis=None)}

    ref = train_reference.reference(net, weights, x, g, {"float64's": own, "leg's": mine})

    def judge(leg, which):
        r = ref["legs"][which]
        return T.against_reference(leg, {"float64": r, "own": ref["own"], "decisions": r["decisions"]})
    assert ref["legs"]["float64's"]["decisions"]["adopted"] == 0
    assert not judge(leg, "float64's")["passed"]
    got = judge(leg, "leg's")
    assert got["passed"] and got["decisions_adopted"] == 1 and got["decision_conflicts"] == 0, got["worst"]
    assert 0 < got["decisions_adopted_max_of_scale"] <= 1e-6
    downstream = {"grads": dict(leg["grads"])}
    downstream["grads"]["layer3.1.conv1.weight"] = downstream["grads"]["layer3.1.conv1.weight"] * 1.01
    bad = judge(downstream, "leg's")
    assert not bad["passed"] and bad["worst"][0]["tensor"] == "layer3.1.conv1.weight"
    # a decision flipped at an entry far from zero (the channel's largest) is no rounding effect: not adopted
    far = [dict(d) for d in mine]
    bits = training.unpack_decisions(far[site])
    big = np.unravel_index(np.argmax(np.abs(v[:, index[1]])), v[:, index[1]].shape)
    where = (big[0], index[1], big[1], big[2])
    bits[where] = not bits[where]
    far[site] = {"shape": bits.shape, "bits": np.packbits(bits, axis=None)}
    summary = train_reference.reference(net, weights, x, g, {"far": far})["legs"]["far"]["decisions"]
    assert summary["adopted"] == 1 and summary["conflicts"] == 1


def test_decisions_that_do_not_match_the_model_are_an_error():
    from resnet_spec.backends import train_reference

    net = _net("resnet20")
    weights = init_weights(net, seed=0, random_bn=True)
    x, g = P.make_input(net, 2, 0), T.make_loss_weights(net, 2, 0)
    _, own = _relu_calls(net, weights, x, g)
    ref = train_reference.reference(net, weights, x, g, {"short": own[:-1]})
    assert ref["legs"]["short"]["error"].startswith("its ReLU decisions do not match PyTorch's model")


class _ReferenceFails:
    """A runner whose float64 reference raises ``exc``; the legs run for real."""

    def __init__(self, runner, exc):
        self.runner, self.exc = runner, exc

    def call(self, backend, fn, *args, **kwargs):
        if fn is T.reference_worker:
            raise self.exc
        return self.runner.call(backend, fn, *args, **kwargs)


def test_reference_without_torch_is_said_and_a_crashed_one_fails(machine_runner):
    """No torch for the float64 reference (a Keras-only install): the legs are compared pairwise and the
    report says the check did not run; a reference worker that crashes fails the gradients instead."""
    from resnet_spec.errors import BackendUnavailable
    from resnet_spec.isolate import WorkerCrashed

    net = _net("resnet20")
    r = _run(net, _ReferenceFails(machine_runner, BackendUnavailable("torch is not installed")),
             backends=["torch", "keras-torch"])
    assert r.passed and r.reference == {} and r.to_json()["against_float64_not_run"]
    assert "float64 gradient check needs torch" in T.report_text(r) and "torch is not installed" in T.report_text(r)
    crashed = _run(net, _ReferenceFails(machine_runner, WorkerCrashed("the torch worker process crashed")),
                   backends=["torch", "keras-torch"])
    assert not crashed.passed and crashed.pairs[0]["checks"]["grads"] is False
    assert "float64 reference not run: the torch worker process crashed" in T.report_text(crashed)
