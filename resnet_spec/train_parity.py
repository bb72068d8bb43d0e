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
  6e-3 of G -- resnet50d -- and up to 8e-2 of a tensor's own scale), so per-tensor errors would fail on
  rounding alone;
* ``stats``: every BN running_mean / running_var after the step, ``max |a - b| / max |a|`` per tensor
  (momentum convention ``running = (1 - m) * running + m * stat``, unbiased batch variance).

A pair passes when each is within :data:`TRAIN_TOLERANCES` (float32 only: reduced-precision training
is not compared). Measured worst values are in docs/parity.md. The float32 gradient tolerance is about 3x
PyTorch's own float32-vs-float64 error on the worst spec measured. That is loose for a single tensor, so
the report also names every tensor whose gradient is exactly zero in one leg and not in the other (a
planted detach of resnet20's layer2.0.conv1 gives 7.4e-2 of G and is named that way).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from . import ir
from .errors import BackendUnavailable, ResNetSpecError
from .isolate import WorkerCrashed
from .parity import BackendRun, RunOutcome, Runner, _e, compare, make_input

#: max relative error per quantity (float32), see the module docstring and docs/parity.md.
TRAIN_TOLERANCES = {"logits": 1e-4, "loss": 1e-4, "grads": 2e-2, "stats": 1e-4}
WORST = 5  # tensors listed per pair and quantity
TRAIN_LEGS = ("torch", "tensorflow", "keras-tensorflow", "keras-jax", "keras-torch")


def _train_worker(backend, spec_yaml, weights, x, g, options, mutate):
    from .backends import KERAS_LEGS, prepare
    from .backends import training

    mod, net = prepare(backend, spec_yaml)
    t0 = time.perf_counter()
    if backend == "torch":
        out, device = training.torch_step(net, weights, x, g, mutate=mutate, **options)
    elif backend == "tensorflow" or backend in KERAS_LEGS:
        from .backends.keras_backend import Leg

        leg = Leg("tensorflow" if backend == "tensorflow" else KERAS_LEGS[backend])
        out, device = training.keras_step(leg, net, weights, x, g, mutate=mutate, **options)
    else:
        raise BackendUnavailable(f"{backend}: no training step (inference graphs only); --train legs: "
                                 f"{', '.join(TRAIN_LEGS[:1] + TRAIN_LEGS[2:])}")
    return out, device, time.perf_counter() - t0


def make_loss_weights(net: ir.Network, batch: int, seed: int) -> np.ndarray:
    """The fixed ``g`` of the loss ``sum(logits * g) / N``: standard normal, (batch, classes)."""
    return np.random.default_rng(seed + 1).standard_normal((batch, net.num_classes)).astype(np.float32)


def check_trainable(net: ir.Network) -> None:
    """Refuse a network with a stage that has no trainable parameter (its gradients would be vacuous)."""
    stages = sorted({b.stage for b in net.blocks})
    for s in stages:
        ops = [op for b in net.blocks if b.stage == s for op in (*b.pre, *b.main, *b.shortcut, *b.post)]
        if not any(isinstance(op, (ir.Conv, ir.BatchNorm, ir.Linear, ir.SqueezeExcite)) for op in ops):
            raise ResNetSpecError(f"{net.name}: --train needs trainable parameters in every stage; "
                                  f"stage {s + 1} has none")


TrainRun = BackendRun  # one leg's run: the same record as an inference run's


@dataclass(kw_only=True)
class TrainReport(RunOutcome):
    def to_json(self) -> dict:
        return {"spec": self.spec, "mode": "train", "dtype": "float32", "device": self.device, "batch": self.batch,
                "seed": self.seed, "weights": self.weights, "tolerances_rel": TRAIN_TOLERANCES,
                "backends": self.runs_json(), "pairs": self.pairs, "not_run": self.not_run,
                "not_installed": self.skipped, "passed": self.passed}


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


def run_train(net: ir.Network, weights: dict, *, backends=("torch", "keras-tensorflow"), device: str = "cpu",
              batch: int = 2, seed: int = 0, weights_label: str = "", mutate: dict | None = None,
              runner: Runner | None = None, progress=None, skipped: dict | None = None,
              allow_tf32: bool = False) -> TrainReport:
    """One training step in every leg of ``backends`` from ``weights`` and one batch; compare every pair."""
    from .weights import check_weights

    if batch < 2:
        raise ResNetSpecError("--train needs --batch of at least 2 (BatchNorm's batch variance of one sample is 0)")
    check_trainable(net)
    weights = check_weights(net, weights, allow_nonfinite=True)
    say = progress or (lambda _text: None)
    own = runner is None
    runner = runner or Runner()
    x, g = make_input(net, batch, seed), make_loss_weights(net, batch, seed)
    options = {"device": device, "allow_tf32": allow_tf32}
    runs = {}
    try:
        for b in backends:
            runs[b] = _run_one(runner, b, net, weights, x, g, options, (mutate or {}).get(b), say)
    finally:
        if own:
            runner.close()
    pairs = [{"a": a, "b": b, **compare_steps(runs[a].outputs, runs[b].outputs, g)}
             for a, b in itertools.combinations(backends, 2) if runs[a].error is None and runs[b].error is None]
    return TrainReport(spec=net.name, device=device, batch=batch, seed=seed, weights=weights_label or "given",
                       runs=runs, pairs=pairs, skipped=dict(skipped or {}))


def _run_one(runner, backend, net, weights, x, g, options, mutate, say) -> TrainRun:
    say(f"{backend}: one training step ...")
    t0 = time.perf_counter()
    try:
        out, device, seconds = runner.call(backend, _train_worker, backend, net.spec_yaml, weights, x, g, options,
                                           mutate)
    except (BackendUnavailable, WorkerCrashed) as exc:
        say(f"{backend}: not run: {exc}")
        return TrainRun(backend, error=str(exc), seconds=time.perf_counter() - t0)
    say(f"{backend}: {device} ({seconds:.1f} s)")
    return TrainRun(backend, device=device, seconds=seconds, outputs=out)


def format_train_report(r: TrainReport) -> str:
    """The terminal table of a training-mode parity run."""
    t = TRAIN_TOLERANCES
    lines = [f"parity {r.spec} --train: float32, batch {r.batch}, seed {r.seed}, weights: {r.weights}",
             "one step: BN batch statistics, dropout/drop-path off, loss = sum(logits * g) / N", ""]
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
