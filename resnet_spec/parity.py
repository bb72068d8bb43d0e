"""Cross-framework parity: run every backend on one weight set and one input, compare, diagnose.

Each backend runs in its own worker process (:mod:`resnet_spec.isolate`) and returns numpy arrays,
so frameworks whose native libraries do not coexist can never take the checker down, whatever the
caller imported before.

Metrics, for a pair of outputs ``a`` (the first backend) and ``b``:

* ``max_abs = max |a - b|``
* ``max_rel = max |a - b| / max |a|`` -- the error relative to the output's scale. Absolute
  errors grow with the logit scale (random weights give logits of a few hundred), so tolerances are
  stated on this ratio.
* ``top1``: the fraction of samples whose arg-max class agrees.

A pair passes when ``max_rel <= TOLERANCES[dtype]``. The tolerances come from measurements over the
whole zoo (docs/parity.md): the float32 bound is 48x the worst measured error (2.1e-6; float16 16x,
bfloat16 8x), so a real mismatch (a wrong padding, a transposed kernel, a wrong epsilon) stands out
while summation-order noise never fails a run.

Diagnosis compares the taps -- the stem output, every block output and the logits, all NCHW -- in
network order and names the first one whose relative error exceeds the tolerance.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import ir
from .backends import BACKENDS, DTYPES
from .errors import BackendUnavailable, ResNetSpecError
from .isolate import Worker, WorkerCrashed

#: max |a-b| / max |a| a pair may reach, per dtype (see docs/parity.md for the measurements). Worst measured on
#: CPU: float32 2.1e-6 (margin 48x), float16 1.2e-3 (16x), bfloat16 1.25e-2 (8x).
TOLERANCES = dict(zip(DTYPES, (1e-4, 2e-2, 1e-1)))  # float32, float16, bfloat16


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """max_abs, max_rel (relative to max |a|) and, for 2-D logits, top-1 agreement."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "top1": None,
                "shape_mismatch": [list(a64.shape), list(b64.shape)]}
    diff = np.abs(a64 - b64)
    finite = np.isfinite(a64).all() and np.isfinite(b64).all()
    max_abs = float(diff.max()) if finite and diff.size else (0.0 if finite else float("inf"))
    scale = float(np.abs(a64).max()) if a64.size else 0.0
    out = {"max_abs": max_abs, "max_rel": max_abs / max(scale, 1e-30) if max_abs else 0.0, "scale": scale}
    if a64.ndim == 2:
        out["top1"] = float(np.mean(a64.argmax(1) == b64.argmax(1)))
    return out


def rel_error(a, b) -> float:
    """The one relative-error metric (tests and tools use it too): ``max |a - b| / max |a|``, the
    error relative to ``a``'s output scale; inf when the shapes differ or a value is not finite."""
    return compare(a, b)["max_rel"]


def infer_worker(backend: str, spec_yaml: str, weights: dict, x: np.ndarray, options: dict, mutate):
    """Runs in a worker process: build ``backend``'s model and run it (see each backend's ``infer``)."""
    from .backends import prepare

    mod, net = prepare(backend, spec_yaml)
    t0 = time.perf_counter()
    outputs, device = mod.infer(net, weights, x, mutate=mutate, **options)
    return outputs, device, time.perf_counter() - t0


@dataclass
class BackendRun:
    name: str
    device: str = ""
    seconds: float = 0.0
    error: str | None = None
    outputs: dict = field(default_factory=dict, repr=False)


@dataclass(kw_only=True)
class RunOutcome:
    """A parity report's common part (inference :class:`Report`, training in :mod:`train_parity`): what
    ran (``runs``, {leg: BackendRun}), what was compared (``pairs``), on what, and what it derives."""

    spec: str
    device: str
    batch: int
    seed: int
    weights: str
    runs: dict
    pairs: list
    skipped: dict = field(default_factory=dict)

    @property
    def not_run(self) -> list:
        """Backends that were asked for but did not run (unavailable, no such device, crashed)."""
        return [n for n, r in self.runs.items() if r.error is not None]

    @property
    def passed(self) -> bool:
        """Every requested backend ran and every pair is within the tolerance. A backend that could not
        run fails the check: a comparison that was asked for and not made is never a pass."""
        return not self.not_run and len(self.runs) >= 2 and all(p["passed"] for p in self.pairs)

    def runs_json(self) -> dict:
        return {n: {"device": r.device, "seconds": round(r.seconds, 3), "error": r.error}
                for n, r in self.runs.items()}

    def leg_lines(self, width: int) -> list:
        """The report's first table: one line per requested leg (its device, or why it did not run) and
        per leg skipped as not installed; names padded to ``width``."""
        lines = [f"  {n:<{width}}  {r.device if r.error is None else 'NOT RUN: ' + r.error}"
                 for n, r in self.runs.items()]
        return lines + [f"  {n:<{width}}  not installed, skipped: {why}" for n, why in self.skipped.items()]

    def verdict(self, legs: str, agree: str) -> str:
        """The report's last line: PASS/FAIL, how many pairs ``agree`` ('within max rel 1e-04', 'agree in
        training mode') and what did not run; ``legs`` names the runs ('backends', 'legs')."""
        if sum(1 for r in self.runs.values() if r.error is None) < 2:
            return f"FAIL: fewer than two {legs} ran, nothing was compared"
        good = sum(1 for p in self.pairs if p["passed"])
        missing = f"; not run: {', '.join(self.not_run)}" if self.not_run else ""
        return f"{'PASS' if self.passed else 'FAIL'}: {good}/{len(self.pairs)} pairs {agree}{missing}"


