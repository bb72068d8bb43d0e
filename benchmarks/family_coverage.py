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

from _coverage_report import _said, report as _report, run_record  # noqa: E402  (benchmarks/ is sys.path[0])

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

def randomized(weights: dict, seed: int = 0, net=None, in_place: bool = False) -> dict:
    """Every tensor of a canonical weight set redrawn: BN statistics and affine parameters drawn away from
    their identity values, conv/linear weights He-scaled normal, biases small normal. With the IR ``net``,
    each block's last norm scale is divided by sqrt(number of blocks), as ``init_weights(random_bn=True)``
    does: otherwise a deep network is so ill-conditioned that no float32 run can be held to 1e-4 (timm's
    resnet152 in float32 and in float64 differ by 4e-4 of the logits' range; 2.5e-6 scaled). ``in_place``:
    ``weights`` takes the new tensors too (the old ones freed as it goes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    last = {f"{n}.weight" for n in net.last_bn_of_blocks()} if net is not None else set()
    out = {}
    for name in list(weights):  # names only: with ``in_place`` each old tensor goes as its new one comes
        arr = weights[name]
        mod, _, leaf = name.rpartition(".")
        bn = f"{mod}.running_var" in weights
        if leaf == "running_var":
            new = rng.uniform(0.5, 1.5, arr.shape)
        elif leaf == "running_mean" or leaf == "bias":
            new = rng.normal(0.0, 0.1, arr.shape)
        elif bn or arr.ndim == 1:  # a norm's scale (GroupNorm has no running statistics)
            new = rng.uniform(0.5, 1.5, arr.shape) / (len(net.blocks) ** 0.5 if name in last else 1.0)
        else:
            fan_in = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
            new = rng.normal(0.0, (2.0 / fan_in) ** 0.5, arr.shape)
        out[name] = new.astype(np.float32)
        if in_place:  # the old tensor freed as its new one is made (a 936M-parameter model holds 3.7 GB)
            weights[name] = out[name]
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


def _read(source: str, size: int, tmp: str, max_params=None) -> tuple:
    """(source, IR, full spec) of ``source`` read and inferred, a PyTorch library's weights randomized."""
    from resnet_spec.importers import read_source
    from resnet_spec.importers.infer import build_spec
    from resnet_spec.importers.source import sanitize_name

    real = _keras_randomized_source(source, size, tmp) if source.startswith("keras:") else source
    src = read_source(real, size, max_params)
    src.label = source
    _, net, full = build_spec(src, sanitize_name(source.rpartition(":")[2].lower()), size)
    if src.kind in ("torchvision", "timm"):
        src.weights = randomized(src.weights, net=net, in_place=True)
    return src, net, full


def run_one(source: str, size: int, isolated: bool = True, onnx: bool = False) -> dict:
    """Import ``source`` with randomized weights and prove it; the outcome as a dict, with the ONNX file's
    (:func:`run_onnx`, same weights) under ``"onnx"`` when ``onnx`` and the source is a PyTorch library's.
    ``isolated=False``: a PyTorch source's proof runs in this process (the serving worker is its own)."""
    from resnet_spec.errors import ResNetSpecError
    from resnet_spec.importers.run import prove
    from resnet_spec.importers.source import check_source

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            src, net, full = _read(source, size, tmp)
            cmp = prove(src, net, full, check_source(net, src), isolated=isolated)
        except ResNetSpecError as exc:
            return {"status": "refused", "message": str(exc), "seconds": time.perf_counter() - t0}
    status = "parity" if cmp["passed"] else "parity failed"
    out = {"status": status, "max_rel": cmp.get("max_rel"), "params": net.params, "blocks": len(net.blocks),
           "seconds": time.perf_counter() - t0}
    need, have = ONNX_ROUTE_COPIES * 4 * net.params / 2**30, _available_gib()
    if onnx and src.kind in ("torchvision", "timm") and need > have:
        out["onnx"] = {"status": "not run", "seconds": 0.0, "message": f"the export and its import hold about "
                       f"{ONNX_ROUTE_COPIES} copies of the weights, {need:.0f} GiB; {have:.0f} GiB were free"}
    elif onnx and src.kind in ("torchvision", "timm"):
        try:
            out["onnx"] = run_onnx(src, size)
        except Exception as exc:  # a bug (the exporter's or ours): said, with the state dict's outcome kept
            out["onnx"] = {"status": "crashed", "message": _last_line(exc), "seconds": 0.0}
    return out


