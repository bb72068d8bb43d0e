"""Training-mode parity (``parity SPEC --train``): one training step per leg, compared per pair.

Every leg (torch, keras-tensorflow, keras-jax, keras-torch) runs :mod:`resnet_spec.backends.training`
in its own worker process, from one canonical weight set and one batch: training-mode BatchNorm (batch
statistics), dropout and drop-path off, the fixed loss ``L = sum(logits * g) / N``. Per pair, with
``a`` the first leg and ``b`` the second:

* ``logits``: ``max |a - b| / max |a|`` (as inference parity);
* ``loss``: ``|La - Lb| / S`` with ``S = sum |logits_a * g| / N`` (the loss's own scale; L itself may be
  near zero);
* ``grads``: per parameter (canonical name, PyTorch layout) ``max |a - b| / G`` with ``G`` the largest
  gradient of the whole model; the worst tensors are listed. Judged on the model's gradient scale, not
  each tensor's own: training-mode BN makes float32 gradients of a deep, randomly initialised net
  ill-conditioned (measured, PyTorch float32 against PyTorch float64 at 64x64 input, batch 2: up to
  6e-3 of G -- resnet50d -- and up to 8e-2 of a tensor's own scale), so one fixed per-tensor tolerance
  would either fail on rounding or be loose everywhere (the float64 check below sets one per tensor);
* ``stats``: every BN running_mean / running_var after the step, ``max |a - b| / max |a|`` per tensor
  (momentum convention ``running = (1 - m) * running + m * stat``, unbiased batch variance).

Gradients are also held to a float32-sized bound per tensor: PyTorch runs the same step (same weights,
input and loss) in float64, once per leg, taking that leg's ReLU decisions wherever the float64 input is
within float32's reach of zero (:mod:`resnet_spec.backends.train_reference`: no kink can then differ
between a leg and its reference), and every leg's gradient of every tensor must lie within
:data:`GRAD_BANDS` of its reference, relative to that tensor's own scale: ``factor x`` PyTorch float32's
own error on that tensor ``+ floor``, or ``factor x`` PyTorch float32's worst error over the model measured
on the model's gradient scale G (see :func:`against_reference`). Most gradients are determined to a few
float32 roundings (the floor); the few that training-mode BN makes ill-conditioned get the room float32
itself needs there, measured on this very step, and no more. A planted 1% error in one conv's weight
gradient (below 2e-2 of G, so the pairwise bound misses it) fails this check and is named.

A pair passes when each quantity is within :data:`TRAIN_TOLERANCES` and, for the gradients, both legs pass
the float64 check (float32 only: reduced-precision training is not compared). Measured values are in
docs/parity.md. The report also names every tensor whose gradient is exactly zero in one leg and not in
the other (a planted detach of resnet20's layer2.0.conv1 gives 7.4e-2 of G and is named that way).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import ir
from .errors import BackendUnavailable, ResNetSpecError
from .isolate import WorkerCrashed
from .backends.train_reference import ADOPT_TOL
from .parity import BackendRun, LegOptions, RunOutcome, Runner, _e, compare, make_input

#: max relative error per quantity (float32), see the module docstring and docs/parity.md.
TRAIN_TOLERANCES = {"logits": 1e-4, "loss": 1e-4, "grads": 2e-2, "stats": 1e-4}
#: each leg's gradient of every tensor against PyTorch's float64 step of the same training step, relative
#: to that tensor's own float64 scale: within ``factor`` times PyTorch float32's own error on the tensor
#: plus ``floor`` (the float32 rounding of a well-conditioned tensor), or within ``factor`` times PyTorch
#: float32's worst error on the model's gradient scale. Per compute dtype (training parity is float32 only).
GRAD_BANDS = {"float32": {"factor": 4.0, "floor": 1e-5}}
WORST = 5  # tensors listed per pair and quantity


def train_worker(backend, spec_yaml, weights, x, g, options, mutate):
    from .backends import prepare
    from .backends import training
    from .backends.legs import TRAIN_LEGS, keras_backend_of

    mod, net = prepare(backend, spec_yaml)
    t0 = time.perf_counter()
    if backend == "torch":
        out, device = training.torch_step(net, weights, x, g, mutate=mutate, decisions=True, **options)
    elif keras_backend_of(backend):
        from .backends.keras.backend import Leg

        leg = Leg(keras_backend_of(backend))
        out, device = training.keras_step(leg, net, weights, x, g, mutate=mutate, decisions=True, **options)
    else:
        raise BackendUnavailable(f"{backend}: no training step (inference graphs only); --train legs: "
                                 f"{', '.join(TRAIN_LEGS)}")
    return out, device, time.perf_counter() - t0


def make_loss_weights(net: ir.Network, batch: int, seed: int) -> np.ndarray:
    """The fixed ``g`` of the loss ``sum(logits * g) / N``: standard normal, (batch, classes)."""
    return np.random.default_rng(seed + 1).standard_normal((batch, net.num_classes)).astype(np.float32)


def check_trainable(net: ir.Network) -> None:
    """Refuse a network with a stage that has no trainable parameter (its gradients would be vacuous)."""
    stages = sorted({b.stage for b in net.blocks})
    for s in stages:
        ops = [op for b in net.blocks if b.stage == s for op in (*b.pre, *b.main, *b.shortcut, *b.post)]
        if not any(isinstance(op, (*ir.CONVS, ir.BatchNorm, ir.GroupNorm, ir.Linear, ir.SqueezeExcite, ir.ECA,
                                   ir.SplitAttention, ir.Res2Net, ir.SelectiveKernel))
                   for op in ops):
            raise ResNetSpecError(f"{net.name}: --train needs trainable parameters in every stage; "
                                  f"stage {s + 1} has none")


TrainRun = BackendRun  # one leg's run: the same record as an inference run's


@dataclass(kw_only=True)
class TrainReport(RunOutcome):
    reference: dict = field(default_factory=dict)  # {leg: against_reference(...)}
    strict_grads: bool = True  # whether ``reference`` decides the pass (else it is reported only)
    reference_note: str = ""  # why there is no ``reference`` (torch, which computes it, is not installed)
    notes: tuple = ()  # how the batch was chosen (:func:`resnet_spec.train_batch.train_batch`)

    def to_json(self) -> dict:
        return {"spec": self.spec, "mode": "train", "dtype": "float32", "device": self.device, "batch": self.batch,
                "seed": self.seed, "weights": self.weights, "tolerances_rel": TRAIN_TOLERANCES,
                "grad_band": GRAD_BANDS["float32"], "against_float64": self.reference,
                "strict_grads": self.strict_grads, "against_float64_not_run": self.reference_note or None,
                "backends": self.runs_json(), "pairs": self.pairs, "not_run": self.not_run,
                "not_installed": self.skipped, "notes": list(self.notes), "passed": self.passed}


def _per_tensor(a: dict, b: dict, floor_frac: float) -> list:
    """[(name, max_rel)] sorted worst first; relative to max(max|a|, floor_frac * largest |a|)."""
    scale = max((float(np.abs(v).max()) for v in a.values() if v.size), default=0.0)
    rows = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b or np.shape(a[name]) != np.shape(b[name]):
            rows.append((name, float("inf")))
            continue
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        denom = max(float(np.abs(x).max()) if x.size else 0.0, floor_frac * scale, 1e-30)
        err = float(np.abs(x - y).max()) / denom if x.size else 0.0
        rows.append((name, err if np.isfinite(err) else float("inf")))
    return sorted(rows, key=lambda r: -r[1])


def _own_scale_errors(leg: dict, ref: dict) -> dict:
    """{tensor: max |leg - ref| / max |ref|} (inf where missing or not finite); ``ref`` is float64."""
    out = {}
    for name, r in ref.items():
        v = leg.get(name)
        if v is None or np.shape(v) != np.shape(r):
            out[name] = float("inf")
            continue
        r64 = np.asarray(r, np.float64)
        err = float(np.abs(np.asarray(v, np.float64) - r64).max()) / max(float(np.abs(r64).max()), 1e-30) if r64.size else 0.0
        out[name] = err if np.isfinite(err) else float("inf")
    return out


def against_reference(leg: dict, ref: dict, dtype: str = "float32") -> dict:
    """One leg's gradients against its float64 reference step, each tensor held to the float32 band.

    ``ref`` = ``{"float64": {"grads"}, "own": {"float32": {"grads"}, "float64": {"grads"}}, "decisions":
    summary}``: the float64 step taking its ReLU decisions from this leg, and PyTorch's own float32 step
    with the float64 step taking its decisions from it (:mod:`resnet_spec.backends.train_reference`), so
    that no ReLU input within float32's resolution of zero is on one side in a step and on the other in
    its reference. Tensor t passes when its error (relative to its own float64 scale) is within
    ``factor * e32_t + floor``, ``e32_t`` being PyTorch float32's own error on t, or within ``factor * E32``
    on the model's gradient scale G (the largest float64 gradient), ``E32`` being PyTorch float32's worst
    error on that scale. Both measure how well float32 can determine the gradients of this very step:
    training-mode BN of a deep net at a small batch makes some of them ill-conditioned, and frameworks
    compute BN's variance differently, so a tensor that PyTorch happens to get right is allowed the error
    float32 makes elsewhere in the model, on the model's scale, and no more.
    """
    band = GRAD_BANDS[dtype]
    g64 = ref["float64"]["grads"]
    big = max((float(np.abs(v).max()) for v in g64.values() if np.size(v)), default=0.0)
    own = _own_scale_errors(ref["own"]["float32"]["grads"], ref["own"]["float64"]["grads"])
    errs = _own_scale_errors(leg["grads"], g64)
    to_g = {n: float(np.abs(np.asarray(v, np.float64)).max()) / max(big, 1e-30) if np.size(v) else 0.0
            for n, v in g64.items()}  # tensor scale / G
    e32_g = max((own[n] * to_g[n] for n in own), default=0.0)
    rows = sorted(((n, e, max(band["factor"] * own[n] + band["floor"], band["factor"] * e32_g / max(to_g[n], 1e-30)))
                   for n, e in errs.items()), key=lambda r: -r[1] / r[2])
    dec = ref.get("decisions") or {}
    return {"grads_max_rel": max((e for _, e, _ in rows), default=0.0),
            "float32_own_max_rel": max(own.values(), default=0.0),
            "grads_max_of_g": max((e * to_g[n] for n, e in errs.items()), default=0.0), "float32_own_of_g": e32_g,
            "worst": [{"tensor": n, "max_rel": e, "allowed": lim} for n, e, lim in rows[:WORST]],
            "failing": sum(1 for _, e, lim in rows if e > lim), "total": len(rows),
            "relu_calls": dec.get("relu_calls", 0), "decisions_adopted": dec.get("adopted", 0),
            "decisions_adopted_max_of_scale": dec.get("adopted_max_of_scale", 0.0),
            "decision_conflicts": dec.get("conflicts", 0),
            "passed": all(e <= lim for _, e, lim in rows)}


def compare_steps(a: dict, b: dict, g: np.ndarray) -> dict:
    """The per-pair comparison of two legs' training steps (see the module docstring)."""
    tol = TRAIN_TOLERANCES
    logits = compare(a["logits"], b["logits"])
    loss_scale = float(np.abs(np.asarray(a["logits"], np.float64) * g).sum() / g.shape[0])
    loss_rel = abs(a["loss"] - b["loss"]) / max(loss_scale, 1e-30)
    grads = _per_tensor(a["grads"], b["grads"], 1.0)
    stats = _per_tensor(a["stats"], b["stats"], 0.0)
    out = {"logits_max_rel": logits["max_rel"], "loss_a": a["loss"], "loss_b": b["loss"], "loss_rel": loss_rel,
           "grads_max_rel": grads[0][1] if grads else 0.0, "stats_max_rel": stats[0][1] if stats else 0.0,
           "worst_grads": [{"tensor": n, "max_rel": e} for n, e in grads[:WORST]],
           "worst_stats": [{"tensor": n, "max_rel": e} for n, e in stats[:WORST]],
           "no_grad": {leg: sorted(n for n in set(x["grads"]) & set(y["grads"])
                                   if not np.any(x["grads"][n]) and np.any(y["grads"][n]))
                       for leg, x, y in (("a", a, b), ("b", b, a))},
           "grads_failing": sum(1 for _, e in grads if e > tol["grads"]), "grads_total": len(grads),
           "stats_failing": sum(1 for _, e in stats if e > tol["stats"]), "stats_total": len(stats)}
    out["checks"] = {"logits": out["logits_max_rel"] <= tol["logits"], "loss": loss_rel <= tol["loss"],
                     "grads": out["grads_max_rel"] <= tol["grads"], "stats": out["stats_max_rel"] <= tol["stats"]}
    out["passed"] = all(out["checks"].values())
    return out