@dataclass(kw_only=True)
class Report(RunOutcome):
    dtype: str
    tolerance: float
    allow_tf32: bool
    layers: bool

    def to_json(self) -> dict:
        return {
            "spec": self.spec, "dtype": self.dtype, "device": self.device, "batch": self.batch,
            "seed": self.seed, "weights": self.weights, "tolerance_rel": self.tolerance,
            "tf32": self.allow_tf32 if self.dtype == "float32" else None,
            "backends": self.runs_json(), "pairs": self.pairs, "not_run": self.not_run,
            "not_installed": self.skipped, "passed": self.passed,
        }


class Runner:
    """Keeps one worker process per backend alive across :meth:`run` calls (used by sweeps and tests)."""

    def __init__(self):
        self._workers = {}  # one per leg, started on first use

    def infer(self, backend, net, weights, x, options, mutate=None):
        return self.call(backend, infer_worker, backend, net.spec_yaml, weights, x, options, mutate)

    def call(self, backend, fn, *args, **kwargs):
        """Run any module-level ``fn`` in ``backend``'s worker process (for tools and tests)."""
        if backend not in self._workers:
            self._workers[backend] = Worker(backend)
        return self._workers[backend].call(fn, *args, **kwargs)

    def close(self):
        for w in self._workers.values():
            w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_legs(text: str) -> tuple:
    """``--backends`` text -> (legs to run, {leg: reason} for the legs of ``all`` that are not installed):
    :func:`resnet_spec.backends.legs.parse_legs`, the one registry of legs and aliases."""
    from .backends import get
    from .backends.legs import parse_legs as parse

    return parse(text, lambda leg: get(leg).available())


def make_input(net: ir.Network, batch: int, seed: int) -> np.ndarray:
    """Standard-normal NCHW float32 input; the same for every backend."""
    return np.random.default_rng(seed).standard_normal((batch, *net.input_shape), dtype=np.float32)


@dataclass(frozen=True, kw_only=True)
class LegOptions:
    """What a parity run (inference, or :mod:`resnet_spec.train_parity`'s training step) runs and labels:
    the legs, where, on what input (``batch`` images from ``seed``), and the report's labels
    (``weights_label``, ``skipped``: ``{leg: why}`` for legs asked for as ``all`` and not installed)."""

    backends: tuple = BACKENDS
    device: str = "cpu"
    batch: int = 2
    seed: int = 0
    allow_tf32: bool = False
    weights_label: str = ""
    skipped: dict | None = None


@dataclass(frozen=True, kw_only=True)
class RunOptions(LegOptions):
    """The options of :func:`run`: every :class:`LegOptions` field, the compute ``dtype`` (its
    tolerance is :data:`TOLERANCES`) and ``layers`` (compare every tap, not only the logits)."""

    dtype: str = "float32"
    layers: bool = False


def run(net: ir.Network, weights: dict, options: RunOptions | None = None, *, mutate: dict | None = None,
        runner: Runner | None = None, progress=None, **settings) -> Report:
    """Run ``backends`` on the same weights and input and compare every pair.

    The options are ``options`` (:class:`RunOptions`), with any of its fields given as keywords
    (``backends=``, ``device=``, ``dtype=``, ``batch=``, ``seed=``, ``layers=``, ``allow_tf32=``,
    ``weights_label=``, ``skipped=``) replacing it: ``run(net, w, backends=("torch", "onnx"))``.
    ``mutate`` maps a backend name to a picklable ``fn(model) -> model`` applied to that backend's
    built model (for planted-fault tests). ``progress(text)`` receives one line per step. When a
    pair fails, or ``layers`` is set, every tap is compared and the first divergent one is named.
    """
    opts = replace(options or RunOptions(), **settings)
    if opts.dtype not in TOLERANCES:
        raise ResNetSpecError(f"unsupported dtype {opts.dtype!r}; choose from {', '.join(DTYPES)}")
    if opts.batch < 1:
        raise ResNetSpecError("--batch must be at least 1")
    from .weights.check import check_weights

    # names, shapes and dtypes are checked here, once, so that a bad weight set is one WeightsError
    # naming the tensor rather than three backends' own errors; NaN/Inf are the caller's choice
    weights = check_weights(net, weights, allow_nonfinite=True)
    say = progress or (lambda _text: None)
    own = runner is None
    runner = runner or Runner()
    x = make_input(net, opts.batch, opts.seed)
    tol = TOLERANCES[opts.dtype]
    options = {"device": opts.device, "dtype": opts.dtype, "allow_tf32": opts.allow_tf32}
    runs: dict[str, BackendRun] = {}
    order = tuple(net.tap_names())
    backends = opts.backends

    def run_all(names, taps):
        for b in names:
            runs[b] = _run_one(runner, b, net, weights, x, dict(options, taps=taps), (mutate or {}).get(b), say)

    def compare_all(taps):
        return [_pair(runs[a], runs[b], tol, taps, order) for a, b in itertools.combinations(backends, 2)
                if runs[a].error is None and runs[b].error is None]

    try:
        run_all(backends, opts.layers)
        pairs = compare_all(opts.layers)
        if not opts.layers and any(not p["passed"] for p in pairs):
            say("a pair failed: re-running with every tap to find where they diverge")
            run_all([b for b in backends if runs[b].error is None], True)
            pairs = compare_all(True)
    finally:
        if own:
            runner.close()
    return Report(spec=net.name, dtype=opts.dtype, device=opts.device, batch=opts.batch, seed=opts.seed,
                  weights=opts.weights_label or "given", tolerance=tol, allow_tf32=opts.allow_tf32, runs=runs,
                  pairs=pairs, layers=opts.layers or any(not p["passed"] for p in pairs),
                  skipped=dict(opts.skipped or {}))


