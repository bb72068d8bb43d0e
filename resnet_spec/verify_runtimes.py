"""Worker-side functions of :mod:`resnet_spec.verify`: each runs in one runtime's worker process.

Every function takes a file path and the NCHW float32 input ``x`` and returns plain numpy data. The
input is fed as the file declares it: layout, fixed batch, name and dtype
(:mod:`resnet_spec.verify_inputs`). A file that is not a model, does not take the spec's input, or needs
a runtime that is not installed raises :class:`ResNetSpecError` with one line naming the file (quoted
by :func:`resnet_spec.fileio.shown` when its name has control characters); nothing here prints.
"""

from __future__ import annotations

import numpy as np

from .errors import ResNetSpecError, first_line
from .fileio import check_regular_file, shown
from .backends.common import META_LAYOUT
from .verify_inputs import Feed, feed_of


def reference(spec_yaml: str, weights: dict, x: np.ndarray) -> dict:
    """The torch backend in float64 on ``weights`` (checked by the caller): logits ('head') and every tap."""
    import torch

    from .backends.torch import backend as tb
    from .resolve import UNCHECKED, load_network

    net = load_network(spec_yaml, UNCHECKED)
    model = tb.build(net, weights).double().eval()
    with torch.inference_mode():
        out = model.forward_taps(torch.from_numpy(x.astype(np.float64)))
    return {k: v.numpy() for k, v in out.items()}


# -- ONNX ------------------------------------------------------------------------------------------

#: ONNX element types verify feeds (TensorProto.FLOAT, FLOAT16)
_ONNX_DTYPES = {1: "float32", 10: "float16"}


def _load_onnx(path: str):
    import onnx

    check_regular_file(path)  # again in the worker: what verify checked may have been swapped since
    try:
        model = onnx.load(path)
    except Exception as exc:  # noqa: BLE001 - DecodeError, truncated external data, ...
        raise ResNetSpecError(f"{shown(path)}: not a readable ONNX model ({first_line(exc)})") from None
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise ResNetSpecError(f"{shown(path)}: not an ONNX model (no graph in it)")
    return model


def _is_float16(model) -> bool:
    from onnx import TensorProto

    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def _onnx_dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _onnx_feed(path: str, model, shape, layout: str) -> Feed:
    """How the file's first input (not an initializer) takes the spec's input: its name, layout, fixed
    batch and element type, from its declaration."""
    inits = {t.name for t in model.graph.initializer}
    inp = next((i for i in model.graph.input if i.name not in inits), None)
    if inp is None:
        raise ResNetSpecError(f"{shown(path)}: the graph has no input (every input is an initializer)")
    elem = inp.type.tensor_type.elem_type
    recorded = next((p.value for p in model.metadata_props if p.key == META_LAYOUT), None)
    return feed_of(path, _onnx_dims(inp), shape, layout, inp.name, _ONNX_DTYPES.get(elem, f"ONNX type {elem}"),
                   recorded)


def onnx_runs(path: str, x: np.ndarray, shape, device: str = "cpu", layout: str = "auto") -> list:
    """ONNX Runtime at every optimisation level, then onnx's ReferenceEvaluator on the smallest batch the
    file takes; the input fed as the file declares it (:class:`Feed`, kept in each run as ``feed``)."""
    try:
        import onnxruntime as ort
        from onnx.reference import ReferenceEvaluator
    except ImportError as exc:
        raise ResNetSpecError(f"{shown(path)}: needs onnx and onnxruntime ({exc}; pip install "
                              "'resnet-spec[onnx]')") from None
    from .backends.onnx import probe as onnx_probe

    model = _load_onnx(path)
    feed = _onnx_feed(path, model, shape, layout)
    feed.chunks(path, x)  # a batch the file cannot take: refused before any run
    from .backends.onnx.int8 import is_int8

    fp16, int8, output = _is_float16(model), is_int8(model), model.graph.output[0].name
    where = "CUDA" if device.startswith("cuda") else "CPU"
    runs = []
    for level in onnx_probe.LEVELS:
        try:
            sess = onnx_probe.session(path, level, device=device)
            logits = feed.run(path, x, lambda xin: sess.run([output], {feed.name: xin})[0])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ResNetSpecError(f"{shown(path)}: onnxruntime {ort.__version__} ({where}) cannot run it at level "
                                  f"{level}: {first_line(exc)}") from None
        runs.append({"runtime": f"onnxruntime {ort.__version__} {where}", "level": level, "float16": fp16, "int8": int8,
                     "outputs": {"logits": logits.astype(np.float32)}, "taps_level": level, "feed": feed})
    if int8:  # onnx 1.23's ReferenceEvaluator has DequantizeLinear from opset 19 only; verify.py notes it
        return runs
    try:
        ref = ReferenceEvaluator(model).run([output], {feed.name: feed.first(path, x)})[0]
    except Exception as exc:  # noqa: BLE001
        raise ResNetSpecError(f"{shown(path)}: onnx's ReferenceEvaluator cannot run it: {first_line(exc)}") from None
    import onnx

    runs.append({"runtime": f"onnx {onnx.__version__} ReferenceEvaluator", "level": "reference",
                 "float16": fp16, "int8": int8, "outputs": {"logits": np.asarray(ref, np.float32)}})
    return runs