@dataclass(frozen=True, kw_only=True)
class TrainOptions(LegOptions):
    """The options of :func:`run_train`: every :class:`resnet_spec.parity.LegOptions` field (the legs
    default to torch and keras-tensorflow) and ``strict_grads`` (whether the float64 check decides)."""

    backends: tuple = ("torch", "keras-tensorflow")
    strict_grads: bool = True
    batch: int | None = None  # None: :func:`resnet_spec.train_batch.train_batch` decides (2, or 8: BN over 1x1)


@dataclass(frozen=True)
class _Step:
    """One training step's inputs, the same in every leg: the network, the checked weights, the batch
    ``x``, the loss weights ``g`` and the legs' keyword options (device, TF32)."""

    net: ir.Network
    weights: dict
    x: np.ndarray
    g: np.ndarray
    options: dict


def run_train(net: ir.Network, weights: dict, options: TrainOptions | None = None, *, mutate: dict | None = None,
              runner: Runner | None = None, progress=None, **settings) -> TrainReport:
    """One training step in every leg of ``backends`` from ``weights`` and one batch; compare every pair.
    Every leg's gradients are also measured against PyTorch's float64 step; a leg outside float32's band
    around it fails its pairs (``strict_grads=False``: that check is reported, not enforced). The options
    are ``options`` (:class:`TrainOptions`), with any of its fields given as keywords replacing it, as
    :func:`resnet_spec.parity.run`'s."""
    from .weights.check import check_weights

    from .train_batch import train_batch

    opts = replace(options or TrainOptions(), **settings)
    batch, notes = train_batch(net, opts.batch)
    opts = replace(opts, batch=batch)
    if opts.batch < 2:
        raise ResNetSpecError("--train needs --batch of at least 2 (BatchNorm's batch variance of one sample is 0)")
    check_trainable(net)
    say = progress or (lambda _text: None)
    own = runner is None
    runner = runner or Runner()
    step = _Step(net, check_weights(net, weights, allow_nonfinite=True), make_input(net, opts.batch, opts.seed),
                 make_loss_weights(net, opts.batch, opts.seed), {"device": opts.device, "allow_tf32": opts.allow_tf32})
    runs = {}
    try:
        for b in opts.backends:
            runs[b] = _run_one(runner, b, step, (mutate or {}).get(b), say)
        ran = [b for b in opts.backends if runs[b].error is None]
        reference, note = _reference(runner, step, {b: runs[b].outputs for b in ran}, say) if len(ran) > 1 else ({}, "")
    finally:
        if own:
            runner.close()
    pairs = []
    for a, b in itertools.combinations(ran, 2):
        p = {"a": a, "b": b, **compare_steps(runs[a].outputs, runs[b].outputs, step.g)}
        if reference and opts.strict_grads:  # also each leg within float32's band of the float64 step
            p["checks"]["grads"] = p["checks"]["grads"] and reference[a]["passed"] and reference[b]["passed"]
            p["passed"] = all(p["checks"].values())
        pairs.append(p)
    return TrainReport(spec=net.name, device=opts.device, batch=opts.batch, seed=opts.seed,
                       weights=opts.weights_label or "given", runs=runs, pairs=pairs, skipped=dict(opts.skipped or {}),
                       reference=reference, strict_grads=opts.strict_grads, reference_note=note,
                       notes=notes)


