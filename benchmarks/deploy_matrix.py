"""The deployment matrix: our files for the whole zoo in every runtime release users run.

    python benchmarks/deploy_matrix.py                    # whole zoo, writes docs/deployment.md
    python benchmarks/deploy_matrix.py --models keras_resnet50v2,resnet50 --ort 1.17.3,1.32.0

For each zoo entry (seeded random weights with non-trivial BN statistics, ``--size`` px for ImageNet
entries, CIFAR entries at their own 32 px) it writes the float32 ONNX file, the float16 ONNX file
(``--dtype float16``, float32 I/O), the int8 ONNX file (``--dtype int8``: QDQ, calibrated on the seeded
synthetic images convert uses by default) and the ``.tflite`` files (float32, ``--dtype float16``: float16
weights, ``--dtype int8``: full-integer), and runs them, each runtime in its own
small venv made from the registry and cached (benchmarks/_venvs.py): onnxruntime releases (every
graph optimisation level), onnxoptimizer's fuse-and-elimination passes, onnxsim, OpenVINO (CPU, f32
inference precision) and LiteRT. Every cell is max |y - ref| / max |ref| against the torch backend
in float64 on the same weights and input. One runtime process runs at a time. Results go to
``--json`` as they come (``--report-only`` rewrites the doc from it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _venvs  # noqa: E402
from _deploy_doc import OUTPUTS, environment, machine, write_doc  # noqa: E402

ORT = ["1.17.3", "1.19.2", "1.21.1", "1.23.2", "1.25.1", "1.27.0", "1.29.0", "1.31.1", "1.32.0"]


F16_ORT = ["1.17.3", "1.21.1", "1.25.1", "1.29.0", "1.32.0"]


def venv_specs(ort_versions, f16_versions=F16_ORT) -> list:
    """(column group, venv name, requirements, job kind, outputs it runs)."""
    newest = ort_versions[-1]
    # float16 files in a spread of releases (``--f16-ort``), not all: ORT's CPU provider computes most
    # float16 operators through inserted casts, so each float16 column costs as much as a float32 one.
    # float16 and int8 files in the same spread of releases
    low = ("onnx", "onnx-f16", "onnx-int8")
    out = [(f"onnxruntime {v}", f"ort-{v}", [f"onnxruntime=={v}", "numpy<2" if v < "1.19" else "numpy"], "ort",
            low if v in f16_versions or v == newest else ("onnx",)) for v in ort_versions]
    out += [("onnxoptimizer 0.4.2", "onnxoptimizer-0.4.2",
             ["onnxoptimizer==0.4.2", "onnx", f"onnxruntime=={newest}", "numpy"], "onnxoptimizer", low),
            ("onnxsim 0.4.36", "onnxsim-0.4.36", ["onnxsim==0.4.36", "onnx", f"onnxruntime=={newest}", "numpy"],
             "onnxsim", low),
            ("openvino 2026.4.1", "openvino-2026.4.1", ["openvino==2026.4.1", "numpy"], "openvino", low),
            ("LiteRT 2.3.0", "litert-2.3.0", ["ai-edge-litert==2.3.0", "numpy"], "tflite",
             ("tflite", "tflite-f16", "tflite-int8"))]
    return out


def _tflite_bytes(spec_yaml, weights, dtype="float32"):
    from resnet_spec import load
    from resnet_spec.backends.keras import tflite as tflite_backend
    from resnet_spec.resolve import UNCHECKED

    net = load(spec_yaml, UNCHECKED)
    images = _calibration(net) if dtype == "int8" else None
    return tflite_backend.to_bytes(net, weights, dtype=dtype, calibration=images)


def _calibration(net):
    """What ``convert --dtype int8`` calibrates on without --calibration: seeded synthetic images."""
    from resnet_spec.calibration import synthetic

    return synthetic(net.input_shape)


def _onnx_bytes(net, w, out: str, d: str) -> bytes:
    """The ONNX file ``out`` ('onnx', 'onnx-f16', 'onnx-int8': the float32 file quantized as convert does)."""
    from resnet_spec.backends.onnx import backend as ob

    if out != "onnx-int8":
        return ob.build(net, w, dtype={"onnx": "float32", "onnx-f16": "float16"}[out]).SerializeToString()
    # what convert --dtype int8 writes (weight standardization computed beforehand, BN folded, quantized)
    (path,) = ob.convert(net, w, os.path.join(d, "int8"), dtype="int8", calibration=_calibration(net), force=True)
    with open(path, "rb") as fh:
        return fh.read()


def make_entry(name, size, d, outputs, tf_worker) -> dict:
    """x.npy, ref.npy (torch backend, float64) and the requested output files of one entry in ``d``.

    ``tf_worker()`` gives the (lazily started) TensorFlow worker that converts to TFLite."""
    import torch

    import resnet_spec
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.backends.torch import backend as tb
    from resnet_spec.weights import init_weights

    net = resnet_spec.load(name)
    if net.input_shape[1] > 32:
        net = resnet_spec.load(f"extends: {name}\ninput: {{size: {size}}}\n")
    w = init_weights(net, seed=0, random_bn=True)
    x = np.random.default_rng(1).standard_normal((2, *net.input_shape)).astype(np.float32)
    with torch.inference_mode():
        ref = tb.build(net, w).double().eval()(torch.from_numpy(x.astype(np.float64))).numpy()
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "ref.npy"), ref)
    files = {}
    for out in outputs:
        kind, _, dtype = out.partition("-")
        files[out] = os.path.join(d, f"m{dtype}.{kind}")
        if kind == "tflite":
            data = tf_worker().call(_tflite_bytes, net.spec_yaml, w, {"": "float32", "f16": "float16"}.get(dtype, dtype))
        else:
            data = _onnx_bytes(net, w, out, d)
        with open(files[out], "wb") as fh:
            fh.write(data)
    return {"dir": d, "files": files, "shape": list(net.input_shape)}


def _cells(res, ref) -> dict:
    """{level or run: cell} of one runner result against the reference logits."""
    cells = {}
    for key, arr in res.items():
        if key == "versions":
            continue
        if key.endswith("/error"):
            cells[key.split("/")[0]] = {"error": str(arr)}
            continue
        y = np.asarray(arr, np.float64)
        rel = float(np.abs(y - ref).max() / np.abs(ref).max()) if np.isfinite(y).all() else float("inf")
        cells[key] = {"rel": rel, "top1": float(np.mean(y.argmax(1) == ref.argmax(1)))}
    return cells


def run_column(spec, name, info, results, say) -> None:
    """Run one runtime column on one entry's files (one runner process) and store its cells."""
    group, venv, reqs, kind, outputs = spec
    outputs = [o for o in outputs if o in info["files"]]
    try:
        py = _venvs.ensure(venv, reqs)
    except _venvs.VenvUnavailable as exc:
        say(f"  {group}: SKIPPED: {exc}")
        results.setdefault("_skipped", {})[group] = str(exc)
        return
    d = info["dir"]
    jobs = os.path.join(d, f"jobs-{venv}.tsv")
    with open(jobs, "w") as fh:
        for out in outputs:
            fh.write(f"{kind}\t{info['files'][out]}\t{d}/x.npy\t{d}/{venv}-{out}.npz\n")
    t0 = time.time()
    proc = subprocess.run([py, os.path.join(HERE, "_deploy_runner.py"), jobs], capture_output=True, text=True)
    if proc.returncode:
        say(f"  {group}: runner failed: {proc.stderr.strip()[-400:]}")
    ref = np.load(f"{d}/ref.npy")
    worst = []
    for out in outputs:
        path = f"{d}/{venv}-{out}.npz"
        res = dict(np.load(path)) if os.path.exists(path) else {"job/error": np.array(f"no result (runner exit "
                                                                                         f"{proc.returncode})")}
        if "versions" in res:
            results.setdefault("_versions", {})[group] = str(res["versions"])
        for run, cell in _cells(res, ref).items():
            results.setdefault(f"{name} | {out}", {})[f"{group} / {run}"] = cell
            worst.append(f"{out} {run} " + ("error" if "error" in cell else f"{cell['rel']:.1e}"))
    say(f"  {group}: {time.time() - t0:.0f} s; " + ", ".join(worst))


