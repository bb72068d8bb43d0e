"""PyTorch backend benchmark: build time per zoo model, and eager throughput against the library model.

    python benchmarks/bench_torch.py                 # CPU, resnet50 + resnet152, batch 8
    python benchmarks/bench_torch.py --models regnety_032,resnest50d --skip-build   # timm's models
    python benchmarks/bench_torch.py --device cuda --dtype bfloat16 --channels-last

The generated model and the library's run in the same process on the same input, in alternating
rounds (A B A B ...) so that drift in machine load hits both equally; the reported figure is the
ratio of median throughputs, generated / library (1.0 = equal; the target is >= 0.98, >= 0.95 for the
families beyond ResNet). The library model is the one the zoo entry's ``reference`` names (torchvision,
timm), carrying the same weights as the generated one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from _machine import cpu_model  # noqa: E402  (benchmarks/ is sys.path[0])




def build_times(names, repeats: int = 1):
    import resnet_spec
    from resnet_spec.backends.torch import backend as tb
    from resnet_spec.weights import init_weights

    rows = []
    for name in names:
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            net = resnet_spec.load(name)
            t1 = time.perf_counter()
            w = init_weights(net, seed=0)
            t2 = time.perf_counter()
            tb.build(net, w)
            t3 = time.perf_counter()
            t.append((t1 - t0, t2 - t1, t3 - t2))
        best = min(t, key=sum)
        rows.append((name, net.params, *best))
    return rows


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def reference(name):
    """The library model a zoo entry names as its ``reference`` (torchvision's ``name`` when it names
    none), with fresh weights, and the same weights as a canonical set for the generated model."""
    import resnet_spec
    from resnet_spec.importers import check_source, read_source
    from resnet_spec.importers.run import _load_state

    ref = resnet_spec.spec.load(name).data.get("reference") or {"library": "torchvision", "model": name}
    src = read_source(f"{ref['library']}:{ref['model']}")
    weights = check_source(resnet_spec.load(name), src)
    model = src.facts.get("model")
    if model is None:
        from resnet_spec.backends.torch.reader import library_model

        model = _load_state(library_model(ref["library"], ref["model"]), weights, src.facts.get("source_names"))
    return model.eval(), weights


def throughput(name, args):
    import torch

    import resnet_spec
    from resnet_spec.backends.torch import backend as tb

    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    ref, weights = reference(name)
    ours = tb.build(resnet_spec.load(name), weights).eval()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    ref = ref.to(dev, dtype, memory_format=fmt)
    ours = ours.to(dev, dtype, memory_format=fmt)
    x = torch.randn(args.batch, 3, 224, 224, device=dev, dtype=dtype).to(memory_format=fmt)

    def timed(model):
        with torch.inference_mode():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return args.iters * args.batch / (time.perf_counter() - t0)

    for _ in range(args.warmup):
        timed(ref), timed(ours)
    a, b = [], []
    for _ in range(args.rounds):
        a.append(timed(ours))
        b.append(timed(ref))
    return statistics.median(a), statistics.median(b)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,resnet152")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=2, help="forward passes per timed round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--skip-build", action="store_true")
    args = p.parse_args(argv)

    import torch
    import torchvision

    from resnet_spec.spec import zoo_names

    print(f"# {cpu_model()} ({os.cpu_count()} cores), Python {platform.python_version()}, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {_version('timm')}, "
          f"threads {torch.get_num_threads()}")
    if args.device.startswith("cuda"):
        print(f"# device {torch.cuda.get_device_name(0)}")
    print(f"# command: {' '.join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:]))}")
    if not args.skip_build:
        print("\n## build time (load+resolve, init weights, build module), seconds\n")
        print("| model | params | resolve | init weights | build | total |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, params, r, i, b in build_times(zoo_names()):
            print(f"| {name} | {params:,} | {r:.3f} | {i:.3f} | {b:.3f} | {r + i + b:.3f} |")
    print(f"\n## eager inference, {args.device} {args.dtype}{' channels_last' if args.channels_last else ''}, "
          f"batch {args.batch}, median of {args.rounds} rounds x {args.iters} batches\n")
    print("| model | generated img/s | library img/s | ratio |")
    print("|---|---:|---:|---:|")
    for name in args.models.split(","):
        ours, ref = throughput(name, args)
        print(f"| {name} | {ours:.1f} | {ref:.1f} | {ours / ref:.3f} |", flush=True)


if __name__ == "__main__":
    main()
