"""The whole job, end to end, against the converters people use instead: each tool's complete run in a fresh
process (interpreter start, imports, reading the input, writing the output), timed from outside, the same
jobs interleaved in one run, the median of ``--repeats``; ratio = the peer's time / ours (above 1: ours is
faster). Writes ``docs/end_to_end.json`` and prints the table docs/benchmarks.md quotes.

    python benchmarks/end_to_end.py [--repeats 3] [--json docs/end_to_end.json]

Jobs (random weights, made before timing starts, outside the timed runs):
  torch->onnx   a torchvision resnet50 state dict (.pth) to an ONNX file: ``resnet-spec convert resnet50
                --weights r50.pth --to onnx`` vs ``torch.onnx.export`` (legacy TorchScript exporter and dynamo)
                in a script that builds torchvision's resnet50 and loads the same file
  onnx->torch   an ONNX file of that state dict to a PyTorch model: ``resnet-spec import r50.onnx`` (which also
                runs the file in ONNX Runtime and the generated model, and compares) vs onnx2torch (``convert`` +
                ``torch.save``); the file is resnet-spec's own (onnx2torch fails on the legacy exporter's opset-17
                file, ``r50_legacy.onnx``, also run, and on later opsets' Identity nodes)
  keras->onnx   a keras.applications ResNet50V2 ``.weights.h5`` to ONNX: ``resnet-spec convert keras_resnet50v2
                --weights keras:ResNet50V2=FILE --to onnx`` vs tf2onnx ``from_keras``
  torch->all    ``resnet-spec convert resnet50 --weights r50.pth --to all`` (PyTorch .pt2 + .py, ONNX, .keras +
                SavedModel; backends run side by side): ours only, no peer writes all three
  import        ``resnet-spec import torchvision:resnet50``, and the same job in one process split into reading
                the source (building torchvision's model, its state dict) and the rest (spec, proof, files)

Peers come from the package registry into a cached folder (``pip install --no-deps --target``) put on
``PYTHONPATH`` for these runs only, so they use this environment's torch, onnx and TensorFlow and are never
dependencies of the project. A peer that cannot be installed or fails is reported as such, not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _machine import cores, cpu_model  # noqa: E402  (benchmarks/ is sys.path[0])
from _venvs import cache_dir

PY = sys.executable
CLI = [PY, "-m", "resnet_spec.cli"]
PEERS = {"onnx2torch": "onnx2torch==1.5.15", "tf2onnx": "tf2onnx==1.17.0"}

TORCH_EXPORT = """
import sys, torch, torchvision
m = torchvision.models.resnet50()
m.load_state_dict(torch.load(sys.argv[1], weights_only=True)); m.eval()
opset = {"opset_version": int(sys.argv[4])} if len(sys.argv) > 4 else {}
torch.onnx.export(m, (torch.zeros(1, 3, 224, 224),), sys.argv[2], dynamo=sys.argv[3] == "dynamo",
                  input_names=["input"], output_names=["logits"], **opset)
