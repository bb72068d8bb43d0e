"""Hostile and broken input: one located message, exit 1, no traceback, nothing half-written."""

from __future__ import annotations

import ast
import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import resnet_spec
from resnet_spec.cli import main
from resnet_spec.fileio import atomic_path, write_bytes
from resnet_spec.spec import zoo_path
from resnet_spec.weights import init_weights, save_weights

BAD = os.path.join(os.path.dirname(__file__), "data", "bad")

# file -> (line:col or None when the input has no position, expected message fragment)
EXPECTED = {
    "01_empty.yaml": ("1:1", "empty spec"),
    "02_only_comments.yaml": ("1:1", "empty spec"),
    "03_binary.yaml": (None, "binary data (NUL byte)"),
    "04_latin1.yaml": ("1:10", "not valid UTF-8 (byte 0xe9)"),
    "05_tabs.yaml": ("3:1", "found character '\\t'"),
    "06_duplicate_key.yaml": ("4:1", "duplicate key 'name' (first defined at line 2)"),
    "07_billion_laughs.yaml": ("1:38", "more than 100,000 nodes"),
    "08_merge_bomb.yaml": ("1:61", "more than 100,000 nodes"),
    "09_two_documents.yaml": ("3:1", "one YAML document"),
    "10_top_level_list.yaml": ("1:1", "must be a mapping of fields, got list"),
    "11_top_level_scalar.yaml": ("1:1", "must be a mapping of fields, got string"),
    "12_unclosed_bracket.yaml": ("3:1", "expected ',' or '}'"),
    "13_bad_indent.yaml": ("4:2", "invalid YAML"),
    "14_too_deep.yaml": ("2:64", "nested more than 50 levels"),
    "15_typo_top_level.yaml": ("2:1", "unknown key 'stagse'; did you mean 'stages'?"),
    "16_typo_block_key.yaml": ("2:9", "block.grops: unknown key 'grops'; did you mean 'groups'?"),
    "17_depth_wrong_type.yaml": ("2:1", "depth: expected integer, got string 'fifty'"),
    "18_stages_not_list.yaml": ("2:1", "stages: expected array, got mapping"),
    "19_zero_blocks.yaml": ("4:6", "stages[1].blocks: 0 is out of range (must be >= 1)"),
    "20_negative_channels.yaml": ("2:8", "stem.channels: -64 is out of range"),
    "21_unknown_block_type.yaml": ("2:9", "block.type: 'triple' is not one of basic, bottleneck"),
    "22_stride_on_enum.yaml": ("2:9", "block.stride_on: '5x5' is not one of 3x3, 1x1"),
    "23_eps_too_big.yaml": ("2:8", "norm.eps: 2.5 is out of range (must be <= 1)"),
    "24_zero_classes.yaml": ("2:8", "head.classes: 0 is out of range"),
    "25_missing_stages.yaml": ("1:1", "missing required field 'stages'"),
    "26_missing_block.yaml": ("1:1", "missing required field 'block'"),
    "27_lp_stem_pool.yaml": ("2:15", "stem.pool.type: 'lp' is not one of max, avg, conv"),
    "28_shortcut_type_d.yaml": ("2:12", "shortcut.type: 'D' is not one of A, B, C"),
    "29_conv_bias_string.yaml": ("2:1", "conv_bias: expected boolean, got string 'yes'"),
    "30_input_size_zero.yaml": ("2:9", "input.size: 0 is out of range"),
    "31_negative_dropout.yaml": ("2:8", "head.dropout: -0.1 is out of range"),
    "32_groups_not_dividing.yaml": ("3:5", "not divisible by groups=32"),
    "33_cifar_depth_mismatch.yaml": ("2:1", "depth 21 is not of the form 6n+2"),
    "34_shrinks_to_nothing.yaml": ("3:1", "shrinks to nothing at conv1"),
    "35_extends_cycle.yaml": ("1:1", "extends: cycle (35_extends_cycle.yaml -> cycle_b.yaml -> 35_extends_cycle.yaml)"),
    "36_extends_missing.yaml": ("1:1", "base 'resnet51' is neither a zoo entry nor a file"),
    "37_extends_missing_file.yaml": ("1:1", "base './no_such_base.yaml' is neither a zoo entry nor a file"),
    "38_absurd_params.yaml": ("1:1", "over the limit of 2,000,000,000 (raise it with --max-params)"),
    "39_absurd_activations.yaml": ("2:9", "over the limit of 64.0 GiB (raise it with --max-activation-gib)"),
    "40_extends_self.yaml": ("1:1", "extends: cycle (40_extends_self.yaml -> 40_extends_self.yaml)"),
    "41_drop_path_too_big.yaml": ("2:9", "block.drop_path_rate: 1.5 is out of range (must be < 1)"),
    "42_dropout_one.yaml": ("2:8", "head.dropout: 1.0 is out of range (must be < 1)"),
    "43_conv_stem_channel_list.yaml": ("2:20", "a 'conv' stem takes one integer of channels"),
    "44_pool_padding_too_big.yaml": ("2:26", "pool padding 2 is more than half the kernel 3"),
    "45_zero_stride.yaml": ("3:31", "stages[0].stride: 0 is out of range"),
    "46_basic_with_groups.yaml": ("2:9", "'groups' applies to bottleneck blocks only"),
    "47_stages_empty.yaml": ("2:1", "stages: needs at least 1 item(s), got 0"),
    "48_null_document_field.yaml": ("2:1", "stem: expected object, got null"),
    "49_classes_float.yaml": ("2:8", "head.classes: expected integer, got number 10.5"),
    "50_extends_non_string.yaml": ("1:1", "extends: expected string, got list"),
    "51_dilate_with_avg_down.yaml": ("6:43", "stages[3].dilate: 'dilate' is not supported with avgpool_conv"),
    "52_dilate_with_stride_last.yaml": ("6:43", "'dilate' is not supported with block.stride_block: last"),
    "53_avg_down_floor_odd_size.yaml": ("3:19", "shortcut.pool.ceil_mode: block layer3.0: the shortcut's 2x2 "
                                        "average pool (ceil_mode: false) gives 12x12 on a 25x25 input"),
    "54_tag_float_not_a_number.yaml": ("2:13", "'abc' cannot be read as !!float"),
    "55_tag_int_not_a_number.yaml": ("2:17", "'abc' cannot be read as !!int"),
    "56_tag_bool_maybe.yaml": ("2:12", "'maybe' cannot be read as !!bool"),
    "57_tag_timestamp_not_a_date.yaml": ("2:14", "'notadate' cannot be read as !!timestamp"),
    "58_tag_python_name_on_key.yaml": ("2:1", "could not determine a constructor for the tag"),
    "59_tag_float_on_key.yaml": ("3:3", "'abc' cannot be read as !!float"),
    "60_eps_nan.yaml": ("2:13", "norm.eps: '.nan' is not a finite number"),
    "61_momentum_nan.yaml": ("3:13", "norm.momentum: '.NaN' is not a finite number"),
    "62_dropout_nan.yaml": ("2:30", "head.dropout: '.nan' is not a finite number"),
    "63_dropout_minus_inf.yaml": ("2:17", "head.dropout: '-.inf' is not a finite number"),
    "64_pool_stride_1e20.yaml": ("2:40", "stem.pool.stride: expected integer, got number 1e+20"),
    "65_pool_kernel_2e22.yaml": ("2:29", "stem.pool.kernel: 20000000000000000000000 is out of range (must be <= 31)"),
    "66_integer_written_as_float.yaml": ("3:17", "stages[0].channels: expected integer, got number 16.0"),
    "67_lone_surrogate.yaml": ("2:14", "U+D800, a lone surrogate that cannot be written as UTF-8"),
    "68_pool_padding_huge.yaml": ("2:73", "stem.pool.padding: 99999999999 is out of range (must be <= 31)"),
}


