"""``verify``: run deployable files in their runtimes and compare them with the spec's reference.

The reference is the torch backend on the same weights in float64. Each file kind runs in its
runtime, every runtime in its own worker process (:mod:`resnet_spec.isolate`; TensorFlow never
enters the caller's process):

=============  =========================================================================================
``.onnx``      ONNX Runtime at every graph optimisation level (disable, basic, extended, all), onnx's
               ReferenceEvaluator on one image, and OpenVINO (CPU, f32 inference precision) when installed
``.tflite``    the LiteRT interpreter (``ai-edge-litert``), else ``tf.lite.Interpreter``
``.keras``     ``keras.saving.load_model``; a SavedModel folder: its ``serving_default`` signature
``.pt2``       ``torch.export.load``; ``.py``: the standalone source's ``load_model(weights)``
=============  =========================================================================================

No code from an input file runs unless the caller passes ``trust_code`` (``--trust-code``): a ``.py``
is refused, a ``.pt2`` and a SavedModel are checked against allow-lists and loaded from a checked copy,
a ``.tflite`` with a custom operator is refused (:mod:`resnet_spec.trust`); a refusal is one line
naming the flag, made before any file runs.

Metrics and tolerances are :mod:`resnet_spec.parity`'s (max error relative to the reference's
scale); a float16 file is held to :data:`FLOAT16_TOL`, recognised from the file itself whoever made
it: an ONNX file with float16 initializers, a TFLite file with float16 weights feeding DEQUANTIZE ops
(TFLite's float16 post-training quantisation). An int8 file (QuantizeLinear/DequantizeLinear nodes in
ONNX, int8 tensors in TFLite, whoever quantized it) is judged by a max relative error bound
(:data:`INT8_TOL`); its top-1 and top-5 agreement and mean relative error are reported beside it
(:func:`int8_metrics`). A file made elsewhere is fed the input as it declares
it: NCHW or NHWC, its fixed batch, its input's name and dtype (:mod:`resnet_spec.verify_inputs`).
When an ONNX run fails, the run is repeated with the file's tap values (``stem``, every block) added as
outputs, and the first one that diverges is named (files made elsewhere have no such values; then none
is named).

A file that cannot be read, does not fit the spec (input shape, classes), or whose runtime is not
installed raises :class:`ResNetSpecError` with one line naming the file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from . import ir, verify_runtimes as R
from .errors import ResNetSpecError
from .fileio import shown
from .isolate import WorkerCrashed
from .parity import TOLERANCES, Runner, compare
from .verify_inputs import LAYOUTS

#: float16 files against the float64 reference: ONNX (weights and compute in float16) and TFLite (float16
#: weights, float32 compute). Measured on CPU: 2.9e-4 to 7.8e-4 of the logit scale in ONNX Runtime, 1.4e-3
#: in onnx's ReferenceEvaluator (keras_resnet50v2 at 64 px; docs/deployment.md has the matrix); float16's
#: own step is 2**-11 = 4.9e-4. Margins: 10x over ONNX Runtime's worst (9.7e-4, docs/deployment.md), 7x over
#: ReferenceEvaluator. float16 TFLite in LiteRT 2.3.0: 1.4e-4 to 6.1e-4 over the zoo (docs/deployment.md,
#: tflite-f16), 16x under this tolerance. GPU float16 figures are not measured here.
FLOAT16_TOL = 1e-2
#: int8 files (``convert --dtype int8``, or quantized elsewhere: QDQ nodes in ONNX, int8 tensors in TFLite)
#: pass when their max error is within :data:`INT8_TOL` of the logit scale. Measured (docs/deployment.md,
#: int8): 7.6e-3 to 4.5e-2 over the zoo in onnxruntime and LiteRT but BiT (GroupNorm, 0.10); 1.7e-2 on
#: resnet50 at 224 px. An int8 file of other weights measured 1.7. Top-1 agreement is reported, not judged:
#: within the bound a class can change only where the reference's two highest logits are closer than twice
#: it, and there the bound allows the change; so a top-1 threshold either follows from the bound or judges
#: near-ties, which random weights and synthetic inputs make common (resnetv2_50d's one int8 file agreed on
#: 0 of 2 inputs in some runtimes and 1 of 2 in others, at the same 2.4e-2).
INT8_TOL = 0.2
KINDS = {".onnx": "onnx", ".tflite": "tflite", ".keras": "keras", ".pt2": "pt2", ".py": "py"}
#: kind -> (worker, check): what is checked in a runtime's worker before any file runs, unless the code
#: is trusted (a SavedModel's ops, a .tflite's custom operators); the runs check again what they load
PRECHECKS = {"savedmodel": ("tensorflow", R.savedmodel_check), "tflite": ("litert", R.tflite_check)}


def file_kind(path: str) -> str:
    """The runtime family of ``path``; anything but a regular file (a FIFO, a device, a socket, a link
    to one) or a SavedModel folder is refused here, before any runtime opens it."""
    from .fileio import check_regular_file, check_regular_tree

    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            check_regular_tree(path)
            return "savedmodel"
        raise ResNetSpecError(f"{shown(path)}: a folder without saved_model.pb is not a SavedModel")
    check_regular_file(path)
    kind = KINDS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise ResNetSpecError(f"{shown(path)}: not a deployable model file (expected .onnx, .tflite, .keras, .pt2, .py "
                              "or a SavedModel folder)")
    return kind


def pt2_budget(net: ir.Network) -> int:
    """The most bytes a ``.pt2`` of ``net`` may expand to: every tensor in float64, twice over, plus
    64 MiB (the weight files' rule)."""
    import math

    return 16 * sum(math.prod(t.shape) for t in net.tensors()) + (64 << 20)


def check_file(net: ir.Network, path: str, trust_code: bool = False) -> str:
    """:func:`file_kind`, then what can be checked before any worker starts: a ``.py`` is refused and a
    ``.pt2`` checked unless ``trust_code`` (:mod:`resnet_spec.trust`); a ``.pt2``'s sizes always."""
    from .trust import PY_REFUSAL, refuse
    from .trust_pt2 import check_pt2, check_structure

    kind = file_kind(path)
    if kind == "py" and not trust_code:
        raise refuse(path, PY_REFUSAL)
    if kind == "pt2":
        (check_structure if trust_code else check_pt2)(path, pt2_budget(net))
    return kind


def weights_for(net: ir.Network, path: str, weights_file: str | None) -> str:
    """``--weights``, else ``<name>.safetensors`` beside ``path``."""
    if weights_file:
        return weights_file
    beside = os.path.join(os.path.dirname(os.path.abspath(path.rstrip("/"))), f"{net.name}.safetensors")
    if not os.path.exists(beside):
        raise ResNetSpecError(f"{shown(path)}: no weights to compare with: pass --weights, or keep {net.name}.safetensors "
                              "beside the file (convert writes it there)")
    return beside


def require_reference() -> None:
    """Refuse in one line when PyTorch, which computes the float64 reference, is not installed."""
    from .extras import require

    require("verify (its float64 reference)", "torch")


def _weight_sets(net, files, weights_file, weights) -> tuple[dict, dict]:
    """``({file: label}, {label: checked weights})``: every refusal before any work.

    ``weights`` (a checked mapping, e.g. what ``--weights`` resolved to through the same loader as
    ``convert``/``parity``) applies to every file; else ``weights_file`` (any source those accept) is
    loaded here; else each file's ``<name>.safetensors`` beside it.
    """
    from .weights.loader import LoadOptions, load

    labels = {f: weights_for(net, f, weights_file) for f in files}
    if weights is not None:
        return labels, {labels[f]: weights for f in files}
    sets = {}
    for label in dict.fromkeys(labels.values()):
        sets[label], _ = load(net, label, LoadOptions(allow_nonfinite=True))
    return labels, sets


@dataclass
class Row:
    file: str
    runtime: str
    level: str
    tolerance: float
    metrics: dict
    passed: bool
    first_divergence: str | None = None
    layers: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"file": self.file, "runtime": self.runtime, "level": self.level, "tolerance_rel": self.tolerance,
                **{k: self.metrics.get(k) for k in ("max_abs", "max_rel", "top1", "top5", "mean_rel")},
                "int8": "top5" in self.metrics,
                "passed": self.passed, "first_divergence": self.first_divergence}


