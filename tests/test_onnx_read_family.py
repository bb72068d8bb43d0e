"""The ONNX reader reads back the ResNet-family blocks beyond the plain ResNet's: torch.onnx.export files of
timm's models (randomized weights: every BN statistic and affine parameter, every conv and linear weight
redrawn, so nothing hides behind an identity) are imported and the spec proven against ONNX Runtime running
the file, with timm's parameter count. Models are cut to one narrow block per stage and run at 64 px. The
TorchScript exporter (opset 17) on one model per block is the fast tier; the other variants, the dynamo exporter
(opset 18; opset 21 for ONNX's own GroupNormalization) the slow one. The files ``convert`` writes
(BN folded and not) are covered by tests/test_import_zoo.py's round-trip sweep (FRN and EvoNorm-S0, in no zoo
entry, by tests/test_frn.py's). A pattern the reader only half
recognises is refused in one line naming the building block: in timm's exported files, and for the composite
blocks (Res2Net's split convs, the selective kernel, split attention) in ``convert``'s forms too."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings

import numpy as np
import pytest
from conftest import cli, last_line_error

import resnet_spec

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import family_coverage  # noqa: E402  (benchmarks/: the randomized weights of the family coverage run)


def _bit(pretrained=False, **kw):
    """timm's resnetv2_50x1_bit with ``kw`` (its registered function fixes the layers)."""
    from timm.models import resnetv2

    return resnetv2._create_resnetv2_bit("resnetv2_50x1_bit", pretrained=pretrained, **kw)


def _legacy_se(**kw):
    """timm's legacy SENet with SEResNetBlock (legacy_seresnet18's block), one block per stage: its branch ends
    BN, ReLU, squeeze-excite."""
    from timm.models.senet import SENet, SEResNetBlock

    return SENet(SEResNetBlock, layers=[1, 1, 1, 1], groups=1, reduction=16, inplanes=64, input_3x3=False,
                 downsample_kernel_size=1, downsample_padding=0, **kw)


def _evos(**kw):
    """timm's resnetv2_50d_evos with EvoNorm2dS0 of 4 groups (its default 32 needs wide layers)."""
    from timm.layers import EvoNorm2dS0

    return timm.create_model("resnetv2_50d_evos", pretrained=False, norm_layer=functools.partial(EvoNorm2dS0, groups=4),
                             **kw)


#: timm's ResNet cut to one narrow block per stage and 10 classes (fast to export); GroupNorm's 32 groups need
#: widths of multiples of 32
SMALL = {"layers": [1, 1, 1, 1], "channels": (16, 16, 32, 32), "num_classes": 10}
DEEP = {**SMALL, "stem_width": 8}  # a deep stem's first widths

