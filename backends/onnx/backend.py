"""ONNX backend: IR + canonical weights -> ``onnx.ModelProto``, built node by node with ``onnx.helper``.

No tracing or exporting is involved: every node comes from one IR op (``backends.onnx.graph.OPS``, driven by
the shared walk of ``backends/common.py``), so the graph has exactly the ops the spec describes and nothing else.

The file's interface
--------------------
* Input ``input``: float32, NCHW ``(batch, C, H, W)``. The batch dimension is symbolic, named ``batch``
  (``dim_param``), unless a fixed ``batch=N`` is asked for; C, H and W are the spec's input shape.
  ``layout="nhwc"``: ``(batch, H, W, C)``, and one ``Transpose`` node (``to_channels_first``, perm
  0, 3, 1, 2) takes it into the NCHW graph (``backends.common.entry_permutation``).
* Output ``logits``: float32 ``(batch, classes)``.
* Initializers carry the canonical tensor names (``layer1.0.conv1.weight``, ``fc.bias``). With BN
  folding (the default) a convolution followed by BatchNorm keeps its own name and gains a bias:
  ``layer1.0.conv1.weight`` and ``layer1.0.conv1.bias`` hold the folded values and the BN's tensors
  disappear. A BN that follows no convolution (pre-activation nets: the BN opening a block, the final
  ``bn_final``) is kept as a ``BatchNormalization`` node with its four canonical tensors: one node
  rather than a Mul+Add pair, and the stored numbers stay the canonical ones.
  Non-weight constants (Slice and Pad arguments) are named ``const.*``.
* Values (node outputs) are named after the op that produces them; the output of the stem is named
  ``stem`` and each block's output carries the block's name (``layer2.0``), which is how
  ``taps=True`` exposes them as extra graph outputs.
* ``metadata_props``: ``resnet_spec.name`` (spec name), ``resnet_spec.spec`` (the merged, self-contained
  spec YAML; :func:`inspect` prints it back), ``resnet_spec.version`` and ``resnet_spec.layout`` (the
  input's layout, ``nchw`` or ``nhwc``). ``producer_name`` is
  ``resnet-spec``.
* Opsets :data:`MIN_OPSET` (13) to :data:`MAX_OPSET` (28) are supported, default
  :data:`DEFAULT_OPSET` (17); each one is checked with ``onnx.checker`` and run in ONNX Runtime by
  the tests. The IR version is the lowest one that carries the chosen opset, so older runtimes can
  read the file.
* When the initializers exceed :data:`EXTERNAL_DATA_THRESHOLD` bytes (protobuf cannot serialise
  messages over 2 GiB), tensors go to ``<name>.onnx.data`` beside ``<name>.onnx``.

Dropout and DropPath are identities at inference and produce no nodes.

:func:`infer` runs the model in ONNX Runtime on exactly the provider asked for (CPU, or CUDA when
``CUDAExecutionProvider`` is installed; never a silent fallback), float32 only, with ORT's default
graph optimisation (``ORT_ENABLE_ALL``) and intra-op thread count (one per physical core) unless the
caller asks for another level or thread count (``optimization=``, ``threads=``).

This module is the backend's interface; the work is split by concern: ``backends.onnx.graph`` (IR -> nodes),
``backends.onnx.fold`` (BatchNorm folding, a pass over the IR), ``backends.onnx.io`` (writing files),
``backends.onnx.runtime`` (ONNX Runtime sessions) and ``backends.onnx.inspect`` (reading a file back).
"""

from __future__ import annotations

import os

import numpy as np

from ... import ir
from ...errors import ResNetSpecError
from .. import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET  # noqa: F401  (framework-free facts, shared with the CLI)
from .fold import fold_batchnorm  # noqa: F401
from .graph import (BATCH_DIM, INPUT_NAME, META_NAME, META_SPEC, META_VERSION, OPS, OUTPUT_NAME,  # noqa: F401
                         PRODUCER, available, require, skeleton)
from .inspect import format_inspect, inspect  # noqa: F401
from .io import EXTERNAL_DATA_THRESHOLD, initializer_bytes  # noqa: F401
from .runtime import make_session, run_session  # noqa: F401

NAME = "onnx"


def build(net: ir.Network, weights, *, fold_bn: bool = True, batch: int | None = None,
          opset: int = DEFAULT_OPSET, taps: bool = False, dtype: str = "float32", io_dtype: str = "float32",
          layout: str = "nchw"):
    """The ``onnx.ModelProto`` for ``net`` with ``weights`` (a canonical weight set).

    ``fold_bn``: fold BN into the preceding conv (:func:`fold_batchnorm`); ``batch``: a fixed batch
    size instead of the symbolic ``batch``; ``taps``: also output ``stem`` and every block's output;
    ``dtype``/``io_dtype``: 'float16' for a float16 file (:mod:`backends.onnx.fp16`); ``layout``: the
    input's, 'nchw' or 'nhwc'.
    """
    require()
    model, arrays = _typed_skeleton(net, weights, dtype, io_dtype, fold_bn=fold_bn, batch=batch, opset=opset,
                                    taps=taps, layout=layout)
    for t in model.graph.initializer:
        t.raw_data = arrays[t.name].tobytes()
    return model


