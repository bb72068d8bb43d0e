"""ONNX round trip of the zoo: every entry's ONNX file -- as ``convert`` writes it (BN folded or kept)
and as ``torch.onnx.export`` writes the torch backend's model (TorchScript and dynamo exporters) --
imports back (``resnet-spec import``) into the same network, proven against ONNX Runtime running the file.

The quick part runs a few representative entries through the CLI at their small size: option-A
shortcuts (resnet20, channels split or padded at the end), type-C shortcuts (a projection on every
block) and a zero-padded max-pool stem. The whole-zoo sweep is marked slow.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import resnet_spec
from resnet_spec.cli import main
from resnet_spec.importers.source import ImportRefused
from conftest import tiny_text, tiny_zoo

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

TYPE_C = "extends: resnet20\nname: s\ndepth: 14\ninput: {size: 16}\nshortcut: {type: C}\n"


# the exporter folds the first block's pre-activation BN into the stem conv
PREACT = "extends: preact_resnet164\nname: s\ndepth: 20\ninput: {size: 16}\n"


def _spec(name: str, extra: str = "") -> str:
    size = 32 if resnet_spec.load(name).input_shape[1] <= 32 else 64
    return f"extends: {name}\nname: s\ninput: {{size: {size}}}\n{extra}"


def _torch_export(net, weights, path, dynamo: bool):
    model = resnet_spec.build(net, "torch", weights=weights).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, *net.input_shape),), str(path), dynamo=dynamo,
                          opset_version=20 if dynamo else 17, verbose=False)
    return path


def _onnx_file(tmp_path, text: str, how: str):
    """(network, ONNX path) for spec ``text`` with seeded weights (random BN statistics), written by
    ``convert`` ('fold', 'nofold') or torch.onnx.export ('torchscript', 'dynamo')."""
    net = resnet_spec.load(text)
    weights = resnet_spec.init_weights(net, seed=0, random_bn=True)
    if how in ("torchscript", "dynamo"):
        return net, _torch_export(net, weights, tmp_path / f"{how}.onnx", how == "dynamo")
    from resnet_spec.backends.onnx import backend as onnx_backend

    (path,) = onnx_backend.convert(net, weights, str(tmp_path / how), fold_bn=how == "fold")[:1]
    return net, path


@pytest.mark.parametrize("text,how", [(_spec("resnet20"), "fold"), (TYPE_C, "torchscript")],
                         ids=["resnet20-convert", "type_c-torchscript"])
def test_convert_then_import_cli(tmp_path, text, how):
    """convert (CLI) or torch.onnx.export -> import (CLI): exit 0, PASS, the same network back."""
    (tmp_path / "s.yaml").write_text(text)
    net = resnet_spec.load(text)
    if how == "fold":
        resnet_spec.save_weights(resnet_spec.init_weights(net, seed=0, random_bn=True), str(tmp_path / "w.safetensors"))
        res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.yaml"), "--to", "onnx", "-o", str(tmp_path / "c"),
                                        "--weights", str(tmp_path / "w.safetensors")])
        assert res.exit_code == 0, res.output
        path = tmp_path / "c" / "s.onnx"
    else:
        _, path = _onnx_file(tmp_path, text, how)
    res = CliRunner().invoke(main, ["import", str(path), "--name", "m", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output
    assert _same(resnet_spec.load(str(tmp_path / "out" / "m.yaml")), net), (tmp_path / "out" / "m.yaml").read_text()


@pytest.mark.parametrize("text,how", [(_spec("resnet20"), "nofold"), (_spec("resnet20"), "torchscript"),
                                      (_spec("resnet20", "shortcut: {type: A, zero_pad: end}\n"), "fold"),
                                      (TYPE_C, "nofold"), (TYPE_C, "fold"), (PREACT, "torchscript")],
                         ids=["a-nofold", "a-torchscript", "a_end-fold", "c-nofold", "c-fold", "preact-torchscript"])
def test_option_a_and_type_c_import(tmp_path, text, how):
    """Option-A shortcuts (channel Pad after a strided Slice, split or at the end), type-C
    shortcuts (a projection on every block: stages start where the shape changes) and a pre-activation
    net whose first BN went into the stem conv come back as the same network, equal to ONNX Runtime."""
    net, path = _onnx_file(tmp_path, text, how)
    got, rel, spec_text = _import_and_prove(path, net)
    assert rel <= 1e-5 and _same(got, net), spec_text
    assert ("zero_pad: end" in spec_text) == ("zero_pad: end" in text), spec_text


def test_option_a_pad_mismatch_refused(tmp_path):
    """A channel Pad that is neither split nor at the end is named, one line, nothing written."""
    import onnx

    _, path = _onnx_file(tmp_path, _spec("resnet20"), "nofold")
    model = onnx.load(str(path))
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    pads = next(t for t in model.graph.initializer if t.name == pad.input[1])
    pads.CopyFrom(onnx.numpy_helper.from_array(np.array([0, 1, 0, 0, 0, 15, 0, 0], np.int64), pads.name))
    onnx.save(model, str(path))
    res = CliRunner().invoke(main, ["import", str(path), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"node {pad.name!r} (Pad): zero channels 1 before and 15 after" in res.output
    assert not (tmp_path / "out").exists()


def _same(a, b) -> bool:
    """Same network: ops (names, shapes, strides, paddings, BN eps) and block wiring. A pool's ceil
    mode counts only where it changes the output size (``convert`` writes it only there)."""
    from resnet_spec.importers.infer import _key

    def norm(net):
        shape, ops, wiring = _key(net)
        return shape, [_floor(op) for op in ops], wiring

    return norm(a) == norm(b)


def _floor(op):
    import dataclasses

    from resnet_spec import ir

    if isinstance(op, ir.Pool) and op.ceil_mode and tuple(op.out_shape[1:]) == tuple(
            ir.pool_out(n, op.kernel, op.stride, op.padding, False) for n in op.in_shape[1:]):
        return dataclasses.replace(op, ceil_mode=False)
    return op


def _bias_before_bn(net) -> bool:
    """Whether a conv with a bias feeds a BatchNorm (what folding merges into one bias)."""
    from resnet_spec import ir

    seqs = [net.stem, net.head] + [s for b in net.blocks for s in (b.pre, b.main, b.shortcut, b.post)]
    return any(isinstance(a, ir.Conv) and a.bias and isinstance(b, ir.BatchNorm)
               for seq in seqs for a, b in zip(seq, seq[1:]))


def _import_and_prove(path, net) -> tuple:
    """In-process import of ``path`` (what ``resnet-spec import`` does before writing), proven against
    ONNX Runtime running the file; returns (imported network, max relative difference, spec text)."""
    import onnxruntime as ort

    from resnet_spec.importers import import_source

    _, spec_text, got, _, weights = import_source(str(path), "m")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    batch = shape[0] if isinstance(shape[0], int) else 2
    x = np.random.default_rng(0).standard_normal((batch, *net.input_shape)).astype(np.float32)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.inference_mode():
        out = resnet_spec.build(got, "torch", weights=weights).eval()(torch.from_numpy(x)).numpy()
    return got, float(np.abs(ref - out).max() / np.abs(ref).max()), spec_text


# one entry per family for the dynamo exporter
DYNAMO = ["resnet20", "preact_resnet164", "resnet18", "resnet50d", "seresnet50", "keras_resnet50v2",
          "keras_resnet50"]


def _round_trip(tmp_path, name, hows, text=None):
    text = text or _spec(name)
    for how in hows:
        net, path = _onnx_file(tmp_path, text, how)
        got, rel, _ = _import_and_prove(path, net)
        print(f"{name} {how}: params {got.params:,} (spec {net.params:,}), max_rel {rel:.2e}")
        assert rel <= 1e-4, (name, how, rel)
        if not (how != "nofold" and _bias_before_bn(net)):
            assert _same(got, net), (name, how)


@pytest.mark.slow
@pytest.mark.parametrize("name", tiny_zoo())
def test_zoo_onnx_round_trip(tmp_path, name):
    """Every zoo entry x {convert BN folded, convert --no-fold-bn, TorchScript exporter}: imported,
    the generated model equal to ONNX Runtime within float32 rounding, and the same network as the
    entry (BN-folded files of specs with a conv bias before a BN excepted: folding merges that bias
    into the BN's, so only the parameter count differs). Each entry's stem, blocks, shortcuts and head
    with its stages cut to two blocks (:func:`conftest.tiny_text`), each distinct network once
    (:func:`conftest.tiny_zoo`); depth is the next test's. An entry whose blocks the ONNX reader does
    not read back (:data:`ONNX_UNREAD`, none today) has its file refused in one line, never imported wrong."""
    if name in ONNX_UNREAD:
        net, path = _onnx_file(tmp_path, tiny_text(name), "fold")
        with pytest.raises(ImportRefused, match=ONNX_UNREAD[name]):
            _import_and_prove(path, net)
        return
    _round_trip(tmp_path, name, ("fold", "nofold", "torchscript"), tiny_text(name))


#: zoo entries whose ONNX files backends/onnx/reader.py does not read back yet -> the refusal's words (none left:
#: split attention, Res2Net and the selective kernel read back; kept for the next block the reader lacks)
ONNX_UNREAD = {}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet1202", "preact_resnet1001", "resnext101_32x8d"])
def test_deep_onnx_round_trip(tmp_path, name):
    """Whole entries at full depth (the deepest of each block type, and the largest grouped one) come
    back from the file ``convert`` writes: hundreds of blocks read back in order."""
    _round_trip(tmp_path, name, ("fold",))


@pytest.mark.slow
@pytest.mark.parametrize("name", DYNAMO)
def test_zoo_dynamo_export_round_trip(tmp_path, name):
    """The dynamo exporter's file of each family's ops and wiring imports back. Stages are cut to two
    blocks (:func:`conftest.tiny_text`): the exporter's time grows with the graph (a minute for a full
    preact_resnet164), and depth is what the TorchScript sweep above covers."""
    pytest.importorskip("onnxscript")
    _round_trip(tmp_path, name, ("dynamo",), tiny_text(name))