"""
ONNX2TORCH = """
import sys, torch
from onnx2torch import convert
torch.save(convert(sys.argv[1]), sys.argv[2])
"""
TF2ONNX = """
import sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras, tf2onnx, tensorflow as tf
m = keras.applications.ResNet50V2(weights=None); m.load_weights(sys.argv[1])
spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input"),)
tf2onnx.convert.from_keras(m, input_signature=spec, opset=17, output_path=sys.argv[2])
"""
MAKE_KERAS = """
import sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
keras.utils.set_random_seed(0)
keras.applications.ResNet50V2(weights=None).save_weights(sys.argv[1])
"""
IMPORT_SPLIT = """
import sys, time
t0 = time.perf_counter()
import torch, torchvision
from resnet_spec.importers import read_source
from resnet_spec.importers.write import import_to_dir
t1 = time.perf_counter()
read_source("torchvision:resnet50")
t2 = time.perf_counter()
import_to_dir("torchvision:resnet50", sys.argv[1], force=True, echo=lambda *a: None)
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, (t3 - t2) - (t2 - t1))
"""


def _peer_path(name: str):
    """A folder holding peer ``name`` (installed once, without its dependencies), or None."""
    target = os.path.join(cache_dir(), f"peer-{PEERS[name].replace('==', '-')}")
    if not os.path.exists(os.path.join(target, ".ready")):
        proc = subprocess.run([PY, "-m", "pip", "install", "-q", "--no-deps", "--target", target, PEERS[name]],
                              capture_output=True, text=True)
        if proc.returncode:
            return None
        open(os.path.join(target, ".ready"), "w").close()
    return target


def _run(argv, env=None) -> tuple:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    elapsed = time.perf_counter() - t
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, tail[:200]
    return elapsed, proc.stdout


def _jobs(d: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    peer_env = {}
    for name in PEERS:
        path = _peer_path(name)
        peer_env[name] = None if path is None else dict(env, PYTHONPATH=path)
    pth, onnx_file, h5 = (os.path.join(d, f) for f in ("r50.pth", "r50.onnx", "r50v2.weights.h5"))
    out = lambda tag: os.path.join(d, "out", tag)  # noqa: E731
    return {
        "torch->onnx": {
            "resnet-spec": (CLI + ["convert", "resnet50", "--weights", pth, "--to", "onnx", "-o", out("a"), "--force"], env),
            "torch.onnx.export (legacy)": ([PY, "-c", TORCH_EXPORT, pth, out("legacy.onnx"), "legacy"], env),
            "torch.onnx.export (dynamo)": ([PY, "-c", TORCH_EXPORT, pth, out("dynamo.onnx"), "dynamo"], env)},
        "onnx->torch": {
            "resnet-spec": (CLI + ["import", onnx_file, "-o", out("b"), "--force"], env),
            "onnx2torch": ([PY, "-c", ONNX2TORCH, onnx_file, out("o2t.pt")], peer_env["onnx2torch"]),
            "onnx2torch (legacy exporter's file)": ([PY, "-c", ONNX2TORCH, os.path.join(d, "r50_legacy.onnx"),
                                                    out("o2t_legacy.pt")], peer_env["onnx2torch"])},
        "keras->onnx": {
            "resnet-spec": (CLI + ["convert", "keras_resnet50v2", "--weights", f"keras:ResNet50V2={h5}", "--to",
                                   "onnx", "-o", out("c"), "--force"], env),
            "tf2onnx": ([PY, "-c", TF2ONNX, h5, out("tf2onnx.onnx")], peer_env["tf2onnx"])},
        "torch->all": {
            "resnet-spec": (CLI + ["convert", "resnet50", "--weights", pth, "--to", "all", "-o", out("d"), "--force"], env)},
        "import": {
            "resnet-spec": (CLI + ["import", "torchvision:resnet50", "-o", out("e"), "--force"], env)},
    }


def _inputs(d: str) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), os.path.join(d, "r50.pth"))
    os.makedirs(os.path.join(d, "out"))
    for argv in ([PY, "-c", TORCH_EXPORT, os.path.join(d, "r50.pth"), os.path.join(d, "r50_legacy.onnx"), "legacy", "17"],
                 CLI + ["convert", "resnet50", "--weights", os.path.join(d, "r50.pth"), "--to", "onnx", "-o",
                        os.path.join(d, "src")],
                 [PY, "-c", MAKE_KERAS, os.path.join(d, "r50v2.weights.h5")]):
        subprocess.run(argv, check=True, capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    os.replace(os.path.join(d, "src", "resnet50.onnx"), os.path.join(d, "r50.onnx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", default="", help="comma-separated jobs to run (default: all)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "docs", "end_to_end.json"))
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="e2e-")
    _inputs(d)
    jobs = _jobs(d)
    if args.jobs:
        jobs = {k: v for k, v in jobs.items() if k in args.jobs.split(",")}
    times = {job: {tool: [] for tool in tools} for job, tools in jobs.items()}
    failed = {}
    for r in range(args.repeats):
        for job, tools in jobs.items():
            for tool, (argv, env) in tools.items():
                if env is None:
                    failed[(job, tool)] = "could not be installed from the registry"
                    continue
                t, info = _run(argv, env)
                if t is None:
                    failed[(job, tool)] = info
                else:
                    times[job][tool].append(t)
                print(f"[{r + 1}/{args.repeats}] {job:12s} {tool:28s} {'FAILED: ' + info if t is None else f'{t:.2f} s'}",
                      flush=True)
    split = [float(v) for v in subprocess.run([PY, "-c", IMPORT_SPLIT, os.path.join(d, "out", "f")], check=True,
                                             capture_output=True, text=True).stdout.split()]
    rows = []
    for job, tools in times.items():
        ours = statistics.median(tools["resnet-spec"]) if tools["resnet-spec"] else None
        for tool, ts in tools.items():
            med = statistics.median(ts) if ts else None
            rows.append({"job": job, "tool": tool, "median_s": med, "runs": ts,
                         "ratio_peer_over_ours": (med / ours) if med and ours and tool != "resnet-spec" else None,
                         "failed": failed.get((job, tool))})
    result = {"machine": f"{cpu_model()}, {cores()} cores", "python": sys.version.split()[0],
              "versions": _versions(), "repeats": args.repeats, "rows": rows,
              "import_in_one_process_s": {"imports": split[0], "read_source": split[1], "rest": split[2]}}
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    for row in rows:
        ratio = row["ratio_peer_over_ours"]
        print(f"| {row['job']} | {row['tool']} | "
              + (f"{row['median_s']:.2f} s" if row["median_s"] else f"failed: {row['failed']}")
              + (f" | {ratio:.2f}x |" if ratio else " | - |"))
    print("import torchvision:resnet50 in one process: imports {imports:.2f} s, reading the source {read_source:.2f}"
          " s, the rest {rest:.2f} s".format(**result["import_in_one_process_s"]))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorflow-cpu", "keras"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out | {name: req.split("==")[1] for name, req in PEERS.items()}


if __name__ == "__main__":
    main()