#: building block -> (timm model or its constructor, keywords, what the imported spec must say)
BLOCKS = {"eca": ("ecaresnet50d", DEEP, ["se: {type: eca}"]),
          # average-pool anti-aliasing in bottlenecks with strided 1x1 projections, and in basic blocks
          # with ResNet-D's average-pool projections; both with timm's 2x2/2 average stem pool
          "anti_alias_avgpool": ("resnetaa50", SMALL,
                                 ["anti_alias: avgpool", "pool: {type: avg, kernel: 2, stride: 2, padding: 0}"]),
          "anti_alias_avgpool_basic": ("resnetaa34d", DEEP,
                                       ["type: basic, anti_alias: avgpool", "pool: {type: avg, kernel: 2"]),
          # ResNet-RS: the stem's max-pool replaced by a 3x3/2 conv, BN and ReLU (maxpool.0, maxpool.1)
          "conv_stem_pool": ("resnetrs50", DEEP,
                             ["pool: {type: conv, kernel: 3, stride: 2, padding: 1}"]),
          # timm's BlurPool2d (reflect F.pad + depthwise conv with the binomial filter) in the stem and the
          # blocks, bottleneck and basic
          "blur": ("resnetblur50", SMALL,
                   ["pool: {kernel: 3, stride: 2, padding: 1, anti_alias: blur}", "anti_alias: blur}"]),
          "blur_basic": ("resnetblur18", SMALL,
                         ["anti_alias: blur}", "type: basic"]),
          # legacy SEResNetBlock: squeeze-excite after the second BN's ReLU (read as such, not as timm's placement)
          "se_end_relu": (_legacy_se, {"num_classes": 10}, ["placement: end_relu", "type: basic"]),
          # GroupNorm (torch.onnx.export's Reshape, InstanceNormalization, Reshape, Mul, Add) in a ResNet
          "group_norm": ("resnet50_gn", {**SMALL, "channels": (32, 32, 32, 32)},
                         ["norm: {type: group, groups: 32, eps: 1.0e-05}"]),
          # BiT: weight-standardized convs (StdConv2d, eps 1e-8) and GroupNorm in a pre-activation ResNetV2
          "std_conv": (_bit, {**SMALL, "channels": (128, 128, 128, 128)},
                       ["conv: {standardize: true, eps: 1.0e-08}", "norm: {type: group, groups: 32",
                        "preact: true", "pad_value: zero"]),
          # Res2Net's split convs: two blocks in the first stage so that one cascades (the others pool the last
          # split); Res2NeXt's grouped split convs
          "res2net": ("res2net50_26w_4s", {**SMALL, "layers": [2, 1, 1, 1]},
                      ["spatial: {type: res2net, scale: 4}", "{blocks: 2, channels: 16, stride: 1, width: 6}"]),
          # scale 2 (res2net50_48w_2s): one split conv, so no cascade Add; the second block passes its last split on
          "res2net_scale2": ("res2net50_48w_2s", {**SMALL, "layers": [2, 1, 1, 1]},
                             ["spatial: {type: res2net, scale: 2}"]),
          "res2next": ("res2next50", {**SMALL, "layers": [2, 1, 1, 1]},
                       ["spatial: {type: res2net, scale: 4}", "groups: 8", "width_per_group: 4"]),
          # SKNet's selective kernel: split input in basic blocks (timm's stack, ReduceSum, Softmax on axis 1), all
          # channels to every path in grouped bottlenecks
          "selective_kernel": ("skresnet18", SMALL,
                               ["spatial: {type: selective_kernel, rd_ratio: 0.125, rd_divisor: 16}", "type: basic"]),
          "selective_kernel_bottleneck": ("skresnext50_32x4d", SMALL,
                                          ["spatial: {type: selective_kernel, split_input: false, rd_ratio: 0.0625, "
                                           "rd_divisor: 32}", "groups: 32"]),
          # ResNeSt's split attention (timm's RadixSoftmax: Reshape, Transpose, Softmax, Reshapes) with the avd pool
          # after it; radix 4 in 2 groups with the avd pool before it
          "split_attention": ("resnest50d", DEEP, ["spatial: {type: split_attention, radix: 2}", "avd: after_3x3"]),
          "split_attention_radix4": ("resnest50d_4s2x40d", {**DEEP, "channels": (32, 32, 32, 32)},
                                     ["spatial: {type: split_attention, radix: 4}", "avd: before_3x3", "groups: 2"]),
          # radix 1: a sigmoid gate with grouped fcs, Reshape after the Sigmoid (not a squeeze-excite)
          "split_attention_radix1": ("resnest50d_1s4x24d", {**DEEP, "channels": (32, 32, 32, 32)},
                                     ["spatial: {type: split_attention, radix: 1}", "groups: 4"]),
          # the norm-act layers of pre-activation ResNetV2s: FRN + TLU (TorchScript: Mul, Cast, ReduceMean, Div(1, .),
          # Expand; dynamo: Pow, Reciprocal) and EvoNorm-S0 (its group variance over a Reshape, the sigmoid gate)
          "frn": ("resnetv2_50d_frn", {**SMALL, "stem_chs": 8}, ["norm: {type: frn, eps: 1.0e-05}", "preact: true"]),
          "evonorm_s0": (_evos, {**SMALL, "channels": (32, 32, 64, 64), "stem_chs": 16},
                         ["norm: {type: evonorm_s0, groups: 4, eps: 1.0e-05}", "preact: true"])}