def _validate(*args):
    return CliRunner().invoke(main, ["validate", *args])


def test_corpus_is_complete():
    files = sorted(f for f in os.listdir(BAD) if f.endswith(".yaml"))
    assert files == sorted(EXPECTED) and len(files) >= 40


@pytest.mark.parametrize("fname", sorted(EXPECTED))
def test_bad_spec(fname):
    loc, fragment = EXPECTED[fname]
    path = os.path.join(BAD, fname)
    res = _validate(path)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output  # one clear error
    msg = lines[0]
    if fname == "35_extends_cycle.yaml":  # the cycle is reported where it closes, in the base file
        assert msg.startswith(os.path.join(BAD, "bases", "cycle_b.yaml") + ":1:1: "), msg
    else:
        assert msg.startswith(f"{path}:{loc}: " if loc else f"{path}: "), msg
    assert fragment in msg, msg


def test_bombs_are_stopped_by_the_node_budget():
    # bounded work, not a timing: the loader refuses once the expansion passes its node budget
    for f in ("07_billion_laughs.yaml", "08_merge_bomb.yaml"):
        res = _validate(os.path.join(BAD, f))
        assert res.exit_code == 1 and "expands to more than 100,000 nodes" in res.output, res.output


def test_oversized_directory_missing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("extends: resnet50\ndescription: >\n" + ("  " + "x" * 78 + "\n") * 14000)
    res = _validate(str(big))
    assert res.exit_code == 1 and "specs are limited to 1,000,000 bytes" in res.output, res.output
    res = _validate(str(tmp_path))
    assert res.exit_code == 1 and "is a directory" in res.output, res.output
    res = _validate(str(tmp_path / "nope.yaml"))
    assert res.exit_code == 1 and "no such" in res.output.lower(), res.output


