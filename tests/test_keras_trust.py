"""What a ``.keras`` file may ask of Keras (``resnet_spec/trust_keras.py``, README Security and Limits):
the classes its config.json names, and the values its layers declare, checked before Keras sees it.

1. Hostile configs, each a few hundred bytes, through ``import`` and ``--weights`` in a child process
   under an address-space limit (``test_budgets._bounded``): a ``TFSMLayer`` (which loads a SavedModel
   from any path), classes from a foreign ``module`` or registry, a ``Lambda``, a nested object that is a
   function, a quantized dtype policy; a Dense of 10^9 units, a Conv2D of 10^8 filters, a layer whose
   ``build_config`` declares 10^7 input channels (Keras builds on it), a Conv2D of 10^6 filters in a
   file whose weights hold nothing, a padding of 10^5. Each: exit 1, one ``error:`` line naming the file
   and the class or layer, no traceback, bounded memory, nothing written; Keras never starts.
2. ``verify`` and ``resnet_spec.load_keras`` (the import's worker) load a ``.keras`` through the same
   checks, made on the file they opened: replacing the path afterwards changes nothing.
3. Legitimate files pass: this project's Keras outputs (resnet18, preact_resnet164 channels_first
   float16, seresnet50, and two specs using every op the backend writes) and keras.applications
   ResNet50/ResNet50V2, written by Keras in a worker and loaded back through the checks; the estimate
   is Keras' own count of the model's values. One zoo entry of each family and the deeper keras.applications
   models (slow) too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
from click.testing import CliRunner

from resnet_spec import budgets as B
from resnet_spec.cli import main
from resnet_spec.errors import ResNetSpecError
from conftest import TINY_A, TINY_B, TINY_PREACT
from test_budgets import GIB, _bounded, _import, _keras, _refused, _weights

TINY = "extends: resnet20\nname: tiny\ninput: {size: 32}\ndepth: 8\n"
CONV = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "same"}


def _tensor(name, shape=(None, 8, 8, 3)):
    return {"class_name": "__keras_tensor__", "config": {"shape": list(shape), "dtype": "float32",
                                                         "keras_history": [name, 0, 0]}}


def _layer(cls, name, config, module="keras.layers", registered=None, **extra):
    return {"module": module, "class_name": cls, "name": name, "registered_name": registered,
            "config": {"name": name, **config}, **extra}


def _config(*layers) -> bytes:
    """A functional model: an 8x8x3 input, then ``layers`` one after the other."""
    chain = [_layer("InputLayer", "input", {"batch_shape": [None, 8, 8, 3], "dtype": "float32"}, inbound_nodes=[])]
    for layer in layers:
        chain.append({**layer, "inbound_nodes": [{"args": [_tensor(chain[-1]["name"])], "kwargs": {}}]})
    return json.dumps({"module": "keras.src.models.functional", "class_name": "Functional",
                       "registered_name": "Functional", "config": {
                           "name": "m", "layers": chain, "input_layers": ["input", 0, 0],
                           "output_layers": [chain[-1]["name"], 0, 0]}}).encode()


_POLICY = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "int8_from_float32"},
           "registered_name": None}
_EXEC = {"module": "builtins", "class_name": "function", "config": "exec", "registered_name": "function"}
_LAMBDA = {"class_name": "__lambda__", "config": {"value": ["4wAAAA==", None, None]}}
NOT_LISTED = "which is not on the allow-list of .keras layer classes"
HOSTILE = {
    "TFSMLayer": (_layer("TFSMLayer", "sm", {"filepath": "/etc", "call_endpoint": "serve"}),
                  f"config.json: layer sm is of class 'TFSMLayer', {NOT_LISTED}"),
    "a class from another module": (_layer("Evil", "e", {}, module="evil.layers", registered="evil>Evil"),
                                    f"config.json: layer e is of class 'Evil', {NOT_LISTED}"),
    "a stock class from another module": (
        _layer("Conv2D", "c", {"filters": 4, **CONV}, module="os"),
        "config.json: layer c is of class 'Conv2D' from module 'os', registered as None; the allow-list takes "
        "'Conv2D' from 'keras.layers' only"),
    "our class registered elsewhere": (
        _layer("TorchBatchNorm", "bn", {}, module="resnet_spec.backends.keras.layers",
               registered="evil>TorchBatchNorm"),
        "config.json: layer bn is of class 'TorchBatchNorm' from module 'resnet_spec.backends.keras.layers', "
        "registered as 'evil>TorchBatchNorm'; the allow-list takes 'TorchBatchNorm' from"),
    "Lambda": (_layer("Lambda", "l", {"function": _LAMBDA}),
               f"config.json: layer l is of class 'Lambda', {NOT_LISTED}"),
    "a function in a config": (_layer("Conv2D", "c", {"filters": 4, "kernel_initializer": _EXEC, **CONV}),
                               "config.json: layer c holds an object of class 'function' from module 'builtins', "
                               "which is not on the allow-list of .keras objects"),
    "a quantized dtype policy": (_layer("Dense", "fc", {"units": 4, "dtype": _POLICY}),
                                 "config.json: layer fc has dtype policy 'int8_from_float32'"),
    "Dense of 10^9 units": (_layer("Dense", "fc", {"units": 10**9}),
                            "config.json: layer fc (Dense) declares 4,000,000,000 values (a 3x1,000,000,000 kernel)"),
    "Conv2D of 10^8 filters": (
        _layer("Conv2D", "c", {"filters": 10**8, **CONV}),
        "config.json: layer c (Conv2D) declares 2,800,000,000 values (a 3x3x3x100,000,000 kernel)"),
    "a build_config of 10^7 channels": (
        _layer("Dense", "fc", {"units": 1000}, build_config={"input_shape": [None, 10**7]}),
        "config.json: layer fc (Dense) declares 10,000,001,000 values (a 10,000,000x1,000 kernel)"),
    "a build_config of shapes_dict": (
        _layer("Dense", "fc", {"units": 1000}, build_config={"shapes_dict": {"input_shape": [None, 10**7]}}),
        "config.json: layer fc has a build_config with keys 'shapes_dict'; Keras builds the layer on it"),
    "Conv2D of 10^6 filters, no weights": (
        _layer("Conv2D", "c", {"filters": 10**6, **CONV}),
        "config.json: the layers declare 28,000,000 values of variables and model.weights.h5 holds 0"),
    "a padding of 10^5": (_layer("ZeroPadding2D", "pad", {"padding": 10**5}),
                          "config.json: layer pad (ZeroPadding2D) outputs 200,008x200,008x3 (120,009,600,192) values "
                          "for one image"),
}


def test_keras_configs_outside_the_allow_list_and_budgets_are_refused(tmp_path):
    """Each case through import and --weights, refused in the command's process before Keras starts."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    commands, expect = [], []
    for i, (layer, why) in enumerate(HOSTILE.values()):
        path = _keras(tmp_path / f"case{i}.keras", _config(layer))
        commands += [_import(path, tmp_path / "o"), _weights(path, spec, tmp_path / "w")]
        expect += [f"error: {path}: {why}"] * 2
    for res, want in zip(_bounded(*commands, as_bytes=2 * GIB, seconds=20), expect):
        line = _refused(res, want)
        if "values" in want and "holds 0" not in want:
            assert f"{B.KERAS_MAX_PARAMS:,}" in line or f"{B.KERAS_MAX_ACTIVATION:,}" in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_a_refusal_quotes_what_the_file_names(tmp_path):
    """A class or layer name with a newline cannot break the message into a second line."""
    path = _keras(tmp_path / "m\nerror: x.keras", _config(_layer("TFSM\nLayer", "a\nb", {})))
    [res] = _bounded(_import(path, tmp_path / "o"), as_bytes=2 * GIB, seconds=20)
    _refused(res, f"error: {str(path)!r}: config.json: layer 'a\\nb' is of class 'TFSM\\nLayer', {NOT_LISTED}")