def _timm(name, **kw):
    model = (timm.create_model(name, pretrained=False, **kw) if isinstance(name, str) else name(**kw)).eval()
    weights = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items()
                                          if not k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    return model


def _export(model, path, dynamo: bool, opset=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=dynamo,
                          opset_version=opset or (18 if dynamo else 17), verbose=False)
    return str(path)


@functools.lru_cache(maxsize=None)
def _exported(block: str, dynamo: bool, opset=None) -> tuple:
    """(ONNX bytes, timm's parameter count) of ``block``'s randomized timm model, exported once per test run
    (the refusal tests edit copies of the same files)."""
    name, kw, _ = BLOCKS[block]
    model = _timm(name, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        path = _export(model, os.path.join(tmp, "m.onnx"), dynamo, opset)  # dynamo: weights in a side file
        return onnx.load(path).SerializeToString(), sum(p.numel() for p in model.parameters())


def _file(tmp_path, block: str, dynamo: bool = False, opset=None) -> str:
    path = tmp_path / f"{block}_{int(dynamo)}_{opset}.onnx"
    path.write_bytes(_exported(block, dynamo, opset)[0])
    return str(path)


def _import_and_prove(path: str, params: int) -> tuple:
    """(spec text, max rel): ``path`` read, its spec inferred and checked layer by layer, and the generated
    torch model against ONNX Runtime running the file (one seeded image: the exported file's batch is 1)."""
    from resnet_spec.backends.onnx.reader import read_onnx
    from resnet_spec.importers.infer import build_spec
    from resnet_spec.importers.source import check_source

    src = read_onnx(path)
    text, net, _ = build_spec(src, "m")
    weights = check_source(net, src)
    assert net.params == params, text
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, *net.input_shape)).astype(np.float32)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.inference_mode():
        got = resnet_spec.build(net, "torch", weights=weights).eval()(torch.from_numpy(x)).numpy()
    return text, float(np.abs(ref - got).max() / np.abs(ref).max())


def _check(tmp_path, block: str, dynamo: bool):
    says = BLOCKS[block][2]
    text, rel = _import_and_prove(_file(tmp_path, block, dynamo), _exported(block, dynamo)[1])
    print(f"{block} {'dynamo' if dynamo else 'torchscript'}: max_rel {rel:.2e}")
    assert rel <= 1e-5, (block, rel)
    for line in says:
        assert line in text, text


#: one model per building block in the fast tier; the other variants with the slow tier
FAST = ("eca", "se_end_relu", "anti_alias_avgpool", "conv_stem_pool", "blur", "std_conv", "res2net", "selective_kernel",
        "split_attention", "frn", "evonorm_s0")


@pytest.mark.parametrize("block", [b if b in FAST else pytest.param(b, marks=pytest.mark.slow) for b in BLOCKS])
def test_timm_torchscript_export_reads_back(tmp_path, block):
    _check(tmp_path, block, dynamo=False)


#: variants whose graphs differ from their block's model only in facts both exporters write alike (grouped split
#: convs; a selective kernel without the split; split attention's sigmoid gate): TorchScript only, the dynamo
#: exporter taking ~5 s a model
NOT_DYNAMO = ("se_end_relu", "res2net_scale2", "res2next", "selective_kernel_bottleneck", "split_attention_radix1")


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b not in NOT_DYNAMO])
def test_timm_dynamo_export_reads_back(tmp_path, block):
    pytest.importorskip("onnxscript")
    _check(tmp_path, block, dynamo=True)


@pytest.mark.slow
def test_dynamo_opset_21_group_normalization_op(tmp_path):
    """From opset 21 the dynamo exporter writes ONNX's own GroupNormalization (scale and bias per channel): read
    as the GroupNorm it is. The same node in an opset-18 file (scale per group) is refused in one line."""
    pytest.importorskip("onnxscript")
    path = _file(tmp_path, "std_conv", True, 21)
    assert "GroupNormalization" in {n.op_type for n in onnx.load(path).graph.node}
    text, rel = _import_and_prove(path, _exported("std_conv", True, 21)[1])
    assert rel <= 1e-5 and all(line in text for line in BLOCKS["std_conv"][2]), (rel, text)
    model = onnx.load(path)
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 18
    onnx.save(model, path)
    last_line_error(cli("import", path, "-o", tmp_path / "out"), "(GroupNormalization): GroupNormalization at "
                    "opset 18", "a spec's GroupNorm is opset 21's")


