"""What an ONNX file holds (``resnet-spec inspect``): metadata, interface, node and weight counts."""

from __future__ import annotations

import math

from ...errors import ResNetSpecError
from ..common import META_LAYOUT, layout_text
from .graph import META_NAME, META_SPEC, META_VERSION, require

try:
    import onnx
    from onnx import TensorProto
except ImportError:  # pragma: no cover - exercised only without onnx
    onnx = None


def _dims(vi) -> list:
    out = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?"))
    return out


def inspect(path: str, *, require_metadata: bool = True) -> dict:
    """What an ONNX file holds: spec name and YAML, resnet-spec version, opset, producer, inputs and
    outputs with shapes (a symbolic dimension shows as its name), node counts by op type, initializer
    and parameter counts (float initializer elements). External data is not read.

    A file that is not ONNX raises :class:`ResNetSpecError`; so does an ONNX file without resnet-spec
    metadata when ``require_metadata`` (the message still shows what the file contains).
    """
    require()
    from google.protobuf.message import DecodeError

    from ...fileio import check_regular_file
    from ...inspect_files import embedded_spec

    check_regular_file(path, 2**31 - 1)  # a FIFO or a link to /dev/zero: refused before onnx opens it
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ResNetSpecError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if model.ir_version <= 0 or not model.graph.node or not model.opset_import:
        raise ResNetSpecError(f"{path}: not an ONNX model (no graph, IR version or opset in it)")
    meta = {p.key: p.value for p in model.metadata_props}
    counts: dict = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    info = {
        "path": path,
        "spec_name": meta.get(META_NAME),
        "spec_yaml": meta.get(META_SPEC),
        "resnet_spec_version": meta.get(META_VERSION),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": [{"name": i.name, "shape": _dims(i)} for i in model.graph.input],
        "outputs": [{"name": o.name, "shape": _dims(o)} for o in model.graph.output],
        "nodes": sum(counts.values()),
        "node_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializers": len(model.graph.initializer),
        "parameters": sum(math.prod(t.dims) for t in model.graph.initializer  # const.*: pool masks, ratios
                          if t.data_type in float_types and not t.name.startswith("const.")),
        "external_data": any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer),
        "dtype": _dtype(model),  # from the graph, whoever made the file
        "dtype_recorded": meta.get("resnet_spec.dtype"),  # what convert recorded (int8 files)
        "layout": meta.get(META_LAYOUT),  # the input layout convert recorded (convert --layout)
    }
    embedded_spec(path, info["spec_yaml"])  # its extends may name a zoo entry, never a path
    if require_metadata and META_SPEC not in meta:
        raise ResNetSpecError(f"{path}: not written by resnet-spec (no {META_SPEC!r} metadata); it contains:\n"
                              + format_inspect(info))
    return info


def format_inspect(info: dict) -> str:
    """Readable text for :func:`inspect`'s dict, ending with the spec YAML when there is one."""
    def shape(s):
        return "(" + ", ".join(str(d) for d in s) + ")"

    lines = []
    if info.get("spec_name"):
        lines.append(f"spec:       {info['spec_name']} (resnet-spec {info.get('resnet_spec_version') or '?'})")
    lines += [f"file:       {info['path']}" + ("  [+ external data]" if info.get("external_data") else ""),
              f"producer:   {info['producer'] or '?'}",
              f"opset:      {info['opset']} (IR version {info['ir_version']})"]
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            lines.append(f"{kind[:-1] + ':':<11} {v['name']} {shape(v['shape'])}")
    if info.get("layout"):
        lines.append(f"layout:     {layout_text(info['layout'])}")
    lines.append(f"nodes:      {info['nodes']} (" + ", ".join(f"{k} {v}" for k, v in info["node_counts"].items()) + ")")
    lines.append(f"weights:    {info['initializers']} initializers, {info['parameters']:,} parameters")
    if info.get("dtype"):
        recorded = info.get("dtype_recorded")
        qdq = ", ".join(f"{info['node_counts'][op]} {op}" for op in ("QuantizeLinear", "DequantizeLinear")
                        if op in info["node_counts"])
        lines.append(f"dtype:      {info['dtype']}" + (f" (QDQ: {qdq})" if qdq else "")
                     + (f"; metadata: {recorded}" if recorded else ""))
    if info.get("spec_yaml"):
        lines += ["", "spec YAML:", info["spec_yaml"].rstrip()]
    return "\n".join(lines)


def _dtype(model) -> str:
    """What the file computes with: int8 (QuantizeLinear/DequantizeLinear or integer ops: quantized by
    ``convert --dtype int8`` or anyone else), float16 (float16 initializers), else float32."""
    from .int8 import is_int8

    if is_int8(model):
        return "int8"
    return "float16" if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) else "float32"
