"""GPU inference throughput of the generated models, each framework against torch eager in the same run.

    python benchmarks/bench_gpu.py                       # resnet50, batch 256, every part it can run
    python benchmarks/bench_gpu.py --parts torch,ort     # a subset

Parts, each in its own process (JAX preallocates GPU memory; TensorFlow and torch must not share one):
- ``torch``: our torch model, eager, float32 (TF32 off), float16 and bfloat16, channels_last for the
  half types (what torch recommends on tensor cores);
- ``ort``: our ONNX file in ONNX Runtime's CUDA execution provider, float32 (TF32 off) and float16
  (``resnet_spec``'s own float16 ONNX when the installed version can write it, else ONNX Runtime's
  float16 converter; the table says which), with and without ``prefer_nhwc``;
- ``keras-jax``: our Keras model on Keras 3's JAX backend, ``jax.jit`` of the stateless call, at
  float32 precision 'highest' (true float32) and at JAX's default precision (TF32-class matmuls).

Every part times inputs already on the GPU: warm-up passes, then the median of ``--rounds`` timed
rounds of ``--iters`` batches, synchronized before the clock is read. The report prints images/s and
the ratio to the torch figure of the same precision.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PARTS = ("torch", "ort", "keras-jax")


def _median_rate(step, sync, args) -> float:
    for _ in range(args.warmup):
        step()
    sync()
    rates = []
    for _ in range(args.rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step()
        sync()
        rates.append(args.iters * args.batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def _weights(net):
    import resnet_spec

    return resnet_spec.init_weights(net, seed=0, random_bn=True)


def part_torch(net, args) -> dict:
    import torch

    import resnet_spec

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = resnet_spec.build(net, "torch", weights=_weights(net)).eval().cuda()
    out = {"torch": torch.__version__}
    for dtype, cl in (("float32", False), ("float16", True), ("bfloat16", True)):
        fmt = torch.channels_last if cl else torch.contiguous_format
        m = model.to(getattr(torch, dtype), memory_format=fmt)
        x = torch.randn(args.batch, *net.input_shape, device="cuda", dtype=getattr(torch, dtype))
        x = x.to(memory_format=fmt)
        with torch.inference_mode():
            out[dtype] = _median_rate(lambda: m(x), torch.cuda.synchronize, args)
    return out


def _fp16_onnx(net, w):
    """Our own float16 ONNX when this version writes one, else ONNX Runtime's converter."""
    import resnet_spec

    try:
        return resnet_spec.build(net, "onnx", weights=w, dtype="float16"), "resnet-spec float16"
    except TypeError:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = resnet_spec.build(net, "onnx", weights=w)
        return convert_float_to_float16(proto, keep_io_types=True), "onnxruntime float16 converter"


def part_ort(net, args) -> dict:
    import numpy as np
    import onnxruntime as ort

    import resnet_spec

    w = _weights(net)
    out = {"onnxruntime": ort.__version__}
    protos = {"float32": (resnet_spec.build(net, "onnx", weights=w), "resnet-spec")}
    protos["float16"] = _fp16_onnx(net, w)
    x = np.random.default_rng(0).standard_normal((args.batch, *net.input_shape), dtype=np.float32)
    for dtype, (proto, how) in protos.items():
        for nhwc in ("0", "1"):
            opts = {"use_tf32": "0", "prefer_nhwc": nhwc, "cudnn_conv_algo_search": "EXHAUSTIVE"}
            sess = ort.InferenceSession(proto.SerializeToString(),
                                        providers=[("CUDAExecutionProvider", opts), "CPUExecutionProvider"])
            xin = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding = sess.io_binding()
            binding.bind_ortvalue_input(sess.get_inputs()[0].name, xin)
            binding.bind_output(sess.get_outputs()[0].name, "cuda")
            rate = _median_rate(lambda: sess.run_with_iobinding(binding), binding.synchronize_outputs, args)
            out[f"{dtype}{' prefer_nhwc' if nhwc == '1' else ''}"] = rate
        out[f"{dtype} made by"] = how
    return out


def part_keras_jax(net, args) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    import resnet_spec

    model = resnet_spec.build(net, "keras", weights=_weights(net))
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    c, h, w = net.input_shape
    x = jax.device_put(np.random.default_rng(0).standard_normal((args.batch, h, w, c), dtype=np.float32))
    out = {"keras": keras.__version__, "jax": jax.__version__}
    for label, precision in (("float32 highest", "highest"), ("default precision", "default")):
        with jax.default_matmul_precision(precision):
            @jax.jit
            def fwd(tv, ntv, x):
                y, _ = model.stateless_call(tv, ntv, x, training=False)
                return y

            last = []

            def step():
                last[:] = [fwd(tv, ntv, x)]

            def sync():
                for y in last:
                    y.block_until_ready()

            out[label] = _median_rate(step, sync, args)
    return out


def run_part(part: str, args) -> dict:
    """Run one part in a fresh process and return its JSON result (or the error it printed)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_part", part, "--model", args.model,
           "--batch", str(args.batch), "--iters", str(args.iters), "--rounds", str(args.rounds),
           "--warmup", str(args.warmup)]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(lines[-1])


def report(results: dict, args) -> str:
    t = results.get("torch", {})
    rows = ["| framework | setting | img/s | ratio to torch (same precision) |", "|---|---|---:|---:|"]
    ref_of = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
              "float32 highest": "float32", "default precision": "bfloat16"}
    for part, res in results.items():
        if "error" in res:
            rows.append(f"| {part} | did not run: {res['error']} | | |")
            continue
        for key, val in res.items():
            if not isinstance(val, float):
                continue
            ref = t.get(ref_of.get(key.split(" prefer")[0], ""), None)
            ratio = f"{val / ref:.3f}" if isinstance(ref, float) else "-"
            rows.append(f"| {part} | {key} | {val:,.0f} | {ratio} |")
    versions = {k: v for res in results.values() for k, v in res.items() if isinstance(v, str) and k != "error"}
    head = (f"{args.model}, batch {args.batch}, input on the GPU, median of {args.rounds} rounds x "
            f"{args.iters} batches; {json.dumps(versions)}")
    return head + "\n\n" + "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the raw figures here")
    p.add_argument("--_part", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import resnet_spec

    if args._part:
        net = resnet_spec.load(args.model)
        fn = {"torch": part_torch, "ort": part_ort, "keras-jax": part_keras_jax}[args._part]
        print(json.dumps(fn(net, args)), flush=True)
        return
    results = {}
    for part in args.parts.split(","):
        results[part] = run_part(part, args)
        print(f"# {part}: {results[part]}", flush=True)
        if args.json:  # after every part: an interrupted run keeps the parts it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    try:
        import torch

        print(f"\n# device {torch.cuda.get_device_name(0)}, driver via nvidia-smi")
    except Exception:  # noqa: BLE001 - informational only
        pass
    print(report(results, args))


if __name__ == "__main__":
    main()
