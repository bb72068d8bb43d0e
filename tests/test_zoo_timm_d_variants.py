"""Two zoo entries composed only of existing options (issue: the ResNet family people use): timm's
``resnetv2_50d`` (pre-activation, deep stem, average-pool shortcuts) and ``seresnextaa101d_32x8d``
(ResNeXt-D with squeeze-excite and average-pool anti-aliasing). Each equals timm's model carrying the
same randomized weights (CPU float32, 64 or 72 px), has timm's parameter count and multiply-adds, and the
check is sharp: the entry with one option changed differs."""

from __future__ import annotations

import pytest
from timm_checks import assert_timm_params_and_macs, max_rel, timm_randomized

import resnet_spec

# entry -> (input size, a one-option change that keeps every tensor but must change the numbers). 72 px:
# the shortcuts' 2x2 average pools meet odd sizes (9 -> 5, a ceil-mode window). resnetv2_50d's deep stem
# ends in a conv (no BN + ReLU: pre-activation), so its max pool sees negative values and pads with -inf.
ENTRIES = {
    "resnetv2_50d": (72, "stem: {pool: {pad_value: zero}}\n"),
    "seresnextaa101d_32x8d": (64, "block: {anti_alias: null}\n"),  # the stride back on the 3x3 conv
}


@pytest.mark.slow  # timm's and our model at ImageNet width (seresnextaa101d_32x8d: 94M parameters)
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_equals_timm_with_randomized_weights_and_a_change_is_seen(name):
    v2 = name.startswith("resnetv2")  # timm's ResNetV2 names, mapped to the canonical ones
    model, weights = timm_randomized(name, canonical=v2, avg_down=v2)
    size, change = ENTRIES[name]
    net = resnet_spec.load(f"extends: {name}\ninput: {{size: {size}}}\n")
    assert max_rel(model, net, weights) <= 1e-6
    wrong = resnet_spec.load(f"extends: {name}\ninput: {{size: {size}}}\n" + change)
    assert max_rel(model, wrong, weights) > 1e-4  # 100x the bound above (resnetv2_50d's border pads: 9e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_params_and_macs_are_timms(name):
    assert_timm_params_and_macs(name)