@pytest.mark.slow
@pytest.mark.parametrize("block", ["frn", "evonorm_s0"])
def test_norm_act_dynamic_batch_export(tmp_path, block):
    """A TorchScript export with a dynamic batch (dynamic_axes): the shapes of FRN's Expand and EvoNorm-S0's group
    Reshapes are computed from the input's (Shape, Gather, Concat), EvoNorm's groups evaluated on the trial input."""
    name, kw, says = BLOCKS[block]
    model = _timm(name, **kw)
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), path, opset_version=17, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    assert "Shape" in {n.op_type for n in onnx.load(path).graph.node}
    text, rel = _import_and_prove(path, sum(p.numel() for p in model.parameters()))
    assert rel <= 1e-5 and all(line in text for line in says), (rel, text)


def _edited(tmp_path, block: str, edit) -> str:
    """The TorchScript file of ``block``'s timm model with ``edit(model)`` applied to its ONNX graph."""
    path = _file(tmp_path, block)
    model = onnx.load(path)
    edit(model)
    onnx.save(model, path)
    return path


def _eca_conv_bias(model):
    """A bias on the first ECA conv: a gate of ECA's shape that timm's EcaModule is not."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and "se" in n.name)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.full(1, 0.5, np.float32), "eca_bias"))
    conv.input.append("eca_bias")


def _aa_ceil_mode(model):
    """ceil_mode on the first anti-aliasing pool (the output size is the same at 64 px): not timm's."""
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool" and "aa" in n.name)
    next(a for a in pool.attribute if a.name == "ceil_mode").i = 1


def _box_blur(model):
    """A 3x3 box filter (1/9 everywhere) in place of the first blur pool's binomial one."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in n.attribute))
    box = onnx.numpy_helper.from_array(np.full((64, 1, 3, 3), 1 / 9, np.float32), "box_filter")
    model.graph.initializer.append(box)
    conv.input[1] = "box_filter"


def _group_scale(model):
    """A scale of 2 on the first GroupNorm's InstanceNormalization: not a GroupNorm as torch writes it."""
    node = next(n for n in model.graph.node if n.op_type == "InstanceNormalization")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.full(32, 2.0, np.float32), "scale2"))
    node.input[1] = "scale2"


def _std_scale(model):
    """A scale of 2 on the first weight standardization's BatchNormalization: the weight is then twice a
    standardized one, which no StdConv2d computes."""
    node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    channels = next(i for i in model.graph.initializer if i.name == node.input[0]).dims[1]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.full(channels, 2.0, np.float32), "scale2"))
    node.input[1] = "scale2"


def _res2net_pool_excluding_pad(model):
    """count_include_pad 0 on the first pool of a last Res2Net split: timm's AvgPool2d counts the padding."""
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool")
    next(a for a in pool.attribute if a.name == "count_include_pad").i = 0


def _res2net_swapped_splits(model):
    """The cascade's second conv reading the third split: the splits out of order."""
    add = next(n for n in model.graph.node if n.op_type == "Add" and any(
        i.startswith("/layer1/layer1.1/Split") for i in n.input))
    k = next(k for k, i in enumerate(add.input) if i.startswith("/layer1/layer1.1/Split"))
    add.input[k] = add.input[k][:-1] + str(int(add.input[k][-1]) + 1)


def _sk_softmax_axis(model):
    """The first selective kernel's softmax across the channels (axis 2) instead of the paths."""
    node = next(n for n in model.graph.node if n.op_type == "Softmax")
    next(a for a in node.attribute if a.name == "axis").i = 2


def _sa_softmax_axis(model):
    """The first split attention's softmax across the groups' channels (axis 3) instead of the radix."""
    node = next(n for n in model.graph.node if n.op_type == "Softmax")
    next(a for a in node.attribute if a.name == "axis").i = 3


