"""``import`` of ONNX files in the forms tf2onnx 1.17.0 writes for Keras models (README, the import table's
``FILE.onnx`` row): BatchNorms as a per-channel ``Mul`` + ``Add`` after a conv, on a pre-activation block's input
and before the head (read as BNs with identity statistics: weight = scale, bias = shift, mean 0, var + eps = 1);
a classifier ``MatMul`` without its all-zero bias ``Add`` (read with a bias of zeros); convs whose all-zero bias
tf2onnx dropped (their folded BN put back with a zero bias); and, from this project's stock .keras, the stem max
pool's edge-copy padding (Slice copies + Concat) and option A's zero channels through NHWC (Transpose, Reshape,
5-d Pad, Reshape, Transpose). The files are built with onnx.helper from our own
graph (tests/other_producers.py), mirroring the nodes of real tf2onnx files; neither tf2onnx nor the network is
needed. Measured on real tf2onnx files (README): keras.applications ResNet50/ResNet50V2 at 64 px import with
the proof's max rel <= 1.4e-6."""

from __future__ import annotations

import numpy as np
import pytest

import resnet_spec
from conftest import cli, last_line_error, tiny, tiny_text

F32_TOL = 1e-5


def _nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _case(tmp_path, name, *, head_bias=True, default_stats=False):
    """(network, weights, path) of zoo entry ``name`` cut tiny, written as tf2onnx writes a Keras 3 model."""
    import onnx

    import other_producers
    from resnet_spec.backends.onnx import backend as ob

    net = tiny(name, blocks=1, size=32)
    w = resnet_spec.init_weights(net, seed=1, random_bn=not default_stats)
    if not head_bias:
        w["fc.bias"] = np.zeros_like(w["fc.bias"])
    if default_stats:  # Keras' initialisation: BN statistics 0/1, conv biases zero: tf2onnx folds and drops them
        w = {k: np.zeros_like(v) if k.endswith(".bias") and not k.startswith("fc.") else v for k, v in w.items()}
        model = other_producers.without_zero_conv_biases(other_producers.nhwc_onnx(ob.build(net, w)))
    else:
        model = other_producers.tf2onnx_style(ob.build(net, w, fold_bn=False), head_bias=head_bias)
    path = tmp_path / f"{name}-{head_bias}-{default_stats}.onnx"
    onnx.save(model, str(path))
    return net, w, path


def _same_numbers(path, got, weights):
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(2).standard_normal((2, *got.input_shape)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: _nhwc(x)})[0]
    with torch.inference_mode():
        out = resnet_spec.build(got, "torch", weights=weights).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() <= F32_TOL * np.abs(ref).max()


@pytest.mark.parametrize("name", ["keras_resnet50", "keras_resnet50v2"])
def test_mul_add_batchnorms_and_a_biasless_classifier(tmp_path, name):
    """ResNet50 (Mul/Add after each conv, which keeps its bias) and ResNet50V2 (Mul/Add on each block's input
    and before the head): the spec is the zoo entry's at eps 1e-5 (the file keeps no eps), each Mul/Add a BN
    of weight = scale and bias = shift whose statistics cancel exactly; the MatMul without an Add a zero bias."""
    import onnx
    from test_import_zoo import _same

    from resnet_spec.importers import import_source

    for head_bias in (True, False):
        net, w, path = _case(tmp_path, name, head_bias=head_bias)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert {"Mul", "MatMul"} <= ops and not ops & {"BatchNormalization", "Gemm"}, ops
        src, text, got, _, weights = import_source(str(path), "m")
        want = resnet_spec.load(tiny_text(name, 1, 32).replace("eps: 1.001e-05", "eps: 1.0e-05"))
        assert _same(got, want), text
        assert "head:" not in text or "bias: false" not in text, text
        bn = "bn_final" if name.endswith("v2") else "bn1"
        assert weights[f"{bn}.running_var"][0] + np.float32(1e-5) == np.float32(1)
        assert bool(np.any(weights["fc.bias"])) == head_bias
        _same_numbers(path, got, weights)
    assert any("MatMul without a bias Add" in note for note in src.notes), src.notes
    assert any("per-channel Mul/Add pair(s)" in note and "var + eps = 1" in note for note in src.notes), src.notes


