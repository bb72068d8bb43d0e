"""TensorFlow/Keras backend: exact semantics vs PyTorch, weights, keras.applications, files.

TensorFlow never runs in this process (see conftest.py): every check runs in a worker through
``run_isolated`` with the functions of tests/tf_checks.py, batched so that each worker imports
TensorFlow once; PyTorch references are computed here. Weight-layout conversions are numpy-only and
are tested directly.

Tolerance. Outputs are compared as max|tf - torch| / max|torch| (conftest.rel_err). Both frameworks
compute in float32 and differ only in summation order inside convolutions, matmuls and means, so the
error is a few float32 ulps of the output scale, accumulated over depth. Measured (docs/parity.md,
whole zoo at native size): at most 7.4e-7 between Keras and PyTorch logits. TOL = 2e-5
leaves a >10x margin, and is still far below every semantic error these tests are built to catch
(-inf vs zero pool padding, a wrong average divisor, a clamped BN epsilon, a missing bias: 1e-3 .. 1).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tf_checks
from conftest import TINY_A, TINY_B, rel_err, small, tiny_text, tiny_zoo

import resnet_spec
from resnet_spec import ir
from resnet_spec.backends.keras import tf as tf_backend
from resnet_spec.backends.keras.weights import from_keras_model
from resnet_spec.isolate import run_isolated
from resnet_spec.weights import init_weights

pytestmark = pytest.mark.skipif(tf_backend.available() is not None, reason=str(tf_backend.available()))

torch = pytest.importorskip("torch")
F = torch.nn.functional
from resnet_spec.backends.torch import backend as torch_backend  # noqa: E402

TOL = 2e-5

TINY = {"tiny_a": TINY_A, "tiny_b": TINY_B}


def _x(shape, seed=0, batch=2):
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


# --- single ops --------------------------------------------------------------------------------------

def _pool(kind, k, s, p, ceil, cip=False, pad_value="neg_inf", hw=(7, 7), c=3):
    oh, ow = (ir.pool_out(n, k, s, p, ceil) for n in hw)
    return ir.Pool("pool", kind, k, s, p, ceil, cip, pad_value, (c, *hw), (c, oh, ow))


def _pool_ref(op, x):
    """PyTorch's own pooling; zero-padded max-pool = F.pad with zeros, then an unpadded window."""
    xt = _t(x)
    if op.kind == "avg":
        y = F.avg_pool2d(xt, op.kernel, op.stride, op.padding, op.ceil_mode, op.count_include_pad)
    elif op.pad_value == "neg_inf":
        y = F.max_pool2d(xt, op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode)
    else:
        y = F.max_pool2d(F.pad(xt, (op.padding,) * 4), op.kernel, op.stride, 0, ceil_mode=op.ceil_mode)
    assert tuple(y.shape[1:]) == op.out_shape, (op, tuple(y.shape))
    return y.numpy()