def _frn_scalar_tau(model):
    """The first FRN's TLU a Max by one scalar (not a tau per channel)."""
    node = next(n for n in model.graph.node if n.op_type == "Max")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "tau_scalar"))
    node.input[1] = "tau_scalar"


def _evonorm_instance_variance(model):
    """The first EvoNorm-S0's variance over each channel alone (axes 3, 4 of (N, groups, C / groups, H, W)), not
    over its group: every node in EvoNorm-S0's places, computing something else."""
    node = [n for n in model.graph.node if n.op_type == "ReduceMean"][1]
    next(a for a in node.attribute if a.name == "axes").ints[:] = [3, 4]


@pytest.mark.parametrize("block,edit,needles", [
    ("frn", _frn_scalar_tau, ["node '/stem/norm1/Sqrt' (Sqrt): a Sqrt that is not Filter Response Normalization",
                              "a Max ('/stem/norm1/Max') after its affine that is not by a per-channel tau"]),
    ("evonorm_s0", _evonorm_instance_variance, ["node '/stem/norm1/Sqrt' (Sqrt): a Sqrt that is not Filter",
                                                "its nodes compute something else than EvoNorm-S0 of eps 1e-05, 4 "
                                                "groups with its activation on the weights read (max error"]),
    ("split_attention", _sa_softmax_axis, ["ResNeSt split attention: attention weights of shape [1, 2, 16, 1, 1] "
                                           "that are not the softmax across the radix (2;"]),
    ("selective_kernel", _sk_softmax_axis, ["(Softmax): a selective kernel (SKNet): a softmax on axis 2",
                                            "across the paths, axis 1"]),
    ("res2net", _res2net_pool_excluding_pad, ["(AveragePool): Res2Net split convs (timm Bottle2neck): the last "
                                              "split's average pool", "count_include_pad 0"]),
    ("res2net", _res2net_swapped_splits, ["Res2Net split convs (timm Bottle2neck): split 1 is not channels 6..12"]),
    ("eca", _eca_conv_bias, ["(Conv): an ECA conv", "bias True", "timm's EcaModule"]),
    ("anti_alias_avgpool", _aa_ceil_mode, ["(AveragePool): an average pool of kernel [2, 2]", "ceil_mode 1",
                                           "anti-aliasing pool (block.anti_alias: avgpool)"]),
    ("blur", _box_blur, ["(Conv): a depthwise conv after reflect padding whose filter is not the binomial"]),
    ("std_conv", _group_scale, ["(Add): a GroupNorm-like InstanceNormalization",
                                  "its own scale and bias are not ones and zeros"]),
    ("std_conv", _std_scale, ["(Conv): a weight computed in the graph through BatchNormalization that is not a "
                              "constant standardized per output filter"]),
])
def test_half_matching_pattern_is_refused_in_one_line(tmp_path, block, edit, needles):
    path = _edited(tmp_path, block, edit)
    last_line_error(cli("import", path, "-o", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_blur_reflect_copies_of_the_wrong_column_are_refused(tmp_path):
    """convert's blur pool pads by Slice copies joined by Concat: a copy of a column one further in than the
    reflection reads (column W - 3 instead of W - 2) is refused in one line, never read as a blur pool."""
    from conftest import tiny_text
    from resnet_spec.backends.onnx import backend as onnx_backend

    net = resnet_spec.load(tiny_text("resnetblur50", blocks=1))
    (path,) = onnx_backend.convert(net, resnet_spec.init_weights(net, seed=0), str(tmp_path / "c"))[:1]
    model = onnx.load(str(path))
    cut = next(n for n in model.graph.node if n.name == "maxpool.1.reflect_cols_last0")
    width = net.stem[-2].out_shape[2]  # the stride-1 max-pool's output, which the blur pads
    for k, value in ((1, width - 3), (2, width - 2)):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], np.int64), f"wrong{k}"))
        cut.input[k] = f"wrong{k}"
    onnx.save(model, str(path))
    last_line_error(cli("import", path, "-o", tmp_path / "out"), "node 'maxpool.1.pad_reflect_cols' (Concat)",
                    f"copies of rows/columns [1, {width - 3}] around a map of size {width} along axis 3")


