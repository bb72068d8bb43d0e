"""Benchmark of the TensorFlow/Keras backend.

1. Build time: IR + canonical weights -> Keras model (``backends.keras.tf.build``) for zoo models.
2. Inference throughput of the generated ``keras_resnet50`` (and ``keras_resnet50v2``) against
   keras.applications.ResNet50 (ResNet50V2) carrying the same weights, in the same process: same batch,
   both called as ``tf.function(model(x, training=False))``, warm-up calls, then repeats that alternate
   between the two models (so that drift in a shared machine's load hits both alike); median time per
   batch. The ratio is ours / keras.applications in images per second (target >= 0.98).

Usage::

    python benchmarks/bench_tf.py                        # everything, markdown on stdout
    python benchmarks/bench_tf.py --build-models resnet50 resnet1202 --repeats 20 --out docs/bench_tf_run.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from _machine import cores, cpu_model  # noqa: E402  (benchmarks/ is sys.path[0])





def bench_build(models, T, keras):
    import resnet_spec
    from resnet_spec.weights import init_weights

    rows = []
    for name in models:
        net = resnet_spec.load(name)
        w = init_weights(net, seed=0)
        t0 = time.perf_counter()
        model = T.build(net, w)
        dt = time.perf_counter() - t0
        rows.append((name, len(model.layers), net.params, dt))
        print(f"  build {name}: {len(model.layers)} layers, {dt:.2f} s", file=sys.stderr)
        del model
        keras.backend.clear_session()
    return rows


def bench_throughput(pairs, batch, warmup, repeats, T, tf, keras):
    import numpy as np

    import resnet_spec
    from resnet_spec.parity import rel_error
    from resnet_spec.weights import init_weights

    rows = []
    for spec, cls in pairs:
        net = resnet_spec.load(spec)
        w = init_weights(net, seed=0, random_bn=True)
        ours = T.build(net, w)
        ref = getattr(keras.applications, cls)(weights=None, classifier_activation=None)
        T.to_keras_applications(net, w, ref)
        c, h, wd = net.input_shape
        x = tf.constant(np.random.default_rng(0).standard_normal((batch, h, wd, c)).astype(np.float32))
        fns = {"ours": tf.function(lambda t, m=ours: m(t, training=False)),
               "keras.applications": tf.function(lambda t, m=ref: m(t, training=False))}
        outs = {k: f(x).numpy() for k, f in fns.items()}
        err = rel_error(outs["keras.applications"], outs["ours"])
        for _ in range(warmup):
            for f in fns.values():
                f(x).numpy()
        times = {k: [] for k in fns}
        for i in range(repeats):
            order = list(fns) if i % 2 == 0 else list(fns)[::-1]
            for k in order:
                t0 = time.perf_counter()
                fns[k](x).numpy()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["keras.applications"] / med["ours"]  # = ours img/s / theirs img/s
        rows.append((spec, cls, batch, med["ours"], med["keras.applications"], ratio, err,
                     {k: (min(v), max(v)) for k, v in times.items()}))
        print(f"  {spec} vs {cls}: ours {batch / med['ours']:.2f} img/s, keras.applications "
              f"{batch / med['keras.applications']:.2f} img/s, ratio {ratio:.3f}", file=sys.stderr)
        del ours, ref, fns
        keras.backend.clear_session()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-models", nargs="*", default=None,
                    help="zoo models to time the build of (default: the whole zoo; none: skip)")
    ap.add_argument("--pairs", nargs="*", default=["keras_resnet50:ResNet50", "keras_resnet50v2:ResNet50V2"],
                    help="spec:keras.applications class pairs for the throughput comparison")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--onednn", choices=["default", "0", "1"], default="default",
                    help="set TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported")
    ap.add_argument("--out", help="also write the markdown report here")
    args = ap.parse_args(argv)

    if args.onednn != "default":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = args.onednn
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from resnet_spec.backends.keras import tf as T
    from resnet_spec.spec import zoo_names

    t_import = time.perf_counter()
    tf, keras = T._tf()
    t_import = time.perf_counter() - t_import

    build_models = zoo_names() if args.build_models is None else args.build_models
    build_rows = bench_build(build_models, T, keras) if build_models else []
    pairs = [p.split(":", 1) for p in args.pairs]
    tp_rows = bench_throughput(pairs, args.batch, args.warmup, args.repeats, T, tf, keras) if pairs else []

    lines = [
        "## Environment",
        "",
        f"- CPU: {cpu_model()}, {cores()} cores available to the process (shared with other work)",
        f"- Python {platform.python_version()}, {T.versions()}, numpy {__import__('numpy').__version__}",
        f"- TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset: TensorFlow default)')}, "
        f"TensorFlow import {t_import:.1f} s",
        f"- Command: `python benchmarks/bench_tf.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
        "",
    ]
    if build_rows:
        lines += ["## Build time (IR + weights -> Keras model, native input size)", "",
                  "| model | Keras layers | params | build (s) |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {layers} | {params:,} | {dt:.2f} |" for n, layers, params, dt in build_rows]
        lines += [""]
    if tp_rows:
        lines += [f"## Inference throughput vs keras.applications (batch {args.batch}, {args.warmup} warm-up, "
                  f"{args.repeats} alternating repeats, median)", "",
                  "| ours | keras.applications | ours img/s | keras img/s | ratio | min..max s/batch ours | "
                  "min..max s/batch keras | max rel. output diff |",
                  "|---|---|---:|---:|---:|---|---|---:|"]
        for spec, cls, b, t_ours, t_ref, ratio, err, rng in tp_rows:
            lines.append(f"| {spec} | {cls} | {b / t_ours:.2f} | {b / t_ref:.2f} | {ratio:.3f} | "
                         f"{rng['ours'][0]:.3f}..{rng['ours'][1]:.3f} | "
                         f"{rng['keras.applications'][0]:.3f}..{rng['keras.applications'][1]:.3f} | {err:.1e} |")
        lines += [""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)


if __name__ == "__main__":
    main()