def test_limits_are_flags():
    spec = os.path.join(BAD, "38_absurd_params.yaml")
    assert _validate("--max-params", "3e10", "--max-activation-gib", "100", spec).exit_code == 0
    assert CliRunner().invoke(main, ["summary", "--max-params", "1e6", "resnet18"]).exit_code == 1


def test_workers_keep_the_callers_limits(monkeypatch, tmp_path):
    """convert and parity re-resolve the spec in worker processes; the user's raised limits must hold
    there too. With the default limits shrunk below resnet20's size, only a worker that honours the
    caller's decision can build it."""
    import dataclasses

    from resnet_spec import parity as P
    from resnet_spec import resolve as R
    from resnet_spec.cli.convert import convert_worker

    net = resnet_spec.load("resnet20")
    w = init_weights(net, seed=0)
    monkeypatch.setattr(R, "Limits", dataclasses.make_dataclass("Tiny", [("max_params", int, 10),
                                                                         ("max_activation_bytes", int, 10),
                                                                         ("max_blocks", int, 1)], frozen=True))
    with pytest.raises(resnet_spec.SpecError, match="exceed the limit of 1"):
        resnet_spec.load(net.spec_yaml)
    x = P.make_input(net, 1, 0)
    out, _, _ = P.infer_worker("torch", net.spec_yaml, w, x, {"device": "cpu", "dtype": "float32"}, None)
    assert out["head"].shape == (1, 10)
    paths = convert_worker("onnx", net.spec_yaml, w, str(tmp_path), {})
    assert os.path.exists(paths[0])


def test_usage_errors_exit_2():
    res = CliRunner().invoke(main, ["convert", "resnet18", "--to", "caffe2"])
    assert res.exit_code == 2 and "unknown backend 'caffe2'" in res.output
    assert CliRunner().invoke(main, ["nonsense"]).exit_code == 2


# -- fuzzing --------------------------------------------------------------------------------------

ZOO_TEXTS = [open(zoo_path(n), encoding="utf-8").read() for n in ("resnet20", "resnet50d", "keras_resnet50v2",
                                                                    "seresnet50", "resnet50_caffe")]