def _op_cases():
    """(label, op, weights, x, torch reference) for every single-op check."""
    rng = np.random.default_rng(5)
    cases = []
    neg = lambda hw: _x((3, *hw), seed=len(cases)) - 10.0  # noqa: E731 - all-negative: padding must never win
    pools = {
        "max_k3s2p1": _pool("max", 3, 2, 1, False),
        "max_k3s2p1_ceil_8": _pool("max", 3, 2, 1, True, hw=(8, 8)),
        "max_k3s2p0_ceil_caffe": _pool("max", 3, 2, 0, True, hw=(8, 8)),
        "max_k3s2p0_ceil_rect": _pool("max", 3, 2, 0, True, hw=(7, 10)),
        "max_k2s2p1_ceil_9": _pool("max", 2, 2, 1, True, hw=(9, 9)),
        "max_zero_k3s2p1": _pool("max", 3, 2, 1, False, pad_value="zero"),
        "max_zero_k3s2p1_ceil_8": _pool("max", 3, 2, 1, True, pad_value="zero", hw=(8, 8)),
    }
    for label, op in pools.items():
        x = neg(op.in_shape[1:])
        cases.append((label, op, {}, x, _pool_ref(op, x)))
    for k, s, p in ((3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 3, 1), (5, 2, 2)):
        for ceil in (False, True):
            for cip in (False, True):
                for hw in ((7, 7), (8, 10)):
                    op = _pool("avg", k, s, p, ceil, cip, "zero", hw=hw)
                    x = _x((3, *hw), seed=len(cases))
                    label = f"avg_k{k}s{s}p{p}_{'ceil' if ceil else 'floor'}_{'incl' if cip else 'excl'}_{hw[0]}x{hw[1]}"
                    cases.append((label, op, {}, x, _pool_ref(op, x)))

    def conv(label, cin, cout, k, s, p, d, g, bias, hw=(9, 9)):
        oh, ow = (ir.conv_out(n, k, s, p, d) for n in hw)
        op = ir.Conv("conv", cin, cout, k, s, p, d, g, bias, (cin, *hw), (cout, oh, ow))
        w = {"conv.weight": rng.standard_normal((cout, cin // g, k, k)).astype(np.float32)}
        if bias:
            w["conv.bias"] = rng.standard_normal(cout).astype(np.float32)
        x = _x((cin, *hw), seed=len(cases))
        ref = F.conv2d(_t(x), _t(w["conv.weight"]), _t(w["conv.bias"]) if bias else None, s, p, d, g).numpy()
        cases.append((label, op, w, x, ref))

    conv("conv_k7s2p3", 3, 8, 7, 2, 3, 1, 1, False, hw=(13, 13))
    conv("conv_grouped_bias", 8, 12, 3, 1, 1, 1, 4, True)
    conv("conv_stride2_dilation2_grouped", 8, 8, 3, 2, 2, 2, 2, True)  # Keras refuses these together
    conv("conv_depthwise_dilation3", 6, 6, 3, 1, 3, 3, 6, False, hw=(11, 8))

    # BN with a variance so small that eps = 1e-6 decides the scale: a clamp to 1.001e-5 would show.
    c = 6
    bn = {f"bn.{k}": v.astype(np.float32) for k, v in {
        "weight": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.1, c), "running_mean": rng.normal(0, 1e-3, c),
        "running_var": rng.uniform(1e-7, 1e-6, c)}.items()}
    op = ir.BatchNorm("bn", c, 1e-6, 0.1, (c, 5, 5), (c, 5, 5))
    x = (_x((c, 5, 5), seed=40) * 1e-3).astype(np.float32)
    ref = F.batch_norm(_t(x), _t(bn["bn.running_mean"]), _t(bn["bn.running_var"]), _t(bn["bn.weight"]),
                       _t(bn["bn.bias"]), False, 0.0, 1e-6).numpy()
    cases.append(("bn_eps_1e-6", op, bn, x, ref))

    se = ir.SqueezeExcite("se", 16, 8, (16, 5, 5), (16, 5, 5), placement="end", reduce_from="output", base=16,
                          reduction=2, divisor=8)
    sw = {"se.fc1.weight": rng.standard_normal((8, 16, 1, 1)), "se.fc1.bias": rng.standard_normal(8),
          "se.fc2.weight": rng.standard_normal((16, 8, 1, 1)), "se.fc2.bias": rng.standard_normal(16)}
    sw = {k: v.astype(np.float32) for k, v in sw.items()}
    x = _x((16, 5, 5), seed=41)
    xt = _t(x)
    gate = torch.sigmoid(F.conv2d(F.relu(F.conv2d(xt.mean((2, 3), keepdim=True), _t(sw["se.fc1.weight"]),
                                                  _t(sw["se.fc1.bias"]))), _t(sw["se.fc2.weight"]), _t(sw["se.fc2.bias"])))
    cases.append(("squeeze_excite", se, sw, x, (xt * gate).numpy()))

    x = _x((4, 7, 7), seed=42)
    cases.append(("subsample_3", ir.Subsample(3, (4, 7, 7), (4, 3, 3)), {}, x, x[:, :, ::3, ::3]))
    cases.append(("channel_pad_3_5", ir.ChannelPad(3, 5, (4, 7, 7), (12, 7, 7)), {}, x,
                  F.pad(_t(x), (0, 0, 0, 0, 3, 5)).numpy()))
    return cases


# --- the unit worker -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unit():
    cases = _op_cases()
    nets = {k: resnet_spec.load(v) for k, v in TINY.items()}
    weights = {k: init_weights(n, seed=1, random_bn=True) for k, n in nets.items()}
    xs = {k: _x(n.input_shape, seed=2) for k, n in nets.items()}
    res = run_isolated(tf_checks.unit_suite, nets, xs, weights, [c[:4] for c in cases])
    refs = {k: torch_backend.infer(n, weights[k], xs[k], taps=True)[0] for k, n in nets.items()}
    return {"res": res, "cases": {c[0]: c for c in cases}, "nets": nets, "weights": weights, "refs": refs}


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_single_ops_match_torch(unit):
    """Every pooling configuration (max -inf / zero padding, ceil mode, avg with and without
    count_include_pad), grouped/dilated/strided convs, BN eps 1e-6, SE, subsample, channel pad."""
    errs = {label: rel_err(case[4], unit["res"]["ops"][label]) for label, case in unit["cases"].items()}
    assert unit["res"]["ops"].keys() == unit["cases"].keys()
    for label, case in unit["cases"].items():
        assert unit["res"]["ops"][label].shape == case[4].shape, label
    bad = {k: v for k, v in errs.items() if not v < TOL}
    assert not bad, bad


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_bn_epsilon_and_momentum_are_the_specs(unit):
    """Keras gets the IR's epsilon unchanged (no clamping to 1.001e-5) and momentum converted from
    PyTorch's convention (weight of the new batch) to Keras's (weight of the running average)."""
    for key, net in unit["nets"].items():
        bns = [op for op in net.all_ops() if isinstance(op, ir.BatchNorm)]
        want = sorted({(op.eps, 1.0 - op.momentum) for op in bns})
        assert unit["res"]["nets"][key]["bn"] == want, key
        assert unit["res"]["nets"][key]["bn_count"] == len(bns), key
    assert unit["res"]["nets"]["tiny_a"]["bn"] == [(1e-6, 0.97)]


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_max_pool_padding_never_wins_on_negative_inputs(unit):
    # With all inputs below -5, -inf padding gives only negative outputs; zero padding (Keras style)
    # puts zeros on the border windows -- both must match their PyTorch definition exactly.
    out = unit["res"]["ops"]
    for label in ("max_k3s2p1", "max_k3s2p1_ceil_8", "max_k3s2p0_ceil_caffe", "max_k2s2p1_ceil_9"):
        assert out[label].max() < -5, label
        np.testing.assert_array_equal(out[label], unit["cases"][label][4])
    zero = out["max_zero_k3s2p1"]
    assert zero[:, :, 0, :].max() == 0 and zero[:, :, 1:-1, 1:-1].max() < -5
    np.testing.assert_array_equal(zero, unit["cases"]["max_zero_k3s2p1"][4])
    # The ceil-mode extension stays -inf even after zero padding: the last row is not all zeros.
    np.testing.assert_array_equal(out["max_zero_k3s2p1_ceil_8"], unit["cases"]["max_zero_k3s2p1_ceil_8"][4])


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_avg_pool_divisors(unit):
    """count_include_pad and ceil-mode windows: a wrong divisor would be off by >= 1/9 somewhere."""
    out, cases = unit["res"]["ops"], unit["cases"]
    labels = [k for k in cases if k.startswith("avg_")]
    assert len(labels) == 40
    for label in labels:
        assert rel_err(cases[label][4], out[label]) < TOL, label
    # The two divisor rules really differ on these inputs (the test can tell them apart).
    a, b = out["avg_k3s2p1_floor_excl_7x7"], out["avg_k3s2p1_floor_incl_7x7"]
    assert rel_err(a, b) > 0.05


def test_avg_pool_counts_formula():
    # 7 rows, k3 s2 p1, ceil: windows [-1,2) [1,4) [3,6) [5,8) -> real rows 2,3,3,2; incl. padding 3,3,3,2
    # (the last window's 8th row is the ceil extension, which never counts).
    assert tf_backend.avg_pool_counts(7, 3, 2, 1, 4, False).tolist() == [2, 3, 3, 2]
    assert tf_backend.avg_pool_counts(7, 3, 2, 1, 4, True).tolist() == [3, 3, 3, 3]
    assert tf_backend.avg_pool_counts(6, 3, 2, 1, 4, True).tolist() == [3, 3, 3, 2]
    assert tf_backend.avg_pool_counts(11, 2, 2, 0, 6, False).tolist() == [2, 2, 2, 2, 2, 1]


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (5, 3, 2), (3, 3, 0)])
def test_ir_pool_divisors_are_torchs(k, s, p):
    """ir.Pool.divisors (the Keras pools' divisors) against torch's own: on an all-ones input, avg_pool2d
    gives (real cells) / divisor and a sum pool (divisor_override=1) the real cells."""
    for hw in ((7, 7), (6, 9), (5, 8)):
        for ceil in (False, True):
            for cip in (False, True):
                op = _pool("avg", k, s, p, ceil, cip, hw=hw, c=1)
                x = torch.ones(1, 1, *hw, dtype=torch.float64)
                avg = torch.nn.functional.avg_pool2d(x, k, s, p, ceil, cip)
                cells = torch.nn.functional.avg_pool2d(x, k, s, p, ceil, cip, divisor_override=1)
                rows, cols = op.divisors
                assert np.array_equal(np.outer(rows, cols), (cells / avg)[0, 0].round().numpy()), (hw, ceil, cip)


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_bn_epsilon_is_not_clamped(unit):
    case = unit["cases"]["bn_eps_1e-6"]
    w, x, ref = case[2], case[3], case[4]
    got = unit["res"]["ops"]["bn_eps_1e-6"]
    assert rel_err(ref, got) < TOL
    clamped = F.batch_norm(_t(x), _t(w["bn.running_mean"]), _t(w["bn.running_var"]), _t(w["bn.weight"]),
                           _t(w["bn.bias"]), False, 0.0, 1.001e-5).numpy()
    assert rel_err(ref, clamped) > 0.5  # what TensorFlow's fused-BN clamp would have produced


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
@pytest.mark.parametrize("key", sorted(TINY))
def test_tiny_nets_match_torch_taps(unit, key):
    got, ref = unit["res"]["nets"][key]["taps"], unit["refs"][key]
    net = unit["nets"][key]
    assert list(got) == list(net.tap_names())
    for tap in net.tap_names():
        assert got[tap].shape == ref[tap].shape, tap
        assert got[tap].dtype == np.float32
        assert rel_err(ref[tap], got[tap]) < TOL, tap


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
@pytest.mark.parametrize("key", sorted(TINY))
def test_channels_first_equals_channels_last(unit, key):
    r = unit["res"]["nets"][key]
    np.testing.assert_allclose(r["head_cf"], r["taps"]["head"], rtol=0, atol=1e-6 * np.abs(r["taps"]["head"]).max())


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
@pytest.mark.parametrize("key", sorted(TINY))
def test_planted_fault_changes_output(unit, key):
    r = unit["res"]["nets"][key]
    assert rel_err(r["taps"]["head"], r["fault"]) > 1e-3


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
@pytest.mark.parametrize("key", sorted(TINY))
def test_weight_round_trip_through_model(unit, key):
    r = unit["res"]["nets"][key]
    assert r["roundtrip_keys_equal"] and r["roundtrip_max_abs"] == 0.0


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_layer_names_are_canonical(unit):
    """Every parameter layer carries its op's canonical name in the documented Keras spelling ('.' -> '-',
    valid on every Keras backend), and the mapping is reversible."""
    r = unit["res"]["nets"]["tiny_a"]
    names = set(r["layer_names"])
    net = unit["nets"]["tiny_a"]
    for op in net.all_ops():
        if isinstance(op, (ir.Conv, ir.BatchNorm, ir.Linear, ir.Pool)):
            assert tf_backend.layer_name(op.name) in names, op.name
    assert {"layer1-0-se-fc1", "layer1-0-se-fc2", "layer2-0-downsample-0", "layer2-0-downsample-1"} <= names
    assert not any("." in n for n in names)
    assert r["tap_layers"]["stem"] == "maxpool" and r["tap_layers"]["layer1.0"] == "layer1-0-out"
    assert r["tap_layers"]["head"] == "fc"
    assert len(names) == len(r["layer_names"])
    assert tf_backend.layer_name("layer3.0.downsample.1") == "layer3-0-downsample-1"
    assert tf_backend.canonical_name(tf_backend.layer_name("layer3.0.downsample.1")) == "layer3.0.downsample.1"
    with pytest.raises(resnet_spec.ResNetSpecError, match="reversibly"):
        tf_backend.layer_name("a-b.c")
    assert r["device"].startswith("cpu, tensorflow ") and "/ keras 3." in r["device"]


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_drop_path_is_training_only(unit):
    r = unit["res"]["nets"]["tiny_a"]
    rates = {op.rate for b in unit["nets"]["tiny_a"].blocks for op in b.main if isinstance(op, ir.DropPath)}
    drop_paths = [d for d in r["dropouts"] if d[2] == (None, 1, 1, 1)]
    assert sorted(d[1] for d in drop_paths) == pytest.approx(sorted(rates)) and len(rates) == 4
    assert ("head-dropout", 0.2, None) in r["dropouts"]
    dp = unit["res"]["drop_path"]
    assert dp["eval_identity"]
    assert dp["train_values"] == [(0.0,), (2.0,)]  # whole samples dropped or scaled by 1 / (1 - 0.5)
    assert 16 <= dp["kept"] <= 48


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision(unit, dtype):
    r = unit["res"]["nets"]["tiny_a"]
    got = r[dtype]
    if isinstance(got, str):  # unsupported here: must be a clear BackendUnavailable, never a crash
        assert got.startswith("BackendUnavailable") and dtype in got
        return
    assert got.dtype == np.float32
    assert rel_err(r["taps"]["head"], got) < (2e-2 if dtype == "float16" else 1e-1)


