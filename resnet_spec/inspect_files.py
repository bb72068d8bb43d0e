"""``resnet-spec inspect`` for the files that need no framework: ``.safetensors``, ``.pt2``, ``.keras``
and ``.tflite`` (and how ``convert`` embeds the spec in the last two).

A safetensors file is read through its header only (names, dtypes, shapes, metadata); no tensor data
is loaded. When its metadata holds the spec YAML (``resnet_spec.spec``, written by ``convert``), the
tensors are also checked against that spec by name and shape. A ``.pt2`` is a zip archive:
``torch.export.save(..., extra_files=...)`` stores extra files as ``<archive>/extra/<name>``, which is
where the spec is looked for; the archive is never unpickled or loaded.

A ``.keras`` file is a zip archive too: ``config.json`` (the layers), ``metadata.json`` and
``model.weights.h5``. Keras reads only the first and the last when loading, so ``convert`` adds the
spec name and YAML to ``metadata.json`` (:func:`embed_keras_spec`); inspect reads the layer list from
the config and the weights' shapes from the HDF5 file (h5py, which Keras needs anyway), never
deserialising a layer. A ``.tflite`` file is a flatbuffer whose ``Model`` has a ``metadata`` table
(name -> buffer); ``convert`` stores the spec there under the same keys, and the dtype under
``resnet_spec.dtype`` and the input layout under ``resnet_spec.layout`` (:func:`tflite_with_spec`), next to
the converter's own entries. Inspect reads it
with the generated schema of the LiteRT package (``ai-edge-litert``), else TensorFlow's, and tells a
float16 file (float16 weights feeding DEQUANTIZE ops, :func:`tflite_float16_weights`) from its tensors.
"""

from __future__ import annotations

import collections
import json
import math
import struct
import zipfile

from .archive import KERAS_META, keras_layers, read_keras_archive, read_member
from .backends.common import META_LAYOUT, layout_text
from .errors import ResNetSpecError
from .fileio import check_regular_file, shown

META_NAME, META_SPEC = "resnet_spec.name", "resnet_spec.spec"
#: the dtype ``convert`` records in a ``.tflite`` file's metadata (``float32``, ``float16`` weights, ``int8``)
META_DTYPE = "resnet_spec.dtype"
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def weights_metadata(net) -> dict:
    """The metadata ``convert`` stores in ``<name>.safetensors``: format, spec name and spec YAML."""
    return {"format": "resnet-spec", "spec": net.name, META_NAME: net.name, META_SPEC: net.spec_yaml}


def inspect_safetensors(path: str) -> dict:
    from safetensors import safe_open

    check_regular_file(path)
    try:
        with safe_open(path, framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            dtypes = sorted({str(fh.get_slice(k).get_dtype()) for k in fh.keys()})
    except Exception as exc:  # safetensors raises its own Rust-side error types
        raise ResNetSpecError(f"{path}: not a valid safetensors file ({type(exc).__name__}: {exc})") from None
    params = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(BUFFER_SUFFIXES))
    info = {"path": path, "format": "safetensors", "tensors": len(shapes), "parameters": params,
            "buffers": sum(math.prod(s) for k, s in shapes.items() if k.endswith(BUFFER_SUFFIXES)),
            "dtypes": dtypes, "spec_name": meta.get(META_NAME) or meta.get("spec"),
            "spec_yaml": meta.get(META_SPEC), "metadata": {k: v for k, v in meta.items() if k != META_SPEC}}
    if info["spec_yaml"]:
        info["matches_spec"] = _matches(path, info["spec_yaml"], shapes)
    return info


def embedded_spec(path: str, spec_yaml):
    """The spec embedded in ``path`` (``resnet_spec.spec``), loaded by :func:`resnet_spec.spec.load_embedded`:
    YAML text only, ``extends`` a zoo entry only. An ``extends`` naming a path (or anything but a zoo
    entry) is refused, naming the file, before anything is read; a spec that is wrong in another way is
    returned as its error (a :class:`SpecError`), for the caller to show. None when there is no spec."""
    from .spec import ExtendsRefused, load_embedded

    if spec_yaml is None:
        return None
    try:
        return load_embedded(spec_yaml, f"{path} (embedded spec)")
    except ExtendsRefused as exc:
        raise ResNetSpecError(f"{path}: the embedded spec is refused: {exc.message}") from None
    except ResNetSpecError as exc:
        return exc