def onnx_taps(path: str, x: np.ndarray, feed: Feed, level: str, tap_names, device: str = "cpu") -> dict:
    """The values named like the spec's taps (``stem``, ``layer1.0``...), run at ``level`` on the input
    as ``feed`` (from :func:`onnx_runs`) says."""
    import onnx

    from .backends.onnx import probe as onnx_probe

    model = onnx.shape_inference.infer_shapes(_load_onnx(path))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    have = {o for n in model.graph.node for o in n.output}
    names = [t for t in tap_names if t in have and t in types]
    outs = {o.name for o in model.graph.output}
    for t in names:
        if t not in outs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, types[t], None))
    if not names:
        return {}
    sess = onnx_probe.session(model.SerializeToString(), level, device=device)
    pieces = [sess.run(names, {feed.name: xin}) for xin in feed.chunks(path, x)]
    return {n: np.concatenate([p[i] for p in pieces]).astype(np.float32) for i, n in enumerate(names)}


def openvino_run(path: str, x: np.ndarray, feed: Feed):
    """OpenVINO on the CPU with f32 inference precision, on the input as ``feed`` says; None when
    OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    try:
        # The CPU plugin's default precision is bf16 where the CPU has it (1.5e-3 to 4.3e-3 on the zoo).
        compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what the plugin took: the level
        out = feed.run(path, x, lambda xin: compiled(xin)[compiled.output(0)])
    except Exception as exc:  # noqa: BLE001
        raise ResNetSpecError(f"{shown(path)}: OpenVINO {ov.__version__} cannot run it: {first_line(exc)}") from None
    return {"runtime": f"openvino {ov.__version__} CPU", "level": precision, "outputs": {"logits": np.asarray(out)}}


# -- TFLite, Keras, SavedModel ------------------------------------------------------------------------


def _tflite_interpreter(path: str, data: bytes):
    """A TFLite interpreter on ``data`` (the bytes read from ``path``), and its label."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        import ai_edge_litert

        label = f"LiteRT {getattr(ai_edge_litert, '__version__', '')}".strip()
    except ImportError:
        try:
            import tensorflow as tf
        except ImportError:
            raise ResNetSpecError(f"{shown(path)}: no TFLite interpreter installed (pip install 'resnet-spec[tflite]', "
                                  "or TensorFlow)") from None
        Interpreter, label = tf.lite.Interpreter, f"tf.lite {tf.__version__}"
    try:
        return Interpreter(model_content=data), label
    except Exception as exc:  # noqa: BLE001
        raise ResNetSpecError(f"{shown(path)}: not a readable .tflite model ({first_line(exc)})") from None


def _tflite_read(path: str) -> bytes:
    check_regular_file(path, 2**31 - 1)
    with open(path, "rb") as fh:
        return fh.read()


