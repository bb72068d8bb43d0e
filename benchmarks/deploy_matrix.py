"""The deployment matrix: our files for the whole zoo in every runtime release users run.

    python benchmarks/deploy_matrix.py                    # whole zoo, writes docs/deployment.md
    python benchmarks/deploy_matrix.py --models keras_resnet50v2,resnet50 --ort 1.17.3,1.32.0

For each zoo entry (seeded random weights with non-trivial BN statistics, ``--size`` px for ImageNet
entries, CIFAR entries at their own 32 px) it writes the float32 ONNX file, the float16 ONNX file
(``--dtype float16``, float32 I/O) and the ``.tflite`` file, and runs them, each runtime in its own
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
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _venvs  # noqa: E402

ORT = ["1.17.3", "1.19.2", "1.21.1", "1.23.2", "1.25.1", "1.27.0", "1.29.0", "1.31.1", "1.32.0"]
LEVELS = ("disable", "basic", "extended", "all")
OUTPUTS = ("onnx", "onnx-f16", "tflite")
TOL = {"onnx": 1e-4, "onnx-f16": 1e-2, "tflite": 1e-4}  # resnet_spec.parity / resnet_spec.verify


def venv_specs(ort_versions) -> list:
    """(column group, venv name, requirements, job kind, outputs it runs)."""
    newest = ort_versions[-1]
    # float16 files only in the newest release (and the tools below): ORT's CPU provider computes float16
    # convolutions through inserted casts in every release, and the run time of the matrix halves.
    out = [(f"onnxruntime {v}", f"ort-{v}", [f"onnxruntime=={v}", "numpy<2" if v < "1.19" else "numpy"], "ort",
            ("onnx", "onnx-f16") if v == newest else ("onnx",)) for v in ort_versions]
    out += [("onnxoptimizer 0.4.2", "onnxoptimizer-0.4.2",
             ["onnxoptimizer==0.4.2", "onnx", f"onnxruntime=={newest}", "numpy"], "onnxoptimizer", ("onnx", "onnx-f16")),
            ("onnxsim 0.4.36", "onnxsim-0.4.36", ["onnxsim==0.4.36", "onnx", f"onnxruntime=={newest}", "numpy"],
             "onnxsim", ("onnx", "onnx-f16")),
            ("openvino 2026.4.1", "openvino-2026.4.1", ["openvino==2026.4.1", "numpy"], "openvino", ("onnx", "onnx-f16")),
            ("LiteRT 2.3.0", "litert-2.3.0", ["ai-edge-litert==2.3.0", "numpy"], "tflite", ("tflite",))]
    return out


def _tflite_bytes(spec_yaml, weights):
    from resnet_spec import load
    from resnet_spec.backends import tflite_backend
    from resnet_spec.resolve import UNCHECKED

    return tflite_backend.to_bytes(load(spec_yaml, UNCHECKED), weights)


def make_files(names, size, work, say, tflite_names=None) -> dict:
    """Per entry: x.npy, ref.npy, <output> files. The reference and ONNX run here; TFLite in a worker."""
    import torch

    import resnet_spec
    from resnet_spec.backends import onnx_backend as ob
    from resnet_spec.backends import torch_backend as tb
    from resnet_spec.isolate import Worker
    from resnet_spec.weights import init_weights

    files = {}
    with Worker("tensorflow") as tfw:
        for name in names:
            net = resnet_spec.load(name)
            if net.input_shape[1] > 32:
                net = resnet_spec.load(f"extends: {name}\ninput: {{size: {size}}}\n")
            d = os.path.join(work, name)
            os.makedirs(d, exist_ok=True)
            w = init_weights(net, seed=0, random_bn=True)
            x = np.random.default_rng(1).standard_normal((2, *net.input_shape)).astype(np.float32)
            with torch.inference_mode():
                ref = tb.build(net, w).double().eval()(torch.from_numpy(x.astype(np.float64))).numpy()
            np.save(os.path.join(d, "x.npy"), x)
            np.save(os.path.join(d, "ref.npy"), ref)
            f = {"onnx": os.path.join(d, "m.onnx"), "onnx-f16": os.path.join(d, "m16.onnx"),
                 "tflite": os.path.join(d, "m.tflite")}
            with open(f["onnx"], "wb") as fh:
                fh.write(ob.build(net, w).SerializeToString())
            with open(f["onnx-f16"], "wb") as fh:
                fh.write(ob.build(net, w, dtype="float16").SerializeToString())
            if tflite_names is None or name in tflite_names:
                with open(f["tflite"], "wb") as fh:
                    fh.write(tfw.call(_tflite_bytes, net.spec_yaml, w))
            else:
                del f["tflite"]
            files[name] = {"dir": d, "files": f, "shape": list(net.input_shape)}
            say(f"files: {name} {net.input_shape}")
    return files


def run_column(spec, files, work, results, say) -> None:
    group, venv, reqs, kind, outputs = spec
    try:
        py = _venvs.ensure(venv, reqs)
    except _venvs.VenvUnavailable as exc:
        say(f"{group}: SKIPPED: {exc}")
        results.setdefault("_skipped", {})[group] = str(exc)
        return
    jobs = os.path.join(work, f"jobs-{venv}.tsv")
    with open(jobs, "w") as fh:
        for name, info in files.items():
            for out in (o for o in outputs if o in info["files"]):
                fh.write(f"{kind}\t{info['files'][out]}\t{info['dir']}/x.npy\t{info['dir']}/{venv}-{out}.npz\n")
    t0 = time.time()
    proc = subprocess.run([py, os.path.join(HERE, "_deploy_runner.py"), jobs], capture_output=True, text=True)
    if proc.returncode:
        say(f"{group}: runner failed: {proc.stderr[-400:]}")
    for name, info in files.items():
        ref = np.load(f"{info['dir']}/ref.npy")
        for out in (o for o in outputs if o in info["files"]):
            path = f"{info['dir']}/{venv}-{out}.npz"
            res = dict(np.load(path)) if os.path.exists(path) else {"job/error": np.array("no result")}
            results.setdefault("_versions", {})[group] = str(res.get("versions", "?"))
            for key, arr in res.items():
                if key == "versions":
                    continue
                col = f"{group} / {key.split('/')[0]}"
                if key.endswith("/error"):
                    cell = {"error": str(arr)}
                else:
                    y = np.asarray(arr, np.float64)
                    rel = float(np.abs(y - ref).max() / np.abs(ref).max()) if np.isfinite(y).all() else float("inf")
                    cell = {"rel": rel, "top1": float(np.mean(y.argmax(1) == ref.argmax(1)))}
                results.setdefault(f"{name} | {out}", {})[col] = cell
    say(f"{group}: done in {time.time() - t0:.0f} s")


def _machine() -> str:
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _cell(c, tol) -> str:
    if c is None:
        return "—"
    if "error" in c:
        return "error"
    mark = "" if c["rel"] <= tol else " **FAIL**"
    return f"{c['rel']:.1e}{mark}"


BEFORE = ("Before the fix (graph with `Pad(0) -> MaxPool` in the V2 stem; tests/test_deploy.py on that graph, "
          "keras_resnet50v2 at 64 px, 4 images): onnxruntime 1.31.1 at basic, extended and all, and onnxoptimizer's "
          "passes at disable, basic and extended (the printed list was cut there): max rel 4.43e-3, top-1 4/4 (FAIL); "
          "1.31.1 at disable and the installed 1.32.0 at every level: within "
          "1e-5. The issue reports the same fault for 1.17.3-1.31.1 at 224 px (3.3e-4 to 5.9e-4).")


def _coverage(rows) -> str:
    from resnet_spec.spec import zoo_names

    names = list(dict.fromkeys(r.split(" | ")[0] for r in rows))
    zoo = zoo_names()
    if set(zoo) <= set(names):
        return f"Entries: the whole zoo ({len(zoo)})."
    return (f"Entries: {len(names)} of the zoo's {len(zoo)}, chosen to cover every pooling and shortcut form "
            "(Keras V1/V2 stems, ceil-mode max and average pools, option-A shortcuts, pre-activation, SE); "
            f"not measured in this run: {', '.join(n for n in zoo if n not in names)}.")


def write_doc(results, path, args) -> None:
    order = list(dict.fromkeys(k.split(" | ")[0] for k in results if not k.startswith("_")))
    rows = sorted((k for k in results if not k.startswith("_")),
                  key=lambda k: (order.index(k.split(" | ")[0]), OUTPUTS.index(k.split(" | ")[1])))
    cols = []
    for r in rows:
        for c in results[r]:
            if c not in cols:
                cols.append(c)
    worst = {}
    for r in rows:
        out = r.split(" | ")[1]
        for c, v in results[r].items():
            bad = "error" in v or v["rel"] > TOL[out]
            worst.setdefault(c, []).append(r) if bad else None
    lines = ["# Deployment matrix", "",
             "Generated by `python benchmarks/deploy_matrix.py` "
             f"({time.strftime('%Y-%m-%d')}). Each cell: max |y - ref| / max |ref| of the logits, where ref is "
             "the torch backend in float64 on the same seeded random weights (non-trivial BN statistics) and the "
             f"same input (batch 2). ImageNet entries at **{args.size} px** (reduced from 224: the run shares a "
             "2-core machine), CIFAR entries at 32 px. `tflite` rows only for the entries converted to TFLite "
             "in this run (TensorFlow's converter takes minutes per model here); the other entries' TFLite "
             "files were not measured. Tolerances: float32 files 1e-4, "
             "float16 ONNX 1e-2 (as `verify`); a cell above it says **FAIL**. `—`: not run (a runtime that "
             "does not take that output; float16 files ran in the newest onnxruntime and the tools only). Outputs: `onnx` (float32), `onnx-f16` (`--dtype float16`, float32 I/O), "
             "`tflite` (float32, from the Keras model).", "",
             f"Machine: {_machine()}.", "", _coverage(rows), "", BEFORE, "",
             "Runtimes (each in its own venv from the registry):", ""]
    lines += [f"- {g}: {v}" for g, v in results.get("_versions", {}).items()]
    lines += [f"- {g}: not measured ({v})" for g, v in results.get("_skipped", {}).items()]
    fails = {c: rs for c, rs in worst.items() if rs}
    lines += ["", "Summary: " + (f"{sum(len(v) for v in fails.values())} cells over tolerance" if fails
                                 else "every cell within tolerance") + f", {len(rows)} rows x {len(cols)} columns.", ""]
    lines.append("| entry | output | " + " | ".join(cols) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    for r in rows:
        name, out = r.split(" | ")
        lines.append(f"| {name} | {out} | " + " | ".join(_cell(results[r].get(c), TOL[out]) for c in cols) + " |")
    errors = [(r, c, v["error"]) for r in rows for c, v in results[r].items() if "error" in v]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r}, {c}: {e}" for r, c, e in errors[:40]]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated zoo names (default: the whole zoo)")
    p.add_argument("--ort", default=",".join(ORT), help="onnxruntime releases")
    p.add_argument("--size", type=int, default=40, help="input size of the ImageNet entries")
    p.add_argument("--json", default="benchmarks/deploy_matrix.json")
    p.add_argument("--doc", default="docs/deployment.md")
    p.add_argument("--tflite", default="", help="entries to convert to TFLite (default: all; TF conversion is slow)")
    p.add_argument("--kinds", default="ort,onnxoptimizer,onnxsim,openvino,tflite", help="runtime kinds to run")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)

    def say(t):
        print(t, flush=True)

    if args.report_only:
        write_doc(json.load(open(args.json)), args.doc, args)
        return 0
    from resnet_spec.spec import zoo_names

    names = [m for m in args.models.split(",") if m] or zoo_names()
    work = tempfile.mkdtemp(prefix="deploy-matrix-")
    files = make_files(names, args.size, work, say, [m for m in args.tflite.split(",") if m] or None)
    results = {}
    for spec in venv_specs([v for v in args.ort.split(",") if v]):
        if spec[3] not in args.kinds.split(","):
            continue
        run_column(spec, files, work, results, say)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        write_doc(results, args.doc, args)
    say(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
