"""Inference throughput of the generated Keras model on each Keras backend, against the PyTorch model.

Every leg runs in its own worker process (one framework per process) on the same canonical weights, the
same batch (NCHW for torch, the same values NHWC for Keras), float32, on the CPU:

* ``torch``: the generated ``torch.nn.Module``, eval mode, under ``torch.inference_mode()``;
* ``keras-tensorflow``: ``tf.function(model(x, training=False))`` (graph mode);
* ``keras-tensorflow-xla``: the same with ``jit_compile=True`` (XLA);
* ``keras-jax``: ``jax.jit`` of ``model.stateless_call(trainable, non_trainable, x, training=False)``;
* ``keras-torch``: ``model(x, training=False)`` under ``torch.no_grad()``: eager, as Keras runs
  ``predict`` on its PyTorch backend by default (``jit_compile`` is off there by default).

Each leg is built and warmed up first (compilation excluded). Then ``--rounds`` rounds: in each round every
leg, in a rotating order, times ``--batches`` consecutive batches (outputs materialised on the host)
while the other workers sit idle, so drift in a shared machine's load hits every leg alike. Reported:
median seconds per batch, images/s, and each leg's throughput relative to torch's (higher is faster),
plus each leg's max relative output difference from torch as a sanity check.

    python benchmarks/bench_keras_backends.py                         # resnet50 and resnet20, batch 8
    python benchmarks/bench_keras_backends.py --models resnet50 --batch 16 --rounds 9 --out run.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from _machine import cores, cpu_model  # noqa: E402  (benchmarks/ is sys.path[0])

LEGS = ("torch", "keras-tensorflow", "keras-tensorflow-xla", "keras-jax", "keras-torch")
_STATE = {}  # in each worker: the leg's compiled call and its input


def _torch_fn(net, w, x):
    import torch

    from resnet_spec.backends.torch import backend as torch_backend

    model = torch_backend.build(net, w).eval()
    t = torch.from_numpy(x)

    def fn():
        with torch.inference_mode():
            return model(t).numpy()
    return fn, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def _keras_fn(leg, net, w, x):
    from resnet_spec.backends import prepare

    backend = leg.split("-")[1]
    prepare(f"keras-{backend}", net.spec_yaml)
    from resnet_spec.backends.keras.backend import Leg, to_numpy

    k = Leg(backend)
    if backend == "tensorflow":  # thread pools are fixed when TensorFlow's runtime starts
        _tf_threads(int(os.environ.get("OMP_NUM_THREADS", "0")))
    model = k.build(net, w)
    feed = x.transpose(0, 2, 3, 1).copy()
    if backend == "tensorflow":
        import tensorflow as tf

        f = tf.function(lambda t: model(t, training=False), jit_compile=leg.endswith("xla"))
        t = tf.constant(feed)
        return (lambda: f(t).numpy()), k.versions() + (", XLA" if leg.endswith("xla") else ", tf.function")
    if backend == "jax":
        import jax

        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        f = jax.jit(lambda a, b, t: model.stateless_call(a, b, t, training=False)[0])
        t = jax.device_put(feed)
        return (lambda: to_numpy(f(tv, ntv, t).block_until_ready())), k.versions() + ", jax.jit"
    import torch

    t = torch.from_numpy(feed)

    def fn():
        with torch.no_grad():
            return to_numpy(model(t, training=False))
    return fn, k.versions() + ", eager, no_grad"


def limit_threads(n: int) -> None:
    """In a fresh worker, before any framework is imported: at most ``n`` compute threads (0: defaults)."""
    if not n:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    if n == 1:  # XLA's CPU runtime (JAX, TensorFlow XLA): no Eigen thread pool
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    import torch

    torch.set_num_threads(n)


def _tf_threads(n: int) -> None:
    if n and "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def setup(leg: str, spec_yaml: str, batch: int, seed: int, warmup: int, threads: int = 0):
    """In the leg's worker: build, compile, warm up. Returns (description, logits, seconds to first output)."""
    limit_threads(threads)
    import numpy as np

    import resnet_spec
    from resnet_spec.parity import make_input
    from resnet_spec.weights import init_weights

    net = resnet_spec.load(spec_yaml)
    w = init_weights(net, seed=seed, random_bn=True)
    x = np.ascontiguousarray(make_input(net, batch, seed))
    t0 = time.perf_counter()
    fn, desc = _torch_fn(net, w, x) if leg == "torch" else _keras_fn(leg, net, w, x)
    out = fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    _STATE["fn"] = fn
    return desc, np.asarray(out, np.float32), first


