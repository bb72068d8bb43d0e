"""What every zoo entry of a timm family is checked with: timm's own model carrying randomized weights (every
BN statistic and affine parameter, every conv and linear weight redrawn by benchmarks/family_coverage.py's
``randomized``: timm zero-initialises the last BN of each block, which would hide a missing op), and the
largest difference of the generated torch model from it on one seeded input, relative to its output scale."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import resnet_spec


def timm_randomized(name: str, canonical: bool = False, avg_down: bool = False):
    """``(model, weights)``: timm's ``name`` (eval) with randomized weights, and those weights (timm's names;
    ``canonical``: in this project's canonical names, for layouts such as timm's ResNetV2; ``avg_down``: its
    projections follow an average pool, at ``downsample.1``)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import family_coverage

    model = timm.create_model(name, pretrained=False).eval()
    weights = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items()
                                          if not k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    if canonical:
        from resnet_spec.backends.torch import names

        weights, _ = names.canonical_weights(weights, names.layout_of(list(weights)), avg_down)
    return model, weights


def max_rel(model, net, weights) -> float:
    """max |library - generated| / max |library| on two seeded images (CPU float32)."""
    import torch

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, *net.input_shape)).astype(np.float32))
    with torch.inference_mode():
        ref, got = model(x), resnet_spec.build(net, "torch", weights=weights)(x)
    return float((ref - got).abs().max() / ref.abs().max())


def assert_timm_params_and_macs(name: str, size: int = 64) -> None:
    """The zoo entry ``name`` has timm's parameter count, and at ``size`` px timm's multiply-adds
    (FlopCounterMode's FLOPs / 2), and names timm's model as its reference."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model(name, pretrained=False).eval()
    net = resnet_spec.load(f"extends: {name}\ninput: {{size: {size}}}\n")
    assert net.params == sum(p.numel() for p in model.parameters()) == resnet_spec.load(name).params
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    assert net.macs == counter.get_total_flops() // 2
    assert resnet_spec.spec.load(name).data["reference"] == {"library": "timm", "model": name}


def assert_one_located_error(text: str, message: str, path: tuple) -> None:
    """The spec ``text`` has exactly one semantic error: one line holding ``message``, located at ``path``
    on the text's last line (where the test appended the key in question)."""
    from resnet_spec.resolve import semantic_errors
    from resnet_spec.spec import load

    errors = semantic_errors(load(text))
    assert len(errors) == 1, errors
    err = errors[0]
    assert message in str(err) and "\n" not in str(err)
    assert err.line == len(text.splitlines()), (err.line, str(err))
    assert tuple(err.path) == path


def emitted_source_error(net, seed: int = 2) -> float:
    """Max rel between the standalone ``.py`` source emitted for ``net`` (executed as a module, carrying the
    torch model's state_dict) and the torch model itself, seeded weights with random BN statistics."""
    import types

    import torch

    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.backends.torch.source import class_name, to_source
    from resnet_spec.weights.init import init_weights
    from conftest import rel_err

    mod = types.ModuleType("emitted")
    exec(compile(to_source(net), "<emitted>", "exec"), mod.__dict__)  # noqa: S102 (our own output)
    model = torch_backend.build(net, init_weights(net, seed, random_bn=True)).eval()
    emitted = getattr(mod, class_name(net.name))()
    emitted.load_state_dict(model.state_dict())
    x = torch.randn(2, *net.input_shape)
    with torch.no_grad():
        return rel_err(model(x).numpy(), emitted.eval()(x).numpy())


def ort_at_both_levels(net, weights, x) -> tuple:
    """(ONNX graph, [logits with every ORT graph optimisation off, with all on]) for ``net`` on ``x``."""
    from resnet_spec.backends.onnx import graph

    model, arrays = graph.skeleton(net, weights)
    for t in model.graph.initializer:
        t.raw_data = arrays[t.name].tobytes()
    return model, ort_levels(model.SerializeToString(), x)


def ort_levels(model, x) -> list:
    """An ONNX file (path or bytes) run on ``x`` with every ORT graph optimisation off, then all on."""
    import onnxruntime as ort

    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    return outs