def _typed_skeleton(net, weights, dtype: str, io_dtype: str, **options):
    """:func:`backends.onnx.graph.skeleton` for ``dtype`` 'float32', or the float16 file of :mod:`backends.onnx.fp16`."""
    if dtype == "float16":
        from .fp16 import skeleton as half_skeleton

        return half_skeleton(net, weights, io_dtype=io_dtype, **options)
    if dtype != "float32" or io_dtype != "float32":
        raise ResNetSpecError(f"onnx: dtype {dtype!r} with io dtype {io_dtype!r} is not supported; "
                              "use float32, or float16 with float32 or float16 I/O")
    return skeleton(net, weights, **options)


def convert(net: ir.Network, weights, out_dir: str, *, force: bool = False, fold_bn: bool = True,
            batch: int | None = None, opset: int = DEFAULT_OPSET,
            external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, dtype: str = "float32",
            io_dtype: str = "float32", calibration=None, activations: str = "int8", layout: str = "nchw") -> list:
    """Write ``<out_dir>/<name>.onnx`` (plus ``<name>.onnx.data`` when the initializers exceed
    ``external_data_threshold`` bytes); return the paths written. Nothing is overwritten without
    ``force``. The file's bytes are those of ``build(...).SerializeToString()``, written atomically
    (resnet_spec.fileio) with the weights streamed from memory rather than copied into a message.
    ``dtype='int8'``: the float32 file quantized (QDQ) on ``calibration`` (NCHW float32 images;
    :mod:`backends.onnx.int8`), with ``activations`` 'int8' (S8S8) or 'uint8' (U8S8). ``layout``: the
    input's, 'nchw' or 'nhwc' (the int8 file quantizes the float32 file of that layout)."""
    require()
    from ...fileio import check_writable
    from .. import output_paths
    from .io import check_structure, write_model

    (path,) = output_paths("onnx", net.name, out_dir)
    check_writable(path, force)
    if dtype == "int8":
        from .int8 import convert as int8_convert

        if calibration is None:
            raise ResNetSpecError("onnx int8: calibration images are needed")
        from .norm import standardize_convs

        # weight standardization computed beforehand (float64, rounded once): the quantizer sees plain
        # Conv weights, quantized per channel as every other conv's
        net, weights = standardize_convs(net, weights, dtype=np.float64)
        model, arrays = skeleton(net, weights, fold_bn=fold_bn, batch=batch, opset=opset, layout=layout)
        if layout == "nhwc":  # the calibration images are NCHW; the file takes NHWC
            calibration = np.ascontiguousarray(np.transpose(calibration, (0, 2, 3, 1)))
        os.makedirs(out_dir, exist_ok=True)
        return int8_convert(path, model, arrays, calibration, force, activations)
    model, arrays = _typed_skeleton(net, weights, dtype, io_dtype, fold_bn=fold_bn, batch=batch, opset=opset,
                                    layout=layout)
    check_structure(model)
    external = sum(a.nbytes for a in arrays.values()) > external_data_threshold
    os.makedirs(out_dir, exist_ok=True)
    written = write_model(path, model, arrays, external, force)
    if not external and force and os.path.exists(path + ".data"):
        os.unlink(path + ".data")  # a stale data file from an earlier external-data conversion
    return written


def infer(net: ir.Network, weights, x: np.ndarray, *, device: str = "cpu", dtype: str = "float32",
          taps: bool = False, mutate=None, allow_tf32: bool = False, fold_bn: bool = True,
          opset: int = DEFAULT_OPSET, optimization: str = "all", threads: int | None = None):
    """Run ``net`` in ONNX Runtime on NCHW float32 ``x``; returns ({'head': logits, [taps]}, device text).

    ``mutate(model) -> model`` edits the ModelProto before the session is created (planted faults).
    """
    require(runtime=True)
    model = build(net, weights, fold_bn=fold_bn, opset=opset, taps=taps)
    if mutate is not None:
        model = mutate(model) or model
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:  # too big for one protobuf message
        import tempfile

        from .io import detach, write_model

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            write_model(path, model, detach(model), external=True, force=True)
            sess, desc = make_session(path, device=device, dtype=dtype, allow_tf32=allow_tf32,
                                      optimization=optimization, threads=threads)
    else:
        sess, desc = make_session(model, device=device, dtype=dtype, allow_tf32=allow_tf32,
                                  optimization=optimization, threads=threads)
    return run_session(sess, x, net.tap_names() if taps else None), desc