def timed(batches: int) -> float:
    """In the leg's worker: seconds per batch over ``batches`` consecutive calls."""
    fn = _STATE["fn"]
    t0 = time.perf_counter()
    for _ in range(batches):
        fn()
    return (time.perf_counter() - t0) / batches


def bench(name, legs, args):
    import resnet_spec
    from resnet_spec.isolate import Worker
    from resnet_spec.parity import rel_error

    net = resnet_spec.load(name)
    workers = {leg: Worker(leg) for leg in legs}
    try:
        info = {}
        for leg in legs:
            info[leg] = workers[leg].call(setup, leg, net.spec_yaml, args.batch, args.seed, args.warmup,
                                           args.threads)
            print(f"  {name} {leg}: ready ({info[leg][2]:.1f} s to the first output)", file=sys.stderr, flush=True)
        times = {leg: [] for leg in legs}
        for r in range(args.rounds):
            for leg in legs[r % len(legs):] + legs[:r % len(legs)]:
                times[leg].append(workers[leg].call(timed, args.batches))
    finally:
        for w in workers.values():
            w.close()
    med = {leg: statistics.median(v) for leg, v in times.items()}
    ref = legs[0]
    return [(leg, info[leg][0], med[leg], args.batch / med[leg], med[ref] / med[leg], min(times[leg]),
             max(times[leg]), rel_error(info[ref][1], info[leg][1]), info[leg][2]) for leg in legs]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,resnet20", help="comma-separated zoo names")
    ap.add_argument("--legs", default=",".join(LEGS), help=f"comma-separated, torch first (from {', '.join(LEGS)})")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=2, help="batches timed per leg per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="compute threads per framework (0: each framework's default, all cores). On a loaded "
                         "machine use 1: OpenMP thread pools that wait for busy cores slow torch down ~10x")
    ap.add_argument("--out", help="also append the markdown report here")
    args = ap.parse_args(argv)
    legs = [leg for leg in args.legs.split(",") if leg]
    if legs[0] != "torch" or any(leg not in LEGS for leg in legs):
        ap.error(f"--legs: torch first, then any of {', '.join(LEGS[1:])}")
    lines = [f"CPU: {cpu_model()}, {cores()} cores; Python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at start "
             f"{os.getloadavg()[0]:.1f}",
             f"Command: `python benchmarks/bench_keras_backends.py {' '.join(argv or sys.argv[1:])}`".rstrip("` ") + "`",
             f"Batch {args.batch}, float32, threads per framework: {args.threads or 'default'}, {args.warmup} warm-up calls, {args.rounds} rounds x {args.batches} "
             "batches per leg (rotating order), median s/batch.", ""]
    from concurrent.futures.process import BrokenProcessPool

    from resnet_spec.isolate import WorkerCrashed

    print("\n".join(lines), flush=True)
    _append(args.out, lines)
    for name in [m for m in args.models.split(",") if m]:
        try:
            rows = bench(name, legs, args)
        except (WorkerCrashed, BrokenProcessPool) as exc:  # e.g. killed for memory on a crowded machine
            lines = [f"{name}: not measured: a worker process died ({exc})", ""]
            print("\n".join(lines), flush=True)
            _append(args.out, lines)
            continue
        lines = [f"| {name} | how it runs | s/batch (median) | img/s | vs torch | min..max s/batch | "
                  "max rel vs torch | first output (s) |", "|---|---|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {leg} | {desc} | {t:.4f} | {ips:.1f} | **{ratio:.2f}** | {lo:.4f}..{hi:.4f} | {err:.1e} | "
                  f"{first:.1f} |" for leg, desc, t, ips, ratio, lo, hi, err, first in rows]
        lines.append("")
        print("\n".join(lines), flush=True)
        _append(args.out, lines)


def _append(path, lines):
    """Each model's table is appended as soon as it is measured (a later crash keeps it)."""
    if path:
        with open(path, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