def test_default_statistics_convs_without_bias(tmp_path):
    """Keras' initial weights (BN statistics 0/1, zero conv biases): tf2onnx folds each BN into its conv and
    drops the all-zero bias, so a bias-free Conv meets its ReLU (or ends a v1 path): the BN comes back with a
    zero bias. The CLI's proof passes and says the file takes NHWC input."""
    from resnet_spec.importers import import_source

    _, _, path = _case(tmp_path, "keras_resnet50", default_stats=True)
    src, text, got, _, weights = import_source(str(path), "m")
    assert not any(weights["bn1.bias"]) and "layer1.0.bn3.weight" in weights
    _same_numbers(path, got, weights)
    _, _, path = _case(tmp_path, "keras_resnet50v2", head_bias=False)
    res = cli("import", path, "--name", "m", "-o", tmp_path / "out")
    assert res.exit_code == 0 and "PASS" in res.output and "takes NHWC input" in res.output, res.output


def test_mul_by_other_constants_refused(tmp_path):
    """A Mul of the network's tensor by a constant that is not one value per channel (here a scalar) is
    neither a BN in inference form nor a gate: one line naming the node (the CLI: exit 1)."""
    import onnx
    from onnx import numpy_helper

    from resnet_spec.importers.source import ImportRefused

    _, _, path = _case(tmp_path, "keras_resnet50v2")
    model = onnx.load(str(path))
    mul = next(n for n in model.graph.node if n.op_type == "Mul")
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    mul.input[1] = "half"
    onnx.save(model, str(tmp_path / "scalar.onnx"))
    with pytest.raises(ImportRefused) as info:
        resnet_spec.import_model(str(tmp_path / "scalar.onnx"))
    words = f"node '{mul.name}' (Mul): a Mul by a constant of shape []: neither a BatchNorm in inference form"
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    last_line_error(cli("import", tmp_path / "scalar.onnx", "-o", tmp_path / "out"), "scalar.onnx", words)


def _edge_case(tmp_path, size):
    import onnx
    import yaml

    import other_producers
    from resnet_spec.backends.onnx import backend as ob

    spec = yaml.safe_load(tiny_text("resnet18", 1, size))
    spec["stem"]["pool"]["ceil_mode"] = True  # at 40 px it changes the output (pads [1, 1, 2, 2]), at 38 not
    net = resnet_spec.load(yaml.safe_dump(spec))
    w = resnet_spec.init_weights(net, seed=1, random_bn=True)
    path = tmp_path / f"edge{size}.onnx"
    onnx.save(other_producers.edge_copy_pool(other_producers.tf2onnx_style(ob.build(net, w, fold_bn=False))), str(path))
    return net, path


def test_edge_copy_stem_pool(tmp_path):
    """The stem max-pool's padding as this project's stock .keras writes it and tf2onnx converts it (Slice
    copies of the edge rows, then columns, joined by Concats; the MaxPool unpadded): read as the pool's -inf
    padding, more copies after than before as its ceil mode. Copies that pad rows and columns differently are
    one line naming the Concat."""
    import onnx
    from test_import_zoo import _same

    from resnet_spec.importers import import_source
    from resnet_spec.importers.source import ImportRefused

    for size, ceil in ((38, False), (40, True)):
        net, path = _edge_case(tmp_path, size)
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ops.count("Concat") == 2 and ops.count("Slice") == 4 and "Pad" not in ops, ops
        src, text, got, _, weights = import_source(str(path), "m")
        assert _same(got, net) and ("ceil_mode: true" in text) == ceil, text
        _same_numbers(path, got, weights)
    model = onnx.load(str(path))
    rows = next(n for n in model.graph.node if n.op_type == "Concat")
    rows.input.insert(0, rows.input[0])  # two copies of the first row, one of the first column
    onnx.save(model, str(tmp_path / "uneven.onnx"))
    with pytest.raises(ImportRefused) as info:
        resnet_spec.import_model(str(tmp_path / "uneven.onnx"))
    assert f"node '{rows.name}' (Concat): edge-copy padding of rows (2, 2) and columns (1, 2)" in str(info.value)
    assert "\n" not in str(info.value)


