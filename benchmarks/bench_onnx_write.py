"""Why backends.onnx.io streams the weights: time to write one model's ``.onnx`` three ways.

1. ``backends.onnx.backend.convert`` (the weights streamed from numpy arrays around the serialised graph);
2. ``backends.onnx.backend.build`` + ``SerializeToString`` + one write (what onnx's own single-file save does);
3. ``backends.onnx.backend.build`` + ``onnx.save_model(..., save_as_external_data=True)`` (onnx's external data).

Best of ``--repeats``, interleaved. The result is quoted in ``backends/onnx/io.py``.

Usage:  python benchmarks/bench_onnx_write.py [--model wide_resnet101_2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wide_resnet101_2")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import onnx

    import resnet_spec
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.weights import init_weights

    net = resnet_spec.load(args.model)
    w = init_weights(net, seed=0, random_bn=True)
    d = tempfile.mkdtemp()

    def serialize(path):
        with open(path, "wb") as fh:
            fh.write(ob.build(net, w).SerializeToString())

    ways = {
        "convert (streamed)": lambda: ob.convert(net, w, os.path.join(d, "s"), force=True),
        "build + SerializeToString": lambda: serialize(os.path.join(d, "o.onnx")),
        "build + onnx.save_model external": lambda: onnx.save_model(
            ob.build(net, w), os.path.join(d, "e.onnx"), save_as_external_data=True,
            all_tensors_to_one_file=True, location="e.onnx.data", size_threshold=1024),
    }
    best = {}
    for _ in range(args.repeats):
        for label, fn in ways.items():
            t = time.perf_counter()
            fn()
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - t)
    base = best["convert (streamed)"]
    for label, s in best.items():
        print(f"{args.model}: {label:<36} {s:6.2f} s  ({s / base:.2f}x the streamed write)")


if __name__ == "__main__":
    main()