def reference_worker(spec_yaml, weights, x, g, options, decisions):
    """In the torch worker: PyTorch's float64 step with each leg's ReLU decisions, and its float32 step
    (backends/train_reference.py)."""
    from .backends import prepare
    from .backends import train_reference

    _, net = prepare("torch", spec_yaml)
    return train_reference.reference(net, weights, x, g, decisions, device=options["device"])


def _reference(runner, step: _Step, outputs: dict, say) -> tuple:
    """``({leg: against_reference(...)}, "")`` from PyTorch's float64 step taking each leg's ReLU decisions
    (torch worker). Without torch there is no reference: ``({}, why)``, and the legs are compared pairwise
    only; when the reference worker fails, every leg's gradients fail with the reason (they were not
    checked)."""
    say("reference: PyTorch float64 step with each leg's ReLU decisions ...")
    decisions = {leg: out.pop("relu") for leg, out in outputs.items()}
    try:
        ref = runner.call("torch", reference_worker, step.net.spec_yaml, step.weights, step.x, step.g, step.options,
                          decisions)
    except BackendUnavailable as exc:
        say(f"reference: not run: {exc}")
        return {}, (f"the float64 gradient check needs torch, which could not run here ({exc}); the legs' "
                    "gradients were compared pairwise only")
    except WorkerCrashed as exc:
        say(f"reference: not run: {exc}")
        return {leg: {"passed": False, "error": f"float64 reference not run: {exc}"} for leg in outputs}, ""
    out = {}
    for leg, r in ref["legs"].items():
        if "error" in r:
            out[leg] = {"passed": False, "error": r["error"]}
            continue
        out[leg] = against_reference(outputs[leg], {"float64": r, "own": ref["own"], "decisions": r["decisions"]})
        d = r["decisions"]
        say(f"reference: {leg}: {d['adopted']} of its ReLU decisions adopted (inputs within {d['tol']:.0e} of "
            f"zero), {d['conflicts']} not")
    return out, ""


