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