def _tflite_checked(path: str) -> bytes:
    """Refuse custom operators: a Select-TF (``Flex...``) op runs a TensorFlow op (``FlexWriteFile``
    writes a file) in ``tf.lite.Interpreter``, and any other custom op is code registered elsewhere.
    Our files (and TFLite's builtin ops) have none. Returns the bytes checked."""
    from .inspect_files import _tflite_schema
    from .trust import refuse

    data = _tflite_read(path)
    fb = _tflite_schema(path)
    try:
        m = fb.Model.GetRootAs(data, 0)
        codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
        custom = [(c.CustomCode() or b"?").decode("utf-8", "replace") for c in codes
                  if max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) == fb.BuiltinOperator.CUSTOM]
    except Exception as exc:  # noqa: BLE001 - a damaged flatbuffer raises anything
        raise ResNetSpecError(f"{shown(path)}: not a readable .tflite model ({first_line(exc)})") from None
    if custom:
        raise refuse(path, f"it uses the custom operator {custom[0][:60]!r}, which runs TensorFlow ops or code "
                           "registered outside the file (verify runs builtin operators only)")
    return data


def tflite_check(path: str) -> None:
    """:func:`_tflite_checked`, before any file runs (a refusal is then the only line)."""
    _tflite_checked(path)


def _tflite_dtypes(path: str, data: bytes) -> tuple:
    """``(float16, int8, layout)``: whether the file holds float16 weights feeding DEQUANTIZE ops (TFLite's
    float16 quantisation), and int8 tensors (integer quantization), from any converter
    (:func:`resnet_spec.inspect_files.tflite_float16_weights`, ``tflite_int8_tensors``), and the input
    layout its metadata records (None without one)."""
    from .inspect_files import _tflite_schema, tflite_float16_weights, tflite_int8_tensors, tflite_metadata

    fb = _tflite_schema(path)
    try:
        layout = tflite_metadata(data, fb).get(META_LAYOUT, b"").decode("utf-8", "replace") or None
        return bool(tflite_float16_weights(data, fb)), bool(tflite_int8_tensors(data, fb)), layout
    except Exception as exc:  # noqa: BLE001 - a damaged flatbuffer raises anything
        raise ResNetSpecError(f"{shown(path)}: not a readable .tflite model ({first_line(exc)})") from None


def tflite_run(path: str, x: np.ndarray, shape, trusted: bool = False, layout: str = "auto") -> dict:
    """The LiteRT interpreter (else tf.lite's); unless ``trusted``, builtin operators only. The input is
    fed as the file declares it (:class:`Feed`): a dynamic one resized to the batch, a fixed one never
    resized (a batch of 1 gets the images one at a time). ``float16``: the file has float16 weights."""
    data = _tflite_read(path) if trusted else _tflite_checked(path)
    fp16, int8, recorded = _tflite_dtypes(path, data)
    interp, label = _tflite_interpreter(path, data)
    inp = interp.get_input_details()[0]
    sig = inp.get("shape_signature")
    dims = [int(d) for d in (sig if sig is not None and len(sig) else inp["shape"])]
    feed = feed_of(path, dims, shape, layout, inp["name"], np.dtype(inp["dtype"]).name, recorded)
    pieces = feed.chunks(path, x)
    out_index = interp.get_output_details()[0]["index"]

    def one(xin):
        interp.set_tensor(inp["index"], xin)
        interp.invoke()
        return np.array(interp.get_tensor(out_index))

    try:
        if any(d < 0 for d in dims):  # a dynamic dimension: sized to the pieces fed
            interp.resize_tensor_input(inp["index"], list(pieces[0].shape))
        interp.allocate_tensors()
        out = feed.run(path, x, one)
    except Exception as exc:  # noqa: BLE001
        raise ResNetSpecError(f"{shown(path)}: {label} cannot run it: {first_line(exc)}") from None
    return {"runtime": label, "level": "-", "float16": fp16, "int8": int8,
            "outputs": {"logits": np.asarray(out, np.float32)}}


def _require_tensorflow(path: str):
    from .backends import get

    tfb = get("tensorflow")
    reason = tfb.available()
    if reason:
        raise ResNetSpecError(f"{shown(path)}: {reason}")
    return tfb