@dataclass
class Report:
    spec: str
    batch: int
    seed: int
    device: str
    rows: list
    notes: list

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def to_json(self) -> dict:
        return {"spec": self.spec, "batch": self.batch, "seed": self.seed, "device": self.device,
                "runs": [r.to_json() for r in self.rows], "notes": self.notes, "passed": self.passed}


class _Workers(Runner):
    """One worker process per runtime family, started on first use (parity's :class:`Runner`); a worker
    that crashes is an error prefixed with the call's first argument (the file it was running)."""

    def call(self, family, fn, *args):
        try:
            return super().call(family, fn, *args)
        except WorkerCrashed as exc:  # kept: the prefix names the file whose runtime crashed
            raise ResNetSpecError(f"{_who(family, args)}: {exc}") from None
        except SystemExit as exc:  # raised in the worker (by a file's code): an error, never verify's exit
            raise ResNetSpecError(f"{_who(family, args)}: the worker exited (SystemExit({exc.code!r})); "
                                  "no result") from None


def _who(family: str, args) -> str:
    """What a worker call was running: its file (the first argument), else the worker (the reference
    call's first argument is the spec's YAML text, which is no name)."""
    first = args[0] if args else None
    if isinstance(first, str) and "\n" not in first:
        return shown(first)
    return f"the {family} worker"


