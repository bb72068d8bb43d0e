"""Run an imported source in its own runtime and the generated model in PyTorch; compare.

Each runs in its own worker process (:mod:`resnet_spec.isolate`): TensorFlow, ONNX Runtime and
PyTorch never share one. The source runs as what it is -- the ONNX file in ONNX Runtime, the Keras
model in Keras, the torchvision/timm model in its library, a state dict in the timm ResNet (or ResNetV2)
class its names come from -- so the comparison is against the producer, never the generated model against itself.
"""

from __future__ import annotations

import sys

import numpy as np

from ..budgets import PROOF_BATCH, proof_batch, proof_refusal
from ..errors import ResNetSpecError
from ..isolate import run_concurrently, run_isolated
from .source import ImportRefused


def source_runner(src, full_spec: dict) -> tuple:
    """(worker function, its arguments before the input) that runs ``src`` in its own runtime."""
    if src.kind in ("torchvision", "timm"):
        lib, name = src.facts["library"]
        return _run_library, (lib, name, src.weights, src.facts.get("source_names", {}))
    if src.kind == "torch":
        from ..backends.torch.reader import timm_equivalent

        kwargs = timm_equivalent(full_spec)
        if kwargs is None:
            raise ImportRefused(f"{src.label}: the checkpoint's architecture has no timm/torchvision "
                               "equivalent to run it in, so the import cannot be proven equal; use the "
                               "spec and weights with 'resnet-spec parity' instead")
        return _run_timm, (kwargs, src.weights, src.facts.get("source_names", {}))
    if src.kind == "onnx":
        from ..backends.onnx.checked import run_source
        from ..extras import require

        require(f"running {src.label}", "onnxruntime")
        return run_source, (src.facts["path"], src.facts.get("logits"))
    if src.kind == "keras":
        from ..backends.keras.reader import run_keras

        return run_keras, (src.facts["keras_source"],)
    raise ResNetSpecError(f"{src.label}: no runtime for a {src.kind} source")


def _torch_run(model, x):
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def _load_state(model, weights, source_names=None):
    """``model`` with the canonical ``weights`` loaded, under its own names (``source_names``: canonical
    -> the model's name, for layouts :mod:`...backends.torch.names` reads) and shapes."""
    import torch

    from ..backends.torch.names import source_state

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = source_state(weights, source_names or {}, shapes)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ResNetSpecError(f"the source model does not take the imported weights: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return model


def _run_library(lib, name, weights, source_names, x):
    from ..backends.torch.reader import library_model

    return _torch_run(_load_state(library_model(lib, name), weights, source_names), x), f"{lib} ({name})"


def _run_timm(kwargs, weights, source_names, x):
    import timm

    from ..backends.torch.reader import build_timm

    model = build_timm(kwargs)
    desc = f"timm {timm.__version__} {type(model).__name__} class"
    if kwargs.get("regnet"):  # torchvision's RegNet class, under its own names whatever the file's were
        import torchvision

        from ..backends.torch import names

        own = names.layout_of(model.state_dict())
        source_names = {names.canonical(k, own): k for k in model.state_dict()}
        desc = f"torchvision {torchvision.__version__} RegNet class"
    return _torch_run(_load_state(model, weights, source_names), x), desc


def _run_generated(spec_yaml, weights, x):
    from ..backends import prepare

    mod, net = prepare("torch", spec_yaml)
    out, device = mod.infer(net, weights, x)
    return out["head"], device


def _run_pair(fn, args, spec_yaml, weights, x):
    return fn(*args, x), _run_generated(spec_yaml, weights, x)


def _run_here(fn, *args):
    return fn(*args)


def prove(src, net, full_spec: dict, weights: dict, batch: int = PROOF_BATCH, seed: int = 0,
          isolated: bool | None = None) -> dict:
    """Run source and generated model on one seeded input of the import's own batch (a file's fixed
    batch only when smaller) at the spec's size; the comparison and whether it passed. Refused, before
    any worker starts, when that input would cost more than the proof's budget.

    A PyTorch source (a library model, a state dict) and the generated model run in this process
    unless ``isolated`` (by default: only when TensorFlow is loaded here, which torchvision must never
    follow); reading the source has already imported PyTorch, so a worker would only add its start-up.
    An ONNX or Keras source runs in a worker of its own, beside a PyTorch worker running the generated
    model at the same time."""
    from ..parity import TOLERANCES, compare

    why = proof_refusal(net)
    if why:
        raise ImportRefused(f"{src.label}: {why}")
    fn, args = source_runner(src, full_spec)
    batch = proof_batch(src.facts.get("batch"), batch)
    x = np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)
    fed = fed_input(src, x)
    try:
        if src.kind in ("torch", "torchvision", "timm"):  # one process runs both
            if isolated is None:
                isolated = "tensorflow" in sys.modules
            run = run_isolated if isolated else _run_here
            (ref, ref_desc), (got, got_desc) = run(_run_pair, fn, args, net.spec_yaml, weights, x)
        else:
            calls = [(fn, (*args, fed)), (_run_generated, (net.spec_yaml, weights, x))]
            results = [None, None]
            for i, get in run_concurrently(calls, parallel=2):
                results[i] = get()
            (ref, ref_desc), (got, got_desc) = results
    except ResNetSpecError:
        raise
    except Exception as exc:  # a runtime's own error: one line, never a traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImportRefused(f"{src.label}: running the source or the generated model failed: "
                           f"{type(exc).__name__}: {msg}") from None
    cmp = compare(ref, got)
    cmp.update(source=ref_desc, generated=f"resnet-spec torch model ({got_desc})",
               tolerance=TOLERANCES["float32"], input=list(x.shape), layout=source_layout(src),
               fed=list(fed.shape))
    cmp["passed"] = bool(cmp["max_rel"] <= cmp["tolerance"])
    return cmp


def source_layout(src) -> str:
    """The input layout the source takes ('nchw' or 'nhwc'): what its reader found (an ONNX file's
    entry Transpose, a Keras model's entry Permute or its NHWC default); a PyTorch source's is NCHW."""
    return src.facts.get("layout", "nhwc" if src.kind == "keras" else "nchw")


def fed_input(src, x: np.ndarray) -> np.ndarray:
    """``x`` (NCHW, as the generated model takes it) in the layout the source takes."""
    from ..backends.common import entry_permutation

    perm = entry_permutation("nchw", source_layout(src))
    return x if perm is None else np.ascontiguousarray(x.transpose(perm))


def format_result(src, cmp: dict) -> str:
    fed = ""
    if "layout" in src.facts:  # a file's (ONNX, Keras) own layout; a PyTorch source takes the input as it is
        fed = f", fed to the source as {cmp['layout'].upper()} {'x'.join(map(str, cmp['fed']))} (its input layout)"
    lines = [f"parity: {src.label} in {cmp['source']}  vs  {cmp['generated']}",
             f"  input {'x'.join(map(str, cmp['input']))} (seeded normal){fed}"]
    if "shape_mismatch" in cmp:
        lines.append(f"  output shapes differ: {cmp['shape_mismatch'][0]} vs {cmp['shape_mismatch'][1]}")
    else:
        top1 = cmp.get("top1")
        lines.append(f"  max_abs {cmp['max_abs']:.3g}  max_rel {cmp['max_rel']:.3g} (tolerance "
                     f"{cmp['tolerance']:g})" + (f"  top-1 agreement {top1:.0%}" if top1 is not None else ""))
    lines.append("  PASS: the generated model equals the source" if cmp["passed"] else
                 "  FAIL: the generated model does not reproduce the source")
    return "\n".join(lines)
