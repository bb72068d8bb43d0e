"""The ONNX reader reads back the ResNet-family blocks beyond the plain ResNet's: torch.onnx.export files of
timm's models (randomized weights: every BN statistic and affine parameter, every conv and linear weight
redrawn, so nothing hides behind an identity) are imported and the spec proven against ONNX Runtime running
the file, with timm's parameter count. Models are cut to one block per stage and run at 64 px. The TorchScript
exporter (opset 17) is the fast tier; the dynamo exporter (opset 18) the slow one. The files ``convert`` writes
(BN folded and not) are covered by tests/test_import_zoo.py's round-trip sweep. A pattern the reader only half
recognises is refused in one line naming the building block."""

from __future__ import annotations

import os
import sys
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

#: building block -> (timm model, create_model keywords, what the imported spec must say)
BLOCKS = {"eca": ("ecaresnet50d", {"layers": [1, 1, 1, 1]}, ["se: {type: eca}"]),
          # average-pool anti-aliasing in bottlenecks with strided 1x1 projections, and in basic blocks
          # with ResNet-D's average-pool projections; both with timm's 2x2/2 average stem pool
          "anti_alias_avgpool": ("resnetaa50", {"layers": [1, 1, 1, 1]},
                                 ["anti_alias: avgpool", "pool: {type: avg, kernel: 2, stride: 2, padding: 0}"]),
          "anti_alias_avgpool_basic": ("resnetaa34d", {"layers": [1, 1, 1, 1]},
                                       ["type: basic, anti_alias: avgpool", "pool: {type: avg, kernel: 2"]),
          # ResNet-RS: the stem's max-pool replaced by a 3x3/2 conv, BN and ReLU (maxpool.0, maxpool.1)
          "conv_stem_pool": ("resnetrs50", {"layers": [1, 1, 1, 1]},
                             ["pool: {type: conv, kernel: 3, stride: 2, padding: 1}"]),
          # timm's BlurPool2d (reflect F.pad + depthwise conv with the binomial filter) in the stem and the
          # blocks, bottleneck and basic
          "blur": ("resnetblur50", {"layers": [1, 1, 1, 1]},
                   ["pool: {kernel: 3, stride: 2, padding: 1, anti_alias: blur}", "anti_alias: blur}"]),
          "blur_basic": ("resnetblur18", {"layers": [1, 1, 1, 1]},
                         ["anti_alias: blur}", "type: basic"])}


def _timm(name: str, **kw):
    model = timm.create_model(name, pretrained=False, **kw).eval()
    weights = family_coverage.randomized({k: v.numpy() for k, v in model.state_dict().items()
                                          if not k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    return model


def _export(model, path, dynamo: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=dynamo,
                          opset_version=18 if dynamo else 17, verbose=False)
    return str(path)


def _import_and_prove(path: str, params: int) -> tuple:
    """(spec text, max rel): ``path`` read, its spec inferred and checked layer by layer, and the generated
    torch model against ONNX Runtime running the file (two seeded images where the file's batch allows)."""
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
    name, kw, says = BLOCKS[block]
    model = _timm(name, **kw)
    text, rel = _import_and_prove(_export(model, tmp_path / f"{block}.onnx", dynamo),
                                  sum(p.numel() for p in model.parameters()))
    print(f"{block} {'dynamo' if dynamo else 'torchscript'}: max_rel {rel:.2e}")
    assert rel <= 1e-5, (block, rel)
    for line in says:
        assert line in text, text


@pytest.mark.parametrize("block", list(BLOCKS))
def test_timm_torchscript_export_reads_back(tmp_path, block):
    _check(tmp_path, block, dynamo=False)


@pytest.mark.slow
@pytest.mark.parametrize("block", list(BLOCKS))
def test_timm_dynamo_export_reads_back(tmp_path, block):
    pytest.importorskip("onnxscript")
    _check(tmp_path, block, dynamo=True)


def _edited(tmp_path, block: str, edit) -> str:
    """The TorchScript file of ``block``'s timm model with ``edit(model)`` applied to its ONNX graph."""
    name, kw, _ = BLOCKS[block]
    path = _export(_timm(name, **kw), tmp_path / f"{block}.onnx", dynamo=False)
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


@pytest.mark.parametrize("block,edit,needles", [
    ("eca", _eca_conv_bias, ["(Conv): an ECA conv", "bias True", "timm's EcaModule"]),
    ("anti_alias_avgpool", _aa_ceil_mode, ["(AveragePool): an average pool of kernel [2, 2]", "ceil_mode 1",
                                           "anti-aliasing pool (block.anti_alias: avgpool)"]),
    ("blur", _box_blur, ["(Conv): a depthwise conv after reflect padding whose filter is not the binomial"]),
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
