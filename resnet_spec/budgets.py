"""What a model file someone else made may ask of ``import`` and ``--weights``: every budget in one place.

A file states sizes (an input shape, a tensor's dims, an archive member's length, a layer count) that
cost memory or time only when something believes them. Each reader checks them here, from the file's
own declarations, before it allocates or hands the file to a framework; the README's Limits table lists
the same numbers. Framework-free: the numbers, and the checks that need nothing but the IR.
"""

from __future__ import annotations

import math

#: the batch the import's proof runs (a file that fixes its batch to 1 runs 1; any other declared
#: batch is replaced, never allocated)
PROOF_BATCH = 2
#: a spatial side a file may declare for its input; above it an ONNX graph's size is replaced by the
#: import's own (224, or 32 for a CIFAR stem), a .keras file (whose layers are built for it) is refused
MAX_DECLARED_SIDE = 1024
#: the proof's cost, per image at the spec's input size: its largest activation, and its multiply-adds
MAX_PROOF_ACTIVATION_BYTES = 128 << 20
MAX_PROOF_MACS = 100 * 10**9

#: ONNX: nodes (subgraphs included) and the bytes every initializer and Constant declares (external
#: data included), checked before a tensor is read; constant folding's total over the whole graph
ONNX_MAX_NODES = 20_000
#: the parameters an ONNX file read by ``import`` / ``--weights`` may declare unless the caller raises it
#: (``import --max-params``; the readers' ``max_params``): 1 GiB of float32, as a .keras file's
IMPORT_MAX_PARAMS = 1 << 28
ONNX_MAX_TENSOR_BYTES = 4 * IMPORT_MAX_PARAMS
ONNX_MAX_FOLD_TOTAL = 1 << 24  # elements, all folded values together (each also at most 2^24)
ONNX_MAX_FILE_BYTES = 2**31 - 1  # protobuf's own limit

#: .keras archives: entries, each member's expanded size (a member may expand at most RATIO times its
#: compressed size, MIN bytes at least; config.json and metadata.json have their own caps), the sum
KERAS_MAX_ENTRIES = 1_000
KERAS_MAX_DIRECTORY_BYTES = 1 << 20  # the central directory of those entries, names included
KERAS_CONFIG_BYTES = 64 << 20
KERAS_META_BYTES = 8 << 20
KERAS_MEMBER_MIN_BYTES = 64 << 20
KERAS_MEMBER_RATIO = 100
KERAS_MAX_EXPANDED_BYTES = 2**31 - 1
#: a compressed model.weights.h5 is inflated into memory to read its HDF5 metadata (Keras stores it
#: uncompressed, and then it is read in place); the datasets of a weights HDF5 file may declare at most
#: :func:`member_cap` of the bytes it stores
KERAS_MAX_INFLATED_H5 = 512 << 20
#: layers in config.json (nested models counted), checked before Keras builds one
KERAS_MAX_LAYERS = 10_000
#: the values a .keras config.json may declare, estimated from it before Keras builds a layer
#: (resnet_spec/trust_keras.py): every variable of every layer together (Keras allocates them when it
#: builds the model, before a weight is read; 1 GiB of float32; the zoo's largest, wide_resnet101_2,
#: has 127 M), and one image's largest activation by the config's shapes (sides it leaves open count 1)
KERAS_MAX_PARAMS = 1 << 28
KERAS_MAX_ACTIVATION = 1 << 28


def member_cap(compressed: int) -> int:
    """The most bytes an archive member of ``compressed`` bytes may expand to (a zip bomb's ratio is
    thousands; deflate does not shrink float weights a hundred times)."""
    return min(KERAS_MAX_EXPANDED_BYTES, max(KERAS_MEMBER_MIN_BYTES, KERAS_MEMBER_RATIO * compressed))


def side_over(size) -> bool:
    """Whether a declared input size (an int, or ``[h, w]``) has a side over :data:`MAX_DECLARED_SIDE`."""
    sides = [size] if isinstance(size, int) else list(size or [])
    return any(isinstance(s, int) and s > MAX_DECLARED_SIDE for s in sides)


def proof_batch(declared, batch: int = PROOF_BATCH) -> int:
    """The proof's batch: ``batch``, or a file's fixed batch when it is smaller (a graph exported at
    batch 1 may reshape to it); never a larger batch a file declares."""
    return declared if isinstance(declared, int) and 0 < declared < batch else batch


def proof_refusal(net) -> str | None:
    """Why running ``net`` (the imported spec) at its input size is over the proof's budget, or None."""
    largest = 4 * max(math.prod(op.out_shape) for op in net.all_ops())
    size = "x".join(map(str, net.input_shape[1:]))
    hint = "; pass --input-size (e.g. 224) to import it at a smaller size"
    if largest > MAX_PROOF_ACTIVATION_BYTES:
        return (f"at {size} one image's largest activation takes {largest / 2**20:,.0f} MiB, over the import "
                f"limit of {MAX_PROOF_ACTIVATION_BYTES >> 20} MiB{hint}")
    if net.macs > MAX_PROOF_MACS:
        return (f"at {size} one image takes {net.macs / 1e9:,.1f} G multiply-adds, over the import limit of "
                f"{MAX_PROOF_MACS / 1e9:.0f} G{hint}")
    return None
