"""Hypothesis strategies shared by the property tests (parity across backends, emitted source)."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def specs(draw):
    """Small valid specs spanning the schema's options (sizes kept tiny so each example runs fast)."""
    block = draw(st.sampled_from(["basic", "bottleneck"]))
    preact = draw(st.booleans())
    shortcut = draw(st.sampled_from(["A", "B", "C"])) if block == "basic" else draw(st.sampled_from(["B", "C"]))
    groups = draw(st.sampled_from([1, 2])) if block == "bottleneck" else 1
    stem_type = draw(st.sampled_from(["conv", "deep"]))
    pool = draw(st.one_of(st.none(), st.fixed_dictionaries({
        "kernel": st.sampled_from([2, 3]), "stride": st.sampled_from([1, 2]), "padding": st.sampled_from([0, 1]),
        "ceil_mode": st.booleans(), "pad_value": st.sampled_from(["neg_inf", "zero"])})))
    if pool and pool["padding"] * 2 > pool["kernel"]:
        pool["padding"] = 0
    nstages = draw(st.integers(1, 3))
    stages = []
    # basic blocks also take odd widths, so that option A pads an odd number of channels
    ch = draw(st.sampled_from([5, 8])) if block == "basic" else 8
    for i in range(nstages):
        stages.append({"blocks": draw(st.integers(1, 2)), "channels": ch, "stride": 1 if i == 0 else 2})
        ch += draw(st.sampled_from([1, ch])) if block == "basic" else ch  # +1: an odd zero-pad of 1
    doc = {
        "name": "random",
        "input": {"channels": draw(st.sampled_from([1, 3])),
                  "size": draw(st.one_of(st.integers(17, 29), st.lists(st.integers(17, 29), min_size=2, max_size=2)))},
        "conv_bias": draw(st.sampled_from([False, True, "auto"])),
        "norm": {"eps": draw(st.sampled_from([1e-5, 1.001e-5, 1e-3])), "momentum": draw(st.sampled_from([0.1, 0.01]))},
        "stem": {"type": stem_type, "channels": [4, 4, stages[0]["channels"]] if stem_type == "deep" else
                 stages[0]["channels"],
                 "kernel": draw(st.sampled_from([3, 5])), "stride": draw(st.sampled_from([1, 2])), "pool": pool},
        "block": {"type": block, "preact": preact,
                  "se": draw(st.sampled_from([None, {"reduction": 4, "divisor": 1}])),
                  "drop_path_rate": draw(st.sampled_from([0.0, 0.2]))},  # inference: the identity
        "shortcut": {"type": shortcut},
        "stages": stages,
        "head": {"classes": draw(st.integers(2, 12)), "dropout": draw(st.sampled_from([0.0, 0.3])),
                 "norm": draw(st.booleans()), "bias": draw(st.booleans())},
    }
    # less common switches, each drawn on its own so that shrinking can isolate one
    if draw(st.booleans()):
        doc["stem"]["norm"] = draw(st.booleans())
    if draw(st.booleans()):
        doc["stem"]["bias"] = draw(st.booleans())
    if draw(st.booleans()):
        doc["stem"]["padding"] = draw(st.integers(0, 2))
    if draw(st.booleans()):
        doc["width_multiplier"] = 2
    if block == "bottleneck":  # options that only bottleneck blocks take
        doc["block"].update(stride_on=draw(st.sampled_from(["3x3", "1x1"])), groups=groups,
                            width_per_group=8 if groups > 1 else 64, expansion=draw(st.sampled_from([2, 4])))
        if draw(st.booleans()):
            stages[0]["width"] = 4 * groups  # an explicit bottleneck width for one stage
    if nstages > 1 and shortcut != "A" and draw(st.booleans()):  # a stage of the other type (timm's test_resnet)
        stages[-1]["block"] = {"type": "basic" if block == "bottleneck" else "bottleneck"}
        stages[-1].pop("width", None)
    if shortcut in ("B", "C") and draw(st.booleans()):
        doc["shortcut"]["norm"] = draw(st.booleans())
    if shortcut == "A":
        doc["shortcut"]["zero_pad"] = draw(st.sampled_from(["split", "end"]))
    if shortcut == "B" and preact and draw(st.booleans()):
        doc["shortcut"]["strided_identity"] = True
    if shortcut == "B" and draw(st.booleans()):
        doc["shortcut"]["projection"] = "avgpool_conv"
        doc["shortcut"]["pool"] = {"ceil_mode": draw(st.booleans()), "count_include_pad": draw(st.booleans())}
    if preact and draw(st.booleans()):
        doc["block"]["stride_block"] = "last"
    # dilation is refused with stride_block: last and with avgpool_conv projections (test_errors.py)
    if (stages[-1]["stride"] == 2 and doc["block"].get("stride_block") != "last"
            and doc["shortcut"].get("projection") != "avgpool_conv" and draw(st.booleans())):
        stages[-1]["dilate"] = True
    return doc
