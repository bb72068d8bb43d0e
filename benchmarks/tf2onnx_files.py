"""Real tf2onnx files imported back: keras.applications ResNet50 / ResNet50V2 (Keras 3) at 64 px, 10 classes:
without the softmax head, with random BN statistics and classifier bias and with the initial weights; and with random
statistics and the default softmax head (import leaves it out and proves the logits); each exported with
``model.export`` (SavedModel) then ``python -m tf2onnx.convert --saved-model --opset 17``, then ``resnet-spec
import``; and this project's own stock ``.keras`` (``convert --to tensorflow``, random BN statistics) of resnet18,
resnet50 (64 px) and resnet20 (32 px) through its SavedModel and tf2onnx the same way. Prints each import's parity
line (README, Input layouts, quotes them).

    python benchmarks/tf2onnx_files.py [--out DIR]

tf2onnx is a peer, never a dependency: as benchmarks/end_to_end.py does, it is installed once without its
dependencies into a cached folder (benchmarks/_venvs.py's cache) put on ``PYTHONPATH`` for the export only, so it
runs on this environment's TensorFlow and onnx.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from end_to_end import _peer_path  # noqa: E402  (benchmarks/ is sys.path[0])

EXPORT = r"""
import os, subprocess, sys
import numpy as np
import keras

out, rng = sys.argv[1], np.random.default_rng(0)
for name, how in [(n, h) for n in ("ResNet50", "ResNet50V2") for h in ("random", "initial", "softmax")]:
        activation = "softmax" if how == "softmax" else None  # keras.applications' default head, kept by tf2onnx
        model = getattr(keras.applications, name)(weights=None, input_shape=(64, 64, 3), classes=10,
                                                  classifier_activation=activation)
        for layer in model.layers if how != "initial" else ():
            if isinstance(layer, keras.layers.BatchNormalization):
                g, b, m, v = layer.get_weights()
                layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                                   rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])
            elif isinstance(layer, keras.layers.Dense):
                layer.set_weights([layer.get_weights()[0], rng.normal(0, 0.1, 10)])
        saved = os.path.join(out, f"{name}-{how}")
        model.export(saved, verbose=False)
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved, "--opset", "17",
                        "--output", saved + ".onnx"], check=True, capture_output=True)
        print(saved + ".onnx", flush=True)
"""


STOCK = {"resnet18": 64, "resnet50": 64, "resnet20": 32}


def _stock_files(out: str, env: dict) -> list:
    """This project's stock .keras of each :data:`STOCK` entry (random BN statistics) through tf2onnx."""
    import resnet_spec

    cli, paths = os.path.join(os.path.dirname(sys.executable), "resnet-spec"), []
    for name, size in STOCK.items():
        spec = os.path.join(out, f"{name}.yaml")
        with open(spec, "w") as fh:
            fh.write(f"extends: {name}\ninput: {{size: {size}}}\n")
        weights = os.path.join(out, f"{name}.safetensors")
        resnet_spec.save_weights(resnet_spec.init_weights(spec, seed=1, random_bn=True), weights)
        folder = os.path.join(out, f"stock-{name}")
        subprocess.run([cli, "convert", spec, "--to", "tensorflow", "--weights", weights, "-o", folder],
                       check=True, capture_output=True)
        saved = next(os.path.join(folder, d) for d in os.listdir(folder) if d.endswith("_savedmodel"))
        path = os.path.join(out, f"stock-{name}.onnx")
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved, "--opset", "17", "--output",
                        path], check=True, capture_output=True, env=env)
        paths.append(path)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for the files (default: a temporary one)")
    args = ap.parse_args()
    peer = _peer_path("tf2onnx")
    if peer is None:
        sys.exit("tf2onnx could not be installed from the package registry")
    out = args.out or tempfile.mkdtemp(prefix="tf2onnx-files-")
    os.makedirs(out, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": peer, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", EXPORT, out], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"export failed: {proc.stderr.strip()[-800:]}")
    cli = os.path.join(os.path.dirname(sys.executable), "resnet-spec")
    for path in proc.stdout.split() + _stock_files(out, env):
        res = subprocess.run([cli, "import", path, "-o", path[:-5] + "-imported"], capture_output=True, text=True)
        lines = [ln.strip() for ln in (res.stdout + res.stderr).splitlines()]
        shown = [ln for ln in lines if ln.startswith(("max_abs", "error:"))] or lines[-1:]
        print(f"{os.path.basename(path)}: {shown[0] if shown else res.returncode}")


if __name__ == "__main__":
    main()