_VALUES = st.one_of(st.integers(-3, 70000), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=8), st.lists(st.integers(-2, 9), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _paths(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_specs(draw):
    """A zoo spec with a few fields replaced by arbitrary values, or its text damaged byte-wise."""
    text = draw(st.sampled_from(ZOO_TEXTS))
    if draw(st.booleans()):
        doc = yaml.safe_load(text)
        for _ in range(draw(st.integers(1, 3))):
            paths = list(_paths(doc))
            path = draw(st.sampled_from(paths))
            node = doc
            for p in path[:-1]:
                node = node[p]
            if draw(st.booleans()):
                node[path[-1]] = draw(_VALUES)
            elif isinstance(node, dict):
                node[draw(st.text(min_size=1, max_size=6))] = draw(_VALUES)
        return yaml.safe_dump(doc, sort_keys=False)
    pos = draw(st.integers(0, len(text)))
    junk = draw(st.text(max_size=6))
    cut = draw(st.integers(0, 4))
    return text[:pos] + junk + text[pos + cut:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated_specs())
def test_fuzz_cli_never_crashes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # lone surrogates become invalid UTF-8 bytes
    for cmd in (["validate", str(path)], ["summary", "--json", str(path)]):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code in (0, 1), (cmd, res.output, res.exception)
        assert res.exception is None or isinstance(res.exception, SystemExit), (text, repr(res.exception))
        assert "Traceback" not in res.output
        if res.exit_code == 1 and cmd[0] == "summary":
            assert len(res.output.strip().splitlines()) == 1, res.output
        elif res.exit_code == 1:  # validate reports every error, each one located line
            lines = res.output.strip().splitlines()
            assert 1 <= len(lines) <= 21 and all(ln.startswith(str(path)) for ln in lines), res.output


# -- weight files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r20_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    net = resnet_spec.load("resnet20")
    w = init_weights(net, seed=0)
    save_weights(w, str(d / "good.safetensors"))
    return d, w


def _convert(*args):
    return CliRunner().invoke(main, ["convert", "resnet20", "--to", "onnx", *args])


def test_truncated_and_corrupt_safetensors(r20_weights, tmp_path):
    d, _ = r20_weights
    data = (d / "good.safetensors").read_bytes()
    cases = {"truncated.safetensors": data[: len(data) // 2], "header_only.safetensors": data[:8],
             "garbage.safetensors": os.urandom(4096), "empty.safetensors": b"",
             "bad_header.safetensors": (100).to_bytes(8, "little") + b"{not json" + b" " * 91 + data[108:]}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        res = _convert("--weights", str(tmp_path / name), "-o", str(tmp_path / "out"))
        assert res.exit_code == 1, (name, res.output)
        assert name in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_bad_tensors_are_named(r20_weights, tmp_path):
    _, w = r20_weights
    cases = {
        "shape": (dict(w, **{"layer2.0.conv1.weight": np.zeros((32, 16, 1, 1), np.float32)}),
                  "'layer2.0.conv1.weight' has shape (32, 16, 1, 1), the spec expects (32, 16, 3, 3)"),
        "missing": ({k: v for k, v in w.items() if k != "fc.bias"}, "missing tensor 'fc.bias' (expected shape (10))"),
        "extra": (dict(w, **{"fc2.weight": np.zeros(3, np.float32)}), "unexpected tensor 'fc2.weight'"),
        "nan": (dict(w, **{"layer3.2.bn2.weight": np.full(64, np.nan, np.float32)}),
                "'layer3.2.bn2.weight' contains NaN values (pass --allow-nonfinite"),
        "inf": (dict(w, **{"conv1.weight": np.full((16, 3, 3, 3), np.inf, np.float32)}),
                "'conv1.weight' contains Inf values"),
        "dtype": (dict(w, **{"fc.bias": np.zeros(10, np.bool_)}), "'fc.bias' has dtype BOOL; expected a float tensor"),
        "int64": (dict(w, **{"fc.bias": np.zeros(10, np.int64)}), "'fc.bias' has dtype I64; expected a float tensor"),
    }
    for name, (ws, fragment) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_weights(ws, str(path))
        res = _convert("--weights", str(path), "-o", str(tmp_path / name))
        assert res.exit_code == 1 and fragment in res.output, (name, res.output)
    res = _convert("--weights", str(tmp_path / "nan.safetensors"), "--allow-nonfinite", "-o", str(tmp_path / "nanok"))
    assert res.exit_code == 0, res.output


def test_pickles_are_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    (tmp_path / "list.pt").write_bytes(pickle.dumps([1, 2, 3]))
    for f in ("evil.pth", "list.pt"):
        res = _convert("--weights", str(tmp_path / f), "-o", str(tmp_path / "o"))
        assert res.exit_code == 1 and "refused" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "pwned").exists()


# -- outputs --------------------------------------------------------------------------------------


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    write_bytes(str(target), b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target), force=True) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"new but incomplete")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]
    with pytest.raises(resnet_spec.ResNetSpecError, match="already exists; pass --force"):
        write_bytes(str(target), b"x", force=False)
    d = tmp_path / "saved"
    with pytest.raises(RuntimeError):
        with atomic_path(str(d), is_dir=True) as tmp:
            open(os.path.join(tmp, "part"), "w").close()
            raise RuntimeError
    assert not d.exists() and os.listdir(tmp_path) == ["model.onnx"]


