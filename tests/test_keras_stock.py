"""The ``.keras`` file ``convert --to tensorflow`` writes loads in plain Keras: ``keras.saving.load_model``
in a process that never imports resnet_spec, on TensorFlow, JAX and PyTorch, gives the spec's outputs
(backends/keras/stock.py: stock layers where this project's custom layers stood).

Specs: TINY_A (a -inf-padded ceil-mode max pool -> edge rows and columns; a partial-window average-pool
shortcut -> AveragePooling2D 'same'), TINY_B (option-A channel padding -> Reshape/ZeroPadding3D, written
channels_first), resnetv2_50 cut to one block per stage (timm's pre-activation stem: a max pool on
values that can be negative, where the padding value matters) and ecaresnet50d cut the same way (ECA:
Reshape, ZeroPadding1D, Conv1D; written channels_first), and resnetv2_50x1_bit cut the same way
(GroupNormalization; weight-standardized convs as Conv2D holding the standardized kernels), and resnetblur50 cut
the same way (blur pools: reflect padding as Cropping2D + Concatenate, the filter repeated 2x2 average pools).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import TINY_A, TINY_B, cli, rel_err, tiny_text

import resnet_spec
from resnet_spec.backends.keras import tf as tf_backend

# slow: convert runs a TensorFlow worker, each Keras backend loads the files in a process of its own (the
# fast tier's test_keras_trust.py writes and checks stock-layer files of TINY_A and TINY_B)
pytestmark = [pytest.mark.skipif(tf_backend.available() is not None, reason=str(tf_backend.available())),
              pytest.mark.slow]
torch = pytest.importorskip("torch")

from resnet_spec.backends.torch import backend as torch_backend  # noqa: E402

# The files against the PyTorch model on the same weights: measured at most 1.3e-6 (Keras on PyTorch),
# 7.8e-7 (JAX), 0.0 against this project's own Keras layers on TensorFlow (AMD EPYC, AVX-512); 2e-5 is
# the cross-framework tolerance of test_tf_backend.py, which a missing or misplaced padding row exceeds by
# orders of magnitude.
TOL = 2e-5

#: a child process that loads each file with Keras alone and prints its logits
_PLAIN = """
import json, sys
import numpy as np
import keras
out = {}
for path, x in json.loads(sys.argv[1]).items():
    model = keras.saving.load_model(path)
    # predict: one compiled program per model (on JAX, calling the model runs op by op, several times slower)
    out[path] = np.asarray(model.predict(np.load(x), verbose=0)).tolist()
assert not [m for m in sys.modules if m.split(".")[0] == "resnet_spec"], "resnet_spec was imported"
print(json.dumps({"backend": keras.backend.backend(), "out": out}))
"""

SPECS = {"tiny_a": (TINY_A, "channels_last"), "tiny_b": (TINY_B, "channels_first")}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{name: (net, .keras path, input .npy in the file's layout, torch logits)} from ``convert``."""
    root = tmp_path_factory.mktemp("stock")
    specs = {**SPECS, "resnetv2_50": (tiny_text("resnetv2_50", blocks=1, size=40), "channels_last"),
             "ecaresnet50d": (tiny_text("ecaresnet50d", blocks=1, size=40), "channels_first"),
             "skresnet34": (tiny_text("skresnet34", blocks=1, size=40), "channels_last"),
             # GroupNormalization, and Conv2D holding the standardized kernels (backends/standardize.py)
             "resnetv2_50x1_bit": (tiny_text("resnetv2_50x1_bit", blocks=1, size=40), "channels_last"),
             # blur pools: reflect padding as Cropping2D + Concatenate, the filter repeated 2x2 average pools
             "resnetblur50": (tiny_text("resnetblur50", blocks=1, size=40), "channels_last")}
    out = {}
    for i, (name, (text, data_format)) in enumerate(specs.items()):
        (root / f"{name}.yaml").write_text(text.replace("name: ", f"name: {name}_", 1) if "name:" in text else text)
        net = resnet_spec.load(str(root / f"{name}.yaml"))
        res = cli("convert", root / f"{name}.yaml", "--to", "tensorflow", "-o", root / name, "--seed", i,
                  "--data-format", data_format)
        assert res.exit_code == 0, res.output
        weights = resnet_spec.load_weights(net, str(root / name / f"{net.name}.safetensors"))
        x = np.random.default_rng(i).standard_normal((2, *net.input_shape)).astype(np.float32)
        ref = torch_backend.infer(net, weights, x)[0]["head"]
        feed = x if data_format == "channels_first" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        np.save(root / f"{name}_x.npy", feed)
        out[name] = (net, str(root / name / f"{net.name}.keras"), str(root / f"{name}_x.npy"), ref)
    return out


def test_files_name_no_custom_class(written):
    for _, path, _, _ in written.values():
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
        layers = config["config"]["layers"]
        assert all(layer.get("module") == "keras.layers" for layer in layers), path
        assert "resnet_spec" not in json.dumps(layers), path


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_plain_keras_loads_the_file(written, backend):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    files = {path: x for _, path, x, _ in written.values()}
    # cwd outside the repository: `import resnet_spec` could not find the source tree by accident
    proc = subprocess.run([sys.executable, "-c", _PLAIN, json.dumps(files)], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(next(iter(files.values()))), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["backend"] == backend
    for name, (net, path, _, ref) in written.items():
        got = np.asarray(res["out"][path], np.float32)
        assert got.shape == ref.shape and rel_err(ref, got) < TOL, (name, backend, rel_err(ref, got))


def test_the_package_imports_the_file_back(written, tmp_path):
    """import reads the stock file back into the same network (the edge-padded ceil-mode stem pool, the
    'same' average-pool shortcuts) and proves it; inspect shows its spec."""
    net, path, _, _ = written["tiny_a"]
    res = cli("inspect", path)
    assert res.exit_code == 0 and net.name in res.output, res.output
    res = cli("import", path, "--name", "back", "-o", tmp_path)
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    back = resnet_spec.load(str(tmp_path / "back.yaml"))
    # the same network at inference (TINY_A's drop path and dropout are training-only: not in a file)
    assert back.stem == net.stem and back.params == net.params  # the edge-padded ceil-mode max pool
    assert [b.shortcut for b in back.blocks] == [b.shortcut for b in net.blocks]  # the 'same' average pools