def test_load_keras_checks_the_file_it_loads(tmp_path, monkeypatch):
    """resnet_spec.load_keras (what verify and the import's worker load with) refuses before Keras is
    imported, from the file it opened."""
    import resnet_spec
    from resnet_spec.backends.keras import backend

    monkeypatch.setattr(backend, "keras_module", lambda *a: pytest.fail("Keras was imported"))
    path = _keras(tmp_path / "sm.keras", _config(HOSTILE["TFSMLayer"][0]))
    with pytest.raises(ResNetSpecError, match=f"^{path}: config.json: layer sm is of class 'TFSMLayer'"):
        resnet_spec.load_keras(str(path))


def test_the_file_checked_is_the_file_read(tmp_path):
    """Check-then-open: a .keras file is opened once; replacing the path after the open changes neither
    what the checks read nor what Keras is handed (a link to the open descriptor, on Linux)."""
    from resnet_spec.archive import check_keras_model
    from resnet_spec.backends.keras.backend import same_file
    from resnet_spec.fileio import open_regular

    path, hostile = _keras(tmp_path / "m.keras", _config()), _keras(tmp_path / "h.keras", _config(HOSTILE["Lambda"][0]))
    good = path.read_bytes()
    with open_regular(str(path)) as fh:
        os.replace(hostile, path)  # the swap, after the open
        assert check_keras_model(str(path), fh=fh) == 1
        with same_file(str(path), fh) as seen:
            if sys.platform.startswith("linux"):
                assert seen != str(path) and seen.endswith(".keras")
                with open(seen, "rb") as again:
                    assert again.read() == good
    with pytest.raises(ResNetSpecError, match="'Lambda'"):
        check_keras_model(str(path))