@pytest.mark.slow  # the `unit` fixture runs the suite in a TensorFlow worker process
def test_refusals(unit):
    e = unit["res"]["errors"]
    assert e["cuda"][0] == "BackendUnavailable" and "no GPU" in e["cuda"][1]
    assert e["cuda1"][0] == "BackendUnavailable"
    assert e["tpu"][0] == "BackendUnavailable" and "tpu" in e["tpu"][1]
    assert e["int8"][0] == "BackendUnavailable" and "int8" in e["int8"][1]
    assert e["fmt"][0] == "ResNetSpecError" and "channels_first" in e["fmt"][1]
    assert e["missing_weight"][0] == "WeightsError" and "missing tensor" in e["missing_weight"][1]


# --- weight layouts (numpy only, no TensorFlow) ----------------------------------------------------

def test_weight_layouts():
    net = resnet_spec.load(TINY_A)
    w = init_weights(net, seed=4, random_bn=True)
    k = tf_backend.to_keras_weights(net, w)
    conv = w["layer1.0.conv2.weight"]  # grouped: (O, I/g, kh, kw)
    assert conv.shape == (8, 2, 3, 3)
    assert k["layer1.0.conv2"][0].shape == (3, 3, 2, 8)
    o, i, kh, kw = 5, 1, 2, 0
    assert k["layer1.0.conv2"][0][kh, kw, i, o] == conv[o, i, kh, kw]
    np.testing.assert_array_equal(k["layer1.0.conv2"][1], w["layer1.0.conv2.bias"])
    np.testing.assert_array_equal(k["fc"][0], w["fc.weight"].T)
    assert [a is w[f"layer1.0.bn1.{n}"] or np.array_equal(a, w[f"layer1.0.bn1.{n}"])
            for a, n in zip(k["layer1.0.bn1"], ("weight", "bias", "running_mean", "running_var"))] == [True] * 4
    assert k["layer1.0.se.fc1"][0].shape == (1, 1, 64, 16)
    back = from_keras_model(net, k)
    assert sorted(back) == sorted(w)
    for name in w:
        np.testing.assert_array_equal(back[name], w[name])
        assert back[name].dtype == np.float32 and back[name].flags.c_contiguous


