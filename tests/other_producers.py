"""Files as other tools make them, made from ours without those tools (tests/test_verify_inputs.py).

* :func:`nhwc_onnx`: our ONNX graph behind a Transpose, input ``[N, H, W, C]`` (tf2onnx's layout).
* :func:`dynamic_onnx`: every dimension of the input symbolic (NCHW and NHWC both fit).
* :func:`nchw_fixed_tflite`: a TFLite file taking ``[batch, C, H, W]`` with a fixed batch (litert-torch's
  form): our Keras model behind a Permute, converted with a fixed batch. Runs in a TensorFlow worker
  (``resnet_spec.isolate.run_isolated``), never in the pytest process.
* :func:`without_our_metadata`: a ``.tflite`` file with the ``resnet_spec.*`` metadata entries removed,
  as the converter alone writes it.
"""

from __future__ import annotations


def nhwc_onnx(model):
    """``model`` (ONNX, input ``[N, C, H, W]``) taking ``[N, H, W, C]``: a Transpose in front."""
    import onnx
    from onnx import helper

    model = _foreign(onnx.ModelProto.FromString(model.SerializeToString()))
    g = model.graph
    old = g.input[0]
    n, c, h, w = old.type.tensor_type.shape.dim
    batch = n.dim_param or n.dim_value
    new = helper.make_tensor_value_info("images", old.type.tensor_type.elem_type,
                                        [batch, h.dim_value, w.dim_value, c.dim_value])
    g.node.insert(0, helper.make_node("Transpose", ["images"], [old.name], perm=[0, 3, 1, 2], name="to_nchw"))
    del g.input[0]
    g.input.insert(0, new)
    onnx.checker.check_model(model)
    return model


def dynamic_onnx(model):
    """``model`` with every dimension of its input symbolic (``batch``, ``d1``, ``d2``, ``d3``)."""
    import onnx

    model = _foreign(onnx.ModelProto.FromString(model.SerializeToString()))
    for i, d in enumerate(model.graph.input[0].type.tensor_type.shape.dim):
        d.Clear()
        d.dim_param = "batch" if i == 0 else f"d{i}"
    return model


def _foreign(model):
    """``model`` without the input layout our convert records (another producer writes none)."""
    kept = [p for p in model.metadata_props if p.key != "resnet_spec.layout"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    return model


def nchw_fixed_tflite(spec_yaml: str, weights: dict, batch: int = 1) -> bytes:
    """In a TensorFlow worker: a ``.tflite`` of the spec taking ``[batch, C, H, W]`` (fixed batch): a
    Permute to NHWC in front of our Keras model, converted as the TFLite backend converts."""
    from resnet_spec.backends.keras import tf as tfb
    from resnet_spec.resolve import UNCHECKED, load_network

    net = load_network(spec_yaml, UNCHECKED)
    tf, keras = tfb._tf()
    inner = tfb.build(net, weights)
    inp = keras.Input(net.input_shape, batch_size=batch, name="nchw")
    model = keras.Model(inp, inner(keras.layers.Permute((2, 3, 1))(inp)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def without_our_metadata(data: bytes) -> bytes:
    """The flatbuffer ``data`` without the ``resnet_spec.*`` metadata entries."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    model.metadata = [m for m in model.metadata or [] if not m.name.decode().startswith("resnet_spec.")]
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tf2onnx_style(model, head_bias: bool = True):
    """``model`` (ONNX, BN kept: ``fold_bn=False``) with the node patterns tf2onnx 1.17.0 writes for a Keras 3
    model (seen in its files of keras.applications ResNet50/ResNet50V2): each ``BatchNormalization`` as
    ``Mul`` by a (1, C, 1, 1) scale then ``Add`` of a (1, C, 1, 1) shift (``.../batchnorm/mul_1``,
    ``.../batchnorm/add_1``), and the classifier ``Gemm`` as ``MatMul`` by an (in, out) weight, then ``Add`` of
    the bias, or no ``Add`` (``head_bias=False``: tf2onnx drops an all-zero bias Add). Then :func:`nhwc_onnx`."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = []
    for n in g.node:
        if n.op_type == "BatchNormalization":
            eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
            gamma, beta, mean, var = (init[i].astype(np.float64) for i in n.input[1:5])
            scale = gamma / np.sqrt(var + np.float32(eps))
            shift = beta - mean * scale
            base = f"{n.name}/batchnorm"
            for name, value in ((f"{base}/mul", scale), (f"{base}/shift", shift)):
                g.initializer.append(numpy_helper.from_array(value.astype(np.float32).reshape(1, -1, 1, 1), name))
            nodes += [helper.make_node("Mul", [n.input[0], f"{base}/mul"], [f"{base}/mul_1:0"], name=f"{base}/mul_1"),
                      helper.make_node("Add", [f"{base}/mul_1:0", f"{base}/shift"], list(n.output), name=f"{base}/add_1")]
        elif n.op_type == "Gemm":
            w = init[n.input[1]]
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T if trans_b else w), "fc/kernel"))
            out = n.output[0] if not head_bias else "fc/MatMul:0"
            nodes.append(helper.make_node("MatMul", [n.input[0], "fc/kernel"], [out], name="fc/MatMul"))
            if head_bias:
                nodes.append(helper.make_node("Add", [out, n.input[2]], list(n.output), name="fc/BiasAdd"))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return nhwc_onnx(model)