def _matches(path: str, spec_yaml: str, shapes: dict) -> str:
    from .resolve import resolve

    spec = embedded_spec(path, spec_yaml)  # a path in its extends: refused here
    if not isinstance(spec, ResNetSpecError):
        try:
            net = resolve(spec)
        except ResNetSpecError as exc:
            spec = exc
    if isinstance(spec, ResNetSpecError):
        return f"no: the embedded spec does not load ({spec})"
    want = {t.name: tuple(t.shape) for t in net.tensors()}
    got = {k: v for k, v in shapes.items() if not k.endswith(".num_batches_tracked")}
    if want == got:
        return "yes"
    bad = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
    return f"no: {len(bad)} tensor(s) differ, first {bad[0]!r}"


def inspect_checkpoint(path: str) -> dict:
    """A torch checkpoint as ``--weights`` reads it (containers unwrapped, prefixes stripped)."""
    from .weights.files import read_checkpoint

    tensors, notes = read_checkpoint(path)
    return {"path": path, "format": "torch checkpoint", "tensors": len(tensors),
            "parameters": sum(v.size for k, v in tensors.items() if not k.endswith(BUFFER_SUFFIXES)),
            "buffers": sum(v.size for k, v in tensors.items() if k.endswith(BUFFER_SUFFIXES)),
            "dtypes": sorted({str(v.dtype) for v in tensors.values()}), "spec_name": None, "spec_yaml": None,
            "notes": notes}


def inspect_pt2(path: str) -> dict:
    check_regular_file(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            extra = {n.split("/extra/", 1)[1]: n for n in names if "/extra/" in n}
            spec_yaml, name, layout = (read_member(z, extra[k]).decode("utf-8") if k in extra else None
                                       for k in (META_SPEC, META_NAME, META_LAYOUT))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResNetSpecError(f"{path}: not a torch.export archive ({exc})") from None
    if not any("/models/" in n or n.endswith(".json") for n in names):
        raise ResNetSpecError(f"{path}: a zip archive, but not a torch.export program")
    embedded_spec(path, spec_yaml)
    return {"path": path, "format": "torch.export (.pt2)", "entries": len(names), "spec_name": name,
            "spec_yaml": spec_yaml, "extra_files": sorted(extra), "layout": layout}


def format_info(info: dict) -> str:
    lines = [f"file:       {info['path']} ({info['format']})"]
    lines.append(f"spec:       {info['spec_name'] or '(none recorded)'}")
    if "layers" in info:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(info["layer_classes"].items(), key=lambda kv: -kv[1]))
        lines.append(f"layers:     {info['layers']} ({kinds})")
    if "operators" in info:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(info["op_types"].items(), key=lambda kv: -kv[1]))
        lines.append(f"operators:  {info['operators']} ({kinds})")
    for key in ("inputs", "outputs"):
        for t in info.get(key, []):
            what = (f"shape {t['shape']}, {t['dtype']}" if "shape" in t
                    else f"{t['layer']}" + (f", {t['units']} units" if t.get("units") else ""))
            lines.append(f"{key[:-1] + ':':<11} {t['name']} ({what})")
    if info.get("layout"):
        lines.append(f"layout:     {layout_text(info['layout'])}")
    if "float16_weights" in info:  # TFLite: float16 weights + DEQUANTIZE (float16 post-training quantisation)
        lines.append(f"dtype:      {_tflite_dtype_text(info)}")
    if "tensors" in info and "operators" in info:  # TFLite: BN folded, equal constants stored once
        lines.append(f"weights:    {info['tensors']} constant tensors ({', '.join(info['dtypes'])}), "
                     f"{info['parameters']:,} float values (BN folded into the convolutions)")
    elif "tensors" in info:
        lines.append(f"tensors:    {info['tensors']} ({', '.join(info['dtypes']) or '-'}), "
                     f"{info['parameters']:,} parameters, {info['buffers']:,} buffer values")
    for n in info.get("notes", []):
        lines.append(f"note:       {n}")
    if "matches_spec" in info:
        lines.append(f"matches:    {info['matches_spec']} (names and shapes against the embedded spec)")
    if "entries" in info:
        lines.append(f"archive:    {info['entries']} entries; extra files: {', '.join(info['extra_files']) or 'none'}")
    if info.get("spec_yaml"):
        lines += ["", "spec YAML:", info["spec_yaml"].rstrip()]
    elif info["format"].startswith(("torch.export", "Keras", "TFLite")):
        lines.append("(no spec embedded: not written by resnet-spec convert, or by an older version)")
    return "\n".join(lines)