def test_keras_applications_names():
    # Keras weights come in only through the checked path (--weights / import): no unchecked public reader
    assert not [n for n in dir(tf_backend) if n.startswith("from_keras")]
    n = tf_backend.keras_applications_names(resnet_spec.load("keras_resnet50"))
    assert n["conv1"] == "conv1_conv" and n["bn1"] == "conv1_bn" and n["fc"] == "predictions"
    assert n["layer2.0.conv1"] == "conv3_block1_1_conv" and n["layer2.0.bn3"] == "conv3_block1_3_bn"
    assert n["layer2.0.downsample.0"] == "conv3_block1_0_conv" and n["layer2.0.downsample.1"] == "conv3_block1_0_bn"
    n = tf_backend.keras_applications_names(resnet_spec.load("keras_resnet50v2"))
    assert n["layer1.0.bn1"] == "conv2_block1_preact_bn" and n["layer1.0.bn2"] == "conv2_block1_1_bn"
    assert n["layer1.0.bn3"] == "conv2_block1_2_bn" and n["layer1.0.conv3"] == "conv2_block1_3_conv"
    assert n["bn_final"] == "post_bn" and n["layer4.2.conv2"] == "conv5_block3_2_conv"
    assert len(set(n.values())) == len(n)


def test_importing_the_backend_does_not_import_tensorflow():
    import sys

    assert tf_backend.NAME == "tensorflow" and "tensorflow" not in sys.modules
    from resnet_spec.backends import get

    assert get("tensorflow") is tf_backend