def test_force_is_required_to_overwrite(tmp_path):
    out = str(tmp_path / "o")
    assert _convert("-o", out).exit_code == 0
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
    res = _convert("-o", out)
    assert res.exit_code == 1 and "already exists; pass --force" in res.output, res.output
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert _convert("-o", out, "--force").exit_code == 0


def test_an_existing_output_of_any_backend_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "resnet20.onnx").write_bytes(b"keep me")
    res = CliRunner().invoke(main, ["convert", "resnet20", "--to", "torch,onnx", "-o", str(out)])
    assert res.exit_code == 1 and "resnet20.onnx already exists; pass --force" in res.output, res.output
    assert sorted(os.listdir(out)) == ["resnet20.onnx"] and (out / "resnet20.onnx").read_bytes() == b"keep me"


def test_opset_out_of_range_is_a_usage_error():
    res = CliRunner().invoke(main, ["convert", "resnet20", "--to", "onnx", "--opset", "12"])
    assert res.exit_code == 2 and "13<=x<=28" in res.output, res.output


# -- emitted source -------------------------------------------------------------------------------


def _strip_docstrings(tree):
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            body[0].value.value = ""
    return ast.dump(tree)


_BASE_AST = None


@settings(max_examples=40, deadline=None)
@example(desc="", name="F").via("a model class named F once shadowed torch.nn.functional")
@example(desc="", name="Bottleneck")
@example(desc='ends in a quote"', name="A")
@given(desc=st.text(max_size=80) | st.sampled_from(['"""; import os; os.system("x") #', "\\", '\\"""', "'''",
                                                     "\x00\r\n\u2028", "}{{ }}", "\"\"\"\nimport os\n\"\"\""]),
       name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True))
def test_spec_text_cannot_inject_code(desc, name):
    """Whatever the name and description, the emitted .py parses to the same code (only docstrings differ)."""
    from resnet_spec.backends.torch.source import to_source

    global _BASE_AST
    doc = {"extends": "resnet20", "name": name, "description": desc}
    net = resnet_spec.load(yaml.safe_dump(doc))
    src = to_source(net)
    tree = ast.parse(src)
    if _BASE_AST is None:
        _BASE_AST = _strip_docstrings(ast.parse(to_source(resnet_spec.load(yaml.safe_dump(
            {"extends": "resnet20", "name": "plain", "description": "plain"})))))
    ref = _BASE_AST
    # the class name is derived from the model name; normalise it before comparing
    from resnet_spec.backends.torch.source import class_name

    got = _strip_docstrings(tree).replace(f"'{class_name(name)}'", "'Plain'")
    got = got.replace(repr(f"{name}.safetensors"), "'plain.safetensors'")
    assert got == ref
    assert class_name(name).isidentifier()


# -- determinism ----------------------------------------------------------------------------------


def test_same_spec_and_seed_give_identical_files(tmp_path):
    pytest.importorskip("onnx")
    from resnet_spec.backends.onnx import backend as onnx_backend

    net = resnet_spec.load("resnet50d")
    blobs = []
    for i in range(2):
        w = init_weights(net, seed=7, random_bn=True)
        save_weights(w, str(tmp_path / f"w{i}.safetensors"))
        onnx_backend.convert(net, w, str(tmp_path / f"o{i}"))
        blobs.append(((tmp_path / f"w{i}.safetensors").read_bytes(),
                      (tmp_path / f"o{i}" / f"{net.name}.onnx").read_bytes()))
    assert blobs[0] == blobs[1]
    w8 = init_weights(net, seed=8)
    save_weights(w8, str(tmp_path / "w8.safetensors"))
    assert (tmp_path / "w8.safetensors").read_bytes() != blobs[0][0]


def test_every_number_in_the_schema_has_a_finite_range():
    """NaN is refused by the loader; everything else numeric must be bounded on both sides, so that no
    value (1e20, 2e22) can validate and then overflow a backend."""
    from resnet_spec.spec import schema

    unbounded = []

    def walk(node, path):
        if isinstance(node, dict):
            t = node.get("type")  # a property may itself be called "type" (then t is a sub-schema)
            types = t if isinstance(t, list) else [t] if isinstance(t, str) else []
            if {"integer", "number"} & set(types):
                if not ({"minimum", "exclusiveMinimum"} & set(node) and {"maximum", "exclusiveMaximum"} & set(node)):
                    unbounded.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(schema(), "")
    assert unbounded == []