def _tflite_dtype_text(info: dict) -> str:
    """What a TFLite file computes with, from its tensors, and what its metadata records."""
    what = "float32"
    if info["dtype"] == "int8":
        what = f"int8 ({info['int8_tensors']} int8 tensors: integer quantization)"
    elif info["dtype"] == "float16":
        what = f"float16 weights ({info['float16_weights']} tensors, dequantized to float32 at run time)"
    recorded = info.get("dtype_recorded")
    return what + (f"; metadata: {recorded}" if recorded else "")


# -- .keras -----------------------------------------------------------------------------------------

_KERAS_BN = ("BatchNormalization", "TorchBatchNorm")


def embed_keras_spec(path: str, net, layout: str = "nhwc") -> None:
    """Rewrite the ``.keras`` archive at ``path`` with the spec name and YAML and the input ``layout`` in
    ``metadata.json`` (members, order and compression otherwise unchanged)."""
    with zipfile.ZipFile(path) as z:
        members = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename == KERAS_META:
                meta = json.loads(data)
                meta.update({META_NAME: net.name, META_SPEC: net.spec_yaml, META_LAYOUT: layout})
                data = json.dumps(meta).encode("utf-8")
            z.writestr(info, data)


def inspect_keras(path: str) -> dict:
    cfg, meta, h5 = read_keras_archive(path)
    model, layers = keras_layers(path, cfg)
    conf = {layer["name"]: layer.get("config") if isinstance(layer.get("config"), dict) else {} for layer in layers}
    classes = {layer["name"]: layer["class_name"] for layer in layers}
    ends = {k: _keras_ends(path, model.get(f"{k}_layers"), k) for k in ("input", "output")}
    inputs = [{"name": n, "shape": _plain(conf.get(n, {}).get("batch_shape"), list),
               "dtype": _keras_dtype(conf.get(n, {}).get("dtype"))} for n in ends["input"]]
    outputs = [{"name": n, "layer": classes.get(n), "units": _plain(conf.get(n, {}).get("units"), int)}
               for n in ends["output"]]
    info = {"path": path, "format": f"Keras {_plain(meta.get('keras_version'), str) or '?'} (.keras)",
            "model": _plain(model.get("name"), str), "layers": len(layers),
            "layer_classes": dict(collections.Counter(x["class_name"] for x in layers)),
            "inputs": inputs, "outputs": outputs, "spec_name": _meta_text(path, meta, META_NAME),
            "spec_yaml": _meta_text(path, meta, META_SPEC), "layout": _meta_text(path, meta, META_LAYOUT),
            "metadata": {k: v for k, v in meta.items() if k != META_SPEC and _plain(v, (str, int, float, bool)) is not None}}
    embedded_spec(path, info["spec_yaml"])
    if h5 is not None:
        info.update(_keras_weights(path, h5))
    return info


def _keras_ends(path: str, value, kind: str) -> list:
    """The layer names of ``input_layers``/``output_layers``: one ``[name, 0, 0]`` or a list of them."""
    if not value:
        return []
    entries = value if isinstance(value, list) and isinstance(value[0], list) else [value]
    if not all(isinstance(e, list) and e and isinstance(e[0], str) for e in entries):
        raise ResNetSpecError(f"{path}: not a Keras .keras archive (config.json: {kind}_layers is not "
                              "[name, 0, 0] or a list of them)")
    return [e[0] for e in entries]


