"""The int8 ONNX file (``convert --to onnx --dtype int8``): static QDQ quantization by ONNX Runtime's
quantizer (``onnxruntime.quantization.quantize_static``) of the float32 file :mod:`backends.onnx.graph`
writes (BN folded), calibrated on images the caller gives (:mod:`resnet_spec.calibration`).

Choices, after ONNX Runtime's quantization guide for CPU: the QDQ format (QuantizeLinear/DequantizeLinear
pairs around float ops, which ORT fuses into integer kernels and any ONNX runtime can read); weights
int8, symmetric, per output channel; activations int8 too (S8S8), the combination the guide names the
first choice for QDQ on CPU: U8S8 can saturate in the VPMADDUBSW path of x86 CPUs without VNNI, and
S8S8 measured the same error here (docs/deployment.md). Activation ranges: MinMax over the calibration
images. Input and output stay float32 (the file quantizes its input itself), so the file is a drop-in
replacement for the float32 one. The metadata gains ``resnet_spec.dtype`` = ``int8``; a file quantized
elsewhere is recognised by its QuantizeLinear/DequantizeLinear nodes (:func:`is_int8`).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

META_DTYPE = "resnet_spec.dtype"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")


def is_int8(model) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto``) computes on quantized tensors, whoever quantized it."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over NCHW images, one image a batch."""

    def __init__(self, name: str, images: np.ndarray):
        self.name, self.images, self.i = name, images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: np.ascontiguousarray(self.images[self.i - 1: self.i], dtype=np.float32)}

    def rewind(self):
        self.i = 0


def pads_zeros(graph) -> bool:
    """Whether ``graph`` pads a tensor with zeros that enter the numbers: a Pad node, or an AveragePool with
    padding that it counts (count_include_pad 1). Such a graph is quantized with symmetric activations."""
    def counted(node):
        a = {x.name: x for x in node.attribute}
        return "count_include_pad" in a and a["count_include_pad"].i == 1 and "pads" in a and any(a["pads"].ints)
    return any(n.op_type == "Pad" or (n.op_type == "AveragePool" and counted(n)) for n in graph.node)


def float_norm_nodes(graph) -> list:
    """Names of the nodes of each GroupNorm (``Reshape -> InstanceNormalization -> Reshape``, then ``Mul`` by
    its scale and ``Add`` of its shift, each read through a ``Reshape`` of its weight), which the int8 file
    keeps in float32. Quantized, OpenVINO 2026.4.1 ran resnetv2_50x1_bit's int8 file 0.49 of the logit scale
    off (ONNX Runtime 0.10); in float32, 0.10 in both (16 synthetic inputs at 40 px, docs/deployment.md)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only_consumer(node, op_type):
        nxt = consumers.get(node.output[0], [])
        return nxt[0] if len(nxt) == 1 and nxt[0].op_type == op_type else None

    names = []
    for norm in (n for n in graph.node if n.op_type == "InstanceNormalization"):
        before = producer.get(norm.input[0])
        back = only_consumer(norm, "Reshape")
        mul = back and only_consumer(back, "Mul")
        add = mul and only_consumer(mul, "Add")
        if before is None or before.op_type != "Reshape" or add is None:
            continue  # a weight standardization, or a norm of another form: quantized as it is
        params = [producer[i] for i in (*mul.input, *add.input) if i in producer and producer[i].op_type == "Reshape"
                  and producer[i] is not back]
        names += [x.name for x in (before, norm, back, mul, add, *params) if x.name]
    return names


def quantize(float_path: str, out_path: str, images: np.ndarray, input_name: str, activations: str = "int8") -> None:
    """Write the QDQ int8 model of the float32 file ``float_path`` to ``out_path`` (one file, no
    external data), calibrated on ``images``, with ``resnet_spec.dtype`` = ``int8`` in its metadata.
    ``activations``: 'int8' (S8S8, what convert writes) or 'uint8' (U8S8, measured by benchmarks/int8.py)."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint at WARNING on every call
    # An option-A shortcut pads channels with zeros (a Pad node), an average pool that counts its padding
    # averages zeros in. With a zero point that is not 0, OpenVINO 2026.4.1 pads the int8 tensor with 0, not
    # with its zero point: resnet20's logits off by 0.57 of their scale (ONNX Runtime: 0.012), Res2Net's
    # (padded 3x3 average pools) by 0.23 (ONNX Runtime 0.019). Symmetric activations (zero point 0) make the
    # padded zeros zeros in every runtime (resnet20: OpenVINO 0.012, ONNX Runtime 0.020): docs/deployment.md.
    graph = onnx.load(float_path, load_external_data=False).graph  # its nodes, without the weights
    symmetric = activations == "int8" and pads_zeros(graph)
    try:
        quantize_static(float_path, out_path, _Reader(input_name, images), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": symmetric},
                        nodes_to_exclude=float_norm_nodes(graph))
    finally:
        root.setLevel(level)
    model = onnx.load(out_path)
    meta = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**meta, META_DTYPE: "int8"})
    onnx.save(model, out_path)


def convert(path: str, model, arrays: dict, images: np.ndarray, force: bool, activations: str = "int8") -> list:
    """Write the int8 file of the float32 ``model``/``arrays`` (a skeleton of :mod:`.graph`) to ``path``."""
    from ...errors import ResNetSpecError, first_line
    from ...fileio import atomic_path
    from .graph import INPUT_NAME
    from .io import write_model

    with tempfile.TemporaryDirectory(prefix="resnet-spec-int8-") as tmp:
        float_path = os.path.join(tmp, "float32.onnx")
        write_model(float_path, model, arrays, sum(a.nbytes for a in arrays.values()) > (1 << 30), True)
        quant_path = os.path.join(tmp, "int8.onnx")
        try:
            quantize(float_path, quant_path, images, INPUT_NAME, activations)
        except Exception as exc:  # noqa: BLE001 - the quantizer raises anything
            raise ResNetSpecError(f"onnx int8: ONNX Runtime's quantizer failed: {first_line(exc)}") from None
        with atomic_path(path, force) as out:
            os.replace(quant_path, out)
    return [path]
