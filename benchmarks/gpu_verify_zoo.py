"""`verify --device cuda` over the whole zoo: our float32 and float16 ONNX files in ONNX Runtime's CUDA
execution provider (TF32 off) at every graph optimization level, against the torch float64 reference.

    python benchmarks/gpu_verify_zoo.py --out gpu_out/verify.md [--models resnet50,keras_resnet50v2]

Writes one Markdown table (rows: zoo entry x file; columns: optimization level; cells: max error
relative to the logit scale) for docs/deployment.md, rewritten after every entry so that an
interrupted run keeps what it measured; progress goes to stderr. Files are written by the library's own convert
path into a temporary folder, with seeded random weights (non-trivial BN statistics).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

LEVELS = ("disable", "basic", "extended", "all")


def _files(net, d):
    """``<name>.onnx`` (float32) and ``<name>_f16.onnx`` (float16 weights/compute, float32 I/O)."""
    import resnet_spec
    from resnet_spec.backends.onnx import backend as onnx_backend
    from resnet_spec.weights import init_weights

    w = init_weights(net, seed=0, random_bn=True)
    resnet_spec.save_weights(w, os.path.join(d, f"{net.name}.safetensors"))
    f32 = onnx_backend.convert(net, w, d)[0]
    f16_dir = os.path.join(d, "f16")
    os.makedirs(f16_dir)
    f16 = onnx_backend.convert(net, w, f16_dir, dtype="float16")[0]
    return [(f32, "float32"), (f16, "float16")], os.path.join(d, f"{net.name}.safetensors")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", default="gpu_verify.md")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of this script where no GPU is")
    args = p.parse_args(argv)

    import onnxruntime

    import resnet_spec
    from resnet_spec import verify as V
    from resnet_spec.spec import zoo_names

    names = [m for m in args.models.split(",") if m] or zoo_names()
    head = (f"# verify --device {args.device}, ONNX Runtime {onnxruntime.__version__} "
            f"{'CUDAExecutionProvider (TF32 off)' if args.device == 'cuda' else 'CPUExecutionProvider'}, "
            f"batch {args.batch}, seeded random weights")
    rows, worst, failed = [], {}, []
    for i, name in enumerate(names, 1):
        net = resnet_spec.load(name)
        with tempfile.TemporaryDirectory() as d:
            files, wpath = _files(net, d)
            for path, dt in files:
                rep = V.run(net, [path], weights_file=wpath, batch=args.batch, device=args.device)
                rows.append(_row(name, dt, rep, worst, failed))
        # the table so far after every entry: an interrupted run keeps what it measured
        _write(args.out, head, rows, worst, failed, f"{i} of {len(names)} entries" if i < len(names) else "")
        print(f"  [{i}/{len(names)}] {name}: {' '.join(rows[-2][2:])} | {' '.join(rows[-1][2:])}",
              file=sys.stderr, flush=True)
    print(_summary(worst, failed))


def _row(name, dt, rep, worst, failed) -> list:
    """One table row (ONNX Runtime's figure per level) of one file's verify report."""
    cells = {r.level: r for r in rep.rows if r.runtime.lower().startswith("onnxruntime")}
    row = [name, dt]
    for lv in LEVELS:
        r = cells.get(lv)
        if r is None:
            row.append("-")
            continue
        rel = r.metrics.get("max_rel") or 0.0
        worst[dt] = max(worst.get(dt, 0.0), rel)
        row.append(f"{rel:.1e}" + ("" if r.passed else " FAIL"))
        if not r.passed:
            failed.append(f"{name} {dt} {lv}")
    return row


def _summary(worst, failed) -> str:
    return ("worst max rel: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
            + ("; FAILED: " + ", ".join(failed) if failed else "; every cell within its tolerance"))


def _write(path, head, rows, worst, failed, partial) -> None:
    lines = [head + (f" (partial: {partial})" if partial else ""), "",
             "| spec | file | " + " | ".join(LEVELS) + " |", "|---|---|" + "---:|" * len(LEVELS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", _summary(worst, failed)]
    with open(f"{path}.tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    main()