def without_zero_conv_biases(model):
    """``model`` with every Conv's all-zero bias input dropped, as tf2onnx writes a conv whose folded BatchNorm
    had default statistics (its bias 0) or a Keras conv whose bias is still at its zero initialisation."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in init and not np.any(init[n.input[2]]):
            del n.input[2]
    return model


def edge_copy_pool(model):
    """``model`` with each padded ``MaxPool``'s padding written as this project's stock ``.keras`` writes it and
    tf2onnx converts it: per axis (rows, then columns) one ``Concat`` of ``Slice`` copies of the first row before
    the input and of the last after it (one Slice over all four axes, a negative end, as tf2onnx writes a
    ``Cropping2D``), then the MaxPool without pads."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inferred = shape_inference.infer_shapes(model).graph
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.value_info}
    big, nodes = 2**31 - 1, []
    for n in g.node:
        pads = next((list(a.ints) for a in n.attribute if a.name == "pads"), [0] * 4)
        if n.op_type != "MaxPool" or not any(pads):
            nodes.append(n)
            continue
        x, (h, w) = n.input[0], dims[n.input[0]][2:]
        for axis, size, before, after in ((2, h, pads[0], pads[2]), (3, w, pads[1], pads[3])):
            parts = []
            for first, count in ((True, before), (False, after)):
                starts, ends = [0, 0, 0, 0], [big] * 4
                k = 1 if axis == 2 else 2  # its place in axes [0, 2, 3, 1]
                if first:
                    ends[k] = -(size - 1)
                else:
                    starts[k] = size - 1
                name = f"{n.name}/edge_{axis}_{'first' if first else 'last'}"
                for what, value in (("starts", starts), ("ends", ends), ("axes", [0, 2, 3, 1])):
                    g.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{name}/{what}"))
                nodes.append(helper.make_node("Slice", [x, f"{name}/starts", f"{name}/ends", f"{name}/axes"],
                                              [f"{name}:0"], name=name))
                parts.append([f"{name}:0"] * count)
            out = f"{n.name}/pad_edge_{axis}:0"
            nodes.append(helper.make_node("Concat", parts[0] + [x] + parts[1], [out], axis=axis,
                                          name=f"{n.name}/pad_edge_{axis}"))
            x, size = out, size + before + after
            if axis == 2:
                h = size
        n.input[0] = x
        for a in n.attribute:
            if a.name == "pads":
                a.ints[:] = [0, 0, 0, 0]
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def nhwc_channel_pad(model):
    """``model`` with each option-A ``Pad`` of zero channels written as this project's stock ``.keras`` writes it
    and tf2onnx converts it: Transpose to NHWC, Reshape to (N, H, W, C, 1) by a shape computed from the input's
    ``Shape`` (Gather, Cast, Slice, Concat with the constants H, W, C, 1, Cast), a 5-d zero Pad of C, Reshape
    to (-1, H, W, C'), Transpose back."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inferred = shape_inference.infer_shapes(model).graph
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.value_info}
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = []

    def const(name, value, dtype=np.int64):
        g.initializer.append(numpy_helper.from_array(np.array(value, dtype), name))
        return name

    for n in g.node:
        pads = init.get(n.input[1]) if n.op_type == "Pad" and len(n.input) > 1 else None
        if pads is None or not (pads[1] or pads[5]):
            nodes.append(n)
            continue
        x, b, a, base = n.input[0], int(pads[1]), int(pads[5]), n.name
        c, h, w = dims[x][1:]
        make = helper.make_node
        nodes += [make("Transpose", [x], [f"{base}/nhwc"], perm=[0, 2, 3, 1], name=f"{base}/nhwc"),
                  make("Shape", [x], [f"{base}/shape"], name=f"{base}/shape"),
                  make("Gather", [f"{base}/shape", const(f"{base}/order", [0, 2, 3, 1])], [f"{base}/dims"],
                       name=f"{base}/dims"),
                  make("Cast", [f"{base}/dims"], [f"{base}/dims32"], to=6, name=f"{base}/dims32"),
                  make("Slice", [f"{base}/dims32", const(f"{base}/zero", [0]), const(f"{base}/one", [1]),
                                 const(f"{base}/axis0", [0])], [f"{base}/batch"], name=f"{base}/batch"),
                  make("Concat", [f"{base}/batch"] + [const(f"{base}/d{k}", [v], np.int32)
                                                      for k, v in enumerate((h, w, c, 1))],
                       [f"{base}/to3d_shape32"], axis=0, name=f"{base}/to3d_shape32"),
                  make("Cast", [f"{base}/to3d_shape32"], [f"{base}/to3d_shape"], to=7, name=f"{base}/to3d_shape"),
                  make("Reshape", [f"{base}/nhwc", f"{base}/to3d_shape"], [f"{base}/as_3d"], name=f"{base}/as_3d"),
                  make("Pad", [f"{base}/as_3d", const(f"{base}/pads", [0, 0, 0, b, 0, 0, 0, 0, a, 0])],
                       [f"{base}/padded"], name=f"{base}/pad"),
                  make("Reshape", [f"{base}/padded", const(f"{base}/back", [-1, h, w, c + b + a])],
                       [f"{base}/nhwc_out"], name=f"{base}/back"),
                  make("Transpose", [f"{base}/nhwc_out"], list(n.output), perm=[0, 3, 1, 2], name=f"{base}/nchw")]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def with_softmax(model, axis: int | None = 1):
    """``model`` (ONNX) ending in a ``Softmax`` on ``axis`` (None: no attribute) after its classifier, as tf2onnx
    writes keras.applications models (``classifier_activation="softmax"``: ``predictions/Softmax``)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    out = g.output[0].name
    for n in g.node:
        n.output[:] = ["predictions/BiasAdd:0" if o == out else o for o in n.output]
    kw = {} if axis is None else {"axis": axis}
    g.node.append(helper.make_node("Softmax", ["predictions/BiasAdd:0"], [out], name="predictions/Softmax", **kw))
    return model