# --- keras.applications ----------------------------------------------------------------------------

def _keras_apps(cases, tmp_path):
    sizes = {size for _, _, size in cases}
    xs = {s: _x((3, s, s), seed=7) for s in sizes}
    res = run_isolated(tf_checks.keras_apps_suite, cases, xs, str(tmp_path))
    for (spec, cls, size) in cases:
        r = res[(spec, size)]
        assert rel_err(r["from_ref"], r["from_ours"]) < TOL, (spec, "from")
        assert rel_err(r["to_ref"], r["to_ours"]) < TOL, (spec, "to")
        assert r["roundtrip_max_abs"] == 0.0
        assert r["bn_ours"] == r["bn_ref"], spec  # the spec's eps/momentum are keras.applications' own
        assert r["mismatch"] and r["mismatch"].startswith("WeightsError")
        # Third corner: the same canonical weights in PyTorch.
        net = resnet_spec.load(spec) if size == 224 else small(spec, size)
        ref = torch_backend.infer(net, resnet_spec.load_weights(net, r["weights_path"]), xs[size])[0]["head"]
        assert rel_err(ref, r["from_ours"]) < TOL, (spec, "torch")
    return res


# slow: the real 224 px keras.applications models, in a TensorFlow worker
@pytest.mark.slow
def test_keras_applications_resnet50_both_ways(tmp_path):
    _keras_apps([("keras_resnet50", "ResNet50", 224), ("keras_resnet50v2", "ResNet50V2", 224)], tmp_path)