def savedmodel_check(path: str) -> None:
    """:func:`resnet_spec.trust_savedmodel.check_savedmodel`, run before any file runs (so that a refusal
    is the only line); the run checks again what it loads."""
    _require_tensorflow(path)
    from .trust_savedmodel import check_savedmodel

    check_savedmodel(path)


def _serving_input(path: str, fn) -> str:
    """The name of the serving signature's one input (``input`` in ours, ``args_0`` or a layer name in
    nobuco's and other converters'); a signature of several inputs is no image classifier."""
    names = list(fn.structured_input_signature[1])
    if len(names) != 1:
        raise ResNetSpecError(f"{shown(path)}: serving_default takes {len(names)} inputs ({', '.join(names[:5])}); "
                              "verify runs models with one image input")
    return names[0]


def _keras_recorded(path: str) -> str | None:
    """The input layout a ``.keras`` file's metadata.json records (``convert --layout``), or None."""
    from .archive import read_keras_archive

    _, meta, _ = read_keras_archive(path, weights=False)
    value = meta.get(META_LAYOUT) if isinstance(meta, dict) else None
    return value if value in ("nchw", "nhwc") else None


def _py_feed(path: str, recorded, layout: str) -> Feed:
    """A standalone ``.py`` is fed in the layout its ``INPUT_LAYOUT`` says; an unknown one, or a --layout
    that contradicts it, is refused (its forward would see transposed images)."""
    if recorded not in ("nchw", "nhwc"):
        raise ResNetSpecError(f"{shown(path)}: INPUT_LAYOUT is {recorded!r}; verify feeds 'nchw' or 'nhwc'")
    if layout not in ("auto", recorded):
        raise ResNetSpecError(f"{shown(path)}: its INPUT_LAYOUT is {recorded!r} and --layout says {layout!r}")
    return Feed(recorded)


def _load_keras_or_savedmodel(tfb, path: str, kind: str, trusted: bool, tmp: str):
    """(the model or serving function, its input dims, the signature's input name or None, the input's
    dtype). Unless ``trusted``, a SavedModel is checked first and loaded from the checked copy
    (:mod:`resnet_spec.trust_savedmodel`)."""
    if kind == "keras":
        model = tfb.load_keras(path)
        return model, list(model.inputs[0].shape), None, str(getattr(model.inputs[0], "dtype", "float32"))
    load = path
    if not trusted:
        from .trust_savedmodel import checked_copy

        load = checked_copy(path, tmp)
    fn = tfb.load_savedmodel(load)
    name = _serving_input(path, fn)
    spec = fn.structured_input_signature[1][name]
    return fn, spec.shape.as_list(), name, spec.dtype.name


def keras_run(path: str, x: np.ndarray, shape, kind: str, trusted: bool = False, layout: str = "auto") -> dict:
    """A ``.keras`` file, or a SavedModel's ``serving_default`` called by its input's own name; the input
    fed as the file declares it (:class:`Feed`: nobuco writes a fixed batch of 1)."""
    import tempfile

    tfb = _require_tensorflow(path)
    with tempfile.TemporaryDirectory(prefix="resnet-spec-savedmodel-") as tmp:
        try:
            model, dims, name, dtype = _load_keras_or_savedmodel(tfb, path, kind, trusted, tmp)
        except ResNetSpecError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ResNetSpecError(f"{shown(path)}: not a loadable {kind} model ({first_line(exc)})") from None
    feed = feed_of(path, dims, shape, layout, name, dtype, _keras_recorded(path) if kind == "keras" else None)
    pieces = feed.chunks(path, x)

    def one(xin):
        if kind == "keras":
            return np.asarray(model(xin, training=False))
        res = model(**{name: xin})
        return np.asarray(res["logits"] if "logits" in res else next(iter(res.values())))

    try:
        out = feed.run(path, x, one)
    except Exception as exc:  # noqa: BLE001
        raise ResNetSpecError(f"{shown(path)}: cannot run on input {tuple(pieces[0].shape)}: "
                              f"{first_line(exc)}") from None
    label = f"keras {tfb.versions().split('keras ')[-1]}" if kind == "keras" else tfb.versions().split(" /")[0]
    return {"runtime": label, "level": "-", "outputs": {"logits": np.asarray(out, np.float32)}}


