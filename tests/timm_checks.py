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


def timm_randomized(name: str, canonical: bool = False):
    """``(model, weights)``: timm's ``name`` (eval) with randomized weights, and those weights (timm's names;
    ``canonical``: in this project's canonical names, for layouts such as timm's ResNetV2)."""
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

        weights, _ = names.canonical_weights(weights, names.layout_of(list(weights)))
    return model, weights


def max_rel(model, net, weights) -> float:
    """max |library - generated| / max |library| on two seeded images (CPU float32)."""
    import torch

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, *net.input_shape)).astype(np.float32))
    with torch.inference_mode():
        ref, got = model(x), resnet_spec.build(net, "torch", weights=weights)(x)
    return float((ref - got).abs().max() / ref.abs().max())