def _plain(value, kind):
    """``value`` when it is a ``kind`` (a shape: a list of integers and nulls), else None."""
    if kind is list:
        ok = isinstance(value, list) and all(d is None or (isinstance(d, int) and not isinstance(d, bool))
                                             for d in value)
        return value if ok else None
    return value if isinstance(value, kind) else None


def _keras_dtype(value):
    """A layer's dtype: a string, or Keras 3's DTypePolicy mapping ({'config': {'name': 'float32'}})."""
    if isinstance(value, dict):
        value = value.get("config", {}).get("name") if isinstance(value.get("config"), dict) else None
    return _plain(value, str)


def _meta_text(path: str, meta: dict, key: str):
    value = meta.get(key)
    if value is not None and not isinstance(value, str):
        raise ResNetSpecError(f"{path}: {KERAS_META}: {key} is {type(value).__name__}, not text")
    return value


def _keras_weights(path: str, data: bytes) -> dict:
    """Tensor count, parameters and BN moving statistics of ``model.weights.h5`` (h5py, shapes only)."""
    try:
        import io

        import h5py
    except ImportError:
        return {}
    shapes = {}
    try:
        with h5py.File(io.BytesIO(data), "r") as h:
            h.visititems(lambda k, v: shapes.__setitem__(k, v.shape) if isinstance(v, h5py.Dataset) else None)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # h5py's errors on damaged files
        raise ResNetSpecError(f"{path}: model.weights.h5 is not readable HDF5 ({type(exc).__name__}: {exc})") from None
    # Keras names a BN layer's store group after its class (batch_normalization, torch_batch_norm);
    # vars 2 and 3 are its moving mean and variance.
    buffer = [k for k in shapes if "batch_norm" in k.split("/vars/")[0] and k.endswith(("/vars/2", "/vars/3"))]
    return {"tensors": len(shapes), "parameters": sum(math.prod(s) for k, s in shapes.items() if k not in buffer),
            "buffers": sum(math.prod(shapes[k]) for k in buffer), "dtypes": ["float32"]}


# -- .tflite ----------------------------------------------------------------------------------------

def _tflite_schema(path: str):
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as fb
        except ImportError:
            raise ResNetSpecError(f"{shown(path)}: reading .tflite files needs the LiteRT package (pip install "
                                  "'resnet-spec[tflite]') or TensorFlow") from None
    return fb


def tflite_with_spec(data: bytes, net, fb, dtype: str = "float32", layout: str = "nhwc") -> bytes:
    """The flatbuffer ``data`` with the spec name, YAML, ``dtype`` and input ``layout`` added to its metadata
    table (``fb``:
    the generated TFLite schema module). Files with buffers outside the flatbuffer (> 2 GB) are returned
    as they are."""
    import flatbuffers
    import numpy as np

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if any(getattr(b, "offset", 0) for b in model.buffers or []):
        return data
    model.buffers, model.metadata = list(model.buffers or []), list(model.metadata or [])
    for key, text in ((META_NAME, net.name), (META_SPEC, net.spec_yaml), (META_DTYPE, dtype), (META_LAYOUT, layout)):
        buf, meta = fb.BufferT(), fb.MetadataT()
        buf.data = np.frombuffer(text.encode("utf-8"), np.uint8)
        meta.name, meta.buffer = key, len(model.buffers)
        model.buffers.append(buf)
        model.metadata.append(meta)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_float16_weights(data: bytes, fb) -> list:
    """``[(tensor name, float16 values or None)]``: the float16 constant tensors that feed a DEQUANTIZE
    operator, which is how TFLite's float16 post-training quantisation stores weights (computed in
    float32 after the DEQUANTIZE). A float16 file from any converter is recognised from these, with or
    without our metadata. Values are None for a buffer outside the flatbuffer."""
    import numpy as np

    m = fb.Model.GetRootAs(data, 0)
    dequantize = {i for i in range(m.OperatorCodesLength())
                  if max(m.OperatorCodes(i).BuiltinCode(), m.OperatorCodes(i).DeprecatedBuiltinCode())
                  == fb.BuiltinOperator.DEQUANTIZE}
    out = []
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            if op.OpcodeIndex() not in dequantize or not op.InputsLength():
                continue
            t = sg.Tensors(int(op.Inputs(0)))
            if t.Type() != fb.TensorType.FLOAT16 or not t.Buffer():
                continue
            raw = m.Buffers(t.Buffer()).DataAsNumpy()
            values = raw.view(np.float16) if hasattr(raw, "view") and raw.size else None
            out.append((t.Name().decode("utf-8", "replace"), values))
    return out