def _run_one(runner, backend, step: _Step, mutate, say) -> TrainRun:
    say(f"{backend}: one training step ...")
    t0 = time.perf_counter()
    try:
        out, device, seconds = runner.call(backend, train_worker, backend, step.net.spec_yaml, step.weights, step.x,
                                           step.g, step.options, mutate)
    except (BackendUnavailable, WorkerCrashed) as exc:
        say(f"{backend}: not run: {exc}")
        return TrainRun(backend, error=str(exc), seconds=time.perf_counter() - t0)
    say(f"{backend}: {device} ({seconds:.1f} s)")
    return TrainRun(backend, device=device, seconds=seconds, outputs=out)


def format_reference(r: TrainReport) -> str:
    """The per-leg gradient check against PyTorch's float64 step (appended to the pairwise table)."""
    if not r.reference:
        return f"\n  note: {r.reference_note}" if r.reference_note else ""
    b = GRAD_BANDS["float32"]
    lines = ["", f"  gradients against PyTorch float64, per tensor relative to its own scale; allowed: "
                 f"{b['factor']:g} x PyTorch float32's own error + {b['floor']:.0e},",
             f"  or {b['factor']:g} x PyTorch float32's worst error on the scale of the largest gradient"
             + ("" if r.strict_grads else " (reported, not enforced: --no-strict-grads)")]
    lines.append("  each leg's reference takes that leg's ReLU decisions where the float64 input is within "
                 f"{ADOPT_TOL:.0e} of zero (on its channel's scale)")
    for leg, v in r.reference.items():
        if "error" in v:
            lines.append(f"    {leg:<18} FAIL: {v['error']}")
            continue
        w = v["worst"][0] if v["worst"] else {"tensor": "-", "max_rel": 0.0, "allowed": 0.0}
        lines.append(f"    {leg:<18} worst {_e(v['grads_max_of_g'])} of G (float32 torch: {_e(v['float32_own_of_g'])}); "
                     f"{v['failing']}/{v['total']} tensors over; closest to its limit {w['tensor']} "
                     f"{_e(w['max_rel'])} of {_e(w['allowed'])}; ReLU decisions adopted {v['decisions_adopted']}, "
                     f"not adopted {v['decision_conflicts']}  {'PASS' if v['passed'] else 'FAIL'}")
        if not v["passed"]:
            lines += [f"      {x['tensor']:<36} {_e(x['max_rel'])} > {_e(x['allowed'])}" for x in v["worst"]
                      if x["max_rel"] > x["allowed"]]
    return "\n".join(lines)