def _run_one(runner, backend, net, weights, x, options, mutate, say) -> BackendRun:
    say(f"{backend}: building and running ...")
    t0 = time.perf_counter()
    try:
        outputs, device, seconds = runner.infer(backend, net, weights, x, options, mutate)
    except (BackendUnavailable, WorkerCrashed) as exc:
        say(f"{backend}: not run: {exc}")
        return BackendRun(backend, error=str(exc), seconds=time.perf_counter() - t0)
    say(f"{backend}: {device} ({seconds:.1f} s)")
    return BackendRun(backend, device=device, seconds=seconds, outputs=outputs)


def _pair(a: BackendRun, b: BackendRun, tol: float, layers: bool, taps: tuple) -> dict:
    """Compare two runs' logits, and with ``layers`` every tap in network order (``taps``): the first
    failing tap in that order is where the backends diverge, whatever order a backend returned them in."""
    head = compare(a.outputs["head"], b.outputs["head"])
    p = {"a": a.name, "b": b.name, **{k: head.get(k) for k in ("max_abs", "max_rel", "top1", "scale")},
         "passed": head["max_rel"] <= tol}
    if "shape_mismatch" in head:
        p["shape_mismatch"] = head["shape_mismatch"]
    if layers:
        rows = []
        for name in taps:
            if name in a.outputs and name in b.outputs:
                c = compare(a.outputs[name], b.outputs[name])
                rows.append({"tap": name, "max_abs": c["max_abs"], "max_rel": c["max_rel"],
                             "passed": c["max_rel"] <= tol})
        p["layers"] = rows
        first = next((r for r in rows if not r["passed"]), None)
        p["first_divergence"] = first["tap"] if first else None
    return p


def _e(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def format_report(r: Report) -> str:
    """The terminal table."""
    lines = [f"parity {r.spec}: {r.dtype}, batch {r.batch}, input seed {r.seed}, weights: {r.weights}", ""]
    w = max(len(n) for n in r.runs) if r.runs else 8
    lines += r.leg_lines(w) + [""]
    head = f"  {'pair':<{2 * w + 4}}  {'max abs':>9}  {'max rel':>9}  {'top-1':>6}  {'tol rel':>8}  result"
    lines.append(head)
    for p in r.pairs:
        pair = f"{p['a']} vs {p['b']}"
        top1 = "-" if p.get("top1") is None else f"{p['top1'] * 100:.0f}%"
        lines.append(f"  {pair:<{2 * w + 4}}  {_e(p['max_abs']):>9}  {_e(p['max_rel']):>9}  {top1:>6}  "
                     f"{r.tolerance:>8.0e}  {'PASS' if p['passed'] else 'FAIL'}")
    for p in r.pairs:
        if "layers" not in p:
            continue
        lines += ["", f"  layers, {p['a']} vs {p['b']} (max rel per tap):"]
        shown = p["layers"]
        if p["first_divergence"]:
            i = next(i for i, row in enumerate(shown) if row["tap"] == p["first_divergence"])
            shown = shown[max(0, i - 2): i + 3]
        for row in shown:
            mark = "" if row["passed"] else "   <-- diverges" if row["tap"] == p["first_divergence"] else "   x"
            lines.append(f"    {row['tap']:<14} {_e(row['max_rel'])}{mark}")
        if p["first_divergence"]:
            row = next(x for x in p["layers"] if x["tap"] == p["first_divergence"])
            lines.append(f"  first divergence: {p['first_divergence']} (max rel {_e(row['max_rel'])}, "
                         f"max abs {_e(row['max_abs'])})")
        else:
            lines.append("  every tap agrees within the tolerance")
    lines.append("")
    if r.dtype == "float32":
        lines.append("TF32 is " + ("allowed (--allow-tf32)" if r.allow_tf32 else
                                   "off for float32 parity (pass --allow-tf32 to allow it on GPUs)"))
    lines.append(r.verdict("backends", f"within max rel {r.tolerance:.0e}"))
    return "\n".join(lines)