def _convert_edited(tmp_path, entry: str, node_name: str, edit) -> str:
    """``convert``'s file (BN folded) of zoo ``entry`` cut to one block per stage, node ``node_name`` edited."""
    from conftest import tiny_text
    from resnet_spec.backends.onnx import backend as onnx_backend

    net = resnet_spec.load(tiny_text(entry, blocks=1))
    (path,) = onnx_backend.convert(net, resnet_spec.init_weights(net, seed=0), str(tmp_path / "c"))[:1]
    model = onnx.load(str(path))
    edit(model, next(n for n in model.graph.node if n.name == node_name))
    onnx.save(model, str(path))
    return str(path)


def _axis(value):
    def edit(model, node):
        next(a for a in node.attribute if a.name == "axis").i = value
    return edit


def _slice_from_zero(model, node):
    """Split 1 copies split 0's channels (starts 0, ends the width)."""
    width = int(onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == node.input[1]))[0])
    for k, value in ((1, 0), (2, width)):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], np.int64), f"wrong{k}"))
        node.input[k] = f"wrong{k}"


@pytest.mark.parametrize("entry,node,edit,needles", [
    ("res2net50_26w_4s", "layer1.0.split1", _slice_from_zero,
     ["Res2Net split convs (timm Bottle2neck): split 1 is not channels 26..52", "found (0, 26)"]),
    ("skresnet34", "layer1.0.conv1.attn.softmax", _axis(2),
     ["(Softmax): a selective kernel (SKNet): a softmax on axis 2"]),
    ("resnest50d", "layer1.0.conv2.gate", _axis(1),
     ["(Reshape): ResNeSt split attention: attention weights of shape", "not the softmax across the radix (2"]),
])
def test_convert_half_matches_are_refused_in_one_line(tmp_path, entry, node, edit, needles):
    """The same refusals for ``convert``'s forms of the three composite blocks (Slices, Sum/Slice/Mul, Reshape/
    Softmax on axis 2/Transpose): a part read from the wrong channels, a softmax on the wrong axis."""
    path = _convert_edited(tmp_path, entry, node, edit)
    last_line_error(cli("import", path, "-o", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_std_conv_weights_over_the_fold_cap_are_read(tmp_path, monkeypatch):
    """BiT-M x3/x4's largest convs (6144x3072, 8192x4096 in resnetv2_50x3_bit, resnetv2_152x4_bit) are over the
    folding cap (2^24 elements a value): a weight-standardization chain is evaluated up to its raw weight's own
    size, which the file holds, so they are read (they were refused as 'not a constant standardized per output
    filter'). The cap is lowered here so that a tiny BiT's convs are over it."""
    from resnet_spec.backends.onnx import patterns_norm

    monkeypatch.setattr(patterns_norm, "MAX_FOLD", 64)
    _check(tmp_path, "std_conv", dynamo=False)


def test_norm_check_is_bounded_before_its_trial_input_is_drawn(tmp_path, monkeypatch):
    """An FRN's check draws trial inputs of its input's shape, which the file declares: a shape over the check's
    cap is refused before anything is drawn (the cap lowered here so that a tiny model's stem is over it), and all
    the norms of one graph share one budget of trial values."""
    from resnet_spec.backends.onnx import patterns_frn

    path = _file(tmp_path, "frn")
    monkeypatch.setattr(patterns_frn, "MAX_FOLD", 1000)
    last_line_error(cli("import", path, "-o", tmp_path / "out"), "(Sqrt): a Sqrt that is not Filter Response",
                    "values, over the 1,000 its check evaluates (export with batch 1 or a dynamic batch)")
    monkeypatch.setattr(patterns_frn, "MAX_FOLD", 1 << 24)
    monkeypatch.setattr(patterns_frn, "CHECK_TOTAL", 40_000)
    last_line_error(cli("import", path, "-o", tmp_path / "out"), "trial values their checks evaluate")