#: copies of a model's float32 weights the ONNX route holds at its peak: the library model, the canonical
#: weights, the exporter's graph and its file (TorchScript keeps a standardized conv's weight twice), then the
#: import's (measured: resnetv2_101x3_bit's 1.55 GB of weights, a 3.1 GB file, import's peak 9.6 GB)
ONNX_ROUTE_COPIES = 6


def _available_gib() -> float:
    """The memory the system reports available, in GiB (infinite where unknown)."""
    from resnet_spec.isolate import available_bytes

    avail = available_bytes()
    return float("inf") if avail is None else avail / 2**30


def run_onnx(src, size: int) -> dict:
    """The same model through its ``torch.onnx.export`` file: the library's model holding ``src``'s
    (randomized) weights, exported by the TorchScript exporter (opset 17) at ``size`` px, then imported and
    proven as ``resnet-spec import FILE.onnx --max-onnx-params N`` does (ONNX Runtime running the file against the
    generated model; N four times the library's parameters, for the exporter's extra constants), its parameter
    count held to the library's."""
    import warnings

    import torch

    from resnet_spec.backends.torch.names import source_state
    from resnet_spec.budgets import IMPORT_MAX_PARAMS
    from resnet_spec.backends.torch.reader import library_model
    from resnet_spec.errors import ResNetSpecError
    from resnet_spec.importers.run import prove
    from resnet_spec.importers.source import check_source

    t0 = time.perf_counter()
    model = library_model(*src.facts["library"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = source_state(src.weights, src.facts.get("source_names", {}), shapes)
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        return {"status": "crashed", "message": f"{len(missing)} library tensors not in the canonical weights "
                                                f"(first {missing[0]})", "seconds": time.perf_counter() - t0}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "FILE.onnx")
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, size, size),), path, dynamo=False, opset_version=17)
        del model, state
        try:
            fsrc, net, full = _read(path, size, tmp, max(IMPORT_MAX_PARAMS, 4 * params))
            cmp = prove(fsrc, net, full, check_source(net, fsrc))
        except ResNetSpecError as exc:
            return {"status": "refused", "message": str(exc).replace(path, "FILE.onnx"),
                    "seconds": time.perf_counter() - t0}
    status = "parity" if cmp["passed"] and net.params == params else "parity failed"
    out = {"status": status, "max_rel": cmp.get("max_rel"), "seconds": time.perf_counter() - t0}
    if net.params != params:
        out["message"] = f"{net.params:,} parameters in the spec, {params:,} in the library's model"
    return out


def _last_line(exc: BaseException) -> str:
    import traceback

    return traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]


MARK = "@@family_coverage "
#: a worker holding more than this (freed models' memory torch keeps) is replaced before the next model
MAX_WORKER_GB = 3.0


def serve(size: int, onnx: bool) -> None:
    """The worker loop: one source per stdin line, one ``MARK`` + JSON line per source on stdout, which only
    this loop writes: anything else printed (Python or a library's C code) goes to stderr, so that the parent's
    ``select`` never waits on a line already buffered behind a stray one."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        source = line.strip()
        try:
            r = run_one(source, size, isolated=source.startswith("keras:"), onnx=onnx)
        except Exception as exc:  # a bug: said, and the worker goes on with the next model
            r = {"status": "crashed", "message": _last_line(exc), "seconds": 0.0}
        print(MARK + json.dumps(r), file=out, flush=True)


class Server:
    """A worker process (``--serve``) that keeps torch and timm imported across models; restarted after
    a timeout or a crash. Its stderr goes to a log file, whose last line a crash reports."""

    def __init__(self, size: int, onnx: bool = True):
        self.size, self.onnx, self.proc = size, onnx, None
        self.log = tempfile.NamedTemporaryFile("w+", prefix="family_coverage_", suffix=".log", delete=False)

    def _start(self):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--input-size", str(self.size)] + (
            [] if self.onnx else ["--no-onnx"])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=ROOT, bufsize=1)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def rss_gb(self) -> float:
        """The worker's resident memory (0 when none runs)."""
        from resnet_spec.isolate import resident_bytes

        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return resident_bytes(self.proc.pid) / 2**30

    def ask(self, source: str, timeout: float) -> dict:
        import select

        if self.rss_gb() > MAX_WORKER_GB:  # what large models left behind: a fresh worker for the next
            self.stop()
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


