"""How much of the ResNet family people use `resnet-spec import` takes: every model of timm's resnet.py,
resnetv2.py, senet.py, tresnet.py, regnet.py and resnest.py (from the installed timm's registry), torchvision's ResNet /
ResNeXt / Wide ResNet and RegNet lists and the keras.applications ResNets, each imported and proven in a worker
process, and docs/family_coverage.md written: per family, how many import with parity, how many are
refused and, for each refusal, the building block the spec language lacks.

    python benchmarks/family_coverage.py                       # everything -> docs/family_coverage.md
    python benchmarks/family_coverage.py --families timm-resnetv2,timm-senet --limit 3 --out /tmp/c.md

Models run one at a time in a worker subprocess (``--serve``, which keeps torch and timm imported) under
a timeout per model (``--timeout``); a model that runs out of time or kills the worker gets a fresh one.
Each goes through the pipeline of ``resnet-spec import`` (read the source, infer and check the spec, prove
it) at ``--input-size`` px, with one change: the proof runs on **randomized weights**. A library's fresh
model hides a missing op where its initialisation zeroes a branch (timm zero-initialises the last BN of
every block, so a residual branch that the spec gets wrong adds zeros); here every tensor of the canonical
weight set -- conv and linear weights, biases, BN gammas, betas, running means and variances -- is redrawn
(seeded) before the check and the proof, and the proof loads those weights into the library model and
into the generated one alike. keras.applications models are randomized the same way on the Keras side
(a fresh worker each): the worker builds the model, redraws every weight, saves a ``.weights.h5`` and
imports ``keras:NAME=that file``.

Outcomes: ``parity`` (the generated model equals the source, max rel <= 1e-4), ``refused`` (one
``error:`` line; the table shows it: the building block the spec language lacks), ``parity failed``,
``timeout`` or ``crashed`` (a traceback: a bug).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERAS_APPS = ("ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2")


def _timm(module: str):
    def models():
        import timm

        return [f"timm:{m}" for m in timm.list_models(module=module)]
    return models


def _torchvision():
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [f"torchvision:{m}" for m in names if m.startswith(("resnet", "resnext", "wide_resnet"))]


def _torchvision_regnet():
    import torchvision

    return [f"torchvision:{m}" for m in torchvision.models.list_models(module=torchvision.models)
            if m.startswith("regnet_")]


#: key -> (title, function listing the family's sources)
FAMILIES = {
    "timm-resnet": ("timm resnet.py", _timm("resnet")),
    "timm-resnetv2": ("timm resnetv2.py", _timm("resnetv2")),
    "timm-senet": ("timm senet.py (legacy SENet)", _timm("senet")),
    "timm-tresnet": ("timm tresnet.py", _timm("tresnet")),
    "timm-sknet": ("timm sknet.py (SKNet)", _timm("sknet")),
    "torchvision": ("torchvision ResNet / ResNeXt / Wide ResNet", _torchvision),
    "timm-regnet": ("timm regnet.py", _timm("regnet")),
    "timm-resnest": ("timm resnest.py", _timm("resnest")),
    "timm-res2net": ("timm res2net.py", _timm("res2net")),
    "torchvision-regnet": ("torchvision RegNet", _torchvision_regnet),
    "keras": ("keras.applications ResNet / ResNetV2", lambda: [f"keras:{m}" for m in KERAS_APPS]),
}


# --- the worker: one model, in its own process ----------------------------------------------------

def randomized(weights: dict, seed: int = 0) -> dict:
    """Every tensor of a canonical weight set redrawn: BN statistics and affine parameters drawn away from
    their identity values, conv/linear weights He-scaled normal, biases small normal."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, arr in weights.items():
        mod, _, leaf = name.rpartition(".")
        bn = f"{mod}.running_var" in weights
        if leaf == "running_var":
            new = rng.uniform(0.5, 1.5, arr.shape)
        elif leaf == "running_mean" or leaf == "bias":
            new = rng.normal(0.0, 0.1, arr.shape)
        elif bn or arr.ndim == 1:  # a norm's scale (GroupNorm has no running statistics)
            new = rng.uniform(0.5, 1.5, arr.shape)
        else:
            fan_in = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
            new = rng.normal(0.0, (2.0 / fan_in) ** 0.5, arr.shape)
        out[name] = new.astype(np.float32)
    return out