def test_option_a_channel_pad_through_nhwc(tmp_path):
    """Option A's zero channels as the stock .keras writes them and tf2onnx converts them (Transpose, Reshape to
    (N, H, W, C, 1) by a shape computed from the input's Shape, a 5-d zero Pad of C, Reshape, Transpose back):
    read as the spec's channel padding. A Pad of the 5-d tensor's other axes is one line naming the chain's
    first node."""
    import onnx
    from onnx import numpy_helper
    from test_import_zoo import _same

    import other_producers
    from resnet_spec.backends.onnx import backend as ob
    from resnet_spec.importers import import_source
    from resnet_spec.importers.source import ImportRefused

    net = tiny("resnet20", blocks=1, size=16)
    w = resnet_spec.init_weights(net, seed=1, random_bn=True)
    model = other_producers.nhwc_channel_pad(other_producers.tf2onnx_style(ob.build(net, w, fold_bn=False)))
    path = tmp_path / "optiona.onnx"
    onnx.save(model, str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Transpose") == 5 and ops.count("Shape") == 2, ops
    src, text, got, _, weights = import_source(str(path), "m")
    assert _same(got, net) and "type: A" in text, text
    _same_numbers(path, got, weights)
    pads = next(t for t in model.graph.initializer if t.name.endswith("/pads"))
    pads.CopyFrom(numpy_helper.from_array(np.array([0, 0, 0, 4, 0, 0, 1, 0, 4, 0], np.int64), pads.name))
    onnx.save(model, str(tmp_path / "rows.onnx"))
    with pytest.raises(ImportRefused) as info:
        resnet_spec.import_model(str(tmp_path / "rows.onnx"))
    assert "(Transpose): a Transpose, Reshape, Pad, Reshape, Transpose chain that is not option A's zero channels" \
        in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_trailing_softmax_left_out_and_proven_on_logits(tmp_path):
    """keras.applications models end in a Softmax (``classifier_activation="softmax"``), so do tf2onnx's files
    of them: the import reads the network up to the logits, says in one note that the Softmax was left out (the
    spec has no softmax head, as the ``.keras`` importer does), and the proof runs the file up to the Softmax's
    input, so logits are compared with logits (comparing probabilities would hide logit errors)."""
    import onnx

    import other_producers
    from resnet_spec.importers import import_source

    net, w, path = _case(tmp_path, "keras_resnet50v2")
    onnx.save(other_producers.with_softmax(onnx.load(str(path))), str(path))
    src, text, got, _, weights = import_source(str(path), "m")
    assert [n for n in src.notes if "Softmax" in n] == [n for n in src.notes if "'predictions/Softmax'" in n
                                                         and "left out" in n], src.notes
    np.testing.assert_array_equal(weights["fc.weight"], w["fc.weight"])
    res = cli("import", path, "--name", "m", "-o", tmp_path / "out")
    assert res.exit_code == 0 and "PASS" in res.output and "Softmax" in res.output, res.output


def test_other_softmaxes_refused(tmp_path):
    """A Softmax across anything but the classes (axis 0, the batch), or one inside the network (here after the
    stem's ReLU), is one line naming the node."""
    import onnx
    from onnx import helper

    import other_producers
    from resnet_spec.importers.source import ImportRefused

    _, _, path = _case(tmp_path, "keras_resnet50v2")
    onnx.save(other_producers.with_softmax(onnx.load(str(path)), axis=0), str(tmp_path / "axis0.onnx"))
    with pytest.raises(ImportRefused) as info:
        resnet_spec.import_model(str(tmp_path / "axis0.onnx"))
    words = "node 'predictions/Softmax' (Softmax): a Softmax on axis 0"
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    model = onnx.load(str(path))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    inner = helper.make_node("Softmax", ["sm_in"], [relu.output[0]], name="inner/Softmax", axis=1)
    relu.output[0] = "sm_in"
    model.graph.node.insert(list(model.graph.node).index(relu) + 1, inner)
    onnx.save(model, str(tmp_path / "inner.onnx"))
    last_line_error(cli("import", tmp_path / "inner.onnx", "-o", tmp_path / "out"), "inner.onnx",
                    "node 'inner/Softmax' (Softmax): a Softmax inside the network")
