"""One Keras model on TensorFlow, JAX and PyTorch (Keras 3 backends).

Every Keras backend runs in its own worker process (KERAS_BACKEND is read once, at Keras import);
the PyTorch reference runs here. Checked per backend: every tap of two small nets that between them hold
every IR op and exact-semantics corner (conftest's TINY_A, TINY_B) against PyTorch; layer
names valid everywhere (no '.'); a ``.keras`` file written by ``convert`` under TensorFlow loads under
JAX and PyTorch with ``resnet_spec.load_keras`` and gives the same outputs; TensorFlow-only requests
say so plainly; and on JAX and PyTorch TensorFlow is never imported.

Tolerance: as tests/test_tf_backend.py (float32 summation-order noise, measured <= 7.4e-7 of the output
scale over the zoo); TOL = 2e-5.
"""

from __future__ import annotations

import importlib.util
import os

import keras_checks
import numpy as np
import pytest
from conftest import TINY_A, TINY_B, rel_err

import resnet_spec
from resnet_spec.backends.keras import model as keras_model
from resnet_spec.backends.torch import backend as torch_backend
from resnet_spec.isolate import run_isolated
from resnet_spec.weights import init_weights

TOL = 2e-5
LEGS = [b for b in ("jax", "torch") if keras_model.missing(b) is None]
pytestmark = pytest.mark.skipif(keras_model.missing("tensorflow") is not None, reason="needs TensorFlow to write .keras")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    nets = {"tiny_a": resnet_spec.load(TINY_A), "tiny_b": resnet_spec.load(TINY_B)}
    weights = {k: init_weights(n, seed=11, random_bn=True) for k, n in nets.items()}
    xs = {k: np.random.default_rng(3).standard_normal((2, *n.input_shape), dtype=np.float32) for k, n in nets.items()}
    written = run_isolated(keras_checks.write_keras, nets, weights, xs, str(tmp_path_factory.mktemp("keras")))
    refs = {k: torch_backend.infer(n, weights[k], xs[k], taps=True)[0] for k, n in nets.items()}
    return nets, weights, xs, written, refs


@pytest.fixture(scope="module", params=LEGS)
def leg(request, setup):
    nets, weights, xs, written, _ = setup
    files = {k: v["path"] for k, v in written.items()}
    return request.param, run_isolated(keras_checks.leg_suite, request.param, nets, weights, xs, files)


@pytest.mark.slow  # a TensorFlow worker writes the files, then one Keras worker per leg
def test_every_tap_matches_torch(leg, setup):
    backend, res = leg
    nets, _, _, _, refs = setup
    assert res["backend"] == backend
    for key, net in nets.items():
        taps = res["nets"][key]["taps"]
        assert list(taps) == list(net.tap_names())
        for tap in net.tap_names():
            assert rel_err(taps[tap], refs[key][tap]) < TOL, (backend, key, tap)
        assert res["nets"][key]["device"].startswith(f"cpu, {backend} ")


@pytest.mark.slow  # a TensorFlow worker writes the files, then one Keras worker per leg
def test_names_are_valid_on_every_backend_and_reversible(leg, setup):
    _, res = leg
    from resnet_spec.backends.keras.names import canonical_name, layer_name

    for key, net in setup[0].items():
        names = res["nets"][key]["layer_names"]
        assert not any("." in n for n in names) and len(set(names)) == len(names)
        params = [op.name for op in net.all_ops() if type(op).__name__ in ("Conv", "BatchNorm", "Linear")]
        assert {layer_name(n) for n in params} <= set(names)
        assert all(canonical_name(layer_name(n)) == n for n in params)
        assert all("/" in p for p in res["nets"][key]["variable_paths"])


@pytest.mark.slow  # a TensorFlow worker writes the files, then one Keras worker per leg
def test_keras_file_written_under_tensorflow_loads_here(leg, setup):
    _, res = leg
    nets, _, _, written, refs = setup
    for key in nets:
        got, tf_out = res["nets"][key]["loaded"], written[key]["y"]
        assert got.shape == tf_out.shape
        assert rel_err(got, tf_out) < TOL and rel_err(got, refs[key]["head"]) < TOL


@pytest.mark.slow  # a TensorFlow worker writes the files, then one Keras worker per leg
def test_tensorflow_only_requests_say_so_and_tensorflow_is_never_imported(leg):
    backend, res = leg
    e = res["errors"]
    assert e["build_tensorflow"][0] == "BackendUnavailable" and "needs TensorFlow" in e["build_tensorflow"][1]
    assert e["savedmodel"][0] == "BackendUnavailable" and "SavedModel" in e["savedmodel"][1]
    assert "needs TensorFlow" in e["savedmodel"][1] and "KERAS_BACKEND=tensorflow" in e["savedmodel"][1]
    assert e["other_leg"][0] == "BackendUnavailable" and "KERAS_BACKEND=tensorflow" in e["other_leg"][1]
    if not os.path.exists("/dev/nvidia0"):
        assert e["cuda"][0] == "BackendUnavailable" and "GPU" in e["cuda"][1], e["cuda"]
    assert res["tensorflow_imported"] is False


def test_jax_leg_is_tested_when_jax_is_installed():
    """CI installs '.[test]', which includes JAX: the JAX leg must not be silently skipped there."""
    if os.environ.get("CI"):
        assert importlib.util.find_spec("jax") is not None
    assert "torch" in LEGS