@dataclass(frozen=True)
class RunSettings:
    """How :func:`run` runs the files: the input's ``batch`` and ``seed``, the ``device`` of ``.onnx``
    files, ``trust_code`` (run code the files carry: a ``.py``, an unchecked ``.pt2`` or SavedModel;
    see :mod:`resnet_spec.trust`) and the input ``layout`` of files made elsewhere (``auto``: from each
    file's input shape; :mod:`resnet_spec.verify_inputs`)."""

    batch: int = 2
    seed: int = 0
    device: str = "cpu"
    trust_code: bool = False
    layout: str = "auto"


def run(net: ir.Network, files, settings: RunSettings | None = None, *, weights_file: str | None = None,
        weights=None, progress=None, **fields) -> Report:
    """Verify every file of ``files`` against ``net``'s torch float64 reference.

    Weights: ``weights`` (a mapping already checked against ``net``; ``weights_file`` then only labels
    it), else ``weights_file`` (safetensors, a torch checkpoint or any source ``import`` reads), else
    each file's ``<name>.safetensors`` beside it. ``settings`` (:class:`RunSettings`), any of its fields
    given as keywords replacing it: ``run(net, files, batch=1, trust_code=True)``.
    """
    from dataclasses import replace

    opts = replace(settings or RunSettings(), **fields)
    batch, seed, device, trust_code = opts.batch, opts.seed, opts.device, opts.trust_code
    say = progress or (lambda _t: None)
    require_reference()
    kinds = [(f, check_file(net, f, trust_code)) for f in files]
    if device != "cpu" and any(k != "onnx" for _, k in kinds):
        raise ResNetSpecError(f"--device {device} applies to .onnx files only")
    if opts.layout not in LAYOUTS:
        raise ResNetSpecError(f"layout {opts.layout!r}: choose from {', '.join(LAYOUTS)}")
    labels, sets = _weight_sets(net, files, weights_file, weights)
    x = np.random.default_rng(seed).standard_normal((batch, *net.input_shape), dtype=np.float32)
    workers = _Workers()
    refs, rows, notes = {}, [], []
    with tempfile.TemporaryDirectory(prefix="resnet-spec-verify-") as tmp:
        try:
            for path, kind in kinds:  # checks that read a framework's schema: in its worker, before any run
                if kind in PRECHECKS and not trust_code:
                    workers.call(PRECHECKS[kind][0], PRECHECKS[kind][1], path)
            for path, kind in kinds:
                label = labels[path]
                if label not in refs:
                    say(f"reference: torch float64 on {label} ...")
                    refs[label] = workers.call("torch", R.reference, net.spec_yaml, sets[label], x)
                say(f"{shown(path)}: {kind} ...")
                wpath = _safetensors_for(net, list(sets).index(label), sets[label], tmp) if kind == "py" else None
                for run_ in _runs(workers, net, (path, kind, trust_code), x, wpath, opts, notes):
                    rows.append(_row(net, path, run_, refs[label], workers, x, device))
        finally:
            workers.close()
    return Report(spec=net.name, batch=batch, seed=seed, device=device, rows=rows, notes=notes)