def report(results: dict, args, seconds: float) -> str:
    """docs/family_coverage.md of one run's ``results`` (:mod:`_coverage_report`)."""
    return _report(results, {k: FAMILIES[k][0] for k in results}, [run_record(args, seconds)])


def run_families(keys: list, args, only=None) -> dict:
    """{family key: [(source, outcome)]}, with one progress line per model (``only``: just those sources).
    keras.applications models get a fresh worker each (TensorFlow and PyTorch are never loaded into one
    process after each other)."""
    results = {}
    server = Server(args.input_size, args.onnx)
    try:
        for key in keys:
            sources = FAMILIES[key][1]()
            sources = [x for x in sources if only is None or x in only]
            sources = sources[: args.limit] if args.limit else sources
            results[key] = []
            for i, source in enumerate(sources, 1):
                if key == "keras":
                    server.stop()
                r = server.ask(source, args.timeout)
                if key == "keras":
                    server.stop()
                results[key].append((source, r))
                said = [f"{r['status']} ({r['seconds']:.1f} s) {_said(source, r)}"]
                if r.get("onnx"):
                    said.append(f"ONNX file: {r['onnx']['status']} ({r['onnx']['seconds']:.1f} s) "
                                f"{_said(source, r['onnx'])}")
                print(f"[{key} {i}/{len(sources)}] {source}: " + "; ".join(said)[:400], flush=True)
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
    p.add_argument("--json", default=None, help="the outcomes (default: --out with .json)")
    p.add_argument("--only", default="", help="comma list of sources (timm:NAME, ...) run again into --json")
    p.add_argument("--no-onnx", dest="onnx", action="store_false",
                   help="only the state dicts (not each PyTorch model's torch.onnx.export file too)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the worker loop
    args = p.parse_args(argv)
    if args.serve:
        serve(args.input_size, args.onnx)
        return 0
    keys = [k.strip() for k in args.families.split(",") if k.strip()]
    unknown = [k for k in keys if k not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    path = args.json or os.path.splitext(args.out)[0] + ".json"
    if only and not os.path.exists(path):
        p.error(f"--only merges into {path}, which does not exist: run without --only first")
    known = {x for k in keys for x in FAMILIES[k][1]()} if only else set()
    if [x for x in only if x not in known]:
        p.error(f"--only: {', '.join(x for x in only if x not in known)} not in the families {', '.join(keys)}")
    return write(keys, args, path, only or None)


def write(keys: list, args, path: str, only) -> int:
    """Run, then write ``path`` (the JSON) and --out: the whole run's outcomes, or those of the sources ``only``
    names merged into the JSON's."""
    saved = {"runs": [], "results": {}}
    if only:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    t0 = time.perf_counter()
    fresh = run_families(keys, args, only)
    results = {k: [list(row) for row in rows] for k, rows in saved["results"].items()}
    for key, rows in fresh.items():
        old = dict(map(tuple, results.get(key, [])))
        old.update(rows)
        if not old:
            continue
        order = [s for s in FAMILIES[key][1]() if s in old]
        results[key] = [[s, old[s]] for s in order]
    runs = saved["runs"] + [run_record(args, time.perf_counter() - t0, only)]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"runs": runs, "results": results}, f, indent=1)
    text = _report({k: [tuple(r) for r in rows] for k, rows in results.items()},
                   {k: FAMILIES[k][0] for k in results}, runs)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {args.out} and {path} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
