"""Parity of every zoo entry, every backend pair: the measurements behind resnet_spec.parity.TOLERANCES.

    python benchmarks/parity_sweep.py                       # all zoo entries, CPU, float32
    python benchmarks/parity_sweep.py --dtype bfloat16 --models resnet18,resnet50
    python benchmarks/parity_sweep.py --backends torch,onnx,keras-tensorflow,keras-jax,keras-torch \\
        --out sweep.md                                      # five legs; rows written as they finish

Prints a Markdown table (max error relative to the output scale per pair, top-1 agreement) ready for
docs/parity.md. Backend workers are kept alive across models, as the parity command does per run.
With ``--out FILE`` the header (command, machine, library versions) and then one row per entry are
appended to FILE as each entry finishes, so an interrupted sweep keeps every finished row, and a rerun
with the same FILE skips the entries it already holds. ``--max-size N`` runs entries whose native
input is larger than N at N x N instead (the same spec otherwise, through ``extends``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from _machine import cores, cpu_model  # noqa: E402  (benchmarks/ is sys.path[0])


def load_net(name: str, max_size: int):
    """The zoo entry ``name``, at its native input size or at ``max_size`` when that is smaller."""
    import resnet_spec

    net = resnet_spec.load(name)
    if max_size and net.input_shape[1] > max_size:
        net = resnet_spec.load(f"extends: {name}\nname: {name}\ninput: {{size: {max_size}}}\n")
    return net


def done_entries(path: str) -> set:
    """Names of the entries whose row is already in ``path`` (to resume an interrupted sweep)."""
    if not path or not os.path.exists(path):
        return set()
    with open(path) as f:
        return {line.split("|")[1].strip() for line in f
                if line.startswith("| ") and not line.startswith(("| spec ", "|---"))}


def cell(q: dict | None) -> str:
    if q is None:
        return "not run"
    top1 = "" if q.get("top1") in (None, 1.0) else f" (top-1 {q['top1'] * 100:.0f}%)"
    return f"{q['max_rel']:.1e}{top1}" + ("" if q["passed"] else " FAIL")


def row_of(name, net, r, pairs) -> tuple[list, float]:
    """One table row for report ``r`` and the worst max rel in it."""
    cells = {f"{q['a']} vs {q['b']}": q for q in r.pairs}
    worst = max((q["max_rel"] for q in r.pairs), default=float("nan"))
    row = [name, "x".join(map(str, net.input_shape[1:]))] + [cell(cells.get(p)) for p in pairs]
    row.append(f"{worst:.1e}")
    row.append(f"{max((q.get('scale') or 0) for q in r.pairs) if r.pairs else 0:.3g}")
    row.append("PASS" if r.passed else "FAIL" + "".join(f" ({b}: {e})" for b, e in
                                                        ((b, x.error) for b, x in r.runs.items()) if e))
    return row, worst


class Sink:
    """Writes to stdout, and appends (flushed) to ``--out`` when given."""

    def __init__(self, path):
        self.f = open(path, "a") if path else None

    def __call__(self, line=""):
        print(line, flush=True)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated zoo names (default: the whole zoo)")
    p.add_argument("--backends", default="torch,onnx,tensorflow")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-size", type=int, default=0, help="run entries larger than this at this input size")
    p.add_argument("--out", default="", help="append the header and each row to this file as it finishes")
    args = p.parse_args(argv)

    from resnet_spec import parity as P
    from resnet_spec.spec import zoo_names
    from resnet_spec.weights import init_weights

    skip = done_entries(args.out)
    names = [m for m in (args.models.split(",") if args.models else zoo_names()) if m and m not in skip]
    backends = tuple(args.backends.split(","))
    pairs = [f"{a} vs {b}" for i, a in enumerate(backends) for b in backends[i + 1:]]
    out = Sink(args.out)
    out(f"# parity sweep: {args.device} {args.dtype}, batch {args.batch}, seed {args.seed}, "
        f"max input {args.max_size or 'native'}; {cpu_model()}, {cores()} cores; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out(f"# command: {' '.join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:]))}")
    if skip:
        out(f"# resumed: {len(skip)} entries already in {args.out}")
    out()
    out("| spec | input | " + " | ".join(pairs) + " | worst | logit scale | result |")
    out("|---|---|" + "---:|" * (len(pairs) + 2) + "---|")
    devices, worst, failed = {}, 0.0, []
    with P.Runner() as runner:
        for name in names:
            net = load_net(name, args.max_size)
            t0 = time.perf_counter()
            r = P.run(net, init_weights(net, seed=args.seed, random_bn=True), backends=backends,
                      device=args.device, dtype=args.dtype, batch=args.batch, seed=args.seed, runner=runner)
            row, w = row_of(name, net, r, pairs)
            out("| " + " | ".join(row) + " |")
            worst = max(worst, w) if w == w else worst
            failed += [] if r.passed else [name]
            for b, run in r.runs.items():
                devices.setdefault(b, run.device or run.error)
            print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    out()
    for b, d in devices.items():
        out(f"# {b}: {d}")
    out(f"# worst max rel: {worst:.2e}; tolerance for {args.dtype}: {P.TOLERANCES.get(args.dtype)}; "
        f"failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