def _safetensors_for(net, index: int, weights: dict, tmp: str) -> str:
    """The checked weights as a safetensors file in ``tmp``, for a standalone ``.py``'s ``load_model``
    (the source may be a checkpoint, an import source or a file whose names were unwrapped)."""
    from .weights.files import save_weights

    path = os.path.join(tmp, f"{net.name}-{index}.safetensors")
    if not os.path.exists(path):
        save_weights(weights, path)
    return path


def _runs(workers, net, file, x, wpath, opts: RunSettings, notes) -> list:
    """The runs of ``file`` = (path, kind, whether its code is trusted)."""
    path, kind, trusted = file
    shape, layout = net.input_shape, opts.layout
    if kind == "onnx":
        runs = workers.call("onnx", R.onnx_runs, path, x, shape, opts.device, layout)
        ov = workers.call("openvino", R.openvino_run, path, x, runs[0]["feed"])
        if ov is None:
            notes.append(f"{shown(path)}: OpenVINO not installed, not run")
        else:  # judged as the file is: int8 as ORT found it
            ov["int8"] = runs[0].get("int8", False)
        if runs[0].get("int8"):
            notes.append(f"{shown(path)}: int8 (QDQ): onnx's ReferenceEvaluator not run (no int8 DequantizeLinear "
                         "in every opset)")
        return runs + ([ov] if ov else [])
    if kind == "tflite":
        return [workers.call("litert", R.tflite_run, path, x, shape, trusted, layout)]
    if kind in ("keras", "savedmodel"):
        return [workers.call("tensorflow", R.keras_run, path, x, shape, kind, trusted, layout)]
    return [workers.call("torch", R.torch_file_run, path, x, shape, kind, wpath, trusted, pt2_budget(net), layout)]


def int8_metrics(ref: np.ndarray, got: np.ndarray) -> dict:
    """:func:`resnet_spec.parity.compare` plus what an int8 file is judged on: ``top5`` (the reference's
    top-1 class among the file's five highest logits) and ``mean_rel`` (mean |got - ref| / max |ref|)."""
    m = compare(ref, got)
    r64, g64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if r64.shape == g64.shape and r64.ndim == 2 and m["max_rel"] != float("inf"):
        top5 = np.argsort(-g64, axis=1)[:, :5]
        m["top5"] = float(np.mean([r in t for r, t in zip(r64.argmax(1), top5)]))
        m["mean_rel"] = float(np.abs(r64 - g64).mean() / max(m["scale"], 1e-30))
    return m