def report_text(r: TrainReport) -> str:
    """The whole terminal report: the pairwise table, then the float64 reference check, then the verdict."""
    head, _, verdict = format_train_report(r).rpartition("\n")
    ref = format_reference(r)
    return f"{head}{ref}\n\n{verdict}" if ref else f"{head}\n{verdict}"


def format_train_report(r: TrainReport) -> str:
    """The terminal table of a training-mode parity run."""
    t = TRAIN_TOLERANCES
    lines = [f"parity {r.spec} --train: float32, batch {r.batch}, seed {r.seed}, weights: {r.weights}",
             "one step: BN batch statistics, dropout/drop-path off, loss = sum(logits * g) / N", *r.notes, ""]
    w = max([len(n) for n in r.runs] + [len(n) for n in r.skipped] + [8])
    lines += r.leg_lines(w)
    lines += ["", f"  {'pair':<{2 * w + 4}}  {'logits':>9}  {'loss':>9}  {'grads':>9}  {'bn stats':>9}  result",
              f"  {'(tolerance, max rel)':<{2 * w + 4}}  {t['logits']:>9.0e}  {t['loss']:>9.0e}  {t['grads']:>9.0e}  "
              f"{t['stats']:>9.0e}"]
    for p in r.pairs:
        lines.append(f"  {p['a'] + ' vs ' + p['b']:<{2 * w + 4}}  {_e(p['logits_max_rel']):>9}  {_e(p['loss_rel']):>9}  "
                     f"{_e(p['grads_max_rel']):>9}  {_e(p['stats_max_rel']):>9}  {'PASS' if p['passed'] else 'FAIL'}")
    for p in r.pairs:
        if p["passed"]:
            continue
        lines += ["", f"  {p['a']} vs {p['b']}: " + ", ".join(k for k, ok in p["checks"].items() if not ok) + " differ"]
        if not p["checks"]["grads"]:
            lines.append(f"    gradients: {p['grads_failing']}/{p['grads_total']} tensors over {t['grads']:.0e}; worst:")
            lines += [f"      {row['tensor']:<36} {_e(row['max_rel'])}" for row in p["worst_grads"]]
            for side in ("a", "b"):
                if p["no_grad"][side]:
                    lines.append(f"    no gradient at all in {p[side]} (blocked?): {', '.join(p['no_grad'][side][:WORST])}")
        if not p["checks"]["stats"]:
            lines.append(f"    BN running stats: {p['stats_failing']}/{p['stats_total']} tensors over "
                         f"{t['stats']:.0e} (momentum convention? unbiased variance?); worst:")
            lines += [f"      {row['tensor']:<36} {_e(row['max_rel'])}" for row in p["worst_stats"]]
    lines += ["", r.verdict("legs", "agree in training mode")]
    return "\n".join(lines)
