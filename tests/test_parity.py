"""Parity checker: CLI, diagnosis with planted faults, device refusal, crashes, import orders, random specs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

import resnet_spec
from resnet_spec import parity as P
from resnet_spec.cli import main
from resnet_spec.weights import init_weights

import counting
import faults
from strategies import specs

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ALL = ("torch", "onnx", "tensorflow")


@pytest.fixture(scope="module")
def runner():
    with P.Runner() as r:
        yield r


def _run(name_or_net, runner, **kw):
    net = resnet_spec.load(name_or_net)
    w = init_weights(net, seed=0, random_bn=True)
    return P.run(net, w, runner=runner, **kw)


def test_compare_metrics():
    a = np.array([[1.0, 2.0, 4.0]])
    c = P.compare(a, a + np.array([[0, 0, 0.04]]))
    assert c["max_abs"] == pytest.approx(0.04) and c["max_rel"] == pytest.approx(0.01) and c["top1"] == 1.0
    assert P.compare(a, a[:, :2])["max_rel"] == float("inf")
    assert P.compare(a, a * np.nan)["max_rel"] == float("inf")
    assert P.compare(a, a[:, ::-1])["top1"] == 0.0


# slow: every installed leg (Keras on TensorFlow, JAX and PyTorch included), each in its own worker
@pytest.mark.slow
def test_cli_parity_json(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["parity", "resnet20", "--batch", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    legs, skipped = P.parse_legs("all")  # every installed leg; the others are listed, not failed
    n = len(legs) * (len(legs) - 1) // 2
    assert f"PASS: {n}/{n} pairs" in res.output and "TF32 is off" in res.output
    rep = json.loads(out.read_text())
    assert rep["passed"] and rep["batch"] == 3 and len(rep["pairs"]) == n and rep["not_installed"] == skipped
    assert set(rep["backends"]) == set(legs) and all(b["error"] is None for b in rep["backends"].values())
    assert {"torch", "onnx", "keras-tensorflow", "keras-torch"} <= set(legs)
    for p in rep["pairs"]:
        assert p["max_rel"] <= P.TOLERANCES["float32"] and p["top1"] == 1.0


# slow: every installed leg (Keras on TensorFlow, JAX and PyTorch included), each in its own worker
@pytest.mark.slow
def test_cli_reduced_precision_and_a_backend_that_cannot_run(tmp_path):
    """bfloat16 runs in torch and Keras within its tolerance; the ONNX backend builds float32 graphs
    only, so naming it with --dtype float16 reports why, still compares the others, and exits 1."""
    out = tmp_path / "bf16.json"
    res = CliRunner().invoke(main, ["parity", "resnet20", "--backends", "torch,tensorflow", "--dtype", "bfloat16",
                                    "--seed", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["dtype"] == "bfloat16" and rep["seed"] == 3 and rep["tf32"] is None and rep["passed"]
    assert 0 < rep["pairs"][0]["max_rel"] <= P.TOLERANCES["bfloat16"]
    res = CliRunner().invoke(main, ["parity", "resnet20", "--dtype", "float16", "--json", "-"])
    assert res.exit_code == 1
    rep = json.loads(res.output[res.output.index("{"):])
    assert rep["not_run"] == ["onnx"] and "float32 graphs only" in rep["backends"]["onnx"]["error"]
    ran = [b for b in rep["backends"] if b != "onnx"]  # 'all': every installed leg (torch and the Keras legs)
    assert {"torch", "keras-tensorflow"} <= set(ran)
    assert len(rep["pairs"]) == len(ran) * (len(ran) - 1) // 2
    assert all(p["passed"] and "onnx" not in (p["a"], p["b"]) for p in rep["pairs"]), rep["pairs"]


@pytest.mark.slow
def test_cli_parity_resnet50_passes_on_cpu():
    res = CliRunner().invoke(main, ["parity", "resnet50", "--json", "-"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert rep["passed"] and all("cpu" in b["device"] for b in rep["backends"].values())


def test_layers_flag_lists_every_tap(runner):
    r = _run("resnet20", runner, layers=True, backends=("torch", "onnx"))
    (p,) = r.pairs
    assert [row["tap"] for row in p["layers"]] == list(resnet_spec.load("resnet20").tap_names())
    assert p["first_divergence"] is None and r.passed
    assert "every tap agrees" in P.format_report(r)


@pytest.mark.parametrize("backend,fault,block", [
    ("torch", faults.torch_scale_layer3_1, "layer3.1"),
    ("onnx", faults.onnx_shift_padding_layer2_0, "layer2.0"),
    ("tensorflow", faults.tf_scale_layer1_1, "layer1.1"),
])
def test_planted_fault_is_located(runner, backend, fault, block):
    """One wrong weight / padding in one backend: the report fails and names that block."""
    r = _run("resnet20", runner, mutate={backend: fault})
    assert not r.passed
    for p in r.pairs:
        involved = backend in (p["a"], p["b"])
        assert p["passed"] is (not involved)
        if involved:
            assert p["first_divergence"] == block, p
    text = P.format_report(r)
    assert f"first divergence: {block}" in text and "FAIL" in text


def test_bad_weights_are_one_error_naming_the_tensor(runner):
    net = resnet_spec.load("resnet20")
    w = init_weights(net, seed=0)
    w["fc.weight"] = w["fc.weight"][:, :3]
    with pytest.raises(resnet_spec.WeightsError, match=r"tensor 'fc.weight' has shape \(10, 3\), the spec expects \(10, 64\)"):
        P.run(net, w, runner=runner)


def test_cuda_request_is_refused_per_backend(runner):
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a GPU is present")
    r = _run("resnet20", runner, device="cuda")
    assert not r.passed
    for name, run in r.runs.items():
        assert run.error and ("cuda" in run.error.lower() or "gpu" in run.error.lower()), (name, run.error)
    assert "fewer than two backends ran" in P.format_report(r)


def test_worker_crash_is_reported_not_fatal(runner):
    r = _run("resnet20", runner, mutate={"onnx": faults.crash})
    assert "crashed" in r.runs["onnx"].error
    assert [(p["a"], p["b"]) for p in r.pairs] == [("torch", "tensorflow")] and r.pairs[0]["passed"]
    assert not r.passed and r.not_run == ["onnx"]  # a requested comparison that was not made never passes
    assert "FAIL: 1/1 pairs within max rel 1e-04; not run: onnx" in P.format_report(r)
    # the crashed worker is replaced on the next call
    assert _run("resnet20", runner, backends=("torch", "onnx")).passed


@pytest.mark.slow
def test_every_backend_order(runner):
    for order in itertools.permutations(ALL):
        r = _run("resnet20", runner, backends=order)
        assert r.passed and [p["a"] for p in r.pairs] == [order[0], order[0], order[1]]


# The caller may have imported and run frameworks in any order before asking for parity (on the
# reference machine torchvision-after-TensorFlow segfaults in one process). Parity runs every backend
# in a fresh worker, so none of that can reach it. The three legs of the frameworks these orders mix
# (PyTorch, ONNX Runtime, TensorFlow); the JAX and Keras-on-PyTorch legs add a minute and no framework.
IMPORT_ORDERS = {
    "tf-ran-then-parity": "import tensorflow as tf\ntf.keras.layers.Dense(2)(tf.zeros((1, 3)))\n",
    "torchvision-then-tf": "import torch, torchvision\nimport tensorflow as tf\n"
                           "tf.keras.layers.Dense(2)(tf.zeros((1, 3)))\n",
    "ort-tf-torch": "import onnxruntime\nimport tensorflow as tf\ntf.zeros(1)\nimport torch\n",
    "tf-ran-then-torchvision-in-parent": "import tensorflow as tf\ntf.keras.layers.Dense(2)(tf.zeros((1, 3)))\n"
                                         "import sys\nimport resnet_spec.backends.torch.backend\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("prelude", list(IMPORT_ORDERS.values()), ids=list(IMPORT_ORDERS))
def test_parity_survives_callers_import_order(prelude, tmp_path):
    script = prelude + (
        "import resnet_spec\nfrom resnet_spec import parity\n"
        "net = resnet_spec.load('resnet20')\n"
        "r = parity.run(net, resnet_spec.init_weights(net, random_bn=True), batch=1,\n"
        "               backends=('torch', 'onnx', 'keras-tensorflow'))\n"
        "print('PASSED' if r.passed else 'FAILED')\n")
    # a spawned worker re-imports the caller's main module: guard it, as any multiprocessing user must
    script = "if __name__ == '__main__':\n" + "".join("    " + ln + "\n" for ln in script.splitlines())
    path = tmp_path / "caller.py"
    path.write_text(script)
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert res.returncode == 0 and "PASSED" in res.stdout, res.stdout + res.stderr[-3000:]


# -- random specs ---------------------------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(doc=specs())
def test_random_specs_agree_everywhere(runner, doc):
    import yaml

    from resnet_spec.errors import SpecError

    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        net = resnet_spec.load(text)
    except SpecError as exc:  # the generator may draw a combination the semantic rules refuse
        assert any(m in str(exc) for m in ("shrink", "divisible", "feature map", "shortcut gives",
                                           "average pool (ceil_mode: false)")), (text, exc)
        return
    w = init_weights(net, seed=1, random_bn=True)
    assert sum(v.size for k, v in w.items() if not k.endswith(("running_mean", "running_var"))) == net.params
    for backend in ALL:  # each framework's own count of what it built
        counts = runner.call(backend, counting.native_counts, backend, net.spec_yaml, w)
        assert counts == {"params": net.params, "buffers": net.buffers}, (backend, counts, text)
    r = P.run(net, w, runner=runner, layers=True, batch=2)
    assert all(run.error is None for run in r.runs.values()), {n: x.error for n, x in r.runs.items()}
    shapes = net.tap_shapes()
    for run in r.runs.values():
        for tap, arr in run.outputs.items():
            assert arr.shape[1:] == tuple(shapes[tap]), (run.name, tap)
    assert r.passed, (text, P.format_report(r))