def tflite_int8_tensors(data: bytes, fb) -> int:
    """How many tensors of the first subgraph are int8 or uint8 (TFLite's integer quantization, from any
    converter: full-integer files compute on them; a file without any is float)."""
    m = fb.Model.GetRootAs(data, 0)
    sg = m.Subgraphs(0)
    ints = (fb.TensorType.INT8, fb.TensorType.UINT8)
    return sum(1 for i in range(sg.TensorsLength()) if sg.Tensors(i).Type() in ints)


def inspect_tflite(path: str) -> dict:
    check_regular_file(path, 2**31 - 1)
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ResNetSpecError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    fb = _tflite_schema(path)
    try:
        info = _read_tflite(path, data, fb)
    except (IndexError, ValueError, TypeError, UnicodeDecodeError, struct.error) as exc:
        raise ResNetSpecError(f"{path}: a damaged TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    embedded_spec(path, info["spec_yaml"])
    return info


def tflite_metadata(data: bytes, fb) -> dict:
    """The flatbuffer's metadata table: ``{name: bytes}`` (empty bytes for a buffer outside it)."""
    m = fb.Model.GetRootAs(data, 0)
    meta = {}
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        raw = m.Buffers(md.Buffer()).DataAsNumpy()
        meta[md.Name().decode()] = raw.tobytes() if hasattr(raw, "tobytes") else b""
    return meta


def _read_tflite(path: str, data: bytes, fb) -> dict:
    m = fb.Model.GetRootAs(data, 0)
    meta = tflite_metadata(data, fb)
    ops_by_code = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    sg = m.Subgraphs(0)

    def tensor(i):
        t = sg.Tensors(i)
        sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        return {"name": t.Name().decode(), "shape": [int(d) if d >= 0 else None for d in sig],
                "dtype": types.get(t.Type(), str(t.Type()))}

    consts = [sg.Tensors(i) for i in range(sg.TensorsLength())
              if sg.Tensors(i).Buffer() and m.Buffers(sg.Tensors(i).Buffer()).DataLength()]
    codes = [m.OperatorCodes(sg.Operators(i).OpcodeIndex()) for i in range(sg.OperatorsLength())]
    ops = collections.Counter(ops_by_code.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "?") for c in codes)
    text = lambda k: meta[k].decode("utf-8") if k in meta else None  # noqa: E731
    f16, i8 = tflite_float16_weights(data, fb), tflite_int8_tensors(data, fb)
    return {"path": path, "format": f"TFLite flatbuffer (schema v{m.Version()})",
            "dtype": "int8" if i8 else "float16" if f16 else "float32", "float16_weights": len(f16), "int8_tensors": i8, "dtype_recorded": text(META_DTYPE), "operators": sg.OperatorsLength(),
            "op_types": dict(ops), "inputs": [tensor(i) for i in sg.InputsAsNumpy()],
            "outputs": [tensor(i) for i in sg.OutputsAsNumpy()], "tensors": len(consts),
            "parameters": sum(int(math.prod(t.ShapeAsNumpy())) for t in consts  # BN folded: convs, fc
                              if t.ShapeLength() and types.get(t.Type(), "").startswith("float")), "buffers": 0,
            "dtypes": sorted({types.get(t.Type(), "?") for t in consts}), "spec_name": text(META_NAME),
            "spec_yaml": text(META_SPEC), "metadata": sorted(meta), "layout": text(META_LAYOUT)}
