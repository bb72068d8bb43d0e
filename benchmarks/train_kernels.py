"""``parity --train`` verdicts under different CPU kernels: the same entries, the same seeds, with ATen's
kernels pinned (ATEN_CPU_CAPABILITY=default / avx2 / avx512) or PyTorch's oneDNN switched off.

    python benchmarks/train_kernels.py --out /tmp/train_kernels.md            # every setting, every entry
    python benchmarks/train_kernels.py --settings default,avx2 --entries resnet20:32,resnet50:224

Each run is the command a user types (``python -m resnet_spec parity SPEC --train --json F``, default legs:
every installed training leg), with OMP_NUM_THREADS=1, in a fresh process per entry and setting. An entry
``NAME:SIZE`` runs the zoo entry at SIZE x SIZE (a spec that ``extends`` it). One Markdown row per run is
appended to ``--out`` as it finishes (a rerun skips the rows already there). The point is the verdict
column: it must not change with the kernels (issue: a kink on the other side on an AVX-512 Xeon).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _machine import cores, cpu_model  # noqa: E402  (benchmarks/ is sys.path[0])

ENTRIES = ["resnet20:32", "resnet50:64", "resnet50d:64", "preact_resnet164:32", "keras_resnet50v2:64",
           "seresnet50:64", "resnet50:224", "resnet50d:224", "keras_resnet50v2:224", "seresnet50:224"]
SETTINGS = ["avx512", "avx2", "default", "no-onednn"]

# Imported at start-up by every Python process of the run (through PYTHONPATH): once torch is imported,
# switch its oneDNN (mkldnn) kernels off.
_NO_ONEDNN = '''
import importlib.abc, importlib.machinery, sys

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.backends.mkldnn.enabled = False
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Finder())
'''


def env_for(setting: str, tmp: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ATEN_CPU_CAPABILITY", None)
    if setting == "no-onednn":
        with open(os.path.join(tmp, "sitecustomize.py"), "w") as f:
            f.write(_NO_ONEDNN)
        env["PYTHONPATH"] = tmp + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env["ATEN_CPU_CAPABILITY"] = setting
    return env


def run(entry: str, setting: str, tmp: str) -> list:
    name, size = entry.split(":")
    spec = os.path.join(tmp, f"{name}_{size}.yaml")
    with open(spec, "w") as f:
        f.write(f"extends: {name}\nname: {name}\ninput: {{size: {size}}}\n")
    out = os.path.join(tmp, f"{name}_{size}_{setting}.json")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "resnet_spec", "parity", spec, "--train", "--json", out],
                          env=env_for(setting, tmp), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if not os.path.exists(out):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [entry, setting, "-", "-", "-", "-", f"{seconds:.0f}", f"ERROR ({tail[0]})"]
    r = json.load(open(out))
    ref = r.get("against_float64") or {}
    worst = max(ref.items(), key=lambda kv: kv[1].get("grads_max_of_g", 0.0), default=(None, {}))
    close = max(((leg, w) for leg, v in ref.items() for w in v.get("worst", [])[:1]),
                key=lambda lw: lw[1]["max_rel"] / max(lw[1]["allowed"], 1e-30), default=(None, None))
    adopted = "/".join(str(v.get("decisions_adopted", "-")) for v in ref.values())
    conflicts = sum(v.get("decision_conflicts", 0) for v in ref.values())
    closest = (f"{close[1]['tensor']}, {close[0]}: {close[1]['max_rel'] / close[1]['allowed'] * 100:.0f}%"
               if close[0] else "-")
    vs64 = f"{worst[1].get('grads_max_of_g', 0.0):.1e}, {worst[0]}" if worst[0] else "-"
    return [entry, setting, vs64, f"{adopted} ({conflicts})", closest,
            f"{max((p['grads_max_rel'] for p in r['pairs']), default=0.0):.1e}", f"{seconds:.0f}",
            "PASS" if r["passed"] else "FAIL"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", default=",".join(ENTRIES))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    have = open(args.out).read() if args.out and os.path.exists(args.out) else ""
    head = ["entry", "kernels", "grads vs float64 (of G), worst leg", "ReLU decisions adopted per leg "
            "(not adopted)", "closest to its allowance", "grads pairwise (of G)", "s", "result"]
    lines = []
    if not have:
        lines = [f"Machine: {cpu_model()}, {cores()} cores; `python benchmarks/train_kernels.py` "
                 f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    emit(args.out, lines)
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings.split(","):
            for entry in args.entries.split(","):
                if f"| {entry} | {setting} |" in have:
                    continue
                emit(args.out, ["| " + " | ".join(run(entry, setting, tmp)) + " |"])


def emit(path: str, lines: list):
    for line in lines:
        print(line, flush=True)
    if path and lines:
        with open(path, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