def test_verify_refuses_a_keras_file_outside_the_allow_list(tmp_path):
    """verify's .keras path (its TensorFlow worker, about 15 s) goes through the same checks."""
    import importlib.util

    import resnet_spec

    if importlib.util.find_spec("tensorflow") is None:  # (never imported here: verify's worker runs it)
        pytest.skip("needs TensorFlow")

    (tmp_path / "tiny.yaml").write_text(TINY)
    net = resnet_spec.load(TINY)
    resnet_spec.save_weights(resnet_spec.init_weights(net, seed=0), str(tmp_path / "tiny.safetensors"))
    path = _keras(tmp_path / "sm.keras", _config(HOSTILE["TFSMLayer"][0]))
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "tiny.yaml"), str(path), "--weights",
                                    str(tmp_path / "tiny.safetensors")])
    lines = [x for x in res.output.strip().splitlines() if x.startswith("error: ")]
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert lines == [f"error: {path}: config.json: layer sm is of class 'TFSMLayer', {NOT_LISTED} (the layers "
                     "this project's and keras.applications' ResNets are made of)"], res.output


# -- legitimate files ------------------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[3])
    import keras
    import resnet_spec
    from conftest import tiny_text
    from resnet_spec.backends.keras import model as km, stock

    out, jobs = sys.argv[1], json.loads(sys.argv[2])
    counts = {}
    for i, (spec, size, data_format, dtype, *lowering) in enumerate(jobs["specs"]):
        km.keras_module()
        net = resnet_spec.load(spec if "\\n" in spec else tiny_text(spec, size=size))
        if lowering == ["stock"]:  # what convert writes: stock layers only (backends/keras/stock.py)
            model = stock.build(net, None, data_format=data_format)
        else:
            model = km.build(net, None, data_format=data_format, dtype=dtype)
        keras.mixed_precision.set_global_policy("float32")
        path = os.path.join(out, f"{i}-{net.name}-{data_format}-{dtype}.keras")
        model.save(path)
        counts[path] = model.count_params()
    for app, kwargs in jobs["apps"]:
        model = getattr(keras.applications, app)(weights=None, input_shape=(32, 32, 3), **kwargs)
        path = os.path.join(out, f"{app}-{len(counts)}.keras")
        model.save(path)
        counts[path] = model.count_params()
    for path, count in counts.items():  # loaded back through the checks (resnet_spec.load_keras)
        assert resnet_spec.load_keras(path).count_params() == count, path
    print(json.dumps(counts))