# The deepest of each kind both ways. keras_resnet101 and keras_resnet101v2 (the same name maps at
# other block counts) are proven against keras.applications by test_import.py's sweep, which imports
# ResNet101/ResNet101V2 files into those zoo entries and checks the outputs.
@pytest.mark.slow
def test_keras_applications_deeper_both_ways(tmp_path):
    _keras_apps([("keras_resnet152", "ResNet152", 64), ("keras_resnet152v2", "ResNet152V2", 64)], tmp_path)


# --- files -----------------------------------------------------------------------------------------

# slow: three TensorFlow worker processes (convert, convert_suite, reload_suite)
@pytest.mark.slow
def test_convert_cli_and_reload(tmp_path):
    from click.testing import CliRunner

    from resnet_spec.cli import main

    spec = tmp_path / "tiny_a.yaml"
    spec.write_text(TINY_A)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["convert", str(spec), "--to", "tensorflow", "-o", str(out), "--seed", "3"])
    assert r.exit_code == 0, r.output
    kpath, spath = out / "tiny_a.keras", out / "tiny_a_savedmodel"
    assert kpath.is_file() and (spath / "saved_model.pb").is_file()
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporaries left behind
    net_a = resnet_spec.load(TINY_A)
    w_a = resnet_spec.load_weights(net_a, str(out / "tiny_a.safetensors"))
    mtime = kpath.stat().st_mtime_ns
    r = CliRunner().invoke(main, ["convert", str(spec), "--to", "tensorflow", "-o", str(out), "--seed", "3"])
    assert r.exit_code == 1 and "already exists" in r.output and kpath.stat().st_mtime_ns == mtime

    # channels_first, through the backend directly; also force / refusal semantics.
    net_b = resnet_spec.load(TINY_B)
    w_b = init_weights(net_b, seed=5, random_bn=True)
    conv = run_isolated(tf_checks.convert_suite, net_b, w_b, str(tmp_path / "cf"), "channels_first")
    assert conv["refused"] and "already exists" in conv["refused"] and conv["again"] == conv["paths"]

    xa, xb = _x(net_a.input_shape, seed=8, batch=5), _x(net_b.input_shape, seed=9, batch=5)
    res = run_isolated(tf_checks.reload_suite, [(str(kpath), str(spath), xa.transpose(0, 2, 3, 1).copy()),
                                                (*conv["paths"], xb)])
    for r, net, w, x in ((res[0], net_a, w_a, xa), (res[1], net_b, w_b, xb)):
        ref = torch_backend.infer(net, w, x)[0]["head"]
        for key in ("keras", "saved"):
            assert r[key].shape == (5, net.num_classes)
            assert rel_err(ref, r[key]) < TOL, key
        # batch 1 vs batch 5 of one SavedModel: measured 0.0 (AMD EPYC AVX-512), but the kernels chosen may depend
        # on the batch and the ISA; TOL (27x the cross-framework error) holds on any CPU and still catches a wrong
        # signature
        np.testing.assert_allclose(r["saved_1"], r["saved"][:1], rtol=0, atol=TOL * np.abs(r["saved"]).max())
        assert "None" in r["signature"] and "input" in r["signature"]
    # convert writes stock Keras layers only (backends/keras/stock.py): TINY_A's -inf-padded max pool and
    # partial-window average pool, TINY_B's option-A channel padding (test_keras_stock.py: plain Keras)
    assert res[0]["custom"] == [] and res[1]["custom"] == []