# -- PyTorch files ---------------------------------------------------------------------------------


def _load_torch_file(path: str, kind: str, weights_path: str, trusted: bool, max_bytes: int):
    """``(module, input dims or None, recorded layout or None)``: a ``.pt2`` program's module (unless
    ``trusted``, loaded from the checked copy :func:`resnet_spec.trust_pt2.clean_copy` writes), its input's
    declared dims and the layout its extra files record; or a standalone ``.py``'s ``load_model()`` and its
    ``INPUT_LAYOUT`` (NCHW when it has none)."""
    import importlib.util
    import os
    import tempfile
    import uuid

    import torch

    if kind == "pt2":
        from .trust_pt2 import clean_copy

        extra = {META_LAYOUT: ""}
        with tempfile.TemporaryDirectory(prefix="resnet-spec-pt2-") as tmp:
            load = path if trusted else clean_copy(path, max_bytes, os.path.join(tmp, "checked.pt2"))
            program = torch.export.load(load, extra_files=extra)
        return program.module(), _pt2_dims(path, program), extra[META_LAYOUT] or None
    spec = importlib.util.spec_from_file_location(f"_verify_{uuid.uuid4().hex}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "load_model"):
        raise ResNetSpecError(f"{shown(path)}: no load_model() in it; not a source file written by convert")
    return mod.load_model(weights=weights_path), None, getattr(mod, "INPUT_LAYOUT", "nchw")


def _pt2_dims(path: str, program) -> list:
    """The declared dims of a program's first user input (None for a symbolic one, the dynamic batch)."""
    names = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and names and node.name == names[0] and hasattr(node.meta.get("val"), "shape"):
            return [d if isinstance(d, int) else None for d in node.meta["val"].shape]
    raise ResNetSpecError(f"{shown(path)}: the program declares no tensor input")


def _stopped(path: str, exc: BaseException, when: str) -> ResNetSpecError:
    """A SystemExit (or another exception that is no error) raised by the file's own code: an error
    naming the file. In the worker, which ignores Ctrl-C, nothing else raises one."""
    what = f"exited (SystemExit({exc.code!r}))" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}"
    return ResNetSpecError(f"{shown(path)}: its code {what} while {when}; no result")


def torch_file_run(path: str, x: np.ndarray, shape, kind: str, weights_path: str, trusted: bool = False,
                   max_bytes: int = 1 << 62, layout: str = "auto") -> dict:
    """A ``.pt2`` program (weights inside) or a standalone ``.py`` (weights from ``weights_path``; run
    only when ``trusted``: verify refuses it before this otherwise); the input fed in the file's layout
    (a ``.pt2``: from its declared input, :class:`Feed`; a ``.py``: its ``INPUT_LAYOUT``)."""
    import torch

    check_regular_file(path)
    if kind == "py" and not trusted:
        from .trust import PY_REFUSAL, refuse

        raise refuse(path, PY_REFUSAL)
    try:
        model, dims, recorded = _load_torch_file(path, kind, weights_path, trusted, max_bytes)
    except ResNetSpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken archive or source raises anything
        raise ResNetSpecError(f"{shown(path)}: not a loadable {kind} model ({first_line(exc)})") from None
    except BaseException as exc:  # noqa: BLE001 - SystemExit from the source: an error, never an exit
        raise _stopped(path, exc, "loading") from None
    # a .py says its layout (INPUT_LAYOUT) and declares no shape; a .pt2 declares its input's
    feed = _py_feed(path, recorded, layout) if dims is None else feed_of(path, dims, shape, layout, recorded=recorded)
    piece = feed.first(path, x)
    try:
        with torch.inference_mode():
            out = feed.run(path, x, lambda xin: model(torch.from_numpy(xin)).float().numpy())
    except Exception as exc:  # noqa: BLE001
        raise ResNetSpecError(f"{shown(path)}: cannot run on input {tuple(piece.shape)}: {first_line(exc)}; "
                              "is it a model of another spec?") from None
    except BaseException as exc:  # noqa: BLE001
        raise _stopped(path, exc, "running") from None
    return {"runtime": f"torch {torch.__version__}", "level": kind, "outputs": {"logits": out}}