def _judge(run_, ref, head) -> tuple:
    """``(tolerance, metrics, passed)``: the float32, float16 or int8 criterion (module constants)."""
    if run_.get("int8"):
        m = int8_metrics(ref, head)
        return INT8_TOL, m, m["max_rel"] <= INT8_TOL
    tol = FLOAT16_TOL if run_.get("float16") else TOLERANCES["float32"]
    m = compare(ref, head)
    return tol, m, m["max_rel"] <= tol


def _row(net, path, run_, ref, workers, x, device) -> Row:
    head = run_["outputs"]["logits"]
    want = (len(head) if run_["level"] == "reference" else x.shape[0], net.num_classes)
    if tuple(head.shape) != want:
        raise ResNetSpecError(f"{shown(path)}: output shape {tuple(head.shape)} does not fit spec {net.name} "
                              f"(expected {want}); is it a model of another spec?")
    tol, m, ok = _judge(run_, ref["head"][: len(head)], head)
    row = Row(path, run_["runtime"], run_["level"], tol, m, ok)
    if not row.passed and run_.get("taps_level"):
        taps = workers.call("onnx", R.onnx_taps, path, x, run_["feed"], run_["taps_level"], net.tap_names(), device)
        for name in net.tap_names():
            if name in taps and name in ref and taps[name].shape == ref[name].shape:
                c = compare(ref[name], taps[name])
                row.layers.append((name, c["max_rel"]))
        row.first_divergence = next((n for n, e in row.layers if e > tol), None)
    return row


def _e(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def format_report(r: Report) -> str:
    """The terminal table, in parity's style."""
    lines = [f"verify {r.spec}: batch {r.batch}, input seed {r.seed}, device {r.device}, "
             "reference: torch backend, float64", ""]
    name = {x.file: shown(os.path.basename(x.file)) for x in r.rows}  # a newline in a name: quoted
    wf = max(len(n) for n in name.values())
    wr = max(len(x.runtime) for x in r.rows)
    lines.append(f"  {'file':<{wf}}  {'runtime':<{wr}}  {'level':<9}  {'max abs':>9}  {'max rel':>9}  "
                 f"{'top-1':>6}  {'tol rel':>8}  result")
    for x in r.rows:
        top1 = "-" if x.metrics.get("top1") is None else f"{x.metrics['top1'] * 100:.0f}%"
        lines.append(f"  {name[x.file]:<{wf}}  {x.runtime:<{wr}}  {x.level:<9}  "
                     f"{_e(x.metrics['max_abs']):>9}  {_e(x.metrics['max_rel']):>9}  {top1:>6}  "
                     f"{x.tolerance:>8.0e}  {'PASS' if x.passed else 'FAIL'}")
    for x in r.rows:
        if not x.passed and x.layers:
            err = dict(x.layers).get(x.first_divergence)
            where = (f"first divergence: {x.first_divergence} (max rel {_e(err)})" if x.first_divergence
                     else "every tap agrees; only the head differs")
            lines.append(f"  {name[x.file]}, {x.runtime} {x.level}: {where}")
    int8 = [x for x in r.rows if "top5" in x.metrics]
    for x in int8:
        lines.append(f"  {name[x.file]}, {x.runtime} {x.level}: int8: top-1 agreement {x.metrics['top1'] * 100:.0f}%, "
                     f"top-5 {x.metrics['top5'] * 100:.0f}%, max rel {_e(x.metrics['max_rel'])}, mean rel "
                     f"{_e(x.metrics['mean_rel'])}")
    if int8:
        lines.append(f"  int8 criterion: max rel <= {INT8_TOL:g} against the float64 reference on the same inputs "
                     "(top-1 shown, not judged: int8 may change near-tied classes; not ImageNet accuracy)")
    lines += [""] + [f"  note: {n}" for n in r.notes] + ([""] if r.notes else [])
    bad = sum(1 for x in r.rows if not x.passed)
    lines.append(f"{'PASS' if r.passed else 'FAIL'}: {len(r.rows) - bad}/{len(r.rows)} runs within tolerance")
    return "\n".join(lines)