# --- whole zoo -------------------------------------------------------------------------------------

# Every entry's stem, blocks, shortcuts and head at two blocks per stage (conftest.tiny_text); depth in
# Keras is covered by two whole CIFAR entries here (110 and 164 layers, basic and pre-activation
# bottleneck) and by the keras.applications tests (101 and 152 layers); the 1000-layer entries' depth by
# the ONNX and torch sweeps.
DEEP = ("resnet110", "preact_resnet164")
ZOO_CASES = tiny_zoo() + [f"{n}:full" for n in DEEP]  # each distinct network at tiny depth once


@pytest.fixture(scope="module")
def zoo():
    from concurrent.futures import ThreadPoolExecutor

    items = []
    for key in ZOO_CASES:
        name, full = key.removesuffix(":full"), key.endswith(":full")
        text = f"extends: {name}\ninput: {{size: {small(name).input_shape[1]}}}\n" if full else tiny_text(name)
        items.append((key, text, _x(resnet_spec.load(text).input_shape, seed=11)))
    # The TensorFlow worker runs while this process computes the PyTorch references.
    with ThreadPoolExecutor(1) as pool:
        tf_future = pool.submit(run_isolated, tf_checks.zoo_suite, items, 0)
        refs = {}
        for name, text, x in items:
            net = resnet_spec.load(text)
            refs[name] = torch_backend.infer(net, init_weights(net, seed=0, random_bn=True), x, taps=True)[0]
        return refs, tf_future.result()


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_matches_torch(zoo, name):
    refs, got = zoo
    head = rel_err(refs[name]["head"], got[name]["head"])
    taps = max(rel_err(refs[name][t], got[name][t]) for t in refs[name])
    print(f"\nPARITY {name} head={head:.2e} taps={taps:.2e}")
    assert list(got[name]) == list(refs[name])
    assert head < TOL and taps < TOL
