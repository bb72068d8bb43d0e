"""int8 against float32 on ONNX Runtime CPU and in LiteRT (TFLite; in a TensorFlow worker process).

    python benchmarks/int8.py --model resnet50 --size 224 --threads 2

Seeded random weights with non-trivial BN statistics (``random_bn``), the float32 ONNX file and the
int8 file of ``convert --dtype int8`` (calibrated on the 32 synthetic images convert uses by default),
both run in ONNX Runtime (ORT_ENABLE_ALL, ``--threads`` intra-op threads) on ``--images`` other
synthetic images (verify's seed-0 standard normal). Accuracy: top-1 and top-5 agreement of the int8
file with the float32 file, max and mean |int8 - float32| / max |float32|. These are synthetic inputs
and random weights: the figures say how far int8 moves this network's function, not its ImageNet
accuracy. Latency: batch 1, median of ``--repeats`` runs after warm-up, the files in the same process
taking turns run by run, ratio int8 / float32. ONNX also measures a U8S8 file (uint8 activations, the
other choice ONNX Runtime offers) beside convert's S8S8 one. TFLite: the same, the files of ``convert --to tflite`` (NHWC
input, the same images transposed), LiteRT with ``--threads`` threads (XNNPACK, its default delegate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _net(model: str, size: int):
    import yaml

    import resnet_spec
    from resnet_spec.resolve import load_network

    spec = yaml.safe_load(resnet_spec.load(model).spec_yaml)
    spec.setdefault("input", {})["size"] = size
    return load_network(yaml.safe_dump(spec, sort_keys=False))


def _interleaved(runs: dict, x, repeats: int) -> dict:
    """Median seconds per batch-1 run of each of ``runs``, after 3 warm-up runs each, the runs taking
    turns (so a load that comes and goes on a shared machine falls on all of them alike)."""
    for run in runs.values():
        for _ in range(3):
            run(x[:1])
    times: dict = {k: [] for k in runs}
    for i in range(repeats):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run(x[i % len(x): i % len(x) + 1])
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    from resnet_spec.verify import int8_metrics

    return int8_metrics(ref, got)


def onnx_figures(net, weights, x, threads: int, repeats: int) -> dict:
    import onnxruntime as ort

    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.backends.onnx.int8 import quantize
    from resnet_spec.calibration import synthetic

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ob.convert(net, weights, os.path.join(tmp, "f32"))
        t0 = time.perf_counter()
        ob.convert(net, weights, os.path.join(tmp, "i8"), dtype="int8", calibration=synthetic(net.input_shape))
        out["quantize_s"] = round(time.perf_counter() - t0, 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        os.makedirs(os.path.join(tmp, "u8"))  # U8S8 (uint8 activations), for comparison
        quantize(os.path.join(tmp, "f32", f"{net.name}.onnx"), os.path.join(tmp, "u8", f"{net.name}.onnx"),
                 synthetic(net.input_shape), "input", activations="uint8")
        sess = {k: ort.InferenceSession(os.path.join(tmp, k, f"{net.name}.onnx"), so,
                                        providers=["CPUExecutionProvider"]) for k in ("f32", "i8", "u8")}
        runs = {k: (lambda xin, s=s: s.run(None, {"input": xin})[0]) for k, s in sess.items()}
        logits = {k: np.concatenate([r(x[i: i + 1]) for i in range(len(x))]) for k, r in runs.items()}
        out.update(agreement(logits["f32"], logits["i8"]))
        out["u8s8"] = agreement(logits["f32"], logits["u8"])
        lat = _interleaved(runs, x, repeats)
    out.update({"f32_ms": lat["f32"] * 1e3, "int8_ms": lat["i8"] * 1e3, "ratio": lat["i8"] / lat["f32"],
                "u8s8_ms": lat["u8"] * 1e3, "u8s8_ratio": lat["u8"] / lat["f32"],
                "runtime": f"onnxruntime {ort.__version__}"})
    return out


def tflite_figures(spec_yaml: str, weights, x, threads: int, repeats: int) -> dict:
    """The same for the float32 and int8 ``.tflite`` files, in LiteRT (runs in a TensorFlow worker)."""
    from ai_edge_litert import __version__ as litert_version
    from ai_edge_litert.interpreter import Interpreter

    from resnet_spec.backends.keras import tflite
    from resnet_spec.calibration import synthetic
    from resnet_spec.resolve import UNCHECKED, load_network

    net = load_network(spec_yaml, UNCHECKED)
    t0 = time.perf_counter()
    data = {"i8": tflite.to_bytes(net, weights, dtype="int8", calibration=synthetic(net.input_shape))}
    out = {"quantize_s": round(time.perf_counter() - t0, 1)}
    data["f32"] = tflite.to_bytes(net, weights)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    runs = {}
    for k, d in data.items():
        it = Interpreter(model_content=d, num_threads=threads)
        it.allocate_tensors()
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

        def run(xin, it=it, i=i, o=o):
            it.set_tensor(i, np.ascontiguousarray(xin))
            it.invoke()
            return np.array(it.get_tensor(o))
        runs[k] = run
    logits = {k: np.concatenate([r(xh[j: j + 1]) for j in range(len(xh))]) for k, r in runs.items()}
    out.update(agreement(logits["f32"], logits["i8"]))
    lat = _interleaved(runs, xh, repeats)
    out.update({"f32_ms": lat["f32"] * 1e3, "int8_ms": lat["i8"] * 1e3, "ratio": lat["i8"] / lat["f32"],
                "runtime": f"LiteRT {litert_version}"})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-tflite", action="store_true", help="ONNX Runtime only")
    a = ap.parse_args(argv)
    from _machine import cores, cpu_model
    from resnet_spec.weights.init import init_weights

    net = _net(a.model, a.size)
    weights = init_weights(net, seed=0, random_bn=True)
    x = np.random.default_rng(0).standard_normal((a.images, *net.input_shape), dtype=np.float32)
    res = {"model": a.model, "size": a.size, "threads": a.threads, "images": a.images, "repeats": a.repeats,
           "machine": f"{cpu_model()}, {cores()} cores ({platform.machine()})",
           "onnx": onnx_figures(net, weights, x, a.threads, a.repeats)}
    if not a.no_tflite:
        from resnet_spec.isolate import run_isolated

        res["tflite"] = run_isolated(tflite_figures, net.spec_yaml, weights, x, a.threads, a.repeats)
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