def _keras_randomized_source(source: str, size: int, tmp: str) -> str:
    """``keras:NAME=FILE.weights.h5`` with every weight of the fresh keras.applications model redrawn."""
    import keras
    import numpy as np

    name = source.split(":", 1)[1]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        if layer.__class__.__name__ == "BatchNormalization":  # gamma, beta, moving mean, moving variance
            new = [rng.uniform(0.5, 1.5, ws[0].shape), rng.normal(0, 0.1, ws[1].shape),
                   rng.normal(0, 0.1, ws[2].shape), rng.uniform(0.5, 1.5, ws[3].shape)]
        else:
            new = [rng.normal(0, (2.0 / max(1, int(np.prod(w.shape[:-1])))) ** 0.5, w.shape) if w.ndim > 1
                   else rng.normal(0, 0.1, w.shape) for w in ws]
        layer.set_weights([w.astype(np.float32) for w in new])
    path = os.path.join(tmp, f"{name}.weights.h5")
    model.save_weights(path)
    return f"keras:{name}={path}"


def run_one(source: str, size: int, isolated: bool = True) -> dict:
    """Import ``source`` with randomized weights and prove it; the outcome as a dict. ``isolated=False``:
    a PyTorch source's proof runs in this process (the serving worker is a process of its own)."""
    from resnet_spec.errors import ResNetSpecError
    from resnet_spec.importers import read_source
    from resnet_spec.importers.infer import build_spec
    from resnet_spec.importers.run import prove
    from resnet_spec.importers.source import check_source, sanitize_name

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            real = _keras_randomized_source(source, size, tmp) if source.startswith("keras:") else source
            src = read_source(real, size)
            if src.kind in ("torchvision", "timm"):
                src.weights = randomized(src.weights)
            src.label = source
            _, net, full = build_spec(src, sanitize_name(source.split(":", 1)[1].lower()), size)
            cmp = prove(src, net, full, check_source(net, src), isolated=isolated)
        except ResNetSpecError as exc:
            return {"status": "refused", "message": str(exc), "seconds": time.perf_counter() - t0}
    status = "parity" if cmp["passed"] else "parity failed"
    return {"status": status, "max_rel": cmp.get("max_rel"), "params": net.params, "blocks": len(net.blocks),
            "seconds": time.perf_counter() - t0}


MARK = "@@family_coverage "


def serve(size: int) -> None:
    """The worker loop: one source per stdin line, one ``MARK`` + JSON line per source on stdout."""
    import traceback

    for line in sys.stdin:
        source = line.strip()
        try:
            r = run_one(source, size, isolated=source.startswith("keras:"))
        except Exception as exc:  # a bug: said, and the worker goes on with the next model
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            r = {"status": "crashed", "message": last[:300], "seconds": 0.0}
        print(MARK + json.dumps(r), flush=True)


class Server:
    """A worker process (``--serve``) that keeps torch and timm imported across models; restarted after
    a timeout or a crash. Its stderr goes to a log file, whose last line a crash reports."""

    def __init__(self, size: int):
        self.size, self.proc = size, None
        self.log = tempfile.NamedTemporaryFile("w+", prefix="family_coverage_", suffix=".log", delete=False)

    def _start(self):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--input-size", str(self.size)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=ROOT, bufsize=1)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ask(self, source: str, timeout: float) -> dict:
        import select

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        t0 = time.perf_counter()
        self.proc.stdin.write(source + "\n")
        self.proc.stdin.flush()
        while True:
            left = timeout - (time.perf_counter() - t0)
            ready = select.select([self.proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                self.stop()
                return {"status": "timeout", "seconds": timeout}
            line = self.proc.stdout.readline()
            if not line:  # the worker died (a signal, out of memory)
                self.stop()
                return {"status": "crashed", "message": self._last_log_line(), "seconds": time.perf_counter() - t0}
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])

    def _last_log_line(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return (lines or ["(no output)"])[-1][:300]


# --- the report -----------------------------------------------------------------------------------

def _reason(source: str, message: str) -> str:
    """A refusal without the source's name in front (the table's row names it)."""
    for prefix in (f"{source} ", f"{source}: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message.replace("|", "\\|")


def family_section(title: str, rows: list) -> list:
    """Markdown lines for one family: the counts, then one row per model that did not import."""
    counts = {}
    for _, r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    out = [f"## {title}", "", f"{len(rows)} models: " + ", ".join(
        f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])) + ".", ""]
    ok = [s.split(":", 1)[1] for s, r in rows if r["status"] == "parity"]
    if ok:
        out += ["Imported with parity: " + ", ".join(f"`{m}`" for m in ok) + ".", ""]
    rest = [(s, r) for s, r in rows if r["status"] != "parity"]
    if rest:
        out += ["| model | outcome | what it lacks / the message |", "|---|---|---|"]
        for s, r in rest:
            msg = _reason(s, r.get("message", "")) or (f"max rel {r['max_rel']:.3g}" if r.get("max_rel") else "")
            out.append(f"| `{s.split(':', 1)[1]}` | {r['status']} | {msg} |")
        out.append("")
    return out


