"""Parity of every zoo entry, every backend pair: the measurements behind resnet_spec.parity.TOLERANCES.

    python benchmarks/parity_sweep.py                       # all zoo entries, CPU, float32
    python benchmarks/parity_sweep.py --dtype bfloat16 --models resnet18,resnet50

Prints a Markdown table (max error relative to the output scale per pair, top-1 agreement) ready for
docs/parity.md, one row per entry as soon as it is measured (a redirected, interrupted run keeps them). Backend workers are kept alive across models, as the parity command does per run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated zoo names (default: the whole zoo)")
    p.add_argument("--backends", default="torch,onnx,tensorflow")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import resnet_spec
    from resnet_spec import parity as P
    from resnet_spec.spec import zoo_names
    from resnet_spec.weights import init_weights

    names = [m for m in args.models.split(",") if m] or zoo_names()
    backends = tuple(args.backends.split(","))
    print(f"# parity sweep: {args.device} {args.dtype}, batch {args.batch}, seed {args.seed}, "
          f"Python {platform.python_version()}, {os.cpu_count()} cores")
    print(f"# command: {' '.join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:]))}")
    pairs = [f"{a} vs {b}" for i, a in enumerate(backends) for b in backends[i + 1:]]
    devices = {}
    worst = 0.0
    # rows go out as they are measured (flushed), so a redirected run keeps every finished entry
    print()
    print("| spec | input | " + " | ".join(pairs) + " | logit scale | result |")
    print("|---|---|" + "---:|" * len(pairs) + "---:|---|", flush=True)
    with P.Runner() as runner:
        for name in names:
            net = resnet_spec.load(name)
            t0 = time.perf_counter()
            r = P.run(net, init_weights(net, seed=args.seed, random_bn=True), backends=backends,
                      device=args.device, dtype=args.dtype, batch=args.batch, seed=args.seed, runner=runner)
            for b, run in r.runs.items():
                devices.setdefault(b, run.device or run.error)
            cells = {f"{q['a']} vs {q['b']}": q for q in r.pairs}
            row = [name, "x".join(map(str, net.input_shape[1:]))]
            for pair in pairs:
                q = cells.get(pair)
                if q is None:
                    row.append("not run")
                    continue
                worst = max(worst, q["max_rel"])
                top1 = "" if q.get("top1") in (None, 1.0) else f" (top-1 {q['top1'] * 100:.0f}%)"
                row.append(f"{q['max_rel']:.1e}{top1}" + ("" if q["passed"] else " FAIL"))
            row.append(f"{max((q.get('scale') or 0) for q in r.pairs) if r.pairs else 0:.3g}")
            row.append("pass" if r.passed else "FAIL")
            print("| " + " | ".join(row) + " |", flush=True)
            print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print()
    for b, d in devices.items():
        print(f"# {b}: {d}")
    print(f"\nworst max rel: {worst:.2e}; tolerance for {args.dtype}: {P.TOLERANCES.get(args.dtype)}")


if __name__ == "__main__":
    main()
