"""Benchmark the ONNX backend against torch.onnx.export of the torchvision models.

For each model (default resnet50 and resnet152, at the spec's 224x224 input):

1. Time to produce the ``.onnx`` file from a model already in memory: resnet-spec's
   ``backends.onnx.backend.convert`` (weights checked, BN folded, graph built with onnx.helper, onnx.checker
   on the graph, weights streamed into an atomically renamed file)
   against ``torch.onnx.export`` of the torchvision model with the same weights, with the dynamo
   exporter (``dynamo=True``) and the legacy TorchScript one (``dynamo=False``). All three write one
   file at opset 18 with a dynamic batch dimension. Each exporter first converts a small warm-up
   model so that one-time import and tracing set-up costs are not charged to the first model. An
   exporter that fails is reported with its error text. Each producer runs ``--repeats`` times,
   interleaved with the others, each time into a new folder; the best time is reported. No producer
   fsyncs its file.
2. ONNX Runtime CPU latency (default session options: ORT_ENABLE_ALL, one thread per core) of each
   file at batch 1 and batch 8, measured round-robin over the files so that background load on a
   shared machine hits all of them alike; the median is reported with our file's latency as a ratio
   of the exported one's (< 1: ours is faster).
3. As a sanity check that the files compute the same function, the max relative difference of
   their logits against ours.

Usage:  python benchmarks/bench_onnx.py [--models resnet50,resnet152] [--repeats 3] [--runs-b1 20] [--runs-b8 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

from _machine import cpu_model  # noqa: E402  (benchmarks/ is sys.path[0])

OPSET = 18




def _export_torch(model, path, dynamo: bool):
    import torch

    x = torch.randn(2, 3, 224, 224)
    kw = dict(input_names=["input"], output_names=["logits"], opset_version=OPSET, dynamo=dynamo)
    if dynamo:
        kw.update(dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}}, external_data=False)
    else:
        kw.update(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    # The dynamo exporter prints progress lines and the legacy one a deprecation warning: not ours.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, **kw)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def produce(name: str, workdir: str, warm: bool, repeats: int) -> dict:
    """Time each way of producing ``name``'s ONNX file; returns {method: (seconds or None, path or error)}."""
    import torch
    import torchvision

    import resnet_spec
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.weights import init_weights

    net = resnet_spec.load(name)
    weights = init_weights(net, seed=0, random_bn=True)
    tv = getattr(torchvision.models, name)(weights=None).eval()
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)

    if warm:  # one-time costs (imports, exporter set-up) on a small model first
        small = resnet_spec.load("resnet18")
        ob.convert(small, init_weights(small), os.path.join(workdir, "warm"), force=True, opset=OPSET)
        for dynamo in (True, False):
            try:
                _export_torch(torchvision.models.resnet18(weights=None).eval(),
                              os.path.join(workdir, f"warm_{dynamo}.onnx"), dynamo)
            except Exception:  # noqa: BLE001 - reported when the real export fails too
                pass

    producers = {
        "resnet-spec": lambda d: ob.convert(net, weights, d, opset=OPSET)[0],
        "torch dynamo=True": lambda d: _export_torch(tv, os.path.join(d, f"{name}.onnx"), True),
        "torch dynamo=False": lambda d: _export_torch(tv, os.path.join(d, f"{name}.onnx"), False),
    }
    # Best of ``repeats``, interleaved, each into a fresh folder: background load and disk write-back
    # on a shared machine then hit every producer alike.
    best, errors, last = {}, {}, {}
    for rep in range(repeats):
        for label, fn in producers.items():
            if label in errors:
                continue
            d = os.path.join(workdir, name, f"{label.replace(' ', '_').replace('=', '')}_{rep}")
            os.makedirs(d)  # new each time: nothing to replace
            t = time.perf_counter()
            try:
                fn(d)
            except Exception as exc:  # noqa: BLE001 - the benchmark reports, it does not crash
                errors[label] = _first_line(exc)
                traceback.print_exc(limit=2, file=sys.stderr)
                continue
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - t)
            if label in last:
                shutil.rmtree(os.path.dirname(last[label]))
            last[label] = os.path.join(d, f"{name}.onnx")
    return {k: (best[k], last[k]) if k in best else (None, errors[k]) for k in producers}


def latency(paths: dict, batch: int, runs: int) -> tuple:
    """Median seconds per run for each file, round-robin; plus each file's logits on one input."""
    import onnxruntime as ort

    sessions = {k: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    outs = {}
    for k, s in sessions.items():  # warm-up
        outs[k] = s.run(None, {s.get_inputs()[0].name: x})[0]
    times = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            feed = {s.get_inputs()[0].name: x}
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,resnet152", help="comma-separated torchvision/zoo names")
    ap.add_argument("--runs-b1", type=int, default=20, help="timed runs at batch 1 (per file)")
    ap.add_argument("--runs-b8", type=int, default=5, help="timed runs at batch 8 (per file)")
    ap.add_argument("--repeats", type=int, default=3, help="productions per producer (best is reported)")
    ap.add_argument("--no-warmup", action="store_true", help="charge first-use costs to the first model")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import torch
    import torchvision

    import resnet_spec
    from resnet_spec.parity import rel_error

    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; python {platform.python_version()}")
    print(f"resnet-spec {resnet_spec.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}; opset {OPSET}")
    print(f"command: python benchmarks/bench_onnx.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for i, name in enumerate(m.strip() for m in args.models.split(",") if m.strip()):
            made = produce(name, workdir, warm=(i == 0 and not args.no_warmup), repeats=args.repeats)
            ok = {k: p for k, (t, p) in made.items() if t is not None}
            lat1, outs = latency(ok, 1, args.runs_b1)
            lat8, _ = latency(ok, 8, args.runs_b8)
            ours_t = made["resnet-spec"][0]
            for k, (t, p) in made.items():
                if t is None:
                    rows.append((name, k, "FAILED: " + p, "", "", "", "", "", ""))
                    continue
                ref = outs["resnet-spec"].astype(np.float64)
                diff = rel_error(ref, outs[k])
                rows.append((name, k, f"{t:.2f}", f"{t / ours_t:.1f}x", f"{os.path.getsize(p) / 2**20:.1f}",
                             f"{lat1[k] * 1e3:.1f}", f"{lat1['resnet-spec'] / lat1[k]:.2f}",
                             f"{lat8[k] * 1e3:.0f}", f"{lat8['resnet-spec'] / lat8[k]:.2f}"
                             + ("" if k == "resnet-spec" else f"  (logits differ {diff:.1e})")))
    head = ("model", "producer", "produce s", "vs ours", "MiB", "b1 ms", "ours/this b1", "b8 ms", "ours/this b8")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