""")


def _write_keras(folder, specs, apps) -> dict:
    """{path: Keras' count_params} of .keras files Keras writes in a worker (on TensorFlow, which builds
    keras.applications models several times faster than JAX; JAX without it)."""
    import importlib.util

    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("h5py") is None:
        pytest.skip("needs keras and h5py")  # (never imported here: Keras would import TensorFlow)
    env = dict(os.environ, KERAS_BACKEND="tensorflow" if importlib.util.find_spec("tensorflow") else "jax")
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _WRITER, str(folder), json.dumps({"specs": specs, "apps": apps}),
                           tests], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _estimate(path) -> int:
    """The values config.json declares, by resnet_spec/trust_keras.py (after the archive's checks)."""
    from resnet_spec import trust_keras
    from resnet_spec.archive import check_keras_model, read_keras_archive

    check_keras_model(path)
    cfg, _, _ = read_keras_archive(path, weights=False)
    return trust_keras.check_config(path, cfg, None)


#: beside zoo entries, two specs using every op the Keras backend writes (conftest.TINY_A, TINY_B):
#: grouped convolutions, SE, drop path and dropout (Dropout), conv biases, ceil-mode pools (ConstantPad2D),
#: an average-pool shortcut with partial windows (ExactAvgPool2D); pre-activation, option A (ChannelPad);
#: the same two in stock layers only, as ``convert`` writes them; ecaresnet50d's ECA (Conv1D), resnest50d's
#: split attention, res2next50's splits (Cropping3D), skresnet34's selective kernel; and resnetv2_50x1_bit's
#: GroupNormalization and StdConv2D
LEGIT_SPECS = [("resnet18", None, "channels_last", "float32"), ("preact_resnet164", None, "channels_first", "float16"),
               ("seresnet50", None, "channels_last", "float32"), (TINY_A, None, "channels_last", "float32"),
               (TINY_B, None, "channels_last", "bfloat16"),
               # the stock-layer files convert writes (edge-padded max pools, 'same' average pools, ZeroPadding3D)
               (TINY_A, None, "channels_last", "float32", "stock"), (TINY_B, None, "channels_first", "float32", "stock"),
               # ECA (Reshape, ZeroPadding1D, Conv1D), cut to two blocks per stage
               ("ecaresnet50d", 40, "channels_last", "float32", "stock"),
               # ResNeSt's split attention (Cropping2D of (H*W, radix, C), Permute, a softmax Activation)
               ("resnest50d", 40, "channels_last", "float32", "stock"),
               # Res2Net's channel splits (Reshape, Cropping3D), cut to two blocks per stage
               ("res2next50", 40, "channels_last", "float32", "stock"),
               # SKNet's selective kernel (Cropping2D channel split, Softmax, Cropping1D), two blocks per stage
               ("skresnet34", 40, "channels_last", "float32", "stock"),
               # GroupNorm (GroupNormalization) and weight-standardized convs (StdConv2D), as the parity legs build it
               ("resnetv2_50x1_bit", 40, "channels_last", "float32"),
               # FRN's TLU (Maximum) in stock layers, EvoNorm-S0's allow-listed EvoNormS0 layer
               (TINY_PREACT + "norm: {type: frn, eps: 1.0e-5}\n", None, "channels_last", "float32", "stock"),
               (TINY_PREACT + "norm: {type: evonorm_s0, groups: 4, eps: 1.0e-5}\n", None, "channels_last", "float32")]
LEGIT_APPS = [("ResNet50", {}), ("ResNet50V2", {"include_top": False, "pooling": "max"})]


def test_our_keras_files_and_keras_applications_pass(tmp_path):
    """Written by Keras (a worker), they pass the checks, in this process and in Keras' own load; the
    weights file holds what the config declares, which is Keras' own count."""
    counts = _write_keras(tmp_path, LEGIT_SPECS, LEGIT_APPS)
    assert len(counts) == len(LEGIT_SPECS) + len(LEGIT_APPS)
    for path, count in counts.items():
        assert _estimate(path) == count, path
    from resnet_spec.trust_keras import LAYERS

    classes = set()
    for path in counts:
        with zipfile.ZipFile(path) as z:
            classes |= {layer["class_name"] for layer in json.loads(z.read("config.json"))["config"]["layers"]}
    assert classes == set(LAYERS) - {"ReLU"}, classes  # every class on the list but ReLU is written


#: beside the fast test's entries, one zoo entry per remaining combination of stem, pool, block and shortcut
#: (the whole zoo took 90 s of the suite and adds no layer class or shape rule these do not use)
FAMILIES = ("resnet20", "wrn_28_10", "resnet50_caffe", "resnet50d", "keras_resnet50", "keras_resnet50v2",
            "resnext50_32x4d", "resnetv2_50", "resnetaa50d", "resnetrs50")


@pytest.mark.slow
def test_each_zoo_familys_keras_file_passes(tmp_path, keras_apps):
    specs = [(name, None, "channels_last", "float32") for name in FAMILIES]
    apps = [("ResNet50", {"include_top": False, "pooling": "avg"}), ("ResNet50V2", {"classifier_activation": None})]
    for path, count in _write_keras(tmp_path, specs, apps).items():
        assert _estimate(path) == count, path
    # keras.applications: the deepest v1 and v2 (ResNet101/101V2 are the same layers at fewer blocks), as
    # Keras saved them for the import tests (conftest.KerasApps; test_import.py loads them back)
    for app in ("ResNet152", "ResNet152V2"):
        assert _estimate(keras_apps[app]["keras"]) == keras_apps[app]["count"], app