def report(results: dict, args, seconds: float) -> str:
    import platform

    from importlib import metadata

    versions = []
    for mod in ("torch", "timm", "torchvision", "keras", "tensorflow"):
        try:
            versions.append(f"{mod} {metadata.version(mod)}")
        except metadata.PackageNotFoundError:
            pass
    lines = ["# Import coverage of the ResNet family", "",
             "Written by `benchmarks/family_coverage.py` (`" + " ".join(["python benchmarks/family_coverage.py"]
                                                                      + sys.argv[1:]) + "`): every model name of "
             "each family, imported at "
             f"{args.input_size} px with **randomized weights** (every BN statistic and affine parameter, every "
             "conv and linear weight redrawn, so no zero-initialised branch hides a missing op) and proven against "
             "the library's own model (max rel <= 1e-4). A refusal is the one `error:` line `resnet-spec import` "
             "prints: it names the building block the spec language cannot express yet.", "",
             f"Machine: {cpu_model()}, {cores()} cores, Python {platform.python_version()}, {', '.join(versions)}. "
             f"Total time {seconds / 60:.1f} min" + (f" (--limit {args.limit} per family)" if args.limit else "")
             + ".", "", "| family | models | imported with parity | refused | other |", "|---|---|---|---|---|"]
    for key, rows in results.items():
        n_ok = sum(r["status"] == "parity" for _, r in rows)
        n_ref = sum(r["status"] == "refused" for _, r in rows)
        lines.append(f"| {FAMILIES[key][0]} | {len(rows)} | {n_ok} | {n_ref} | {len(rows) - n_ok - n_ref} |")
    lines.append("")
    for key, rows in results.items():
        lines += family_section(FAMILIES[key][0], rows)
    return "\n".join(lines)


def run_families(keys: list, args) -> dict:
    """{family key: [(source, outcome)]}, with one progress line per model. keras.applications models get a
    fresh worker each (TensorFlow and PyTorch are never loaded into one process after each other)."""
    results = {}
    server = Server(args.input_size)
    try:
        for key in keys:
            sources = FAMILIES[key][1]()
            sources = sources[: args.limit] if args.limit else sources
            results[key] = []
            for i, source in enumerate(sources, 1):
                if key == "keras":
                    server.stop()
                r = server.ask(source, args.timeout)
                if key == "keras":
                    server.stop()
                results[key].append((source, r))
                detail = f"max rel {r['max_rel']:.2g}" if r.get("max_rel") is not None else r.get("message", "")
                print(f"[{key} {i}/{len(sources)}] {source}: {r['status']} ({r['seconds']:.1f} s) {detail}"[:300],
                      flush=True)
    finally:
        server.stop()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    p.add_argument("--limit", type=int, default=0, help="at most N models per family (0: all)")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "family_coverage.md"))
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the worker loop
    args = p.parse_args(argv)
    if args.serve:
        serve(args.input_size)
        return 0
    keys = [k.strip() for k in args.families.split(",") if k.strip()]
    unknown = [k for k in keys if k not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    t0 = time.perf_counter()
    results = run_families(keys, args)
    text = report(results, args, time.perf_counter() - t0)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {args.out} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