def _done(results, name, out, group) -> bool:
    return any(c.startswith(f"{group} / ") for c in results.get(f"{name} | {out}", {}))


def _save(results, path) -> None:
    """Write the JSON atomically: an interruption leaves the previous complete file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(tmp, path)


def run_entry(name, specs, args, results, tf_worker, say) -> bool:
    """Measure every column of ``specs`` not yet in ``results`` for one entry; False if all were there."""
    todo = [(sp, [o for o in sp[4] if args.force or not _done(results, name, o, sp[0])]) for sp in specs]
    todo = [(sp, outs) for sp, outs in todo if outs]
    if not todo:
        return False
    for sp, outs in todo:  # --force: drop the old cells of the outputs measured again (only those: measuring
        for out in outs:    # a column's new output must keep its other outputs' cells)
            row = results.get(f"{name} | {out}", {})
            for col in [c for c in row if c.startswith(f"{sp[0]} / ")]:
                del row[col]
    outputs = [o for o in OUTPUTS if any(o in outs for _, outs in todo)]
    with tempfile.TemporaryDirectory(prefix=f"deploy-{name}-") as d:
        t0 = time.time()
        info = make_entry(name, args.size, d, outputs, tf_worker)
        say(f"  files {', '.join(outputs)} at {info['shape']}: {time.time() - t0:.0f} s")
        for sp, outs in todo:
            run_column((*sp[:4], tuple(outs)), name, info, results, say)
            _save(results, args.json)
    return True


KINDS = ("ort", "onnxoptimizer", "onnxsim", "openvino", "tflite")


def _provenance(results: dict, args) -> dict:
    """``_date`` and ``_machine`` of the JSON after this run: a run of the whole matrix replaces them; a run
    of some entries or kinds beside cells measured earlier on another day or machine appends to them
    ("2026-11-26; resnetv2_50 2026-12-06"), so the doc never dates old cells by the last partial run."""
    today, here = time.strftime("%Y-%m-%d"), machine()
    partial = bool(args.models) or args.kinds != ",".join(KINDS)
    if not partial or not results.get("_date"):
        return {"_date": today, "_machine": here}
    what = ",".join(m for m in args.models.split(",") if m) or args.kinds
    date, mach = results["_date"], results.get("_machine") or here
    return {"_date": date if today in date else f"{date}; {what} {today}",
            "_machine": mach if here.split(", Python")[0] in mach else f"{mach}; {what}: {here}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated zoo names (default: the whole zoo)")
    p.add_argument("--ort", default=",".join(ORT), help="onnxruntime releases")
    p.add_argument("--f16-ort", default=",".join(F16_ORT), help="releases that also run the float16 file")
    p.add_argument("--size", type=int, default=40, help="input size of the ImageNet entries")
    p.add_argument("--json", default="benchmarks/deploy_matrix.json")
    p.add_argument("--doc", default="docs/deployment.md")
    p.add_argument("--kinds", default=",".join(KINDS), help="runtime kinds to run")
    p.add_argument("--force", action="store_true", help="measure again the cells already in --json")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)

    def say(t):
        print(t, flush=True)

    results = {}
    if os.path.exists(args.json):
        try:
            results = json.load(open(args.json))
        except (OSError, ValueError) as exc:
            p.error(f"{args.json}: not a deploy-matrix JSON ({exc}); remove it or pass another --json")
    if args.report_only:
        write_doc(results, args.doc, results.get("_size", args.size))
        return 0
    if results and results.get("_size") != args.size and not args.force:
        p.error(f"{args.json} holds cells at {results.get('_size', 'an unrecorded')} px, not --size {args.size}; "
                "pass --force to measure again, or another --json")
    if args.force and not args.models:
        results = {}
    results.update(_provenance(results, args), _size=args.size, _env=environment())
    from contextlib import ExitStack

    from resnet_spec.errors import ResNetSpecError
    from resnet_spec.isolate import Worker
    from resnet_spec.spec import zoo_names

    names = [m for m in args.models.split(",") if m] or zoo_names()
    specs = [sp for sp in venv_specs([v for v in args.ort.split(",") if v], args.f16_ort.split(","))
             if sp[3] in args.kinds.split(",")]
    t_start = time.time()
    with ExitStack() as stack:
        workers = []

        def tf_worker():
            if not workers:
                workers.append(stack.enter_context(Worker("tensorflow")))
            return workers[0]

        for i, name in enumerate(names, 1):
            say(f"[{i}/{len(names)}] {name} ({time.time() - t_start:.0f} s so far)")
            try:
                measured = run_entry(name, specs, args, results, tf_worker, say)
            except ResNetSpecError as exc:  # an entry that cannot run at --size (odd maps, aa vs avg-down)
                say(f"  skipped: {exc}")
                results.setdefault("_unrunnable", {})[name] = str(exc).split(": ", 1)[-1]
                continue
            results.get("_unrunnable", {}).pop(name, None)
            if measured:
                write_doc(results, args.doc, args.size)
            else:
                say("  every cell already measured (--force to measure again)")
    write_doc(results, args.doc, args.size)
    say(f"wrote {args.json} and {args.doc} in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
