"""Parameter and buffer counts read off each framework's own model, for comparison with the IR.

Module-level functions so that they pickle into backend worker processes (TensorFlow never runs in
the pytest process; see conftest.py).
"""

from __future__ import annotations

import math


def torch_counts(model) -> dict:
    """torch's own count: ``parameters()``, and the buffers other than BN batch counters."""
    return {"params": sum(p.numel() for p in model.parameters()),
            "buffers": sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))}


def keras_counts(model) -> dict:
    """Keras's own count: trainable and non-trainable weights."""
    return {"params": sum(math.prod(w.shape) for w in model.trainable_weights),
            "buffers": sum(math.prod(w.shape) for w in model.non_trainable_weights)}


def native_counts(backend: str, spec_yaml: str, weights: dict) -> dict:
    """``{"params": n, "buffers": n}`` as the framework itself counts them.

    torch: ``parameters()`` and the BN running statistics among ``buffers()``; Keras: trainable and
    non-trainable weights; ONNX (BatchNormalization kept, so nothing is folded away): the elements of
    the initializers that carry canonical names, split by whether the name is a BN running statistic.
    """
    import resnet_spec
    from resnet_spec.backends import get

    net = resnet_spec.load(spec_yaml)
    mod = get(backend)
    if backend == "torch":
        return torch_counts(mod.build(net, weights))
    if backend == "tensorflow":
        return keras_counts(mod.build(net, weights))
    model = mod.build(net, weights, fold_bn=False)
    canonical = {t.name for t in net.tensors()}
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer if t.name in canonical}
    assert set(sizes) == canonical, sorted(canonical ^ set(sizes))[:3]
    from resnet_spec.ir import BN_STATS as stats
    return {"params": sum(v for k, v in sizes.items() if not k.endswith(stats)),
            "buffers": sum(v for k, v in sizes.items() if k.endswith(stats))}
